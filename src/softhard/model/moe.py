r"""Mixture of experts and teachers (paper §2 (2.3)–(2.11), §5 (5.1)–(5.3)).

Shapes: inputs ``x`` are ``(N, d)``; logits and expert outputs ``(N, K)``; predictions ``(N,)``, or
``(N, T)`` when a grid of ``T`` temperatures is given.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .._validate import DTYPE, as_tensor, check_finite, check_float, check_grid, check_inputs, check_int, fail
from .experts import as_experts
from .routers import as_router, cast_to_module

__all__ = ["MoE", "Teacher", "HardTeacher", "FunctionTeacher", "as_teacher"]


def _taus(tau, where: str) -> tuple[torch.Tensor, bool]:
    """A temperature or a 1-d grid of them -> (tensor (T,), was_scalar)."""
    if isinstance(tau, (int, float)) or (isinstance(tau, torch.Tensor) and tau.ndim == 0):  # check_float refuses bools
        return torch.tensor([check_float(tau, "tau", where, 0.0, math.inf)], dtype=torch.float64), True
    return check_grid(tau, "tau", where, low=0.0, low_open=True), False


class MoE(nn.Module):
    r"""A mixture of experts ``MoE(router, experts)``.

    Soft predictor (2.4): :math:`f_\tau(x) = \sum_k \pi_k^\tau(x) h_k(x)`; hard predictor (2.10):
    :math:`f_0(x) = h_{k^*(x)}(x)` with :math:`k^* = \min\arg\max_k a_k` (2.9).

    Args:
        router: a Router, ``nn.Module`` or callable ``(N, d) -> (N, K)``.
        experts: an Experts, ``nn.Module`` or callable ``(N, d) -> (N, K)`` with the same ``K``.
    """

    def __init__(self, router, experts, d: int | None = None):
        super().__init__()
        if d is not None:
            d = check_int(d, "d", "MoE")
            own = getattr(router, "d", None)
            if isinstance(own, int) and own != d:
                fail("d", "MoE", f"the router's input dimension {own} (or None)", d)
        self.router = as_router(router, d, "MoE")
        self.experts = as_experts(experts, d if d is not None else self.router.d, "MoE")
        if self.router.num_experts != self.experts.num_experts:
            fail("experts", "MoE", f"{self.router.num_experts} experts to match the router",
                 self.experts.num_experts)
        if self.router.d is not None and self.experts.d is not None and self.router.d != self.experts.d:
            fail("experts", "MoE", f"of input dimension {self.router.d} like the router", self.experts.d)
        self.num_experts = self.router.num_experts
        self.d = self.router.d if self.router.d is not None else self.experts.d

    def _x(self, x, where):
        x = check_inputs(x, self.d, where)
        p = next(self.parameters(), None)
        p = next(self.buffers(), None) if p is None else p
        return x.to(p.dtype) if p is not None and p.is_floating_point() else x

    def logits(self, x) -> torch.Tensor:
        """Router logits ``a(x)``, shape ``(N, K)``."""
        return self.router.logits(self._x(x, "MoE.logits"))

    def expert_outputs(self, x) -> torch.Tensor:
        """Expert outputs ``h(x)``, shape ``(N, K)``."""
        return self.experts.outputs(self._x(x, "MoE.expert_outputs"))

    def _scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and expert outputs ``(N, K)`` each, without validating ``x``: the trusted path for
        estimator loops, whose inputs come from a law (finite, ``(N, d)``), validated once per call."""
        return self.router(cast_to_module(self.router, x)), self.experts(cast_to_module(self.experts, x))

    def soft(self, x, tau) -> torch.Tensor:
        r"""Soft prediction :math:`f_\tau(x)` (2.4): shape ``(N,)`` for a float τ, ``(N, T)`` for a grid."""
        t, scalar = _taus(tau, "MoE.soft")
        x = self._x(x, "MoE.soft")
        return soft_from(self.router(x), self.experts(x), t, scalar)

    def hard(self, x) -> torch.Tensor:
        r"""Hard prediction :math:`f_0(x) = h_{k^*(x)}(x)` (2.10), shape ``(N,)``."""
        x = self._x(x, "MoE.hard")
        return hard_from(self.router(x), self.experts(x))

    def forward(self, x, tau=None):
        """``soft(x, tau)``, or ``hard(x)`` when ``tau`` is ``None``."""
        return self.hard(x) if tau is None else self.soft(x, tau)

    def loss(self, x, y, tau=None) -> torch.Tensor:
        r"""Per-sample squared loss: :math:`(y - f_\tau(x))^2` (soft, (2.1) with (2.4)), or
        :math:`(y - f_0(x))^2` when ``tau`` is ``None`` (hard, (2.10)–(2.11)).

        Shapes: ``x (N, d)``, ``y (N,)``; returns ``(N,)``, or ``(N, T)`` for a grid of ``T`` temperatures.
        """
        f = self(x, tau)
        y = as_tensor(y, "y", "MoE.loss", dtype=f.dtype, device=f.device)
        if y.shape != (f.shape[0],):
            fail("y", "MoE.loss", f"an array of shape ({f.shape[0]},) like x", f"shape {tuple(y.shape)}")
        check_finite(y, "y", "MoE.loss")
        return ((y.unsqueeze(-1) if f.ndim == 2 else y) - f) ** 2


