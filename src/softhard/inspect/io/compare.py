r"""``softhard compare-routing A B``: do two runs over the same tokens route differently because of near ties, or
genuinely? (issue 21 item 1; ``docs/compare_routing.md``.)

Per layer, on the tokens of both dumps (:mod:`.dumps`), aligned and checked:

- **mismatch**: the share of tokens whose selected sets differ;
- **near_tie_share**: the share of the mismatched tokens whose decision margin in the reference side,
  :math:`m_t` (the rule of ``inspect/rules.py`` on the scores it ranks), is at most the score noise measured
  between the two runs on that token, :math:`\operatorname{osc}(s^B_t - s^A_t) = \max_e - \min_e` of the change
  of its scores. By the definition of the margin a selection made from those scores can only change when
  :math:`m_t \le \operatorname{osc}`; mismatches beyond it are **genuine** (a different rule, bias, capacity
  drop, replay, or a bug);
- **genuine**: the share of all tokens with a genuine mismatch;
- **predicted_mismatch**: :math:`\frac1N\sum_t \hat p_t` from the reference side's gaps and the flip predictor of
  :mod:`softhard.inspect.price.flips` (one formula, one place), with a score-difference error
  :math:`N(0, \kappa\,r_t^2)` (:math:`r_t` the RMS of the token's reference scores: errors relative to the scores'
  size) plus, where the other side's scores all lie on the bfloat16 grid, the grid's rounding (ties broken
  either way); :math:`\kappa` is fitted by matching the mean absolute error of the boundary pair
  (:func:`softhard.closed.rounding.abs_mean_rounded`) on one half of the sequences and applied to the other
  (two-fold cross-fitting), so no token's prediction uses its own noise.

Where one side has expert ids only, the margins come from the side with scores and the noise cannot be measured:
near-tie share, genuine and prediction need ``score_noise`` (:math:`\sqrt\kappa`), else they are NaN and a note
says why. Standard errors are per sequence (per record or block of 64 tokens where the dumps have no sequences).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ...closed.rounding import abs_mean_rounded, ulp
from ..layouts import InspectError
from ..price.flips import PairModel, candidate_pairs, paired_ratio, sequence_mean, with_group_event
from ..rules import RoutingRule
from .dumps import RouterDump, read_dump

__all__ = ["compare_routing", "compare_dumps", "write_compare_routing", "BLOCK"]

BLOCK = 64  # tokens per unit of the standard error when a dump has no sequences


def _rule(r: tuple, K: int) -> RoutingRule:
    k, G, t, gt = r
    if G > 1 and K % G == 0 and t < G:
        return RoutingRule(num_experts=K, k=k, scores="logits", n_group=G, topk_group=t, group_top=gt)
    return RoutingRule(num_experts=K, k=k, scores="logits")


def _on_bf16_grid(x: np.ndarray) -> bool:
    t = torch.from_numpy(np.ascontiguousarray(x))
    return bool(x.size) and bool((t.to(torch.bfloat16).to(torch.float64) == t).all())


def _align(a: RouterDump, b: RouterDump) -> list[str]:
    notes = []
    if len(a.layers) != len(b.layers):
        raise InspectError(f"different layer counts: {a.path} has {len(a.layers)} MoE layers, {b.path} has "
                           f"{len(b.layers)}: not dumps of one model")
    if a.layers != b.layers:
        notes.append(f"layers matched by order: {a.layers} against {b.layers}")
    for i in range(len(a.layers)):
        if a.tokens(i) != b.tokens(i):
            raise InspectError(f"different token streams: layer {a.layers[i]} has {a.tokens(i)} tokens in {a.path} "
                               f"and {b.tokens(i)} in {b.path}")
    if a.token_ids is not None and b.token_ids is not None:
        if a.token_ids.size != b.token_ids.size or not np.array_equal(a.token_ids, b.token_ids):
            n = min(a.token_ids.size, b.token_ids.size)
            diff = np.nonzero(a.token_ids[:n] != b.token_ids[:n])[0]
            at = int(diff[0]) if diff.size else n
            raise InspectError(f"different token streams: {a.path} and {b.path} differ at token {at} (ids "
                               f"{a.token_ids[at] if at < a.token_ids.size else 'end'} and "
                               f"{b.token_ids[at] if at < b.token_ids.size else 'end'})")
    else:
        missing = [d.path for d in (a, b) if d.token_ids is None]
        notes.append(f"token ids not checked ({', '.join(missing)} has none): the streams are aligned by position "
                     f"and count only")
    return notes


def _units(a: RouterDump, b: RouterDump, n: int) -> np.ndarray:
    for d in (a, b):
        if d.units is not None and d.units.size == n:
            return d.units
    return np.arange(n) // BLOCK


def _selection(d: RouterDump, i: int, rule: RoutingRule) -> np.ndarray:
    if d.selected[i] is not None:
        return np.sort(d.selected[i], -1)
    return torch.sort(rule.select(torch.from_numpy(d.scores[i])), -1).values.numpy()


def _fit_kappa(gap_dev: np.ndarray, r2: np.ndarray, q: np.ndarray) -> float:
    """:math:`\\kappa` with mean :math:`\\mathbb E|\\sqrt{\\kappa} r Z + T_q|` = mean observed :math:`|D|`."""
    keep = np.isfinite(gap_dev) & np.isfinite(r2)
    if not keep.any():
        return math.nan
    dev, r, qq = gap_dev[keep], torch.from_numpy(np.sqrt(r2[keep])), torch.from_numpy(q[keep])
    target = float(dev.mean())
    f = lambda k: float(abs_mean_rounded(math.sqrt(k) * r, qq).mean()) - target  # noqa: E731
    if f(0.0) >= 0:
        return 0.0
    lo, hi = 0.0, 1e-16
    while f(hi) < 0 and hi < 1e8:
        lo, hi = hi, hi * 4
    for _ in range(70):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return hi


def compare_dumps(a: RouterDump, b: RouterDump, *, score_noise: float | None = None) -> tuple[list[dict], dict]:
    """Rows of ``compare_routing.csv`` (module docstring) for two read dumps, and the run's metadata."""
    notes = _align(a, b)
    ref, other = (a, b)
    if a.scores[0] is None and b.scores[0] is not None:
        ref, other = b, a
        notes.append(f"margins from {b.path} (the side with scores)")
    rows = []
    for i, lab in enumerate(a.layers):
        n = a.tokens(i)
        units = _units(a, b, n)
        if ref.scores[i] is None:
            K = int(max(int(ref.selected[i].max()), int(other.selected[i].max())) + 1)
            rule = _rule(ref.rules[i], max(K, ref.rules[i][0] + 1))
        else:
            rule = _rule(ref.rules[i], ref.scores[i].shape[1])
        sa, sb = _selection(ref, i, rule), _selection(other, i, rule)
        if sa.shape[1] != sb.shape[1]:
            raise InspectError(f"layer {lab}: {ref.path} selects {sa.shape[1]} experts per token, {other.path} "
                               f"{sb.shape[1]}: not one routing")
        mism = (sa != sb).any(-1).astype(np.float64)
        row = {"layer": lab, "tokens": n, "sequences": int(np.unique(units).size)}
        m = sequence_mean(mism, units)
        row.update(mismatch=m.value, mismatch_stderr=m.stderr)
        nan = {k: math.nan for k in ("near_tie_share", "near_tie_share_stderr", "genuine", "genuine_stderr",
                                     "predicted_mismatch", "predicted_mismatch_stderr", "ratio", "ratio_stderr",
                                     "noise_scale")}
        row.update(nan, grid="", noise="")
        if ref.scores[i] is None:
            rows.append(row)
            continue
        s_ref = torch.from_numpy(ref.scores[i])
        margin = rule.margin(s_ref).numpy()
        r2 = (s_ref ** 2).mean(-1).numpy()
        ii, jj, gap = candidate_pairs(rule, s_ref, 2)
        order = torch.argsort(gap, dim=1, stable=True)
        ii, jj, gap = ii.gather(1, order), jj.gather(1, order), gap.gather(1, order)
        grid = other.scores[i] is not None and _on_bf16_grid(other.scores[i]) and not _on_bf16_grid(ref.scores[i])
        if grid:
            q = ulp(torch.maximum(s_ref.gather(1, ii).abs(), s_ref.gather(1, jj).abs()), "bf16")
        else:
            q = torch.zeros_like(gap)
        if other.scores[i] is not None:
            s_oth = torch.from_numpy(other.scores[i])
            d = (s_oth - s_ref).numpy()
            noise = d.max(-1) - d.min(-1)
            near = margin <= noise
            if ii.shape[1]:
                dev = ((s_oth.gather(1, ii[:, :1]) - s_oth.gather(1, jj[:, :1]))
                       - (s_ref.gather(1, ii[:, :1]) - s_ref.gather(1, jj[:, :1])))[:, 0].abs().numpy()
            else:
                dev = np.full(n, np.nan)
            folds = (np.unique(units, return_inverse=True)[1] % 2).astype(bool)
            kappa = np.empty(n)
            q0 = q[:, 0].numpy() if q.shape[1] else np.zeros(n)
            for f in (False, True):
                fit = _fit_kappa(dev[folds == f], r2[folds == f], q0[folds == f]) if (folds == f).any() else math.nan
                kappa[folds != f] = fit
            row["noise"] = "measured"
            row["noise_scale"] = float(math.sqrt(np.nanmean(kappa))) if np.isfinite(kappa).any() else math.nan
        elif score_noise is not None:
            kappa = np.full(n, float(score_noise) ** 2)
            near = margin <= 3 * math.sqrt(kappa[0]) * np.sqrt(r2)  # three standard deviations of the error
            row["noise"], row["noise_scale"] = "given", float(score_noise)
        else:
            notes.append(f"layer {lab}: {other.path} has expert ids only and no --score-noise was given: near-tie "
                         f"share, genuine and predicted mismatch need a score noise")
            rows.append(row)
            continue
        row["grid"] = "bf16" if grid else ""
        x, y = mism * near, mism
        rt, rt_se = paired_ratio(x, y, units)
        g = sequence_mean(mism * ~near, units)
        pm = with_group_event(rule, s_ref, PairModel(gap, torch.zeros_like(gap),
                                                      torch.from_numpy(r2)[:, None].expand_as(gap).clone(), q))
        p = pm.probability(torch.from_numpy(np.nan_to_num(kappa, nan=0.0))).numpy()
        pr = sequence_mean(p, units)
        ratio, ratio_se = paired_ratio(p, mism, units)
        row.update(near_tie_share=rt, near_tie_share_stderr=rt_se, genuine=g.value, genuine_stderr=g.stderr,
                   predicted_mismatch=pr.value, predicted_mismatch_stderr=pr.stderr, ratio=ratio,
                   ratio_stderr=ratio_se)
        rows.append(row)
    meta = {"a": a.path, "b": b.path, "format_a": a.format, "format_b": b.format, "notes": notes + a.notes + b.notes,
            "score_noise": score_noise, "block": BLOCK,
            "reference": ref.path}
    return rows, meta


