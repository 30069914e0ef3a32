r"""Input laws μ on ℝ^d (paper §2): sampling from a generator, from uniforms (for QMC), and densities.

Every law exposes

- ``d``: the input dimension;
- ``sample(n, generator) -> (n, d)``: i.i.d. draws using only ``generator`` (a ``torch.Generator`` or a
  ``numpy.random.Generator``; the reducer uses NumPy generators, whose float64 normals are about twice
  as fast as torch's on the CPU);
- ``qmc_dim`` and ``from_uniform(u) -> (n, d)``: the same law as a map of ``u ~ U[0,1)^qmc_dim``
  (used by scrambled Sobol quasi-Monte Carlo);
- ``log_prob(x) -> (n,)``: the log density where there is one.

Everything is float64 on the CPU unless a ``device``/``dtype`` (float64 or float32) is given. Parameters are
validated and kept in float64 whatever ``dtype`` (one law per law: a float32 Gaussian is its float64 twin, and
every method reads the same float64 mean and factor); ``dtype`` is the dtype of the draws and densities the law
returns.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validate import DTYPE, as_tensor, check_device, check_dtype, check_finite, check_inputs, check_int, fail

__all__ = ["Law", "Gaussian", "GaussianMixture", "Uniform", "Empirical", "as_law", "check_covariance", "square_factor",
           "standard_normal", "standard_uniform", "U_EPS"]

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

    def _n(self, n, generator=None) -> int:
        if generator is not None and not isinstance(generator, (torch.Generator, np.random.Generator)):
            fail("generator", f"{type(self).__name__}.sample", "None, a torch.Generator or a numpy.random.Generator",
                 type(generator).__name__, TypeError)
        return check_int(n, "n", f"{type(self).__name__}.sample", low=0)


def _setup(dtype, device, where: str) -> tuple[torch.dtype, torch.device | None]:
    """The law's dtype (float64 or float32) and device, checked before any parameter is read."""
    return check_dtype(dtype, where), None if device is None else check_device(device, where)


def check_covariance(cov, where: str, param: str = "cov", d: int | None = None) -> torch.Tensor:
    r"""A covariance matrix ``(d, d)``: finite, symmetric and positive semi-definite, as float64 (symmetrised).

    Symmetry is required to a relative :math:`10^{-10}` of the largest entry. Positive semi-definiteness is
    judged against what rounding can do, not against the largest entry: the smallest eigenvalue must be
    :math:`\ge -64\,d\,\epsilon\,\lambda_{\max}` (ε the input's machine epsilon, float32 inputs their own), which
    lets a singular (rank-deficient) matrix through with its rounding noise but refuses a −50 eigenvalue
    beside 1e12.
    """
    S = as_tensor(cov, param, where)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 1 or (d is not None and S.shape[0] != d):
        rule = f"a ({d}, {d}) matrix" if d is not None else "a square (d, d) matrix with d >= 1"
        fail(param, where, rule, f"shape {tuple(S.shape)}")
    check_finite(S, param, where)
    eps = float(torch.finfo(S.dtype).eps) if S.is_floating_point() else float(torch.finfo(DTYPE).eps)
    S = S.to(DTYPE)
    scale = float(S.abs().max())
    if scale == 0.0:
        return S
    if float((S - S.T).abs().max()) > max(1e-10, 64 * eps) * scale:
        fail(param, where, "symmetric", S)
    S = 0.5 * S + 0.5 * S.T  # not (S + Sᵀ)/2, which overflows for entries near 1e308
    lam = torch.linalg.eigvalsh(S / scale) * scale  # scaled, so that entries near 1e308 do not overflow
    low, top = float(lam.min()), float(lam.abs().max())
    tol = 64 * S.shape[0] * eps * top
    if low < -tol:
        fail(param, where, "positive semi-definite",
             f"a matrix with eigenvalue {low:.4g} (largest {top:.4g}; rounding explains down to {-tol:.2g})")
    return S


def _rank_cut(lam_max: float, d: int) -> float:
    r"""Eigenvalues at or below this are rounding, not variance: :math:`16\sqrt d\,\epsilon\,\lambda_{\max}`
    (about what an eigen-solver's backward error leaves on a symmetric matrix with exact zeros), so that condition
    numbers to 1e12 and beyond keep their smallest variances while a rank-deficient matrix with rounding noise
    (a sample covariance of n < d points, ``A Aᵀ``) is seen as singular."""
    return 16.0 * math.sqrt(d) * float(torch.finfo(DTYPE).eps) * max(lam_max, 0.0)


