r"""Closed forms for Gaussian laws (the one place for them; each is checked against Monte Carlo in tests).

Building blocks (paper Example 3.8 and its K-expert extension [beyond]):

- for a linear map ``A = W x + b`` and ``X ~ N(m, S)``: ``A ~ N(W m + b, W S Wᵀ)``;
- for a score ``g(x) = v·x + c``: ``g(X) ~ N(m_g, s²)`` with ``m_g = v·m + c``, ``s² = vᵀ S v``;
  its density at 0 is the coarea constant :math:`\psi(0) = \varphi(m_g/s)/s` (3.14);
- conditioning: ``X | g(X) = t`` is Gaussian with mean ``m + S v (t − m_g)/s²`` and covariance
  ``S − S v vᵀ S / s²`` (used by the first-order gap constant and the shape derivative).

Built on them: the boundary-mass profiles β, β_pair of a K-expert linear router by Gaussian orthant
probabilities (:func:`boundary_mass_exact`), the surface constant of Prop. 3.5
(:func:`interface_constant_exact`), flip probabilities between two routers, and the risks
:math:`L_\tau`, :math:`L_0`, the gap and its first-order constant :math:`G_1` of a binary linear MoE by
one-dimensional quadrature (:func:`risk_exact`, :func:`risk_gap_exact`, :func:`gap_slope_exact`).
Derivations: ``docs/gaussian_closed_forms.md`` and ``docs/first_order_gap.md``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from scipy import special, stats

from ._validate import as_tensor, check_grid, fail
from .laws import Gaussian, GaussianMixture
from .routers import LinearRouter, _pair

__all__ = ["linear_moments", "score_law", "pair_score", "gaussian_components", "condition_on_score",
           "pair_density_at_zero", "orthant_probability", "boundary_mass_exact", "interface_constant_exact",
           "flip_probability_exact", "is_binary_linear_gaussian", "risk_exact", "risk_gap_exact", "gap_slope_exact"]


def gaussian_components(law, where: str) -> list[tuple[float, Gaussian]]:
    """``[(weight, Gaussian), ...]`` for a Gaussian or a mixture; a ``ValueError`` otherwise."""
    if isinstance(law, Gaussian):
        return [(1.0, law)]
    if isinstance(law, GaussianMixture):
        return [(float(w), c) for w, c in zip(law.weights, law.components)]
    fail("law", where, "a Gaussian or GaussianMixture for a closed form", type(law).__name__, TypeError)


def linear_moments(weight: torch.Tensor, bias: torch.Tensor, law: Gaussian) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean ``(K,)`` and covariance ``(K, K)`` of :math:`A = W X + b` for ``X ~ N(m, S)``: ``(W m + b, W S Wᵀ)``."""
    W = weight.to(law.mean)
    return W @ law.mean + bias.to(law.mean), W @ law.cov @ W.T


def pair_score(router: LinearRouter, pair=(0, 1)) -> tuple[torch.Tensor, float]:
    r"""The linear score :math:`g_{ij}(x) = v\cdot x + c` of a linear router: ``(v (d,), c)`` (3.1)."""
    if not isinstance(router, LinearRouter):
        fail("router", "pair_score", "a LinearRouter for a closed form", type(router).__name__, TypeError)
    i, j = _pair(pair, router.num_experts, "pair_score")
    return router.weight[i] - router.weight[j], float(router.bias[i] - router.bias[j])


def score_law(v: torch.Tensor, c: float, law: Gaussian) -> tuple[float, float]:
    r"""``(m_g, s)`` with :math:`g(X) = v\cdot X + c \sim N(m_g, s^2)` (Example 3.8)."""
    v = v.to(law.mean)
    m_g = float(v @ law.mean) + c
    s = math.sqrt(max(float(v @ law.cov @ v), 0.0))
    return m_g, s


def pair_density_at_zero(router: LinearRouter, law, pair=(0, 1)) -> float:
    r"""Coarea constant :math:`\psi_{ij}(0)` (3.8), exact: the density of :math:`g_{ij}(X)` at 0 (3.14).

    .. math:: \psi_{ij}(0) = \sum_c \omega_c\, \varphi(m_{g,c}/s_c)/s_c

    for a linear router and a Gaussian (``C = 1``) or Gaussian-mixture law.
    """
    v, c = pair_score(router, pair)
    total = 0.0
    for w, comp in gaussian_components(law, "pair_density_at_zero"):
        m_g, s = score_law(v, c, comp)
        if s == 0.0:
            fail("router", "pair_density_at_zero", "a score g_ij with non-degenerate law (vᵀSv > 0)", "vᵀSv = 0")
        total += w * math.exp(-0.5 * (m_g / s) ** 2) / (s * math.sqrt(2 * math.pi))
    return total


def condition_on_score(law: Gaussian, v: torch.Tensor, c: float, t: float = 0.0) -> Gaussian:
    r"""The conditional law of ``X ~ N(m, S)`` given :math:`v\cdot X + c = t` (a degenerate Gaussian).

    .. math:: X \mid g = t \sim N\big(m + S v (t - m_g)/s^2,\; S - S v v^\top S / s^2\big)
    """
    v = v.to(law.mean)
    m_g, s = score_law(v, c, law)
    if s == 0.0:
        fail("v", "condition_on_score", "a direction with vᵀSv > 0", v)
    Sv = law.cov @ v
    return Gaussian(law.mean + Sv * (t - m_g) / s ** 2, law.cov - torch.outer(Sv, Sv) / s ** 2)


# ----------------------------------------------------------------------------------------------------
# Gaussian orthant probabilities and the K-expert boundary mass [beyond]
# ----------------------------------------------------------------------------------------------------

