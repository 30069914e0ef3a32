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

Bandwidth rule: :math:`h = \hat s\, N^{-1/4}`, with :math:`\hat s = \sigma/\sqrt{\max(1, m^2/\sigma^2 - 1)}`,
:math:`\sigma = \min(\mathrm{sd}, \mathrm{IQR}/1.349)` and m the median of the sample (for one-sided data σ is
also at most the spread of the sample reflected about 0): the scale on which the density varies at 0, which for
a normal :math:`N(m, \sigma^2)` is :math:`\sigma^2/\sqrt{m^2 - \sigma^2}` once 0 is in its tail
(:math:`f''/f = (m^2 - \sigma^2)/\sigma^4` there) — an interface 2.5 standard deviations out had a bias half its
error bar with σ alone (coverage 90 %, ``benchmarks/coverage.py``). The bias is
:math:`\tfrac{h^2}{2} f''(0) \int u^2 k` and the standard error :math:`\sqrt{f(0)\int k^2/(N h)}`,
so bias/stderr :math:`\propto \hat s^{5/2} N^{-1/8}`: this rule undersmooths (the MSE-optimal
:math:`N^{-1/5}` would make the bias comparable to the error bar), keeping the bias a small fraction of
the reported standard error for densities that vary on the scale :math:`\hat s`; the coverage of
"value ± 2 stderr" is checked in the tests.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .._validate import as_tensor, check_finite, check_float, check_int, fail
from ..closed.normal import to_numpy
from .reducer import BLOCK, Estimate, Sampling, user_stacklevel, draw, mean_estimate

__all__ = ["kernel_bandwidth", "kernel", "kernel_estimate", "kernel_bound", "density_at_zero", "pilot_bandwidths",
           "pilot_sample", "kernel_pilot", "KernelPilot", "MIN_HITS", "FewHits"]


def kernel_bandwidth(values, n: int | None = None, one_sided: bool = False, *, local: bool = True,
                     _where: str = "kernel_bandwidth") -> float:
    r"""The bandwidth rule :math:`h = \hat s\, N^{-1/4}` (module docstring); ``values`` of shape ``(N,)``.

    ``n`` is the sample size the estimate will use (default: ``len(values)``; a pilot sample may be
    smaller than the final one). ``local=False`` drops the local correction (:math:`\hat s` is the spread of the
    sample, reflected about 0 when one-sided): for data whose density at 0 is not a Gaussian tail — the margins of
    a trained model, where 0 is the edge of the support and the caller checks the bandwidth itself
    (``inspect.hardening``: h, h/2, h/4). Errors name ``_where``
    (the public function that needed the bandwidth).
    """
    where = _where
    for name, flag in (("one_sided", one_sided), ("local", local)):
        if not isinstance(flag, bool):
            fail(name, where, "a bool", flag, TypeError)
    v = to_numpy(as_tensor(values, "values", where)).reshape(-1)
    if v.size < 2 or not np.isfinite(v).all():
        fail("values", where, "a sample of at least 2 finite values", values)
    n = v.size if n is None else check_int(n, "n", where)
    raw = _spread(v)
    s = _spread(np.concatenate([v, -v])) if one_sided else raw
    if local and raw > 0:  # far from the centre of the sample the density at 0 varies on the scale σ²/|median|
        s = min(s, raw) / math.sqrt(max(1.0, (float(np.median(v)) / raw) ** 2 - 1.0))
    if not s > 0:
        fail("values", where, "a sample with a positive spread (sd and IQR > 0)", f"scale {s}")
    return s * float(n) ** -0.25


def _spread(v: np.ndarray) -> float:
    q75, q25 = np.percentile(v, [75, 25])
    return min(float(v.std()), (q75 - q25) / 1.349)


def kernel(v: torch.Tensor, h: float, one_sided: bool) -> torch.Tensor:
    u = v / h
    if one_sided:
        return torch.where((u >= 0) & (u <= 1), 4.0 - 6.0 * u, torch.zeros_like(u)) / h
    return torch.where(u.abs() <= 1, 0.75 * (1.0 - u * u), torch.zeros_like(u)) / h


def kernel_bound(h, one_sided: bool):
    """The largest ``|k(u)|/h`` of the kernel: ``4/h`` (boundary kernel), ``0.75/h`` (Epanechnikov); the ``bound``
    of :func:`~softhard.estimators.reducer.sample_mean` for kernel terms (``h`` a float or an array)."""
    return (4.0 if one_sided else 0.75) / np.asarray(h, dtype=np.float64)


