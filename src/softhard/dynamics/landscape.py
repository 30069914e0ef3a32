r"""The soft-risk landscape of a teacher–student problem (paper §4.4, §5: Theorem 4.7, Theorem 5.17).

- :class:`ParamSpace`: a student MoE's parameters as one flat vector, with the model's exact symmetries:
  expert relabelling (the K! permutations) and the directions along which the risk cannot change (the
  logit gauge :math:`a \to a + c(x)`, and the scale of a :class:`~softhard.model.routers.UnitLinearRouter`).
- :class:`Objective`: :math:`L_\tau(\theta) = \frac1N\sum_i (f^*(x_i) - f_\tau(x_i;\theta))^2 + \sigma^2` (5.3)
  on one fixed sample (``estimate.draw``), with its gradient and full Hessian (``torch.func``, float64).
- :func:`critical_points`: critical points from many starts (L-BFGS descent and/or a Levenberg–Marquardt
  Newton iteration on :math:`\nabla L_\tau = 0`), their Hessian spectra on the complement of the symmetry
  directions, the classification minimum / strict saddle / degenerate, grouping modulo relabelling and
  gauge, and whether each hard partition is teacher-equivalent (Theorem 5.17, Lemma 5.15).
- :func:`minima_path`: the minimiser of :math:`L_\tau` followed as τ decreases, with its recovery error.
- :func:`uniform_gap`: Γ-convergence evidence (Theorem 4.7): :math:`\sup_{\theta\in F}|L_\tau - L_0|` over a
  compact family F against τ with a fitted exponent α (Cor. 4.4 predicts α = 1), and
  :math:`\arg\min_F L_\tau` tracked against :math:`\arg\min_F L_0`.
- :func:`run_landscape`: one ready-made problem end to end, as tables (``softhard landscape``).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import functional_call

from .._validate import DTYPE, as_tensor, check_finite, check_float, check_grid, check_inputs, check_int, \
    check_seed, check_seed_value, fail
from ..estimators.reducer import Estimate, draw, monte_carlo, resolve_seed
from ..model.experts import LinearExperts, MLPExperts
from ..model.laws import as_law
from ..model.moe import MoE, as_teacher, hard_from, soft_from
from ..model.routers import LinearRouter, MLPRouter, UnitLinearRouter
from ..results.table import Table, loglog_fit
from .shape import hard_risk, supports_exact
from .teacher import PROBLEMS, PartitionTeacher, Problem, get_problem, recovery

__all__ = ["ParamSpace", "Objective", "hessian", "CriticalPoint", "Landscape", "critical_points", "minima_path",
           "random_family", "GammaResult", "uniform_gap", "run_landscape"]


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

    .. math:: L_\tau(\theta) = \frac1N\sum_{i=1}^N \big(f^*(x_i) - f_\tau(x_i;\theta)\big)^2 + \sigma^2
              \quad (2.5),\ (5.3)

    and the hard risk :math:`L_0` of the same parameters on the same sample. Differentiable in ``vec``.
    """

    def __init__(self, space: ParamSpace, teacher, x: torch.Tensor, tau: float, where: str = "Objective"):
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

    def _sum(self, vec, sl: slice) -> torch.Tensor:
        a, h = self.space.forward(vec, self.x[sl])
        return ((self.fs[sl] - soft_from(a, h, self._t, True)) ** 2).sum()

    def _slices(self):
        n = len(self.x)
        return [slice(i, min(n, i + self._chunk)) for i in range(0, n, self._chunk)]

    def loss(self, vec: torch.Tensor) -> torch.Tensor:
        """:math:`L_\\tau` (a 0-d tensor, differentiable)."""
        return sum(self._sum(vec, s) for s in self._slices()) / len(self.x) + self.noise

    def grad(self, vec: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla L_\\tau`, shape ``(p,)``."""
        v = vec.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss(v), v)
        return g  # may be non-finite far out; the searches reject such steps

    def hessian(self, vec: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla^2 L_\\tau`, shape ``(p, p)``, float64 (sum of per-chunk Hessians)."""
        H = sum(torch.func.hessian(self._sum)(vec, s) for s in self._slices()) / len(self.x)
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
            return float(((self.fs - hard_from(a, h)) ** 2).mean()) + self.noise


def _check_memory(p: int, max_bytes: int, where: str) -> None:
    need = 2 * 8 * p * p  # the float64 matrix and the eigen-solver's copy
    if need > max_bytes:
        fail("moe", where, f"a model whose {p} x {p} float64 Hessian fits in max_bytes={max_bytes} "
                           f"(it would need {need / 2 ** 30:.3g} GiB = {need} bytes)", f"{p} parameters")


def hessian(moe: MoE, teacher, sample, tau: float, *, max_bytes: int = 1 << 31) -> torch.Tensor:
    r"""Full Hessian :math:`\nabla^2 L_\tau` of the empirical soft risk at ``moe``'s parameters, ``(p, p)`` float64.

    Computed with ``torch.func.hessian`` in chunks of the sample. A Hessian that would not fit in
    ``max_bytes`` (matrix plus eigen-solver copy, :math:`16p^2` bytes) is refused with a ``ValueError``
    that states the size it would need. Parameter order: :class:`ParamSpace` ``(moe)``.
    """
    space = _space(moe, "hessian")
    _check_memory(space.p, check_int(max_bytes, "max_bytes", "hessian"), "hessian")
    return Objective(space, teacher, sample, tau, "hessian").hessian(space.vector())


@dataclass
class CriticalPoint:
    r"""A critical point of :math:`L_\tau` (one class modulo relabelling and gauge).

    Attributes:
        params: canonical parameters ``(p,)`` (see :class:`ParamSpace`).
        loss, hard_loss: :math:`L_\tau` and :math:`L_0` on the sample; grad_norm: :math:`|\nabla L_\tau|`.
        eigenvalues: spectrum of the Hessian on the complement of the symmetry directions, ascending.
        kind: "minimum", "strict saddle" or "degenerate"; teacher_equivalent: hard partition equals the
            teacher's up to relabelling (misrouted mass <= the tolerance).
        negative: number of eigenvalues below −δ (the classification tolerance).
        dead_experts: experts that win no point of the sample (an empty hard cell: their parameters are
            nearly flat directions, a critical point "at infinity" of the router offsets).
        recovery: :class:`~softhard.dynamics.teacher.Recovery` (exact when the problem allows it).
        starts: indices of the starts that converged here.
    """

    tau: float
    params: torch.Tensor
    loss: float
    hard_loss: float
    grad_norm: float
    eigenvalues: np.ndarray
    kind: str
    teacher_equivalent: bool
    recovery: object
    negative: int = 0
    dead_experts: int = 0
    starts: list[int] = field(default_factory=list)

    @property
    def min_eigenvalue(self) -> float:
        return float(self.eigenvalues[0])


@dataclass
class Landscape:
    """Critical points of :math:`L_\\tau` found from ``n_starts`` starts (``failed`` did not converge)."""

    tau: float
    points: list[CriticalPoint]
    n_starts: int
    failed: int
    space: ParamSpace = field(repr=False)

    def moe(self, i: int) -> MoE:
        """The MoE at critical point ``i``."""
        return self.space.load(self.points[i].params)


def _classify(eig: np.ndarray, rtol: float) -> tuple[str, int]:
    """Kind and number of negative eigenvalues, with tolerance ``rtol·max(1, max|λ|)``."""
    tol = rtol * max(1.0, float(np.abs(eig).max())) if len(eig) else 0.0
    neg = int((eig < -tol).sum())
    if len(eig) == 0 or eig[0] > tol:
        return "minimum", neg
    return ("strict saddle" if neg else "degenerate"), neg


def _newton(obj: Objective, vec: torch.Tensor, tol: float, max_iter: int) -> tuple[torch.Tensor, float]:
    r"""Levenberg–Marquardt on :math:`\nabla L = 0` in the complement of the symmetry directions.

    Step :math:`\delta = -(H_\perp^2 + \lambda I)^{-1} H_\perp g_\perp`, accepted when :math:`|\nabla L|` drops
    (λ shrinks) and rejected otherwise (λ grows); converges to critical points of any index.
    """
    space = obj.space
    vec = space.canonical(vec)
    g = obj.grad(vec)
    gn, lam = float(torch.linalg.norm(g)), 1e-6
    for _ in range(max_iter):
        if gn <= tol:
            break
        B = space.complement(vec)
        Hb, gb = B.T @ obj.hessian(vec) @ B, B.T @ g
        scale = float(torch.linalg.matrix_norm(Hb, 2)) + 1e-300
        for _ in range(30):
            step = -torch.linalg.solve(Hb @ Hb + lam * scale ** 2 * torch.eye(len(Hb), dtype=DTYPE), Hb @ gb)
            new = space.canonical(vec + B @ step)
            g_new = obj.grad(new)
            gn_new = float(torch.linalg.norm(g_new))
            if math.isfinite(gn_new) and gn_new < gn:
                vec, g, gn, lam = new, g_new, gn_new, max(lam / 10, 1e-12)
                break
            lam *= 10
        else:
            break
    return vec, gn


def _descend(obj: Objective, vec: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Full-batch L-BFGS (strong Wolfe) on :math:`L_\\tau` from ``vec``."""
    v = vec.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([v], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-15,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        v.grad = obj.grad(v.detach())
        return obj.loss(v.detach())

    opt.step(closure)
    return v.detach()


def _point(obj: Objective, v: torch.Tensor, gn: float, law, eig_rtol: float, tol: float) -> CriticalPoint:
    """Classify the canonical critical point ``v`` of ``obj``."""
    space = obj.space
    B = space.complement(v)
    eig = torch.linalg.eigvalsh(B.T @ obj.hessian(v) @ B).numpy()
    m = space.load(v)
    rec, equiv = _teacher_equivalent(m, obj.teacher, law, obj.x, tol)
    with torch.no_grad():
        a, _ = space.forward(v, obj.x)
        dead = space.K - int(torch.unique(torch.argmax(a, -1)).numel())
    kind, neg = _classify(eig, eig_rtol)
    return CriticalPoint(obj.tau, v, float(obj.loss(v)), obj.hard_loss(v), gn, eig, kind, equiv, rec, neg, dead)


def _teacher_equivalent(moe: MoE, teacher, law, x, tol: float):
    if law is not None and supports_exact(moe.router, teacher, law) and isinstance(moe.experts, LinearExperts):
        rec = recovery(moe, teacher, law, method="exact")
    else:
        rec = recovery(moe, teacher, sample=x)
    return rec, float(rec.misrouted_mass.value) <= tol


def _space(moe, where: str) -> ParamSpace:
    """:class:`ParamSpace` of ``moe``, its errors naming ``where``."""
    if not isinstance(moe, MoE):
        fail("moe", where, "a softhard MoE", type(moe).__name__, TypeError)
    try:
        return ParamSpace(moe)
    except (TypeError, ValueError) as e:
        raise type(e)(str(e).replace("of ParamSpace", f"of {where}")) from None


def _starts(starts, space: ParamSpace, where: str) -> list[torch.Tensor]:
    rule = f"a non-empty list of MoEs like the template or finite vectors of length {space.p}"
    if isinstance(starts, MoE):
        starts = [starts]
    if isinstance(starts, torch.Tensor) and starts.ndim == 2:
        starts = list(starts)
    if not isinstance(starts, (list, tuple)) or not starts:
        fail("starts", where, rule, starts, TypeError if not isinstance(starts, (list, tuple)) else ValueError)
    out = []
    for s in starts:
        if isinstance(s, MoE):
            try:
                v = space.vector(s)
            except KeyError:
                fail("starts", where, rule, "an MoE with other parameters than the template")
        else:
            v = check_finite(as_tensor(s, "starts", where, dtype=DTYPE).reshape(-1), "starts", where)
        if v.shape != (space.p,):
            fail("starts", where, rule, f"shape {tuple(v.shape)}")
        out.append(v)
    return out


def _search_options(where: str, tol, max_iter, newton_iter, equivalence_tol) -> tuple[float, int, int, float]:
    """The options :func:`critical_points` and :func:`minima_path` share."""
    return (check_float(tol, "tol", where, 0.0, math.inf), check_int(max_iter, "max_iter", where, low=1),
            check_int(newton_iter, "newton_iter", where, low=0),
            check_float(equivalence_tol, "equivalence_tol", where, 0.0, 1.0, low_open=False, high_open=False))


def critical_points(moe: MoE, teacher, sample, tau: float, starts, *, law=None, method: str = "descent",
                    tol: float = 1e-8, max_iter: int = 300, newton_iter: int = 30, eig_rtol: float = 1e-7,
                    equivalence_tol: float = 0.05, group_tol: float = 1e-4, max_bytes: int = 1 << 31,
                    progress: bool = False) -> Landscape:
    r"""Critical points of the empirical soft risk :math:`L_\tau` from many starts, classified and grouped.

    For each start: ``method="descent"`` runs L-BFGS on :math:`L_\tau` and then the Newton iteration (finds
    minima); ``method="newton"`` runs only the Levenberg–Marquardt Newton iteration on
    :math:`\nabla L_\tau = 0` (converges to nearby critical points of any index, saddles included). A start
    converges when :math:`|\nabla L_\tau| \le` ``tol``. At each critical point the Hessian :math:`H` is
    restricted to the complement :math:`B` of the symmetry directions (:meth:`ParamSpace.null_directions`)
    and classified from the spectrum of :math:`B^\top H B` (λ_min > δ: minimum, < −δ: strict saddle,
    else degenerate, :math:`\delta` = ``eig_rtol``·max(1, max|λ|)). Points are grouped when their canonical
    forms agree to ``group_tol`` (relative) after the best of the K! relabellings. A hard partition is
    teacher-equivalent when its misrouted mass under the best matching is at most ``equivalence_tol``
    (Theorem 5.17: the others should be strict saddles at small τ).

    Args:
        moe: template student (its parameter layout; its values are not used unless it is a start).
        teacher: a :class:`~softhard.dynamics.teacher.PartitionTeacher`.
        sample: fixed inputs ``(N, d)`` (e.g. ``estimate.draw(law, N, seed)``).
        tau: temperature τ > 0.
        starts: MoEs or flat vectors ``(p,)`` (a list), e.g. from ``problem.student(seed)``.
        law: the input law, used for exact recovery errors when the problem allows it.
        max_bytes: memory allowed for one Hessian (``ValueError`` stating the need otherwise).

    Returns:
        a :class:`Landscape`.
    """
    where = "critical_points"
    space = _space(moe, where)
    _check_memory(space.p, check_int(max_bytes, "max_bytes", where), where)
    if not isinstance(method, str) or method not in ("descent", "newton"):
        fail("method", where, "one of 'descent', 'newton'", method)
    tol, max_iter, newton_iter, equivalence_tol = _search_options(where, tol, max_iter, newton_iter, equivalence_tol)
    eig_rtol = check_float(eig_rtol, "eig_rtol", where, 0.0, math.inf, low_open=False)
    group_tol = check_float(group_tol, "group_tol", where, 0.0, math.inf, low_open=False)
    law = None if law is None else as_law(law, where, space.moe.d)
    obj = Objective(space, teacher, sample, tau, where)
    vecs = _starts(starts, space, where)
    found: list[CriticalPoint] = []
    failed = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(vecs), desc=f"critical points, tau={tau:g}", leave=False)
    for i, v in enumerate(vecs):
        if method == "descent":
            v = _descend(obj, v, tol, max_iter)
        v, gn = _newton(obj, v, tol, newton_iter if method == "newton" else min(newton_iter, 8))
        if bar is not None:
            bar.update(1)
        if not gn <= tol:
            failed += 1
            continue
        v = space.canonical(v)
        match = next((cp for cp in found if space.distance(cp.params, v) <= group_tol * (1 + float(
            torch.linalg.norm(v)))), None)
        if match is not None:
            match.starts.append(i)
            continue
        cp = _point(obj, v, gn, law, eig_rtol, equivalence_tol)
        cp.starts.append(i)
        found.append(cp)
    if bar is not None:
        bar.close()
    found.sort(key=lambda c: c.loss)
    return Landscape(float(tau), found, len(vecs), failed, space)


def minima_path(moe: MoE, teacher, sample, taus, *, law=None, tol: float = 1e-9, max_iter: int = 500,
                newton_iter: int = 10, equivalence_tol: float = 0.05) -> list[CriticalPoint]:
    r"""Follow a minimiser of :math:`L_\tau` as τ decreases (continuation from ``moe``'s parameters).

    For each τ of ``taus`` (sorted decreasing) the previous minimiser is descended (L-BFGS, then Newton) and
    classified as in :func:`critical_points`; its recovery error (Theorem 5.17: expert error
    :math:`\sum_k E[(h_{\sigma(k)} - h^*_k)^2 1_{\Omega_k}]` and misrouted mass) is exact when the problem
    allows it. Returns one :class:`CriticalPoint` per τ (a point that did not reach ``tol`` keeps its
    gradient norm, so it can be told apart).
    """
    where = "minima_path"
    space = _space(moe, where)
    t = sorted(check_grid(taus, "taus", where, low=0.0, low_open=True).tolist(), reverse=True)
    tol, max_iter, newton_iter, equivalence_tol = _search_options(where, tol, max_iter, newton_iter, equivalence_tol)
    law = None if law is None else as_law(law, where, space.moe.d)
    v, out = space.vector(), []
    for tau in t:
        obj = Objective(space, teacher, sample, tau, where)
        v, gn = _newton(obj, _descend(obj, v, tol, max_iter), tol, newton_iter)
        out.append(_point(obj, space.canonical(v), gn, law, 1e-7, equivalence_tol))
    return out


def random_family(moe: MoE, size: int, radius: float, seed: int = 0) -> torch.Tensor:
    r"""A compact family: ``moe``'s parameters θ₀ and ``size − 1`` points of the box
    :math:`\theta_0 + [-r, r]^p` (uniform, seeded). Shape ``(size, p)``."""
    where = "random_family"
    space = _space(moe, where)
    size = check_int(size, "size", where)
    r = check_float(radius, "radius", where, 0.0, math.inf, low_open=False)
    g = torch.Generator().manual_seed(check_seed_value(seed, where))
    box = (2 * torch.rand(size - 1, space.p, generator=g, dtype=DTYPE) - 1) * r
    v0 = space.vector()
    return torch.cat([v0[None], v0[None] + box])


@dataclass(frozen=True)
class GammaResult:
    r"""Γ-convergence evidence on a family F (Theorem 4.7).

    Attributes:
        taus: ``(T,)``; hard: :math:`L_0` per member, Estimate ``(P,)``; gap: :math:`L_\tau - L_0`,
            Estimate ``(P, T)`` (paired on one sample).
        sup_gap, sup_gap_stderr: :math:`\max_F |L_\tau - L_0|` and the standard error of the maximising
            entry, ``(T,)``.
        alpha, alpha_stderr: fitted exponent of ``sup_gap`` against τ (log–log least squares).
        argmin_hard: index of :math:`\arg\min_F L_0`; argmin_soft: :math:`\arg\min_F L_\tau` per τ, ``(T,)``;
        excess_hard: :math:`L_0(\arg\min L_\tau) - \min_F L_0`, ``(T,)``; distance: parameter distance of the
        two argmins modulo relabelling and gauge, ``(T,)``.
    """

    taus: np.ndarray
    hard: Estimate
    gap: Estimate
    sup_gap: np.ndarray
    sup_gap_stderr: np.ndarray
    alpha: float
    alpha_stderr: float
    argmin_hard: int
    argmin_soft: np.ndarray
    excess_hard: np.ndarray
    distance: np.ndarray

    def table(self, name: str = "landscape_gamma") -> Table:
        rows = [{"tau": float(t), "sup_gap": float(s), "sup_gap_stderr": float(se), "argmin_soft": int(a),
                 "argmin_hard": self.argmin_hard, "excess_hard_risk": float(e), "argmin_distance": float(dd)}
                for t, s, se, a, e, dd in zip(self.taus, self.sup_gap, self.sup_gap_stderr, self.argmin_soft,
                                              self.excess_hard, self.distance)]
        return Table(name, list(rows[0]), rows, {"alpha": self.alpha, "alpha_stderr": self.alpha_stderr,
                                                  "family_size": int(np.shape(self.hard.value)[0]),
                                                  "n": self.gap.n, "seed": self.gap.seed})


def uniform_gap(moe: MoE, teacher, law, family, taus, *, n: int = 1 << 17, seed=0, method: str = "mc",
                progress: bool = False) -> GammaResult:
    r"""Uniform soft–hard gap over a compact family and the argmin tracking (Theorem 4.7, Cor. 4.4).

    .. math:: \sup_{\theta\in F} |L_\tau(\theta) - L_0(\theta)| \le C\tau^\alpha, \qquad
              L_\tau - L_0 = E[(f^*-f_\tau)^2 - (f^*-f_0)^2]

    estimated for every member and τ from the same draws (paired, one reducer), then
    :math:`\log\sup|\cdot|` is fitted against :math:`\log\tau` (``experiments.loglog_fit``, weighted by the
    standard errors) — α = 1 for regular interfaces (Cor. 4.4).

    Args:
        moe: template student; family: flat parameter vectors ``(P, p)`` (:func:`random_family`).
        teacher, law: the problem; taus: ``(T,)`` temperatures (at least 3 for the fit).
        n, seed, method: the Monte Carlo stream (``"mc"`` or ``"qmc"``).
    """
    where = "uniform_gap"
    space = _space(moe, where)
    teacher = as_teacher(teacher, space.moe, where)
    fam = as_tensor(family, "family", where, dtype=DTYPE)
    if fam.ndim != 2 or fam.shape[0] < 1 or fam.shape[1] != space.p:
        fail("family", where, f"an array of shape (P, {space.p}) with P >= 1", f"shape {tuple(fam.shape)}")
    check_finite(fam, "family", where)
    t = check_grid(taus, "taus", where, low=0.0, low_open=True)
    if len(set(t.tolist())) < 3:
        fail("taus", where, "at least 3 distinct temperatures for the exponent fit", t)
    law = as_law(law, where, space.moe.d)
    if not isinstance(method, str) or method not in ("mc", "qmc"):
        fail("method", where, "one of 'mc', 'qmc'", method)
    check_int(n, "n", where)
    check_seed(seed, where)
    with torch.no_grad():  # a member whose model overflows would only surface as NaN terms deep in the reducer
        probe = law.sample(64, torch.Generator().manual_seed(0))
        for i, v in enumerate(fam):
            if not all(bool(torch.isfinite(z).all()) for z in space.forward(v, probe)):
                fail("family", where, "parameter vectors at which the model's logits and outputs are finite",
                     f"member {i} gives non-finite values")
    P, T = len(fam), len(t)

    def terms(x):
        fs = teacher.signal(x)
        cols = []
        for v in fam:
            a, h = space.forward(v, x)
            r0 = (fs - hard_from(a, h)) ** 2
            cols += [r0[:, None] + teacher.noise_std ** 2, (fs[:, None] - soft_from(a, h, t)) ** 2 - r0[:, None]]
        return torch.cat(cols, 1)

    est = monte_carlo(terms, law, n, seed, method=method, progress=progress, desc="uniform gap")
    val, se = np.asarray(est.value).reshape(P, T + 1), np.asarray(est.stderr).reshape(P, T + 1)
    hard = Estimate(val[:, 0], se[:, 0], est.n, est.method, est.seed)
    gap = Estimate(val[:, 1:], se[:, 1:], est.n, est.method, est.seed)
    top = np.argmax(np.abs(gap.value), axis=0)
    sup = np.abs(gap.value)[top, np.arange(T)]
    sup_se = gap.stderr[top, np.arange(T)]
    fit = loglog_fit(t.numpy(), sup, sup_se)
    soft = hard.value[:, None] + gap.value
    i0, isoft = int(np.argmin(hard.value)), np.argmin(soft, axis=0)
    return GammaResult(t.numpy(), hard, gap, sup, sup_se, fit["slope"], fit["slope_stderr"], i0, isoft,
                       hard.value[isoft] - hard.value[i0],
                       np.array([space.distance(fam[i0], fam[j]) for j in isoft]))


def _cp_rows(land: Landscape) -> list[dict]:
    return [{"tau": land.tau, "point": i, "kind": cp.kind, "loss": cp.loss, "hard_loss": cp.hard_loss,
             "grad_norm": cp.grad_norm, "min_eigenvalue": cp.min_eigenvalue,
             "negative_eigenvalues": cp.negative, "teacher_equivalent": cp.teacher_equivalent,
             "expert_error": float(cp.recovery.expert_error.value),
             "misrouted_mass": float(cp.recovery.misrouted_mass.value), "dead_experts": cp.dead_experts,
             "starts": len(cp.starts)}
            for i, cp in enumerate(land.points)]


@contextlib.contextmanager
def _one_thread():
    """Run torch single-threaded inside the block (the thread count is restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@_one_thread()
def run_landscape(problem: str | Problem = "binary", *, taus=(0.2, 0.1, 0.05), samples: int = 1 << 13,
                  seed: int = 0, starts: int = 5, path_taus=(0.4, 0.2, 0.1, 0.05, 0.025),
                  path_samples: int | None = None, gamma_taus=(0.0025, 0.005, 0.01, 0.02, 0.04),
                  gamma_family: int = 24, gamma_radius: float = 0.3, gamma_samples: int | None = None,
                  progress: bool = False) -> Table:
    r"""Run one ready-made problem end to end and return the critical-point table with its extras.

    1. ``landscape``: critical points of :math:`L_\tau` for each τ of ``taus`` on one fixed sample of
       ``samples`` inputs, from ``starts`` random students (descent), the teacher-equivalent student and, if
       the problem has one, its known saddle (Newton).
    2. ``landscape_minima``: the minimiser followed over ``path_taus`` (sample of ``path_samples``, default
       ``4·samples``) with expert recovery error and misrouted mass; the log–log slope of the recovery
       error is in the meta.
    3. ``landscape_spectra``: every eigenvalue of every critical point (for the spectra figure).
       Γ-convergence of the minimisers (Theorem 4.7): their distance to the teacher-equivalent student
       (:math:`\arg\min L_0`) modulo relabelling and gauge, and their excess hard risk
       :math:`L_0(\theta_\tau) - \min L_0` (exact when the problem allows it).
    4. ``landscape_gamma``: :func:`uniform_gap` on a compact family: the teacher-equivalent student and a
       random box around it (``gamma_family``, ``gamma_radius``; ``gamma_samples`` draws, default
       ``16·samples``).

    It runs torch single-threaded (restored afterwards): the work is many small tensor operations, for
    which intra-op threads only add overhead — 45 s against 462 s for ``voronoi3`` with two threads on a
    loaded two-core machine. Results do not depend on the thread count.
    """
    if isinstance(problem, str) and problem not in PROBLEMS:
        fail("problem", "run_landscape", f"one of {sorted(PROBLEMS)} or a Problem", problem)
    prob = get_problem(problem) if isinstance(problem, str) else problem
    if not isinstance(prob, Problem):
        fail("problem", "run_landscape", "a problem name or a Problem", type(problem).__name__, TypeError)
    seed = resolve_seed(seed, "run_landscape")
    t0 = time.perf_counter()
    template = prob.teacher_student()
    samples = check_int(samples, "samples", "run_landscape", low=16)
    path_samples = 4 * samples if path_samples is None else path_samples
    gamma_samples = 16 * samples if gamma_samples is None else gamma_samples
    x = draw(prob.law, samples, seed)
    rows, spectra = [], []
    for tau in sorted(check_grid(taus, "taus", "run_landscape", low=0.0, low_open=True).tolist(), reverse=True):
        rand = [prob.student(seed=seed + 1 + s) for s in range(check_int(starts, "starts", "run_landscape", 0))]
        land = critical_points(template, prob.teacher, x, tau, [template] + rand, law=prob.law, progress=progress)
        if prob.saddle is not None:
            sad = critical_points(template, prob.teacher, x, tau, [prob.saddle()], law=prob.law, method="newton")
            for cp in sad.points:
                if all(land.space.distance(cp.params, q.params) > 1e-4 * (1 + float(torch.linalg.norm(q.params)))
                       for q in land.points):
                    land.points.append(cp)
            land.failed += sad.failed
            land.n_starts += sad.n_starts
        rows += _cp_rows(land)
        spectra += [{"tau": tau, "point": i, "kind": cp.kind, "teacher_equivalent": cp.teacher_equivalent,
                     "eigenvalue": float(e)} for i, cp in enumerate(land.points) for e in cp.eigenvalues]
    cols = list(rows[0]) if rows else ["tau", "point", "kind"]
    xp = draw(prob.law, check_int(path_samples, "path_samples", "run_landscape", low=16), seed)
    path = minima_path(template, prob.teacher, xp, path_taus, law=prob.law)
    space, exact = ParamSpace(template), supports_exact(template.router, prob.teacher, prob.law)
    prow = [{"tau": cp.tau, "loss": cp.loss, "hard_loss": cp.hard_loss, "grad_norm": cp.grad_norm, "kind": cp.kind,
             "teacher_equivalent": cp.teacher_equivalent, "expert_error": float(cp.recovery.expert_error.value),
             "misrouted_mass": float(cp.recovery.misrouted_mass.value), "min_eigenvalue": cp.min_eigenvalue,
             "distance_to_teacher": space.distance(cp.params, space.vector()),
             "excess_hard_risk": (float(hard_risk(space.load(cp.params), prob.teacher, prob.law, method="exact").value)
                                  if exact else cp.hard_loss) - prob.teacher.noise_std ** 2}
            for cp in path]
    rec_fit = loglog_fit([r["tau"] for r in prow], [r["expert_error"] for r in prow])
    fam = random_family(template, gamma_family, gamma_radius, seed)
    gamma = uniform_gap(template, prob.teacher, prob.law, fam, gamma_taus, n=gamma_samples, seed=seed,
                        progress=progress)
    meta = {"problem": prob.name, "description": prob.description, "seed": seed, "samples": samples,
            "path_samples": path_samples, "starts": starts, "parameters": ParamSpace(template).p,
            "recovery_slope": rec_fit["slope"], "recovery_slope_stderr": rec_fit["slope_stderr"],
            "gamma_alpha": gamma.alpha, "gamma_alpha_stderr": gamma.alpha_stderr, "alpha_predicted": 1.0,
            "seconds": time.perf_counter() - t0}
    table = Table("landscape", cols, rows, meta)
    table.extras["landscape_minima"] = Table("landscape_minima", list(prow[0]), prow,
                                             {"recovery_slope": rec_fit["slope"], "problem": prob.name})
    table.extras["landscape_spectra"] = Table("landscape_spectra", ["tau", "point", "kind", "teacher_equivalent",
                                                                    "eigenvalue"], spectra, {"problem": prob.name})
    table.extras["landscape_gamma"] = gamma.table()
    return table