_ABSEPS = 1e-6  # absolute accuracy asked of Genz's algorithm (scipy.stats.multivariate_normal.cdf)
_PAIRWISE_MAX_K = 6  # kind="pairwise" sums K! orthant probabilities


def _np(t) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy() if isinstance(t, torch.Tensor) else np.asarray(t, float)


def orthant_probability(mean, cov, low, closed=None, abseps: float = _ABSEPS) -> float:
    r"""Gaussian orthant probability :math:`P(Z_i > l_i\ \forall i)` for :math:`Z \sim N(m, C)`.

    Shapes: ``mean`` ``(q,)``, ``cov`` ``(q, q)`` (symmetric positive semi-definite, may be singular),
    ``low`` ``(q,)`` or a scalar, ``closed`` ``(q,)`` booleans or ``None``. Components with zero
    variance are decided exactly (:math:`m_i > l_i`, or :math:`m_i \ge l_i` where ``closed[i]``, a tie-break for deterministic ties);
    one remaining component is a normal tail :math:`\Phi((m_i - l_i)/s_i)`; if the rest has rank r ≤ 2,
    :math:`Z = m + L\xi` with :math:`\xi \sim N(0, I_r)` and the event is an interval (r = 1) or a polygon
    (r = 2, :func:`_polygon_probability`) of ξ, computed to about 1e-14; otherwise Genz's algorithm
    (``scipy.stats.multivariate_normal.cdf`` of :math:`-Z` at :math:`-l`: exact for two components,
    randomised lattice rules with absolute error ``abseps`` and a fixed generator beyond, so the
    result is deterministic; singular covariances of rank ≥ 3 converge slowly, seconds per call).
    """
    where = "orthant_probability"
    m, C = _np(as_tensor(mean, "mean", where)), _np(as_tensor(cov, "cov", where))
    if m.ndim != 1 or m.size < 1 or not np.isfinite(m).all():
        fail("mean", where, "a finite array of shape (q,)", m)
    if C.shape != (m.size, m.size) or not np.isfinite(C).all() or np.abs(C - C.T).max() > 1e-10 * max(
            1.0, np.abs(C).max()) or np.linalg.eigvalsh(C).min() < -1e-10 * max(1.0, np.abs(C).max()):
        fail("cov", where, f"a symmetric positive semi-definite ({m.size}, {m.size}) matrix", C)
    low = _np(as_tensor(low, "low", where))
    if low.ndim > 1 or low.size not in (1, m.size) or np.isnan(low).any():
        fail("low", where, f"a scalar or an array of shape ({m.size},)", low)
    low = np.broadcast_to(low.reshape(-1), m.shape).astype(float)
    closed = np.zeros(m.shape, bool) if closed is None else np.broadcast_to(np.asarray(closed, bool), m.shape)
    sd = np.sqrt(np.clip(np.diag(C), 0.0, None))
    scale = max(1.0, float(np.abs(m).max(initial=0.0)), float(sd.max(initial=0.0)))
    fixed = sd <= 1e-10 * scale
    tol = 1e-12 * scale
    ok = (m > low + tol) | (closed & (m >= low - tol))
    if np.any(fixed & ~ok):
        return 0.0
    keep = ~fixed
    if not keep.any():
        return 1.0
    m, C, low, sd = m[keep], C[np.ix_(keep, keep)], low[keep], sd[keep]
    if m.size == 1:
        return float(special.ndtr((m[0] - low[0]) / sd[0]))
    lam, V = np.linalg.eigh(C)
    big = lam > 1e-12 * lam.max()
    if big.sum() <= 2 and big.sum() < m.size:  # singular: Z = m + L ξ with ξ ~ N(0, I_r), r <= 2, exactly
        L = V[:, big] * np.sqrt(lam[big])
        return _polygon_probability(L, low - m) if L.shape[1] == 2 else _interval_probability(L[:, 0], low - m)
    p = stats.multivariate_normal.cdf(-low, mean=-m, cov=C, allow_singular=True, abseps=abseps, releps=0.0,
                                      rng=np.random.default_rng(0))
    return float(np.clip(p, 0.0, 1.0))


def _interval_probability(l: np.ndarray, c: np.ndarray) -> float:
    r""":math:`P(l_i \xi > c_i\ \forall i)` for :math:`\xi \sim N(0, 1)` and ``l`` without zeros: an interval of ξ."""
    lo = max((ci / li for li, ci in zip(l, c) if li > 0), default=-math.inf)
    hi = min((ci / li for li, ci in zip(l, c) if li < 0), default=math.inf)
    return float(max(special.ndtr(-lo) - special.ndtr(-hi), 0.0)) if hi > lo else 0.0