def compare_routing(path_a, path_b, out=None, *, top_k: int | None = None, num_layers: int | None = None,
                    probabilities: bool = False, score_noise: float | None = None) -> tuple[list[dict], dict, list]:
    """Read two dumps (:func:`softhard.inspect.io.dumps.read_dump`), compare them layer by layer (module
    docstring) and, with ``out``, write ``compare_routing.csv``/``.json``, ``compare_routing.png`` and
    ``report.html`` there. Returns ``(rows, meta, paths)``. Bad input raises
    :class:`~softhard.inspect.layouts.InspectError` in one line."""
    if score_noise is not None and not (isinstance(score_noise, (int, float)) and score_noise > 0):
        raise InspectError(f"The 'score_noise' parameter of compare_routing must be a float in (0, inf). "
                           f"Got {score_noise!r}.")
    kw = dict(top_k=top_k, num_layers=num_layers, probabilities=probabilities)
    a, b = read_dump(path_a, **kw), read_dump(path_b, **kw)
    rows, meta = compare_dumps(a, b, score_noise=score_noise)
    paths = [] if out is None else write_compare_routing(rows, meta, out)
    return rows, meta, paths


def write_compare_routing(rows: list[dict], meta: dict, out) -> list[Path]:
    """``compare_routing.csv`` (+ ``.json``), ``compare_routing.png`` and ``report.html`` into ``out``."""
    from ...report.fig_flips import compare_routing_figure, write_compare_routing_report
    from ...results.io import write_table
    from ...results.table import Table

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InspectError(f"the output directory {out} cannot be written: {e.strerror or e}") from None
    cols = ["layer", "tokens", "mismatch", "mismatch_stderr", "near_tie_share", "near_tie_share_stderr", "genuine",
            "genuine_stderr", "predicted_mismatch", "predicted_mismatch_stderr", "ratio", "ratio_stderr",
            "noise_scale", "noise", "grid", "sequences"]
    paths = write_table(Table("compare_routing", cols, [{c: r.get(c) for c in cols} for r in rows], meta), out,
                        tex=False)
    paths.append(compare_routing_figure(out))
    paths.append(write_compare_routing_report(out))
    return paths
