r"""A student MoE's parameters as one flat vector, and its empirical soft risk on a fixed sample (paper §4.4, §5).

- :class:`ParamSpace`: the flat vector with the model's exact symmetries: expert relabelling (the K!
  permutations) and the directions along which the risk cannot change (the logit gauge
  :math:`a \to a + c(x)`, and the scale of a :class:`~softhard.model.routers.UnitLinearRouter`).
- :class:`Objective`: :math:`L_\tau(\theta) = \sum_i w_i (f^*(x_i) - f_\tau(x_i;\theta))^2 + \sigma^2` (5.3) on
  one fixed sample (``estimate.draw``, weights :math:`1/N`) or a weighted quadrature rule, with its gradient and
  full Hessian (``torch.func``, float64).

Shared by :mod:`softhard.dynamics.landscape` (critical points) and :mod:`softhard.dynamics.gamma` (Γ-evidence).
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import torch
from torch.func import functional_call

from .._validate import DTYPE, check_float, check_inputs, fail
from ..model.experts import LinearExperts, MLPExperts
from ..model.moe import MoE, hard_from, soft_from
from ..model.routers import LinearRouter, MLPRouter, UnitLinearRouter
from .teacher import PartitionTeacher

__all__ = ["ParamSpace", "Objective", "space_of"]


class ParamSpace:
    r"""Flat parameter vector of a student MoE and the action of its symmetries.

    Known parts: routers LinearRouter, UnitLinearRouter, MLPRouter (gauge on the output layer); experts
    LinearExperts, MLPExperts (every parameter's leading axis indexes the experts). Only trainable
    parameters (``named_parameters``) are in the vector; ``p`` is its length.
    """

    def __init__(self, moe: MoE):
        if not isinstance(moe, MoE):
            fail("moe", "ParamSpace", "a softhard MoE", type(moe).__name__, TypeError)
        r, e = moe.router, moe.experts
        if not isinstance(r, (LinearRouter, UnitLinearRouter, MLPRouter)) or not isinstance(e, (LinearExperts,
                                                                                                MLPExperts)):
            fail("moe", "ParamSpace", "an MoE with a Linear/UnitLinear/MLP router and Linear/MLP experts",
                 f"{type(r).__name__} + {type(e).__name__}", TypeError)
        self.moe = moe
        self.K = moe.num_experts
        named = list(moe.named_parameters())
        if not named:
            fail("moe", "ParamSpace", "an MoE with trainable parameters", "none")
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.p = int(self.offsets[-1])
        last = f"router.net.{len(r.net) - 1}." if isinstance(r, MLPRouter) else "router."
        self._expert_axis = [n.startswith("experts.") or n.startswith(last) for n in self.names]
        self._gauge = [n for n in self.names if n.startswith(last)]  # logits layer: a -> a + c(x)
        self._radial = "router.weight" if isinstance(r, UnitLinearRouter) and "router.weight" in self.names else None

    def vector(self, moe: MoE | None = None) -> torch.Tensor:
        """The flat parameters ``(p,)`` of ``moe`` (default: the template)."""
        m = self.moe if moe is None else moe
        params = dict(m.named_parameters())
        return torch.cat([params[n].detach().reshape(-1).to(DTYPE) for n in self.names])

    def split(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: vec[a:b].reshape(s) for n, s, a, b in zip(self.names, self.shapes, self.offsets, self.offsets[1:])}

    def load(self, vec) -> MoE:
        """A copy of the template with parameters ``vec``."""
        m = copy.deepcopy(self.moe)
        with torch.no_grad():
            for n, t in self.split(torch.as_tensor(vec, dtype=DTYPE)).items():
                m.get_parameter(n).copy_(t)
        return m

    def forward(self, vec: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and expert outputs ``(N, K)`` at parameters ``vec`` (functional, differentiable)."""
        d = self.split(vec)
        rp = {n[7:]: t for n, t in d.items() if n.startswith("router.")}
        ep = {n[8:]: t for n, t in d.items() if n.startswith("experts.")}
        return functional_call(self.moe.router, rp, (x,)), functional_call(self.moe.experts, ep, (x,))

    def permute(self, vec: torch.Tensor, perm) -> torch.Tensor:
        """Relabel the experts: new expert ``k`` is old expert ``perm[k]`` (router and experts together)."""
        idx = torch.as_tensor(list(perm), dtype=torch.long)
        d = self.split(vec)
        return torch.cat([(d[n][idx] if ax else d[n]).reshape(-1) for n, ax in zip(self.names, self._expert_axis)])

    def canonical(self, vec: torch.Tensor) -> torch.Tensor:
        """Gauge-fixed parameters: logits layer centred over experts; a unit router's weight of unit norm."""
        d = self.split(vec)
        for n in self._gauge:
            d[n] = d[n] - d[n].mean(0)
        if self._radial is not None:
            d[self._radial] = d[self._radial] / torch.linalg.norm(d[self._radial])
        return torch.cat([d[n].reshape(-1) for n in self.names])

    def null_directions(self, vec: torch.Tensor) -> torch.Tensor:
        r"""Orthonormal basis ``(p, r)`` of exact invariance directions at ``vec``.

        The gauge :math:`a \to a + c` (adding the same row/entry to every expert's row of the logits layer)
        leaves :math:`L_\tau` invariant everywhere, so the Hessian vanishes on it; the radial direction of a
        unit router's weight is an invariance too, and at a critical point :math:`H\,W = -\nabla L = 0`.
        """
        cols = []
        for n in self._gauge:
            a, s = self.offsets[self.names.index(n)], self.shapes[self.names.index(n)]
            for j in range(int(np.prod(s[1:])) if len(s) > 1 else 1):
                v = torch.zeros(self.p, dtype=DTYPE)
                block = torch.zeros(s, dtype=DTYPE).reshape(s[0], -1)
                block[:, j] = 1.0
                v[a:a + block.numel()] = block.reshape(-1)
                cols.append(v)
        if self._radial is not None:
            i = self.names.index(self._radial)
            v = torch.zeros(self.p, dtype=DTYPE)
            v[self.offsets[i]:self.offsets[i + 1]] = vec[self.offsets[i]:self.offsets[i + 1]]
            cols.append(v)
        if not cols:
            return torch.zeros(self.p, 0, dtype=DTYPE)
        Q, R = torch.linalg.qr(torch.stack(cols, 1))
        return Q[:, torch.abs(torch.diagonal(R)) > 1e-12]

    def complement(self, vec: torch.Tensor) -> torch.Tensor:
        """Orthonormal basis ``(p, p - r)`` of the directions orthogonal to :meth:`null_directions`."""
        N = self.null_directions(vec)
        Q, _ = torch.linalg.qr(torch.cat([N, torch.eye(self.p, dtype=DTYPE)], 1), mode="complete")
        return Q[:, N.shape[1]:]

    def distance(self, v1: torch.Tensor, v2: torch.Tensor) -> float:
        """Euclidean distance of the canonical forms, minimised over the K! relabellings of ``v2``."""
        c1 = self.canonical(v1)
        return min(float(torch.linalg.norm(c1 - self.canonical(self.permute(v2, p))))
                   for p in itertools.permutations(range(self.K)))


def _chunk(p: int, n: int) -> int:
    return max(512, min(n, (1 << 21) // max(p, 1)))


class Objective:
    r"""Empirical soft risk on a fixed sample ``x (N, d)``:

    .. math:: L_\tau(\theta) = \sum_{i=1}^N w_i \big(f^*(x_i) - f_\tau(x_i;\theta)\big)^2 + \sigma^2
              \quad (2.5),\ (5.3)

    with :math:`w_i = 1/N` (a Monte Carlo sample), or the weights ``weights (N,)`` of a quadrature rule; and
    the hard risk :math:`L_0` of the same parameters on the same points. Differentiable in ``vec``.
    """

    def __init__(self, space: ParamSpace, teacher, x: torch.Tensor, tau: float, where: str = "Objective",
                 weights: torch.Tensor | None = None):
        if not isinstance(teacher, PartitionTeacher):
            fail("teacher", where, "a PartitionTeacher", type(teacher).__name__, TypeError)
        if teacher.d != space.moe.d:
            fail("teacher", where, f"a teacher on R^{space.moe.d} like the student", f"a teacher on R^{teacher.d}")
        x = check_inputs(x, space.moe.d, where, "sample").to(DTYPE)
        self.space, self.x, self.teacher, self.where = space, x, teacher, where
        self.tau = check_float(tau, "tau", where, 0.0, math.inf)
        with torch.no_grad():
            self.fs = teacher.signal(x).to(DTYPE)
            a, h = space.forward(space.vector(), x)
        if not all(bool(torch.isfinite(t).all()) for t in (self.fs, a, h)):
            fail("sample", where, "inputs on which the teacher and the model are finite", "non-finite outputs")
        self.noise = float(teacher.noise_std) ** 2
        self._t = torch.tensor([self.tau], dtype=DTYPE)
        self._chunk = _chunk(space.p, len(x))
        self.w = (torch.full((len(x),), 1.0 / len(x), dtype=DTYPE) if weights is None
                  else torch.as_tensor(weights, dtype=DTYPE))

    def _sum(self, vec, sl: slice) -> torch.Tensor:
        a, h = self.space.forward(vec, self.x[sl])
        return (self.w[sl] * (self.fs[sl] - soft_from(a, h, self._t, True)) ** 2).sum()

    def _slices(self):
        n = len(self.x)
        return [slice(i, min(n, i + self._chunk)) for i in range(0, n, self._chunk)]

    def loss(self, vec: torch.Tensor) -> torch.Tensor:
        """:math:`L_\\tau` (a 0-d tensor, differentiable)."""
        return sum(self._sum(vec, s) for s in self._slices()) + self.noise

    def grad(self, vec: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla L_\\tau`, shape ``(p,)``."""
        v = vec.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss(v), v)
        return g  # may be non-finite far out; the searches reject such steps

    def hessian(self, vec: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla^2 L_\\tau`, shape ``(p, p)``, float64 (sum of per-chunk Hessians)."""
        H = sum(torch.func.hessian(self._sum)(vec, s) for s in self._slices())
        return self._finite(H, "Hessian", "1/τ²")

    def _finite(self, t: torch.Tensor, what: str, growth: str) -> torch.Tensor:
        """``t``, or a ValueError naming τ: derivatives of :math:`L_\\tau` grow like ``growth`` at the
        interfaces and overflow float64 for τ near its smallest numbers."""
        if not bool(torch.isfinite(t).all()):
            fail("tau", self.where, f"large enough for a finite float64 {what} of L_tau (it grows like {growth} "
                 "near the interfaces; it overflows at these parameters)", self.tau)
        return t

    def hard_loss(self, vec: torch.Tensor) -> float:
        """:math:`L_0` of the same parameters on the same sample."""
        with torch.no_grad():
            a, h = self.space.forward(vec, self.x)
            return float((self.w * (self.fs - hard_from(a, h)) ** 2).sum()) + self.noise


def space_of(moe, where: str) -> ParamSpace:
    """:class:`ParamSpace` of ``moe``, its errors naming ``where``."""
    if not isinstance(moe, MoE):
        fail("moe", where, "a softhard MoE", type(moe).__name__, TypeError)
    try:
        return ParamSpace(moe)
    except (TypeError, ValueError) as e:
        raise type(e)(str(e).replace("of ParamSpace", f"of {where}")) from None