def _sqrt_factor(cov: torch.Tensor) -> torch.Tensor:
    r"""A rank-revealing factor ``F`` (``(d, d)``, float64) with :math:`FF^\top = \Sigma`.

    Cholesky when Σ is numerically positive definite (every eigenvalue above :func:`_rank_cut`); otherwise the
    eigen-factor :math:`V\,\mathrm{diag}(\sqrt{\lambda_i}\,1\{\lambda_i > \mathrm{cut}\})`, whose columns for
    the dropped eigenvalues are exactly 0. Cholesky of a singular Σ may succeed with a rounding-level pivot and
    leave a spurious column (~1e-7 for a conditioned N(0, I₂)); code that asks whether a direction has zero
    variance (``closed.moments.region_moments``) would then miss it. A clearly well-conditioned Σ (smallest
    Cholesky pivot above 1e-6 of the largest variance) skips the eigen-decomposition, which dominates the cost
    at d in the thousands.
    """
    cov = cov.to(DTYPE)
    d = cov.shape[0]
    top = float(cov.diagonal().max()) if d else 0.0
    if top > 0:
        L, info = torch.linalg.cholesky_ex(cov)
        if int(info) == 0 and float(L.diagonal().min()) ** 2 > 1e-6 * top:
            return L
    lam, V = torch.linalg.eigh(cov)
    cut = _rank_cut(float(lam[-1]), d)
    if float(lam[0]) > cut:
        L, info = torch.linalg.cholesky_ex(cov)
        if int(info) == 0:
            return L
    return V * torch.where(lam > cut, lam, torch.zeros_like(lam)).sqrt()


def square_factor(F: torch.Tensor) -> torch.Tensor:
    r"""A ``(q, q)`` factor :math:`G` with :math:`GG^\top = FF^\top` for ``F (q, r)`` (float64), without forming
    :math:`FF^\top`: ``F`` padded with zero columns when r ≤ q, else :math:`G = R^\top` from the QR decomposition
    :math:`F^\top = QR` (lower triangular; backward stable, so no digit of F is lost to squaring its condition
    number)."""
    q, r = F.shape
    if r <= q:
        return torch.cat([F, F.new_zeros(q, q - r)], 1) if r < q else F
    R = torch.linalg.qr(F.T, mode="r")[1]
    return R.T


