r"""Registry of known router layouts, and the search for the router modules of a model.

A *layout* says, for one kind of router module, how to read its forward output and how to re-route
its MoE block:

- ``parse(site, args, output) -> (logits (N, K), selected (N, k))``: the raw router logits (the
  pre-softmax scores :math:`a(x)` of (2.2)) and the expert indices the model itself selects (``-1``
  where a token is dropped, e.g. by an expert-capacity limit);
- ``temper(site, tau)``: a context manager under which the block routes with the model's own
  selection but weights computed from :math:`a/\tau` (softmax of ``logits/τ`` for softmax routers,
  ``sigmoid(logits/τ)`` for DeepSeek-V3's sigmoid router). At ``τ = 1`` it reproduces the shipped
  weights bit for bit (the same operations on the same tensors; ``x / 1.0 == x`` exactly); ``None``
  when unavailable;
- ``densify(site)``: a context manager under which every expert is active with the model's own weight
  rule at ``k = K`` (fully dense soft routing), or ``None`` when the layout has no such mode.

Known layouts (transformers 5.x, checked against the installed source):

============================  ===========================================================  ==================
router module class            forward output / weight rule                                 layout
============================  ===========================================================  ==================
MixtralTopKRouter              ``(logits, w, idx)``; top-k of softmax, renormalised (float32)  ``softmax-topk``
Qwen2Moe/Qwen3Moe/OlmoeTopKR.  ``(logits, w, idx)``; top-k of softmax, renormalised if          ``softmax-topk``
                               ``norm_topk_prob``, cast to the logits' dtype
GraniteMoeTopKRouter           ``(logits, w, idx)``; top-k of the logits, softmax over them    ``softmax-of-topk``
PhimoeTopKRouter               ``(logits, w, idx)``; sparsemixer (eval mode)                   ``sparsemixer``
DeepseekV2TopkRouter           ``(logits, w, idx)``; softmax, greedy or group-limited top-k,  ``deepseek-v2``
                               × ``routed_scaling_factor``
DeepseekV3TopkRouter           ``(logits, w, idx)``; sigmoid, bias-corrected group-limited     ``deepseek-v3``
                               top-k, normalised, × ``routed_scaling_factor``
SwitchTransformersTop1Router   ``(one-hot dispatch, max prob, logits)`` — the other order;     ``switch-top1``
                               top-1 with expert capacity
``nn.Linear`` named ``gate``/  logits only; the block is assumed to take the top-k of the       ``linear-gate``
``router`` beside ``experts``  logits and softmax weights (k from the block's ``top_k``)
any module named by the user   the logits tensor, or a tuple holding it (the first float        ``generic``
                               ``(..., K)`` tensor) and maybe the selected indices (the first
                               integer tensor; else the top-k of the logits is taken)
============================  ===========================================================  ==================

A module given by a user pattern (``router_path``, ``fnmatch`` on module names) uses its class's
layout when known and ``linear-gate``/``generic`` otherwise. Temperature re-routing of these two
divides the returned logits by τ, which is the block at temperature τ when the block takes a softmax of
them; it is unavailable when the module returns a tuple (weight rule unknown). Their dense mode sets the
block's ``top_k`` attribute to ``K`` (when it has one).
"""

from __future__ import annotations

import contextlib
import fnmatch
import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .._validate import fail

__all__ = ["InspectError", "Layout", "RouterSite", "LAYOUTS", "find_routers", "parse_layers"]


class InspectError(ValueError):
    """A user-fixable problem with a model, a file or an option (one line; the CLI exits 2)."""


def _fail(param: str, where: str, rule: str, value) -> None:
    fail(param, where, rule, value, InspectError)


@dataclass
class RouterSite:
    """One MoE layer: its router module and the block that calls it.

    Attributes:
        index: position among the layers found (0, 1, ...), in module order.
        name, block_name: module paths of the router and of its block (the router's parent).
        num_experts, top_k: ``K`` and the ``k`` the model routes to.
    """

    index: int
    name: str
    block_name: str
    router: nn.Module
    block: nn.Module
    layout: "Layout"
    num_experts: int
    top_k: int
    tensor_output: bool = True  # set at the first call for ``linear-gate``/``generic`` routers

    def parse(self, args, output) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (N, K), selected (N, k))`` from one forward call of the router."""
        return self.layout.parse(self, args, output)

    def route(self, hidden: torch.Tensor, args=()) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, selected)`` of the router on other hidden states (its ``forward``, so no hooks run)."""
        args = (hidden, *args[1:])
        return self.parse(args, self.router.forward(*args))