def _polygon_probability(L: np.ndarray, c: np.ndarray) -> float:
    r""":math:`P(L\xi > c)` for :math:`\xi \sim N(0, I_2)`, ``L`` of shape ``(q, 2)``, by polar coordinates.

    Along the direction :math:`u_\theta` the constraints :math:`\rho\, (L u_\theta)_i > c_i` leave an interval
    :math:`\rho \in (\rho_-, \rho_+)` of :math:`\rho \ge 0`, and :math:`\rho^2/2 \sim \mathrm{Exp}(1)`, so

    .. math:: P = \frac1{2\pi}\int_0^{2\pi} \big[e^{-\rho_-(\theta)^2/2} - e^{-\rho_+(\theta)^2/2}\big]_+\, d\theta .

    The integrand is smooth between the angles where some :math:`(L u_\theta)_i` vanishes or two
    constraints bind together (:math:`(c_i L_j - c_j L_i)\cdot u_\theta = 0`); composite Gauss–Legendre on
    each piece gives the result to about 1e-14.
    """
    pairs = itertools.combinations(range(len(c)), 2)
    dirs = [L[i] for i in range(len(c))] + [c[i] * L[j] - c[j] * L[i] for i, j in pairs]
    cuts = [math.atan2(v[1], v[0]) + s for v in dirs if np.abs(v).max() > 0 for s in (-np.pi / 2, np.pi / 2)]
    pts = np.unique(np.concatenate([[0.0, 2 * np.pi], np.mod(cuts, 2 * np.pi)]))
    # 16 sub-panels per piece: near a zero of (L u)_i the integrand is flat like exp(-1/θ²), not analytic
    th, w = _quadrature(0.0, 2 * np.pi, (pts[:-1, None] + np.diff(pts)[:, None] * np.linspace(0, 1, 17)).ravel())
    a = np.stack([np.cos(th), np.sin(th)], 1) @ L.T
    with np.errstate(divide="ignore", invalid="ignore"):
        r = c / a
    lo = np.maximum(np.where(a > 0, r, -np.inf).max(1), 0.0)
    hi = np.where(a < 0, r, np.inf).min(1)
    val = np.where(hi > lo, np.exp(-0.5 * lo ** 2) - np.exp(-0.5 * np.minimum(hi, 1e3) ** 2), 0.0)
    return float(min(max(w @ val / (2 * np.pi), 0.0), 1.0))


def _linear_router(router, where: str) -> LinearRouter:
    if not isinstance(router, LinearRouter):
        fail("router", where, "a LinearRouter (the closed form needs logits linear in x)", type(router).__name__,
             TypeError)
    return router


def _components(router, law, where: str) -> list[tuple[float, Gaussian]]:
    comps = gaussian_components(law, where)
    if router.d != law.d:
        fail("law", where, f"a law on R^{router.d} (the router's input dimension)", f"a law on R^{law.d}")
    return comps


def _logit_law(router: LinearRouter, comp: Gaussian) -> tuple[np.ndarray, np.ndarray]:
    M, C = linear_moments(router.weight, router.bias, comp)
    return _np(M), _np(C)


def _differences(K: int, order) -> np.ndarray:
    """Rows ``e_{order[r]} - e_{order[r+1]}``: consecutive differences along ``order``, shape ``(len-1, K)``."""
    E = np.zeros((len(order) - 1, K))
    for r in range(len(order) - 1):
        E[r, order[r]], E[r, order[r + 1]] = 1.0, -1.0
    return E


def _winner_differences(K: int, k: int) -> np.ndarray:
    """Rows ``e_k - e_j`` for ``j != k``, shape ``(K-1, K)``."""
    E = -np.eye(K)[[j for j in range(K) if j != k]]
    E[:, k] = 1.0
    return E


def boundary_mass_exact(router, law, widths, kind: str = "top2", *, abseps: float = _ABSEPS) -> np.ndarray:
    r"""Boundary-mass profile of a linear router under a Gaussian (mixture) law, without sampling.

    Binary router (3.11): with :math:`g = a_1 - a_2 \sim N(m_g, s^2)`,

    .. math:: \beta(w) = \Phi\Big(\frac{w - m_g}{s}\Big) - \Phi\Big(\frac{-w - m_g}{s}\Big).

    K experts [beyond]: the logits :math:`A = W X + b \sim N(M, C)`; :math:`\Delta > w` holds iff one
    expert leads every other by more than w, and at most one can, so

    .. math:: 1 - \beta(w) = \sum_{k=1}^K P\big(A_k - A_j > w\ \ \forall j \ne k\big),

    a sum of K orthant probabilities of (K−1)-dimensional Gaussians (:func:`orthant_probability`).
    Pairwise profile (2.14): :math:`\delta > w` iff the sorted logits are w-separated, and exactly one
    ordering σ of the experts is then strict, so

    .. math:: 1 - \beta_{pair}(w) = \sum_{\sigma \in S_K} P\big(A_{\sigma(r)} - A_{\sigma(r+1)} > w,\ r < K\big),

    K! orthant probabilities (K ≤ 6). Mixtures: the weighted sum over components. A singular C (e.g.
    the gauge :math:`\sum_k a_k = 0`, or d < K − 1) is handled (:func:`orthant_probability`).
    Accuracy: about 1e-14 for K ≤ 3 or logits of rank ≤ 2 (e.g. d ≤ 2); about ``abseps`` (1e-6) otherwise.

    Args:
        router: a :class:`~softhard.routers.LinearRouter` (weight ``(K, d)``).
        law: a :class:`~softhard.laws.Gaussian` or :class:`~softhard.laws.GaussianMixture` on ℝ^d.
        widths: widths ``w >= 0``, shape ``(W,)`` (or a float).
        kind: ``"top2"`` (β, (2.13)) or ``"pairwise"`` (β_pair, (2.14)).

    Returns:
        ``numpy`` array of shape ``(W,)``.
    """
    where = "boundary_mass_exact"
    router = _linear_router(router, where)
    comps = _components(router, law, where)
    w = _np(check_grid(widths, "widths", where, low=0.0))
    K = router.num_experts
    if kind not in ("top2", "pairwise"):
        fail("kind", where, "one of ('top2', 'pairwise')", kind)
    if kind == "pairwise" and K > _PAIRWISE_MAX_K:
        fail("kind", where, f"'top2' for K > {_PAIRWISE_MAX_K} experts (the pairwise form sums K! orthant "
             "probabilities)", kind)
    out = np.zeros_like(w)
    for weight, comp in comps:
        M, C = _logit_law(router, comp)
        if K == 2:
            out += weight * _binary_mass(float(M[0] - M[1]), math.sqrt(max(C[0, 0] + C[1, 1] - 2 * C[0, 1], 0.0)), w)
            continue
        rows = [_winner_differences(K, k) for k in range(K)] if kind == "top2" else [
            _differences(K, order) for order in itertools.permutations(range(K))]
        for i, wi in enumerate(w):
            out[i] += weight * (1.0 - sum(orthant_probability(E @ M, E @ C @ E.T, wi, abseps=abseps) for E in rows))
    return np.clip(out, 0.0, 1.0)


