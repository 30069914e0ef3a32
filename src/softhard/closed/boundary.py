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

from .._validate import check_grid, fail
from ..model.laws import Gaussian
from ..model.routers import LinearRouter, check_pair
from .normal import (
    ABSEPS,
    condition_on_score,
    gaussian_components,
    interval_mass,
    linear_moments,
    orthant_probability,
    phi,
    score_law,
    to_numpy,
)

__all__ = ["PAIRWISE_MAX_K", "pair_score", "pair_density_at_zero", "boundary_mass_exact", "interface_constant_exact",
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
    Accuracy: about 1e-14 for K ≤ 3 or logits of rank ≤ 2 (e.g. d ≤ 2); about ``abseps`` (1e-6) otherwise.

    Args:
        router: a :class:`~softhard.model.routers.LinearRouter` (weight ``(K, d)``).
        law: a :class:`~softhard.model.laws.Gaussian` or :class:`~softhard.model.laws.GaussianMixture` on ℝ^d.
        widths: widths ``w >= 0``, shape ``(W,)`` (or a float).
        kind: ``"top2"`` (β, (2.13)) or ``"pairwise"`` (β_pair, (2.14)).

    Returns:
        ``numpy`` array of shape ``(W,)``.
    """
    where = "boundary_mass_exact"
    router = _linear_router(router, where)
    comps = _components(router, law, where)
    w = to_numpy(check_grid(widths, "widths", where, low=0.0))
    K = router.num_experts
    if kind not in ("top2", "pairwise"):
        fail("kind", where, "one of ('top2', 'pairwise')", kind)
    if kind == "pairwise" and K > PAIRWISE_MAX_K:
        fail("kind", where, f"'top2' for K > {PAIRWISE_MAX_K} experts (the pairwise form sums K! orthant "
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
    return interval_mass((-w - m_g) / s, (w - m_g) / s)


def interface_constant_exact(router, law, *, abseps: float = ABSEPS) -> float:
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
            psi = float(phi(m_g / s)) / s
            if K > 2:
                M, C = _logit_law(router, condition_on_score(comp, v, c, 0.0))
                E = _winner_differences(K, i)[[r for r, k in enumerate(q for q in range(K) if q != i) if k != j]]
                psi *= orthant_probability(E @ M, E @ C @ E.T, 0.0, abseps=abseps)
            total += weight * psi
    return total


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
