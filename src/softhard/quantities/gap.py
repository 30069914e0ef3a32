r"""The soft–hard risk gap :math:`L_\tau - L_0` (paper §4), its first-order constant :math:`G_1` and the
entropy constant (paper.md §3 [beyond]; derivations in ``docs/first_order_gap.md``).

- :func:`risk_gap`: Monte Carlo gap on a τ grid from one sample (common random numbers), any MoE,
  law and teacher.
- :func:`gap_slope`: :math:`G_1` in :math:`L_\tau - L_0 = G_1\tau + o(\tau)`, exact for a binary linear
  MoE under a Gaussian (mixture) law (:func:`softhard.closed.risk.gap_slope_exact`), estimated otherwise
  from the surface-integral formula with one-sided boundary kernels.
- :func:`entropy_slope`, :func:`gate_entropy_mean`: :math:`E[H(\pi^\tau)] = \tau\,\tfrac{\pi^2}{3}\,C_\Sigma + o(\tau)`.
"""

from __future__ import annotations

import math

import torch

from .._validate import check_float
from ..closed.risk import (
    g1_half_bracket,
    gap_slope_closed,
    gate_entropy_exact,
    is_binary_linear_gaussian,
    risk_gap_closed,
)
from ..estimators import conditional, lines
from ..estimators.kernel import kernel, kernel_estimate, kernel_pilot
from ..estimators.reducer import Estimate, sample_mean
from ..estimators.registry import PILOT_INDICATORS, Call, Quantity, evaluation_seconds
from ..estimators.score_space import linear_maps_rows, thin_law
from ..model.gates import gate_entropy, top_two
from ..model.moe import HardTeacher, hard_from, soft_from
from .sampled import input_seconds, input_view, register_samplers, score_seconds, score_setup, score_view, space_of
from .door import (
    finish,
    is_gaussian,
    is_linear_gaussian,
    logits_of,
    moe_call,
    router_call,
    sampler,
    temperature_grid,
)

__all__ = ["risk_gap", "gap_slope", "gate_entropy_mean", "RISK_GAP", "GAP_SLOPE", "GATE_ENTROPY"]

RISK_GAP = Quantity("risk_gap")
GAP_SLOPE = Quantity("gap_slope")
GATE_ENTROPY = Quantity("gate_entropy_mean")
_EXACT_RULE = ("a binary MoE with a LinearRouter and LinearExperts, a Gaussian (mixture) law and a teacher that is "
               "None or a hard binary linear MoE")
_LINEAR_RULE = ("a LinearRouter with linear or constant experts, a Gaussian (mixture) law and a teacher that is None "
                "or a hard linear MoE")


def _exact_applies(c: Call):
    return None if is_binary_linear_gaussian(c.model, c.law, c.teacher) else _EXACT_RULE


def _space(c: Call):
    return space_of(c)


def risk_gap(moe, law, taus, *, teacher=None, method: str = "auto", n: int | None = None, seed=0,
             target_rel_error: float | None = None, **sampling) -> Estimate:
    r"""The soft–hard gap :math:`L_\tau - L_0` (2.5), (2.11) on a grid of temperatures.

    .. math:: L_\tau - L_0 = E\big[\,E[(Y - f_\tau(X))^2 \mid X] - E[(Y - f_0(X))^2 \mid X]\,\big]
              = E\big[(f_0 - f_\tau)(2f^* - f_\tau - f_0)\big]

    (the noise cancels). Sampled estimates use the same draws for every τ (common random numbers, so
    differences across τ are smooth).

    Args:
        moe: an :class:`~softhard.model.moe.MoE`; law: law on ℝ^d.
        taus: temperatures, shape ``(T,)``, or a float.
        teacher: ``None`` (the hard-routed ``moe`` itself, :math:`L_0 = 0` without noise), an MoE, a
            :class:`~softhard.model.moe.Teacher` or a callable ``f*``.
        method: ``"auto"`` (default: the fastest that applies), ``"exact"`` (binary linear MoE with linear
            experts, Gaussian (mixture) law, teacher None or a hard binary linear MoE: 1-d quadrature,
            :func:`softhard.closed.risk.risk_gap_exact`), ``"conditional"`` (LinearRouter with linear or constant
            experts, Gaussian (mixture) law, teacher None or a hard linear MoE: pairwise conditioning with
            quadrature across each interface, :mod:`softhard.estimators.conditional`), ``"qmc"``, ``"mc"``
            (sampling inputs; any MoE, law and teacher).
        n, seed, target_rel_error, sampling keywords: as in :func:`softhard.boundary_mass`.

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` of shape ``(T,)`` (floats for a float τ).
    """
    where = "risk_gap"
    method = RISK_GAP.check_method(method, where)
    t, scalar = temperature_grid(taus, where)
    call = moe_call(where, moe, law, t, teacher, n, seed, target_rel_error, sampling)
    return finish(RISK_GAP.estimate(call, method), scalar)


