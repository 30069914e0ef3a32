r"""Boundary-mass profiles (paper (2.13)–(2.15), (5.4)–(5.5)) estimated from one sample.

- top-two profile :math:`\beta(w) = \mu(\Delta(X) \le w)` (2.13),
- pairwise profile :math:`\beta_{pair}(w) = \mu(\delta(X) \le w)` (2.14), :math:`\beta \le \beta_{pair}`,
- ambiguity mass :math:`m_\varepsilon(\tau) = \mu(\max_k \pi_k^\tau(X) < 1-\varepsilon)` (5.5), with the
  sandwich of Remark 5.4 (derived in ``docs/ambiguity_sandwich.md``):
  :math:`\mu(\Delta < w_{\tau,\varepsilon}) \le m_\varepsilon(\tau) \le \mu(\Delta < w_{\tau,\varepsilon} + \tau\log(K-1))`.

Every estimate is evaluated on the whole grid from the same draws, so a profile is monotone in ``w``.
"""

from __future__ import annotations

import math

import torch

from .._validate import check_float, check_grid, check_int, check_logits, fail
from ..closed.boundary import PAIRWISE_MAX_K, boundary_mass_exact
from ..estimators import conditional, lines
from ..estimators.fits import MarginTail, fit_margin_tail
from ..estimators.reducer import Estimate, draw, exact_estimate, monte_carlo
from ..estimators.registry import resolve_method
from ..estimators.score_space import score_space
from ..model.gates import pairwise_separation, top_two_margin, topk_margin
from ..model.laws import Gaussian, GaussianMixture, as_law
from ..model.routers import LinearRouter, as_router

__all__ = ["boundary_mass", "ambiguity_mass", "margin_tail", "margin_function", "MARGINS"]

MARGINS = ("top2", "pairwise")


def margin_function(kind: str = "top2", k: int = 1, where: str = "boundary_mass"):
    """The margin ``logits (N, K) -> (N,)`` named by ``kind``: "top2" (Δ, or the top-k margin if ``k > 1``)
    or "pairwise" (δ)."""
    if kind == "top2":
        return top_two_margin if k == 1 else (lambda a: topk_margin(a, k))
    if kind == "pairwise":
        return pairwise_separation
    fail("kind", where, f"one of {MARGINS}", kind)


def boundary_mass(router, law, widths, kind: str = "top2", n: int = 1 << 20, seed=0, *, k: int = 1,
                  method: str = "mc", **mc) -> Estimate:
    r"""Boundary-mass profile on a grid of widths (2.13)/(2.14).

    .. math:: \beta(w) = \mu(\Delta(X) \le w), \qquad \beta_{pair}(w) = \mu(\delta(X) \le w)

    with :math:`\Delta = a_{(1)} - a_{(2)}` (2.6) and :math:`\delta = \min_{i<j}|a_i - a_j|` (2.12).

    Args:
        router: router ``(N, d) -> (N, K)`` (LinearRouter, MLPRouter, any module/callable).
        law: input law μ on ℝ^d.
        widths: widths ``w >= 0``, shape ``(W,)`` (or a float).
        kind: ``"top2"`` or ``"pairwise"``.
        n, seed: sample size and seed; the estimate depends on ``(seed, n)`` only.
        k: with ``kind="top2"``, use the top-k margin :math:`a_{(k)} - a_{(k+1)}` instead [beyond].
        method: ``"mc"`` (plain Monte Carlo over inputs, the default) or ``"qmc"`` (scrambled Sobol);
            ``"exact"`` (LinearRouter, Gaussian (mixture) law, k = 1:
            :func:`softhard.closed.boundary.boundary_mass_exact`, ``stderr = 0``); ``"conditional"`` (Gaussian
            (mixture) law, ``kind="top2"``, k = 1: pairwise conditioning in score space for a LinearRouter,
            lines with the Crofton weight otherwise, :mod:`softhard.estimators`; keyword ``sampling="mc"|"qmc"``;
            ``n`` is a budget: it stops at ``target_rel_error``, 5e-3 unless given);
            ``"auto"``: exact, else conditional, else QMC in score space for a LinearRouter under a
            Gaussian law, else plain MC (``docs/estimators.md``). Further keywords go to
            :func:`softhard.estimators.reducer.monte_carlo` (``target_rel_error`` works for every sampling method).

    Returns:
        :class:`Estimate` whose ``value``/``stderr`` have shape ``(W,)`` (floats for a float width).
    """
    law = as_law(law, "boundary_mass")
    r = _router(router, law, "boundary_mass")
    w = check_grid(widths, "widths", "boundary_mass", low=0.0)
    n = check_int(n, "n", "boundary_mass")
    if kind == "pairwise" and k != 1:
        fail("k", "boundary_mass", "1 with kind='pairwise' (the top-k margin is for kind='top2')", k)
    margin = margin_function(kind, check_int(k, "k", "boundary_mass", 1, r.num_experts - 1))
    gaussian = isinstance(law, (Gaussian, GaussianMixture))
    linear = isinstance(r, LinearRouter) and gaussian
    in_score_space = linear and method == "auto"  # auto's last resort samples the logits directly
    method = resolve_method(
        method, "boundary_mass", exact=linear and k == 1 and (kind == "top2" or r.num_experts <= PAIRWISE_MAX_K),
        conditional=gaussian and kind == "top2" and k == 1, fallback="qmc" if linear else "mc",
        conditional_rule="a Gaussian or GaussianMixture law, kind='top2' and k=1")
    if method == "exact":
        est = exact_estimate(boundary_mass_exact(r, law, w, kind), "boundary_mass_exact")
    elif method == "conditional":
        est = (conditional.boundary_mass_linear if isinstance(r, LinearRouter) else lines.boundary_mass_lines)(
            r, law, w, n, seed, **mc)
    elif in_score_space:
        space = score_space(r, law)
        est = monte_carlo(lambda y: (margin(y)[:, None] <= w.to(y)).to(torch.float64), space.law, n, seed,
                          method=method, **mc)
        est.info["space"] = "score"
    else:
        def terms(x):  # x comes from the law (finite, (N, d)); the margin validates the logits
            m = margin(r(x))
            return (m[:, None] <= w.to(m)).to(torch.float64)

        est = monte_carlo(terms, law, n, seed, method=method, **mc)
    return est[0] if _is_scalar(widths) else est