@dataclass(frozen=True)
class Layout:
    """How to read and re-route one kind of router (see the module docstring)."""

    name: str
    classes: tuple[str, ...]
    parse: Callable
    temper: Callable
    densify: Callable


# ----------------------------------------------------------------------------------------------
# helpers


def _flat(t: torch.Tensor, K: int) -> torch.Tensor:
    return t.reshape(-1, K)


@contextlib.contextmanager
def _replace_output(module: nn.Module, fn: Callable):
    """Within the block, ``module``'s forward output is replaced by ``fn(args, output)``."""
    handle = module.register_forward_hook(lambda m, args, out: fn(args, out))
    try:
        yield
    finally:
        handle.remove()


def _all_experts(logits: torch.Tensor) -> torch.Tensor:
    n, K = logits.shape
    return torch.arange(K, device=logits.device).expand(n, K)


def _parse_triple(site, args, out):
    logits = _flat(out[0], site.num_experts)
    return logits, out[2].reshape(logits.shape[0], -1)


# ----------------------------------------------------------------------------------------------
# softmax top-k (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE)


def _softmax_topk_weights(site, logits, idx, tau):
    w = torch.softmax(logits.float() / tau, dim=-1)
    w = w if idx is None else w.gather(1, idx)
    if getattr(site.router, "norm_topk_prob", True):  # Mixtral always renormalises
        w /= w.sum(dim=-1, keepdim=True)
    if hasattr(site.router, "norm_topk_prob"):  # Qwen/OLMoE cast back; Mixtral keeps float32
        w = w.to(logits.dtype)
    return w


def _softmax_topk_temper(site, tau):
    def fn(args, out):
        logits, _, idx = out
        return logits, _softmax_topk_weights(site, logits, idx, tau), idx

    return _replace_output(site.router, fn)


def _softmax_topk_dense(site):
    def fn(args, out):
        logits = out[0]
        return logits, _softmax_topk_weights(site, logits, None, 1.0), _all_experts(logits)

    return _replace_output(site.router, fn)


# ----------------------------------------------------------------------------------------------
# GraniteMoe: top-k of the logits, softmax over the selected logits


def _granite_temper(site, tau):
    def fn(args, out):
        logits, _, idx = out
        return logits, torch.softmax(logits.gather(1, idx) / tau, dim=-1).type_as(args[0]), idx

    return _replace_output(site.router, fn)


def _granite_dense(site):
    def fn(args, out):
        logits = out[0]
        return logits, torch.softmax(logits, dim=-1).type_as(args[0]), _all_experts(logits)

    return _replace_output(site.router, fn)


# ----------------------------------------------------------------------------------------------
# PhiMoE: sparsemixer, taken from the model's own module (eval mode: deterministic)


def _phimoe_temper(site, tau):
    mixer = sys.modules[type(site.router).__module__].sparsemixer

    def fn(args, out):
        logits = out[0]
        w, idx = mixer(logits / tau, jitter_eps=site.router.router_jitter_noise, training=False,
                       top_k=site.top_k)
        return logits, w, idx

    return _replace_output(site.router, fn)


def _phimoe_dense(site):
    def fn(args, out):
        logits = out[0]
        return logits, torch.softmax(logits, dim=-1), _all_experts(logits)

    return _replace_output(site.router, fn)


# ----------------------------------------------------------------------------------------------
# DeepSeek-V2 (softmax) and V3 (sigmoid, bias-corrected selection)


def _deepseek_weights(site, logits, idx, tau):
    r = site.router
    if hasattr(r, "e_score_correction_bias"):  # V3
        s = torch.sigmoid(logits / tau)
        w = s if idx is None else s.gather(1, idx)
        if r.norm_topk_prob:
            w /= w.sum(dim=-1, keepdim=True) + 1e-20
    else:  # V2
        s = torch.softmax(logits / tau, dim=-1, dtype=torch.float32)
        w = s if idx is None else s.gather(1, idx)
    return w * r.routed_scaling_factor


def _deepseek_temper(site, tau):
    def fn(args, out):
        logits, _, idx = out
        return logits, _deepseek_weights(site, logits, idx, tau), idx

    return _replace_output(site.router, fn)


def _deepseek_dense(site):
    def fn(args, out):
        logits = out[0]
        return logits, _deepseek_weights(site, logits, None, 1.0), _all_experts(logits)

    return _replace_output(site.router, fn)


# ----------------------------------------------------------------------------------------------
# SwitchTransformers: (dispatch one-hot, max prob, logits), top-1 with capacity


