r"""Routers: maps ``x (N, d) -> logits a(x) (N, K)`` (paper (2.2)), and pairwise scores (3.1).

Any ``torch.nn.Module`` or callable with that signature is accepted through :func:`as_router`.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from .._validate import DTYPE, as_tensor, check_finite, check_float, check_inputs, check_int, check_seed_value, fail

__all__ = ["Router", "LinearRouter", "MLPRouter", "UnitLinearRouter", "effective_linear", "as_router",
           "score_difference", "score_gradient", "set_affine", "cast_to_module", "probe_module", "check_pair"]


class Router(nn.Module):
    """Base class: ``forward(x (N, d)) -> logits (N, K)``; attributes ``d`` and ``num_experts``."""

    d: int | None
    num_experts: int

    def logits(self, x) -> torch.Tensor:
        """Validated logits, shape ``(N, K)``; ``x`` is cast to the router's floating dtype."""
        x = cast_to_module(self, check_inputs(x, self.d, f"{type(self).__name__}.logits"))
        a = self(x)
        if a.ndim != 2 or a.shape != (x.shape[0], self.num_experts):
            fail("router", "logits", f"a map (N, d) -> (N, {self.num_experts})", f"output shape {tuple(a.shape)}")
        return a


def set_affine(module: nn.Module, weight, bias, where: str, min_rows: int, trainable: bool) -> torch.Tensor:
    """Validate ``weight (K, d)`` (``K >= min_rows``) and ``bias (K,)`` (zeros if ``None``), store them on
    ``module`` as ``weight``/``bias`` (parameters if ``trainable``, else buffers); returns the weight."""
    W = as_tensor(weight, "weight", where)
    if W.ndim != 2 or W.shape[0] < min_rows or W.shape[1] < 1:
        fail("weight", where, f"an array of shape (K, d) with K >= {min_rows}, d >= 1", f"shape {tuple(W.shape)}")
    check_finite(W, "weight", where)
    b = torch.zeros(W.shape[0], dtype=W.dtype, device=W.device) if bias is None else as_tensor(
        bias, "bias", where, dtype=W.dtype, device=W.device)
    if b.shape != (W.shape[0],):
        fail("bias", where, f"an array of shape ({W.shape[0]},)", f"shape {tuple(b.shape)}")
    check_finite(b, "bias", where)
    if trainable:
        module.weight, module.bias = nn.Parameter(W.clone()), nn.Parameter(b.clone())
    else:
        module.register_buffer("weight", W.clone())
        module.register_buffer("bias", b.clone())
    return W


class LinearRouter(Router):
    r"""Linear router :math:`a(x) = W x + b` (``nn.Linear`` convention).

    Args:
        weight: ``W``, shape ``(K, d)``, ``K >= 2``.
        bias: ``b``, shape ``(K,)`` (zeros if ``None``).
        trainable: register ``W, b`` as parameters (else buffers).
    """

    def __init__(self, weight, bias=None, *, trainable: bool = False):
        super().__init__()
        W = set_affine(self, weight, bias, "LinearRouter", min_rows=2, trainable=trainable)
        self.num_experts, self.d = W.shape

    def forward(self, x):
        return x.to(self.weight.dtype) @ self.weight.T + self.bias

    @classmethod
    def binary(cls, v, b: float = 0.0, **kw) -> "LinearRouter":
        r"""Binary router with :math:`g = a_1 - a_2 = v\cdot x + b` (scores ``±(v·x + b)/2``, gauge Σa = 0)."""
        v = as_tensor(v, "v", "LinearRouter.binary")
        if v.ndim != 1 or v.numel() < 1:
            fail("v", "LinearRouter.binary", "a non-empty 1-d array of shape (d,)", f"shape {tuple(v.shape)}")
        check_finite(v, "v", "LinearRouter.binary")
        b = check_float(b, "b", "LinearRouter.binary")
        W = torch.stack([v / 2, -v / 2])
        return cls(W, torch.tensor([b / 2, -b / 2], dtype=v.dtype, device=v.device), **kw)


class _Linear(nn.Linear):
    """``nn.Linear`` without its default initialisation (which draws from the global RNG); the owner
    initialises the parameters from its own seeded generator."""

    def reset_parameters(self):
        pass