class Gaussian(Law):
    r"""Gaussian law :math:`N(m, S)` on ℝ^d.

    One law whatever ``dtype``: the parameters are kept in float64 — ``mean`` ``(d,)``, ``cov`` ``(d, d)`` and
    one rank-revealing ``factor`` ``(d, d)`` with :math:`FF^\top = S` (:attr:`scale_tril` is the same tensor) —
    and every method (closed forms, the score-space, conditional and line estimators, sampling) reads them.
    ``dtype`` is the dtype of what the law returns: draws are :math:`m + Fz` computed in float64 from float64
    normals and then rounded to ``dtype`` (so a float32 law's draws are its float64 twin's draws, rounded), and
    ``log_prob`` comes back in ``dtype``.

    Args:
        mean: ``m``, shape ``(d,)``.
        cov: ``S``, shape ``(d, d)``, symmetric positive semi-definite (singular allowed for sampling;
            ``log_prob`` needs it positive definite). ``None`` means the identity.
        dtype: float64 (default) or float32, the dtype of draws and densities.
    """

    def __init__(self, mean, cov=None, *, device=None, dtype: torch.dtype = DTYPE, _factor=None):
        dtype, device = _setup(dtype, device, "Gaussian")
        m = as_tensor(mean, "mean", "Gaussian", dtype=DTYPE).reshape(-1) if _is_vec(mean) else None
        if m is None:
            fail("mean", "Gaussian", "a 1-d array of shape (d,)", mean)
        check_finite(m, "mean", "Gaussian")
        d = m.shape[0]
        if d < 1:
            fail("mean", "Gaussian", "non-empty", mean)
        if _factor is not None:
            F = square_factor(_factor.to(DTYPE))
            S = F @ F.T
            S = 0.5 * S + 0.5 * S.T
        else:
            S = torch.eye(d, dtype=DTYPE) if cov is None else check_covariance(cov, "Gaussian", d=d)
            F = _sqrt_factor(S)
        device = m.device if device is None else device
        self.mean, self.cov = m.to(device=device, dtype=DTYPE), S.to(device=device, dtype=DTYPE)
        self.factor = F.to(device=device, dtype=DTYPE)
        self.d = self.qmc_dim = d
        self.dtype, self.device = dtype, self.mean.device
        self.given = "factor" if _factor is not None else "cov"  # which of cov and factor is the exact input
        self._identity = bool((self.mean == 0).all()) and bool(
            (self.factor == torch.eye(d, dtype=DTYPE, device=self.factor.device)).all())

    @property
    def scale_tril(self) -> torch.Tensor:
        """The law's factor (float64, ``(d, d)``; lower triangular when it is a Cholesky factor)."""
        return self.factor

    @classmethod
    def standard(cls, d: int, **kw) -> "Gaussian":
        """The standard normal law :math:`N(0, I_d)`."""
        d = check_int(d, "d", "Gaussian.standard")
        return cls(torch.zeros(d, dtype=DTYPE), None, **kw)

    @classmethod
    def from_factor(cls, mean, factor, *, device=None, dtype: torch.dtype = DTYPE) -> "Gaussian":
        r"""The law of :math:`m + Fz`, :math:`z \sim N(0, I_r)`: ``mean (d,)``, ``factor F (d, r)`` (any r ≥ 1).

        The covariance :math:`FF^\top` is never factorised again: a factor with r < d keeps its exact rank (zero
        columns), one with r > d is reduced by a QR decomposition (:func:`square_factor`). This is how a law
        reduced along linear maps or conditioned on a score keeps every digit its inputs have.
        """
        where = "Gaussian.from_factor"
        m = as_tensor(mean, "mean", where, dtype=DTYPE)
        if m.ndim != 1 or m.numel() < 1:
            fail("mean", where, "a non-empty 1-d array of shape (d,)", f"shape {tuple(m.shape)}")
        F = as_tensor(factor, "factor", where, dtype=DTYPE)
        if F.ndim != 2 or F.shape[0] != m.shape[0] or F.shape[1] < 1:
            fail("factor", where, f"an array of shape ({m.shape[0]}, r) with r >= 1", f"shape {tuple(F.shape)}")
        check_finite(F, "factor", where)
        return cls(m, None, device=device, dtype=dtype, _factor=F)

    def _affine(self, z: torch.Tensor) -> torch.Tensor:
        """``m + F z`` row-wise in float64, returned in the law's dtype; for N(0, I) the map is skipped (same numbers,
        O(d²) less work)."""
        z = z.to(DTYPE)
        x = z if self._identity else self.mean + z @ self.factor.T
        return x.to(self.dtype)

    def sample(self, n, generator=None):
        return self._affine(standard_normal(generator, (self._n(n, generator), self.d), DTYPE, self.device))

    def from_uniform(self, u):
        return self._affine(_ndtri(u, DTYPE))

    def log_prob(self, x):
        x = check_inputs(x, self.d, "Gaussian.log_prob")
        L, info = torch.linalg.cholesky_ex(self.cov)
        if int(info) != 0:
            fail("cov", "Gaussian.log_prob", "positive definite (a singular Gaussian has no density)",
                 f"smallest eigenvalue {float(torch.linalg.eigvalsh(self.cov).min()):.3g}")
        r = torch.linalg.solve_triangular(L, (x.to(DTYPE) - self.mean).T, upper=False)
        lp = -0.5 * (r * r).sum(0) - torch.log(torch.diagonal(L)).sum() - 0.5 * self.d * math.log(2 * math.pi)
        return lp.to(self.dtype)

    def __repr__(self):
        return f"Gaussian(d={self.d})"