def _binary_mass(m_g: float, s: float, w: np.ndarray) -> np.ndarray:
    if s == 0.0:
        return (abs(m_g) <= w).astype(float)
    return special.ndtr((w - m_g) / s) - special.ndtr((-w - m_g) / s)


def interface_constant_exact(router, law, *, abseps: float = _ABSEPS) -> float:
    r"""The surface constant :math:`C_\Sigma = \sum_{i<j} \int_{\Gamma_{ij}} p/|\nabla g_{ij}|\, dH^{d-1}` [beyond].

    :math:`\Gamma_{ij}` is the part of the surface :math:`\{g_{ij} = 0\}` on which i and j are the top
    two, so :math:`\beta(w) = 2w\,C_\Sigma + o(w)` (Prop. 3.5; for K = 2, :math:`C_\Sigma = \psi(0)`,
    (3.14)). By the coarea formula, for a linear router and a Gaussian component,

    .. math:: \int_{\Gamma_{ij}} \frac{p}{|\nabla g_{ij}|}\, dH^{d-1}
              = \psi_{ij}(0)\; P\big(A_i - A_k > 0\ \ \forall k \ne i, j \;\big|\; g_{ij}(X) = 0\big),

    a (K−2)-dimensional orthant probability of the conditional Gaussian law (condition_on_score).
    Mixtures: the weighted sum over components.
    """
    where = "interface_constant_exact"
    router = _linear_router(router, where)
    comps = _components(router, law, where)
    K = router.num_experts
    total = 0.0
    for weight, comp in comps:
        for i, j in itertools.combinations(range(K), 2):
            v, c = pair_score(router, (i, j))
            m_g, s = score_law(v, c, comp)
            if s == 0.0:
                fail("router", where, "a router whose scores g_ij have non-degenerate laws (vᵀSv > 0)",
                     f"pair {(i, j)} with vᵀSv = 0")
            psi = math.exp(-0.5 * (m_g / s) ** 2) / (s * math.sqrt(2 * math.pi))
            if K > 2:
                M, C = _logit_law(router, condition_on_score(comp, v, c, 0.0))
                E = _winner_differences(K, i)[[r for r, k in enumerate(q for q in range(K) if q != i) if k != j]]
                psi *= orthant_probability(E @ M, E @ C @ E.T, 0.0, abseps=abseps)
            total += weight * psi
    return total


def flip_probability_exact(router, other, law, *, abseps: float = _ABSEPS) -> float:
    r"""Probability that two linear routers pick different hard winners (2.9) under a Gaussian (mixture) law.

    With logits :math:`A = W x + b`, :math:`A' = W' x + b'` (jointly Gaussian),

    .. math:: P(k^*(X) \ne k'^*(X)) = 1 - \sum_k P\big(A_k \succ A_j,\ A'_k \succ A'_j\ \ \forall j \ne k\big),

    a sum of K orthant probabilities of 2(K−1)-dimensional Gaussians, where :math:`\succ` is ``>`` for
    ``j < k`` and ``≥`` for ``j > k`` (the lowest index wins a tie; this matters only for logits that
    tie identically). Binary routers: bivariate normal probabilities (exact).
    """
    where = "flip_probability_exact"
    router = _linear_router(router, where)
    if not isinstance(other, LinearRouter):
        fail("other", where, "a LinearRouter (the closed form needs logits linear in x)", type(other).__name__,
             TypeError)
    if (other.num_experts, other.d) != (router.num_experts, router.d):
        fail("other", where, f"a LinearRouter with {router.num_experts} experts on R^{router.d} like router",
             f"{other.num_experts} experts on R^{other.d}")
    comps = _components(router, law, where)
    K = router.num_experts
    W = torch.cat([router.weight, other.weight.to(router.weight)])
    b = torch.cat([router.bias, other.bias.to(router.bias)])
    same = 0.0
    for weight, comp in comps:
        M, C = (_np(t) for t in linear_moments(W, b, comp))
        for k in range(K):
            E1 = _winner_differences(K, k)
            E = np.block([[E1, np.zeros_like(E1)], [np.zeros_like(E1), E1]])
            closed = np.tile([j > k for j in range(K) if j != k], 2)
            same += weight * orthant_probability(E @ M, E @ C @ E.T, 0.0, closed, abseps=abseps)
    return float(min(max(1.0 - same, 0.0), 1.0))


# ----------------------------------------------------------------------------------------------------
# Risks of a binary linear MoE with linear experts under a Gaussian law: one-dimensional quadrature
# ----------------------------------------------------------------------------------------------------

_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)
_TAIL_SD = 12.0  # the density of g is integrated over m_g ± 12 s (the mass left out is below 1e-32)
_TAIL_TAU = 64.0  # the gap integrand carries e(t/τ) = O(exp(-|t|/τ)): cut at |t| = 64 τ (e^-64 < 1e-27)
_LN2 = math.log(2.0)


def _quadrature(lo: float, hi: float, breaks) -> tuple[np.ndarray, np.ndarray]:
    """Composite 24-point Gauss–Legendre nodes and weights on [lo, hi], split at ``breaks``."""
    pts = np.unique(np.clip(np.concatenate([[lo, hi], np.asarray(breaks, float)]), lo, hi))
    half, mid = (pts[1:] - pts[:-1]) / 2, (pts[1:] + pts[:-1]) / 2
    return (mid[:, None] + half[:, None] * _GL_X).ravel(), (half[:, None] * _GL_W).ravel()


