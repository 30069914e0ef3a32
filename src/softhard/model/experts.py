r"""Experts: maps ``x (N, d) -> expert outputs h(x) (N, K)`` (paper (2.2)), one scalar output per expert."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .._validate import DTYPE, as_tensor, check_finite, check_inputs, check_int, check_seed_value, fail
from .routers import cast_to_module, probe_module, set_affine

__all__ = ["Experts", "LinearExperts", "ConstantExperts", "MLPExperts", "as_experts"]


class Experts(nn.Module):
    """Base class: ``forward(x (N, d)) -> (N, K)``; attributes ``d`` and ``num_experts``."""

    d: int | None
    num_experts: int

    def outputs(self, x) -> torch.Tensor:
        """Validated expert outputs, shape ``(N, K)``; ``x`` is cast to the experts' floating dtype."""
        x = cast_to_module(self, check_inputs(x, self.d, f"{type(self).__name__}.outputs"))
        h = self(x)
        if h.shape != (x.shape[0], self.num_experts):
            fail("experts", "outputs", f"a map (N, d) -> (N, {self.num_experts})", f"output shape {tuple(h.shape)}")
        return h


class LinearExperts(Experts):
    r"""Linear experts :math:`h_k(x) = w_k \cdot x + c_k`.

    Args:
        weight: shape ``(K, d)``; bias: shape ``(K,)`` (zeros if ``None``).
    """

    def __init__(self, weight, bias=None, *, trainable: bool = False):
        super().__init__()
        W = set_affine(self, weight, bias, "LinearExperts", min_rows=1, trainable=trainable)
        self.num_experts, self.d = W.shape

    def forward(self, x):
        return x.to(self.weight.dtype) @ self.weight.T + self.bias


class ConstantExperts(Experts):
    """Constant experts ``h_k(x) = c_k``, ``values`` of shape ``(K,)``; any input dimension."""

    def __init__(self, values, d: int | None = None):
        super().__init__()
        c = as_tensor(values, "values", "ConstantExperts")
        if c.ndim != 1 or c.numel() < 1:
            fail("values", "ConstantExperts", "a non-empty 1-d array of shape (K,)", f"shape {tuple(c.shape)}")
        check_finite(c, "values", "ConstantExperts")
        self.register_buffer("values", c.clone())
        self.num_experts, self.d = c.numel(), None if d is None else check_int(d, "d", "ConstantExperts")

    def forward(self, x):
        return self.values.to(x).expand(x.shape[0], -1)


class MLPExperts(Experts):
    """K independent MLPs ``d -> hidden -> 1`` (tanh), evaluated in one batched matmul; seeded init."""

    def __init__(self, d: int, num_experts: int, hidden: int = 32, *, seed: int = 0):
        super().__init__()
        d = check_int(d, "d", "MLPExperts")
        K = check_int(num_experts, "num_experts", "MLPExperts")
        H = check_int(hidden, "hidden", "MLPExperts")
        g = torch.Generator().manual_seed(check_seed_value(seed, "MLPExperts"))
        u = lambda *s, b: (torch.rand(*s, generator=g, dtype=DTYPE) * 2 - 1) * b  # noqa: E731
        self.W1 = nn.Parameter(u(K, H, d, b=d ** -0.5))
        self.b1 = nn.Parameter(u(K, H, b=0.1))
        self.W2 = nn.Parameter(u(K, H, b=H ** -0.5))
        self.b2 = nn.Parameter(u(K, b=0.1))
        self.d, self.num_experts = d, K

    def forward(self, x):
        z = torch.tanh(torch.einsum("khd,nd->nkh", self.W1, x) + self.b1)
        return (z * self.W2).sum(-1) + self.b2


class _CallableExperts(Experts):
    def __init__(self, fn: Callable, num_experts: int, d: int | None):
        super().__init__()
        self.fn, self.num_experts, self.d = fn, num_experts, d  # an nn.Module fn is registered as a submodule

    def forward(self, x):
        return self.fn(cast_to_module(self.fn, x))


def as_experts(experts, d: int | None = None, where: str = "as_experts") -> Experts:
    """Wrap an :class:`Experts`, an ``nn.Module`` or a callable ``(N, d) -> (N, K)``; errors name ``where``."""
    if isinstance(experts, Experts):
        return experts
    if not callable(experts):
        fail("experts", where, "an Experts, an nn.Module or a callable (N, d) -> (N, K)",
             type(experts).__name__, TypeError)
    if d is None:
        d = getattr(experts, "in_features", None)
    if d is None:
        fail("d", where, "given (the input dimension) for a plain callable", d)
    d = check_int(d, "d", where)
    out = probe_module(experts, d, where, "experts")
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < 1:
        fail("experts", where, "a map (N, d) -> (N, K)", f"output {getattr(out, 'shape', out)}")
    return _CallableExperts(experts, out.shape[1], d)
