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

from .._validate import check_float, check_grid, check_int, fail
from ..closed.risk import ENTROPY_CONSTANT, g1_half_bracket, gap_slope_exact, is_binary_linear_gaussian, risk_gap_exact
from ..estimators import conditional, lines
from ..estimators.kernel import kernel, kernel_bandwidth, kernel_estimate, pilot_sample
from ..estimators.reducer import Estimate, exact_estimate, monte_carlo, resolve_seed
from ..estimators.registry import resolve_method
from ..estimators.score_space import linear_gap_space
from ..model.gates import gate_entropy, top_two
from ..model.laws import Gaussian, GaussianMixture, as_law
from ..model.moe import HardTeacher, MoE, as_teacher, hard_from, soft_from
from .coarea import _router, interface_constant

__all__ = ["risk_gap", "gap_slope", "entropy_slope", "gate_entropy_mean"]

_SLOPE_METHODS = ("auto", "exact", "conditional", "kernel", "mc", "qmc")


def _taus(taus, where: str) -> tuple[torch.Tensor, bool]:
    """Temperatures as a tensor ``(T,)`` and whether a scalar was given."""
    scalar = isinstance(taus, (int, float)) and not isinstance(taus, bool) or (
        isinstance(taus, torch.Tensor) and taus.ndim == 0)
    if scalar:
        return torch.tensor([check_float(taus, "taus", where, 0.0, math.inf)], dtype=torch.float64), True
    return check_grid(taus, "taus", where, low=0.0, low_open=True), False


def _model(moe, law, where: str):
    if not isinstance(moe, MoE):
        fail("moe", where, "a softhard MoE", type(moe).__name__, TypeError)
    law = as_law(law, where)
    if moe.d is not None and moe.d != law.d:
        fail("law", where, f"a law on R^{moe.d} (the MoE's input dimension)", f"a law on R^{law.d}")
    return law


def risk_gap(moe, law, taus, teacher=None, n: int = 1 << 20, seed=0, method: str = "mc", **mc) -> Estimate:
    r"""Monte Carlo soft–hard gap :math:`L_\tau - L_0` (2.5), (2.11) on a grid of temperatures.

    .. math:: L_\tau - L_0 = E\big[\,E[(Y - f_\tau(X))^2 \mid X] - E[(Y - f_0(X))^2 \mid X]\,\big]

    Per-sample terms ``teacher.conditional_risk(x, f_τ) - teacher.conditional_risk(x, f_0)`` on the same
    draws for every τ (common random numbers, so differences across τ are smooth), reduced by
    :func:`~softhard.estimators.reducer.monte_carlo`.

    Args:
        moe: an :class:`~softhard.model.moe.MoE`; law: law on ℝ^d.
        taus: temperatures, shape ``(T,)``, or a float.
        teacher: ``None`` (the hard-routed ``moe`` itself, :math:`L_0 = 0` without noise), an MoE, a
            :class:`~softhard.model.moe.Teacher` or a callable ``f*``.
        n, seed: as in ``monte_carlo``; further keywords go there (``target_rel_error`` included).
        method: ``"mc"`` (the default) or ``"qmc"``: sampling inputs; ``"exact"`` (binary linear MoE with
            linear experts, Gaussian (mixture) law, a hard binary linear teacher or None:
            :func:`softhard.closed.risk.risk_gap_exact`, ``stderr = 0``); ``"conditional"`` (LinearRouter with
            linear or constant experts, Gaussian (mixture) law, teacher None or a hard linear MoE: pairwise
            conditioning in score space with quadrature across each interface, :mod:`softhard.estimators`;
            keyword ``sampling="mc"|"qmc"``; ``n`` is a budget: it stops at ``target_rel_error``, 5e-3
            unless given); ``"auto"``: exact, else conditional, else ``"mc"``
            (``docs/estimators.md``).

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` with value/stderr of shape ``(T,)`` (floats for a float τ).
    """
    where = "risk_gap"
    law = _model(moe, law, where)
    t, scalar = _taus(taus, where)
    space = linear_gap_space(moe, law, teacher)
    method = resolve_method(method, where, exact=is_binary_linear_gaussian(moe, law, teacher),
                                 conditional=space is not None,
                                 conditional_rule="a LinearRouter with linear experts, a Gaussian (mixture) law and a "
                                 "teacher that is None or a hard linear MoE")
    if method == "exact":
        est = exact_estimate(risk_gap_exact(moe, law, t, teacher), "risk_gap_exact")
    elif method == "conditional":
        est = conditional.risk_gap_linear(moe, law, t, teacher, space, check_int(n, "n", where), seed, **mc)
    else:
        teacher = as_teacher(teacher, moe)
        same = isinstance(teacher, HardTeacher) and teacher.moe is moe

        def terms(x):  # x comes from the law: the trusted path, no validation per block
            a, h = moe._scores(x)
            f0 = hard_from(a, h)
            s = (f0 if same else teacher._signal(x))[:, None]
            return (s - soft_from(a, h, t)) ** 2 - (s - f0[:, None]) ** 2  # the noise variance cancels

        est = monte_carlo(terms, law, n, seed, method=method, **mc)
    return est[0] if scalar else est