def _switch_parse(site, args, out):
    dispatch, _, logits = out
    d = dispatch.reshape(-1, site.num_experts)
    idx = torch.where(d.sum(-1) > 0, d.argmax(-1), -1)
    return _flat(logits, site.num_experts), idx[:, None]


def _switch_temper(site, tau):
    r = site.router

    def fn(args, out):
        dispatch, _, logits = out
        probs = torch.softmax(logits / tau, dim=-1, dtype=r.dtype).to(r.input_dtype)
        return dispatch, torch.max(probs, dim=-1).values.unsqueeze(-1), logits

    return _replace_output(r, fn)


def _switch_dense(site):
    block, r = site.block, site.router

    def fn(args, out):
        h = args[0]
        x = h.reshape(-1, h.shape[-1])
        p = torch.softmax(r.classifier(x.to(r.dtype)), dim=-1, dtype=r.dtype).to(h.dtype)
        y = sum(p[:, k:k + 1] * block.experts[f"expert_{k}"](x) for k in range(site.num_experts))
        return y.reshape(h.shape)

    return _replace_output(block, fn)


# ----------------------------------------------------------------------------------------------
# a plain nn.Linear gate, and any module named by the user (``generic``)


def _linear_parse(site, args, out):
    K = site.num_experts
    site.tensor_output = isinstance(out, torch.Tensor)
    parts = [out] if site.tensor_output else [v for v in (out if isinstance(out, (tuple, list)) else ())
                                              if isinstance(v, torch.Tensor)]
    logits = next((v for v in parts if v.is_floating_point() and v.shape[-1] == K), None)
    if logits is None:
        _fail("router_path", "find_routers", f"a module whose output is (or holds) the logits tensor (..., {K})",
              f"{site.name} returning {type(out).__name__}")
    logits = _flat(logits, K)
    n = logits.shape[0]
    chosen = next((v for v in parts if not v.is_floating_point() and v.numel() % n == 0 and 0 < v.numel() <= n * K),
                  None)
    if chosen is not None:
        return logits, chosen.reshape(n, -1)
    return logits, torch.topk(logits, site.top_k, dim=-1).indices


def _linear_temper(site, tau):
    if not site.tensor_output:  # a tuple output: its weight rule is unknown
        return None
    return _replace_output(site.router, lambda args, out: out / tau)


@contextlib.contextmanager
def _set_top_k(block, k):
    old = block.top_k
    block.top_k = k
    try:
        yield
    finally:
        block.top_k = old


def _linear_dense(site):
    if not isinstance(getattr(site.block, "top_k", None), int):
        return None
    return _set_top_k(site.block, site.num_experts)


LAYOUTS: dict[str, Layout] = {
    lay.name: lay
    for lay in [
        Layout("softmax-topk", ("MixtralTopKRouter", "Qwen2MoeTopKRouter", "Qwen3MoeTopKRouter", "OlmoeTopKRouter"),
               _parse_triple, _softmax_topk_temper, _softmax_topk_dense),
        Layout("softmax-of-topk", ("GraniteMoeTopKRouter",), _parse_triple, _granite_temper, _granite_dense),
        Layout("sparsemixer", ("PhimoeTopKRouter",), _parse_triple, _phimoe_temper, _phimoe_dense),
        Layout("deepseek-v2", ("DeepseekV2TopkRouter",), _parse_triple, _deepseek_temper, _deepseek_dense),
        Layout("deepseek-v3", ("DeepseekV3TopkRouter",), _parse_triple, _deepseek_temper, _deepseek_dense),
        Layout("switch-top1", ("SwitchTransformersTop1Router",), _switch_parse, _switch_temper, _switch_dense),
        Layout("linear-gate", ("Linear",), _linear_parse, _linear_temper, _linear_dense),
        Layout("generic", (), _linear_parse, _linear_temper, _linear_dense),
    ]
}
_BY_CLASS = {c: lay for lay in LAYOUTS.values() if lay.name != "linear-gate" for c in lay.classes}
_GATE_NAMES = ("gate", "router")


def _top_k(router: nn.Module, block: nn.Module, layout: Layout, top_k: int | None) -> int:
    if layout.name == "switch-top1":
        return 1
    for obj in (router, block):
        for attr in ("top_k", "num_experts_per_tok"):
            v = getattr(obj, attr, None)
            if isinstance(v, int):
                return v
    return 1 if top_k is None else top_k


def _num_experts(router: nn.Module) -> int | None:
    if isinstance(getattr(router, "num_experts", None), int):
        return router.num_experts
    if isinstance(router, nn.Linear):
        return router.out_features
    w = getattr(router, "weight", None)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.ndim == 2 else None


