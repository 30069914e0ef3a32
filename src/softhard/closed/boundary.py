r"""Boundary closed forms of a linear router under a Gaussian (mixture) law: the coarea constant
ψ_ij(0) (3.14), the boundary-mass profiles β and β_pair (3.11 and its K-expert extension [beyond]), the
surface constant C_Σ of Prop. 3.5, and flip probabilities between two routers.

Derivations: ``docs/gaussian_closed_forms.md``. Each is checked against Monte Carlo in the tests.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from .._validate import check_float, check_grid, fail
from ..model.laws import Gaussian
from ..model.routers import LinearRouter, check_pair
from .normal import (ABSEPS, gauss_legendre, gaussian_components, interval_mass, linear_moments,
                     orthant_probability, orthant_with_bound, phi, score_law, to_numpy)

__all__ = ["PAIRWISE_MAX_K", "COAREA_FORM_WIDTH", "pair_score", "pair_density_at_zero", "pair_density",
           "boundary_mass_exact",
           "boundary_mass_closed", "min_pair_sd", "interface_constant_exact", "interface_constant_closed",
           "flip_probability_exact"]


def pair_score(router: LinearRouter, pair=(0, 1)) -> tuple[torch.Tensor, float]:
    r"""The linear score :math:`g_{ij}(x) = v\cdot x + c` of a linear router: ``(v (d,), c)`` (3.1)."""
    if not isinstance(router, LinearRouter):
        fail("router", "pair_score", "a LinearRouter for a closed form", type(router).__name__, TypeError)
    i, j = check_pair(pair, router.num_experts, "pair_score")
    return router.weight[i] - router.weight[j], float(router.bias[i] - router.bias[j])


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
        total += w * float(phi(m_g / s)) / s
    return total


def pair_density(router: LinearRouter, law, levels, pair=(0, 1)) -> np.ndarray:
    r"""Level-set profile :math:`\psi_{ij}(s)` (3.8), exact, on a grid of levels s: the density of
    :math:`g_{ij}(X)` at s (coarea formula, Lemma 3.6),

    .. math:: \psi_{ij}(s) = \int_{\{g_{ij} = s\}} \frac{p}{|\nabla g_{ij}|}\,dH^{d-1}
              = \sum_c \omega_c\, \varphi\big((s - m_{g,c})/s_c\big)/s_c

    for a linear router and a Gaussian (mixture) law (:math:`\psi_{ij}(0)` is :func:`pair_density_at_zero`).
    ``levels`` shape ``(S,)``; returns ``(S,)``.
    """
    v, c = pair_score(router, pair)
    t = to_numpy(levels).reshape(-1)
    total = np.zeros_like(t)
    for w, comp in gaussian_components(law, "pair_density"):
        m_g, s = score_law(v.detach(), c, comp)
        if s == 0.0:
            fail("router", "pair_density", "a score g_ij with non-degenerate law (vᵀSv > 0)", "vᵀSv = 0")
        total += w * phi((t - m_g) / s) / s
    return total


PAIRWISE_MAX_K = 6  # kind="pairwise" sums K! orthant probabilities


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
    return to_numpy(M), to_numpy(C)


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


def boundary_mass_exact(router, law, widths, kind: str = "top2", *, abseps: float = ABSEPS) -> np.ndarray:
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
    Small widths [beyond]: the complement form loses β(w) ≈ 2wC_Σ to the absolute error of Genz's algorithm
    (about ``abseps`` per orthant), so for K ≥ 3 and :math:`w \le w_c` (:data:`COAREA_FORM_WIDTH` times the
    smallest standard deviation of a score difference) the coarea form is used instead, which has no
    cancellation:

    .. math:: \beta(w) = \sum_{i<j} \int_{-w}^{w} \psi_{ij}(t)\,
              P\big(A_k < \min(A_i, A_j)\ \ \forall k \ne i, j \;\big|\; g_{ij}(X) = t\big)\,dt,

    by 8-point Gauss–Legendre in t (the integrand is analytic on a scale of the score's standard deviation,
    so the rule is exact to rounding for such w); each conditional probability is a (K−2)-dimensional orthant
    probability of the conditional Gaussian law. The absolute error of either form is bounded by
    :func:`boundary_mass_closed` (0 where no Genz integration is involved).
    Accuracy: about 1e-14 for K ≤ 3 or logits of rank ≤ 2 (e.g. d ≤ 2); otherwise about ``abseps`` (1e-6)
    absolutely (complement form) or relatively (coarea form).

    Args:
        router: a :class:`~softhard.model.routers.LinearRouter` (weight ``(K, d)``).
        law: a :class:`~softhard.model.laws.Gaussian` or :class:`~softhard.model.laws.GaussianMixture` on ℝ^d.
        widths: widths ``w >= 0``, shape ``(W,)`` (or a float).
        kind: ``"top2"`` (β, (2.13)) or ``"pairwise"`` (β_pair, (2.14)).

    Returns:
        ``numpy`` array of shape ``(W,)``.
    """
    return boundary_mass_closed(router, law, widths, kind, abseps, "boundary_mass_exact")[0]