def _binary_linear(moe, where: str, param: str):
    """``(g, h_1, h_2)`` of a binary linear MoE with linear experts, each an affine map ``(u (d,), u_0)``."""
    from .experts import LinearExperts
    from .moe import MoE

    if not isinstance(moe, MoE):
        fail(param, where, "a softhard MoE", type(moe).__name__, TypeError)
    if not isinstance(moe.router, LinearRouter) or not isinstance(moe.experts, LinearExperts):
        fail(param, where, "an MoE with a LinearRouter and LinearExperts (the closed form needs linear maps)",
             f"{type(moe.router).__name__} with {type(moe.experts).__name__}", TypeError)
    if moe.num_experts != 2:
        fail(param, where, "a binary MoE (K = 2 experts; the closed form integrates over the one score g)",
             f"K = {moe.num_experts}")
    v, c = pair_score(moe.router, (0, 1))
    W, b = _np(moe.experts.weight), _np(moe.experts.bias)
    return (_np(v), float(c)), (W[0], float(b[0])), (W[1], float(b[1]))


def _teacher_model(teacher, moe, where: str):
    """The teacher as ``((g*, h*_1, h*_2), noise_std)``; ``None`` is the hard-routed ``moe`` itself."""
    from .moe import HardTeacher, MoE

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


class _Slice:
    r"""One Gaussian component seen through the student score: :math:`X \mid g(X) = t` for t on a grid.

    Given :math:`g = t`, X is Gaussian with mean affine in t and a fixed covariance (condition_on_score),
    so every conditional moment needed below is a closed form in t.
    """

    def __init__(self, comp: Gaussian, student, teacher):
        (v, c), h1, h2 = student
        (self.G, t1, t2) = teacher
        self.m, self.S = _np(comp.mean), _np(comp.cov)
        self.m_g = float(v @ self.m) + c
        self.s2 = float(v @ self.S @ v)
        self.s = math.sqrt(self.s2)
        self.Sv = self.S @ v
        self.Sc = self.S - np.outer(self.Sv, self.Sv) / self.s2
        # the teacher score's direction with its g-component removed (S-orthogonally), so that
        # Var(g* | g) = Gpᵀ S Gp and Cov(f, g* | g) = fᵀ S Gp are 0 to rounding for a teacher parallel to g
        Gp = self.G[0] - float(self.G[0] @ self.Sv) / self.s2 * v
        self.SGp = self.S @ Gp
        self.varG = max(float(Gp @ self.SGp), 0.0)
        self.D = _diff(h1, h2)  # student contrast D = h_1 - h_2
        self.Dt = _diff(t1, t2)  # teacher contrast D* = h*_1 - h*_2
        self.W = _diff(t2, h2)  # h*_2 - h_2

    def psi(self, t):
        """Density of g(X) at t."""
        return np.exp(-0.5 * ((t - self.m_g) / self.s) ** 2) / (self.s * math.sqrt(2 * math.pi))

    def _mean(self, f):
        """``(a, b)`` with E[f(X) | g = t] = a + b t."""
        b = float(f[0] @ self.Sv) / self.s2
        return float(f[0] @ self.m) + f[1] - b * self.m_g, b

    def _cov(self, f1, f2) -> float:
        return float(f1[0] @ self.Sc @ f2[0])

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
        sG2 = self.varG
        if sG2 <= 1e-20 * float(self.G[0] @ self.S @ self.G[0]):  # g* is a function of g on this component
            if side and abs(aG) <= 1e-12 * max(1.0, abs(self.G[1]), float(np.abs(self.G[0]).sum())):
                ind = np.asarray(bG * side > 0 if bG != 0 else True)
            else:
                ind = mu >= 0
            return self.prod(f1, f2, t) * ind
        sG = math.sqrt(sG2)
        z = mu / sG
        P, ph = special.ndtr(z), np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        (a1, b1), (a2, b2) = self._mean(f1), self._mean(f2)
        al1, al2 = a1 + b1 * t, a2 + b2 * t
        c1, c2 = float(f1[0] @ self.SGp), float(f2[0] @ self.SGp)
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

    def _breaks(self):
        return np.concatenate([[0.0], self.m_g + self.s * np.arange(-_TAIL_SD, _TAIL_SD + 1), self.teacher_breaks()])

    def hard_risk(self) -> float:
        r""":math:`E[(f^* - f_0)^2] = \int \psi(t)\,(Q - 2\cdot 1\{t \ge 0\} M + 1\{t \ge 0\} B)(t)\,dt`."""
        t, w = _quadrature(self.m_g - _TAIL_SD * self.s, self.m_g + _TAIL_SD * self.s, self._breaks())
        on = (t >= 0).astype(float)
        return float(w @ (self.psi(t) * (self.Q(t) - 2 * on * self.M(t) + on * self.B(t))))

    def gap(self, tau: float) -> float:
        r""":math:`L_\tau - L_0 = \int \psi(t)\, e(t/\tau)\,[2M(t) - (1\{t \ge 0\} + \sigma(t/\tau)) B(t)]\,dt`."""
        lo = max(self.m_g - _TAIL_SD * self.s, -_TAIL_TAU * tau)
        hi = min(self.m_g + _TAIL_SD * self.s, _TAIL_TAU * tau)
        if lo >= hi:
            return 0.0
        layer = tau * 2.0 ** np.arange(7)
        t, w = _quadrature(lo, hi, np.concatenate([self._breaks(), layer, -layer]))
        u = t / tau
        on = (t >= 0).astype(float)
        e = np.where(on > 0, special.expit(-u), -special.expit(u))
        return float(w @ (self.psi(t) * e * (2 * self.M(t) - (on + special.expit(u)) * self.B(t))))

    def slope(self) -> float:
        r"""Contribution to :math:`G_1`: :math:`\psi(0)\,[2\ln 2\,(M(0^+) - M(0^-)) - B(0)]`."""
        jump = float(self.M(0.0, +1) - self.M(0.0, -1))
        return float(self.psi(0.0)) * (2 * _LN2 * jump - float(self.B(0.0)))


