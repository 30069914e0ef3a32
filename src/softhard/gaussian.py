r"""Closed forms for Gaussian laws (the one place for them; each is checked against Monte Carlo in tests).

Building blocks (paper Example 3.8 and its K-expert extension [beyond]):

- for a linear map ``A = W x + b`` and ``X ~ N(m, S)``: ``A ~ N(W m + b, W S Wᵀ)``;
- for a score ``g(x) = v·x + c``: ``g(X) ~ N(m_g, s²)`` with ``m_g = v·m + c``, ``s² = vᵀ S v``;
  its density at 0 is the coarea constant :math:`\psi(0) = \varphi(m_g/s)/s` (3.14);
- conditioning: ``X | g(X) = t`` is Gaussian with mean ``m + S v (t − m_g)/s²`` and covariance
  ``S − S v vᵀ S / s²`` (used by the first-order gap constant and the shape derivative).
"""

from __future__ import annotations

import math

import torch

from ._validate import fail
from .laws import Gaussian, GaussianMixture
from .routers import LinearRouter, _pair

__all__ = ["linear_moments", "score_law", "pair_score", "gaussian_components", "condition_on_score",
           "pair_density_at_zero"]


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
