r"""Cutting top-k priced: the loss of k → k − 1 → … → 1 per layer, predicted and measured, and a per-layer k
for an expert-FLOP budget (``docs/hardening.md`` §6).

**The cut.** Layer ℓ at ``k' < k`` keeps the ``k'`` best-ranked experts of its own selection (ranked by the
rule's selection scores :math:`s = \phi(a) + b`, so the kept set is the rule's top-k' — within the same allowed
groups for group-limited rules; by weight for hash routing) and weights them as the rule does: renormalised
over the kept set where the rule renormalises over its selection (:math:`w_i' = w_i \sum_S u / \sum_{S'} u`,
:math:`u = w/c` without the per-expert constants), the dropped weights simply removed otherwise
(:func:`cut_weights`). Applied through ``site.reweight``, so any rule whose format lets its weights be set
is cut the way the model itself would compute top-k'.

**The prediction.** Write :math:`\varepsilon_s` for the share of the layer's routed mass that the cut removes
from row s, and its *cut margin* :math:`\delta_s = \log\frac{1 - \varepsilon_s}{\varepsilon_s}` — for the step
k + 1 → k of a softmax rule renormalised over its selection,
:math:`\delta = \log\sum_{i \le k} e^{a_{(i)}} - a_{(k+1)} \ge a_{(k)} - a_{(k+1)}`, the margin between the
k-th and (k+1)-th selection scores (equal for k = 1: the cut 2 → 1 is hard top-1 routing, the τ → 0 end of
hardening). With :math:`D_s` the loss change of row s's sequence when row s alone is cut (the *contrast of
dropping*), summing over rows as in hardening (identity (1) of ``docs/hardening.md``),

.. math:: L_{k'} - L_k = \frac1{N_{pos}}\sum_s D_s + (\text{interactions})
          = \frac{N_{rows}}{N_{pos}}\int f_\delta(t)\,E[D \mid \delta = t]\,dt,

and :math:`D_s = g_s + r_s`: its *linear contrast* :math:`g_s = \sum_i \partial\varphi/\partial w_{s,i}\,
(w'_{s,i} - w_{s,i})` (the loss's derivative along the cut, every row's from one backward pass of the shipped
model) and a remainder :math:`r_s`, second order in the removed weights. The estimator takes every row's
:math:`g_s` and adds the mean remainder of its cut-margin bin (quantiles of δ), estimated on a seeded sample of
rows of the *other* half of the sequences (each re-run with that row alone cut, Horvitz–Thompson weighted):
:math:`\frac1{N_{pos}}\sum_r (g_r + \bar r_{b(r)})` — cross-fitted, errors by a delete-one-sequence jackknife
paired with the measurement. (A trained router sits near a stationary point of its loss, so :math:`\sum g` is
small and the remainder carries the price; :math:`g` is a control variate that removes the rows' first-order
noise from the sampled contrasts.)

**A per-layer k for a budget.** Expert FLOPs per token are proportional to :math:`\sum_\ell k_\ell` (routed
experts of one size; shared experts are not cut). For a budget ``B`` the allocation minimising the predicted
:math:`\sum_\ell (L_{k_\ell} - L_k)_\ell` (layers assumed additive) is found by dynamic programming
(:func:`allocate`) and measured, every layer cut at once, against uniform ``k' = B/L`` at equal FLOPs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..._validate import check_int
from ...estimators.jackknife import jackknife
from ...estimators.reducer import mean_estimate, resolve_seed
from ..hooks import read_routers
from ..layouts import InspectError, RouterSite, find_routers
from ..loading import Batch
from .curve import crossfit_stats, segment_sums, sequence_folds
from .losses import task_loss

__all__ = ["TopKPrice", "cut_weights", "cut_margin", "cutting", "allocate", "price_topk", "write_topk",
           "topk_inspected", "topk_verdict"]

CUT_BINS = 8  # quantile bins of the cut margin


def _rank_keep(rule, logits: torch.Tensor, selected: torch.Tensor, weights: torch.Tensor, keep) -> torch.Tensor:
    """Mask ``(N, k)``: the ``keep`` best-ranked slots of each row (``keep``: an int or ``(N,)``)."""
    sel = selected.to(logits.device)
    valid = sel >= 0
    if rule.hash_table is not None or rule.margin_space == "none":
        score = weights.to(torch.float64)
    else:
        score = rule.selection_scores(logits.to(torch.float64) if logits.dtype == torch.float64 else logits)
        score = score.to(torch.float64).gather(1, sel.clamp_min(0))
    score = torch.where(valid, score, -math.inf)
    order = torch.argsort(score, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(sel.shape[1], device=sel.device).expand_as(order))
    keep = torch.as_tensor(keep, device=sel.device).reshape(-1, 1) if not isinstance(keep, int) else keep
    return (rank < keep) & valid


def cut_weights(rule, logits: torch.Tensor, selected: torch.Tensor, weights: torch.Tensor, keep) -> torch.Tensor:
    r"""The weights of a layer cut to its ``keep`` best-ranked selected experts, float64 ``(N, k)`` (module
    docstring): renormalised over the kept set where ``rule.normalize`` (or the block weights by a softmax of the
    selected logits, ``rule.weights == "block"``), the dropped ones removed otherwise. ``logits (N, K)``,
    ``selected (N, k)`` (``-1``: dropped slot), ``weights (N, k)``; ``keep`` an int or per-row ``(N,)``; a row
    with ``keep >= k`` is returned exactly as given."""
    w = weights.to(torch.float64)
    kept = _rank_keep(rule, logits, selected, w, keep)
    new = torch.where(kept, w, 0.0)
    if rule.normalize or rule.weights == "block":
        c = torch.ones_like(w)
        if rule.weight_scale is not None:
            c = rule.weight_scale.to(w).gather(0, selected.clamp_min(0).reshape(-1)).reshape(w.shape)
        u = torch.where(selected >= 0, w / c, 0.0)
        num, den = u.sum(-1, keepdim=True), torch.where(kept, u, 0.0).sum(-1, keepdim=True)
        new = torch.where(den > 0, new * (num / torch.where(den > 0, den, 1.0)), new)
    full = kept | (selected < 0)
    return torch.where(full.all(-1, keepdim=True), w, new)


def cut_margin(rule, logits: torch.Tensor, selected: torch.Tensor, weights: torch.Tensor, keep) -> torch.Tensor:
    r"""``(delta, eps)``, float64 ``(N,)`` each: the share :math:`\varepsilon` of the routed mass (the sum of the
    positive weights) that the cut to ``keep`` removes, and the cut margin :math:`\delta = \log((1 - \varepsilon)
    / \varepsilon)` (``+inf`` where nothing is removed)."""
    w = torch.where((selected >= 0) & (weights > 0), weights.to(torch.float64), 0.0)
    kept = _rank_keep(rule, logits, selected, w, keep)
    mass = w.sum(-1)
    eps = torch.where(mass > 0, torch.where(kept, 0.0, w).sum(-1) / torch.where(mass > 0, mass, 1.0), 0.0)
    delta = torch.where(eps > 0, torch.log1p(-eps) - torch.log(eps.clamp_min(1e-300)), math.inf)
    return delta, eps


@contextlib.contextmanager
def cutting(sites: list[RouterSite], keep: dict):
    """Within the block, layer ``site.index`` keeps ``keep[site.index]`` experts: an int (every row) or a
    callable ``(N rows) -> (N,)`` per-row counts; other layers as shipped. Raises :class:`InspectError` for a
    format whose weights cannot be set."""
    with contextlib.ExitStack() as stack:
        for s in sites:
            if s.index not in keep:
                continue
            rule, kk = s.rule, keep[s.index]

            def fn(a, sel, w, rule=rule, kk=kk):
                return cut_weights(rule, a, sel, w, kk(sel.shape[0]) if callable(kk) else kk)

            ctx = s.reweight(fn)
            if ctx is None:
                raise InspectError(f"topk: layer {s.index} ({s.name}) returns the {s.layout.name} format, whose "
                                   f"weights cannot be set per router row, so its k cannot be cut here.")
            stack.enter_context(ctx)
        yield


def allocate(costs: dict[int, dict[int, float]], budget: int) -> dict[int, int] | None:
    r"""The per-layer k minimising :math:`\sum_\ell C_\ell(k_\ell)` subject to :math:`\sum_\ell k_\ell =` ``budget``
    (dynamic programming over the layers); ``costs[layer][k]`` the predicted loss change at ``k`` (0 at the
    shipped ``k``). ``None`` when no allocation meets the budget (or a needed cost is not finite)."""
    layers = list(costs)
    best = {0: (0.0, [])}
    for lay in layers:
        nxt = {}
        for used, (c, ks) in best.items():
            for k, ck in costs[lay].items():
                if not math.isfinite(ck) or used + k > budget:
                    continue
                tot = c + ck
                if used + k not in nxt or tot < nxt[used + k][0]:
                    nxt[used + k] = (tot, ks + [k])
        best = nxt
    if budget not in best:
        return None
    return dict(zip(layers, best[budget][1]))


@dataclass
class TopKPrice:
    """The price of cutting top-k (:func:`price_topk`): ``rows`` one per (layer, k'), ``budgets`` one per
    expert-FLOP budget, ``meta`` settings and losses."""

    rows: list[dict]
    budgets: list[dict]
    meta: dict = field(default_factory=dict)


def _forward(model, batch: Batch, loss: Callable) -> torch.Tensor:
    with torch.no_grad():
        return loss(batch, model(**batch.inputs)).to(torch.float64).cpu()


def _select(inputs: dict, unit: torch.Tensor, B: int) -> dict:
    return {k: v[unit] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == B else v for k, v in inputs.items()}


def _clean_pass(model, batch: Batch, loss: Callable, cut, levels) -> tuple[torch.Tensor, dict]:
    r"""The shipped model on ``batch`` with the gradient of its summed loss with respect to every selected weight:
    returns the per-token losses ``(B, P)`` and, per ``(layer, k')``, a list over router calls of ``(delta, eps,
    g)`` ``(N,)`` each — the cut margin, the removed share, and the *linear contrast* :math:`g_s = \sum_i
    \partial\varphi/\partial w_{s,i}\,(w'_{s,i} - w_{s,i})` of cutting row s alone to ``k'`` (the first-order
    term of :math:`D_s`). The model's parameters get no gradient; the outputs are the shipped ones (every weight
    multiplied by 1; bit for bit, except through a router returning logits alone, which is handed log-weights)."""
    calls = {s.index: [] for s in cut}

    def hook(site):
        def fn(a, sel, w):
            lam = torch.ones_like(w, requires_grad=True)
            calls[site.index].append((lam, a.detach(), sel.detach(), w.detach()))
            return w * lam
        return fn

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), contextlib.ExitStack() as st:
            for s in cut:
                st.enter_context(s.reweight(hook(s)))
            losses = loss(batch, model(**batch.inputs)).to(torch.float64)
            lams = [c[0] for v in calls.values() for c in v]
            grads = torch.autograd.grad(losses.sum(), lams, allow_unused=True)
    finally:
        for p in params:
            p.requires_grad_(True)
    grad_of = {id(lam): g for lam, g in zip(lams, grads)}
    rec = {}
    for s in cut:
        for lam, a, sel, w in calls[s.index]:
            g = grad_of[id(lam)]
            g = torch.zeros_like(w) if g is None else g.to(torch.float64)
            for kk in levels[s.index]:
                d, e = cut_margin(s.rule, a, sel, w, kk)
                new = cut_weights(s.rule, a, sel, w, kk)
                ratio = torch.where(w != 0, new / torch.where(w != 0, w, 1.0), 1.0)
                lin = (g * (ratio - 1)).sum(-1)
                rec.setdefault((s.index, kk), []).append((d.cpu().numpy(), e.cpu().numpy(), lin.cpu().numpy()))
    return losses.detach().cpu(), rec


def _single_cuts(model, batch: Batch, loss, sites, i, rows: np.ndarray, ks: list[int], k: int,
                 replica_tokens: int) -> np.ndarray:
    """:math:`D_s(k')`, ``(len(rows), len(ks))``: the loss change of each row's sequence when that row alone is
    cut to ``k'`` in layer ``i`` (everything else as shipped); one replica per ``k'`` and one as shipped."""
    B, S = batch.ids.shape[0], batch.ids.numel() // batch.ids.shape[0]
    R = len(ks) + 1
    unit = np.repeat(rows // S, R)
    pos = np.repeat(rows % S, R)
    level = np.tile(np.array(ks + [k]), rows.size)
    per = max(1, replica_tokens // S)
    phi = np.empty(unit.size)
    for a in range(0, unit.size, per):
        sl = slice(a, a + per)
        n = unit[sl].size
        un = torch.as_tensor(unit[sl])
        rb = Batch(_select(batch.inputs, un, B), batch.ids[un])
        keep_rows = np.full(n * S, k)
        keep_rows[np.arange(n) * S + pos[sl]] = level[sl]
        kr = torch.as_tensor(keep_rows)
        with cutting(sites, {i: lambda N, kr=kr: kr}):
            phi[sl] = _forward(model, rb, loss).sum(-1).numpy()
    phi = phi.reshape(rows.size, R)
    return phi[:, :-1] - phi[:, -1:]


def price_topk(model, batches: list[Batch], loss: Callable, *, layers=None, router_path=None, top_k=None,
               sample_tokens: int = 256, replica_tokens: int = 8192, seed=0, progress: bool = False) -> TopKPrice:
    r"""The loss of cutting each top-k layer to ``k − 1, …, 1`` (the others as shipped), predicted from the cut
    margins and the contrasts of dropping of ``sample_tokens`` rows per layer (cross-fitted) and measured; and,
    for each budget :math:`B = L k'` of expert slots per token, the allocation of k over the layers that the
    predictions favour, measured beside uniform k' (module docstring).

    Args:
        model, batches, loss, layers, router_path, top_k: as :func:`softhard.inspect.hardening.harden`.
        sample_tokens: rows per layer that get a contrast of dropping (seeded Bernoulli sample).
        replica_tokens: tokens per forward call when re-running sequences for the contrasts.
        seed: seeds the sample and the cross-fitting folds.

    Returns:
        :class:`TopKPrice`.
    """
    where = "price_topk"
    seed = resolve_seed(seed, where)
    try:
        sample_tokens = check_int(sample_tokens, "sample_tokens", where)
        replica_tokens = check_int(replica_tokens, "replica_tokens", where)
    except (TypeError, ValueError) as e:
        raise InspectError(str(e)) from None
    if not batches:
        raise InspectError("no tokens to price (the batch list is empty).")
    sites = find_routers(model, router_path=router_path, layers=layers, top_k=top_k)
    read_routers(model, sites, batches[0].inputs)
    sites = [s for s in sites if s.rule is not None]
    cut = [s for s in sites if s.rule.k >= 2]
    if not cut:
        raise InspectError(f"{where}: no MoE layer routes to two experts or more (k >= 2): there is no k to cut.")
    for s in cut:
        if s.reweight(lambda a, sel, w: w) is None:
            raise InspectError(f"{where}: layer {s.index} ({s.name}) returns the {s.layout.name} format, whose weights "
                               f"cannot be set per router row, so its k cannot be cut here.")
    idx = [s.index for s in cut]
    K = {s.index: s.rule.k for s in cut}
    levels = {i: list(range(K[i] - 1, 0, -1)) for i in idx}
    # 1. the clean pass, with the gradient: every row's cut margin at each k', its linear contrast, the losses
    margins = {(i, kk): [] for i in idx for kk in levels[i]}
    shares = {(i, kk): [] for i in idx for kk in levels[i]}
    linear = {(i, kk): [] for i in idx for kk in levels[i]}
    shipped = []
    bar = None
    n_meas = len(batches) * (1 + sum(len(v) for v in levels.values()))
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_meas, desc="topk: measured cuts", unit="fwd", leave=False)
    for batch in batches:
        losses, rec = _clean_pass(model, batch, loss, cut, levels)
        shipped.append(losses)
        for key in margins:
            d = np.concatenate([x[0] for x in rec[key]])
            if d.size != batch.ids.numel():
                raise InspectError(f"{where}: layer {key[0]} routed {d.size} rows for {batch.ids.numel()} tokens; "
                                   f"pricing needs one router row per token.")
            margins[key].append(d)
            shares[key].append(np.concatenate([x[1] for x in rec[key]]))
            linear[key].append(np.concatenate([x[2] for x in rec[key]]))
        if bar is not None:
            bar.update(1)
    # 2. measured: each layer alone at each k'
    measured = {key: [] for key in margins}
    for batch in batches:
        for (i, kk) in margins:
            with cutting(cut, {i: kk}):
                measured[(i, kk)].append(_forward(model, batch, loss))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    flat = lambda xs: torch.cat([x.reshape(-1) for x in xs]).numpy()  # noqa: E731
    l_ship = flat(shipped)
    n_per = [x.shape[0] for x in shipped]
    pos_starts = np.concatenate([[0], np.cumsum(np.repeat([x.shape[1] for x in shipped], n_per))[:-1]]).astype(int)
    row_len = [b.ids.numel() // b.ids.shape[0] for b in batches]
    row_starts = np.concatenate([[0], np.cumsum(np.repeat(row_len, n_per))[:-1]]).astype(int)
    n_pos, n_rows, n_seq = l_ship.size, sum(b.ids.numel() for b in batches), len(pos_starts)
    # 3. the contrasts of dropping, on a sample of rows per layer
    offsets = np.cumsum([0] + [b.ids.numel() for b in batches])
    D = {}
    take = {}
    prob = min(1.0, sample_tokens / n_rows)
    for i in idx:
        rng = np.random.default_rng(np.random.SeedSequence([seed, i, 23]))
        take[i] = rng.random(n_rows) < prob
        D[i] = np.zeros((n_rows, len(levels[i])))
        it = enumerate(batches)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(list(it), desc=f"topk: contrasts, layer {i}", leave=False)
        for b, batch in it:
            rows = np.nonzero(take[i][offsets[b]:offsets[b + 1]])[0]
            if rows.size:
                D[i][offsets[b] + rows] = _single_cuts(model, batch, loss, cut, i, rows, levels[i], K[i],
                                                       replica_tokens)
    # 4. per-sequence sums; the linear contrasts of every row plus the cross-fitted mean residual of the sampled
    #    rows' contrasts (D - g) in cut-margin bins; jackknife
    fold = sequence_folds(n_seq, seed)
    keys = list(margins)
    blocks = [segment_sums(np.ones(n_pos), pos_starts)[:, None]]
    for (i, kk) in keys:
        j = levels[i].index(kk)
        delta, g = np.concatenate(margins[(i, kk)]), np.concatenate(linear[(i, kk)])
        fin = np.isfinite(delta)
        edges = np.quantile(delta[fin], np.linspace(0, 1, CUT_BINS + 1)[1:-1]) if fin.any() else np.zeros(0)
        b = np.where(fin, np.searchsorted(edges, delta, side="right"), 0)
        onehot = np.zeros((n_rows, CUT_BINS))
        onehot[np.arange(n_rows), b] = 1.0
        w = np.where(take[i], 1.0 / prob, 0.0)
        blocks += [segment_sums(flat(measured[(i, kk)]) - l_ship, pos_starts)[:, None],
                   segment_sums(g, row_starts)[:, None],
                   segment_sums(onehot, row_starts),
                   segment_sums(onehot * ((D[i][:, j] - g) * w)[:, None], row_starts)]
    X = np.concatenate(blocks, 1)
    S = crossfit_stats(X, fold)
    d = X.shape[1]
    per = 2 + 2 * CUT_BINS

    def fn(tot):
        A, B = tot[:, :d], tot[:, d:]
        npos = A[:, 0] + B[:, 0]
        out = []
        for n in range(len(keys)):
            o = 1 + n * per
            meas = (A[:, o] + B[:, o]) / npos
            lin = (A[:, o + 1] + B[:, o + 1]) / npos
            ca, cb = A[:, o + 2:o + 2 + CUT_BINS], B[:, o + 2:o + 2 + CUT_BINS]
            ra, rb = A[:, o + 2 + CUT_BINS:o + per], B[:, o + 2 + CUT_BINS:o + per]
            with np.errstate(divide="ignore", invalid="ignore"):
                pooled = np.where(ca + cb > 0, (ra + rb) / np.where(ca + cb > 0, ca + cb, 1), 0.0)
                ma = np.where(ca > 0, ra / np.where(ca > 0, ca, 1), pooled)
                mb = np.where(cb > 0, rb / np.where(cb > 0, cb, 1), pooled)
            pred = lin + ((ca * mb).sum(1) + (cb * ma).sum(1)) / npos
            out += [meas, pred, meas - pred, lin]
        return np.stack(out, 1)

    est = jackknife(S, fn)
    v, s = np.atleast_1d(est.value), np.atleast_1d(est.stderr)
    site_of = {st.index: st for st in cut}
    rows, costs = [], {i: {K[i]: 0.0} for i in idx}
    for n, (i, kk) in enumerate(keys):
        mv, pv = float(v[4 * n]), float(v[4 * n + 1])
        delta = np.concatenate(margins[(i, kk)])
        pe = mean_estimate(flat(measured[(i, kk)]) - l_ship)
        rows.append({"layer": i, "module": site_of[i].name, "k": K[i], "k_cut": kk, "measured": mv,
                     "measured_stderr": pe.stderr, "measured_stderr_seq": float(s[4 * n]), "predicted": pv,
                     "predicted_stderr": float(s[4 * n + 1]), "diff_stderr": float(s[4 * n + 2]),
                     "ratio": mv / pv if pv else math.nan,
                     "agrees": bool(abs(mv - pv) <= 2 * float(s[4 * n + 2])),
                     "predicted_linear": float(v[4 * n + 3]), "predicted_linear_stderr": float(s[4 * n + 3]),
                     "removed_share_mean": float(np.concatenate(shares[(i, kk)]).mean()),
                     "cut_margin_median": float(np.median(delta[np.isfinite(delta)])) if np.isfinite(delta).any()
                     else math.inf, "contrasted": int(take[i].sum())})
        costs[i][kk] = pv
    budgets = _budgets(model, batches, loss, cut, costs, K, l_ship, pos_starts, progress)
    meta = {"model_class": type(model).__name__, "layers": idx, "k": {str(i): K[i] for i in idx}, "tokens": n_pos,
            "router_rows": n_rows, "sequences": n_seq, "sample_tokens": sample_tokens, "seed": seed,
            "shipped_loss": float(l_ship.mean()), "cut_bins": CUT_BINS,
            "definition": "layer cut to its k' best-ranked selected experts (by selection score), weights "
                          "renormalised where the rule renormalises; predicted = every row's linear contrast (the "
                          "loss's gradient along the cut) + the cross-fitted mean remainder (single-row contrast of "
                          "dropping minus its linear contrast) of its cut-margin bin; errors: delete-one-sequence "
                          "jackknife, paired"}
    return TopKPrice(rows, budgets, meta)


def _budgets(model, batches, loss, cut, costs, K, l_ship, pos_starts, progress) -> list[dict]:
    """For each budget ``B = L k'`` (k' = 1 .. k − 1 of the smallest k), the predicted-best allocation and
    uniform k', both measured with every layer cut at once; their difference paired per sequence."""
    idx = list(costs)
    L = len(idx)
    out = []
    flat = lambda xs: torch.cat([x.reshape(-1) for x in xs]).numpy()  # noqa: E731
    for kp in range(min(K.values()) - 1, 0, -1):
        B = L * kp
        alloc = allocate(costs, B)
        if alloc is None:
            continue
        uniform = {i: kp for i in idx}
        res = {}
        for name, al in (("chosen", alloc), ("uniform", uniform)):
            if name == "uniform" and al == alloc:
                res[name] = res["chosen"]
                continue
            ls = []
            for batch in batches:
                with cutting(cut, {i: k for i, k in al.items() if k < K[i]}):
                    ls.append(_forward(model, batch, loss))
            res[name] = flat(ls) - l_ship
        seq = lambda x: segment_sums(x, pos_starts)  # noqa: E731
        npos = segment_sums(np.ones(l_ship.size), pos_starts)
        stats = np.stack([npos, seq(res["chosen"]), seq(res["uniform"])], 1)
        e = jackknife(stats, lambda t: np.stack([t[:, 1] / t[:, 0], t[:, 2] / t[:, 0], (t[:, 1] - t[:, 2]) / t[:, 0]],
                                                1))
        v, s = np.atleast_1d(e.value), np.atleast_1d(e.stderr)
        out.append({"budget": B, "uniform_k": kp, "allocation": ",".join(str(alloc[i]) for i in idx),
                    "predicted_chosen": float(sum(costs[i][alloc[i]] for i in idx)),
                    "predicted_uniform": float(sum(costs[i][kp] for i in idx)),
                    "measured_chosen": float(v[0]), "measured_chosen_stderr": float(s[0]),
                    "measured_uniform": float(v[1]), "measured_uniform_stderr": float(s[1]),
                    "chosen_minus_uniform": float(v[2]), "chosen_minus_uniform_stderr": float(s[2])})
    return out


