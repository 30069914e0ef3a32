r"""The soft-risk landscape of a teacher–student problem (paper §4.4, §5: Theorem 4.7, Theorem 5.17).

- :class:`~softhard.dynamics.params.ParamSpace`, :class:`~softhard.dynamics.params.Objective`: the flat parameter
  vector with its symmetries, and :math:`L_\tau` on a fixed sample (re-exported here).
- :func:`critical_points`: critical points from many starts (L-BFGS descent and/or a Levenberg–Marquardt
  Newton iteration on :math:`\nabla L_\tau = 0`), their Hessian spectra on the complement of the symmetry
  directions, the classification minimum / strict saddle / degenerate, grouping modulo relabelling and
  gauge, and whether each hard partition is teacher-equivalent (Theorem 5.17, Lemma 5.15); where the exact
  second variation exists, the profiled hard Hessian's smallest eigenvalue (Assumption 5.14), which confirms a
  hard saddle independently of the soft Hessian.
- :func:`minima_path`: the minimiser of :math:`L_\tau` followed as τ decreases, with its recovery error.
- :func:`transfer_modulus`: ω(τ) of Assumption 5.13, :math:`|\nabla L_\tau - \nabla L_0|` and
  :math:`\lVert\nabla^2 L_\tau - \nabla^2 L_0\rVert` at the critical points of the population :math:`L_\tau`
  followed as τ decreases, against the predicted rate τ.
- Γ-evidence (:mod:`softhard.dynamics.gamma`, re-exported): :func:`uniform_gap`, :func:`argmin_path`.
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
from ..closed.normal import gaussian_components, quadrature
from ..model.routers import LinearRouter, MLPRouter, UnitLinearRouter, effective_linear
from ..results.table import Table, loglog_fit
from .gamma import ArgminPath, GammaResult, argmin_path, random_family, uniform_gap
from .params import Objective, ParamSpace, space_of
from .shape import hard_derivatives, hard_risk, shape_hessian_matrix, supports_exact
from .teacher import PROBLEMS, PartitionTeacher, Problem, get_problem, recovery

__all__ = ["ParamSpace", "Objective", "hessian", "CriticalPoint", "Landscape", "critical_points", "minima_path",
           "random_family", "GammaResult", "uniform_gap", "ArgminPath", "argmin_path", "Transfer",
           "transfer_modulus", "profiled_min_eigenvalue", "run_landscape"]


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
    space = space_of(moe, "hessian")
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
    space = space_of(moe, where)
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
    space = space_of(moe, where)
    t = sorted(check_grid(taus, "taus", where, low=0.0, low_open=True).tolist(), reverse=True)
    tol, max_iter, newton_iter, equivalence_tol = _search_options(where, tol, max_iter, newton_iter, equivalence_tol)
    law = None if law is None else as_law(law, where, space.moe.d)
    v, out = space.vector(), []
    for tau in t:
        obj = Objective(space, teacher, sample, tau, where)
        v, gn = _newton(obj, _descend(obj, v, tol, max_iter), tol, newton_iter)
        out.append(_point(obj, space.canonical(v), gn, law, 1e-7, equivalence_tol))
    return out


def _router_null(router) -> np.ndarray:
    """Orthonormal basis ``(p_r, q)`` of a linear router's raw invariance directions: the logit gauge (the same
    vector added to every weight row, the same number to every bias) and, for a UnitLinearRouter, the scale of W."""
    W = router.weight.detach().to(DTYPE)
    K, d = W.shape
    cols = []
    for j in range(d):
        v = torch.zeros(K, d + 1, dtype=DTYPE)
        v[:, j] = 1.0
        cols.append(torch.cat([v[:, :d].reshape(-1), v[:, d]]))
    cols.append(torch.cat([torch.zeros(K * d, dtype=DTYPE), torch.ones(K, dtype=DTYPE)]))
    if isinstance(router, UnitLinearRouter):
        cols.append(torch.cat([W.reshape(-1), torch.zeros(K, dtype=DTYPE)]))
    Q, R = torch.linalg.qr(torch.stack(cols, 1))
    return Q[:, torch.abs(torch.diagonal(R)) > 1e-12].numpy()


def _reason(e: Exception) -> str:
    """A refusal's rule and value as one line: "needs <rule>; here <value>"."""
    rule, _, got = str(e).partition(" must be ")[2].partition(". Got ")
    return f"needs {rule}; here {got.rstrip('.')}" if rule else str(e)