def _exact_seconds(c: Call, per_point: float) -> float:
    """The binary closed forms: reducing the law along the scores (d² multiply-adds per component, 1 ns each),
    then ``per_point`` seconds per grid point and component (measured by benchmarks/tail_accuracy.py --cost)."""
    comps = len(c.law.components) if hasattr(c.law, "components") else 1
    points = c.grid.numel() if c.grid is not None else 1
    return comps * (1e-9 * 4 * c.law.d ** 2 + per_point * points)


@RISK_GAP.register("exact", applies=_exact_applies, cost=lambda c: _exact_seconds(c, 4e-3), exact=True,
                   summary="1-d quadrature across the interface (binary linear MoE)")
def _gap_exact(c: Call) -> Estimate:
    v, bound = risk_gap_closed(c.model, c.law, c.grid, c.teacher, c.where)
    return Estimate.exact(v, "risk_gap_exact", bound)


def _linear_applies(c: Call):
    return None if _space(c) is not None else _LINEAR_RULE


def _teacher_K(c: Call) -> int:
    sl = _space(c).slices if _space(c) is not None else {}
    return sl["teacher_logits"].stop - sl["teacher_logits"].start if "teacher_logits" in sl else 0


def _conditional_setup(c: Call) -> float:
    K = c.model.router.num_experts
    return conditional.setup_seconds(K, linear_maps_rows(c.model, c.law, c.teacher) or K) + score_setup(c)


def _gap_conditional_per_draw(c: Call) -> float:
    """:func:`~softhard.estimators.conditional.gap_draw_seconds`: O(K²) intervals, O(K q) quadrature per τ."""
    return conditional.gap_draw_seconds(c.model.router.num_experts, linear_maps_rows(c.model, c.law, c.teacher),
                                        c.grid.numel(), _teacher_K(c))


@RISK_GAP.register_sampler("conditional", applies=_linear_applies, per_draw=_gap_conditional_per_draw,
                           setup=_conditional_setup, sampler=lambda c: sampler(c, "qmc"), pilot_draws=PILOT_INDICATORS,
                           summary="pairwise conditioning + Gauss–Legendre across each interface")
def _gap_conditional(c: Call, opts) -> Estimate:
    return conditional.risk_gap_linear(c.model, c.law, c.grid, c.teacher, _space(c), opts, sampler(c, "qmc"))


def _gap_terms(c: Call, view):
    t = c.grid

    def terms(v):
        a, h, s = view(v)
        f0 = hard_from(a, h)[:, None]
        s = s[:, None]
        return (s - soft_from(a, h, t)) ** 2 - (s - f0) ** 2  # the noise variance cancels
    return terms


register_samplers(RISK_GAP, _gap_terms)