def soft_from(a: torch.Tensor, h: torch.Tensor, taus: torch.Tensor, scalar: bool = False) -> torch.Tensor:
    """Soft predictions from logits ``a (N, K)`` and outputs ``h (N, K)`` on a grid ``taus (T,)`` -> ``(N, T)``.

    The gate is computed in float64 (so a float32 model at τ = 1e-50 is its hard limit, not NaN) and the
    prediction returned in the promoted dtype of ``a`` and ``h``.
    """
    out = torch.promote_types(a.dtype, h.dtype)
    w = a.to(DTYPE)
    t = taus.to(device=w.device, dtype=DTYPE)
    z = (w - w.max(dim=-1, keepdim=True).values).unsqueeze(-2) / t[:, None]  # (N, T, K)
    f = (torch.softmax(z, dim=-1) * h.to(DTYPE).unsqueeze(-2)).sum(-1).to(out)
    return f[:, 0] if scalar else f


def hard_from(a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Hard predictions from logits and outputs, ``(N,)`` (lowest index wins ties)."""
    return h.gather(-1, torch.argmax(a, dim=-1, keepdim=True)).squeeze(-1)


class Teacher:
    r"""Data model :math:`Y = f^*(X) + \xi`, :math:`E[\xi\mid X] = 0`, :math:`\mathrm{Var}\,\xi = \sigma^2` (5.1).

    Risks are averaged in conditional form, :math:`E[(Y - f)^2 \mid X] = (f^* - f)^2 + \sigma^2` (5.3),
    which has lower variance than sampling the noise.
    """

    noise_std: float = 0.0

    def signal(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher signal :math:`f^*(x)`, shape ``(N,)``."""
        raise NotImplementedError

    def sample_y(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw responses ``Y`` given ``x``, shape ``(N,)`` (Gaussian noise of std ``noise_std``)."""
        f = self.signal(x)
        if self.noise_std == 0:
            return f
        return f + self.noise_std * torch.randn(f.shape, generator=generator, dtype=f.dtype, device="cpu").to(f.device)

    def _signal(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`signal` on trusted inputs (estimator loops); validates by default."""
        return self.signal(x)

    def conditional_risk(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        r""":math:`E[(Y - f(X))^2 \mid X = x]`; ``f`` of shape ``(N,)`` or ``(N, T)``."""
        s = self.signal(x)
        s = s.unsqueeze(-1) if f.ndim == 2 else s
        return (s - f) ** 2 + self.noise_std ** 2


class HardTeacher(Teacher):
    """The hard-routed ``moe`` as teacher: :math:`f^* = f_0` of ``moe`` (realizable), plus noise."""

    def __init__(self, moe: MoE, noise_std: float = 0.0):
        where = type(self).__name__  # PartitionTeacher names itself
        if not isinstance(moe, MoE):
            fail("moe", where, "a softhard MoE", type(moe).__name__, TypeError)
        self.moe = moe
        self.noise_std = check_float(noise_std, "noise_std", where, 0.0, math.inf, low_open=False)

    def signal(self, x):
        return self.moe.hard(x)

    def _signal(self, x):
        return hard_from(*self.moe._scores(x))


class FunctionTeacher(Teacher):
    """Any function ``f*: (N, d) -> (N,)`` as teacher signal, plus Gaussian noise of std ``noise_std``."""

    def __init__(self, fn: Callable, noise_std: float = 0.0):
        if not callable(fn):
            fail("fn", "FunctionTeacher", "a callable (N, d) -> (N,)", type(fn).__name__, TypeError)
        self.fn = fn
        self.noise_std = check_float(noise_std, "noise_std", "FunctionTeacher", 0.0, math.inf, low_open=False)
        self.named = ("fn", "FunctionTeacher")  # how errors of fn are reported (as_teacher names the caller's)

    def signal(self, x):
        param, where = self.named
        try:
            out = self.fn(x)
        except Exception as e:  # noqa: BLE001 - the user's function failed: say which one and how
            fail(param, where, "a function (N, d) -> (N,) that runs on the inputs", f"{type(e).__name__}: {e}")
        if not isinstance(out, torch.Tensor):
            out = as_tensor(out, param, where)
        if out.shape != (x.shape[0],):
            fail(param, where, "a callable returning shape (N,)", f"output shape {tuple(out.shape)}")
        bad = ~torch.isfinite(out)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            fail(param, where, "a function with finite values",
                 f"{float(out[i])} at x = {[round(float(v), 6) for v in x[i][:6]]}")
        return out


def as_teacher(teacher, moe: MoE | None = None, where: str = "as_teacher") -> Teacher:
    """``None`` -> the hard-routed ``moe`` itself; an MoE -> :class:`HardTeacher`; a callable ->
    :class:`FunctionTeacher`.

    With ``moe`` given, an MoE teacher must have the model's input dimension. A plain callable is checked
    where it is used: an exception, a wrong shape or a non-finite value is reported as the ``teacher``
    parameter of ``where`` (pass the name of the function the user called).
    """
    if moe is not None and not isinstance(moe, MoE):
        fail("moe", where, "a softhard MoE (or None)", type(moe).__name__, TypeError)
    if teacher is None:
        if moe is None:
            fail("teacher", where, "given when there is no MoE", teacher)
        return HardTeacher(moe)
    if isinstance(teacher, Teacher):
        out = teacher
    elif isinstance(teacher, MoE):
        out = HardTeacher(teacher)
    elif callable(teacher):
        out = FunctionTeacher(teacher)
        out.named = ("teacher", where)
    else:
        fail("teacher", where, "None, a Teacher, an MoE or a callable", type(teacher).__name__, TypeError)
    d = moe.d if moe is not None else None
    td = getattr(out.moe, "d", None) if isinstance(out, HardTeacher) else None
    if d is not None and td is not None and td != d:
        fail("teacher", where, f"a teacher on R^{d} (the model's input dimension)", f"a teacher on R^{td}")
    return out
