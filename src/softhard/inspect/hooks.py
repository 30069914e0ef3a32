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

__all__ = ["RouterCapture", "first_tensor", "read_routers", "capture_block_outputs", "hooks_suspended", "perturb_hidden",
           "PERTURBATIONS"]

PERTURBATIONS = ("fp16", "noise")


class RouterCapture:
    """Context manager: a forward hook on every router of ``sites``.

    Each router call hands ``sink(site, routed, args)`` the call as read by the site
    (:class:`~softhard.inspect.layouts.Routed`: detached logits in the router's dtype, the experts the model
    selected, ...). ``args`` are the router's positional inputs (``args[0]`` is the hidden states entering it).
    Set ``active = False`` to pause.
    """

    def __init__(self, sites: list[RouterSite], sink: Callable):
        self.sites, self.sink = sites, sink
        self.active = True
        self._handles = []

    def _hook(self, site: RouterSite):
        def hook(module, args, output):
            if self.active:
                with torch.no_grad():
                    routed = site.read(args, output)
                    routed.logits = routed.logits.detach()
                    self.sink(site, routed, args)
            return None

        return hook

    def __enter__(self):
        self._handles = [s.router.register_forward_hook(self._hook(s)) for s in self.sites]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []


def read_routers(model: torch.nn.Module, sites: list[RouterSite], inputs: dict) -> list[RouterSite]:
    """Run ``model(**inputs)`` once under a capture that only reads each router, so that every site called knows
    its format and routing rule (needed before ``site.temper``/``site.densify``); returns the sites read."""
    with RouterCapture(sites, lambda site, routed, args: None), torch.no_grad():
        model(**inputs)
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