def write_topk(p: TopKPrice, out) -> list[Path]:
    """Write ``topk.{csv,json,tex}`` (one row per layer and k') and ``topk_budget.{csv,json,tex}``."""
    from ...results.io import write_table
    from ...results.table import Table

    cols = list(dict.fromkeys(k for r in p.rows for k in r))
    t = Table("topk", cols, p.rows, p.meta)
    if p.budgets:
        bcols = list(dict.fromkeys(k for r in p.budgets for k in r))
        t.extras["topk_budget"] = Table("topk_budget", bcols, p.budgets, {"seed": p.meta["seed"]})
    return write_table(t, out)


def topk_verdict(p: TopKPrice) -> str:
    """One line: how many (layer, k') cuts the prediction matches within 2 paired standard errors, the range of
    measured / predicted, and per budget whether the predicted allocation beat uniform k at equal FLOPs."""
    ok = sum(r["agrees"] for r in p.rows)
    rs = [r["ratio"] for r in p.rows if math.isfinite(r["ratio"])]
    line = (f"{ok} of {len(p.rows)} cuts (layer, k') predicted within 2 paired standard errors"
            + (f", measured/predicted {min(rs):.2f}–{max(rs):.2f}" if rs else ""))
    for b in p.budgets:
        if b["allocation"] == ",".join([str(b["uniform_k"])] * len(p.meta["layers"])):
            line += f"; budget {b['budget']}: the predictions choose uniform k = {b['uniform_k']}"
            continue
        d, s = b["chosen_minus_uniform"], b["chosen_minus_uniform_stderr"]
        line += (f"; budget {b['budget']}: k = {b['allocation']} vs uniform {b['uniform_k']}: "
                 f"{d:+.4g} ± {s:.2g} nats")
    return line


def topk_inspected(model_name: str, net, batches: list[Batch], out, *, layers=None, router_path=None, top_k=None,
                   seed=0, sample_tokens: int = 256, progress: bool = False) -> tuple[dict, list[Path]]:
    """:func:`price_topk` for ``softhard inspect --topk`` (the loss of :func:`softhard.inspect.hardening.task_loss`);
    writes :func:`write_topk`'s files, returns ``(summary, paths)``."""
    loss = task_loss(model_name, net, batches, seed, "--topk")
    p = price_topk(net, batches, loss, layers=layers, router_path=router_path, top_k=top_k, seed=seed,
                   sample_tokens=sample_tokens, progress=progress)
    p.meta["model"] = str(model_name)
    p.meta["verdict"] = topk_verdict(p)
    return {"verdict": p.meta["verdict"], "rows": len(p.rows)}, write_topk(p, out)