def kernel_estimate(est: Estimate, h: float, one_sided: bool, scale: float = 1.0, where: str = "kernel",
                    quiet: bool = False) -> Estimate:
    """A sampled kernel average as the kernel estimate (times ``scale``). Fewer than :data:`MIN_HITS` samples within
    the window (``est.info["hits"]``) leave the normal interval untrustworthy: ``converged=False`` and a
    :class:`FewHits` warning (none at all: the reducer's upper bound)."""
    kind = "boundary (4 - 6u) on [0, 1]" if one_sided else "Epanechnikov"
    est = est.scaled(scale).replace(method="kernel", info={"bandwidth": h, "kernel": kind})
    hits = int(np.sum(est.info.get("hits", MIN_HITS)))
    if hits < MIN_HITS and est.info.get("no_hit") is None:
        est = est.replace(converged=False)
        if quiet:
            return est
        warnings.warn(f"{where}: only {hits} of {est.n} samples fell within the kernel window (bandwidth "
                      f"{np.round(h, 6).tolist()}); below {MIN_HITS} its standard error is not trusted: raise n",
                      FewHits, stacklevel=user_stacklevel())
        est = est.replace(converged=False)
    return est


class FewHits(UserWarning):
    """A kernel estimate had fewer than :data:`MIN_HITS` samples within its window: its interval is not trusted."""


MIN_HITS = 100  # samples within the kernel window below which the kernel estimate's interval is not trusted


@dataclass(frozen=True)
class KernelPilot:
    """What the first block of a kernel run's sample says: its ``bandwidth`` (a float, or ``(P,)`` for several
    differences), the ``hits`` (samples within the window(s)) among its ``n_pilot`` draws, and ``n_run``, the most
    samples the run may use (``n``, else ``max_samples``)."""

    bandwidth: float | np.ndarray
    hits: int
    n_pilot: int
    n_run: int

    @property
    def expected_hits(self) -> float:
        """Hits expected in the run: the pilot's rate times ``n_run``; a pilot without a hit knows only that the
        rate is below ~3/``n_pilot`` (the rule of three), so that upper end is taken."""
        return max(self.hits, 3) * self.n_run / self.n_pilot if self.hits == 0 else self.hits * self.n_run / self.n_pilot

    def declines(self) -> str | None:
        """``None``, or why a kernel estimate would not be trusted here (fewer than :data:`MIN_HITS` hits expected,
        at most, in the run): the applicability rule of the kernel methods, so that ``method="auto"`` moves on."""
        if self.expected_hits >= MIN_HITS:
            return None
        return (f"at least {MIN_HITS} samples within the kernel window (bandwidth {np.round(self.bandwidth, 6).tolist()})"
                f"; the first {self.n_pilot} draws put {self.hits} there, so {'at most ' if self.hits == 0 else ''}about "
                f"{self.expected_hits:.3g} are expected in {self.n_run} (a rare interface: raise n or max_samples)")


def kernel_pilot(law, values_of, sampling: Sampling, one_sided: bool = False, bandwidth=None) -> KernelPilot:
    """The bandwidth rule at the sample size a run of ``sampling`` will use (``n``, else at most 2²⁰), applied to
    ``values_of(x)`` (``(N,)``, or ``(N, P)`` for P differences with a bandwidth each) on the first block of its
    draws (unless ``bandwidth`` is given), and the samples of that block within the window(s)."""
    n = sampling.n if sampling.n is not None else min(sampling.max_samples, 1 << 20)
    with torch.no_grad():
        v = values_of(pilot_sample(law, n, sampling.seed)).detach().cpu().numpy()
    if bandwidth is not None:
        h = bandwidth
    elif v.ndim == 1:
        h = kernel_bandwidth(v, n, one_sided=one_sided)
    else:
        h = np.array([kernel_bandwidth(col, n, one_sided=one_sided) for col in v.T])
    inside = ((v >= 0) & (v <= np.asarray(h))) if one_sided else (np.abs(v) <= np.asarray(h))
    return KernelPilot(h, int(inside.sum()), v.shape[0], sampling.n if sampling.n is not None else sampling.max_samples)


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
    """The bandwidth of :func:`kernel_pilot`: a float for values ``(N,)``, an array ``(P,)`` for ``(N, P)``."""
    return kernel_pilot(law, values_of, sampling, one_sided).bandwidth


def pilot_sample(law, n: int, seed) -> torch.Tensor:
    """The first block of the sample that :func:`monte_carlo` will use (sets the bandwidth)."""
    return draw(law, min(n, BLOCK), seed)