def gap_slope(moe, law, teacher=None, n: int = 1 << 20, seed=0, method: str = "auto",
              bandwidth: float | None = None, **mc) -> float | Estimate:
    r"""First-order constant :math:`G_1` of the gap, :math:`L_\tau - L_0 = G_1\tau + o(\tau)` [beyond].

    .. math:: G_1 = \sum_{i<j}\int_{\Gamma_{ij}} \frac{p}{|\nabla g_{ij}|}\Big[(2\ln2 - 1)D_{ij}^2
              + 2\ln2\,\big(D_{ij}(f^*_+ - h_i) - D_{ij}(f^*_- - h_j)\big)\Big]\,dH^{d-1}

    (``docs/first_order_gap.md``). ``method="exact"`` (binary linear MoE with linear experts, Gaussian
    (mixture) law, teacher ``None`` or a hard binary linear MoE): a float. ``method="kernel"`` (or
    ``"mc"``; ``"qmc"`` with scrambled Sobol sampling): the
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
    teacher (:mod:`softhard.estimators`; keyword ``sampling="mc"|"qmc"``; ``n`` is a budget: it stops at
    ``target_rel_error``, 5e-3 unless given). ``"auto"``: exact, else
    conditional, else kernel (``docs/estimators.md``).

    Returns:
        a float (exact) or an :class:`~softhard.estimators.reducer.Estimate` (method ``"kernel"`` or ``"conditional"``).
    """
    where = "gap_slope"
    gaussian = isinstance(law, (Gaussian, GaussianMixture))
    method = resolve_method(method, where, exact=is_binary_linear_gaussian(moe, law, teacher),
                                 conditional=gaussian, fallback="kernel", methods=_SLOPE_METHODS)
    if method == "exact":
        return gap_slope_exact(moe, law, teacher)
    law = _model(moe, law, where)
    n, seed = check_int(n, "n", where), resolve_seed(seed, where)  # one seed for the pilot and the sample
    if method == "conditional":
        space = linear_gap_space(moe, law, teacher)
        if space is not None:
            return conditional.gap_slope_linear(moe, law, teacher, space, n, seed, **mc)
        return lines.gap_slope_lines(moe, law, as_teacher(teacher, moe), n, seed, **mc)
    teacher = as_teacher(teacher, moe)


    if bandwidth is None:
        with torch.no_grad():
            h = kernel_bandwidth(top_two(moe.logits(pilot_sample(law, n, seed)))[0].cpu().numpy(), n, one_sided=True)
    else:
        h = check_float(bandwidth, "bandwidth", where, 0.0, math.inf)

    def terms(x):
        a, e = moe._scores(x)
        delta, w, r = top_two(a)
        hw, hr = e.gather(1, w[:, None])[:, 0], e.gather(1, r[:, None])[:, 0]
        return kernel(delta, h, True) * g1_half_bracket(hw - hr, teacher._signal(x), hw)

    return kernel_estimate(monte_carlo(terms, law, n, seed, method="qmc" if method == "qmc" else "mc", **mc), h,
                            True)


def entropy_slope(router, law, method: str = "auto", n: int = 1 << 20, seed=0, bandwidth: float | None = None,
                  **mc) -> float | Estimate:
    r"""First-order constant of the mean routing entropy [beyond] (nats):

    .. math:: E[H(\pi^\tau(X))] = \tau\,\frac{\pi^2}{3}\,C_\Sigma + o(\tau), \qquad
              \int_{\mathbb R} H(\sigma(u))\,du = \frac{\pi^2}{3},

    with :math:`C_\Sigma` the surface constant of Prop. 3.5 (:func:`softhard.quantities.coarea.interface_constant`;
    :math:`C_\Sigma = \psi(0)` for K = 2). Exact or kernel-estimated as ``interface_constant``.
    """
    c = interface_constant(router, law, method, n, seed, bandwidth, **mc)
    if isinstance(c, Estimate):
        return Estimate(c.value * ENTROPY_CONSTANT, c.stderr * ENTROPY_CONSTANT, c.n, c.method, c.seed, c.info)
    return ENTROPY_CONSTANT * c


def gate_entropy_mean(router, law, taus, n: int = 1 << 20, seed=0, **mc) -> Estimate:
    r"""Monte Carlo mean routing entropy :math:`E[-\sum_k \pi_k^\tau \log \pi_k^\tau]` (nats) on a τ grid.

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` over ``taus`` (shape ``(T,)``; floats for a float τ).
    """
    where = "gate_entropy_mean"
    law, r = _router(router, law, where)
    t, scalar = _taus(taus, where)

    def terms(x):
        a = r.logits(x)
        return torch.stack([gate_entropy(a, float(tau)) for tau in t], dim=-1)

    est = monte_carlo(terms, law, n, seed, **mc)
    return est[0] if scalar else est