COAREA_FORM_WIDTH = 0.05  # w below this times the smallest score sd: β by the coarea form (no cancellation)


def boundary_mass_closed(router, law, widths, kind: str = "top2", abseps: float = ABSEPS,
                         where: str = "boundary_mass_exact") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(β (W,), absolute error bounds (W,), form per width)`` of :func:`boundary_mass_exact`."""
    router = _linear_router(router, where)
    comps = _components(router, law, where)
    w = to_numpy(check_grid(widths, "widths", where, low=0.0))
    abseps = check_float(abseps, "abseps", where, 0.0, 0.1, high_open=False)
    K = router.num_experts
    if kind not in ("top2", "pairwise"):
        fail("kind", where, "one of ('top2', 'pairwise')", kind)
    if kind == "pairwise" and K > PAIRWISE_MAX_K:
        fail("kind", where, f"'top2' for K > {PAIRWISE_MAX_K} experts (the pairwise form sums K! orthant "
             "probabilities)", kind)
    out, bound = np.zeros_like(w), np.zeros_like(w)
    forms = ["binary (3.11)" if K == 2 else "complement"] * len(w)
    for weight, comp in comps:
        M, C = _logit_law(router, comp)
        if K == 2:
            out += weight * _binary_mass(float(M[0] - M[1]), math.sqrt(max(C[0, 0] + C[1, 1] - 2 * C[0, 1], 0.0)), w)
            continue
        rows = [_winner_differences(K, k) for k in range(K)] if kind == "top2" else [
            _differences(K, order) for order in itertools.permutations(range(K))]
        pair_sd = min_pair_sd(C)
        for q, wq in enumerate(w):
            if kind == "top2" and 0.0 < wq <= COAREA_FORM_WIDTH * pair_sd:
                v, e = _coarea_form(M, C, float(wq), abseps, where)
                forms[q] = "coarea"
            else:
                parts = [orthant_with_bound(E @ M, E @ C @ E.T, wq, abseps=abseps, where=where) for E in rows]
                v, e = 1.0 - sum(p for p, _ in parts), sum(err for _, err in parts)
            out[q] += weight * v
            bound[q] += weight * e
    return np.clip(out, 0.0, 1.0), bound, forms


def _pair_slices(M: np.ndarray, C: np.ndarray, where: str):
    r"""For each pair (i, j) of logits ``A ~ N(M, C)``: ``(m_g, s, law_at)`` with :math:`g_{ij} = A_i - A_j \sim
    N(m_g, s^2)` and ``law_at(t) -> (E M_t, E C_t Eᵀ)``, the law of :math:`\min(A_i, A_j) - A_k` (k ∉ {i, j})
    given :math:`g_{ij} = t`, from :math:`A \mid g = t \sim N(M + Cv(t - m_g)/s^2,\ C - Cvv^\top C/s^2)`."""
    K = len(M)
    for i, j in itertools.combinations(range(K), 2):
        v = np.zeros(K)
        v[i], v[j] = 1.0, -1.0
        Cv = C @ v
        m_g, s2 = float(v @ M), float(v @ Cv)
        if not s2 > 0.0:
            fail("router", where, "a router whose score differences g_ij have non-degenerate laws (vᵀSv > 0)",
                 f"pair {(i, j)} with vᵀSv = 0")
        Cc = C - np.outer(Cv, Cv) / s2
        others = [k for k in range(K) if k not in (i, j)]

        def law_at(t, Cv=Cv, Cc=Cc, m_g=m_g, s2=s2, i=i, j=j, others=others):
            E = np.zeros((len(others), K))
            E[:, j if t >= 0 else i] = 1.0  # the smaller of A_i, A_j given A_i - A_j = t
            E[np.arange(len(others)), others] = -1.0
            return E @ (M + Cv * (t - m_g) / s2), E @ Cc @ E.T

        yield m_g, math.sqrt(s2), law_at


def _conditional_abseps(M, C, scale: float, abseps: float) -> float:
    """Absolute accuracy asked of each conditional orthant probability so that, weighted by a total mass
    ``scale`` of the densities, the sum stays within ``abseps`` (at most 1e-4, at least ``abseps``)."""
    return float(min(1e-4, max(abseps, abseps / max(scale, 1e-300))))


def min_pair_sd(C) -> float:
    """The smallest standard deviation of a score difference :math:`a_i - a_j` for logits of covariance ``C (K, K)``
    (the scale below which :func:`boundary_mass_exact` takes the coarea form)."""
    C = to_numpy(C)
    pairs = itertools.combinations(range(len(C)), 2)
    return min(math.sqrt(max(C[i, i] + C[j, j] - 2 * C[i, j], 0.0)) for i, j in pairs)


def _coarea_form(M: np.ndarray, C: np.ndarray, w: float, abseps: float, where: str) -> tuple[float, float]:
    """β(w) of one Gaussian component with logits ``A ~ N(M, C)`` by the coarea form (see
    :func:`boundary_mass_exact`) and its absolute error bound."""
    x, gw = gauss_legendre(8)
    pairs = list(_pair_slices(M, C, where))
    scale = sum(2 * w * float(phi(m_g / s)) / s for m_g, s, _ in pairs) * 1.5
    eps = _conditional_abseps(M, C, scale, abseps)
    total, err = 0.0, 0.0
    for m_g, s, law_at in pairs:
        for tk, wk in zip(w * x, w * gw):
            p, e = orthant_with_bound(*law_at(float(tk)), 0.0, abseps=eps) if len(M) > 2 else (1.0, 0.0)
            dens = wk * float(phi((tk - m_g) / s)) / s
            total += dens * p
            err += dens * e
    return total, err


def interface_constant_closed(router, law, abseps: float = ABSEPS,
                              where: str = "interface_constant_exact") -> tuple[float, float]:
    """``(C_Σ, absolute error bound)`` of :func:`interface_constant_exact`."""
    router = _linear_router(router, where)
    comps = _components(router, law, where)
    abseps = check_float(abseps, "abseps", where, 0.0, 0.1, high_open=False)
    total, err = 0.0, 0.0
    for weight, comp in comps:
        M, C = _logit_law(router, comp)
        pairs = list(_pair_slices(M, C, where))
        psis = [float(phi(m_g / s)) / s for m_g, s, _ in pairs]
        eps = _conditional_abseps(M, C, sum(psis), abseps)
        for psi, (_, _, law_at) in zip(psis, pairs):
            p, e = orthant_with_bound(*law_at(0.0), 0.0, abseps=eps) if len(M) > 2 else (1.0, 0.0)
            total += weight * psi * p
            err += weight * psi * e
    return total, err


def _binary_mass(m_g: float, s: float, w: np.ndarray) -> np.ndarray:
    if s == 0.0:
        return (abs(m_g) <= w).astype(float)
    return interval_mass((-w - m_g) / s, (w - m_g) / s)


def interface_constant_exact(router, law, *, abseps: float = ABSEPS) -> float:
    r"""The surface constant :math:`C_\Sigma = \sum_{i<j} \int_{\Gamma_{ij}} p/|\nabla g_{ij}|\, dH^{d-1}` [beyond].

    :math:`\Gamma_{ij}` is the part of the surface :math:`\{g_{ij} = 0\}` on which i and j are the top
    two, so :math:`\beta(w) = 2w\,C_\Sigma + o(w)` (Prop. 3.5; for K = 2, :math:`C_\Sigma = \psi(0)`,
    (3.14)). By the coarea formula, for a linear router and a Gaussian component,

    .. math:: \int_{\Gamma_{ij}} \frac{p}{|\nabla g_{ij}|}\, dH^{d-1}
              = \psi_{ij}(0)\; P\big(A_i - A_k > 0\ \ \forall k \ne i, j \;\big|\; g_{ij}(X) = 0\big),

    a (K−2)-dimensional orthant probability of the conditional Gaussian law, computed in logit space
    (:math:`A \mid g_{ij} = 0`). Mixtures: the weighted sum over components. Each conditional orthant is asked
    for the accuracy that keeps the total within ``abseps`` (:func:`interface_constant_closed` returns the
    bound).
    """
    return interface_constant_closed(router, law, abseps)[0]


def flip_probability_exact(router, other, law, *, abseps: float = ABSEPS) -> float:
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
        M, C = (to_numpy(t) for t in linear_moments(W, b, comp))
        for k in range(K):
            E1 = _winner_differences(K, k)
            E = np.block([[E1, np.zeros_like(E1)], [np.zeros_like(E1), E1]])
            closed = np.tile([j > k for j in range(K) if j != k], 2)
            same += weight * orthant_probability(E @ M, E @ C @ E.T, 0.0, closed, abseps=abseps)
    return float(min(max(1.0 - same, 0.0), 1.0))