def gap_slope(moe, law, *, teacher=None, method: str = "auto", n: int | None = None, seed=0,
              target_rel_error: float | None = None, bandwidth: float | None = None, **sampling) -> Estimate:
    r"""First-order constant :math:`G_1` of the gap, :math:`L_\tau - L_0 = G_1\tau + o(\tau)` [beyond].

    .. math:: G_1 = \sum_{i<j}\int_{\Gamma_{ij}} \frac{p}{|\nabla g_{ij}|}\Big[(2\ln2 - 1)D_{ij}^2
              + 2\ln2\,\big(D_{ij}(f^*_+ - h_i) - D_{ij}(f^*_- - h_j)\big)\Big]\,dH^{d-1}

    (``docs/first_order_gap.md``). ``method="exact"`` (binary linear MoE with linear experts, Gaussian
    (mixture) law, teacher ``None`` or a hard binary linear MoE): by quadrature. ``method="kernel"`` (any MoE
    and law; ``sampling="mc"`` (default) or ``"qmc"``): the
    surface integral by the coarea formula, as a boundary-kernel average over the samples near an
    interface. Each sample lies on its winner w's side of the interface with its runner-up r, at
    distance :math:`\Delta = g_{wr} \ge 0`, and one-sided averages converge to one-sided traces:

    .. math:: \hat G_1 = \frac1n \sum_{m} \frac{k(\Delta_m/h)}{h}
              \Big[\big(\ln 2 - \tfrac12\big) D_{wr}^2 + 2\ln 2\, D_{wr}\,(f^* - h_w)\Big](X_m),
              \quad D_{wr} = h_w - h_r,

    with the boundary kernel :math:`k(u) = (4 - 6u)1\{0\le u\le 1\}` (bias :math:`O(h^2)`) and the
    bandwidth rule of :mod:`softhard.quantities.coarea` applied to Δ (first block of the sample). Summing the two
    sides of :math:`\Gamma_{ij}` gives the formula above. ``method="conditional"`` (Gaussian (mixture)
    law; no bandwidth, no bias): pairwise conditioning in score space for a LinearRouter with linear
    experts and a hard linear teacher (or None), else lines with the Crofton weight for any MoE and
    teacher (:mod:`softhard.estimators`; keyword ``sampling="qmc"|"mc"``). ``"auto"`` (default): the fastest that
    applies (``docs/estimators.md``); n, seed, target_rel_error and the sampling keywords as in
    :func:`softhard.boundary_mass`.

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` (a float value).
    """
    where = "gap_slope"
    method = GAP_SLOPE.check_method(method, where)
    bw = None if bandwidth is None else check_float(bandwidth, "bandwidth", where, 0.0, math.inf)
    call = moe_call(where, moe, law, None, teacher, n, seed, target_rel_error, sampling, bandwidth=bw)
    return GAP_SLOPE.estimate(call, method)


@GAP_SLOPE.register("exact", applies=_exact_applies, cost=lambda c: _exact_seconds(c, 5e-4), exact=True,
                    summary="closed form at the interface (binary linear MoE)")
def _slope_exact(c: Call) -> Estimate:
    v, bound = gap_slope_closed(c.model, c.law, c.teacher, c.where)
    return Estimate.exact(v, "gap_slope_exact", bound)


def _slope_conditional_per_draw(c: Call) -> float:
    q = linear_maps_rows(c.model, c.law, c.teacher)
    if q is not None:
        return conditional.slope_draw_seconds(c.model.router.num_experts, q)
    return lines.line_draw_seconds(c.model.router, c.law, 100) + 2 * evaluation_seconds(c.model.experts, c.law.d)


@GAP_SLOPE.register_sampler("conditional", applies=lambda c: None if is_gaussian(c.law) else
                            "a Gaussian or GaussianMixture law", per_draw=_slope_conditional_per_draw,
                            setup=lambda c: _conditional_setup(c) if _space(c) is not None else 0.0,
                            sampler=lambda c: sampler(c, "qmc"), pilot_draws=PILOT_INDICATORS,
                            summary="pairwise conditioning, or lines + Crofton weight")
