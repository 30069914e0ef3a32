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
    gap_slope_exact,
    gate_entropy_exact,
    is_binary_linear_gaussian,
    risk_gap_exact,
)
from ..estimators import conditional, lines
from ..estimators.kernel import kernel, kernel_estimate, pilot_bandwidths
from ..estimators.reducer import Estimate, sample_mean
from ..estimators.registry import Call, Quantity
from ..estimators.score_space import linear_gap_space
from ..model.gates import gate_entropy, top_two
from ..model.moe import HardTeacher, hard_from, soft_from
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
    if "space" not in c.cache:
        c.cache["space"] = linear_gap_space(c.model, c.law, c.teacher)
    return c.cache["space"]


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


@RISK_GAP.register("exact", applies=_exact_applies, cost=lambda c: 2e-3 * c.grid.numel(), exact=True,
                   summary="1-d quadrature across the interface (binary linear MoE)")
def _gap_exact(c: Call) -> Estimate:
    return Estimate.exact(risk_gap_exact(c.model, c.law, c.grid, c.teacher), "risk_gap_exact")


@RISK_GAP.register("conditional", applies=lambda c: None if _space(c) is not None else _LINEAR_RULE,
                   summary="pairwise conditioning + Gauss–Legendre across each interface")
def _gap_conditional(c: Call) -> Estimate:
    return conditional.risk_gap_linear(c.model, c.law, c.grid, c.teacher, _space(c), c.sampling, sampler(c, "qmc"))


def _gap_terms(c: Call):
    moe, teacher, t = c.model, c.teacher, c.grid
    same = isinstance(teacher, HardTeacher) and teacher.moe is moe

    def terms(x):  # x comes from the law: the trusted path, no validation per block
        a, h = moe._scores(x)
        f0 = hard_from(a, h)
        s = (f0 if same else teacher._signal(x))[:, None]
        return (s - soft_from(a, h, t)) ** 2 - (s - f0[:, None]) ** 2  # the noise variance cancels
    return terms


for _name in ("qmc", "mc"):
    RISK_GAP.register(_name, applies=lambda c: None, summary=f"{_name} over inputs")(
        lambda c, _name=_name: sample_mean(_gap_terms(c), c.law, _name, c.sampling))


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


@GAP_SLOPE.register("exact", applies=_exact_applies, cost=lambda c: 1e-3, exact=True,
                    summary="closed form at the interface (binary linear MoE)")
def _slope_exact(c: Call) -> Estimate:
    return Estimate.exact(gap_slope_exact(c.model, c.law, c.teacher), "gap_slope_exact")


@GAP_SLOPE.register("conditional", applies=lambda c: None if is_gaussian(c.law) else
                    "a Gaussian or GaussianMixture law", summary="pairwise conditioning, or lines + Crofton weight")
def _slope_conditional(c: Call) -> Estimate:
    if _space(c) is not None:
        return conditional.gap_slope_linear(c.model, c.law, c.teacher, _space(c), c.sampling, sampler(c, "qmc"))
    return lines.gap_slope_lines(c.model, c.law, c.teacher, c.sampling, sampler(c, "qmc"))


@GAP_SLOPE.register("kernel", applies=lambda c: None, summary="one-sided boundary kernel over inputs")
def _slope_kernel(c: Call) -> Estimate:
    moe, teacher, s = c.model, c.teacher, c.sampling
    h = c.options["bandwidth"]
    if h is None:
        h = pilot_bandwidths(c.law, lambda x: top_two(logits_of(moe.router, x, c.where, "moe"))[0], s, one_sided=True)

    def terms(x):
        a, e = moe._scores(x)
        delta, w, r = top_two(a)
        hw, hr = e.gather(1, w[:, None])[:, 0], e.gather(1, r[:, None])[:, 0]
        return kernel(delta, h, True) * g1_half_bracket(hw - hr, teacher._signal(x), hw)

    return kernel_estimate(sample_mean(terms, c.law, sampler(c, "mc"), s), h, True)


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
    c.model, c.law) else "a binary LinearRouter and a Gaussian (mixture) law", cost=lambda c: 1e-3 * c.grid.numel(),
    exact=True, summary="1-d quadrature of H(σ(g/τ)) against the density of g")
def _entropy_exact(c: Call) -> Estimate:
    return Estimate.exact(gate_entropy_exact(c.model, c.law, c.grid), "gate_entropy_exact")


def _entropy_terms(c: Call):
    def terms(x):
        a = logits_of(c.model, x, c.where)
        return torch.stack([gate_entropy(a, float(tau)) for tau in c.grid], dim=-1)
    return terms


for _name in ("qmc", "mc"):
    GATE_ENTROPY.register(_name, applies=lambda c: None, summary=f"{_name} over inputs")(
        lambda c, _name=_name: sample_mean(_entropy_terms(c), c.law, _name, c.sampling))
