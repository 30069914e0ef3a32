r"""Capture by forward hooks: router logits and selections streamed to a sink, block outputs, perturbations.

Hooks never change a model's outputs: they return ``None`` and work on detached copies (tested:
outputs with and without hooks are identical). Logits are handed to the sink one forward call at a
time and dropped; nothing keeps all of them.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from .._validate import check_float, fail
from ..estimators.reducer import resolve_seed
from .layouts import RouterSite

__all__ = ["RouterCapture", "experts_truth", "first_tensor", "read_routers", "capture_block_outputs", "hooks_suspended", "perturb_hidden",
           "PERTURBATIONS"]

PERTURBATIONS = ("fp16", "noise")


class RouterCapture:
    """Context manager: a forward hook on every router of ``sites``, and watchers of what their experts compute.

    Each router call hands ``sink(site, routed, args)`` the call as read by the site
    (:class:`~softhard.inspect.layouts.Routed`: detached logits in the router's dtype, the experts the model
    selected, ...) once its block has run, with ``routed.truth (N, K)`` bool: the experts seen computing each
    token (:func:`experts_truth`), or ``None`` when they cannot be watched. ``args`` are the router's positional
    inputs (``args[0]`` is the hidden states entering it). A router called outside a run of its block is handed
    on at once, with ``truth = None``. Set ``active = False`` to pause.
    """

    def __init__(self, sites: list[RouterSite], sink: Callable):
        self.sites, self.sink = sites, sink
        self.active = True
        self._handles = []
        self._frames = {}

    def _router_hook(self, site: RouterSite):
        def hook(module, args, output):
            if self.active:
                with torch.no_grad():
                    routed = site.read(args, output)
                    routed.logits = routed.logits.detach()
                    frame = self._frames.get(site.index)
                    if frame is None:
                        self._hand(site, routed, args, None)
                    else:
                        frame["calls"].append((routed, args))
            return None

        return hook

    def _hand(self, site, routed, args, truth):
        routed.truth = truth
        site.observe(routed, truth)
        self.sink(site, routed, args)

    def _block_pre(self, site):
        def hook(module, args):
            if self.active:
                x = args[0] if args and isinstance(args[0], torch.Tensor) else None
                self._frames[site.index] = {"calls": [], "handed": [], "rows": {}, "x": x}
            return None

        return hook

    def _block_post(self, site):
        def hook(module, args, output):
            frame = self._frames.pop(site.index, None)
            if frame is None:
                return None
            with torch.no_grad():
                for j, (routed, rargs) in enumerate(frame["calls"]):
                    self._hand(site, routed, rargs, experts_truth(site, routed, frame, j))
            return None

        return hook

    def _experts_pre(self, site):
        def hook(module, args):
            frame = self._frames.get(site.index)
            if frame is not None:
                frame["experts_called"] = True
                for v in args[1:]:
                    if isinstance(v, torch.Tensor) and not v.is_floating_point() and v.dtype != torch.bool:
                        frame["handed"].append(v.detach())
                        break
            return None

        return hook

    def _embedding_pre(self, site):
        def hook(module, args):
            frame = self._frames.get(site.index)
            if frame is not None and args and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point():
                frame["handed"].append(args[0].detach())
            return None

        return hook

    def _expert_pre(self, site, e):
        def hook(module, args):
            frame = self._frames.get(site.index)
            if frame is not None and args and isinstance(args[0], torch.Tensor):
                frame["rows"].setdefault(e, []).append(args[0].detach())
            return None

        return hook

    def __enter__(self):
        self._frames = {}
        for s in self.sites:
            self._handles.append(s.router.register_forward_hook(self._router_hook(s)))
            if s.block is s.router or not isinstance(s.block, torch.nn.Module):
                continue
            s.slots["truth_mode"] = True
            self._handles.append(s.block.register_forward_pre_hook(self._block_pre(s)))
            self._handles.append(s.block.register_forward_hook(self._block_post(s)))
            ex = getattr(s.block, "experts", None)
            if isinstance(ex, torch.nn.Module):
                self._handles.append(ex.register_forward_pre_hook(self._experts_pre(s)))
                for e, m in enumerate(_expert_modules(ex)):
                    self._handles.append(m.register_forward_pre_hook(self._expert_pre(s, e)))
            else:  # Doge: the selection indexes an expert embedding of the router
                emb = next((m for m in s.router.children() if isinstance(m, torch.nn.Embedding)
                            and m.num_embeddings == s.num_experts), None)
                if emb is not None:
                    self._handles.append(emb.register_forward_pre_hook(self._embedding_pre(s)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        for s in self.sites:
            s.slots.pop("truth_mode", None)
        frames, self._frames = self._frames, {}
        if exc[0] is None:  # calls whose block did not finish inside the capture: handed on without truth
            for s in self.sites:
                for routed, rargs in (frames.get(s.index) or {}).get("calls", []):
                    self._hand(s, routed, rargs, None)


def _expert_modules(experts: torch.nn.Module) -> list[torch.nn.Module]:
    """The per-expert modules of an experts module that holds one module per expert (``ModuleList`` /
    ``ModuleDict``, as NLLB-MoE and Switch), in expert order; ``[]`` for fused experts (3-d weights)."""
    if isinstance(experts, torch.nn.ModuleDict):
        return list(experts.values())
    if isinstance(experts, torch.nn.ModuleList):
        return list(experts)
    return []


def experts_truth(site: RouterSite, routed, frame: dict, j: int = 0) -> torch.Tensor | None:
    """``(N, K)`` bool: the experts that computed each token of router call ``j`` of one run of the block —
    watched on the experts themselves where the block hands the routing to an experts module that holds one module
    per expert (NLLB-MoE, Switch: each input row an expert receives is matched, bit for bit, to the token it came
    from), else the integer selection ``(N, k)`` the block handed its experts module (or, for Doge, its expert
    embedding); ``None`` when neither can be seen (the router's output is then all there is; a block that runs
    every expert on every token and mixes the chosen ones, as ``softhard:digits``, has no watchable selection)."""
    n, K = routed.logits.shape
    rows, x = frame.get("rows") or {}, frame.get("x")
    if rows and x is not None and len(frame["calls"]) == 1 and frame.get("experts_called"):
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] != n:
            return None
        keys: dict = {}
        for i, r in enumerate(flat.to(torch.float64).cpu().numpy()):
            keys.setdefault(r.tobytes(), []).append(i)
        truth = torch.zeros(n, K, dtype=torch.bool)
        for e, chunks in rows.items():
            for c in chunks:
                for r in c.reshape(-1, c.shape[-1]).to(torch.float64).cpu().numpy():
                    hit = keys.get(r.tobytes())
                    if hit is None:
                        return None  # the experts see something else than the block's input: cannot tell
                    truth[hit, e] = True
        return truth
    handed = frame.get("handed") or []
    if j < len(handed) and not site.rule.zero_experts:
        h = handed[j]
        if h.numel() % max(n, 1) == 0 and 0 < h.numel() // max(n, 1) <= K:
            h = h.reshape(n, -1).long().cpu()
            valid = ((h >= 0) & (h < K)).to(torch.int64)
            return torch.zeros(n, K, dtype=torch.int64).scatter_add_(1, h.clamp(0, K - 1), valid) > 0
    return None


def read_routers(model: torch.nn.Module, sites: list[RouterSite], inputs: dict) -> list[RouterSite]:
    """Run ``model(**inputs)`` once under a capture that only reads each router, so that every site called knows
    its format and routing rule (needed before ``site.temper``/``site.densify``); a rule the call could not settle
    is settled on it (:func:`softhard.inspect.layouts.settle`). Returns the sites read."""
    from .layouts import settle

    with RouterCapture(sites, lambda site, routed, args: None), torch.no_grad():
        model(**inputs)
    settle(sites)
    return [s for s in sites if s.rule is not None]


def first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for v in (out.values() if isinstance(out, dict) else out):
        if isinstance(v, torch.Tensor):
            return v
    fail("block", "capture_block_outputs", "a module whose output holds a tensor", type(out).__name__, TypeError)


@contextlib.contextmanager
def capture_block_outputs(sites: list[RouterSite], store: dict):
    """Within the block, ``store[site.index]`` receives the (detached) output tensor of each MoE block."""

    def make(site):
        def hook(module, args, output):
            store[site.index] = first_tensor(output).detach()
            return None

        return hook

    handles = [s.block.register_forward_hook(make(s)) for s in sites]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def hooks_suspended(module: torch.nn.Module):
    """Within the block, no forward hook or pre-hook of ``module`` or of its submodules runs (they are put
    back afterwards; hooks registered inside the block are dropped with it).

    Used to re-run a block for a measurement without feeding anyone's hooks — e.g. transformers' own
    router-logit recorders, which would otherwise count the extra router calls in the auxiliary loss.
    """
    from collections import OrderedDict

    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in module.modules()]
    for m, _, _ in saved:
        m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
    try:
        yield
    finally:
        for m, fwd, pre in saved:
            m._forward_hooks, m._forward_pre_hooks = fwd, pre


def perturb_hidden(h: torch.Tensor, kind: str = "fp16", scale: float = 1e-3,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    r"""A small perturbation of hidden states ``h`` (shape ``(..., d)``), same dtype and device.

    - ``"fp16"``: the float16 round trip ``h → float16 → dtype(h)`` (the float16-vs-float32 question);
    - ``"noise"``: :math:`h_i + s\,\lVert h_i\rVert/\sqrt d\; z_i`, :math:`z_i \sim N(0, I_d)`, i.e. Gaussian
      noise of relative size ``scale`` per token (drawn on the CPU from ``generator``).
    """
    if kind == "fp16":
        return h.to(torch.float16).to(h.dtype)
    if kind == "noise":
        s = check_float(scale, "scale", "perturb_hidden", 0.0, np.inf)
        z = torch.randn(h.shape, generator=generator, dtype=torch.float64).to(h.device)
        rms = h.to(torch.float64).norm(dim=-1, keepdim=True) / h.shape[-1] ** 0.5
        return (h.to(torch.float64) + s * rms * z).to(h.dtype)
    fail("kind", "perturb_hidden", f"one of {PERTURBATIONS}", kind)


def block_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator for ``(seed, *keys)`` (e.g. layer and batch), independent of call order."""
    s = np.random.SeedSequence([resolve_seed(seed), *keys]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(s))