def _slices(moe, law, teacher, where: str) -> tuple[list[tuple[float, _Slice]], float]:
    student = _binary_linear(moe, where, "moe")
    model, noise = _teacher_model(teacher, moe, where)
    comps = gaussian_components(law, where)
    for f, name in ((student[0], "moe"), (model[0], "teacher")):
        if f[0].shape[0] != law.d:
            fail("law", where, f"a law on R^{f[0].shape[0]} (the {name}'s input dimension)", f"a law on R^{law.d}")
    out = []
    for w, comp in comps:
        if score_law(torch.as_tensor(student[0][0]), student[0][1], comp)[1] == 0.0:
            fail("moe", where, "a router whose score g has a non-degenerate law (vᵀSv > 0)", "vᵀSv = 0")
        out.append((w, _Slice(comp, student, model)))
    return out, noise


def is_binary_linear_gaussian(moe, law, teacher=None) -> bool:
    """Whether :func:`risk_exact`, :func:`risk_gap_exact` and :func:`gap_slope_exact` apply."""
    from .experts import LinearExperts
    from .moe import HardTeacher, MoE

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
    plus noise of variance :math:`\sigma_\xi^2`. Conditioning on :math:`g = t` (condition_on_score),

    .. math:: L_0 = \int \psi(t)\,E[(f^* - f_0)^2 \mid g = t]\,dt + \sigma_\xi^2, \qquad
              L_\tau - L_0 = \int \psi(t)\, e(t/\tau)\, E\big[D\,(2f^* - f_\tau - f_0) \mid g = t\big]\,dt,

    with :math:`e(u) = 1\{u \ge 0\} - \sigma(u)`, ψ the density of g(X) (3.8) and the conditional
    moments closed forms in t (Gaussian moments, half-space truncated where the teacher's step is not a
    function of g). The gap integral is cut to :math:`|t| \le 64\tau` and split at 0 and at
    :math:`\pm\tau 2^k`, so it is accurate (relative 1e-12 or better) for τ down to 1e-4 and below.
    Mixtures: weighted sums over components.

    Args:
        moe: MoE with a binary LinearRouter and LinearExperts; law: Gaussian or GaussianMixture;
        taus: temperatures, shape ``(T,)``; teacher: None, an MoE or a HardTeacher of one.

    Returns:
        ``(L_tau (T,), L_0)``.
    """
    where = "risk_exact"
    t = _np(check_grid(taus, "taus", where, low=0.0, low_open=True))
    slices, noise = _slices(moe, law, teacher, where)
    L0 = sum(w * s.hard_risk() for w, s in slices) + noise ** 2
    return L0 + np.array([sum(w * s.gap(tau) for w, s in slices) for tau in t]), float(L0)


def risk_gap_exact(moe, law, taus, teacher=None) -> np.ndarray:
    r"""The soft–hard gap :math:`L_\tau - L_0` on a grid of temperatures, exactly (see :func:`risk_exact`).

    .. math:: L_\tau - L_0 = E\big[(f_0 - f_\tau)(2f^* - f_\tau - f_0)\big]
              = \int \psi(t)\, e(t/\tau)\,\big[2M(t) - (1\{t \ge 0\} + \sigma(t/\tau)) B(t)\big]\,dt

    with :math:`B(t) = E[D^2 \mid g=t]`, :math:`M(t) = E[D(f^* - h_2) \mid g=t]`; the noise cancels.

    Returns:
        ``numpy`` array of shape ``(T,)``.
    """
    where = "risk_gap_exact"
    t = _np(check_grid(taus, "taus", where, low=0.0, low_open=True))
    slices, _ = _slices(moe, law, teacher, where)
    return np.array([sum(w * s.gap(tau) for w, s in slices) for tau in t])


def gap_slope_exact(moe, law, teacher=None) -> float:
    r"""First-order constant :math:`G_1` of :math:`L_\tau - L_0 = G_1\tau + o(\tau)` (paper.md §3 [beyond]).

    Binary linear MoE, Gaussian (mixture) law, teacher a hard binary linear MoE (``None``: ``moe``);
    derivation in ``docs/first_order_gap.md``:

    .. math:: G_1 = \sum_c \omega_c\, \psi_c(0)\,\big[2\ln 2\,(M_c(0^+) - M_c(0^-)) - B_c(0)\big]
              = \int_\Sigma \frac{p}{|\nabla g|}\Big[(2\ln2 - 1)D^2 + 2\ln 2\,\big(D(f^*_+ - h_1)
              - D(f^*_- - h_2)\big)\Big] dH^{d-1}.

    Realizable (``teacher=None``): :math:`G_1 = (2\ln 2 - 1)\,\psi(0)\,E[D^2 \mid g = 0]`; a teacher
    continuous across Σ: :math:`G_1 = -\psi(0)\,E[D^2 \mid g = 0]`.
    """
    slices, _ = _slices(moe, law, teacher, "gap_slope_exact")
    return float(sum(w * s.slope() for w, s in slices))


# ----------------------------------------------------------------------------------------------------
# The two-expert Gaussian model of §6 (softhard.symmetry): moments derived in docs/symmetry.md
# ----------------------------------------------------------------------------------------------------

def sign_moments(sigma_u: float) -> tuple[float, float]:
    r""":math:`(E|T|, E|T|^3) = (\sigma_u\sqrt{2/\pi},\ 2\sigma_u^3\sqrt{2/\pi})`, :math:`T \sim N(0, \sigma_u^2)`."""
    return sigma_u * math.sqrt(2.0 / math.pi), 2.0 * sigma_u ** 3 * math.sqrt(2.0 / math.pi)


def split_on_score(cov: torch.Tensor, u: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    r"""``(σ_u, k, C_R)`` with :math:`X = kT + R`, :math:`T = u\cdot X`, :math:`k = \Sigma u/\sigma_u^2`,
    :math:`C_R = \mathrm{Cov}\,R = \Sigma - \Sigma u u^\top\Sigma/\sigma_u^2` (R independent of T)."""
    su = cov @ u
    var = float(u @ su)
    return math.sqrt(var), su / var, cov - torch.outer(su, su) / var


def drift_at_balance(cov, u, c, w1, w2, tau) -> torch.Tensor:
    r""":math:`\nabla L(0) = -\frac{1}{4\tau}E[\mathrm{sign}(T)(c\cdot X)(\delta\cdot X)X]` in closed form:

    .. math:: E[\mathrm{sign}(T)(c\cdot X)(\delta\cdot X)X] = E|T|^3 (c\cdot k)(\delta\cdot k)k
              + E|T|\,[(c\cdot k)C_R\delta + (\delta\cdot k)C_R c + (c^\top C_R\delta)k].
    """
    s_u, k, CR = split_on_score(cov, u)
    m1, m3 = sign_moments(s_u)
    delta = w1 - w2
    ck, dk = float(c @ k), float(delta @ k)
    third = m3 * ck * dk * k + m1 * (ck * (CR @ delta) + dk * (CR @ c) + float(c @ CR @ delta) * k)
    return -third / (4.0 * tau)


def hessian_at_balance(cov, delta, tau) -> torch.Tensor:
    r""":math:`\nabla^2 L(0) = \frac{1}{8\tau^2}E[(\delta\cdot X)^2XX^\top]
    = \frac{1}{8\tau^2}[(\delta^\top\Sigma\delta)\Sigma + 2\Sigma\delta\delta^\top\Sigma]` (Isserlis)."""
    sd = cov @ delta
    return (float(delta @ sd) * cov + 2.0 * torch.outer(sd, sd)) / (8.0 * tau ** 2)


def reduced_closed_form(cov, u, m1: float, m3: float, tau: float) -> torch.Tensor:
    r"""Lemma 6.1 in matrix form: :math:`M = \frac{1}{2\tau}[E[T^3 r(T)]\,kk^\top + E[T r(T)]\,C_R]`."""
    _, k, CR = split_on_score(cov, u)
    return (m3 * torch.outer(k, k) + m1 * CR) / (2.0 * tau)


# ------------------------------------------------------------------------------------------------
# Gaussian moments over polyhedra (used by the exact shape derivative, softhard.shape).
#
# For X = m + L z, z ~ N(0, I_r) (L may be rank deficient, e.g. a law conditioned on a hyperplane)
# and a region {A x + α > 0}, we compute T = E[x̃⊗x̃⊗x̃ 1_region], x̃ = (x, 1), shape (d+1,)*3; it holds
# every moment up to order 3 (T[..., d] the second, T[:, d, d] the first, T[d, d, d] the mass).
# In z the constraints read (A L) z + (A m + α) > 0; their normals span q <= 2 directions Q (else we
# refuse), z = Q u + P w with w ⟂ u independent, so only the q-dimensional u is truncated:
#   q = 1: an interval, ∫ t^k φ(t) dt = [-t^{k-1} φ]_lo^hi + (k-1) ∫ t^{k-2} φ   (closed form);
#   q = 2: a polygon, in a rotated frame (v_1, v_2) in which no edge is close to parallel to the v_2
#          axis: the inner integral over v_2 is the interval closed form between the piecewise-linear
#          bounds lo(v_1), hi(v_1); the outer one is Gauss–Legendre on pieces of length <= 1/2
#          between the vertices' v_1 (analytic there), over |v_1| <= 10 (tail mass < 1e-22).
# The w-part contributes E[w w^T] = I to the terms with two w factors (odd ones vanish).
# ------------------------------------------------------------------------------------------------

_SQRT2PI = math.sqrt(2 * math.pi)
_GL16_X, _GL16_W = np.polynomial.legendre.leggauss(16)


class SpanError(ValueError):
    """The constraints' normals span more than two directions (no exact polyhedral moments)."""