class MLPRouter(Router):
    r"""One- or multi-hidden-layer MLP router ``d -> hidden -> ... -> K`` (float64).

    .. math:: a(x) = W_L\,\rho(\cdots \rho(W_1 x + b_1)\cdots) + b_L

    with activation ρ (``tanh`` by default). Initialised from ``seed`` only (the global RNG is not
    touched): weights uniform in :math:`\pm 1/\sqrt{\text{fan-in}}`, biases uniform in ±0.1.
    """

    def __init__(self, d: int, num_experts: int, hidden=(64,), *, seed: int = 0, activation: str = "tanh"):
        super().__init__()
        d = check_int(d, "d", "MLPRouter")
        K = check_int(num_experts, "num_experts", "MLPRouter", low=2)
        hidden = tuple(hidden) if isinstance(hidden, (list, tuple)) else (hidden,)
        acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
        if activation not in acts:
            fail("activation", "MLPRouter", f"one of {sorted(acts)}", activation)
        g = torch.Generator().manual_seed(check_seed_value(seed, "MLPRouter"))
        layers, prev = [], d
        for h in hidden:
            h = check_int(h, "hidden", "MLPRouter")
            layers += [_Linear(prev, h, dtype=DTYPE), acts[activation]()]
            prev = h
        layers.append(_Linear(prev, K, dtype=DTYPE))
        self.net = nn.Sequential(*layers)
        with torch.no_grad():
            for p in self.net.parameters():  # deterministic, generator-only init
                bound = 1.0 / max(1, p.shape[-1]) ** 0.5 if p.ndim == 2 else 0.1
                p.uniform_(-bound, bound, generator=g)
        self.d, self.num_experts = d, K

    def forward(self, x):
        return self.net(x)


class _CallableRouter(Router):
    def __init__(self, fn: Callable, num_experts: int, d: int | None):
        super().__init__()
        self.fn, self.num_experts, self.d = fn, num_experts, d  # an nn.Module fn is registered as a submodule

    def forward(self, x):
        return self.fn(cast_to_module(self.fn, x))


