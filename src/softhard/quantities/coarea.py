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

from .._validate import check_float, check_int, fail
from ..closed.boundary import interface_constant_exact, pair_density_at_zero
from ..estimators.fits import fit_margin_tail
from ..estimators.kernel import kernel, kernel_bandwidth, kernel_estimate, pilot_sample
from ..estimators.lines import coarea_lines
from ..estimators.reducer import Estimate, draw, monte_carlo, resolve_seed
from ..estimators.registry import resolve_method
from ..model.laws import Gaussian, GaussianMixture, as_law
from ..model.routers import LinearRouter, as_router, check_pair, score_gradient

__all__ = ["coarea_constant", "coarea_sum", "interface_constant", "interface_diagnostic", "InterfaceDiagnostic",
           "METHODS"]


METHODS = ("auto", "exact", "kernel")


def _method(method, where: str) -> str:
    if method not in METHODS:
        fail("method", where, f"one of {METHODS}", method)
    return method


def _linear_gaussian(router, law) -> bool:
    return isinstance(router, LinearRouter) and isinstance(law, (Gaussian, GaussianMixture))


def _router(router, law, where: str):
    """``(law, router)`` validated; a plain callable router gets ``d`` from the law."""
    law = as_law(law, where)
    r = as_router(router, law.d)
    if r.d is not None and r.d != law.d:
        fail("law", where, f"a law on R^{r.d} (the router's input dimension)", f"a law on R^{law.d}")
    return law, r


def coarea_constant(router, law, pair=(0, 1), method: str = "auto", n: int = 1 << 20, seed=0,
                    bandwidth: float | None = None, **mc) -> float | Estimate:
    r"""Coarea constant :math:`\psi_{ij}(0)` (3.8): the density of :math:`g_{ij}(X) = a_i(X) - a_j(X)` at 0.

    .. math:: \psi_{ij}(0) = \int_{\{g_{ij} = 0\}} \frac{p}{|\nabla g_{ij}|}\, dH^{d-1}
              = \lim_{w \to 0} \frac{\mu(|g_{ij}| \le w)}{2w} \quad\text{(Lemma 3.6)}

    Args:
        router: any router; law: any law on ℝ^d; pair: ``(i, j)``.
        method: ``"exact"`` (linear router, Gaussian or mixture law: (3.14)), ``"kernel"`` (or ``"mc"``;
            ``"qmc"`` with scrambled Sobol sampling: Monte Carlo kernel estimate, module docstring;
            bandwidth from the first block of the sample unless given), ``"conditional"`` (any router under
            a Gaussian (mixture) law: lines with the Crofton weight, unbiased, no bandwidth,
            :func:`softhard.estimators.lines.coarea_lines`; keyword ``sampling="mc"|"qmc"``; ``n`` is a budget: it
            stops at ``target_rel_error``, 5e-3 unless given), ``"auto"``: exact, else
            conditional, else kernel (``docs/estimators.md``).
        n, seed: sample size and seed of the kernel estimate; further keywords go to ``monte_carlo``.

    Returns:
        a float (exact) or an :class:`~softhard.estimators.reducer.Estimate`.
    """
    where = "coarea_constant"
    gaussian = isinstance(law, (Gaussian, GaussianMixture))
    method = resolve_method(method, where, exact=_linear_gaussian(router, law), conditional=gaussian,
                                 fallback="kernel", methods=("auto", "exact", "conditional", "kernel", "mc", "qmc"))
    if method == "exact":
        return pair_density_at_zero(router, law, pair)
    law, r = _router(router, law, where)
    i, j = check_pair(pair, r.num_experts, where)
    n, seed = check_int(n, "n", where), resolve_seed(seed, where)  # one seed for the pilot and the sample
    if method == "conditional":
        return coarea_lines(r, law, (i, j), n, seed, **mc)

    def g(x):
        a = r.logits(x)
        return a[:, i] - a[:, j]

    h = kernel_bandwidth(g(pilot_sample(law, n, seed)).detach().cpu().numpy(), n) if bandwidth is None else check_float(
        bandwidth, "bandwidth", where, 0.0, math.inf)
    est = monte_carlo(lambda x: kernel(g(x), h, False), law, n, seed, method="qmc" if method == "qmc" else "mc",
                      **mc)
    return kernel_estimate(est, h, False)