def _phi(t):
    return np.exp(-0.5 * t * t) / _SQRT2PI


def interval_moments(lo, hi) -> np.ndarray:
    r""":math:`\int_{lo}^{hi} t^k \varphi(t)\,dt`, k = 0..3, shape ``(..., 4)``, for ``lo < hi`` (ends may be ±inf)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    fl, fh = np.isfinite(lo), np.isfinite(hi)
    tl, th = np.where(fl, lo, 0.0), np.where(fh, hi, 0.0)
    pl, ph = np.where(fl, _phi(tl), 0.0), np.where(fh, _phi(th), 0.0)
    m0 = np.where(lo > 0, special.ndtr(-lo) - special.ndtr(-hi), special.ndtr(hi) - special.ndtr(lo))
    m1 = pl - ph
    return np.stack([m0, m1, m0 + tl * pl - th * ph, 2 * m1 + tl * tl * pl - th * th * ph], -1)


def _powers(q: int) -> tuple[np.ndarray, ...]:
    """For ũ = (u_1..u_q, 1): how many factors of each entry of ũ⊗ũ⊗ũ are u_1, ..., u_q."""
    idx = np.indices((q + 1,) * 3)
    return tuple((idx == c).sum(0) for c in range(q))


_ROTATIONS = np.linspace(0.0, math.pi, 90, endpoint=False)


def _polygon_moments(A: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """E[ũ⊗ũ⊗ũ 1{A u + α > 0}], u ~ N(0, I_2), ũ = (u, 1); ``A (m, 2)`` with unit rows."""
    # frame u = R v whose v_2 axis is as far as possible from every edge direction
    c, s = np.cos(_ROTATIONS), np.sin(_ROTATIONS)
    best = np.argmax(np.min(np.abs(A[:, [0]] * -s + A[:, [1]] * c), axis=0))
    R = np.array([[c[best], -s[best]], [s[best], c[best]]])
    Av = A @ R
    brk = [-10.0, 10.0]
    for i in range(len(Av)):
        for j in range(i + 1, len(Av)):
            M = Av[[i, j]]
            if abs(np.linalg.det(M)) > 1e-13:
                brk.append(np.linalg.solve(M, -alpha[[i, j]])[0])
    edges = np.unique(np.clip(brk, -10.0, 10.0))
    pieces = [np.linspace(a, b, int(math.ceil((b - a) / 0.5)) + 1) for a, b in zip(edges[:-1], edges[1:])]
    grid = np.unique(np.concatenate(pieces))
    a, b = grid[:-1], grid[1:]
    v1 = ((0.5 * (b - a))[:, None] * _GL16_X + (0.5 * (a + b))[:, None]).ravel()
    w = ((0.5 * (b - a))[:, None] * _GL16_W).ravel() * _phi(v1)
    with np.errstate(divide="ignore"):
        bound = (-alpha - np.outer(v1, Av[:, 0])) / Av[:, 1]
    lo = np.max(np.where(Av[:, 1] > 0, bound, -np.inf), axis=1)
    hi = np.min(np.where(Av[:, 1] < 0, bound, np.inf), axis=1)
    ok = hi > lo
    mk = interval_moments(np.where(ok, lo, 0.0), np.where(ok, hi, 1.0)) * ok[:, None]
    p1, p2 = _powers(2)
    Tv = np.einsum("n,nabc->abc", w, v1[:, None, None, None] ** p1 * mk[:, p2])
    Rb = np.eye(3)
    Rb[:2, :2] = R
    return np.einsum("ia,jb,kc,abc->ijk", Rb, Rb, Rb, Tv)


def region_moments(mean: np.ndarray, L: np.ndarray, A: np.ndarray, alpha: np.ndarray,
                    tie: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """T = E[x̃⊗x̃⊗x̃ 1{A x + α > 0}] for x = mean + L z; also whether a tie rule decided a constraint.

    A constraint that is constant on the support (its normal is killed by L) holds if its value is
    positive; if the value is zero (an interface coinciding with the support's hyperplane) it holds iff
    ``tie > 0`` for that row.
    """
    d, r = L.shape
    Az, off = A @ L, A @ mean + alpha
    size = np.linalg.norm(A, axis=1) * max(np.linalg.norm(L, 2), 1e-300)
    const = np.linalg.norm(Az, axis=1) <= 1e-11 * np.maximum(size, 1e-300)
    scale = np.linalg.norm(A, axis=1) * (np.linalg.norm(mean) + np.linalg.norm(L, 2)) + np.abs(alpha)
    zero = const & (np.abs(off) <= 1e-11 * np.maximum(scale, 1e-300))
    tied = bool(zero.any())
    holds = np.where(zero, (tie if tie is not None else -np.ones(len(A))) > 0, off > 0)
    if np.any(const & ~holds):
        return np.zeros((d + 1,) * 3), tied
    Az, off = Az[~const], off[~const]
    nrm = np.linalg.norm(Az, axis=1)
    Az, off = Az / nrm[:, None], off / nrm
    if len(Az):
        _, sv, Vt = np.linalg.svd(Az)
        q = int((sv > 1e-9 * sv[0]).sum())
    else:
        Vt, q = np.eye(r), 0
    if q > 2:
        raise SpanError(q)
    Q, P = Vt[:q].T, Vt[q:].T
    Au = Az @ Q
    if q == 0:
        Tu = np.ones((1, 1, 1))
    elif q == 1:
        t = Au[:, 0]
        lo = max([-o / c for c, o in zip(t, off) if c > 0], default=-np.inf)
        hi = min([-o / c for c, o in zip(t, off) if c < 0], default=np.inf)
        Tu = interval_moments(lo, hi)[_powers(1)[0]] if hi > lo else np.zeros((2, 2, 2))
    else:
        Tu = _polygon_moments(Au, off)
    B = np.zeros((r + 1, q + 1))
    B[:r, :q], B[r, q] = Q, 1.0
    C = np.zeros((r + 1, r - q))
    C[:r] = P
    CC, v1 = C @ C.T, B @ Tu[:, q, q]
    Tz = (np.einsum("ia,jb,kc,abc->ijk", B, B, B, Tu) + np.einsum("i,jk->ijk", v1, CC)
          + np.einsum("j,ik->ijk", v1, CC) + np.einsum("k,ij->ijk", v1, CC))
    G = np.zeros((d + 1, r + 1))
    G[:d, :r], G[:d, r], G[d, r] = L, mean, 1.0
    return np.einsum("ia,jb,kc,abc->ijk", G, G, G, Tz), tied
