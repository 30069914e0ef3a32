r"""Input laws μ on ℝ^d (paper §2): sampling from a generator, from uniforms (for QMC), and densities.

Every law exposes

- ``d``: the input dimension;
- ``sample(n, generator) -> (n, d)``: i.i.d. draws using only ``generator`` (a ``torch.Generator`` or a
  ``numpy.random.Generator``; the reducer uses NumPy generators, whose float64 normals are about twice
  as fast as torch's on the CPU);
- ``qmc_dim`` and ``from_uniform(u) -> (n, d)``: the same law as a map of ``u ~ U[0,1)^qmc_dim``
  (used by scrambled Sobol quasi-Monte Carlo);
- ``log_prob(x) -> (n,)``: the log density where there is one.

Everything is float64 on the CPU unless a ``device``/``dtype`` is given.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validate import DTYPE, as_tensor, check_finite, check_inputs, check_int, fail

__all__ = ["Law", "Gaussian", "GaussianMixture", "Uniform", "Empirical", "as_law", "standard_normal", "standard_uniform",
           "U_EPS"]

U_EPS = 1e-15
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def standard_normal(generator, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """Standard normals of ``shape`` from a torch or NumPy generator, in ``dtype`` on ``device``."""
    if isinstance(generator, np.random.Generator):
        z = generator.standard_normal(shape, dtype=_NP_DTYPES.get(dtype, np.float64))
        return torch.from_numpy(z).to(device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, dtype=dtype, device="cpu").to(device)


def standard_uniform(generator, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """Uniforms on [0, 1) of ``shape`` from a torch or NumPy generator, in ``dtype`` on ``device``."""
    if isinstance(generator, np.random.Generator):
        u = generator.random(shape, dtype=_NP_DTYPES.get(dtype, np.float64))
        return torch.from_numpy(u).to(device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, dtype=dtype, device="cpu").to(device)


class Law:
    """Base class of input laws."""

    d: int
    qmc_dim: int
    dtype: torch.dtype = DTYPE
    device: torch.device = torch.device("cpu")

    def sample(self, n: int, generator: torch.Generator | np.random.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no density")

    def density(self, x) -> torch.Tensor:
        """Density ``p(x)``, shape ``(n,)``."""
        return self.log_prob(x).exp()

    def _n(self, n) -> int:
        return check_int(n, "n", f"{type(self).__name__}.sample", low=0)


def _check_cov(cov: torch.Tensor, d: int, where: str, param: str = "cov") -> torch.Tensor:
    if cov.shape != (d, d):
        fail(param, where, f"a ({d}, {d}) matrix", f"shape {tuple(cov.shape)}")
    check_finite(cov, param, where)
    scale = max(1.0, float(cov.abs().max()))
    if not torch.allclose(cov, cov.T, atol=1e-10 * scale, rtol=0):
        fail(param, where, "symmetric", cov)
    lam = torch.linalg.eigvalsh(cov)
    if float(lam.min()) < -1e-10 * scale:
        fail(param, where, "positive semi-definite", f"smallest eigenvalue {float(lam.min()):.3g}")
    return 0.5 * (cov + cov.T)


# eigenvalues below this fraction of the largest are rounding, not variance: a covariance built as
# S − SvvᵀS/vᵀSv (a law conditioned on a hyperplane) keeps ~1e-16–1e-12·λ_max where it should have 0
_RANK_RTOL = 1e-10


def _sqrt_factor(cov: torch.Tensor) -> torch.Tensor:
    r"""A rank-revealing factor ``L`` (``(d, d)``) with :math:`LL^\top = \Sigma`.

    Cholesky when Σ is numerically positive definite (every eigenvalue above ``_RANK_RTOL``·λ_max);
    otherwise the eigen-factor :math:`V\,\mathrm{diag}(\sqrt{\lambda_i}\,1\{\lambda_i > \mathrm{cut}\})`, whose
    columns for the dropped eigenvalues are exactly 0. Cholesky of a singular Σ may succeed with a
    rounding-level pivot and leave a spurious column (~1e-7 for a conditioned N(0, I₂)); code that asks
    whether a direction has zero variance (``closed.moments.region_moments``) would then miss it.
    """
    lam, V = torch.linalg.eigh(cov)
    cut = _RANK_RTOL * float(lam[-1].clamp_min(0))
    if float(lam[0]) > cut:
        L, info = torch.linalg.cholesky_ex(cov)
        if int(info) == 0:
            return L
    return V * torch.where(lam > cut, lam, torch.zeros_like(lam)).sqrt()


class Gaussian(Law):
    r"""Gaussian law :math:`N(m, S)` on ℝ^d.

    Args:
        mean: ``m``, shape ``(d,)``.
        cov: ``S``, shape ``(d, d)``, symmetric positive semi-definite (singular allowed for sampling;
            ``log_prob`` needs it positive definite). ``None`` means the identity.
    """

    def __init__(self, mean, cov=None, *, device=None, dtype: torch.dtype = DTYPE):
        m = as_tensor(mean, "mean", "Gaussian", dtype=dtype, device=device).reshape(-1) if _is_vec(mean) else None
        if m is None:
            fail("mean", "Gaussian", "a 1-d array of shape (d,)", mean)
        check_finite(m, "mean", "Gaussian")
        d = m.shape[0]
        if d < 1:
            fail("mean", "Gaussian", "non-empty", mean)
        S = torch.eye(d, dtype=dtype, device=m.device) if cov is None else as_tensor(
            cov, "cov", "Gaussian", dtype=dtype, device=m.device)
        self.mean, self.cov = m, _check_cov(S, d, "Gaussian")
        self.d = self.qmc_dim = d
        self.dtype, self.device = dtype, m.device
        self.scale_tril = _sqrt_factor(self.cov)

    @classmethod
    def standard(cls, d: int, **kw) -> "Gaussian":
        """The standard normal law :math:`N(0, I_d)`."""
        d = check_int(d, "d", "Gaussian.standard")
        return cls(torch.zeros(d, dtype=kw.get("dtype", DTYPE)), None, **kw)

    def _affine(self, z: torch.Tensor) -> torch.Tensor:
        """``m + L z`` row-wise; for N(0, I) that map is the identity and is skipped (same numbers, O(d²) less work)."""
        L = self.scale_tril
        if bool((self.mean == 0).all()) and bool((L == torch.eye(self.d, dtype=L.dtype, device=L.device)).all()):
            return z
        return self.mean + z @ L.T

    def sample(self, n, generator=None):
        return self._affine(standard_normal(generator, (self._n(n), self.d), self.dtype, self.device))

    def from_uniform(self, u):
        return self._affine(torch.special.ndtri(u.to(self.dtype).clamp(U_EPS, 1 - U_EPS)))

    def log_prob(self, x):
        x = check_inputs(x, self.d, "Gaussian.log_prob")
        L, info = torch.linalg.cholesky_ex(self.cov)
        if int(info) != 0:
            fail("cov", "Gaussian.log_prob", "positive definite (a singular Gaussian has no density)",
                 f"smallest eigenvalue {float(torch.linalg.eigvalsh(self.cov).min()):.3g}")
        r = torch.linalg.solve_triangular(L, (x - self.mean).T, upper=False)
        return -0.5 * (r * r).sum(0) - torch.log(torch.diagonal(L)).sum() - 0.5 * self.d * math.log(2 * math.pi)

    def __repr__(self):
        return f"Gaussian(d={self.d})"


def _is_vec(v) -> bool:
    try:
        return np.ndim(v) == 1
    except ValueError:  # ragged nested lists
        return False


class GaussianMixture(Law):
    r"""Mixture :math:`\sum_c \omega_c N(m_c, S_c)`.

    Args:
        weights: ``ω``, shape ``(C,)``, non-negative, summing to 1 (normalised if within 1e-8).
        means: shape ``(C, d)``.
        covs: shape ``(C, d, d)`` (or ``None`` for identities).
    """

    def __init__(self, weights, means, covs=None, *, device=None, dtype: torch.dtype = DTYPE):
        w = as_tensor(weights, "weights", "GaussianMixture", dtype=dtype, device=device)
        check_finite(w, "weights", "GaussianMixture")
        if w.ndim != 1 or w.numel() < 1 or bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-8:
            fail("weights", "GaussianMixture", "a non-empty vector of non-negative weights summing to 1", w)
        M = as_tensor(means, "means", "GaussianMixture", dtype=dtype, device=w.device)
        if M.ndim != 2 or M.shape[0] != w.numel():
            fail("means", "GaussianMixture", f"an array of shape ({w.numel()}, d)", f"shape {tuple(M.shape)}")
        C, d = M.shape
        if d < 1:
            fail("means", "GaussianMixture", "an array of shape (C, d) with d >= 1", f"shape {tuple(M.shape)}")
        check_finite(M, "means", "GaussianMixture")
        if covs is None:
            S = [None] * C
        else:
            S = as_tensor(covs, "covs", "GaussianMixture", dtype=dtype, device=w.device)
            if S.shape != (C, d, d):
                fail("covs", "GaussianMixture", f"an array of shape ({C}, {d}, {d})", f"shape {tuple(S.shape)}")
            for c in range(C):
                _check_cov(S[c], d, "GaussianMixture", f"covs[{c}]")
        self.weights = w / w.sum()
        self.components = [Gaussian(M[c], S[c], dtype=dtype, device=w.device) for c in range(C)]
        self.d, self.qmc_dim = d, d + 1
        self.dtype, self.device = dtype, w.device
        self._cum = torch.cumsum(self.weights, 0)

    def _pick(self, u: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self._cum, u.contiguous().to(self.dtype), right=True).clamp_max(len(self.components) - 1)

    def _assemble(self, comp: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # one affine map per component (no (n, d, d) gather: memory stays O(n d))
        x = torch.empty_like(z)
        for c, g in enumerate(self.components):
            mask = comp == c
            x[mask] = g._affine(z[mask])
        return x

    def sample(self, n, generator=None):
        n = self._n(n)
        u = standard_uniform(generator, (n,), self.dtype, self.device)
        return self._assemble(self._pick(u), standard_normal(generator, (n, self.d), self.dtype, self.device))

    def from_uniform(self, u):
        z = torch.special.ndtri(u[:, 1:].to(self.dtype).clamp(U_EPS, 1 - U_EPS))
        return self._assemble(self._pick(u[:, 0]), z)

    def log_prob(self, x):
        lp = torch.stack([c.log_prob(x) for c in self.components], dim=-1)
        return torch.logsumexp(lp + torch.log(self.weights), dim=-1)

    def __repr__(self):
        return f"GaussianMixture(C={len(self.components)}, d={self.d})"


class Uniform(Law):
    """Uniform law on the box ``[low, high]``, both of shape ``(d,)`` with ``low < high``."""

    def __init__(self, low, high, *, device=None, dtype: torch.dtype = DTYPE):
        lo = as_tensor(low, "low", "Uniform", dtype=dtype, device=device).reshape(-1)
        hi = as_tensor(high, "high", "Uniform", dtype=dtype, device=lo.device).reshape(-1)
        check_finite(lo, "low", "Uniform")
        check_finite(hi, "high", "Uniform")
        if lo.numel() < 1 or np.ndim(low) > 1:
            fail("low", "Uniform", "a scalar or a non-empty 1-d array of shape (d,)", low)
        if hi.shape != lo.shape:
            fail("high", "Uniform", f"of the same shape as low {tuple(lo.shape)}", f"shape {tuple(hi.shape)}")
        if bool((hi <= lo).any()):
            fail("high", "Uniform", "strictly greater than low in every coordinate", hi)
        self.low, self.high = lo, hi
        self.d = self.qmc_dim = lo.numel()
        self.dtype, self.device = dtype, lo.device

    def sample(self, n, generator=None):
        return self.from_uniform(standard_uniform(generator, (self._n(n), self.d), self.dtype, self.device))

    def from_uniform(self, u):
        return self.low + u.to(self.dtype) * (self.high - self.low)

    def log_prob(self, x):
        x = check_inputs(x, self.d, "Uniform.log_prob")
        inside = ((x >= self.low) & (x <= self.high)).all(dim=1)
        lp = -torch.log(self.high - self.low).sum()
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def __repr__(self):
        return f"Uniform(d={self.d})"


class Empirical(Law):
    """Empirical law of given points (uniform over the rows), ``samples`` of shape ``(N, d)``.

    ``sample`` draws rows with replacement; :meth:`rows` gives them all (for exact averages).
    """

    def __init__(self, samples, *, device=None, dtype: torch.dtype = DTYPE):
        x = as_tensor(samples, "samples", "Empirical", dtype=dtype, device=device)
        if x.ndim != 2 or x.shape[0] < 1:
            fail("samples", "Empirical", "an array of shape (N, d) with N >= 1", f"shape {tuple(x.shape)}")
        check_finite(x, "samples", "Empirical")
        self.points = x
        self.d, self.qmc_dim = x.shape[1], 1
        self.dtype, self.device = dtype, x.device

    def rows(self) -> torch.Tensor:
        return self.points

    def sample(self, n, generator=None):
        N, n = self.points.shape[0], self._n(n)
        if isinstance(generator, np.random.Generator):
            idx = torch.from_numpy(generator.integers(N, size=n))
        else:
            idx = torch.randint(N, (n,), generator=generator, device="cpu")
        return self.points[idx.to(self.device)]

    def from_uniform(self, u):
        N = self.points.shape[0]
        idx = (u[:, 0].to(self.dtype) * N).long().clamp(0, N - 1)
        return self.points[idx]

    def __repr__(self):
        return f"Empirical(N={self.points.shape[0]}, d={self.d})"


def as_law(law, where: str = "law") -> Law:
    if not isinstance(law, Law):
        fail("law", where, "a softhard Law (Gaussian, GaussianMixture, Uniform, Empirical)", type(law).__name__,
             TypeError)
    return law

