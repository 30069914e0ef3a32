r"""Readers of the router dumps other tools write, into one :class:`RouterDump` (formats: ``docs/compare_routing.md``).

==========================  ====================================================================================
format                      what is read
==========================  ====================================================================================
``softhard-tokens``         ``tokens.npz`` of ``softhard inspect --save-tokens``: ``token_ids``, and per layer
                            ``layerNN_scores (N, K)`` (the scores the rule ranks), ``layerNN_selected (N, k)``,
                            ``layerNN_rule`` (``k, n_group, topk_group, group_top``), ``sequence_length``
``transformers-logits``     a safetensors file of the router logits transformers returns with
                            ``output_router_logits=True``: ``router_logits.{i}`` (one ``(N, K)`` tensor per MoE
                            layer, in order) or one stacked ``router_logits (L, N, K)``; optional ``input_ids``
                            (``(B, S)`` or ``(N,)``); ``k`` from ``top_k`` (plain top-k of the logits)
``megatron-trace``          Megatron-Core's router trace (``--moe-routing-trace-path``): a JSONL file (or a
                            folder holding ``router_trace_rank*.jsonl``), one record per (step, layer) with
                            ``layer``, ``num_tokens``, ``topk``, ``top_indices``; with ``logit_offset``,
                            ``logit_bytes``, ``logit_shape`` the bfloat16 pre-top-k logits are read from the
                            sidecar ``logits_rank{rank}.bin``
``expert-ids``              routed expert ids alone (vLLM / SGLang ``return_routed_experts``): ``.npy`` of
                            integers ``(T, L, k)``, ``.npz`` with ``routed_experts (T, L, k)`` and optional
                            ``token_ids``, or JSON lines each holding ``routed_experts`` (a list, or base64 of
                            int32 as SGLang returns it; also under ``meta_info``) with optional ``token_ids`` /
                            ``output_ids``, reshaped by ``num_layers`` and ``topk`` (fields or arguments); ``-1``
                            marks a layer or slot without a routed expert (dropped)
==========================  ====================================================================================

Bad input raises :class:`~softhard.inspect.layouts.InspectError` in one line naming the file: an unknown format, a
JSONL line that is not a trace record, logits that are really probabilities (several families return
probabilities under the name ``router_logits``; ``probabilities=True`` reads them as :math:`\log p`, the logits up to
a per-token shift, which leaves every top-k selection and margin of a softmax router unchanged), ragged shapes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..layouts import InspectError

__all__ = ["RouterDump", "read_dump", "read_tokens_npz", "read_transformers_logits", "read_megatron_trace",
           "read_expert_ids", "FORMATS"]

FORMATS = ("softhard-tokens", "transformers-logits", "megatron-trace", "expert-ids")


@dataclass
class RouterDump:
    """One run's routing of a token stream, layer by layer.

    Attributes:
        path, format: where it was read from and how (:data:`FORMATS`).
        layers: layer labels in order (as the dump names them).
        scores: per layer ``(N, K)`` float64 scores the selection ranks, or ``None`` (expert ids only).
        selected: per layer ``(N, k)`` selected experts (``None``: the top-k of the scores).
        rules: per layer ``(k, n_group, topk_group, group_top)``.
        token_ids: ``(N,)`` token ids when the dump has them, else ``None``.
        units: ``(N,)`` sequence (or step) of each token, else ``None``.
        notes: one-line remarks (e.g. a layer left out).
    """

    path: str
    format: str
    layers: list
    scores: list
    selected: list
    rules: list
    token_ids: np.ndarray | None = None
    units: np.ndarray | None = None
    notes: list = field(default_factory=list)

    def tokens(self, i: int) -> int:
        s = self.scores[i] if self.scores[i] is not None else self.selected[i]
        return int(s.shape[0])


def _bad(path, msg: str) -> None:
    raise InspectError(f"{path}: {msg}")


def _check_logits(path, name: str, x: np.ndarray, probabilities: bool) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] < 2:
        _bad(path, f"{name} must be (tokens, experts) with at least 2 experts; got shape {x.shape}")
    if not np.isfinite(x).all():
        _bad(path, f"{name} holds non-finite values")
    looks_prob = bool(x.size and (x >= 0).all() and np.allclose(x.sum(-1), 1.0, atol=1e-3))
    if looks_prob and not probabilities:
        _bad(path, f"{name} are probabilities, not logits (every row is non-negative and sums to 1; several "
                   f"families return router probabilities under the name router_logits): pass --probabilities "
                   f"to read them as log p")
    if probabilities:
        if not looks_prob:
            _bad(path, f"--probabilities: {name} are not probabilities (rows must be non-negative and sum to 1)")
        with np.errstate(divide="ignore"):
            x = np.log(x)
        x = np.maximum(x, np.log(np.finfo(np.float64).tiny))
    return x.astype(np.float64)


def read_tokens_npz(path, **_) -> RouterDump:
    """``tokens.npz`` of ``softhard inspect --save-tokens`` (module docstring)."""
    d = np.load(path)
    names = sorted({k.split("_", 1)[0] for k in d.files if k.startswith("layer") and k.endswith("_scores")})
    if not names:
        _bad(path, "no layerNN_scores arrays: not a tokens.npz of 'softhard inspect --save-tokens' (re-run it with "
                   "this version)")
    scores = [d[f"{n}_scores"].astype(np.float64) for n in names]
    selected = [d[f"{n}_selected"].astype(np.int64) for n in names]
    rules = [tuple(int(v) for v in d[f"{n}_rule"]) for n in names]
    ids = d["token_ids"].astype(np.int64) if "token_ids" in d.files else None
    units = None
    if "sequence_length" in d.files and ids is not None:
        units = np.arange(ids.size) // max(1, int(d["sequence_length"][0]))
    index = d[f"{names[0]}_index"] if f"{names[0]}_index" in d.files else None
    if ids is not None and index is not None and (index >= 0).all() and index.size == scores[0].shape[0]:
        ids, units = ids[index], None if units is None else units[index]
    return RouterDump(str(path), "softhard-tokens", [int(n[5:]) for n in names], scores, selected, rules, ids, units)


def read_transformers_logits(path, *, top_k: int | None = None, probabilities: bool = False, **_) -> RouterDump:
    """A safetensors file of transformers' ``router_logits`` (module docstring)."""
    from safetensors.numpy import load_file

    try:
        d = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - the library's own message, in one line
        _bad(path, f"not a readable safetensors file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    if "router_logits" in d:
        stacked = d["router_logits"]
        if stacked.ndim != 3:
            _bad(path, f"router_logits must be (layers, tokens, experts); got shape {stacked.shape}")
        raw = [stacked[i] for i in range(stacked.shape[0])]
    else:
        keys = sorted((k for k in d if k.startswith("router_logits.")), key=lambda k: int(k.split(".")[1]))
        if not keys:
            _bad(path, "no router_logits tensors (expected router_logits.0, router_logits.1, ... or router_logits)")
        raw = [d[k] for k in keys]
    if top_k is None:
        _bad(path, "router logits carry no selection: give the experts per token (--top-k)")
    scores = [_check_logits(path, f"router_logits[{i}]", np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1]),
                            probabilities) for i, x in enumerate(raw)]
    K = scores[0].shape[1]
    if not 1 <= top_k < K:
        _bad(path, f"--top-k must be in [1, {K - 1}] for {K} experts; got {top_k}")
    ids = units = None
    if "input_ids" in d:
        x = d["input_ids"]
        ids = x.reshape(-1).astype(np.int64)
        units = np.arange(ids.size) // (x.shape[-1] if x.ndim == 2 else ids.size)
    return RouterDump(str(path), "transformers-logits", list(range(len(scores))), scores, [None] * len(scores),
                      [(int(top_k), 1, 1, 1)] * len(scores), ids, units)