def profiled_min_eigenvalue(moe: MoE, teacher, law) -> tuple[float | None, str]:
    r"""Smallest eigenvalue of the exact profiled hard Hessian :math:`\nabla^2_\varphi L_0^{prof}` at ``moe``'s router
    (Assumption 5.14, :func:`~softhard.dynamics.shape.shape_hessian_matrix` with ``profiled=True``) on the
    complement of the router's gauge and scale directions: negative at a hard saddle, found without the soft
    Hessian. ``(None, reason)`` where it does not exist (a kink, a degenerate junction, no exact method)."""
    if not supports_exact(moe.router, teacher, law):
        return None, "no exact second variation for this router, teacher and law"
    try:
        sv = shape_hessian_matrix(moe.router, teacher, law, profiled=True)
    except ValueError as e:
        return None, _reason(e)
    P = _router_null(moe.router)
    Q, _ = np.linalg.qr(np.concatenate([P, np.eye(len(P))], 1), mode="complete")
    return float(sv.eigenvalues(Q[:, P.shape[1]:])[0]), ""


def _plane_rule(law, student, teacher_line, tau: float, nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""A product Gauss–Legendre rule ``(x (N, 2), w (N,))`` for :math:`E[F(X)]`, X a Gaussian (mixture) on ℝ²,
    for integrands with a layer of width τ along the student line :math:`v\cdot x + c = 0` and a jump along the
    teacher line: in whitened coordinates :math:`(u_1, u_2)` with :math:`u_1` across the student line, the
    inner :math:`u_1` integral is split at the student line, at :math:`\pm 2^k` layer widths (k ≤ 7) and where the
    teacher line crosses, the outer :math:`u_2` integral at the crossing point of the two lines and
    :math:`\pm 2^k` layer widths around it; pieces of length ≤ 1 on [−4, 4] and ≤ 2 out to ±8 (the mass
    beyond is below 1e-14)."""
    (v, c), (vt, ct) = student, teacher_line
    xs, ws = [], []
    base = np.array([-8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0])
    layers = 2.0 ** np.arange(0, 8)
    for weight, comp in gaussian_components(law, "transfer_modulus"):
        mean, L = comp.mean.numpy(), comp.scale_tril.numpy()
        al, be = L.T @ v, float(v @ mean + c)
        n1 = al / np.linalg.norm(al)
        n2 = np.array([-n1[1], n1[0]])
        s0, tp = -be / np.linalg.norm(al), tau / np.linalg.norm(al)
        at, bt = L.T @ vt, float(vt @ mean + ct)
        a1, a2 = float(at @ n1), float(at @ n2)
        brk2 = list(base)
        if abs(a2) > 1e-12 * np.linalg.norm(at):
            u2x = -(bt + a1 * s0) / a2
            wid = tp * abs(a1 / a2) if abs(a1) > 0 else 0.0
            brk2 += [u2x] + ([u2x + sg * wid * k for sg in (-1, 1) for k in layers] if wid > 0 else [])
        u2, w2 = quadrature(-8.0, 8.0, brk2, nodes)
        brk1 = np.concatenate([base, [s0], s0 + tp * layers, s0 - tp * layers])
        for uu, ww in zip(u2, w2):
            extra = [-(a2 * uu + bt) / a1] if abs(a1) > 1e-12 * np.linalg.norm(at) else []
            u1, w1 = quadrature(-8.0, 8.0, np.concatenate([brk1, extra]), nodes)
            z = u1[:, None] * n1 + uu * n2
            xs.append(mean + z @ L.T)
            ws.append(weight * ww * w1 * np.exp(-0.5 * (u1 ** 2 + uu ** 2)) / (2 * math.pi))
    return torch.as_tensor(np.concatenate(xs), dtype=DTYPE), torch.as_tensor(np.concatenate(ws), dtype=DTYPE)


@dataclass(frozen=True)
class Transfer:
    r"""ω(τ) of Assumption 5.13 along a path of critical points of the population :math:`L_\tau`.

    Attributes:
        taus: ``(T,)`` decreasing; points: the critical points (canonical parameter vectors ``(T, p)``).
        omega_grad: :math:`|P(\nabla L_\tau - \nabla L_0)|` ``(T,)``; omega_hess: :math:`\lVert P(\nabla^2 L_\tau -
            \nabla^2 L_0)P\rVert_2` ``(T,)``, P the projection off the symmetry directions; NaN where
            :math:`L_0` has no second variation (``hard_note``).
        grad_norm: :math:`|\nabla L_\tau|` at the points (the continuation's residual).
        soft_min_eigenvalue, hard_min_eigenvalue: smallest eigenvalues of the projected soft and hard Hessians.
        quadrature_error: the change of :math:`(\nabla L_\tau, \nabla^2 L_\tau)` (max-abs) when the rule has 4 more
            nodes per piece, the accuracy of the soft side (NaN if not checked); nodes: the rule's size.
        rate_grad, rate_hess: log–log slopes of ω against τ (over the finite values); predicted: 1.
        hard_note: per τ, why :math:`L_0` has no second variation there ("" where it has).
    """

    taus: np.ndarray
    points: np.ndarray
    omega_grad: np.ndarray
    omega_hess: np.ndarray
    grad_norm: np.ndarray
    soft_min_eigenvalue: np.ndarray
    hard_min_eigenvalue: np.ndarray
    quadrature_error: np.ndarray
    nodes: int
    rate_grad: float
    rate_hess: float
    hard_note: tuple[str, ...]
    predicted: float = 1.0

    def table(self, name: str = "landscape_transfer") -> Table:
        rows = [{"tau": float(t), "omega_grad": float(g), "omega_hess": float(h), "grad_norm": float(gn),
                 "soft_min_eigenvalue": float(se), "hard_min_eigenvalue": float(he), "quadrature_error": float(q),
                 "hard_note": note}
                for t, g, h, gn, se, he, q, note in zip(self.taus, self.omega_grad, self.omega_hess, self.grad_norm,
                                                        self.soft_min_eigenvalue, self.hard_min_eigenvalue,
                                                        self.quadrature_error, self.hard_note)]
        return Table(name, list(rows[0]), rows, {"rate_grad": self.rate_grad, "rate_hess": self.rate_hess,
                                                 "predicted_rate": self.predicted, "nodes": self.nodes})


def transfer_modulus(moe: MoE, teacher, law, taus, *, follow: str = "saddle", nodes: int = 6, tol: float = 1e-10,
                     newton_iter: int = 40, rounds: int = 6, check: bool = True) -> Transfer:
    r"""ω(τ) of Assumption 5.13 [recon]: the soft-to-hard transfer of gradient and Hessian at critical points.

    .. math:: \omega_1(\tau) = |\nabla L_\tau(\theta_\tau) - \nabla L_0(\theta_\tau)|, \qquad
              \omega_2(\tau) = \lVert\nabla^2 L_\tau(\theta_\tau) - \nabla^2 L_0(\theta_\tau)\rVert_2

    at the critical point :math:`\theta_\tau` of the population :math:`L_\tau` followed from ``moe`` as τ decreases
    (``follow="saddle"``: Newton only, so a saddle stays a saddle; ``"minimum"``: descent first, as
    :func:`minima_path`), both projected off the symmetry directions. The soft side is the population risk by a
    product Gauss–Legendre rule adapted to the student's layer and the teacher's jump (its accuracy is
    reported), the hard side exact (:func:`~softhard.dynamics.shape.hard_derivatives`). Where the interfaces are
    transverse, :math:`L_\tau = L_0 + \tau G_1 + O(\tau^2)` with smooth :math:`G_1`, so ω = O(τ): the fitted rates
    are checked against 1. At a teacher-equivalent minimum of a realizable teacher :math:`L_0` has a kink (its
    one-sided slopes do not vanish), so Assumption 5.13 cannot hold there: ω is NaN where the exact second
    variation is refused, and does not go to 0 where the interface is only near the teacher's.

    Exact-enough for a binary student with a linear (or unit-linear) router and affine experts, a binary linear
    teacher and a Gaussian (mixture) law on ℝ² (the binary problem); other models are refused.

    Args:
        moe: the start (e.g. ``binary_problem().saddle()``); teacher, law: the problem; taus: ``(T,)`` (>= 3).
        follow: ``"saddle"`` or ``"minimum"``; nodes: Gauss–Legendre nodes per piece; tol, newton_iter: the
            continuation; rounds: rule rebuilds per τ (the rule follows the moving interface); check: measure the
            rule's accuracy with 4 more nodes per piece (``quadrature_error``; NaN when off).
    """
    where = "transfer_modulus"
    space = space_of(moe, where)
    teacher = as_teacher(teacher, space.moe, where)
    law = as_law(law, where, space.moe.d)
    t = np.sort(check_grid(taus, "taus", where, low=0.0, low_open=True).numpy())[::-1].copy()
    if len(set(t.tolist())) < 3:
        fail("taus", where, "at least 3 distinct temperatures for the rate fit", t)
    if not isinstance(follow, str) or follow not in ("saddle", "minimum"):
        fail("follow", where, "one of 'saddle', 'minimum'", follow)
    nodes, newton_iter, rounds = (check_int(nodes, "nodes", where, low=2), check_int(newton_iter, "newton_iter", where),
                                  check_int(rounds, "rounds", where))
    tol = check_float(tol, "tol", where, 0.0, math.inf)
    tl = effective_linear(teacher.moe.router) if isinstance(teacher, PartitionTeacher) else None
    if (space.moe.d != 2 or space.K != 2 or tl is None or teacher.num_cells != 2
            or not supports_exact(space.moe.router, teacher, law)):
        fail("moe", where, "a binary student with a linear or unit-linear router and LinearExperts, with a binary "
             "linear teacher and a Gaussian (mixture) law on R^2", f"K = {space.K}, d = {space.moe.d}", TypeError)
    vt = (tl[0][0] - tl[0][1]).detach().numpy()
    ct = float(tl[1][0] - tl[1][1])

    def rule(vec, tau, m):
        W, b = (t.detach() for t in effective_linear(space.load(vec).router))
        return _plane_rule(law, ((W[0] - W[1]).numpy(), float(b[0] - b[1])), (vt, ct), tau, m)

    v = space.vector()
    cols = {k: [] for k in ("points", "og", "oh", "gn", "se", "he", "qe", "note")}
    n_nodes = 0
    for tau in t:
        for _ in range(rounds):
            x, w = rule(v, tau, nodes)
            obj = Objective(space, teacher, x, tau, where, weights=w)
            start = _descend(obj, v, tol, 500) if follow == "minimum" else v
            nv, gn = _newton(obj, start, tol, newton_iter)
            nv = space.canonical(nv)
            moved = float(torch.linalg.norm(nv - space.canonical(v)))
            v = nv
            if moved <= 1e-6 * tau * (1 + float(torch.linalg.norm(v))):  # the rule was built at (almost) v
                break
        n_nodes = len(w)
        gs, Hs = obj.grad(v).numpy(), obj.hessian(v).numpy()
        qe = math.nan
        if check:
            x2, w2 = rule(v, tau, nodes + 4)
            obj2 = Objective(space, teacher, x2, tau, where, weights=w2)
            qe = max(float(np.abs(obj2.grad(v).numpy() - gs).max()),
                     float(np.abs(obj2.hessian(v).numpy() - Hs).max()))
        B = space.complement(v).numpy()
        cols["points"].append(v.numpy())
        cols["gn"].append(float(np.linalg.norm(gs)))
        cols["se"].append(float(np.linalg.eigvalsh(B.T @ Hs @ B)[0]))
        cols["qe"].append(qe)
        try:
            gh, Hh = hard_derivatives(space.load(v), teacher, law)
            cols["og"].append(float(np.linalg.norm(B.T @ (gs - gh))))
            cols["oh"].append(float(np.linalg.norm(B.T @ (Hs - Hh) @ B, 2)))
            cols["he"].append(float(np.linalg.eigvalsh(B.T @ Hh @ B)[0]))
            cols["note"].append("")
        except ValueError as e:
            cols["og"].append(math.nan)
            cols["oh"].append(math.nan)
            cols["he"].append(math.nan)
            cols["note"].append(_reason(e))
    og, oh = np.array(cols["og"]), np.array(cols["oh"])

    def rate(y):
        ok = np.isfinite(y) & (y > 0)
        return loglog_fit(t[ok], y[ok])["slope"] if ok.sum() >= 3 else math.nan

    return Transfer(t, np.stack(cols["points"]), og, oh, np.array(cols["gn"]), np.array(cols["se"]),
                    np.array(cols["he"]), np.array(cols["qe"]), n_nodes, rate(og), rate(oh), tuple(cols["note"]))


def _cp_rows(land: Landscape, teacher, law) -> list[dict]:
    rows = []
    for i, cp in enumerate(land.points):
        hard, note = (None, "teacher-equivalent: L_0 has a kink at the teacher partition, so its second variation "
                      "at a point next to it says nothing") if cp.teacher_equivalent else \
            profiled_min_eigenvalue(land.moe(i), teacher, law)
        rows.append({"tau": land.tau, "point": i, "kind": cp.kind, "loss": cp.loss, "hard_loss": cp.hard_loss,
                     "grad_norm": cp.grad_norm, "min_eigenvalue": cp.min_eigenvalue,
                     "negative_eigenvalues": cp.negative, "teacher_equivalent": cp.teacher_equivalent,
                     "expert_error": float(cp.recovery.expert_error.value),
                     "misrouted_mass": float(cp.recovery.misrouted_mass.value), "dead_experts": cp.dead_experts,
                     "starts": len(cp.starts), "hard_profiled_min_eigenvalue": hard, "hard_note": note})
    return rows


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
       ``16·samples``, in 16 replicate groups for the exponent's error; the exact exponent where it exists).
    5. ``landscape_argmin`` (binary problem: exact risks): :func:`argmin_path` on the segment from the
       teacher-equivalent student (t = 0, argmin L₀) through the minimiser of the largest path τ (t = 1),
       t ∈ [−0.5, 1.5], over ``path_taus``; its verdict is in the meta.

    Critical points carry ``hard_profiled_min_eigenvalue`` (:func:`profiled_min_eigenvalue`: exact, where the
    second variation exists; a hard saddle confirmed without the soft Hessian) or ``hard_note`` (why not).

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
        rows += _cp_rows(land, prob.teacher, prob.law)
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
    argmin, argmin_note = None, ""
    try:
        argmin = argmin_path(template, prob.teacher, prob.law, space.load(path[0].params), path_taus, span=(-0.5, 1.5))
    except TypeError as e:  # no exact risks for this problem
        argmin_note = "not run: " + str(e).split(". Got ")[0].split(" must be ")[-1]
    meta = {"problem": prob.name, "description": prob.description, "seed": seed, "samples": samples,
            "path_samples": path_samples, "starts": starts, "parameters": ParamSpace(template).p,
            "recovery_slope": rec_fit["slope"], "recovery_slope_stderr": rec_fit["slope_stderr"],
            "gamma_alpha": gamma.alpha, "gamma_alpha_stderr": gamma.alpha_stderr, "alpha_predicted": 1.0,
            "gamma_alpha_exact": gamma.alpha_exact, "gamma_alpha_z": gamma.alpha_z,
            "argmin_rate": None if argmin is None else argmin.rate,
            "argmin_converges": None if argmin is None else argmin.converges, "argmin_note": argmin_note,
            "seconds": time.perf_counter() - t0}
    table = Table("landscape", cols, rows, meta)
    table.extras["landscape_minima"] = Table("landscape_minima", list(prow[0]), prow,
                                             {"recovery_slope": rec_fit["slope"], "problem": prob.name})
    table.extras["landscape_spectra"] = Table("landscape_spectra", ["tau", "point", "kind", "teacher_equivalent",
                                                                    "eigenvalue"], spectra, {"problem": prob.name})
    table.extras["landscape_gamma"] = gamma.table()
    if argmin is not None:
        table.extras["landscape_argmin"] = argmin.table()
    return table
