r"""Inspect a model layer by layer: capture, statistics, sensitivity, flip rates, and the files.

:func:`inspect_model` runs any ``torch.nn.Module`` over given batches; :func:`inspect_path` is what
``softhard inspect`` calls (load a local model directory or ``softhard:digits``, make batches, inspect,
write ``layers.csv``, ``summary.json``, per-layer PNGs and ``report.html``).

First forwards (untimed) read the routers until each routing rule is identified from enough tokens
(:func:`softhard.inspect.layouts.identify_rule`; usually the first batch); every batch, these included, is then
inspected, and the rule is re-checked on every call against what the experts compute (``agreement``) and the
weights the router returns (``weight_agreement``); a layer whose rule stops agreeing is reported (``rule_checks``
in the metadata, and a note). Then per batch: one forward without hooks and one with the
capture hooks (in alternating order), both timed in CPU seconds of the process. ``hook_overhead`` is
``(Σ hooked − Σ plain) / Σ plain`` over the whole run — the cost of the capture (margins, statistics and the
flip-rate re-routing) relative to the model's own forward — and is left out (``None``, with the reason) when the
plain forwards took less than :data:`MIN_CPU_SECONDS` in all. Then the sensitivity variants
(``len(layers) × (len(taus) + dense)`` forwards).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .._validate import check_float, check_grid, check_int
from ..estimators.reducer import resolve_seed
from .digits import DIGITS
from .hooks import PERTURBATIONS, RouterCapture, block_generator, capture_block_outputs, perturb_hidden
from .layouts import InspectError, find_routers, parse_layers, settle
from .loading import DTYPES, Batch, encode_text, load_model, token_batches, vocab_size
from .sensitivity import Sensitivity, final_output
from .stats import LayerStats

__all__ = ["Inspection", "inspect_model", "inspect_path", "inspect_paths", "compare_rows", "write_inspection",
           "default_widths", "DIGITS", "TINY_LM", "MIN_CPU_SECONDS"]

TINY_LM = "softhard:tiny-lm"  # the first language MoE trained and cached by softhard (.tinylm; the zoo: .zoo.models)
MIN_CPU_SECONDS = 0.5  # plain-forward CPU time below which the hook overhead is not reported


@dataclass
class Inspection:
    """The result of :func:`inspect_model`.

    ``rows``: one flat dict per MoE layer (the columns of ``layers.csv``); ``layers``: per layer, the
    routing rule, the full curves and lists (width grid with β and its standard errors, histograms near 0,
    expert load, the tokens nearest to a tie, the sensitivity table); ``meta``: model, settings, seed,
    CPU timings (``hook_overhead``, see the module docstring) and versions; ``tokens``: per-token arrays when
    asked for (``save_tokens``).
    """

    rows: list[dict]
    layers: list[dict]
    meta: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)


def default_widths(taus=(), tie_widths=()) -> np.ndarray:
    """Width grid: 61 log-spaced widths in [1e-4, 1e2] plus ``2τ`` for each τ and the tie widths."""
    extra = [2 * float(t) for t in taus] + [float(w) for w in tie_widths]
    return np.unique(np.concatenate([np.logspace(-4, 2, 61), np.asarray(extra, dtype=np.float64)]))


def _fmt(x: float) -> str:
    return f"{x:g}"


def _forward(model, batch: Batch):
    """``model(**batch.inputs)`` without gradients; a failure of the model itself becomes one line."""
    try:
        with torch.no_grad():
            return model(**batch.inputs)
    except InspectError:
        raise
    except Exception as e:  # noqa: BLE001 - the model's own error, reported in one line (--debug: traceback)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InspectError(f"the model's forward pass failed: {type(e).__name__}: {msg}") from e


def inspect_model(model, batches: Iterable[Batch], *, describe: Callable | None = None, layers=None,
                  router_path: str | None = None, top_k: int | None = None, taus=(0.25, 0.5, 1.0, 2.0),
                  dense: bool = True, widths=None, tie_widths=(0.01, 0.1), perturbation: str | None = "fp16",
                  noise: float = 1e-3, seed=0, reservoir: int = 1 << 16, nearest: int = 20,
                  progress: bool = False, measure_overhead: bool = True, save_tokens: bool = False) -> Inspection:
    r"""Per-layer routing statistics, sensitivity and flip rates of ``model`` on ``batches``.

    Per MoE layer (paper §2–§4 on the layer's own routing rule; see :mod:`softhard.inspect.stats`): the decision
    margin :math:`m` of the rule (the smallest change of the ranked scores that changes the selected set;
    :math:`a_{(1)} - a_{(2)}`, the paper's Δ (2.6), for a top-1 router) and :math:`\beta(w) = \mu(m \le w)`
    (2.13) on ``widths``, with the raw-logit margin :math:`a_{(k)} - a_{(k+1)}` beside it; the density of
    :math:`m` at 0 with its standard error; the tail fit :math:`\mu(m \le t) \approx C t^\alpha`
    (Assumption 4.2); entropy, load, agreement of the rule with the model; the tokens nearest to a tie; the flip
    rate under ``perturbation``; the relative change of block and final output at each τ and dense
    (:mod:`softhard.inspect.sensitivity`), beside :math:`\beta(2\tau)` (§7).

    Args:
        model: any ``nn.Module`` called as ``model(**batch.inputs)`` (put it in eval mode first).
        batches: :class:`~softhard.inspect.loading.Batch` iterable (consumed once); ``ids (B, S)`` map router
            rows to tokens.
        describe: ``(ids (S,), position) -> str`` text of a token in context (e.g. from a tokenizer).
        layers, router_path, top_k: see :func:`softhard.inspect.find_routers`.
        taus: temperatures ``(T,)`` for the sensitivity (τ = 1 is the model as shipped: exactly 0).
        dense: also run each block fully dense.
        widths: width grid ``(W,)`` (default :func:`default_widths`); tie_widths: the ``w`` of the
            "within w of a tie" columns (added to the grid).
        perturbation: ``"fp16"``, ``"noise"`` (Gaussian, relative size ``noise``) or ``None``.
        seed: seeds the reservoir and the noise; results depend on (seed, batches) only.
        reservoir: margins kept per layer for density, tail fit and histograms; nearest: near-tie tokens kept.
        progress: a progress bar per batch.
        measure_overhead: time a plain forward beside each hooked one (doubles the capture's forward cost).
        save_tokens: keep every token's margins and selection (``Inspection.tokens``; memory grows with tokens).
    """
    where = "inspect_model"
    seed = resolve_seed(seed, where)
    taus = [] if taus is None or len(taus) == 0 else [float(t) for t in check_grid(taus, "taus", where, 0.0, True)]
    tie_widths = [] if not tie_widths else [float(w) for w in check_grid(tie_widths, "tie_widths", where)]
    w = default_widths(taus, tie_widths) if widths is None else np.unique(
        np.concatenate([check_grid(widths, "widths", where).numpy(), 2 * np.asarray(taus), tie_widths]))
    if perturbation is not None and perturbation not in PERTURBATIONS:
        raise InspectError(f"The 'perturbation' parameter of {where} must be one of {PERTURBATIONS} or None. "
                           f"Got {perturbation!r}.")
    noise = check_float(noise, "noise", where, 0.0, math.inf)
    sites = find_routers(model, router_path=router_path, layers=layers, top_k=top_k, _where="inspect_model")
    stats = {s.index: LayerStats(s, w, reservoir=check_int(reservoir, "reservoir", where, low=2),
                                 nearest=check_int(nearest, "nearest", where, low=0), seed=seed,
                                 keep_tokens=save_tokens) for s in sites}
    state = {"offset": 0, "batch": 0, "ids": None}

    def sink(site, routed, args):
        if not bool(torch.isfinite(routed.logits).all()) and not site.slots.get("probs"):
            raise InspectError(f"layer {site.index} ({site.name}) produced non-finite router logits.")
        n, ids = routed.logits.shape[0], state["ids"]
        index = state["offset"] + np.arange(n) if n == ids.numel() else np.full(n, -1)
        stats[site.index].update(routed, index)
        if perturbation is not None:
            g = block_generator(seed, site.index, state["batch"])
            stats[site.index].update_flips(routed, site.route(perturb_hidden(args[0], perturbation, noise, g), args))

    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise InspectError("no tokens to inspect (the batch list is empty).")
    ident = [first]  # the rules are identified from as many batches as it takes (layouts.identify_rule), then
    with RouterCapture(sites, lambda site, routed, args: None):  # every batch is inspected, these ones included
        _forward(model, first)
        while any(s.rule is not None and not s.identified for s in sites):
            nxt = next(it, None)
            if nxt is None:
                break
            ident.append(nxt)
            _forward(model, nxt)
    settle(sites)
    it = _chain(ident[1:], it)
    unread = [s for s in sites if s.rule is None]
    sites = [s for s in sites if s.rule is not None]
    if not sites:
        raise InspectError(f"none of the {len(unread)} router modules of {type(model).__name__} was called on these "
                           f"inputs ({', '.join(s.name for s in unread[:3])}...).")
    sens = Sensitivity(sites, taus, dense) if (taus or dense) else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="inspecting", unit="batch", leave=False)
    pairs = []  # per batch: CPU seconds of the plain and of the hooked forward
    capture = RouterCapture(sites, sink)
    ids_all = []

    def hooked(batch):
        store = {}
        with capture, capture_block_outputs(sites, store):
            return _forward(model, batch), store

    try:
        b = 0
        for batch in _chain(first, it):
            state.update(batch=b, ids=batch.ids)
            ids_all.append(batch.ids.cpu())
            if not measure_overhead:
                out, base_blocks = hooked(batch)
            elif b % 2:  # alternate the order, so that drift and warm-up favour neither
                (out, base_blocks), t_hook = _cpu_timed(hooked, batch)
                t_plain = _cpu_timed(_forward, model, batch)[1]
            else:
                t_plain = _cpu_timed(_forward, model, batch)[1]
                (out, base_blocks), t_hook = _cpu_timed(hooked, batch)
            if measure_overhead:
                pairs.append((t_plain, t_hook))
            if sens is not None:
                sens.update(model, batch.inputs, base_blocks, final_output(out))
            state["offset"] += batch.ids.numel()
            b += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    layers_out, rows, tokens = [], [], {}
    silent = [s.name for s in sites if stats[s.index].n == 0]
    for s in sites:
        st = stats[s.index]
        if st.n == 0:
            continue
        r = st.result()
        lay = _layer_details(s, r, sens, taus, ids_all, describe)
        layers_out.append(lay)
        rows.append(_row(s, r, lay, taus, tie_widths, dense))
        if save_tokens:
            tokens.update({f"layer{s.index:02d}_{k}": v for k, v in st.tokens().items()})
    if save_tokens and tokens:  # the token stream, to align two dumps (softhard compare-routing)
        tokens["token_ids"] = torch.cat([i.reshape(-1) for i in ids_all]).numpy().astype(np.int64)
        tokens["sequence_length"] = np.array([ids_all[0].shape[-1] if ids_all[0].ndim > 1 else 1], dtype=np.int64)
    overhead, overhead_se, note = _overhead(pairs) if measure_overhead else (None, None, "not measured (--no-overhead)")
    cpu_plain, cpu_hooked = (sum(p for p, _ in pairs), sum(h for _, h in pairs)) if pairs else (None, None)
    meta = {
        "model_class": type(model).__name__, "layers": len(layers_out), "tokens": state["offset"], "batches": b,
        "seed": seed, "taus": taus, "dense": dense, "tie_widths": tie_widths, "perturbation": perturbation,
        "noise": noise if perturbation == "noise" else None, "reservoir": reservoir,
        "cpu_seconds_plain_forward": cpu_plain, "cpu_seconds_hooked_forward": cpu_hooked,
        "hook_overhead": overhead, "hook_overhead_stderr": overhead_se, "hook_overhead_note": note,
        "routers_not_called": [s.name for s in unread] + silent,
        "rule_checks": _rule_checks(sites, stats),
        "versions": _versions(),
    }
    return Inspection(rows, layers_out, meta, tokens)


def _rule_checks(sites, stats) -> list[str]:
    """One line per layer whose rule was settled ambiguous, or that stopped agreeing with what its experts compute
    (selection) or with the weights the router returns, on the calls after it was identified."""
    out = []
    for s in sites:
        st = stats[s.index]
        if st.n == 0:
            continue
        lab = f"layer {s.index} ({s.name})"
        if s.rule_note:
            out.append(f"{lab}: the rule is ambiguous on these tokens ({s.rule_note}); the first candidate is used")
        a, w = st.agreement.estimate(), st.weight_agreement.estimate()
        src = "the experts that computed each token" if st.agreement_source["experts"] else "the router's output"
        if a.n and a.value < 1:
            out.append(f"{lab}: the identified rule ({s.rule.describe()}) selects as {src} on {a.value:.1%} of "
                       f"{a.n} tokens only")
        if w.n and w.value < 1:
            out.append(f"{lab}: the returned weights equal the identified weight map on {w.value:.1%} of {w.n} "
                       f"tokens only")
    return out


def _overhead(pairs: list[tuple[float, float]]) -> tuple[float | None, float | None, str | None]:
    r"""Hook overhead over the whole run from per-batch CPU times ``(plain, hooked)``:
    :math:`R = \sum_b h_b / \sum_b p_b - 1`, with the ratio estimator's standard error
    :math:`\mathrm{se} = \sqrt{\sum_b (h_b - (1+R) p_b)^2 / (n(n-1))} / \bar p` over the ``n`` batches.
    ``(None, None, reason)`` when the plain forwards took less than :data:`MIN_CPU_SECONDS`, when fewer than 4
    batches were timed, or when the estimate is negative beyond two standard errors (CPU-time noise)."""
    n = len(pairs)
    plain = sum(p for p, _ in pairs)
    hooked = sum(h for _, h in pairs)
    if n < 4 or plain < MIN_CPU_SECONDS:
        return None, None, (f"run too short to measure: {n} batches whose plain forwards took {plain:.3f} s of CPU "
                            f"time in all (at least 4 batches and {MIN_CPU_SECONDS:g} s needed)")
    r = hooked / plain - 1.0
    se = math.sqrt(sum((h - (1 + r) * p) ** 2 for p, h in pairs) / (n * (n - 1))) / (plain / n)
    if r + 2 * se < 0:
        return None, None, (f"not measurable here: hooked forwards took less CPU time than plain ones "
                            f"({r:+.1%} ± {se:.1%} over {n} batches), so CPU-time noise dominates")
    return r, se, None


def _chain(first, it):
    if isinstance(first, list):
        yield from first
    else:
        yield first
    yield from it


def _cpu_timed(fn, *args):
    """``(fn(*args), CPU seconds of this process)``: CPU time is what hooks add, and unlike wall time it does not
    count the waits caused by other processes on a shared machine."""
    c0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - c0


def _versions() -> dict:
    from .. import __version__

    out = {"softhard": __version__, "torch": torch.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def _locate(g: int, ids_all: list[torch.Tensor]) -> tuple[int, int, torch.Tensor] | None:
    """Global row ``g`` -> (sequence number, position, ids of that sequence)."""
    seq0 = 0
    for ids in ids_all:
        if g < ids.numel():
            b, pos = divmod(g, ids.shape[1])
            return seq0 + b, pos, ids[b]
        g -= ids.numel()
        seq0 += ids.shape[0]
    return None


def _layer_details(site, r: dict, sens, taus, ids_all, describe) -> dict:
    near = []
    for margin, g in r["nearest"]:
        loc = _locate(g, ids_all) if g >= 0 else None
        entry = {"margin": margin, "sequence": -1, "position": -1, "token_id": -1, "text": ""}
        if loc is not None:
            seq, pos, ids = loc
            entry.update(sequence=seq, position=pos, token_id=int(ids[pos]),
                         text=describe(ids, pos) if describe is not None else f"id {int(ids[pos])}")
        near.append(entry)
    sens_rows = []
    if sens is not None:  # τ divides the logits: β(2τ) of the logit margin when m is measured on biased scores
        beta = r["beta"] if site.rule.margin_space == "logits" else r["beta_logit"]
        for row in sens.result(site.index):
            t = row["tau"]
            b2 = beta[int(np.searchsorted(r["widths"], 2 * t))] if t != "dense" else None
            sens_rows.append({"tau": t, "block": row["block"].as_dict(), "final": row["final"].as_dict(),
                              "beta_2tau": b2.as_dict() if b2 is not None else None,
                              "available": row["block"].n > 0})
    rule = site.rule
    return {
        "layer": site.index, "module": site.name, "block": site.block_name, "layout": site.layout.name,
        "rule": rule.describe(), "rule_source": rule.source, "margin_space": rule.margin_space,
        "selection": rule.selection, "experts": site.num_experts, "top_k": site.top_k, "tokens": r["n"],
        "temper": site.temper(1.0) is not None, "densify": site.densify() is not None,
        "widths": r["widths"].tolist(), "beta": r["beta"].as_dict(), "beta_logit": r["beta_logit"].as_dict(),
        "density0": r["density0"].as_dict(), "density0_logit": r["density0_logit"].as_dict(),
        "tail": dataclasses.asdict(r["tail"]),
        "hist": {k: np.asarray(v).tolist() for k, v in r["hist"].items()},
        "hist_logit": {k: np.asarray(v).tolist() for k, v in r["hist_logit"].items()},
        "load": r["load"].tolist(), "nearest": near, "sensitivity": sens_rows,
        "agreement": r["agreement"].as_dict(), "agreement_source": r["agreement_source"],
        "weight_agreement": r["weight_agreement"].as_dict(), "rule_note": site.rule_note,
        "dropped": r["dropped"].as_dict(),
        "flip_rate": r["flip_rate"].as_dict(), "flip_bound": r["flip_bound"].as_dict(),
        "quantiles": {str(q): list(v) for q, v in r["quantiles"].items()}, "reservoir": r["reservoir"],
    }


def _row(site, r: dict, lay: dict, taus, tie_widths, dense) -> dict:
    q = r["quantiles"]
    load = r["load"]
    with np.errstate(divide="ignore", invalid="ignore"):
        load_entropy = float(-(load[load > 0] * np.log(load[load > 0])).sum() / math.log(len(load)))
    tail = r["tail"]
    row = {
        "layer": site.index, "module": site.name, "layout": site.layout.name, "rule": lay["rule"],
        "margin_space": lay["margin_space"], "experts": site.num_experts, "top_k": site.top_k, "tokens": r["n"],
        "margin_q01": q[0.01][0], "margin_q10": q[0.1][0], "margin_q50": q[0.5][0],
        "logit_margin_q01": q[0.01][1], "logit_margin_q10": q[0.1][1], "logit_margin_q50": q[0.5][1],
        "density0": r["density0"].value, "density0_stderr": r["density0"].stderr,
        "logit_density0": r["density0_logit"].value, "logit_density0_stderr": r["density0_logit"].stderr,
        "tail_C": tail.C, "tail_C_stderr": tail.C_stderr, "tail_alpha": tail.alpha,
        "tail_alpha_stderr": tail.alpha_stderr,
        "entropy": r["entropy"].value, "entropy_stderr": r["entropy"].stderr,
        "load_max_ratio": float(load.max() * len(load)), "load_entropy": load_entropy,
        "agreement": r["agreement"].value, "agreement_source": r["agreement_source"],
        "weight_agreement": r["weight_agreement"].value, "dropped": r["dropped"].value,
    }
    widths = r["widths"]
    for wv in tie_widths:
        i = int(np.searchsorted(widths, wv))
        row[f"tie_w{_fmt(wv)}"] = float(r["beta"].value[i])
        row[f"tie_w{_fmt(wv)}_stderr"] = float(r["beta"].stderr[i])
    row.update(flip_rate=r["flip_rate"].value, flip_rate_stderr=r["flip_rate"].stderr,
               flip_bound=r["flip_bound"].value, flip_bound_stderr=r["flip_bound"].stderr)
    for s in lay["sensitivity"]:
        lab = "dense" if s["tau"] == "dense" else f"tau{_fmt(s['tau'])}"
        if s["beta_2tau"] is not None:
            row[f"beta_2{lab}"] = s["beta_2tau"]["value"]
        for part in ("block", "final"):
            row[f"sens_{part}_{lab}"] = s[part]["value"]
            row[f"sens_{part}_{lab}_stderr"] = s[part]["stderr"]
    return row


def write_inspection(ins: Inspection, out) -> list[Path]:
    """Write ``layers.csv`` (+ ``.json``, ``.tex``), ``summary.json``, ``layerNN.png`` and ``report.html``
    into ``out`` (atomically); figures and the page are rendered from the written files alone."""
    from ..report.fig_inspect import render_inspection
    from ..report.html import write_report
    from ..results.io import atomic_write, to_jsonable, write_table
    from ..results.table import Table

    out = Path(out)
    cols = list(dict.fromkeys(k for r in ins.rows for k in r))
    paths = write_table(Table("layers", cols, ins.rows, ins.meta), out)
    paths.append(atomic_write(out / "summary.json", json.dumps(
        to_jsonable({"meta": ins.meta, "layers": ins.layers}), indent=1) + "\n"))
    if ins.tokens:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **ins.tokens)
        paths.append(atomic_write(out / "tokens.npz", buf.getvalue()))
    paths += render_inspection(out)
    paths.append(write_report(out))
    return paths


def _digits(tokens: int, seed: int, batch_size: int):
    from .digits import train_digits_moe

    res = train_digits_moe(seed)
    x = res.x[:tokens]
    idx = torch.arange(x.shape[0])
    batches = [Batch({"x": x[i:i + batch_size]}, idx[i:i + batch_size, None]) for i in range(0, x.shape[0], batch_size)]

    def describe(ids, pos):
        i = int(ids[pos])
        return f"digit {int(res.y[i])} (row {i}{', test' if i >= res.n_train else ''})"

    info = {"train_accuracy": res.train_accuracy, "test_accuracy": res.test_accuracy, "n_train": res.n_train}
    return res.model, batches, describe, info


def inspect_path(model: str, out, **kw) -> tuple[Inspection, list[Path]]:
    """Inspect a local model directory (or ``"softhard:digits"``, ``"softhard:tiny-lm"``) into ``out``; the keywords
    and their meaning are those of :func:`_inspect_path`. A user error (:class:`InspectError`) leaves no output
    directory behind when this call created it and wrote nothing into it."""
    out = Path(out)
    created = not out.exists()
    try:
        return _inspect_path(model, out, **kw)
    except InspectError:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _inspect_path(model: str, out, *, tokens: int = 2048, text=None, random_ids: bool = False, layers=None,
                 trust_remote_code: bool = False, router_path: str | None = None, top_k: int | None = None,
                 seq_len: int = 64, batch_size: int = 8, taus=(0.25, 0.5, 1.0, 2.0), tie_widths=(0.01, 0.1),
                 perturbation: str | None = "fp16", noise: float = 1e-3, seed: int = 0, dtype: str | None = None,
                 device: str | None = None, device_map: str | None = None, measure_overhead: bool = True,
                 dense: bool = True, save_tokens: bool = False, progress: bool = False, harden: bool = False,
                 harden_taus=None, harden_path: str = "auto", max_tie_tokens: int = 512, topk: bool = False,
                 topk_tokens: int = 256, perturbations=(), calibration: float = 0.125,
                 quantize: str | None = None) -> tuple[Inspection, list[Path]]:
    """Inspect a local model directory (or ``"softhard:digits"``: the digits MoE trained here, or a language MoE
    of the zoo trained here and cached, ``"softhard:tiny-lm"``, ``"softhard:deepseek-lm"``, ``"softhard:qwen-lm"``,
    each also ``@SEED``: :mod:`.zoo.models`) and write the files of
    :func:`write_inspection` into ``out``. Returns the inspection and the written paths.

    ``tokens`` tokens are read from ``text`` (a text, JSON-lines or parquet file or a saved dataset, see
    :func:`softhard.inspect.loading.read_texts`; needs the model's tokenizer) or drawn uniformly from the
    vocabulary with ``seed`` (``random_ids``, the default without ``text``); for the digits model they are the
    first ``tokens`` images of the seeded order, for the zoo's models their held-out docstrings by default. ``dtype``
    (``float32``, ``bfloat16``, ``float16``), ``device`` and ``device_map`` are passed to
    :func:`~softhard.inspect.loading.load_model`. ``harden``: also the hardening curve
    (:func:`softhard.inspect.hardening.harden`, at ``harden_taus``, along ``harden_path``, with at most
    ``max_tie_tokens`` contrasted rows per layer within the bandwidth), written as ``hardening.csv``/``.json``/
    ``.png`` and a section of the report; ``topk``: also the price of cutting top-k
    (:func:`softhard.inspect.price.topk.price_topk`, ``topk_tokens`` contrasted rows per layer), written as
    ``topk.csv`` and ``topk_budget.csv``. ``perturbations``: kinds of
    :data:`softhard.inspect.price.flips.PRICED` whose flips are predicted beside measured
    (:func:`softhard.inspect.price.flips.price_flips`; whole-model kinds calibrated on the first ``calibration``
    share of the sequences), written as ``flips.csv``/``.json``/``.png`` and a section of the report.
    ``quantize``: ``"int8"``/``"int4"`` inspects the model with its weights quantized
    (:func:`softhard.inspect.price.flips.quantized_model`). User errors raise :class:`InspectError`.
    """
    from .price.flips import parse_perturbations
    from .zoo.models import parse_zoo_name, zoo_config

    perturbations = parse_perturbations(perturbations)

    try:
        zoo = parse_zoo_name(model)
    except ValueError as e:
        raise InspectError(str(e)) from None
    if (model == DIGITS or zoo) and (layers not in (None, "") or top_k is not None):  # known before any training
        from inspect import signature

        from .digits import MOE_LAYERS, train_digits_moe

        count = MOE_LAYERS if model == DIGITS else zoo_config(*zoo).layers
        wanted = parse_layers(layers)
        if wanted and max(wanted) >= count:
            raise InspectError(f"The 'layers' parameter of inspect must be MoE layer indices in [0, {count - 1}]. "
                               f"Got {wanted}.")
        experts = signature(train_digits_moe).parameters["num_experts"].default if model == DIGITS else \
            zoo_config(*zoo).experts
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k < experts):
            raise InspectError(f"The 'top_k' parameter of inspect must be an int in [1, {experts - 1}] ({model} has "
                               f"{experts} experts per layer). Got {top_k!r}.")
    try:
        tokens = check_int(tokens, "tokens", "inspect")
        seed = check_int(seed, "seed", "inspect", low=0)
        batch_size = check_int(batch_size, "batch_size", "inspect")
        seq_len = check_int(seq_len, "seq_len", "inspect")
        if top_k is not None:
            top_k = check_int(top_k, "top_k", "inspect")
        taus = check_grid(taus, "taus", "inspect", 0.0, True).tolist() if len(taus) else []
        tie_widths = check_grid(tie_widths, "tie_widths", "inspect").tolist() if len(tie_widths) else []
        noise = check_float(noise, "noise", "inspect", 0.0, math.inf)
        max_tie_tokens = check_int(max_tie_tokens, "max_tie_tokens", "inspect")
        topk_tokens = check_int(topk_tokens, "topk_tokens", "inspect")
        if harden_path not in ("auto", "logits", "weights"):
            raise InspectError(f"The 'harden_path' parameter of inspect must be one of ('auto', 'logits', "
                               f"'weights'). Got {harden_path!r}.")
        if harden and harden_taus is not None and (not len(harden_taus) or max(
                check_grid(harden_taus, "harden_taus", "inspect", 0.0, True).tolist()) > 1):
            raise InspectError(f"The 'harden_taus' parameter of inspect must be temperatures in (0, 1]. "
                               f"Got {list(harden_taus)}.")
    except (ValueError, TypeError) as e:
        raise InspectError(str(e)) from None
    if perturbation is not None and perturbation not in PERTURBATIONS:
        raise InspectError(f"The 'perturbation' parameter of inspect must be one of {PERTURBATIONS} or None. "
                           f"Got {perturbation!r}.")
    if dtype is not None and dtype not in DTYPES:
        raise InspectError(f"The 'dtype' parameter of inspect must be one of {tuple(DTYPES)}. Got {dtype!r}.")
    if text is not None and random_ids:
        raise InspectError("give either --text FILE or --random-ids, not both.")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InspectError(f"the output directory {out} cannot be written: {e.strerror or e}") from None
    notes = []
    if model == DIGITS:
        if text is not None:
            raise InspectError(f"{DIGITS} reads images, not text: drop --text.")
        net, batches, describe, extra = _digits(tokens, seed, batch_size)
        if dtype is not None or device not in (None, "cpu") or device_map is not None:
            notes.append(f"{DIGITS} runs in float64 on the CPU: --dtype/--device/--device-map ignored")
    elif zoo:  # issue 12 item 5, issue 20 item 5: the language MoEs trained and cached here
        from .zoo.models import zoo_lm
        from .zoo.train import heldout_ids

        if device not in (None, "cpu") or device_map is not None:
            notes.append(f"{model} runs on the CPU: --device/--device-map ignored")
        lm = zoo_lm(model, zoo_config(*zoo), progress=progress)
        net = lm.model if dtype is None else lm.model.to(DTYPES[dtype])
        if text is not None:
            ids = encode_text(text, lm.tokenizer, 256, max_tokens=tokens)[:tokens]
        elif random_ids:
            ids = torch.randint(0, 256, (tokens,), generator=torch.Generator().manual_seed(seed))
        else:
            ids = heldout_ids(lm, tokens)
        batches, describe = token_batches(net, ids, seq_len, batch_size), _token_describer(lm.tokenizer)
        extra = {"cache": str(lm.path), "training_seed": lm.info["config"]["seed"],
                 **{k: lm.info[k] for k in ("train_seconds", "heldout_loss", "unigram_loss", "bigram_loss", "params")}}
    else:
        parse_layers(layers)  # the options about the model's structure are checked before its weights load
        if text is not None:
            _check_text(model, text)
        net, tok = load_model(model, trust_remote_code=trust_remote_code, seed=seed,
                              dtype=DTYPES[dtype] if dtype else None, device=device, device_map=device_map,
                              notes=notes, check=lambda skeleton: find_routers(
                                  skeleton, router_path=router_path, layers=layers, top_k=top_k, _where="inspect"))
        vocab = vocab_size(net)
        if text is not None:
            ids = encode_text(text, tok, vocab, max_tokens=tokens)
        else:
            if vocab < 1:
                raise InspectError(f"{model}: the config (and its text_config) has no vocab_size to draw random "
                                   f"ids from.")
            ids = torch.randint(0, vocab, (tokens,), generator=torch.Generator().manual_seed(seed))
        batches = token_batches(net, ids, seq_len, batch_size)
        describe = _token_describer(tok)
        extra = {"dtype": str(next(net.parameters()).dtype).replace("torch.", ""),
                 "device": str(next(net.parameters()).device)}
    if quantize is not None:
        if quantize not in ("int8", "int4"):
            raise InspectError(f"The 'quantize' parameter of inspect must be int8 or int4. Got {quantize!r}.")
        from .price.flips import quantized_model

        net = quantized_model(net, 8 if quantize == "int8" else 4)
        notes.append(f"weights quantized to {quantize} (optimum-quanto, weight-only, dequantized)")
    t0 = time.perf_counter()
    ins = inspect_model(net, batches, describe=describe, layers=layers, router_path=router_path, top_k=top_k,
                        taus=taus, dense=dense, tie_widths=tie_widths, perturbation=perturbation, noise=noise,
                        seed=seed,
                        progress=progress, measure_overhead=measure_overhead, save_tokens=save_tokens)
    source = "digits" if model == DIGITS else "text" if text is not None else "random-ids" if (
        random_ids or not zoo) else "heldout"
    ins.meta.update(model=str(model), source=source, notes=notes + ins.meta.get("rule_checks", []),
                    wall_seconds=time.perf_counter() - t0, **extra)
    paths = []
    if perturbations:  # issue 20 item 1: flips predicted beside measured
        from .hooks import read_routers
        from .price.flips import price_flips, write_flips

        sites = read_routers(net, find_routers(net, router_path=router_path, layers=layers, top_k=top_k),
                             batches[0].inputs)
        frows, fmeta = price_flips(net, batches, sites, perturbations, noise=noise, seed=seed,
                                   calibration=calibration, progress=progress)
        fmeta.update(model=str(model), source=source)
        ins.meta["flips"] = fmeta["verdicts"]
        paths += write_flips(frows, fmeta, out)
    if harden:  # issue 12 item 4: the hardening curve, before the report that shows it
        from .hardening import harden_inspected

        ins.meta["hardening"], paths = harden_inspected(model, net, batches, out, taus=harden_taus, layers=layers,
                                                        router_path=router_path, top_k=top_k, seed=seed,
                                                        max_tie_tokens=max_tie_tokens, path=harden_path,
                                                        progress=progress)
    if topk:  # issue 20 item 3: cutting top-k priced
        from .price.topk import topk_inspected

        ins.meta["topk"], more = topk_inspected(model, net, batches, out, layers=layers, router_path=router_path,
                                                top_k=top_k, seed=seed, sample_tokens=topk_tokens,
                                                progress=progress)
        paths += more
    return ins, paths + write_inspection(ins, out)


def _check_text(model: str, text) -> None:
    """``--text`` before any weight loads: the file exists (or names a held-out text, ``softhard:prose``) and the
    model directory has a tokenizer."""
    from .zoo.texts import TEXT_PREFIX, text_kind

    if str(text).startswith(TEXT_PREFIX) and not Path(text).exists():
        try:
            text_kind(text)
        except ValueError as e:
            raise InspectError(str(e).replace("parameter of heldout_text", "parameter of inspect")) from None
    elif not Path(text).exists():
        raise InspectError(f"--text {text}: no such file or directory.")
    p = Path(model)
    if p.is_dir() and not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                            "tokenizer.model", "vocab.json")):
        raise InspectError(f"--text needs a tokenizer, and {model} has no tokenizer (no tokenizer.json, "
                           f"tokenizer_config.json, tokenizer.model or vocab.json): give --random-ids instead.")


def compare_rows(labels: list[str], inspections: list[Inspection]) -> list[dict]:
    """One row per (MoE layer, checkpoint): how β(w) at the tie widths, the density of the decision margin at 0
    and the expert load move across checkpoints of one model, with the change against the first checkpoint.
    Raises :class:`InspectError` when the checkpoints do not have the same MoE layers."""
    first = inspections[0]
    mods = [r["module"] for r in first.rows]
    for lab, ins in zip(labels[1:], inspections[1:]):
        if [r["module"] for r in ins.rows] != mods:
            raise InspectError(f"checkpoints {labels[0]} and {lab} do not have the same MoE layers "
                               f"({len(mods)} vs {len(ins.rows)}): --compare needs checkpoints of one model.")
    keys = [k for k in first.rows[0] if k.startswith("tie_w") and not k.endswith("_stderr")] if first.rows else []
    out = []
    for i, mod in enumerate(mods):
        base = first.rows[i]
        for c, (lab, ins) in enumerate(zip(labels, inspections)):
            r = ins.rows[i]
            row = {"layer": r["layer"], "module": mod, "checkpoint": lab, "order": c, "tokens": r["tokens"],
                   "density0": r["density0"], "density0_stderr": r["density0_stderr"],
                   "delta_density0": r["density0"] - base["density0"],
                   "load_max_ratio": r["load_max_ratio"], "load_entropy": r["load_entropy"],
                   "delta_load_entropy": r["load_entropy"] - base["load_entropy"],
                   "margin_q50": r["margin_q50"], "agreement": r["agreement"], "flip_rate": r["flip_rate"],
                   "flip_rate_stderr": r["flip_rate_stderr"], "load": ins.layers[i]["load"]}
            for k in keys:
                row[k], row[k + "_stderr"] = r[k], r[k + "_stderr"]
                row["delta_" + k] = r[k] - base[k]
            out.append(row)
    return out


def inspect_paths(models: list[str], out, **kw) -> tuple[list[Inspection], list[Path]]:
    """Inspect several checkpoints of one model on the same tokens (same ``seed`` and ``text``), each into
    ``out/<name>`` (:func:`inspect_path`), and write the side-by-side files ``out/compare.csv`` (+ ``.json``),
    ``out/compare.png`` and ``out/report.html``."""
    from ..results.table import Table
    from ..report.fig_inspect import compare_figure
    from ..report.html import write_compare_report
    from ..results.io import write_table

    labels, seen = [], {}
    for m in models:
        name = Path(str(m)).name.replace(":", "_") or "model"
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    results, paths = [], []
    for m, lab in zip(models, labels):
        ins, p = inspect_path(m, Path(out) / lab, **kw)
        results.append(ins)
        paths += p
    rows = compare_rows(labels, results)
    meta = {"checkpoints": labels, "models": [str(m) for m in models], "tokens": results[0].meta["tokens"],
            "seed": results[0].meta["seed"], "source": results[0].meta["source"]}
    cols = list(dict.fromkeys(k for r in rows for k in r if k != "load"))
    paths += write_table(Table("compare", cols, [{k: r[k] for k in cols} for r in rows], meta), out)
    from ..results.io import atomic_write, to_jsonable

    paths.append(atomic_write(Path(out) / "compare_summary.json",
                              json.dumps(to_jsonable({"meta": meta, "rows": rows}), indent=1) + "\n"))
    paths.append(compare_figure(out))
    paths.append(write_compare_report(out))
    return results, paths


def _token_describer(tok):
    if tok is None:
        return None

    def describe(ids, pos):
        before = tok.decode(ids[max(0, pos - 8):pos].tolist())
        return f"{before}[[{tok.decode([int(ids[pos])])}]]"

    return describe