def ambiguity_mass(router, law, taus, eps: float = 1 / (1 + math.e ** 2), n: int = 1 << 20, seed=0,
                   **mc) -> Estimate:
    r"""Mass of the ambiguity region (5.4)–(5.5) on a grid of temperatures.

    .. math:: m_\varepsilon(\tau) = \mu\big(\max_k \pi_k^\tau(X) < 1 - \varepsilon\big)

    Remark 5.4 [recon] (derived in ``docs/ambiguity_sandwich.md``): with :math:`w = w_{\tau,\varepsilon}` (2.15),
    :math:`\mu(\Delta < w) \le m_\varepsilon(\tau) \le \mu(\Delta < w + \tau\log(K-1))`, equality for K = 2.

    Args:
        router: router ``(N, d) -> (N, K)``; law: input law μ on ℝ^d.
        taus: temperatures τ > 0, shape ``(T,)`` (or a float); eps: tolerance ε ∈ (0, 1/2).
        n, seed: sample size and seed; further keywords go to :func:`softhard.estimators.reducer.monte_carlo`.

    Returns:
        :class:`Estimate` over ``taus``.
    """
    law = as_law(law, "ambiguity_mass")
    r = _router(router, law, "ambiguity_mass")
    t = check_grid(taus, "taus", "ambiguity_mass", low=0.0, low_open=True)
    e = check_float(eps, "eps", "ambiguity_mass", 0.0, 0.5)
    n = check_int(n, "n", "ambiguity_mass")

    def terms(x):
        a = check_logits(r(x), "ambiguity_mass", "router logits")
        z = (a - a.max(-1, keepdim=True).values).unsqueeze(1) / t.to(a)[:, None]
        # max_k π_k = 1 / Σ_j exp(z_j) since the top z is 0
        pmax = 1.0 / torch.exp(z).sum(-1)
        return (pmax < 1 - e).to(torch.float64)

    est = monte_carlo(terms, law, n, seed, **mc)
    return est[0] if _is_scalar(taus) else est


def _router(router, law, where: str):
    """The router as a :class:`Router` on the law's dimension (a plain callable gets ``d`` from the law)."""
    r = as_router(router, law.d)
    if r.d is not None and r.d != law.d:
        fail("law", where, f"a law on R^{r.d} (the router's input dimension)", f"a law on R^{law.d}")
    return r


def _is_scalar(v) -> bool:
    return isinstance(v, (int, float)) or (hasattr(v, "ndim") and v.ndim == 0)


def margin_tail(router, law, n: int = 1 << 20, seed=0, t_max: float | None = None, tail_fraction: float = 0.05,
                kind: str = "top2", zeros: str = "raise") -> MarginTail:
    r"""Draw ``n`` inputs (``estimate.draw``) and fit the margin tail of Δ (``kind="top2"``, (2.6)) or δ
    (``kind="pairwise"``, (2.12)) with :func:`fit_margin_tail`."""
    law = as_law(law, "margin_tail")
    r = _router(router, law, "margin_tail")
    margin = margin_function(kind, where="margin_tail")
    with torch.no_grad():
        m = margin(r.logits(draw(law, n, seed)))
    return fit_margin_tail(m, t_max, tail_fraction, zeros)
