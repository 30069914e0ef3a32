r"""Coarea constants (paper (3.8)–(3.9), Prop. 3.5, Lemma 3.6) and the Assumption 3.4 diagnostic.

By the coarea formula the level-set profile :math:`\psi_{ij}(s) = \int_{g_{ij}=s} p/|\nabla g_{ij}|\,dH^{d-1}`
(3.8) is the density of the random variable :math:`g_{ij}(X)` at s, so :math:`\psi_{ij}(0)` is a density
at a point: exact for a linear router under a Gaussian (mixture) law (:mod:`softhard.closed`),
estimated by a kernel otherwise.

Kernel estimates: :mod:`softhard.estimators.kernel`; lines with the Crofton weight: :mod:`softhard.estimators.lines`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .._validate import check_float, check_grid, check_int
from ..closed.boundary import interface_constant_closed, pair_density, pair_density_at_zero
from ..closed.risk import ENTROPY_CONSTANT
from ..estimators.fits import fit_margin_tail
from ..estimators.kernel import kernel, kernel_estimate, pilot_bandwidths
from ..estimators.lines import coarea_lines
from ..estimators.reducer import Estimate, draw, sample_mean
from ..estimators.registry import Call, Quantity
from ..model.gates import top_two
from ..model.routers import check_pair, score_gradient
from .door import finish, is_gaussian, is_linear_gaussian, logits_of, router_call, sampler

__all__ = ["coarea_constant", "coarea_sum", "interface_constant", "entropy_slope", "interface_diagnostic",
           "level_set_profile", "InterfaceDiagnostic", "COAREA_CONSTANT", "COAREA_SUM", "INTERFACE_CONSTANT",
           "LEVEL_SET_PROFILE"]

COAREA_CONSTANT = Quantity("coarea_constant")
LEVEL_SET_PROFILE = Quantity("level_set_profile")
COAREA_SUM = Quantity("coarea_sum")
INTERFACE_CONSTANT = Quantity("interface_constant")


def _bandwidth(c: Call, values_of) -> float:
    """The kernel bandwidth: the user's, or the rule of :mod:`softhard.estimators.kernel` applied to the first block
    of the sample (a pilot of the same draws) at the sample size the run will use."""
    if c.options["bandwidth"] is not None:
        return c.options["bandwidth"]
    return pilot_bandwidths(c.law, values_of, c.sampling, c.options.get("one_sided", False))


def _options(where, bandwidth):
    return {"bandwidth": None if bandwidth is None else check_float(bandwidth, "bandwidth", where, 0.0, math.inf)}


def coarea_constant(router, law, pair=(0, 1), *, method: str = "auto", n: int | None = None, seed=0,
                    target_rel_error: float | None = None, bandwidth: float | None = None, **sampling) -> Estimate:
    r"""Coarea constant :math:`\psi_{ij}(0)` (3.8): the density of :math:`g_{ij}(X) = a_i(X) - a_j(X)` at 0.

    .. math:: \psi_{ij}(0) = \int_{\{g_{ij} = 0\}} \frac{p}{|\nabla g_{ij}|}\, dH^{d-1}
              = \lim_{w \to 0} \frac{\mu(|g_{ij}| \le w)}{2w} \quad\text{(Lemma 3.6)}

    Args:
        router: any router; law: any law on ℝ^d; pair: ``(i, j)``.
        method: ``"auto"``, ``"exact"`` (linear router, Gaussian (mixture) law: (3.14)), ``"conditional"`` (any router
            under a Gaussian (mixture) law: lines with the Crofton weight, unbiased, no bandwidth;
            :func:`softhard.estimators.lines.coarea_lines`), ``"kernel"`` (any router and law: the kernel estimate
            of :mod:`softhard.estimators.kernel` on sampled inputs; ``sampling="qmc"|"mc"``, bandwidth from the
            first block of the sample unless ``bandwidth`` is given).
        n, seed, target_rel_error, sampling keywords: as in :func:`softhard.boundary_mass`.

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` (a float value).
    """
    where = "coarea_constant"
    method = COAREA_CONSTANT.check_method(method, where)
    call = router_call(where, router, law, None, n, seed, target_rel_error, sampling, **_options(where, bandwidth))
    call.options["pair"] = check_pair(pair, call.model.num_experts, where)
    return COAREA_CONSTANT.estimate(call, method)


@COAREA_CONSTANT.register("exact", applies=lambda c: None if is_linear_gaussian(c.model, c.law) else
                          "a LinearRouter and a Gaussian or GaussianMixture law", cost=lambda c: 1e-4, exact=True,
                          summary="(3.14): ψ(0) = φ(m_g/s)/s per component")
def _coarea_exact(c: Call) -> Estimate:
    return Estimate.exact(pair_density_at_zero(c.model, c.law, c.options["pair"]), "pair_density_at_zero (3.14)")


@COAREA_CONSTANT.register("conditional", applies=lambda c: None if is_gaussian(c.law) else
                          "a Gaussian or GaussianMixture law", summary="lines through the law, Crofton weight")
def _coarea_lines(c: Call) -> Estimate:
    return coarea_lines(c.model, c.law, c.options["pair"], c.sampling, sampler(c, "qmc"))


@COAREA_CONSTANT.register("kernel", applies=lambda c: None, summary="kernel density of g_ij at 0 over inputs")
def _coarea_kernel(c: Call) -> Estimate:
    i, j = c.options["pair"]

    def g(x):
        a = logits_of(c.model, x, c.where)
        return a[:, i] - a[:, j]

    h = _bandwidth(c, g)
    return kernel_estimate(sample_mean(lambda x: kernel(g(x), h, False), c.law, sampler(c, "mc"), c.sampling),
                           h, False)


def level_set_profile(router, law, levels, pair=(0, 1), *, method: str = "auto", n: int | None = None, seed=0,
                      target_rel_error: float | None = None, bandwidth: float | None = None, **sampling) -> Estimate:
    r"""Level-set profile :math:`\psi_{ij}(s)` of Assumption 3.4 / Lemma 3.6 (3.8) at levels s ≠ 0 too: by the
    coarea formula, the density of :math:`g_{ij}(X) = a_i(X) - a_j(X)` at s.

    .. math:: \psi_{ij}(s) = \int_{\{g_{ij} = s\}} \frac{p}{|\nabla g_{ij}|}\, dH^{d-1}
              = \lim_{w\to0}\frac{\mu(|g_{ij} - s| \le w)}{2w}

    Assumption 3.4 asks it finite for :math:`|s| \le r_0` and continuous at 0; :func:`coarea_constant` is s = 0.

    Args:
        router: any router; law: any law on ℝ^d; levels: s, a float or ``(S,)``; pair: ``(i, j)``.
        method: ``"auto"``, ``"exact"`` (linear router, Gaussian (mixture) law: a normal density per component,
            :func:`softhard.closed.boundary.pair_density`), ``"kernel"`` (any router and law: the Epanechnikov kernel
            estimate at every s from one sample, one bandwidth from the first block unless ``bandwidth`` is given).
        n, seed, target_rel_error, sampling keywords: as in :func:`softhard.boundary_mass`.

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` of shape ``(S,)`` (a float for a scalar ``levels``).
    """
    where = "level_set_profile"
    method = LEVEL_SET_PROFILE.check_method(method, where)
    scalar = isinstance(levels, (int, float)) and not isinstance(levels, bool)
    grid = check_grid([levels] if scalar else levels, "levels", where, low=-math.inf).to(torch.float64)
    call = router_call(where, router, law, grid, n, seed, target_rel_error, sampling, **_options(where, bandwidth))
    call.options["pair"] = check_pair(pair, call.model.num_experts, where)
    return finish(LEVEL_SET_PROFILE.estimate(call, method), scalar)


@LEVEL_SET_PROFILE.register("exact", applies=lambda c: None if is_linear_gaussian(c.model, c.law) else
                            "a LinearRouter and a Gaussian or GaussianMixture law", cost=lambda c: 1e-4, exact=True,
                            summary="(3.14) at s: a normal density per component")
def _profile_exact(c: Call) -> Estimate:
    return Estimate.exact(pair_density(c.model, c.law, c.grid, c.options["pair"]), "pair_density (3.8), (3.14)")


@LEVEL_SET_PROFILE.register("kernel", applies=lambda c: None, summary="kernel density of g_ij at each s")
def _profile_kernel(c: Call) -> Estimate:
    i, j = c.options["pair"]

    def g(x):
        a = logits_of(c.model, x, c.where)
        return a[:, i] - a[:, j]

    h = _bandwidth(c, g)
    s = c.grid

    def terms(x):
        u = g(x)
        return kernel(u[:, None] - s.to(u)[None, :], h, False)

    return kernel_estimate(sample_mean(terms, c.law, sampler(c, "mc"), c.sampling), h, False)


def coarea_sum(router, law, *, method: str = "auto", n: int | None = None, seed=0,
               target_rel_error: float | None = None, **sampling) -> Estimate:
    r"""The pairwise sum of (3.9): :math:`\sum_{i<j} \psi_{ij}(0)`, so that
    :math:`\beta_{pair}(w) \le 2w \sum_{i<j}\psi_{ij}(0) + o(w)`.

    Methods as :func:`coarea_constant`: ``"exact"``, ``"conditional"`` (one line estimate per pair, standard errors
    added in quadrature), ``"kernel"`` (one sampling pass, per-pair bandwidths by the rule).
    """
    where = "coarea_sum"
    method = COAREA_SUM.check_method(method, where)
    call = router_call(where, router, law, None, n, seed, target_rel_error, sampling, bandwidth=None)
    K = call.model.num_experts
    call.options["pairs"] = [(i, j) for i in range(K) for j in range(i + 1, K)]
    return COAREA_SUM.estimate(call, method)


@COAREA_SUM.register("exact", applies=lambda c: None if is_linear_gaussian(c.model, c.law) else
                     "a LinearRouter and a Gaussian or GaussianMixture law", cost=lambda c: 1e-4, exact=True,
                     summary="sum of (3.14)")
def _sum_exact(c: Call) -> Estimate:
    return Estimate.exact(sum(pair_density_at_zero(c.model, c.law, p) for p in c.options["pairs"]),
                          "pair_density_at_zero (3.14), summed")


@COAREA_SUM.register("conditional", applies=lambda c: None if is_gaussian(c.law) else
                     "a Gaussian or GaussianMixture law",
                     summary="lines per pair")
def _sum_lines(c: Call) -> Estimate:
    parts = [coarea_lines(c.model, c.law, p, c.sampling, sampler(c, "qmc")) for p in c.options["pairs"]]
    return parts[0].replace(value=float(sum(e.value for e in parts)),
                            stderr=math.sqrt(sum(e.stderr ** 2 for e in parts)),
                            n=sum(e.n for e in parts), converged=all(e.converged for e in parts),
                            dof=min(e.dof for e in parts))


@COAREA_SUM.register("kernel", applies=lambda c: None, summary="kernel densities over inputs, one pass")
def _sum_kernel(c: Call) -> Estimate:
    pairs = c.options["pairs"]
    I, J = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    def differences(x):
        a = logits_of(c.model, x, c.where)
        return a[:, I] - a[:, J]

    hs = torch.as_tensor(pilot_bandwidths(c.law, differences, c.sampling), dtype=torch.float64)

    def terms(x):
        u = differences(x)
        return kernel(u, hs.to(u), False).sum(-1)

    est = sample_mean(terms, c.law, sampler(c, "mc"), c.sampling)
    return est.replace(info={"bandwidth": hs.tolist(), "kernel": "Epanechnikov"})


def interface_constant(router, law, *, method: str = "auto", n: int | None = None, seed=0,
                       target_rel_error: float | None = None, bandwidth: float | None = None, **sampling) -> Estimate:
    r"""Surface constant :math:`C_\Sigma = \sum_{i<j}\int_{\Gamma_{ij}} p/|\nabla g_{ij}|\,dH^{d-1}` of
    Prop. 3.5, with :math:`\Gamma_{ij}` the part of :math:`\{g_{ij}=0\}` where i, j are the top two.

    .. math:: \beta(w) = \mu(\Delta \le w) = 2w\,C_\Sigma + o(w), \qquad C_\Sigma = \tfrac12 f_\Delta(0^+)

    (K = 2: :math:`C_\Sigma = \psi(0)`). Methods: ``"exact"`` (linear router, Gaussian (mixture) law:
    :func:`softhard.closed.boundary.interface_constant_exact`, with its integration error bound), ``"kernel"``
    (half the one-sided kernel estimate of the density of Δ at 0⁺ over sampled inputs).
    """
    where = "interface_constant"
    method = INTERFACE_CONSTANT.check_method(method, where)
    call = router_call(where, router, law, None, n, seed, target_rel_error, sampling, **_options(where, bandwidth),
                       one_sided=True)
    return INTERFACE_CONSTANT.estimate(call, method)


def _interface_cost(c: Call) -> float:
    K = c.model.num_experts
    return 1e-4 * K * K if K <= 4 else 2e-2 * K * (K - 1) / 2


@INTERFACE_CONSTANT.register("exact", applies=lambda c: None if is_linear_gaussian(c.model, c.law) else
                             "a LinearRouter and a Gaussian or GaussianMixture law", cost=_interface_cost,
                             exact=True, summary="ψ_ij(0) times a (K−2)-dimensional orthant probability")
def _interface_exact(c: Call) -> Estimate:
    v, bound = interface_constant_closed(c.model, c.law, where=c.where)
    return Estimate.exact(v, "interface_constant_exact", bound)


@INTERFACE_CONSTANT.register("kernel", applies=lambda c: None, summary="one-sided kernel density of Δ at 0")
def _interface_kernel(c: Call) -> Estimate:
    def margin(x):
        return top_two(logits_of(c.model, x, c.where))[0]

    h = _bandwidth(c, margin)
    est = sample_mean(lambda x: kernel(margin(x), h, True), c.law, sampler(c, "mc"), c.sampling)
    return kernel_estimate(est, h, True, 0.5)


def entropy_slope(router, law, *, method: str = "auto", n: int | None = None, seed=0,
                  target_rel_error: float | None = None, bandwidth: float | None = None, **sampling) -> Estimate:
    r"""First-order constant of the mean routing entropy [beyond] (nats):

    .. math:: E[H(\pi^\tau(X))] = \tau\,\frac{\pi^2}{3}\,C_\Sigma + o(\tau), \qquad
              \int_{\mathbb R} H(\sigma(u))\,du = \frac{\pi^2}{3},

    with :math:`C_\Sigma` the surface constant of Prop. 3.5 (:func:`interface_constant`, whose methods and
    keywords it takes; :math:`C_\Sigma = \psi(0)` for K = 2).
    """
    where = "entropy_slope"
    method = INTERFACE_CONSTANT.check_method(method, where)
    call = router_call(where, router, law, None, n, seed, target_rel_error, sampling, **_options(where, bandwidth),
                       one_sided=True)
    return INTERFACE_CONSTANT.estimate(call, method).scaled(ENTROPY_CONSTANT)


@dataclass(frozen=True)
class InterfaceDiagnostic:
    """Result of :func:`interface_diagnostic`.

    ``verdict`` is "regular", "degenerate" or "inconclusive" with the ``reasons``; ``bin_edges``
    ``(B+1,)`` and ``density`` ``(B,)`` are the histogram of Δ on :math:`[0, t_{max}]` (density per unit
    width over the whole sample); ``tail`` is the margin-tail fit :math:`\\mu(\\Delta \\le t) \\approx C t^\\alpha`;
    ``grad_near`` the 10/50/90% quantiles of :math:`|\\nabla_x g_{(1)(2)}|` on the ``n_near`` samples with
    Δ ≤ ``near_width``, ``grad_median`` its median over (up to 4096 of) all samples.
    """

    verdict: str
    reasons: tuple[str, ...]
    bin_edges: np.ndarray
    density: np.ndarray
    tail: object
    grad_near: dict
    grad_median: float
    near_width: float
    n_near: int
    n: int
    seed: int | None = None
    info: dict = field(default_factory=dict, compare=False, repr=False)


def _top2_grad_norms(r, x: torch.Tensor, top: torch.Tensor) -> np.ndarray:
    """:math:`|\\nabla_x (a_{(1)} - a_{(2)})|` per sample, by autograd, grouped by the (winner, runner-up) pair."""
    out = np.empty(x.shape[0])
    for i, j in {tuple(p) for p in top.tolist()}:
        m = (top[:, 0] == i) & (top[:, 1] == j)
        out[m.numpy()] = score_gradient(r, x[m], (i, j)).norm(dim=1).detach().cpu().numpy()
    return out


def interface_diagnostic(router, law, *, n: int = 1 << 16, seed=0, tail_fraction: float = 0.05,
                         near_fraction: float = 0.01, bins: int = 20, grad_tol: float = 0.05,
                         alpha_tol: float = 0.2) -> InterfaceDiagnostic:
    r"""The Assumption 3.4 diagnostic: the law of Δ near 0 and :math:`|\nabla_x g_{(1)(2)}|` on near-ties.

    Under Assumption 3.4 (:math:`|\nabla g_{ij}| \ge c_0 > 0` near the surface, ψ continuous) the top-two
    margin has a finite positive density at 0⁺, so :math:`\mu(\Delta \le t) \approx C t^\alpha` with α = 1,
    and the gradient of the top-two score difference stays away from 0 on near-tie samples. A flat
    interface (e.g. :math:`g = x_1^3`: α = 1/3, :math:`|\nabla g| = 3x_1^2 \to 0`) piles mass up near 0
    with tiny gradients. Verdict "degenerate" when either

    - the 10% quantile of :math:`|\nabla g_{(1)(2)}|` on the near-tie samples (the ``near_fraction``
      smallest margins) is below ``grad_tol`` times its median over all samples, or
    - the fitted tail exponent (:func:`softhard.estimators.fits.fit_margin_tail` on the ``tail_fraction``
      smallest margins) is below ``1 - alpha_tol`` and 3 standard errors below 1;

    "inconclusive" with fewer than 30 near-tie samples; "regular" otherwise.

    Args:
        router: any router (autograd through it for the gradients); law: law on ℝ^d; n, seed: sample.

    Returns:
        :class:`InterfaceDiagnostic`.
    """
    where = "interface_diagnostic"
    n = check_int(n, "n", where, low=100)
    tail_fraction = check_float(tail_fraction, "tail_fraction", where, 0.0, 1.0, high_open=False)
    near_fraction = check_float(near_fraction, "near_fraction", where, 0.0, tail_fraction, high_open=False)
    bins = check_int(bins, "bins", where)
    grad_tol = check_float(grad_tol, "grad_tol", where, 0.0, 1.0)
    alpha_tol = check_float(alpha_tol, "alpha_tol", where, 0.0, 1.0)
    call = router_call(where, router, law, None, n, seed, None, {})
    r, seed = call.model, call.sampling.seed
    x = draw(call.law, n, seed)
    with torch.no_grad():
        delta, first, second = top_two(logits_of(r, x, where))
    top = torch.stack([first, second], 1)
    delta = delta.cpu().numpy()
    t_max = float(np.quantile(delta, tail_fraction))
    near_width = float(np.quantile(delta, near_fraction))
    counts, edges = np.histogram(delta, bins=bins, range=(0.0, t_max)) if t_max > 0 else (
        np.array([n]), np.array([0.0, 0.0]))
    density = counts / (n * np.diff(edges)) if t_max > 0 else np.array([np.inf])
    tail = fit_margin_tail(delta, t_max=t_max, zeros="drop") if t_max > 0 else None
    near = np.flatnonzero(delta <= near_width)
    ref = np.arange(min(n, 4096))
    g_near = _top2_grad_norms(r, x[near], top[near].cpu())
    g_med = float(np.median(_top2_grad_norms(r, x[ref], top[ref].cpu())))
    q = dict(zip(("q10", "q50", "q90"), np.quantile(g_near, [0.1, 0.5, 0.9]).tolist()))
    reasons = []
    if q["q10"] < grad_tol * g_med:
        reasons.append(f"|grad g_(1)(2)| on near-ties is small: 10% quantile {q['q10']:.3g} vs median "
                       f"{g_med:.3g} over all samples (< {grad_tol:g}x)")
    if tail is None:
        reasons.append(f"at least {tail_fraction:g} of the mass has margin exactly 0 (ties)")
    elif tail.alpha < 1 - alpha_tol and tail.alpha + 3 * tail.alpha_stderr < 1:
        reasons.append(f"mass piles up near Δ = 0: tail exponent α = {tail.alpha:.3g} ± {tail.alpha_stderr:.2g} "
                       "(a regular interface has α = 1)")
    verdict = "degenerate" if reasons else ("inconclusive" if len(near) < 30 else "regular")
    return InterfaceDiagnostic(verdict, tuple(reasons), edges, density, tail, q, g_med, near_width, len(near), n,
                               seed)