def _ndtri(u: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Normal quantiles of uniforms, clamped to [U_EPS, 1 - U_EPS] in float64 (in float32, 1 - 1e-15 is 1)."""
    return torch.special.ndtri(u.to(DTYPE).clamp(U_EPS, 1 - U_EPS)).to(dtype)


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
        where = "GaussianMixture"
        dtype, device = _setup(dtype, device, where)
        w = as_tensor(weights, "weights", where, dtype=DTYPE)
        check_finite(w, "weights", where)
        if w.ndim != 1 or w.numel() < 1 or bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-8:
            fail("weights", where, "a non-empty vector of non-negative weights summing to 1", w)
        M = as_tensor(means, "means", where, dtype=DTYPE)
        if M.ndim != 2 or M.shape[0] != w.numel():
            fail("means", where, f"an array of shape ({w.numel()}, d)", f"shape {tuple(M.shape)}")
        C, d = M.shape
        if d < 1:
            fail("means", where, "an array of shape (C, d) with d >= 1", f"shape {tuple(M.shape)}")
        check_finite(M, "means", where)
        if covs is None:
            S = [None] * C
        else:
            S = as_tensor(covs, "covs", where, dtype=DTYPE)
            if S.shape != (C, d, d):
                fail("covs", where, f"an array of shape ({C}, {d}, {d})", f"shape {tuple(S.shape)}")
            S = [check_covariance(S[c], where, f"covs[{c}]", d) for c in range(C)]
        device = w.device if device is None else device
        self.weights = (w / w.sum()).to(device=device, dtype=DTYPE)
        self.components = [Gaussian(M[c], S[c], dtype=dtype, device=device) for c in range(C)]
        self.d, self.qmc_dim = d, d + 1
        self.dtype, self.device = dtype, self.weights.device
        self._cum = torch.cumsum(self.weights, 0)

    def _pick(self, u: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self._cum, u.contiguous().to(DTYPE), right=True).clamp_max(len(self.components) - 1)

    def _assemble(self, comp: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # one affine map per component (no (n, d, d) gather: memory stays O(n d))
        x = torch.empty(z.shape, dtype=self.dtype, device=z.device)
        for c, g in enumerate(self.components):
            mask = comp == c
            x[mask] = g._affine(z[mask])
        return x

    def sample(self, n, generator=None):
        n = self._n(n, generator)
        u = standard_uniform(generator, (n,), DTYPE, self.device)
        return self._assemble(self._pick(u), standard_normal(generator, (n, self.d), DTYPE, self.device))

    def from_uniform(self, u):
        return self._assemble(self._pick(u[:, 0]), _ndtri(u[:, 1:], DTYPE))

    def log_prob(self, x):
        lp = torch.stack([c.log_prob(x).to(DTYPE) for c in self.components], dim=-1)
        return torch.logsumexp(lp + torch.log(self.weights), dim=-1).to(self.dtype)

    def __repr__(self):
        return f"GaussianMixture(C={len(self.components)}, d={self.d})"


class Uniform(Law):
    """Uniform law on the box ``[low, high]``, both of shape ``(d,)`` with ``low < high``."""

    def __init__(self, low, high, *, device=None, dtype: torch.dtype = DTYPE):
        dtype, device = _setup(dtype, device, "Uniform")
        lo = as_tensor(low, "low", "Uniform", dtype=DTYPE)
        hi = as_tensor(high, "high", "Uniform", dtype=DTYPE)
        if lo.ndim > 1 or lo.numel() < 1:
            fail("low", "Uniform", "a scalar or a non-empty 1-d array of shape (d,)", f"shape {tuple(lo.shape)}")
        lo, hi = lo.reshape(-1), hi.reshape(-1) if hi.ndim <= 1 else hi
        check_finite(lo, "low", "Uniform")
        if hi.shape != lo.shape:
            fail("high", "Uniform", f"of the same shape as low {tuple(lo.shape)}", f"shape {tuple(hi.shape)}")
        check_finite(hi, "high", "Uniform")
        if bool((hi <= lo).any()):
            fail("high", "Uniform", "strictly greater than low in every coordinate", hi)
        if not bool(torch.isfinite(hi - lo).all()):
            fail("high", "Uniform", "within a finite distance of low (high - low overflows)", hi)
        device = lo.device if device is None else device
        self.low, self.high = lo.to(device=device, dtype=dtype), hi.to(device=device, dtype=dtype)
        self.d = self.qmc_dim = lo.numel()
        self.dtype, self.device = dtype, self.low.device

    def sample(self, n, generator=None):
        return self.from_uniform(standard_uniform(generator, (self._n(n, generator), self.d), self.dtype, self.device))

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
        dtype, device = _setup(dtype, device, "Empirical")
        x = as_tensor(samples, "samples", "Empirical", dtype=dtype, device=device)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            fail("samples", "Empirical", "an array of shape (N, d) with N >= 1 and d >= 1",
                 f"shape {tuple(x.shape)}")
        check_finite(x, "samples", "Empirical")
        self.points = x
        self.d, self.qmc_dim = x.shape[1], 1
        self.dtype, self.device = dtype, x.device

    def rows(self) -> torch.Tensor:
        return self.points

    def sample(self, n, generator=None):
        N, n = self.points.shape[0], self._n(n, generator)
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


def as_law(law, where: str = "law", d: int | None = None) -> Law:
    """``law`` itself, checked to be a softhard :class:`Law` (on ℝ^d when ``d`` is given)."""
    if not isinstance(law, Law):
        fail("law", where, "a softhard Law (Gaussian, GaussianMixture, Uniform, Empirical)", type(law).__name__,
             TypeError)
    if d is not None and law.d != d:
        fail("law", where, f"a law on R^{d} (the model's input dimension)", f"a law on R^{law.d}")
    return law
