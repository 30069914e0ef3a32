r"""Risks and gaps in closed form: the soft and hard risks :math:`L_\tau`, :math:`L_0` (2.5), (2.11), the gap
and its first-order constant :math:`G_1` of a binary linear MoE under a Gaussian (mixture) law, by
one-dimensional quadrature across the interface; and the constants of the first-order calculus.

The first-order constants (``docs/first_order_gap.md``): with :math:`\sigma` the logistic function,

.. math:: \int_{\mathbb R} (1\{u>0\} - \sigma(u))^2\,du = 2\ln 2 - 1, \qquad \int_0^\infty \sigma(-u)\,du = \ln 2,
          \qquad \int_{\mathbb R} H(\sigma(u))\,du = \frac{\pi^2}{3},

and the bracket of :math:`G_1` on an interface between experts i (side ``+``) and j (side ``−``),
:func:`g1_bracket`, is the one definition every estimator of :math:`G_1` uses.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validate import check_grid, fail
from ..model.experts import LinearExperts
from ..model.laws import Gaussian, GaussianMixture
from ..model.moe import HardTeacher, MoE
from ..model.routers import LinearRouter
from .boundary import pair_score
from .normal import (ROUNDING, TINY, MassUnderflow, factor_rel_error, gaussian_components, log_concave_panels, log_phi,
                     logistic, normal_cdf, phi, score_law, to_numpy)

__all__ = ["LN2", "GAP_CONSTANT", "ENTROPY_CONSTANT", "TAIL_TAU", "g1_bracket", "g1_half_bracket",
           "is_binary_linear_gaussian", "risk_exact", "risk_gap_exact", "risk_gap_closed", "gap_slope_exact",
           "gap_slope_closed", "gate_entropy_exact"]

LN2 = math.log(2.0)  # ∫_0^∞ σ(-u) du
GAP_CONSTANT = 2 * LN2 - 1  # ∫_R (1{u>0} - σ(u))² du
ENTROPY_CONSTANT = math.pi ** 2 / 3  # ∫_R H(σ(u)) du (nats)
TAIL_TAU = 64.0  # the gap integrand carries e(t/τ) = O(exp(-|t|/τ)): cut at |t| = 64 τ (e^-64 < 1e-27)


def g1_bracket(D, f_plus, h_i, f_minus, h_j):
    r"""The bracket of :math:`G_1` at a point of the interface between experts i and j (paper.md §3 [beyond]):

    .. math:: (2\ln 2 - 1)\,D^2 + 2\ln 2\,\big(D\,(f^*_+ - h_i) - D\,(f^*_- - h_j)\big), \qquad D = h_i - h_j,

    with :math:`f^*_\pm` the teacher's one-sided traces on i's side (:math:`g_{ij} > 0`) and on j's side.
    Arrays or tensors of one shape.
    """
    return GAP_CONSTANT * D * D + 2 * LN2 * (D * (f_plus - h_i) - D * (f_minus - h_j))


def g1_half_bracket(D, f, h_w):
    r"""One side's half of :func:`g1_bracket`, for a point on the winner w's side at the interface with the
    runner-up r (:math:`D = h_w - h_r`, :math:`f` the teacher there):
    :math:`(\ln 2 - \tfrac12)D^2 + 2\ln 2\,D\,(f - h_w)`. The two sides of an interface sum to the bracket
    (the runner-up's side has :math:`D_{rw} = -D`)."""
    return (LN2 - 0.5) * D * D + 2 * LN2 * D * (f - h_w)


def _binary_linear(moe, where: str, param: str):
    """``(g, h_1, h_2)`` of a binary linear MoE with linear experts, each an affine map ``(u (d,), u_0)``."""
    if not isinstance(moe, MoE):
        fail(param, where, "a softhard MoE", type(moe).__name__, TypeError)
    if not isinstance(moe.router, LinearRouter) or not isinstance(moe.experts, LinearExperts):
        fail(param, where, "an MoE with a LinearRouter and LinearExperts (the closed form needs linear maps)",
             f"{type(moe.router).__name__} with {type(moe.experts).__name__}", TypeError)
    if moe.num_experts != 2:
        fail(param, where, "a binary MoE (K = 2 experts; the closed form integrates over the one score g)",
             f"K = {moe.num_experts}")
    v, c = pair_score(moe.router, (0, 1))
    W, b = to_numpy(moe.experts.weight), to_numpy(moe.experts.bias)
    return (to_numpy(v), float(c)), (W[0], float(b[0])), (W[1], float(b[1]))


def _teacher_model(teacher, moe, where: str):
    """The teacher as ``((g*, h*_1, h*_2), noise_std)``; ``None`` is the hard-routed ``moe`` itself."""
    if teacher is None:
        return _binary_linear(moe, where, "moe"), 0.0
    if isinstance(teacher, MoE):
        teacher = HardTeacher(teacher)
    if not isinstance(teacher, HardTeacher):
        fail("teacher", where, "None, an MoE or a HardTeacher of a binary linear MoE with linear experts (the "
             "closed form needs a piecewise-linear teacher)", type(teacher).__name__, TypeError)
    return _binary_linear(teacher.moe, where, "teacher"), teacher.noise_std


def _diff(f1, f2):
    return f1[0] - f2[0], f1[1] - f2[1]


def _log_e(u):
    r""":math:`\log|e(u)| = \log\sigma(-|u|)` (the decay of :math:`e(u) = 1\{u \ge 0\} - \sigma(u)`), concave."""
    return -np.logaddexp(0.0, np.abs(u))


class _Slice:
    r"""One Gaussian component seen through the student score: :math:`X \mid g(X) = t` for t on a grid.

    Everything is computed in the space of the law's factor, :math:`X = m + Fz`: a linear functional
    :math:`f(x) = u\cdot x + u_0` is :math:`\mu_f + b_f\cdot z` with :math:`b_f = F^\top u`; the student score has
    :math:`a = F^\top v`, :math:`s = |a|`. Given :math:`g = t`, :math:`z = \hat a\,(t - m_g)/s + z_\perp` with
    :math:`z_\perp \sim N(0, I - \hat a\hat a^\top)`, so

    .. math:: E[f \mid g = t] = \mu_f + (b_f\cdot\hat a)\,\frac{t - m_g}{s}, \qquad
              \mathrm{Cov}(f_1, f_2 \mid g) = b_{1\perp}\cdot b_{2\perp},

    with :math:`b_\perp = b - (b\cdot\hat a)\hat a`: a Euclidean projection of vectors of the size of each
    functional's own standard deviation. (The former :math:`S` -metric projection
    :math:`G - (G^\top S v/v^\top S v)\,v` lost the digits of an ill-conditioned S: a teacher equal to the student
    along a small-variance direction kept a spurious conditional variance, and :math:`G_1` came out −186.3 for
    +71.97, issue 19.)
    """

    def __init__(self, comp: Gaussian, student, teacher):
        (v, c), h1, h2 = student
        (self.G, t1, t2) = teacher
        self.m, self.F = to_numpy(comp.mean), to_numpy(comp.factor)
        self.m_g = float(v @ self.m) + c
        a = self.F.T @ v
        self.s = float(np.linalg.norm(a))
        self.ahat = a / self.s
        self.rho = float(factor_rel_error(v[None, :], self.F)[0])  # relative error of s from rounding
        self.bG = self._z(self.G)
        self.bGp = self._perp(self.bG)
        self.varG = float(self.bGp @ self.bGp)
        # the teacher is a function of g on this component when its residual is rounding-level of its own size
        self.g_of_g = math.sqrt(self.varG) <= 1e-12 * float(np.linalg.norm(self.bG))
        self.D = _diff(h1, h2)  # student contrast D = h_1 - h_2
        self.Dt = _diff(t1, t2)  # teacher contrast D* = h*_1 - h*_2
        self.W = _diff(t2, h2)  # h*_2 - h_2

    def _z(self, f) -> np.ndarray:
        return self.F.T @ f[0]

    def _perp(self, b: np.ndarray) -> np.ndarray:
        return b - float(b @ self.ahat) * self.ahat

    def log_psi(self, t):
        """log density of g(X) at t."""
        return log_phi((np.asarray(t, float) - self.m_g) / self.s) - math.log(self.s)

    def psi(self, t):
        """Density of g(X) at t."""
        return np.exp(self.log_psi(t))

    def _mean(self, f):
        """``(a, b)`` with E[f(X) | g = t] = a + b t."""
        b = float(self._z(f) @ self.ahat) / self.s
        return float(f[0] @ self.m) + f[1] - b * self.m_g, b

    def _cov(self, f1, f2) -> float:
        return float(self._perp(self._z(f1)) @ self._perp(self._z(f2)))

    def prod(self, f1, f2, t):
        r""":math:`E[f_1 f_2 \mid g = t]`."""
        (a1, b1), (a2, b2) = self._mean(f1), self._mean(f2)
        return (a1 + b1 * t) * (a2 + b2 * t) + self._cov(f1, f2)

    def prod_on(self, f1, f2, t, side: int = 0):
        r""":math:`E[f_1 f_2\, 1\{g^* \ge 0\} \mid g = t]`; ``side = ±1``: the limit as t → 0± (t must be 0).

        With :math:`g^* \mid g=t \sim N(\mu, s_*^2)`, :math:`z = \mu/s_*`, regress :math:`f_i = \alpha_i +
        \beta_i (g^* - \mu) + r_i`: the result is :math:`(\alpha_1\alpha_2 + c_{12})\Phi(z) +
        (\alpha_1\beta_2 + \alpha_2\beta_1)s_*\varphi(z) + \beta_1\beta_2 s_*^2(\Phi(z) - z\varphi(z))`.
        """
        aG, bG = self._mean(self.G)
        mu = aG + bG * np.asarray(t, float)
        if self.g_of_g:  # g* is a function of g on this component
            tol = 1e-12 * (abs(float(self.G[0] @ self.m)) + abs(self.G[1]) + abs(bG * self.m_g)
                           + float(np.linalg.norm(self.bG)) * (1.0 + abs(self.m_g) / self.s))
            if side and abs(aG) <= tol:
                ind = np.asarray(bG * side > 0 if bG != 0 else True)
            else:
                ind = mu >= 0
            return self.prod(f1, f2, t) * ind
        sG2 = self.varG
        sG = math.sqrt(sG2)
        z = mu / sG
        P, ph = normal_cdf(z), phi(z)
        (a1, b1), (a2, b2) = self._mean(f1), self._mean(f2)
        al1, al2 = a1 + b1 * t, a2 + b2 * t
        c1, c2 = float(self._z(f1) @ self.bGp), float(self._z(f2) @ self.bGp)
        be1, be2, r = c1 / sG2, c2 / sG2, self._cov(f1, f2) - c1 * c2 / sG2
        return (al1 * al2 + r) * P + (al1 * be2 + al2 * be1) * sG * ph + be1 * be2 * sG2 * (P - z * ph)

    def teacher_breaks(self) -> np.ndarray:
        """Where the teacher's step 1{g* >= 0}, seen as a function of t, is located (quadrature splits)."""
        aG, bG = self._mean(self.G)
        if bG == 0:
            return np.zeros(0)
        w = math.sqrt(self.varG) / abs(bG)
        return -aG / bG + w * np.concatenate([[0.0], 2.0 ** np.arange(6), -(2.0 ** np.arange(6))])

    def B(self, t):
        r""":math:`E[D^2 \mid g = t]`."""
        return self.prod(self.D, self.D, t)

    def M(self, t, side: int = 0):
        r""":math:`E[D (f^* - h_2) \mid g = t]`, :math:`f^* - h_2 = (h^*_2 - h_2) + 1\{g^* \ge 0\} D^*`."""
        return self.prod(self.D, self.W, t) + self.prod_on(self.D, self.Dt, t, side)

    def Q(self, t):
        r""":math:`E[(f^* - h_2)^2 \mid g = t]`."""
        return self.prod(self.W, self.W, t) + 2 * self.prod_on(self.W, self.Dt, t) + self.prod_on(self.Dt, self.Dt, t)

    def window(self, lo: float, hi: float) -> tuple[float, float, float]:
        r"""``(lo', hi', z0)``: [lo, hi] cut to where ψ is within e^-90 of its largest value there (z0: that largest
        value's distance from :math:`m_g` in standard deviations)."""
        t0 = min(max(self.m_g, lo), hi)
        z0 = abs(t0 - self.m_g) / self.s
        R = math.sqrt(z0 * z0 + 180.0) * self.s
        return max(lo, self.m_g - R), min(hi, self.m_g + R), z0

    def rel_bound(self, z0: float) -> float:
        """Relative error bound from rounding: the quadrature (1e-12) and s, first order (ψ ∝ exp(-z²/2)/s)."""
        return ROUNDING + 4.0 * self.rho * (1.0 + (2.0 + z0) ** 2)

    def hard_risk(self) -> float:
        r""":math:`E[(f^* - f_0)^2] = \int \psi(t)\,(Q - 2\cdot 1\{t \ge 0\} M + 1\{t \ge 0\} B)(t)\,dt`."""
        lo, hi, _ = self.window(-math.inf, math.inf)
        t, w, lw = log_concave_panels(self.log_psi, lo, hi, np.concatenate([[0.0], self.teacher_breaks()]))
        on = (t >= 0).astype(float)
        return float(w @ (np.exp(lw) * (self.Q(t) - 2 * on * self.M(t) + on * self.B(t))))

    def gap(self, tau: float) -> tuple[float, float]:
        r"""``(value, bound)``: :math:`L_\tau - L_0 = \int \psi(t)\, e(t/\tau)\,[2M(t) - (1\{t \ge 0\} +
        \sigma(t/\tau)) B(t)]\,dt` over :math:`|t| \le 64\tau`, the weight :math:`\psi(t)|e(t/\tau)|` (log-concave)
        resolved by :func:`~softhard.closed.normal.log_concave_panels` wherever it sits in ψ's tails."""
        lo, hi, z0 = self.window(-TAIL_TAU * tau, TAIL_TAU * tau)
        if not hi > lo:
            return 0.0, 0.0
        layer = tau * 2.0 ** np.arange(7)
        t, w, lw = log_concave_panels(lambda x: self.log_psi(x) + _log_e(np.asarray(x) / tau), lo, hi,
                                      np.concatenate([[0.0], self.teacher_breaks(), layer, -layer]))
        if t.size == 0:
            return 0.0, 0.0
        u = t / tau
        on = (t >= 0).astype(float)
        sign = np.where(on > 0, 1.0, -1.0)  # e(u) = sign · |e(u)|, |e(u)| = σ(-|u|) is in the weight
        terms = w * np.exp(lw) * sign * (2 * self.M(t) - (on + logistic(u)) * self.B(t))
        return float(terms.sum()), float(np.abs(terms).sum()) * self.rel_bound(z0)

    def slope(self) -> tuple[float, float, float]:
        r"""``(value, bound, log ψ(0))``: the contribution to :math:`G_1`,
        :math:`\psi(0)\,[2\ln 2\,(M(0^+) - M(0^-)) - B(0)]`."""
        jump = float(self.M(0.0, +1) - self.M(0.0, -1))
        bracket = 2 * LN2 * jump - float(self.B(0.0))
        lpsi = float(self.log_psi(0.0))
        psi = math.exp(lpsi)
        scale = psi * (2 * LN2 * abs(jump) + abs(float(self.B(0.0))))
        return psi * bracket, scale * self.rel_bound(abs(self.m_g) / self.s), (lpsi if bracket != 0 else -math.inf)


def _slices(moe, law, teacher, where: str) -> tuple[list[tuple[float, _Slice]], float]:
    student = _binary_linear(moe, where, "moe")
    model, noise = _teacher_model(teacher, moe, where)
    comps = gaussian_components(law, where)
    if student[0][0].shape[0] != law.d:
        fail("law", where, f"a law on R^{student[0][0].shape[0]} (the model's input dimension)", f"a law on R^{law.d}")
    if model[0][0].shape[0] != law.d:
        fail("teacher", where, f"a teacher on R^{law.d} (the law's input dimension)",
             f"a teacher on R^{model[0][0].shape[0]}")
    out = []
    for w, comp in comps:
        if score_law(torch.as_tensor(student[0][0]), student[0][1], comp)[1] == 0.0:
            fail("moe", where, "a router whose score g has a non-degenerate law (vᵀSv > 0)", "vᵀSv = 0")
        out.append((w, _Slice(comp, student, model)))
    return out, noise


def is_binary_linear_gaussian(moe, law, teacher=None) -> bool:
    """Whether :func:`risk_exact`, :func:`risk_gap_exact` and :func:`gap_slope_exact` apply."""
    def ok(m):
        return isinstance(m, MoE) and isinstance(m.router, LinearRouter) and isinstance(
            m.experts, LinearExperts) and m.num_experts == 2
    t = teacher.moe if isinstance(teacher, HardTeacher) else teacher
    return ok(moe) and (t is None or ok(t)) and isinstance(law, (Gaussian, GaussianMixture))


def risk_exact(moe, law, taus, teacher=None) -> tuple[np.ndarray, float]:
    r"""Soft and hard risks :math:`(L_\tau, L_0)` (2.5), (2.11) of a binary linear MoE, by 1-d quadrature.

    Model: router score :math:`g(x) = v\cdot x + c`, linear experts :math:`h_1, h_2`,
    :math:`D = h_1 - h_2`, :math:`f_\tau = h_2 + \sigma(g/\tau) D`, :math:`f_0 = h_2 + 1\{g \ge 0\} D`;
    teacher :math:`f^* = h^*_2 + 1\{g^* \ge 0\} D^*` (a hard binary linear MoE; ``None``: ``moe`` itself)
    plus noise of variance :math:`\sigma_\xi^2`. Conditioning on :math:`g = t` (in the space of the law's factor,
    see :class:`_Slice`),

    .. math:: L_0 = \int \psi(t)\,E[(f^* - f_0)^2 \mid g = t]\,dt + \sigma_\xi^2, \qquad
              L_\tau - L_0 = \int \psi(t)\, e(t/\tau)\, E\big[D\,(2f^* - f_\tau - f_0) \mid g = t\big]\,dt,

    with :math:`e(u) = 1\{u \ge 0\} - \sigma(u)`, ψ the density of g(X) (3.8) and the conditional
    moments closed forms in t (Gaussian moments, half-space truncated where the teacher's step is not a
    function of g). The gap integral is cut to :math:`|t| \le 64\tau` and its log-concave weight
    :math:`\psi(t)|e(t/\tau)|` is resolved by panels whose log changes by at most 2 nats
    (:func:`~softhard.closed.normal.log_concave_panels`), wherever the interface sits in ψ's tails: accurate
    (relative 1e-12 or better) for τ down to 1e-4 and below and for interfaces to 37 standard deviations out.
    Mixtures: weighted sums over components.

    Args:
        moe: MoE with a binary LinearRouter and LinearExperts; law: Gaussian or GaussianMixture;
        taus: temperatures, shape ``(T,)``; teacher: None, an MoE or a HardTeacher of one.

    Returns:
        ``(L_tau (T,), L_0)``.
    """
    where = "risk_exact"
    t = to_numpy(check_grid(taus, "taus", where, low=0.0, low_open=True))
    slices, noise = _slices(moe, law, teacher, where)
    L0 = sum(w * s.hard_risk() for w, s in slices) + noise ** 2
    return L0 + np.array([sum(w * s.gap(tau)[0] for w, s in slices) for tau in t]), float(L0)


def risk_gap_closed(moe, law, taus, teacher=None, where: str = "risk_gap_exact") -> tuple[np.ndarray, np.ndarray]:
    """``(L_τ − L_0 (T,), absolute error bounds (T,))`` of :func:`risk_gap_exact`: the bound is rounding (the
    quadrature to 1e-12 of the integral of |integrand|, and the score's standard deviation to first order)."""
    t = to_numpy(check_grid(taus, "taus", where, low=0.0, low_open=True))
    slices, _ = _slices(moe, law, teacher, where)
    parts = [[s.gap(tau) for _, s in slices] for tau in t]
    weights = [w for w, _ in slices]
    values = np.array([sum(w * g[0] for w, g in zip(weights, p)) for p in parts])
    bounds = np.array([sum(w * g[1] for w, g in zip(weights, p)) for p in parts])
    return values, bounds


def risk_gap_exact(moe, law, taus, teacher=None) -> np.ndarray:
    r"""The soft–hard gap :math:`L_\tau - L_0` on a grid of temperatures, exactly (see :func:`risk_exact`).

    .. math:: L_\tau - L_0 = E\big[(f_0 - f_\tau)(2f^* - f_\tau - f_0)\big]
              = \int \psi(t)\, e(t/\tau)\,\big[2M(t) - (1\{t \ge 0\} + \sigma(t/\tau)) B(t)\big]\,dt

    with :math:`B(t) = E[D^2 \mid g=t]`, :math:`M(t) = E[D(f^* - h_2) \mid g=t]`; the noise cancels.

    Returns:
        ``numpy`` array of shape ``(T,)``.
    """
    return risk_gap_closed(moe, law, taus, teacher)[0]


def gap_slope_closed(moe, law, teacher=None, where: str = "gap_slope_exact") -> tuple[float, float]:
    """``(G_1, absolute error bound)`` of :func:`gap_slope_exact` (the bound: rounding, first order through the
    score's standard deviation, :math:`\\psi(0)(|2\\ln 2\\,\\Delta M| + B)(10^{-12} + 4\\rho(1 + (2 + |z|)^2))`); a
    :math:`G_1` whose density ψ(0) is below the float64 range raises
    :class:`~softhard.closed.normal.MassUnderflow`."""
    slices, _ = _slices(moe, law, teacher, where)
    parts = [(w, s.slope()) for w, s in slices]
    value = float(sum(w * p[0] for w, p in parts))
    bound = float(sum(w * p[1] for w, p in parts))
    logs = [math.log(w) + p[2] if w > 0 else -math.inf for w, p in parts]
    top = max(logs)
    if top > -math.inf and value == 0.0 and all(w * abs(p[0]) < TINY for w, p in parts):
        raise MassUnderflow(where, "the density ψ(0) of the score at the interface, and so G_1,", top)
    return value, bound


def gap_slope_exact(moe, law, teacher=None) -> float:
    r"""First-order constant :math:`G_1` of :math:`L_\tau - L_0 = G_1\tau + o(\tau)` (paper.md §3 [beyond]).

    Binary linear MoE, Gaussian (mixture) law, teacher a hard binary linear MoE (``None``: ``moe``);
    derivation in ``docs/first_order_gap.md``:

    .. math:: G_1 = \sum_c \omega_c\, \psi_c(0)\,\big[2\ln 2\,(M_c(0^+) - M_c(0^-)) - B_c(0)\big]
              = \int_\Sigma \frac{p}{|\nabla g|}\Big[(2\ln2 - 1)D^2 + 2\ln 2\,\big(D(f^*_+ - h_1)
              - D(f^*_- - h_2)\big)\Big] dH^{d-1}.

    Realizable (``teacher=None``): :math:`G_1 = (2\ln 2 - 1)\,\psi(0)\,E[D^2 \mid g = 0]`; a teacher
    continuous across Σ: :math:`G_1 = -\psi(0)\,E[D^2 \mid g = 0]`. The conditional moments are taken in the
    space of the law's factor (:class:`_Slice`), so an ill-conditioned law costs no digits (issue 19: a
    condition number 1e8 gave −186.3 for +71.97 through the covariance's metric).
    """
    return gap_slope_closed(moe, law, teacher)[0]


def gate_entropy_exact(router, law, taus) -> np.ndarray:
    r"""Mean binary gate entropy :math:`E[H(\sigma(g(X)/\tau))]` (nats) of a binary linear router under a Gaussian
    (mixture) law, by 1-d quadrature against the density ψ of :math:`g = a_1 - a_2` (3.8):

    .. math:: E[H(\pi^\tau)] = \int \psi(t)\, H(\sigma(t/\tau))\,dt, \qquad
              H(\sigma(u)) = \sigma(u)\log(1 + e^{-u}) + \sigma(-u)\log(1 + e^{u}),

    cut at :math:`|t| = 64\tau` (:math:`H(\sigma(u)) < 65 e^{-64}` beyond), the weight
    :math:`\psi(t)\sigma(-|t/\tau|)` resolved by :func:`~softhard.closed.normal.log_concave_panels` (split at 0 and
    :math:`\pm\tau 2^k`). Its first-order limit is :math:`\tau\,\frac{\pi^2}{3}\,\psi(0)`.

    Returns:
        ``numpy`` array of shape ``(T,)``.
    """
    where = "gate_entropy_exact"
    if not isinstance(router, LinearRouter) or router.num_experts != 2:
        fail("router", where, "a binary LinearRouter (the closed form integrates over the one score g)",
             type(router).__name__, TypeError)
    t = to_numpy(check_grid(taus, "taus", where, low=0.0, low_open=True))
    v, c = pair_score(router, (0, 1))
    out = np.zeros_like(t)
    for w, comp in gaussian_components(law, where):
        m_g, s = score_law(v, c, comp)
        if s == 0.0:
            fail("router", where, "a router whose score g has a non-degenerate law (vᵀSv > 0)", "vᵀSv = 0")
        for q, tau in enumerate(t):
            t0 = min(max(m_g, -TAIL_TAU * tau), TAIL_TAU * tau)
            R = math.sqrt(((t0 - m_g) / s) ** 2 + 180.0) * s
            lo, hi = max(m_g - R, -TAIL_TAU * tau), min(m_g + R, TAIL_TAU * tau)
            if not hi > lo:
                continue
            layer = tau * 2.0 ** np.arange(7)
            x, wt, lw = log_concave_panels(
                lambda y: log_phi((np.asarray(y) - m_g) / s) - math.log(s) + _log_e(np.asarray(y) / tau), lo, hi,
                np.concatenate([[0.0], layer, -layer]))
            u = x / tau
            H = logistic(u) * np.logaddexp(0.0, -u) + logistic(-u) * np.logaddexp(0.0, u)
            out[q] += w * float(wt @ (np.exp(lw - _log_e(u)) * H))
    return out
