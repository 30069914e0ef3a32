r"""Kernel estimates of a density at a point, for the coarea constants (3.8) and the margin density at 0.

By the coarea formula the level-set profile ψ_ij(s) (3.8) is the density of g_ij(X) at s, so a coarea
constant is a density at a point; where no closed form applies it is estimated by a kernel.

Kernel estimator (used by :func:`density_at_zero` and everything sampled here). For a sample
:math:`V_1, \dots, V_N` with density f and a bandwidth h,

.. math:: \hat f(0) = \frac1N \sum_n \frac1h\, k(V_n/h), \qquad
          k(u) = \tfrac34 (1 - u^2)\,1\{|u| \le 1\} \quad\text{(two-sided, Epanechnikov)},

and for non-negative V (margins Δ ≥ 0), the density at 0⁺, :math:`\lim_{w\to0} P(0 \le V \le w)/w`, with
the boundary kernel :math:`k(u) = (4 - 6u)\,1\{0 \le u \le 1\}` (:math:`\int k = 1`, :math:`\int u k = 0`,
so the bias is :math:`O(h^2)` at the boundary too). The terms are i.i.d., so the standard error is
their standard deviation over :math:`\sqrt N` (the one reducer, :func:`~softhard.estimators.reducer.mean_estimate`
or :func:`~softhard.estimators.reducer.monte_carlo`).

Bandwidth rule: :math:`h = \hat s\, N^{-1/4}`, with :math:`\hat s = \min(\mathrm{sd}, \mathrm{IQR}/1.349)`
(for one-sided data, of the sample reflected about 0). The bias is
:math:`\tfrac{h^2}{2} f''(0) \int u^2 k` and the standard error :math:`\sqrt{f(0)\int k^2/(N h)}`,
so bias/stderr :math:`\propto \hat s^{5/2} N^{-1/8}`: this rule undersmooths (the MSE-optimal
:math:`N^{-1/5}` would make the bias comparable to the error bar), keeping the bias a small fraction of
the reported standard error for densities that vary on the scale :math:`\hat s`; the coverage of
"value ± 2 stderr" is checked in the tests.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validate import as_tensor, check_finite, check_float, check_int, fail
from ..closed.normal import to_numpy
from .reducer import BLOCK, Estimate, Sampling, draw, mean_estimate

__all__ = ["kernel_bandwidth", "kernel", "kernel_estimate", "density_at_zero", "pilot_bandwidths", "pilot_sample"]


def kernel_bandwidth(values, n: int | None = None, one_sided: bool = False, *,
                     _where: str = "kernel_bandwidth") -> float:
    r"""The bandwidth rule :math:`h = \hat s\, N^{-1/4}` (module docstring); ``values`` of shape ``(N,)``.

    ``n`` is the sample size the estimate will use (default: ``len(values)``; a pilot sample may be
    smaller than the final one). Errors name ``_where`` (the public function that needed the bandwidth).
    """
    where = _where
    if not isinstance(one_sided, bool):
        fail("one_sided", where, "a bool", one_sided, TypeError)
    v = to_numpy(as_tensor(values, "values", where)).reshape(-1)
    if v.size < 2 or not np.isfinite(v).all():
        fail("values", where, "a sample of at least 2 finite values", values)
    n = v.size if n is None else check_int(n, "n", where)
    if one_sided:
        v = np.concatenate([v, -v])
    q75, q25 = np.percentile(v, [75, 25])
    s = min(float(v.std()), (q75 - q25) / 1.349)
    if not s > 0:
        fail("values", where, "a sample with a positive spread (sd and IQR > 0)", f"scale {s}")
    return s * float(n) ** -0.25


def kernel(v: torch.Tensor, h: float, one_sided: bool) -> torch.Tensor:
    u = v / h
    if one_sided:
        return torch.where((u >= 0) & (u <= 1), 4.0 - 6.0 * u, torch.zeros_like(u)) / h
    return torch.where(u.abs() <= 1, 0.75 * (1.0 - u * u), torch.zeros_like(u)) / h


def kernel_estimate(est: Estimate, h: float, one_sided: bool, scale: float = 1.0) -> Estimate:
    kind = "boundary (4 - 6u) on [0, 1]" if one_sided else "Epanechnikov"
    return Estimate(est.value * scale, est.stderr * scale, est.n, "kernel", est.seed,
                    {**est.info, "bandwidth": h, "kernel": kind})


def density_at_zero(values, bandwidth: float | None = None, one_sided: bool = False) -> Estimate:
    r"""Density at 0 of a sample of scalars, with a standard error (kernel estimator, module docstring).

    .. math:: \hat f(0) = \frac1N\sum_n h^{-1} k(V_n/h)

    Args:
        values: the sample ``V``, shape ``(N,)``, ``N >= 2``.
        bandwidth: ``h > 0``; ``None`` uses :func:`kernel_bandwidth`.
        one_sided: for non-negative values (margins Δ ≥ 0): the density at 0⁺,
            :math:`\lim_{w\to0} P(0 \le V \le w)/w` (boundary kernel).

    Returns:
        :class:`~softhard.estimators.reducer.Estimate` (method ``"kernel"``, ``info["bandwidth"]``).
    """
    where = "density_at_zero"
    if not isinstance(one_sided, bool):
        fail("one_sided", where, "a bool", one_sided, TypeError)
    v = as_tensor(values, "values", where)
    if v.ndim != 1 or v.shape[0] < 2:
        fail("values", where, "an array of shape (N,) with N >= 2", f"shape {tuple(v.shape)}")
    check_finite(v, "values", where)
    if one_sided and bool((v < 0).any()):
        fail("values", where, "non-negative with one_sided=True", f"minimum {float(v.min()):.3g}")
    h = kernel_bandwidth(v.cpu().numpy(), one_sided=one_sided, _where=where) if bandwidth is None else check_float(
        bandwidth, "bandwidth", where, 0.0, math.inf)
    inside = int(((v >= 0) & (v <= h)).sum() if one_sided else (v.abs() <= h).sum())
    if inside < 2:
        param, rule = ("values", "a sample with at least 2 values") if bandwidth is None else (
            "bandwidth", "wide enough to hold at least 2 values of the sample")
        fail(param, where, f"{rule} within the bandwidth h = {h:.3g} of 0 (with fewer the kernel estimate has no "
             "spread to measure its error)", f"{inside} of {v.shape[0]}" if bandwidth is None else bandwidth)
    return kernel_estimate(mean_estimate(kernel(v, h, one_sided)), h, one_sided)


def pilot_bandwidths(law, values_of, sampling: Sampling, one_sided: bool = False):
    """The bandwidth rule at the sample size a run of ``sampling`` will use (``n``, else at most 2²⁰), applied to
    ``values_of(x)`` on the first block of its draws: a float for values ``(N,)``, an array ``(P,)`` for ``(N, P)``."""
    n = sampling.n if sampling.n is not None else min(sampling.max_samples, 1 << 20)
    with torch.no_grad():
        v = values_of(pilot_sample(law, n, sampling.seed)).detach().cpu().numpy()
    if v.ndim == 1:
        return kernel_bandwidth(v, n, one_sided=one_sided, _where=sampling.where)
    return np.array([kernel_bandwidth(col, n, one_sided=one_sided, _where=sampling.where) for col in v.T])


def pilot_sample(law, n: int, seed) -> torch.Tensor:
    """The first block of the sample that :func:`monte_carlo` will use (sets the bandwidth)."""
    return draw(law, min(n, BLOCK), seed)