def cast_to_module(module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype of ``module``'s first floating parameter or buffer (unchanged for plain callables)."""
    if isinstance(module, nn.Module):
        for t in (*module.parameters(), *module.buffers()):
            if t.is_floating_point():
                return x.to(t.dtype)
    return x


def probe_module(fn, d: int, where: str, param: str) -> torch.Tensor:
    """Call ``fn`` once on zeros ``(2, d)`` to learn its output shape; a user's error is reported as such."""
    try:
        with torch.no_grad():
            return fn(cast_to_module(fn, torch.zeros(2, d, dtype=DTYPE)))
    except Exception as e:  # noqa: BLE001 - any failure of a user's callable
        fail(param, where, f"callable on inputs of shape (N, {d})", f"{type(e).__name__}: {e}")


def as_router(router, d: int | None = None, where: str = "as_router") -> Router:
    """Wrap a ``Router``, an ``nn.Module`` or a callable ``(N, d) -> (N, K)`` as a :class:`Router`.

    For a plain module or callable, ``K`` is found by calling it once on zeros of shape ``(2, d)``,
    which needs ``d``. Errors name ``where`` (the function the user called).
    """
    if isinstance(router, Router):
        return router
    if not callable(router):
        fail("router", where, "a Router, an nn.Module or a callable (N, d) -> (N, K)", type(router).__name__,
             TypeError)
    if d is None:
        d = getattr(router, "in_features", None)
    if d is None:
        fail("d", where, "given (the input dimension) for a plain callable router", d)
    d = check_int(d, "d", where)
    out = probe_module(router, d, where, "router")
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < 2:
        fail("router", where, "a map (N, d) -> (N, K) with K >= 2", f"output {getattr(out, 'shape', out)}")
    return _CallableRouter(router, out.shape[1], d)


def score_difference(router, x, pair=(0, 1)) -> torch.Tensor:
    r"""Pairwise score difference :math:`g_{ij}(x) = a_i(x) - a_j(x)` (3.1), shape ``(N,)``; ``x``: ``(N, d)``."""
    x = check_inputs(x, None, "score_difference")
    r = as_router(router, x.shape[1], "score_difference")
    x = check_inputs(x, r.d, "score_difference")
    i, j = check_pair(pair, r.num_experts, "score_difference")
    a = r.logits(x)
    return a[:, i] - a[:, j]


def score_gradient(router, x, pair=(0, 1)) -> torch.Tensor:
    r"""Input gradient :math:`\nabla_x g_{ij}(x)` by autograd, shape ``(N, d)``; ``x``: ``(N, d)``."""
    x = check_inputs(x, None, "score_gradient")
    r = as_router(router, x.shape[1], "score_gradient")
    x = cast_to_module(r, check_inputs(x, r.d, "score_gradient")).detach().requires_grad_(True)
    i, j = check_pair(pair, r.num_experts, "score_gradient")
    with torch.enable_grad():
        a = r(x)
        (grad,) = torch.autograd.grad((a[:, i] - a[:, j]).sum(), x)
    return grad


def check_pair(pair, K: int, where: str) -> tuple[int, int]:
    """``(i, j)``: two distinct expert indices in ``[0, K)``, validated for ``where``."""
    if isinstance(pair, torch.Tensor) and pair.device.type == "meta":
        fail("pair", where, "a pair of expert indices (i, j)", pair, TypeError)
    items = list(pair) if isinstance(pair, (list, tuple, torch.Tensor, np.ndarray)) else None
    if items is None or len(items) != 2:
        fail("pair", where, "a pair of expert indices (i, j)", pair, TypeError)
    items = [p.item() if hasattr(p, "item") and getattr(p, "ndim", 1) == 0 else p for p in items]
    i, j = (check_int(p, "pair", where, low=-(1 << 63)) for p in items)
    if not (0 <= i < K and 0 <= j < K and i != j):
        fail("pair", where, f"two distinct indices in [0, {K - 1}]", pair)
    return i, j


class UnitLinearRouter(Router):
    r"""Linear router of fixed score scale: a compact router family on which τ has a meaning.

    .. math:: a(x) = s\,\sqrt{(K-1)/2}\;\frac{W_c}{\lVert W_c\rVert_F}\,x + (b - \bar b\,\mathbf 1),
              \qquad W_c = W - \mathbf 1\,\bar w^\top

    (:math:`\bar w`, :math:`\bar b` the means over experts), so that the root mean square over pairs of
    :math:`|\nabla g_{ij}|` equals ``scale`` :math:`s`, because
    :math:`\sum_{i<j}|w_i - w_j|^2 = K\lVert W_c\rVert_F^2`; for ``K = 2``, :math:`|\nabla g| = s`.
    Without a fixed scale, :math:`L_\tau(\lambda W) = L_{\tau/\lambda}(W)` and a realizable soft risk has
    no finite minimiser. The raw ``weight`` is invariant under :math:`W \to \lambda W` (λ > 0) and
    :math:`W \to W + \mathbf 1 w^\top`, ``bias`` under :math:`b \to b + c\mathbf 1` (the logit gauge).

    Args:
        weight: raw ``W``, shape ``(K, d)``, ``K >= 2``, not all rows equal.
        bias: raw ``b``, shape ``(K,)`` (zeros if ``None``).
        scale: ``s > 0``.
        trainable: register ``weight, bias`` as parameters (else buffers).
    """

    def __init__(self, weight, bias=None, *, scale: float = 1.0, trainable: bool = True):
        super().__init__()
        W = set_affine(self, weight, bias, "UnitLinearRouter", min_rows=2, trainable=trainable)
        if float(torch.linalg.norm(W - W.mean(0))) == 0.0:
            fail("weight", "UnitLinearRouter", "an array whose rows are not all equal", W)
        self.scale = check_float(scale, "scale", "UnitLinearRouter", 0.0, math.inf)
        self.num_experts, self.d = W.shape

    def effective(self, weight=None, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective linear logits ``(W_eff (K, d), b_eff (K,))``, differentiable in the raw ones
        (``weight``/``bias`` replace the stored ones when given)."""
        W = self.weight if weight is None else weight
        b = self.bias if bias is None else bias
        Wc = W - W.mean(0)
        return (self.scale * math.sqrt((self.num_experts - 1) / 2) / torch.linalg.norm(Wc)) * Wc, b - b.mean()

    def forward(self, x):
        W, b = self.effective()
        return x @ W.T + b

    def as_linear(self) -> LinearRouter:
        """A frozen :class:`~softhard.model.routers.LinearRouter` with the same logits."""
        W, b = self.effective()
        return LinearRouter(W.detach(), b.detach())


def effective_linear(router, weight=None, bias=None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(W, b)`` of a LinearRouter or UnitLinearRouter (logits ``W x + b``), else ``None``; ``weight``/``bias``
    replace the router's raw parameters when given."""
    if isinstance(router, UnitLinearRouter):
        return router.effective(weight, bias)
    if isinstance(router, LinearRouter):
        return (router.weight if weight is None else weight), (router.bias if bias is None else bias)
    return None