def coarea_sum(router, law, method: str = "auto", n: int = 1 << 20, seed=0, **mc) -> float | Estimate:
    r"""The pairwise sum of (3.9): :math:`\sum_{i<j} \psi_{ij}(0)`, so that
    :math:`\beta_{pair}(w) \le 2w \sum_{i<j}\psi_{ij}(0) + o(w)`.

    Exact (float) or kernel-estimated (one Monte Carlo pass, per-pair bandwidths by the rule) as in
    :func:`coarea_constant`.
    """
    where = "coarea_sum"
    method = _method(method, where)
    if method == "exact" or (method == "auto" and _linear_gaussian(router, law)):
        K = router.num_experts if isinstance(router, LinearRouter) else 2  # else pair_density_at_zero raises
        return sum(pair_density_at_zero(router, law, (i, j)) for i in range(K) for j in range(i + 1, K))
    law, r = _router(router, law, where)
    pairs = [(i, j) for i in range(r.num_experts) for j in range(i + 1, r.num_experts)]
    n, seed = check_int(n, "n", where), resolve_seed(seed, where)  # one seed for the pilot and the sample
    I, J = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    a0 = r.logits(pilot_sample(law, n, seed)).detach()
    hs = torch.tensor([kernel_bandwidth((a0[:, i] - a0[:, j]).cpu().numpy(), n) for i, j in pairs],
                      dtype=torch.float64)

    def terms(x):
        a = r.logits(x)
        u = (a[:, I] - a[:, J]) / hs.to(a)
        return (torch.where(u.abs() <= 1, 0.75 * (1 - u * u), torch.zeros_like(u)) / hs.to(a)).sum(-1)

    est = monte_carlo(terms, law, n, seed, **mc)
    return Estimate(est.value, est.stderr, est.n, "kernel", est.seed,
                    {**est.info, "bandwidth": hs.tolist(), "kernel": "Epanechnikov"})


def interface_constant(router, law, method: str = "auto", n: int = 1 << 20, seed=0,
                       bandwidth: float | None = None, **mc) -> float | Estimate:
    r"""Surface constant :math:`C_\Sigma = \sum_{i<j}\int_{\Gamma_{ij}} p/|\nabla g_{ij}|\,dH^{d-1}` of
    Prop. 3.5, with :math:`\Gamma_{ij}` the part of :math:`\{g_{ij}=0\}` where i, j are the top two.

    .. math:: \beta(w) = \mu(\Delta \le w) = 2w\,C_\Sigma + o(w), \qquad C_\Sigma = \tfrac12 f_\Delta(0^+)

    (K = 2: :math:`C_\Sigma = \psi(0)`). Exact for a linear router under a Gaussian (mixture) law
    (:func:`softhard.closed.boundary.interface_constant_exact`); otherwise half the one-sided kernel estimate
    of the density of Δ at 0⁺.
    """
    where = "interface_constant"
    method = _method(method, where)
    if method == "exact" or (method == "auto" and _linear_gaussian(router, law)):
        return interface_constant_exact(router, law)
    law, r = _router(router, law, where)
    n, seed = check_int(n, "n", where), resolve_seed(seed, where)  # one seed for the pilot and the sample

    def margin(x):
        top = torch.topk(r.logits(x), 2, dim=-1).values
        return top[:, 0] - top[:, 1]

    h = kernel_bandwidth(margin(pilot_sample(law, n, seed)).detach().cpu().numpy(), n, one_sided=True) \
        if bandwidth is None else check_float(bandwidth, "bandwidth", where, 0.0, math.inf)
    est = monte_carlo(lambda x: kernel(margin(x), h, True), law, n, seed, **mc)
    return kernel_estimate(est, h, True, 0.5)


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


def interface_diagnostic(router, law, n: int = 1 << 16, seed=0, *, tail_fraction: float = 0.05,
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
    law, r = _router(router, law, where)
    n = check_int(n, "n", where, low=100)
    tail_fraction = check_float(tail_fraction, "tail_fraction", where, 0.0, 1.0, high_open=False)
    near_fraction = check_float(near_fraction, "near_fraction", where, 0.0, tail_fraction, high_open=False)
    bins = check_int(bins, "bins", where)
    grad_tol = check_float(grad_tol, "grad_tol", where, 0.0, 1.0)
    alpha_tol = check_float(alpha_tol, "alpha_tol", where, 0.0, 1.0)
    seed = resolve_seed(seed, where)
    x = draw(law, n, seed)
    with torch.no_grad():
        vals, top = torch.topk(r.logits(x), 2, dim=-1)
    delta = (vals[:, 0] - vals[:, 1]).cpu().numpy()
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