def _slope_conditional(c: Call, opts) -> Estimate:
    if _space(c) is not None:
        return conditional.gap_slope_linear(c.model, c.law, c.teacher, _space(c), opts, sampler(c, "qmc"))
    return lines.gap_slope_lines(c.model, c.law, c.teacher, opts, sampler(c, "qmc"))


def _kernel_view(c: Call):
    """``(law, view)`` the kernel samples: the score space where it applies and is cheaper per draw, else inputs."""
    if _space(c) is not None and score_seconds(c) <= input_seconds(c):
        return thin_law(_space(c).law), score_view(c)
    return c.law, input_view(c)


def _slope_pilot(c: Call):
    if "kernel_pilot" not in c.cache:
        law, view = _kernel_view(c)
        c.cache["kernel_pilot"] = kernel_pilot(law, lambda v: top_two(view(v)[0])[0], c.sampling, True,
                                               c.options["bandwidth"])
    return c.cache["kernel_pilot"]


def _kernel_per_draw(c: Call) -> float:
    return score_seconds(c) if _space(c) is not None and score_seconds(c) <= input_seconds(c) else input_seconds(c)


@GAP_SLOPE.register_sampler("kernel", applies=lambda c: _slope_pilot(c).declines(), per_draw=_kernel_per_draw,
                            sampler=lambda c: sampler(c, "mc"), pilot_draws=PILOT_INDICATORS, rate=3 / 8,
                            summary="one-sided boundary kernel over inputs (or the Gaussian scores)")
def _slope_kernel(c: Call, opts) -> Estimate:
    law, view = _kernel_view(c)
    h = _slope_pilot(c).bandwidth

    def terms(v):
        a, e, fs = view(v)
        delta, w, r = top_two(a)
        hw, hr = e.gather(1, w[:, None])[:, 0], e.gather(1, r[:, None])[:, 0]
        return kernel(delta, h, True) * g1_half_bracket(hw - hr, fs, hw)

    return kernel_estimate(sample_mean(terms, law, sampler(c, "mc"), opts), h, True, where=c.where,
                           quiet=opts.quiet)


def gate_entropy_mean(router, law, taus, *, method: str = "auto", n: int | None = None, seed=0,
                      target_rel_error: float | None = None, **sampling) -> Estimate:
    r"""Mean routing entropy :math:`E[-\sum_k \pi_k^\tau \log \pi_k^\tau]` (nats) on a τ grid.

    Methods: ``"exact"`` (binary linear router, Gaussian (mixture) law: :math:`\int \psi(t)\,H(\sigma(t/\tau))\,dt`
    by quadrature, :func:`softhard.closed.risk.gate_entropy_exact`), ``"qmc"``, ``"mc"``; keywords as
    :func:`softhard.boundary_mass`.

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` over ``taus`` (shape ``(T,)``; floats for a float τ).
    """
    where = "gate_entropy_mean"
    method = GATE_ENTROPY.check_method(method, where)
    t, scalar = temperature_grid(taus, where)
    call = router_call(where, router, law, t, n, seed, target_rel_error, sampling)
    return finish(GATE_ENTROPY.estimate(call, method), scalar)


@GATE_ENTROPY.register("exact", applies=lambda c: None if c.model.num_experts == 2 and is_linear_gaussian(
    c.model, c.law) else "a binary LinearRouter and a Gaussian (mixture) law", cost=lambda c: _exact_seconds(c, 3e-3),
    exact=True, summary="1-d quadrature of H(σ(g/τ)) against the density of g")
def _entropy_exact(c: Call) -> Estimate:
    return Estimate.exact(gate_entropy_exact(c.model, c.law, c.grid), "gate_entropy_exact")


def _entropy_terms(c: Call, view):
    def terms(v):
        a = view(v)[0]
        return torch.stack([gate_entropy(a, float(tau)) for tau in c.grid], dim=-1)
    return terms


register_samplers(GATE_ENTROPY, _entropy_terms)
