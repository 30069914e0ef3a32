r"""Boundary-mass profiles (paper (2.13)–(2.15), (5.4)–(5.5)).

- top-two profile :math:`\beta(w) = \mu(\Delta(X) \le w)` (2.13),
- pairwise profile :math:`\beta_{pair}(w) = \mu(\delta(X) \le w)` (2.14), :math:`\beta \le \beta_{pair}`,
- ambiguity mass :math:`m_\varepsilon(\tau) = \mu(\max_k \pi_k^\tau(X) < 1-\varepsilon)` (5.5), with the
  sandwich of Remark 5.4 (derived in ``docs/ambiguity_sandwich.md``):
  :math:`\mu(\Delta < w_{\tau,\varepsilon}) \le m_\varepsilon(\tau) \le \mu(\Delta < w_{\tau,\varepsilon} + \tau\log(K-1))`.

Every sampled profile is evaluated on the whole grid from the same draws, so it is monotone in ``w``.
Methods (``docs/estimators.md``): ``"exact"`` (closed forms of :mod:`softhard.closed.boundary`),
``"conditional"`` (:mod:`softhard.estimators.conditional` for a linear router, lines with the Crofton
weight, :mod:`softhard.estimators.lines`, for any other router, under a Gaussian (mixture) law), ``"qmc"``
and ``"mc"`` (sampling inputs); ``"auto"`` picks the fastest for the accuracy asked.
"""

from __future__ import annotations

import math

import torch

from .._validate import check_float, check_int, fail
from ..closed.boundary import PAIRWISE_MAX_K, boundary_mass_closed, boundary_mass_seconds
from ..closed.normal import ABSEPS
from ..estimators import conditional, lines
from ..estimators.fits import MarginTail, fit_margin_tail
from ..estimators.reducer import Estimate, draw
from ..estimators.registry import Call, Quantity
from ..model.gates import pairwise_separation, top_two, topk_margin
from ..model.routers import LinearRouter
from .sampled import register_samplers, score_setup
from .door import (
    exact_guard,
    finish,
    is_gaussian,
    is_linear_gaussian,
    logits_of,
    router_call,
    sampler,
    temperature_grid,
    width_grid,
)

__all__ = ["boundary_mass", "ambiguity_mass", "margin_tail", "BOUNDARY_MASS", "AMBIGUITY_MASS", "MARGINS",
           "margin_function"]

MARGINS = ("top2", "pairwise")
BOUNDARY_MASS = Quantity("boundary_mass")
AMBIGUITY_MASS = Quantity("ambiguity_mass")
EPS_2TAU = 1 / (1 + math.e ** 2)  # the tolerance at which w_{τ,ε} = 2τ (the paper's β(2τ))


def margin_function(kind: str = "top2", k: int = 1):
    """The margin ``logits (N, K) -> (N,)`` named by ``kind`` (trusted logits): "top2" (Δ (2.6), or the top-k
    margin :math:`a_{(k)} - a_{(k+1)}` if ``k > 1``) or "pairwise" (δ (2.12))."""
    if kind == "pairwise":
        return pairwise_separation
    return (lambda a: top_two(a)[0]) if k == 1 else (lambda a: topk_margin(a, k))