def _trace_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("router_trace_rank*.jsonl"), key=lambda p: int(p.stem.split("rank")[-1] or 0))
        if not files:
            _bad(path, "a folder without router_trace_rank*.jsonl (Megatron-Core's --moe-routing-trace-path)")
        return files
    return [path]


def read_megatron_trace(path, **_) -> RouterDump:
    """Megatron-Core's router trace, with its bfloat16 logits sidecar when present (module docstring)."""
    import torch

    path = Path(path)
    per: dict = {}
    for f in _trace_files(path):
        with f.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    _bad(f, f"line {n} is not JSON, so not a router trace record")
                if not isinstance(rec, dict) or "layer" not in rec or "top_indices" not in rec:
                    _bad(f, f"line {n} is not a router trace record (needs 'layer' and 'top_indices'; got keys "
                            f"{sorted(rec)[:6] if isinstance(rec, dict) else type(rec).__name__})")
                key = (rec.get("block", "decoder"), rec.get("mtp_idx"), int(rec["layer"]))
                idx = np.asarray(rec["top_indices"], dtype=np.int64)
                if idx.ndim != 2 or ("num_tokens" in rec and idx.shape[0] != rec["num_tokens"]):
                    _bad(f, f"line {n}: top_indices of shape {idx.shape} do not match num_tokens "
                            f"{rec.get('num_tokens')}")
                logits = None
                if "logit_offset" in rec:
                    side = f.parent / f"logits_rank{rec.get('rank', 0)}.bin"
                    if not side.is_file():
                        _bad(f, f"line {n} points into {side.name}, which is missing")
                    with side.open("rb") as fb:
                        fb.seek(int(rec["logit_offset"]))
                        raw = fb.read(int(rec["logit_bytes"]))
                    t = torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16)
                    logits = t.reshape(rec["logit_shape"]).to(torch.float64).numpy()
                    if logits.shape[0] != idx.shape[0]:
                        _bad(f, f"line {n}: {logits.shape[0]} logit rows for {idx.shape[0]} tokens")
                per.setdefault(key, []).append((int(rec.get("step", 0)), idx, logits))
    if not per:
        _bad(path, "no router trace records")
    keys = sorted(per, key=lambda k: (k[0] != "decoder", k[1] or 0, k[2]))
    scores, selected, rules, units = [], [], [], None
    for key in keys:
        recs = per[key]
        sel = np.concatenate([r[1] for r in recs])
        has = all(r[2] is not None for r in recs)
        sc = np.concatenate([r[2] for r in recs]) if has else None
        if sc is not None:
            sc = _check_logits(path, f"logits of layer {key[2]}", sc, False)
        selected.append(sel)
        scores.append(sc)
        rules.append((int(sel.shape[1]), 1, 1, 1))
        if units is None:
            units = np.concatenate([np.full(r[1].shape[0], i) for i, r in enumerate(recs)])
    labels = [k[2] if k[0] == "decoder" else f"mtp{k[1]}.{k[2]}" for k in keys]
    return RouterDump(str(path), "megatron-trace", labels, scores, selected, rules, None, units)


