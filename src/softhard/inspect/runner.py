r"""Inspect a model layer by layer: capture, statistics, sensitivity, flip rates, and the files.

:func:`inspect_model` runs any ``torch.nn.Module`` over given batches; :func:`inspect_path` is what
``softhard inspect`` calls (load a local model directory or ``softhard:digits``, make batches, inspect,
write ``layers.csv``, ``summary.json``, per-layer PNGs and ``report.html``).

Per batch: one forward without hooks and one with the capture hooks (in alternating order), both timed in
CPU seconds; ``hook_overhead`` is the median over batches of their ratio minus 1. Then the sensitivity
variants (``len(layers) × (len(taus) + dense)`` forwards).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .._validate import check_float, check_grid, check_int
from ..estimate import resolve_seed
from .hooks import PERTURBATIONS, RouterCapture, block_generator, capture_block_outputs, perturb_hidden
from .layouts import InspectError, find_routers
from .loading import Batch, encode_text, load_model, token_batches
from .sensitivity import Sensitivity, final_output
from .stats import LayerStats

__all__ = ["Inspection", "inspect_model", "inspect_path", "write_inspection", "default_widths", "DIGITS", "TINY_LM"]

DIGITS = "softhard:digits"
TINY_LM = "softhard:tiny-lm"  # the language MoE trained and cached by softhard (.tinylm)


@dataclass
class Inspection:
    """The result of :func:`inspect_model`.

    ``rows``: one flat dict per MoE layer (the columns of ``layers.csv``); ``layers``: per layer, the
    full curves and lists (width grid with β and β_k and their standard errors, histograms near 0,
    expert load, the tokens nearest to a tie, the sensitivity table); ``meta``: model, settings, seed,
    CPU timings (``hook_overhead``: median over batches of hooked/plain forward time − 1) and versions.
    """

    rows: list[dict]
    layers: list[dict]
    meta: dict = field(default_factory=dict)


def default_widths(taus=(), tie_widths=()) -> np.ndarray:
    """Width grid: 61 log-spaced widths in [1e-4, 1e2] plus ``2τ`` for each τ and the tie widths."""
    extra = [2 * float(t) for t in taus] + [float(w) for w in tie_widths]
    return np.unique(np.concatenate([np.logspace(-4, 2, 61), np.asarray(extra, dtype=np.float64)]))


def _fmt(x: float) -> str:
    return f"{x:g}"


def _no_grad_forward(model, batch: Batch):
    with torch.no_grad():
        return model(**batch.inputs)


def inspect_model(model, batches: list[Batch], *, describe: Callable | None = None, layers=None,
                  router_path: str | None = None, top_k: int | None = None, taus=(0.25, 0.5, 1.0, 2.0),
                  dense: bool = True, widths=None, tie_widths=(0.01, 0.1), perturbation: str | None = "fp16",
                  noise: float = 1e-3, seed=0, reservoir: int = 1 << 16, nearest: int = 20,
                  progress: bool = False) -> Inspection:
    r"""Per-layer routing statistics, sensitivity and flip rates of ``model`` on ``batches``.

    Per MoE layer (paper §2–§4 generalised to the model's top-k; see :mod:`softhard.inspect.stats`):
    :math:`\beta(w) = \mu(\Delta \le w)` (2.13) and :math:`\beta_k(w) = \mu(a_{(k)} - a_{(k+1)} \le w)` on
    ``widths``; the density of Δ at 0 with its standard error; the tail fit
    :math:`\mu(\Delta \le t) \approx C_\Delta t^\alpha` (Assumption 4.2); entropy, load, agreement; the
    tokens nearest to a tie; the flip rate under ``perturbation``; the relative change of block and final
    output at each τ and dense (:mod:`softhard.inspect.sensitivity`), beside :math:`\beta(2\tau)` (§7).

    Args:
        model: any ``nn.Module`` called as ``model(**batch.inputs)`` (put it in eval mode first).
        batches: :class:`~softhard.inspect.loading.Batch` list; ``ids (B, S)`` map router rows to tokens.
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
    """
    where = "inspect_model"
    seed = resolve_seed(seed, where)
    if not batches:
        raise InspectError("no tokens to inspect (the batch list is empty).")
    taus = [] if taus is None or len(taus) == 0 else [float(t) for t in check_grid(taus, "taus", where, 0.0, True)]
    tie_widths = [] if not tie_widths else [float(w) for w in check_grid(tie_widths, "tie_widths", where)]
    w = default_widths(taus, tie_widths) if widths is None else np.unique(
        np.concatenate([check_grid(widths, "widths", where).numpy(), 2 * np.asarray(taus), tie_widths]))
    if perturbation is not None and perturbation not in PERTURBATIONS:
        raise InspectError(f"The 'perturbation' parameter of {where} must be one of {PERTURBATIONS} or None. "
                           f"Got {perturbation!r}.")
    noise = check_float(noise, "noise", where, 0.0, math.inf)
    sites = find_routers(model, router_path=router_path, layers=layers, top_k=top_k)
    stats = {s.index: LayerStats(s, w, reservoir=check_int(reservoir, "reservoir", where, low=2),
                                 nearest=check_int(nearest, "nearest", where, low=0), seed=seed) for s in sites}
    sens = Sensitivity(sites, taus, dense) if (taus or dense) else None
    state = {"offset": 0, "batch": 0, "ids": None}

    def sink(site, logits, selected, args):
        if not bool(torch.isfinite(logits).all()):
            raise InspectError(f"layer {site.index} ({site.name}) produced non-finite router logits.")
        n, ids = logits.shape[0], state["ids"]
        index = state["offset"] + np.arange(n) if n == ids.numel() else np.full(n, -1)
        stats[site.index].update(logits, selected, index)
        if perturbation is not None:
            g = block_generator(seed, site.index, state["batch"])
            logits_p, sel_p = site.route(perturb_hidden(args[0], perturbation, noise, g), args)
            stats[site.index].update_flips(logits, selected, logits_p.detach().to(torch.float64), sel_p)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batches), desc="inspecting", unit="batch", leave=False)
    _no_grad_forward(model, batches[0])  # warm-up, untimed
    times = []  # per batch: CPU seconds of the forward without and with the capture hooks
    capture = RouterCapture(sites, sink)

    def hooked(batch):
        store = {}
        with capture, capture_block_outputs(sites, store):
            return _no_grad_forward(model, batch), store

    try:
        for b, batch in enumerate(batches):
            state.update(batch=b, ids=batch.ids)
            if b % 2:  # alternate the order, so that drift and warm-up favour neither
                (out, base_blocks), t_hook = _cpu_timed(hooked, batch)
                t_plain = _cpu_timed(_no_grad_forward, model, batch)[1]
            else:
                t_plain = _cpu_timed(_no_grad_forward, model, batch)[1]
                (out, base_blocks), t_hook = _cpu_timed(hooked, batch)
            times.append((t_plain, t_hook))
            if sens is not None:
                sens.update(model, batch.inputs, base_blocks, final_output(out))
            state["offset"] += batch.ids.numel()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    ids_all = [bt.ids for bt in batches]
    layers_out, rows = [], []
    for s in sites:
        r = stats[s.index].result()
        lay = _layer_details(s, r, sens, taus, ids_all, describe)
        layers_out.append(lay)
        rows.append(_row(s, r, lay, taus, tie_widths, dense))
    meta = {
        "model_class": type(model).__name__, "layers": len(sites), "tokens": state["offset"], "batches": len(batches),
        "seed": seed, "taus": taus, "dense": dense, "tie_widths": tie_widths, "perturbation": perturbation,
        "noise": noise if perturbation == "noise" else None, "reservoir": reservoir,
        "cpu_seconds_plain_forward": sum(t for t, _ in times), "cpu_seconds_hooked_forward": sum(t for _, t in times),
        "hook_overhead": float(np.median([h / p - 1.0 for p, h in times if p > 0])) if any(p > 0 for p, _ in times)
        else math.nan,
        "versions": _versions(),
    }
    return Inspection(rows, layers_out, meta)


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
    if sens is not None:
        beta = r["beta"]
        for row in sens.result(site.index):
            t = row["tau"]
            b2 = beta[int(np.searchsorted(r["widths"], 2 * t))] if t != "dense" else None
            sens_rows.append({"tau": t, "block": row["block"].as_dict(), "final": row["final"].as_dict(),
                              "beta_2tau": b2.as_dict() if b2 is not None else None})
    return {
        "layer": site.index, "module": site.name, "block": site.block_name, "layout": site.layout.name,
        "experts": site.num_experts, "top_k": site.top_k, "tokens": r["n"],
        "widths": r["widths"].tolist(), "beta": r["beta"].as_dict(), "beta_k": r["beta_k"].as_dict(),
        "density0": r["density0"].as_dict(), "density0_k": r["density0_k"].as_dict(),
        "tail": dataclasses.asdict(r["tail"]),
        "hist": {k: np.asarray(v).tolist() for k, v in r["hist"].items()},
        "hist_k": {k: np.asarray(v).tolist() for k, v in r["hist_k"].items()},
        "load": r["load"].tolist(), "nearest": near, "sensitivity": sens_rows,
        "flip_rate": r["flip_rate"].as_dict(), "flip_bound": r["flip_bound"].as_dict(),
        "quantiles": {str(q): list(v) for q, v in r["quantiles"].items()}, "reservoir": r["reservoir"],
    }


def _row(site, r: dict, lay: dict, taus, tie_widths, dense) -> dict:
    q = r["quantiles"]
    load = r["load"]
    with np.errstate(divide="ignore", invalid="ignore"):
        load_entropy = float(-(load[load > 0] * np.log(load[load > 0])).sum() / math.log(site.num_experts))
    tail = r["tail"]
    row = {
        "layer": site.index, "module": site.name, "layout": site.layout.name, "experts": site.num_experts,
        "top_k": site.top_k, "tokens": r["n"],
        "delta_q01": q[0.01][0], "delta_q10": q[0.1][0], "delta_q50": q[0.5][0],
        "topk_margin_q01": q[0.01][1], "topk_margin_q10": q[0.1][1], "topk_margin_q50": q[0.5][1],
        "density0": r["density0"].value, "density0_stderr": r["density0"].stderr,
        "topk_density0": r["density0_k"].value, "topk_density0_stderr": r["density0_k"].stderr,
        "tail_C": tail.C, "tail_C_stderr": tail.C_stderr, "tail_alpha": tail.alpha,
        "tail_alpha_stderr": tail.alpha_stderr,
        "entropy": r["entropy"].value, "entropy_stderr": r["entropy"].stderr,
        "load_max_ratio": float(load.max() * site.num_experts), "load_entropy": load_entropy,
        "agreement": r["agreement"].value, "dropped": r["dropped"].value,
    }
    widths = r["widths"]
    for wv in tie_widths:
        i = int(np.searchsorted(widths, wv))
        row[f"tie_w{_fmt(wv)}"] = float(r["beta_k"].value[i])
        row[f"tie_w{_fmt(wv)}_stderr"] = float(r["beta_k"].stderr[i])
    row.update(flip_rate=r["flip_rate"].value, flip_rate_stderr=r["flip_rate"].stderr,
               flip_bound=r["flip_bound"].value)
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
    from ..experiments import Table
    from ..report.fig_inspect import render_inspection
    from ..report.html import write_report
    from ..report.io import atomic_write, to_jsonable, write_table

    out = Path(out)
    cols = list(dict.fromkeys(k for r in ins.rows for k in r))
    paths = write_table(Table("layers", cols, ins.rows, ins.meta), out)
    paths.append(atomic_write(out / "summary.json", json.dumps(
        to_jsonable({"meta": ins.meta, "layers": ins.layers}), indent=1) + "\n"))
    paths += render_inspection(out)
    paths.append(write_report(out))
    return paths


def _digits(tokens: int, seed: int, batch_size: int):
    from .digits import train_digits_moe

    res = train_digits_moe(seed)
    x, y = res.x[:tokens], res.y[:tokens]
    idx = torch.arange(x.shape[0])
    batches = [Batch({"x": x[i:i + batch_size]}, idx[i:i + batch_size, None]) for i in range(0, x.shape[0], batch_size)]

    def describe(ids, pos):
        i = int(ids[pos])
        return f"digit {int(res.y[i])} (row {i}{', test' if i >= res.n_train else ''})"

    info = {"train_accuracy": res.train_accuracy, "test_accuracy": res.test_accuracy, "n_train": res.n_train}
    return res.model, batches, describe, info


def inspect_path(model: str, out, *, tokens: int = 2048, text=None, random_ids: bool = False, layers=None,
                 trust_remote_code: bool = False, router_path: str | None = None, seq_len: int = 64,
                 batch_size: int = 8, taus=(0.25, 0.5, 1.0, 2.0), tie_widths=(0.01, 0.1),
                 perturbation: str | None = "fp16", noise: float = 1e-3, seed: int = 0,
                 progress: bool = False, harden: bool = False, harden_taus=None) -> tuple[Inspection, list[Path]]:
    """Inspect a local model directory (or ``"softhard:digits"``: the digits MoE trained here, or
    ``"softhard:tiny-lm"``: the language MoE trained here and cached, :mod:`.tinylm`) and write the files of
    :func:`write_inspection` into ``out``. Returns the inspection and the written paths.

    ``tokens`` tokens are read from ``text`` (a UTF-8 file, needs the model's tokenizer) or drawn uniformly
    from the vocabulary with ``seed`` (``random_ids``, the default without ``text``); for the digits model
    they are the first ``tokens`` images of the seeded order, for the tiny LM its held-out text by default.
    ``harden``: also the hardening curve (:func:`softhard.inspect.hardening.harden`, at ``harden_taus``),
    written as ``hardening.csv``/``.json``/``.png`` and a section of the report. User errors raise
    :class:`InspectError`.
    """
    try:
        tokens = check_int(tokens, "tokens", "inspect")
        seed = check_int(seed, "seed", "inspect", low=0)
        batch_size = check_int(batch_size, "batch_size", "inspect")
        seq_len = check_int(seq_len, "seq_len", "inspect")
        taus = check_grid(taus, "taus", "inspect", 0.0, True).tolist() if len(taus) else []
        tie_widths = check_grid(tie_widths, "tie_widths", "inspect").tolist() if len(tie_widths) else []
        noise = check_float(noise, "noise", "inspect", 0.0, math.inf)
        if harden and harden_taus is not None and (not len(harden_taus) or max(
                check_grid(harden_taus, "harden_taus", "inspect", 0.0, True).tolist()) > 1):
            raise InspectError(f"The 'harden_taus' parameter of inspect must be temperatures in (0, 1]. "
                               f"Got {list(harden_taus)}.")
    except (ValueError, TypeError) as e:
        raise InspectError(str(e)) from None
    if perturbation is not None and perturbation not in PERTURBATIONS:
        raise InspectError(f"The 'perturbation' parameter of inspect must be one of {PERTURBATIONS} or None. "
                           f"Got {perturbation!r}.")
    if text is not None and random_ids:
        raise InspectError("give either --text FILE or --random-ids, not both.")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InspectError(f"the output directory {out} cannot be written: {e.strerror or e}") from None
    if model == DIGITS:
        if text is not None:
            raise InspectError(f"{DIGITS} reads images, not text: drop --text.")
        net, batches, describe, extra = _digits(tokens, seed, batch_size)
    elif model == TINY_LM:  # issue 12 item 5
        from . import tinylm

        lm = tinylm.tiny_lm(tinylm.DEFAULT, progress=progress)
        net = lm.model
        ids = (encode_text(text, lm.tokenizer, 256) if text is not None else torch.randint(
            0, 256, (tokens,), generator=torch.Generator().manual_seed(seed)) if random_ids else
            tinylm.heldout_ids(lm))[:tokens]
        batches, describe = token_batches(net, ids, seq_len, batch_size), _token_describer(lm.tokenizer)
        extra = {"cache": str(lm.path), **{k: lm.info[k] for k in ("train_seconds", "heldout_loss", "unigram_loss",
                                                                     "bigram_loss", "params")}}
    else:
        net, tok = load_model(model, trust_remote_code=trust_remote_code, seed=seed)
        vocab = int(getattr(net.config, "vocab_size", 0) or 0)
        if text is not None:
            ids = encode_text(text, tok, vocab)[:tokens]
        else:
            if vocab < 1:
                raise InspectError(f"{model}: the config has no vocab_size to draw random ids from.")
            ids = torch.randint(0, vocab, (tokens,), generator=torch.Generator().manual_seed(seed))
        batches = token_batches(net, ids, seq_len, batch_size)
        describe = _token_describer(tok)
        extra = {}
    ins = inspect_model(net, batches, describe=describe, layers=layers, router_path=router_path, taus=taus,
                        tie_widths=tie_widths, perturbation=perturbation, noise=noise, seed=seed, progress=progress)
    source = "digits" if model == DIGITS else "text" if text is not None else "random-ids" if (
        random_ids or model != TINY_LM) else "heldout"
    ins.meta.update(model=str(model), source=source, **extra)
    paths = []
    if harden:  # issue 12 item 4: the hardening curve, before the report that shows it
        from .hardening import harden_inspected

        ins.meta["hardening"], paths = harden_inspected(model, net, batches, out, taus=harden_taus, layers=layers,
                                                        router_path=router_path, seed=seed, progress=progress)
    return ins, paths + write_inspection(ins, out)


def _token_describer(tok):
    if tok is None:
        return None

    def describe(ids, pos):
        before = tok.decode(ids[max(0, pos - 8):pos].tolist())
        return f"{before}[[{tok.decode([int(ids[pos])])}]]"

    return describe