def boundary_mass(router, law, widths, *, kind: str = "top2", k: int = 1, method: str = "auto", n: int | None = None,
                  seed=0, target_rel_error: float | None = None, abseps: float = ABSEPS, **sampling) -> Estimate:
    r"""Boundary-mass profile on a grid of widths (2.13)/(2.14).

    .. math:: \beta(w) = \mu(\Delta(X) \le w), \qquad \beta_{pair}(w) = \mu(\delta(X) \le w)

    with :math:`\Delta = a_{(1)} - a_{(2)}` (2.6) and :math:`\delta = \min_{i<j}|a_i - a_j|` (2.12).

    Args:
        router: router ``(N, d) -> (N, K)`` (LinearRouter, MLPRouter, any module/callable).
        law: input law μ on ℝ^d.
        widths: widths ``w >= 0``, shape ``(W,)`` (or a float).
        kind: ``"top2"`` (β) or ``"pairwise"`` (β_pair).
        k: with ``kind="top2"``, the top-k margin :math:`a_{(k)} - a_{(k+1)}` instead of Δ [beyond].
        method: ``"auto"`` (default: the fastest method that reaches the accuracy asked, recorded in
            ``Estimate.method``), ``"exact"`` (LinearRouter, Gaussian (mixture) law, k = 1:
            :func:`~softhard.closed.boundary.boundary_mass_exact`, with its integration error bound in
            ``Estimate.error_bound``), ``"conditional"`` (Gaussian (mixture) law, ``kind="top2"``, k = 1; keyword
            ``sampling="qmc"|"mc"``), ``"qmc"`` or ``"mc"`` (any router and law).
        n: samples of a sampling method (with ``target_rel_error``: the budget); ``None``: sample until
            ``target_rel_error`` (0.5 % if not given), at most ``max_samples`` (2²⁴).
        seed: ``int``, ``torch.Generator`` or ``None``; a sampled estimate depends on ``(seed, n)`` only.
        target_rel_error: relative standard error to reach on every width (a miss says
            ``converged=False`` and warns).
        abseps: absolute accuracy asked of the closed form's randomised box probabilities where its form is
            absolute (the complement form of β where β is not small, and β_pair); the pairs form of β is accurate
            relative to β (:func:`~softhard.closed.boundary.boundary_mass_exact`).
        **sampling: ``max_samples``, ``scrambles``, ``chunk``, ``device``, ``workers``, ``min_n``, ``progress``
            (also the exact path's bar; a long exact run shows it anyway), ``max_seconds`` (an exact run predicted
            to take longer, default one hour, is refused with the predicted time),
            ``sampling`` (see :func:`softhard.estimators.reducer.monte_carlo`).

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` of shape ``(W,)`` (floats for a float width).
    """
    where = "boundary_mass"
    method = BOUNDARY_MASS.check_method(method, where)
    w, scalar = width_grid(widths, where)
    if kind not in MARGINS:
        fail("kind", where, f"one of {MARGINS}", kind)
    call = router_call(where, router, law, w, n, seed, target_rel_error, sampling, kind=kind, k=k,
                       abseps=check_float(abseps, "abseps", where, 0.0, 0.1, high_open=False))
    K = call.model.num_experts
    if kind == "pairwise" and k != 1:
        fail("k", where, "1 with kind='pairwise' (the top-k margin is for kind='top2')", k)
    call.options["k"] = check_int(k, "k", where, 1, K - 1)
    return finish(BOUNDARY_MASS.estimate(call, method), scalar)


def _exact_applies(c: Call):
    if not is_linear_gaussian(c.model, c.law):
        return "a LinearRouter and a Gaussian or GaussianMixture law"
    if c.options["k"] != 1:
        return "k = 1 (the top-two margin)"
    if c.options["kind"] == "pairwise" and c.model.num_experts > PAIRWISE_MAX_K:
        return f"K <= {PAIRWISE_MAX_K} experts for kind='pairwise' (K! orthant probabilities)"
    return None


def _exact_cost(c: Call) -> float:
    """Seconds of :func:`~softhard.closed.boundary.boundary_mass_closed`
    (:func:`~softhard.closed.boundary.boundary_mass_seconds`): the contrast rows, then per width and Gaussian
    component its box probabilities — K(K−1)/2 pair bands, K winners or K! orderings — priced by their rank."""
    key = ("exact_seconds",)
    if key not in c.cache:
        c.cache[key] = boundary_mass_seconds(c.model, c.law, c.grid, c.options["kind"])
    return c.cache[key]


@BOUNDARY_MASS.register("exact", applies=_exact_applies, cost=_exact_cost, exact=True,
                        summary="Gaussian box probabilities (3.11 and its K-expert extension)")
def _exact(c: Call) -> Estimate:
    v, bound, forms = boundary_mass_closed(c.model, c.law, c.grid, c.options["kind"], c.options["abseps"], c.where,
                                           **exact_guard(c))
    return Estimate.exact(v, "boundary_mass_exact", bound, forms=forms, predicted_seconds=_exact_cost(c))


def _conditional_applies(c: Call):
    if not is_gaussian(c.law):
        return "a Gaussian or GaussianMixture law"
    if c.options["kind"] != "top2" or c.options["k"] != 1:
        return "kind='top2' and k=1"
    return None


def _conditional_per_draw(c: Call) -> float:
    """Pairwise conditioning (a linear router: :func:`~softhard.estimators.conditional.beta_draw_seconds`, O(K²));
    lines (:func:`~softhard.estimators.lines.line_draw_seconds`)."""
    if isinstance(c.model, LinearRouter):
        return conditional.beta_draw_seconds(c.model.num_experts, c.grid.numel())
    return lines.line_draw_seconds(c.model, c.law)


def _conditional_setup(c: Call) -> float:
    K = c.model.num_experts
    return conditional.setup_seconds(K, K) + score_setup(c) if isinstance(c.model, LinearRouter) else 0.0


@BOUNDARY_MASS.register_sampler("conditional", applies=_conditional_applies, per_draw=_conditional_per_draw,
                                setup=_conditional_setup, sampler=lambda c: sampler(c, "qmc"),
                                summary="conditional MC across each interface (linear router), or lines + the "
                                "Crofton weight")
def _conditional(c: Call, opts) -> Estimate:
    fn = conditional.boundary_mass_linear if isinstance(c.model, LinearRouter) else lines.boundary_mass_lines
    return fn(c.model, c.law, c.grid, opts, sampler(c, "qmc"))