def _ids_array(path, x, num_layers, topk) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        return x.astype(np.int64)
    if num_layers is None or topk is None:
        _bad(path, f"routed_experts of shape {x.shape} need num_layers and topk to be reshaped to "
                   f"(tokens, layers, k)")
    n = x.size
    if n % (num_layers * topk):
        _bad(path, f"{n} expert ids are not a whole number of tokens × {num_layers} layers × {topk}")
    return x.reshape(-1, num_layers, topk).astype(np.int64)


def read_expert_ids(path, *, num_layers: int | None = None, top_k: int | None = None, **_) -> RouterDump:
    """Expert ids alone (vLLM / SGLang routed experts; module docstring)."""
    path = Path(path)
    ids = None
    units = None
    if path.suffix == ".npy":
        arr = _ids_array(path, np.load(path), num_layers, top_k)
    elif path.suffix == ".npz":
        d = np.load(path)
        if "routed_experts" not in d.files:
            _bad(path, "no routed_experts array")
        arr = _ids_array(path, d["routed_experts"], num_layers, top_k)
        ids = d["token_ids"].astype(np.int64).reshape(-1) if "token_ids" in d.files else None
    else:
        parts, id_parts, unit_parts = [], [], []
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    _bad(path, f"line {n} is not JSON")
                if not isinstance(rec, dict):
                    _bad(path, f"line {n} is not a routed-experts record")
                body = rec.get("meta_info", rec)
                if "routed_experts" not in body:
                    _bad(path, f"line {n} is not a routed-experts record (no 'routed_experts')")
                r = body["routed_experts"]
                if isinstance(r, str):
                    r = np.frombuffer(base64.b64decode(r), dtype=np.int32)
                L = rec.get("num_layers", num_layers)
                k = rec.get("topk", top_k)
                a = _ids_array(path, r, L, k)
                parts.append(a)
                unit_parts.append(np.full(a.shape[0], n))
                tid = rec.get("token_ids", rec.get("output_ids"))
                id_parts.append(None if tid is None else np.asarray(tid, dtype=np.int64).reshape(-1))
        if not parts:
            _bad(path, "no routed-experts records")
        arr = np.concatenate(parts)
        units = np.concatenate(unit_parts)
        if all(t is not None for t in id_parts):
            ids = np.concatenate(id_parts)
            if ids.size != arr.shape[0]:
                _bad(path, f"{ids.size} token ids for {arr.shape[0]} tokens of routed experts")
    keep = [i for i in range(arr.shape[1]) if (arr[:, i] >= 0).any()]
    notes = [] if len(keep) == arr.shape[1] else [f"{arr.shape[1] - len(keep)} layers without routed experts "
                                                  f"(-1 throughout) left out"]
    sel = [np.sort(arr[:, i], -1) for i in keep]
    return RouterDump(str(path), "expert-ids", keep, [None] * len(keep), sel, [(arr.shape[2], 1, 1, 1)] * len(keep),
                      ids, units, notes)