def _is_linear_gate(name: str, module: nn.Module, parent: nn.Module | None) -> bool:
    return (isinstance(module, nn.Linear) and module.out_features >= 2 and name.rsplit(".", 1)[-1] in _GATE_NAMES
            and parent is not None and hasattr(parent, "experts"))


def _moe_hint(model: nn.Module) -> str | None:
    """A reason to think the model has MoE layers of an unknown layout (else None)."""
    recorder = getattr(model, "_can_record_outputs", None) or {}
    if "router_logits" in recorder:
        target = getattr(recorder["router_logits"], "target_class", recorder["router_logits"])
        return f"its router class is {getattr(target, '__name__', target)}"
    cfg = getattr(model, "config", None)
    for attr in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"):
        if isinstance(getattr(cfg, attr, None), int) and getattr(cfg, attr) > 1:
            return f"its config has {attr}={getattr(cfg, attr)}"
    for name, m in model.named_modules():
        if name.rsplit(".", 1)[-1] == "experts":
            return f"it has an experts module at {name!r}"
    return None


def parse_layers(spec) -> list[int] | None:
    """``None``/``""`` (all), an int, a list of ints, or a string like ``"0,2,5-7"`` -> sorted indices."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if isinstance(spec, str):
        out = []
        try:
            for part in spec.split(","):
                lo, _, hi = part.strip().partition("-")
                out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            _fail("layers", "inspect", "a list like '0,2,5-7' of MoE layer indices", spec)
        spec = out
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in spec):
        _fail("layers", "inspect", "a list of MoE layer indices >= 0", spec)
    return sorted(set(spec))


def find_routers(model: nn.Module, *, router_path: str | None = None, layers=None,
                 top_k: int | None = None) -> list[RouterSite]:
    """The MoE layers of ``model``: one :class:`RouterSite` per router module, in module order.

    Args:
        model: any ``torch.nn.Module`` (a transformers model, a softhard model, your own).
        router_path: ``fnmatch`` pattern on module names (e.g. ``"model.layers.*.mlp.gate"``) to use instead
            of the registry; the matched modules' class layouts are used when known, else ``linear-gate``.
        layers: indices of the MoE layers to keep (see :func:`parse_layers`); default all.
        top_k: ``k`` for a ``linear-gate`` whose block has no ``top_k`` attribute (default 1).

    Raises:
        InspectError: no MoE layer (one line saying whether the layout is unknown, naming the model
            class), a pattern matching nothing, or a layer index out of range.
    """
    if not isinstance(model, nn.Module):
        _fail("model", "find_routers", "a torch.nn.Module", type(model).__name__)
    mods = dict(model.named_modules())
    sites = []
    for name, m in mods.items():
        parent_name = name.rsplit(".", 1)[0] if "." in name else ""
        parent = mods.get(parent_name) if name else None
        if router_path is not None:
            if not name or not fnmatch.fnmatchcase(name, router_path):
                continue
            layout = _BY_CLASS.get(type(m).__name__,
                                   LAYOUTS["linear-gate" if isinstance(m, nn.Linear) else "generic"])
        elif type(m).__name__ in _BY_CLASS:
            layout = _BY_CLASS[type(m).__name__]
        elif _is_linear_gate(name, m, parent):
            layout = LAYOUTS["linear-gate"]
        else:
            continue
        K = _num_experts(m)
        if K is None:
            _fail("router_path", "find_routers", "a pattern matching router modules (nn.Linear or a known router)",
                  f"{name} of class {type(m).__name__}")
        sites.append(RouterSite(len(sites), name, parent_name, m, parent if parent is not None else model, layout, K,
                                _top_k(m, parent, layout, top_k)))
    cls = type(model).__name__
    if not sites:
        if router_path is not None:
            _fail("router_path", "find_routers", f"a pattern matching module names of {cls}", router_path)
        hint = _moe_hint(model)
        if hint is not None:
            raise InspectError(f"Unknown MoE router layout for model class {cls} ({hint}); known router classes: "
                               f"{', '.join(sorted(_BY_CLASS))} and nn.Linear gates. Pass --router-path PATTERN "
                               f"(module names, e.g. 'model.layers.*.mlp.gate') to name the router modules.")
        raise InspectError(f"Model class {cls} has no MoE layers (no router module found).")
    keep = parse_layers(layers)
    if keep is not None:
        if keep[-1] >= len(sites):
            _fail("layers", "inspect", f"MoE layer indices in [0, {len(sites) - 1}]", keep)
        sites = [s for s in sites if s.index in keep]
    return sites