def _mass_terms(c: Call, view):
    """Per-draw indicators ``(N, W)`` of margin ≤ w, from ``view(draws) -> (logits, ...)``."""
    w, margin = c.grid, margin_function(c.options["kind"], c.options["k"])

    def terms(v):
        m = margin(view(v)[0])
        return (m[:, None] <= w.to(m)).to(torch.float64)
    return terms


def _bound(c: Call):
    """Indicator terms are bounded by 1; β(0) = μ(Δ = 0) is 0 by construction for continuous margins, so an
    entry w = 0 without a hit is exact (:func:`~softhard.estimators.reducer.sample_mean`, ``bound``)."""
    return (c.grid > 0).to(torch.float64).numpy() if c.where == "boundary_mass" else 1.0


register_samplers(BOUNDARY_MASS, _mass_terms, bound=_bound)


def ambiguity_mass(router, law, taus, *, eps: float = EPS_2TAU, method: str = "auto", n: int | None = None, seed=0,
                   target_rel_error: float | None = None, **sampling) -> Estimate:
    r"""Mass of the ambiguity region (5.4)–(5.5) on a grid of temperatures.

    .. math:: m_\varepsilon(\tau) = \mu\big(\max_k \pi_k^\tau(X) < 1 - \varepsilon\big)

    Remark 5.4 [recon] (derived in ``docs/ambiguity_sandwich.md``): with :math:`w = w_{\tau,\varepsilon}` (2.15),
    :math:`\mu(\Delta < w) \le m_\varepsilon(\tau) \le \mu(\Delta < w + \tau\log(K-1))`, equality for K = 2.

    Args:
        router: router ``(N, d) -> (N, K)``; law: input law μ on ℝ^d.
        taus: temperatures τ > 0, shape ``(T,)`` (or a float); eps: tolerance ε ∈ (0, 1/2).
        method: ``"auto"``, ``"exact"`` (K = 2 linear router, Gaussian (mixture) law: β(w_{τ,ε}) exactly,
            Remark 5.4), ``"qmc"``, ``"mc"``; n, seed, target_rel_error, sampling keywords: as in
            :func:`boundary_mass`.

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` over ``taus``.
    """
    where = "ambiguity_mass"
    method = AMBIGUITY_MASS.check_method(method, where)
    t, scalar = temperature_grid(taus, where)
    e = check_float(eps, "eps", where, 0.0, 0.5)
    call = router_call(where, router, law, t, n, seed, target_rel_error, sampling, eps=e)
    return finish(AMBIGUITY_MASS.estimate(call, method), scalar)


@AMBIGUITY_MASS.register("exact", applies=lambda c: None if is_linear_gaussian(c.model, c.law) and
                         c.model.num_experts == 2 else "a binary LinearRouter and a Gaussian (mixture) law",
                         cost=lambda c: 1e-4, exact=True, summary="β(w_{τ,ε}) for K = 2 (Remark 5.4)")
def _ambiguity_exact(c: Call) -> Estimate:
    factor = math.log((1 - c.options["eps"]) / c.options["eps"])
    w = (c.grid * factor).clamp(max=1e300)  # τ near 1e308: w overflows; β = 1 there anyway
    v, bound, _ = boundary_mass_closed(c.model, c.law, w, "top2", ABSEPS, c.where, **exact_guard(c))
    return Estimate.exact(v, "boundary_mass_exact at w = τ log((1-ε)/ε)", bound)


def _ambiguity_terms(c: Call, view):
    t, e = c.grid, c.options["eps"]

    def terms(v):
        a = view(v)[0]
        z = (a - a.max(-1, keepdim=True).values).unsqueeze(1) / t.to(a)[:, None]
        pmax = 1.0 / torch.exp(z).sum(-1)  # max_k π_k = 1 / Σ_j exp(z_j) since the top z is 0
        return (pmax < 1 - e).to(torch.float64)
    return terms


register_samplers(AMBIGUITY_MASS, _ambiguity_terms, bound=_bound)


def margin_tail(router, law, *, n: int = 1 << 20, seed=0, t_max: float | None = None, tail_fraction: float = 0.05,
                kind: str = "top2", zeros: str = "raise") -> MarginTail:
    r"""Draw ``n`` inputs (:func:`~softhard.estimators.reducer.draw`) and fit the margin tail
    :math:`\mu(\Delta \le t) \approx C t^\alpha` of Δ (``kind="top2"``, (2.6)) or δ (``kind="pairwise"``, (2.12))
    with :func:`~softhard.estimators.fits.fit_margin_tail` (Assumption 4.2)."""
    where = "margin_tail"
    n = check_int(n, "n", where)
    if kind not in MARGINS:
        fail("kind", where, f"one of {MARGINS}", kind)
    call = router_call(where, router, law, None, n, seed, None, {})
    with torch.no_grad():
        m = margin_function(kind)(logits_of(call.model, draw(call.law, call.sampling.n, call.sampling.seed), where))
    return fit_margin_tail(m, t_max, tail_fraction, zeros, where)