def read_dump(path, *, top_k: int | None = None, num_layers: int | None = None,
              probabilities: bool = False) -> RouterDump:
    """Read ``path`` in the format its name and content show (module docstring)."""
    p = Path(path)
    if not p.exists():
        _bad(p, "no such file or folder")
    if p.is_dir():
        return read_megatron_trace(p)
    if p.suffix == ".npz":
        names = np.load(p).files
        if "routed_experts" in names:
            return read_expert_ids(p, num_layers=num_layers, top_k=top_k)
        return read_tokens_npz(p)
    if p.suffix == ".safetensors":
        return read_transformers_logits(p, top_k=top_k, probabilities=probabilities)
    if p.suffix == ".npy":
        return read_expert_ids(p, num_layers=num_layers, top_k=top_k)
    if p.suffix in (".jsonl", ".json"):
        with p.open(encoding="utf-8") as fh:
            first = next((ln for ln in fh if ln.strip()), "")
        try:
            rec = json.loads(first) if first else {}
        except json.JSONDecodeError:
            _bad(p, "line 1 is not JSON, so not a router trace record")
        if isinstance(rec, dict) and ("routed_experts" in rec or "routed_experts" in rec.get("meta_info", {})):
            return read_expert_ids(p, num_layers=num_layers, top_k=top_k)
        return read_megatron_trace(p)
    _bad(p, f"unknown dump format (expected tokens.npz, .safetensors router logits, a Megatron-Core router trace "
            f".jsonl or folder, or routed expert ids .npy/.npz/.jsonl)")
