r"""Teacher–student problems (paper §5): partition teachers, students, risk decomposition, recovery.

- A **partition teacher** (5.1)–(5.2) has cells :math:`\Omega_k = \{x : k(x) = k\}` given by the hard
  winner of a partition router (linear, Voronoi, or the router of a hard-routed MoE) and per-cell experts
  :math:`h^*_k`; :math:`Y = h^*_{k(X)}(X) + \xi`.
- A **student** is an :class:`~softhard.model.moe.MoE` with linear or MLP experts and a linear, unit-scale linear or
  MLP router (:func:`make_student`).
- :func:`risk_decomposition` splits the excess soft risk into the ambiguity region and the interior
  (Lemma 5.5) and evaluates the per-cell interior bound of Prop. 5.8; :func:`recovery` gives the expert
  recovery error and the misrouted mass under the best matching of student experts to teacher cells
  (Hungarian assignment, Assumption 5.11).
- Ready-made problems: :func:`binary_problem` and :func:`voronoi3_problem` (:data:`PROBLEMS`).

Shapes: inputs ``x (N, d)``; logits and expert outputs ``(N, K)``; signals ``(N,)``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .._validate import DTYPE, as_tensor, check_float, check_inputs, check_int, check_seed, check_seed_value, fail
from ..closed.moments import SpanError, region_moments
from ..closed.normal import gaussian_components
from ..estimators.reducer import Estimate, draw, mean_estimate, monte_carlo
from ..model.experts import LinearExperts, MLPExperts
from ..model.laws import Gaussian, Law, as_law
from ..model.moe import HardTeacher, MoE, soft_from
from ..model.routers import LinearRouter, MLPRouter, UnitLinearRouter, effective_linear
from .shape import exact_cell_moments, profiled_hard_risk, shape_gradient

__all__ = ["UnitLinearRouter", "PartitionTeacher", "make_student", "Problem", "binary_problem", "voronoi3_problem",
           "PROBLEMS", "get_problem", "Recovery", "recovery", "Decomposition", "risk_decomposition", "Matching",
           "admissible_matching", "Misrouting", "misrouting_bound"]

EPS_2TAU = 1.0 / (1.0 + math.e ** 2)  # the tolerance ε whose width w_{τ,ε} is 2τ (2.15)


class PartitionTeacher(HardTeacher):
    r"""Teacher (5.1)–(5.2): :math:`f^*(x) = h^*_{k(x)}(x)`, :math:`Y = f^*(X) + \xi`, :math:`\xi\sim N(0,\sigma^2)`.

    The cells :math:`\Omega_k = \{x : k(x) = k\}` are those of the hard winner (2.9) of ``moe.router``
    (lowest index on ties) and :math:`h^*_k` are ``moe.experts``.  Build it with :meth:`linear`,
    :meth:`voronoi` or from any hard-routed MoE.

    Args:
        moe: the hard-routed MoE whose partition and experts define the teacher.
        noise_std: σ ≥ 0.
    """

    @classmethod
    def linear(cls, weight, bias, experts, noise_std: float = 0.0) -> "PartitionTeacher":
        r"""Linear partition :math:`\Omega_k = \{k = \min\arg\max_j (w_j\cdot x + b_j)\}`; ``weight (K, d)``,
        ``bias (K,)``; ``experts`` any Experts with K outputs."""
        return cls(MoE(LinearRouter(weight, bias), experts), noise_std)

    @classmethod
    def voronoi(cls, centers, experts, noise_std: float = 0.0) -> "PartitionTeacher":
        r"""Voronoi partition of ``centers (K, d)``: :math:`\Omega_k = \{k = \arg\min_j |x - c_j|\}`, i.e. the
        linear partition with :math:`w_j = c_j`, :math:`b_j = -|c_j|^2/2`."""
        C = as_tensor(centers, "centers", "PartitionTeacher.voronoi")
        if C.ndim != 2 or C.shape[0] < 2:
            fail("centers", "PartitionTeacher.voronoi", "an array of shape (K, d) with K >= 2",
                 f"shape {tuple(C.shape)}")
        return cls.linear(C, -0.5 * (C * C).sum(1), experts, noise_std)

    @property
    def num_cells(self) -> int:
        return self.moe.num_experts

    @property
    def d(self) -> int:
        return self.moe.d

    def cell(self, x) -> torch.Tensor:
        """Teacher cell :math:`k(x)` of each input, shape ``(N,)``, int64."""
        return torch.argmax(self.moe.logits(x), dim=-1)

    def cell_experts(self, x) -> torch.Tensor:
        r"""All teacher experts :math:`h^*_k(x)`, shape ``(N, K)``."""
        return self.moe.expert_outputs(x)


def make_student(d: int, num_experts: int, *, router: str = "unit", experts: str = "linear", hidden: int = 16,
                 scale: float = 1.0, init_scale: float = 1.0, seed: int = 0) -> MoE:
    r"""A trainable student MoE with random (seeded) initial parameters.

    Args:
        d, num_experts: input dimension and number of experts K.
        router: ``"unit"`` (:class:`UnitLinearRouter` of score scale ``scale``), ``"linear"``
            (:class:`~softhard.model.routers.LinearRouter`) or ``"mlp"`` (:class:`~softhard.model.routers.MLPRouter`).
        experts: ``"linear"`` (affine :class:`~softhard.model.experts.LinearExperts`) or ``"mlp"``.
        hidden: hidden width of MLP routers/experts.
        init_scale: standard deviation of the linear weights (biases get half of it).
        seed: seed of the initial parameters.
    """
    where = "make_student"
    d = check_int(d, "d", where)
    K = check_int(num_experts, "num_experts", where, low=2)
    seed = check_seed_value(seed, where)
    s = check_float(init_scale, "init_scale", where, 0.0, math.inf)
    hidden = check_int(hidden, "hidden", where)
    scale = check_float(scale, "scale", where, 0.0, math.inf)
    kinds = {"router": ("unit", "linear", "mlp"), "experts": ("linear", "mlp")}
    for param, value in (("router", router), ("experts", experts)):
        if not isinstance(value, str) or value not in kinds[param]:
            fail(param, where, f"one of {list(kinds[param])}", value)
    g = torch.Generator().manual_seed(seed)
    W, b = s * torch.randn(K, d, generator=g, dtype=DTYPE), 0.5 * s * torch.randn(K, generator=g, dtype=DTYPE)
    E, c = s * torch.randn(K, d, generator=g, dtype=DTYPE), 0.5 * s * torch.randn(K, generator=g, dtype=DTYPE)
    spread = float(torch.linalg.norm(W - W.mean(0)))
    if not all(bool(torch.isfinite(t).all()) for t in (W, b, E, c)) or not 0 < spread < math.inf:
        fail("init_scale", where, "a scale at which the random initial weights are finite and not all equal", s)
    routers = {"unit": lambda: UnitLinearRouter(W, b, scale=scale),
               "linear": lambda: LinearRouter(W, b, trainable=True),
               "mlp": lambda: MLPRouter(d, K, (hidden,), seed=seed)}
    expert_kinds = {"linear": lambda: LinearExperts(E, c, trainable=True),
                    "mlp": lambda: MLPExperts(d, K, hidden, seed=seed)}
    return MoE(routers[router](), expert_kinds[experts]())


@dataclass(frozen=True)
class Problem:
    r"""A ready-made teacher–student problem.

    Attributes:
        name: short name ("binary", "voronoi3").
        law: input law μ.
        teacher: the :class:`PartitionTeacher`.
        num_experts: K of the student (= number of teacher cells).
        description: one line for tables and figures.
        saddle: optional factory of a known non-teacher-equivalent critical point (an MoE close to it).
    """

    name: str
    law: Law
    teacher: PartitionTeacher
    num_experts: int
    description: str
    saddle: Callable[[], MoE] | None = field(default=None, repr=False)

    @property
    def d(self) -> int:
        return self.law.d

    def student(self, seed: int = 0, **kw) -> MoE:
        """A fresh random student (:func:`make_student` with this problem's ``d`` and K)."""
        return make_student(self.d, self.num_experts, seed=seed, **kw)

    def teacher_student(self, scale: float = 1.0) -> MoE:
        r"""The student (unit-scale linear router, affine experts) whose hard model *is* the teacher.

        The router logits are a positive multiple of the teacher's, :math:`\lambda(W^*x + b^*)`, with λ
        fixed by the unit score scale; the experts are the teacher's.
        """
        tr, te = self.teacher.moe.router, self.teacher.moe.experts
        if not isinstance(tr, LinearRouter) or not isinstance(te, LinearExperts):
            fail("teacher", "Problem.teacher_student", "a linear partition with linear experts", type(tr).__name__)
        K = tr.num_experts
        Wc = tr.weight - tr.weight.mean(0)
        lam = scale * math.sqrt((K - 1) / 2) / float(torch.linalg.norm(Wc))
        return MoE(UnitLinearRouter(tr.weight, lam * tr.bias, scale=scale),
                   LinearExperts(te.weight, te.bias, trainable=True))


def binary_problem(noise_std: float = 0.0) -> Problem:
    r"""The binary Gaussian teacher: :math:`X \sim N(0, I_2)`, cells :math:`\{x_1 > 0\}`, :math:`\{x_1 \le 0\}`,
    experts :math:`h^*_{1,2}(x) = \pm(x_1 + x_2 + 1)`, i.e. :math:`f^*(x) = \mathrm{sign}(x_1)(x_1 + x_2 + 1)`.

    Its profiled hard risk over the student interface :math:`\{\cos\varphi\,x_1 + \sin\varphi\,x_2 + b = 0\}` has
    the teacher as only minimum (up to relabelling) and one saddle, the mountain pass between the
    teacher and its relabelled copy. ``problem.saddle()`` locates it exactly — the root of the shape gradient
    (Prop. 5.10, :func:`softhard.dynamics.shape.shape_gradient`) in :math:`(\varphi, b)`, from the maximiser of the
    profile along b = 0 (φ ≈ 2.16) — and returns the student with that interface and the profiled experts:
    at small τ a critical point of :math:`L_\tau` lies next to it, a strict saddle.
    """
    noise_std = check_float(noise_std, "noise_std", "binary_problem", 0.0, math.inf, low_open=False)
    teacher = PartitionTeacher(MoE(LinearRouter.binary(torch.tensor([1.0, 0.0], dtype=DTYPE)),
                                   LinearExperts([[1.0, 1.0], [-1.0, -1.0]], [1.0, -1.0])), noise_std)
    law = Gaussian.standard(2)

    def saddle() -> MoE:
        from scipy.optimize import root

        def router(z):
            v = torch.tensor([math.cos(z[0]), math.sin(z[0])], dtype=DTYPE)
            return LinearRouter.binary(v, float(z[1])), v

        def grad(z):  # dL/dφ and dL/db through W = [v/2, -v/2], b = [b/2, -b/2]
            r, _ = router(z)
            g = shape_gradient(r, teacher, law)
            dv = np.array([-math.sin(z[0]), math.cos(z[0])])
            gw, gb = g["weight"].value, g["bias"].value
            return [(gw[0] - gw[1]) @ dv / 2, (gb[0] - gb[1]) / 2]

        z = root(grad, [2.16, 0.0], tol=1e-12).x
        r, v = router(z)
        prof = profiled_hard_risk(r, teacher, law)
        return MoE(UnitLinearRouter(torch.stack([v / 2, -v / 2]), [z[1] / 2, -z[1] / 2]),
                   LinearExperts(prof.experts.weight, prof.experts.bias, trainable=True))

    return Problem("binary", law, teacher, 2, "X ~ N(0, I_2); cells x_1 > 0 / x_1 <= 0; experts ±(x_1 + x_2 + 1)",
                   saddle)


def voronoi3_problem(noise_std: float = 0.0) -> Problem:
    r"""A K = 3 Voronoi teacher in d = 2 under a correlated Gaussian law.

    Centres :math:`c_k = u_k + (0.25, -0.15)`, :math:`u_k = (\cos\vartheta_k, \sin\vartheta_k)`,
    :math:`\vartheta_k = \pi/2 + 2\pi k/3` (the triple junction sits off the mean); radial experts
    :math:`h^*_k(x) = 1.5\,u_k\cdot x + \beta_k`, :math:`\beta = (0.5, -0.5, 0)`, so the jump of :math:`f^*` is
    constant along each interface; :math:`X \sim N(0, S)`, :math:`S = [[1, 0.3], [0.3, 0.8]]`.
    """
    noise_std = check_float(noise_std, "noise_std", "voronoi3_problem", 0.0, math.inf, low_open=False)
    th = math.pi / 2 + 2 * math.pi * torch.arange(3, dtype=DTYPE) / 3
    u = torch.stack([torch.cos(th), torch.sin(th)], 1)
    teacher = PartitionTeacher.voronoi(u + torch.tensor([0.25, -0.15], dtype=DTYPE),
                                       LinearExperts(1.5 * u, [0.5, -0.5, 0.0]), noise_std)
    law = Gaussian(torch.zeros(2, dtype=DTYPE), [[1.0, 0.3], [0.3, 0.8]])
    return Problem("voronoi3", law, teacher, 3, "X ~ N(0, S); Voronoi cells of 3 centres; radial linear experts")


PROBLEMS: dict[str, Callable[[], Problem]] = {"binary": binary_problem, "voronoi3": voronoi3_problem}


def get_problem(name: str) -> Problem:
    """The ready-made problem ``name`` (one of :data:`PROBLEMS`)."""
    if not isinstance(name, str) or name not in PROBLEMS:
        fail("name", "get_problem", f"one of {sorted(PROBLEMS)}", name)
    return PROBLEMS[name]()


def _check_pair(student, teacher, where: str) -> tuple[MoE, PartitionTeacher]:
    if not isinstance(student, MoE):
        fail("student", where, "a softhard MoE", type(student).__name__, TypeError)
    if not isinstance(teacher, PartitionTeacher):
        fail("teacher", where, "a PartitionTeacher (a teacher with cells)", type(teacher).__name__, TypeError)
    if student.num_experts < teacher.num_cells:
        fail("student", where, f"an MoE with at least {teacher.num_cells} experts (one per teacher cell)",
             student.num_experts)
    if student.d is not None and teacher.d is not None and student.d != teacher.d:
        fail("teacher", where, f"a teacher on R^{student.d} like the student", f"a teacher on R^{teacher.d}")
    return student, teacher


def _law_or_sample(law, sample, n, seed, d, where: str):
    """``(law, sample)`` checked for ``where``: a fixed sample ``(N, d)`` (float64), or a law on ℝ^d with
    ``n`` draws from ``seed``."""
    check_int(n, "n", where)
    check_seed(seed, where)
    if sample is not None:
        return (None if law is None else as_law(law, where, d)), check_inputs(sample, d, where, "sample").to(DTYPE)
    return as_law(law, where, d), None


def _reduce(terms, law, n, seed, sample, progress: bool = False) -> Estimate:
    """The one reducer: over ``sample`` if given (fixed sample), else streaming over ``(law, n, seed)``."""
    if sample is not None:
        with torch.no_grad():
            return mean_estimate(terms(sample))
    return monte_carlo(terms, law, n, seed, progress=progress)


@dataclass(frozen=True)
class Recovery:
    r"""Teacher recovery modulo relabelling (Assumption 5.11, Theorem 5.17).

    Attributes:
        matching: :math:`\sigma(k)`, the student expert matched to teacher cell k, length ``K_T``.
        expert_error: :math:`\sum_k E[(h_{\sigma(k)} - h^*_k)^2 1_{\Omega_k}]`.
        misrouted_mass: :math:`\mu(k^*(X) \ne \sigma(k(X)))`, hard routing against the matched cells.
        cost: the assignment cost :math:`C_{kl} = E[(h_l - h^*_k)^2 1_{\Omega_k}]`, shape ``(K_T, K_S)``.
    """

    matching: tuple[int, ...]
    expert_error: Estimate
    misrouted_mass: Estimate
    cost: Estimate


def recovery(student, teacher, law=None, *, sample=None, n: int = 1 << 16, seed=0, method: str = "mc") -> Recovery:
    r"""Expert recovery error and misrouted mass under the best matching (Hungarian assignment).

    .. math:: \sigma = \arg\min_\sigma \sum_k C_{k\sigma(k)},\quad C_{kl} = E[(h_l - h^*_k)^2 1_{\Omega_k}];
              \quad \text{misrouted mass} = \mu\big(k^*(X) \ne \sigma(k(X))\big)

    (paper §5, Assumption 5.11). ``scipy.optimize.linear_sum_assignment`` on the estimated :math:`C`.

    Args:
        student: the student MoE (``K_S >= K_T`` experts).
        teacher: a :class:`PartitionTeacher` with ``K_T`` cells.
        law: input law (for ``method="mc"`` without ``sample``, and for ``"exact"``).
        sample: a fixed sample ``(N, d)`` to average over instead of drawing ``(law, n, seed)``.
        method: ``"mc"`` or ``"exact"`` (linear or unit-linear student router, affine student experts, a
            linear teacher partition with affine experts, a Gaussian or Gaussian-mixture law; computed from
            exact Gaussian moments over the cells, see :mod:`softhard.dynamics.shape`).
    """
    student, teacher = _check_pair(student, teacher, "recovery")
    if not isinstance(method, str) or method not in ("mc", "exact"):
        fail("method", "recovery", "one of 'mc', 'exact'", method)
    if method == "exact":
        M = exact_cell_moments(student.router, teacher, as_law(law, "recovery"), "recovery")  # (K_S, K_T, d+1, d+1)
        theta = _affine(student.experts, "recovery")
        theta_t = _affine(teacher.moe.experts, "recovery")
        MT = M.sum(0)
        diff = theta[None, :, :] - theta_t[:, None, :]  # (K_T, K_S, d+1)
        C = np.einsum("kla,kab,klb->kl", diff, MT, diff)
        sigma = tuple(int(s) for s in linear_sum_assignment(C)[1])
        mass = M[..., -1, -1]  # (K_S, K_T)
        exact = lambda v: Estimate(float(v), 0.0, 0, "exact")  # noqa: E731
        return Recovery(sigma, exact(sum(C[k, s] for k, s in enumerate(sigma))),
                        exact(1.0 - sum(mass[s, k] for k, s in enumerate(sigma))),
                        Estimate(C, np.zeros_like(C), 0, "exact"))
    law, sample = _law_or_sample(law, sample, n, seed, teacher.d, "recovery")
    KT, KS = teacher.num_cells, student.num_experts

    def cost_terms(x):
        cell, fs, h = teacher.cell(x), teacher.signal(x), student.expert_outputs(x)
        onehot = torch.nn.functional.one_hot(cell, KT).to(h.dtype)
        return (onehot[:, :, None] * (h[:, None, :] - fs[:, None, None]) ** 2).reshape(len(x), KT * KS)

    cost = _reduce(cost_terms, law, n, seed, sample)
    C = np.asarray(cost.value).reshape(KT, KS)
    sigma_t = torch.as_tensor(linear_sum_assignment(C)[1], dtype=torch.long)

    def terms(x):
        cell, fs = teacher.cell(x), teacher.signal(x)
        h, a = student.expert_outputs(x), student.logits(x)
        matched = sigma_t[cell]
        err = (h.gather(1, matched[:, None])[:, 0] - fs) ** 2
        return torch.stack([err, (torch.argmax(a, -1) != matched).to(err.dtype)], 1)

    est = _reduce(terms, law, n, seed, sample)
    cost_est = Estimate(C, np.asarray(cost.stderr).reshape(KT, KS), cost.n, cost.method, cost.seed)
    return Recovery(tuple(int(s) for s in sigma_t), est[0], est[1], cost_est)


def _affine(experts, where: str) -> np.ndarray:
    """``[w_k, c_k]`` rows of affine experts, shape ``(K, d+1)``."""
    if not isinstance(experts, LinearExperts):
        fail("experts", where, "LinearExperts for the exact method", type(experts).__name__, TypeError)
    return torch.cat([experts.weight, experts.bias[:, None]], 1).detach().to(torch.float64).numpy()


@dataclass(frozen=True)
class Decomposition:
    r"""Lemma 5.5 / Prop. 5.8 decomposition of the excess soft risk :math:`E[(f^* - f_\tau)^2] = L_\tau - E\xi^2`.

    Attributes (all :class:`~softhard.estimators.reducer.Estimate` from one sample):
        total: :math:`E[(f^*-f_\tau)^2]`; ambiguity: its part on :math:`A_{\tau,\varepsilon}` (5.4);
        interior: its part on :math:`A^c` (total = ambiguity + interior on the same sample);
        ambiguity_mass: :math:`m_\varepsilon(\tau)` (5.5);
        cell_interior: :math:`E[(f^*-f_\tau)^2 1_{G_k}]` on
        :math:`G_k = \Omega_k\cap\{\pi_{\sigma(k)}\ge 1-\varepsilon\}`, ``(K_T,)``;
        cell_expert: :math:`E[(h^*_k - h_{\sigma(k)})^2 1_{G_k}]`, ``(K_T,)``;
        cell_bound: :math:`E[(2(h^*_k-h_{\sigma(k)})^2 + 2\varepsilon^2\max_l(h_l-h_{\sigma(k)})^2) 1_{G_k}]`,
        ``(K_T,)``,
        the pointwise form of Prop. 5.8 (with :math:`\max_l|h_l - h_k| \le 2B` it gives
        :math:`2E[(h^*_k-h_k)^2 1_{G_k}] + 8B^2\varepsilon^2\mu(G_k)`);
        cell_mass: :math:`\mu(G_k)`, ``(K_T,)``; recovery: the matching σ and recovery errors.
    """

    tau: float
    eps: float
    total: Estimate
    ambiguity: Estimate
    interior: Estimate
    ambiguity_mass: Estimate
    cell_interior: Estimate
    cell_expert: Estimate
    cell_bound: Estimate
    cell_mass: Estimate
    recovery: Recovery


def risk_decomposition(student, teacher, law=None, tau: float = 0.1, *, eps: float = EPS_2TAU, sample=None,
                       n: int = 1 << 16, seed=0, progress: bool = False) -> Decomposition:
    r"""Ambiguity/interior decomposition of the excess soft risk (Lemma 5.5) and the interior bound (Prop. 5.8).

    .. math:: L_\tau - E[\xi^2] = E[(f^*-f_\tau)^2 1_{A_{\tau,\varepsilon}}]
              + E[(f^*-f_\tau)^2 1_{A^c_{\tau,\varepsilon}}],
              \quad A_{\tau,\varepsilon} = \{\max_k \pi^\tau_k < 1-\varepsilon\}

    and, on :math:`G_k = \Omega_k \cap \{\pi^\tau_{\sigma(k)} \ge 1-\varepsilon\}`,
    :math:`|f_\tau - h_{\sigma(k)}| \le \varepsilon \max_l |h_l - h_{\sigma(k)}|`, hence
    :math:`E[(f^*-f_\tau)^2 1_{G_k}] \le
    E[(2(h^*_k-h_{\sigma(k)})^2 + 2\varepsilon^2\max_l(h_l-h_{\sigma(k)})^2)1_{G_k}]`.
    σ is the matching of :func:`recovery`. The default ε makes the ambiguity width
    :math:`w_{\tau,\varepsilon} = 2\tau`.

    Args:
        student, teacher, law: as in :func:`recovery`; tau: τ > 0; eps: ε ∈ (0, 1/2).
        sample: a fixed sample ``(N, d)`` instead of ``(law, n, seed)``.
    """
    student, teacher = _check_pair(student, teacher, "risk_decomposition")
    t = check_float(tau, "tau", "risk_decomposition", 0.0, math.inf)
    e = check_float(eps, "eps", "risk_decomposition", 0.0, 0.5)
    law, sample = _law_or_sample(law, sample, n, seed, teacher.d, "risk_decomposition")
    rec = recovery(student, teacher, law, sample=sample, n=n, seed=seed)
    KT = teacher.num_cells
    sigma_t = torch.as_tensor(rec.matching, dtype=torch.long)

    def terms(x):
        cell, fs = teacher.cell(x), teacher.signal(x)
        a, h = student.logits(x), student.expert_outputs(x)
        f = soft_from(a, h, torch.tensor([t], dtype=DTYPE), scalar=True)
        pi = torch.softmax((a - a.max(-1, keepdim=True).values) / t, -1)
        r2 = (fs - f) ** 2
        amb = (pi.max(-1).values < 1 - e).to(r2.dtype)
        matched = sigma_t[cell]
        hm = h.gather(1, matched[:, None])[:, 0]
        G = (pi.gather(1, matched[:, None])[:, 0] >= 1 - e).to(r2.dtype)
        onehot = torch.nn.functional.one_hot(cell, KT).to(r2.dtype) * G[:, None]  # 1_{G_k}, (N, K_T)
        err = (fs - hm) ** 2
        spread = ((h - hm[:, None]) ** 2).max(-1).values
        cols = [r2[:, None], (r2 * amb)[:, None], (r2 * (1 - amb))[:, None], amb[:, None],
                onehot * r2[:, None], onehot * err[:, None], onehot * (2 * err + 2 * e * e * spread)[:, None], onehot]
        return torch.cat(cols, 1)

    est = _reduce(terms, law, n, seed, sample, progress)
    blk = lambda j: est[4 + j * KT: 4 + (j + 1) * KT]  # noqa: E731
    return Decomposition(t, e, est[0], est[1], est[2], est[3], blk(0), blk(1), blk(2), blk(3), rec)


# ------------------------------------------------------------------------------------------------
# Assumption 5.11 (admissible matchings) and Lemma 5.16 (confidently misrouted mass); docs/landscape.md §4


def _matchings(KT: int, KS: int, where: str):
    count = math.perm(KS, KT)
    if count > 40320:
        fail("student", where, f"at most 40320 injective matchings of {KT} teacher cells into the experts",
             f"{count} for K_T = {KT}, K_S = {KS}")
    return itertools.permutations(range(KS), KT)


@dataclass(frozen=True)
class Matching:
    r"""Constants of Assumption 5.11 (5.9) for one student and one η.

    Attributes:
        eta: η > 0; sigma: the admissible matching σ (teacher cell k ↦ student expert σ(k)) that makes
            :math:`c_0` smallest; c0: :math:`\max_{k,\,j\ne\sigma(k)} \mu(\{x\in\Omega_k : |h_j - h^*_k| < \eta\})`
            (an Estimate: the maximising entry with its standard error).
        near: the masses :math:`\mu(\Omega_k \cap \{|h_j - h^*_k| < \eta\})`, Estimate ``(K_T, K_S)``.
    """

    eta: float
    sigma: tuple[int, ...]
    c0: Estimate
    near: Estimate


def admissible_matching(student, teacher, law=None, eta: float = 0.5, *, sample=None, n: int = 1 << 16, seed=0,
                        method: str = "mc") -> Matching:
    r"""The constants (η, c₀) of Assumption 5.11 [recon, (5.9)] for a student: the admissible matching.

    .. math:: c_0(\eta) = \min_\sigma \max_{k,\ j\ne\sigma(k)}\ \mu\big(\{x\in\Omega_k : |h_j(x) - h^*_k(x)| < \eta\}\big)

    over injective matchings σ of teacher cells to student experts (all of them, at most 40320): the mass of
    the sets (5.15) on which a non-matched expert is within η of the teacher. :math:`c_0 = 0` is the limiting
    case of Assumption 5.11; Lemma 5.16 pays :math:`K(K-1)c_0` for these sets.

    Args:
        student, teacher, law, sample, n, seed: as in :func:`recovery`; eta: η > 0.
        method: ``"mc"`` (the masses from ``(law, n, seed)`` or ``sample``) or ``"exact"`` (affine student and
            teacher experts, a linear teacher partition, a Gaussian (mixture) law whose cell and slab constraints
            span at most two directions: Gaussian polyhedral masses, :func:`softhard.closed.moments.region_moments`).
    """
    where = "admissible_matching"
    student, teacher = _check_pair(student, teacher, where)
    eta = check_float(eta, "eta", where, 0.0, math.inf)
    if not isinstance(method, str) or method not in ("mc", "exact"):
        fail("method", where, "one of 'mc', 'exact'", method)
    KT, KS = teacher.num_cells, student.num_experts
    perms = list(_matchings(KT, KS, where))
    if method == "exact":
        law = as_law(law, where, teacher.d)
        theta, theta_t = _affine(student.experts, where), _affine(teacher.moe.experts, where)
        lin = effective_linear(teacher.moe.router)
        if lin is None:
            fail("teacher", where, "a linear partition for the exact method", type(teacher.moe.router).__name__,
                 TypeError)
        WT, bT = (t.detach().to(DTYPE).numpy() for t in lin)
        d = WT.shape[1]
        M = np.zeros((KT, KS))
        for weight, comp in gaussian_components(law, where):
            mean, L = comp.mean.numpy(), comp.scale_tril.numpy()
            for k in range(KT):
                others = [m for m in range(KT) if m != k]
                rows, offs = WT[k] - WT[others], bT[k] - bT[others]
                for j in range(KS):
                    D = theta[j] - theta_t[k]  # h_j - h*_k = D·x̃; |D| < η: η - D > 0 and η + D > 0
                    A = np.concatenate([rows, -D[None, :d], D[None, :d]])
                    al = np.concatenate([offs, [eta - D[d], eta + D[d]]])
                    try:
                        T, _ = region_moments(mean, L, A, al)
                    except SpanError as e:
                        fail("law", where, "such that the cell and slab constraints span at most 2 directions for the "
                                           "exact method (use method='mc')", f"{e.args[0]} directions")
                    M[k, j] += weight * T[d, d, d]
        near = Estimate(M, np.zeros_like(M), 0, "exact")
    else:
        law, sample = _law_or_sample(law, sample, n, seed, teacher.d, where)

        def terms(x):
            cell, h, hs = teacher.cell(x), student.expert_outputs(x), teacher.cell_experts(x)
            onehot = torch.nn.functional.one_hot(cell, KT).to(h.dtype)  # (N, K_T)
            close = ((h[:, None, :] - hs[:, :, None]).abs() < eta).to(h.dtype)  # (N, K_T, K_S): |h_j - h*_k| < η
            return (onehot[:, :, None] * close).reshape(len(x), KT * KS)

        est = _reduce(terms, law, n, seed, sample)
        near = Estimate(np.asarray(est.value).reshape(KT, KS), np.asarray(est.stderr).reshape(KT, KS), est.n,
                        est.method, est.seed)
    V, S = np.asarray(near.value), np.asarray(near.stderr)

    def worst(p):
        mask = np.ones((KT, KS), bool)
        mask[np.arange(KT), list(p)] = False
        vals = np.where(mask, V, -np.inf)
        return np.unravel_index(int(np.argmax(vals)), vals.shape)

    best = min(perms, key=lambda p: (V[worst(p)], p))
    k, j = worst(best)
    c0 = Estimate(float(V[k, j]), float(S[k, j]), near.n, near.method, near.seed, {"cell": int(k), "expert": int(j)})
    return Matching(eta, tuple(int(s) for s in best), c0, near)


@dataclass(frozen=True)
class Misrouting:
    r"""Lemma 5.16 [recon] at one τ: the confidently misrouted set (5.11) and its mass bound (5.13).

    Attributes:
        tau, eps, eta, B: the parameters; matching: the admissible :class:`Matching` (σ and c₀) used.
        mass: :math:`\mu(M_{\sigma,\varepsilon})` (5.11); residual: :math:`E[(f^* - f_\tau)^2 1_M]`;
        excess: :math:`L_\tau - E[\xi^2] = E[(f^* - f_\tau)^2]`; all Estimates from one sample.
        lower: (5.12) :math:`(\eta - 2B\varepsilon)_+^2(\mu(M) - K(K-1)c_0)`, a lower bound of ``residual``;
        mass_bound: (5.13) :math:`(L_\tau - E\xi^2)/(\eta - 2B\varepsilon)_+^2 + K(K-1)c_0` (``inf`` when
        :math:`\eta \le 2B\varepsilon`), an upper bound of ``mass``.
        confidence_ratio: (5.14) on M, :math:`\max |f_\tau - h_j| / (2B\varepsilon)` over the sample's points of M
            (≤ 1 when :math:`|h_k| \le B` there); bound_violated: :math:`\mu(\max_k|h_k| > B)`, the mass where the
            hypothesis :math:`|h_k| \le B` (Assumption 4.3) fails (the bounds need it to be 0).
    """

    tau: float
    eps: float
    eta: float
    B: float
    matching: Matching
    mass: Estimate
    residual: Estimate
    excess: Estimate
    lower: float
    mass_bound: float
    confidence_ratio: float
    bound_violated: Estimate


def misrouting_bound(student, teacher, law=None, tau: float = 0.1, *, eps: float = 0.05, eta: float = 0.5,
                     B: float, sample=None, n: int = 1 << 16, seed=0, matching: Matching | None = None) -> Misrouting:
    r"""Lemma 5.16 [recon] (5.10)–(5.15): the confidently misrouted interior set and the bound on its mass.

    .. math:: M_{\sigma,\varepsilon} = \bigcup_k \{x\in\Omega_k : \pi^\tau_j(x) \ge 1 - \varepsilon
              \text{ for some } j\ne\sigma(k)\}\quad(5.11),

    on M :math:`|f_\tau - h_j| \le (1-\pi_j)\max_l|h_l - h_j| \le 2B\varepsilon` (5.14); off the sets (5.15)
    :math:`\{x\in\Omega_k : |h_j - h^*_k| < \eta\}` (mass ≤ c₀ each, at most K(K−1) of them) the residual is at
    least :math:`\eta - 2B\varepsilon`, so

    .. math:: E[(f^*-f_\tau)^2 1_M] \ge (\eta - 2B\varepsilon)_+^2\,(\mu(M) - K(K-1)c_0)\quad(5.12),\qquad
              \mu(M) \le \frac{L_\tau - E\xi^2}{(\eta - 2B\varepsilon)_+^2} + K(K-1)c_0\quad(5.13).

    σ and c₀ are those of :func:`admissible_matching` at η (or ``matching``); K is the student's expert count.
    Everything is estimated from one sample (``(law, n, seed)`` or ``sample``), so (5.12) and (5.13) hold
    exactly on it when :math:`|h_k| \le B` there (``bound_violated`` reports where not).

    Args:
        student, teacher, law, sample, n, seed: as in :func:`recovery`; tau: τ > 0; eps: ε ∈ (0, 1/2);
        eta: η > 0; B: the bound :math:`|h_k| \le B` of Assumption 4.3 (B > 0).
    """
    where = "misrouting_bound"
    student, teacher = _check_pair(student, teacher, where)
    tau = check_float(tau, "tau", where, 0.0, math.inf)
    eps = check_float(eps, "eps", where, 0.0, 0.5)
    eta = check_float(eta, "eta", where, 0.0, math.inf)
    B = check_float(B, "B", where, 0.0, math.inf)
    law, sample = _law_or_sample(law, sample, n, seed, teacher.d, where)
    if sample is None:  # one sample for everything, so the inequalities hold on it
        sample = draw(law, n, seed)
    if matching is None:
        matching = admissible_matching(student, teacher, law, eta, sample=sample)
    elif not isinstance(matching, Matching) or len(matching.sigma) != teacher.num_cells:
        fail("matching", where, "a Matching of this teacher's cells (admissible_matching)", type(matching).__name__,
             TypeError)
    K = student.num_experts
    sigma = torch.as_tensor(matching.sigma, dtype=torch.long)
    x = sample
    with torch.no_grad():
        cell, fs = teacher.cell(x), teacher.signal(x)
        a, h = student.logits(x), student.expert_outputs(x)
        f = soft_from(a, h, torch.tensor([tau], dtype=DTYPE), scalar=True)
        pi = torch.softmax((a - a.max(-1, keepdim=True).values) / tau, -1)
        conf = pi >= 1 - eps  # (N, K): confident experts
        conf[torch.arange(len(x)), sigma[cell]] = False  # ... other than the matched one
        inM = conf.any(-1)
        j = torch.argmax(pi, -1)  # on M the confident expert is the top one (1 - ε > 1/2)
        r2 = (fs - f) ** 2
        off = (f - h.gather(1, j[:, None])[:, 0]).abs()
        ratio = float((off[inM] / (2 * B * eps)).max()) if bool(inM.any()) else 0.0
        viol = (h.abs().max(-1).values > B).to(r2.dtype)
        est = mean_estimate(torch.stack([inM.to(r2.dtype), r2 * inM, r2, viol], 1))
    gap = max(eta - 2 * B * eps, 0.0)
    c0 = float(matching.c0.value)
    lower = gap ** 2 * (float(est[0].value) - K * (K - 1) * c0)
    bound = float(est[2].value) / gap ** 2 + K * (K - 1) * c0 if gap > 0 else math.inf
    return Misrouting(tau, eps, eta, B, matching, est[0], est[1], est[2], lower, bound, ratio, est[3])
