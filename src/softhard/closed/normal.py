r"""Normal building blocks (the one copy of each): φ, Φ of intervals, Gauss–Legendre quadrature, the
Gaussian law of linear maps and conditioning on a score, Gaussian orthant probabilities, and truncated
normal moments.

Every closed form of softhard is assembled from these (paper Example 3.8 and its K-expert extension
[beyond]):

- for a linear map ``A = W x + b`` and ``X ~ N(m, S)``: ``A ~ N(W m + b, W S Wᵀ)`` (:func:`linear_moments`);
- for a score ``g(x) = v·x + c``: ``g(X) ~ N(m_g, s²)`` with ``m_g = v·m + c``, ``s² = vᵀ S v``
  (:func:`score_law`); its density at 0 is the coarea constant :math:`\psi(0) = \varphi(m_g/s)/s` (3.14);
- conditioning: ``X | g(X) = t`` is Gaussian with mean ``m + S v (t − m_g)/s²`` and covariance
  ``S − S v vᵀ S / s²`` (:func:`condition_on_score`).

φ, Φ and the interval mass accept NumPy arrays, floats and torch tensors alike (dtype and device follow
the input), so samplers and closed forms share one definition.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch

from .._validate import as_tensor, check_bools, check_float, fail
from ..model.laws import Gaussian, GaussianMixture

__all__ = ["SQRT2PI", "ABSEPS", "phi", "normal_cdf", "logistic", "interval_mass", "gauss_legendre", "quadrature",
           "to_numpy", "gaussian_components", "linear_moments", "score_law", "condition_on_score",
           "orthant_probability", "orthant_with_bound", "interval_moments"]

SQRT2PI = math.sqrt(2 * math.pi)
ABSEPS = 1e-6  # absolute accuracy asked of Genz's algorithm (scipy.stats.multivariate_normal.cdf)


def phi(t):
    r"""Standard normal density :math:`\varphi(t) = e^{-t^2/2}/\sqrt{2\pi}` (array, float or tensor)."""
    if isinstance(t, torch.Tensor):
        return torch.exp(-0.5 * t * t) / SQRT2PI
    t = np.asarray(t, dtype=np.float64)
    return np.exp(-0.5 * t * t) / SQRT2PI


def _on_numpy(fn, x) -> np.ndarray:
    """A torch elementwise function applied to a NumPy array or float (float64), as NumPy: torch is imported
    anyway, SciPy's special functions cost 0.4 s of start-up."""
    return fn(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def normal_cdf(t):
    r"""Standard normal distribution function :math:`\Phi(t)` (array, float or tensor)."""
    return torch.special.ndtr(t) if isinstance(t, torch.Tensor) else _on_numpy(torch.special.ndtr, t)


def logistic(u):
    r"""The logistic function :math:`\sigma(u) = 1/(1 + e^{-u})` (array, float or tensor), without overflow."""
    return torch.sigmoid(u) if isinstance(u, torch.Tensor) else _on_numpy(torch.sigmoid, u)


def interval_mass(a, b):
    r""":math:`[\Phi(b) - \Phi(a)]_+`, accurate in both tails (the upper tail is taken as
    :math:`\Phi(-a) - \Phi(-b)`); array, float or tensor, broadcast."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        nd = torch.special.ndtr
        return torch.where(a > 0, nd(-a) - nd(-b), nd(b) - nd(a)).clamp_min(0.0)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        nd = normal_cdf
        return np.maximum(np.where(a > 0, nd(-a) - nd(-b), nd(b) - nd(a)), 0.0)


@functools.lru_cache(maxsize=None)
def _leggauss(m: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(m)
    x.flags.writeable = w.flags.writeable = False
    return x, w


def gauss_legendre(m: int, like: torch.Tensor | None = None):
    """``(nodes, weights)`` of the m-point Gauss–Legendre rule on [-1, 1] (NumPy, or tensors like ``like``)."""
    x, w = _leggauss(m)
    if like is None:
        return x, w
    return (torch.tensor(x, dtype=like.dtype, device=like.device),
            torch.tensor(w, dtype=like.dtype, device=like.device))


def quadrature(lo: float, hi: float, breaks, m: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Composite m-point Gauss–Legendre nodes and weights on [lo, hi], split at ``breaks`` (NumPy)."""
    x, w = _leggauss(m)
    pts = np.unique(np.clip(np.concatenate([[lo, hi], np.asarray(breaks, float)]), lo, hi))
    half, mid = (pts[1:] - pts[:-1]) / 2, (pts[1:] + pts[:-1]) / 2
    return (mid[:, None] + half[:, None] * x).ravel(), (half[:, None] * w).ravel()


def to_numpy(t) -> np.ndarray:
    """A float64 NumPy array of a tensor (detached, on the CPU) or of anything array-like."""
    return t.detach().to("cpu", torch.float64).numpy() if isinstance(t, torch.Tensor) else np.asarray(t, float)


def gaussian_components(law, where: str) -> list[tuple[float, Gaussian]]:
    """``[(weight, Gaussian), ...]`` for a Gaussian or a mixture; a ``ValueError`` otherwise."""
    if isinstance(law, Gaussian):
        return [(1.0, law)]
    if isinstance(law, GaussianMixture):
        return [(float(w), c) for w, c in zip(law.weights, law.components)]
    fail("law", where, "a Gaussian or GaussianMixture for a closed form", type(law).__name__, TypeError)


def linear_moments(weight: torch.Tensor, bias: torch.Tensor, law: Gaussian) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean ``(K,)`` and covariance ``(K, K)`` of :math:`A = W X + b` for ``X ~ N(m, S)``: ``(W m + b, W S Wᵀ)``,
    computed in float64 (whatever the dtypes of the router and the law) and symmetrised."""
    f64 = torch.float64
    W, m, S = weight.detach().to(f64), law.mean.to(f64), law.cov.to(f64)
    C = W @ S @ W.T
    return W @ m + bias.detach().to(f64), 0.5 * (C + C.T)


def score_law(v: torch.Tensor, c: float, law: Gaussian) -> tuple[float, float]:
    r"""``(m_g, s)`` with :math:`g(X) = v\cdot X + c \sim N(m_g, s^2)` (Example 3.8)."""
    v = v.to(law.mean)
    m_g = float(v @ law.mean) + c
    s = math.sqrt(max(float(v @ law.cov @ v), 0.0))
    return m_g, s


def condition_on_score(law: Gaussian, v: torch.Tensor, c: float, t: float = 0.0) -> Gaussian:
    r"""The conditional law of ``X ~ N(m, S)`` given :math:`v\cdot X + c = t` (a degenerate Gaussian).

    .. math:: X \mid g = t \sim N\big(m + S v (t - m_g)/s^2,\; S - S v v^\top S / s^2\big)
    """
    v = v.to(law.mean)
    m_g, s = score_law(v, c, law)
    if s == 0.0:
        fail("v", "condition_on_score", "a direction with vᵀSv > 0", v)
    Sv = law.cov @ v
    return Gaussian(law.mean + Sv * (t - m_g) / s ** 2, law.cov - torch.outer(Sv, Sv) / s ** 2)


def orthant_probability(mean, cov, low, closed=None, abseps: float = ABSEPS) -> float:
    r"""Gaussian orthant probability :math:`P(Z_i > l_i\ \forall i)` for :math:`Z \sim N(m, C)`.

    Shapes: ``mean`` ``(q,)``, ``cov`` ``(q, q)`` (symmetric positive semi-definite, may be singular),
    ``low`` ``(q,)`` or a scalar, ``closed`` ``(q,)`` booleans or ``None``. Components with zero
    variance are decided exactly (:math:`m_i > l_i`, or :math:`m_i \ge l_i` where ``closed[i]``, a tie-break for
    deterministic ties);
    one remaining component is a normal tail :math:`\Phi((m_i - l_i)/s_i)`; if the rest has rank r ≤ 2,
    :math:`Z = m + L\xi` with :math:`\xi \sim N(0, I_r)` and the event is an interval (r = 1) or a polygon
    (r = 2, :func:`_polygon_probability`) of ξ, computed to about 1e-14; otherwise Genz's algorithm
    (``scipy.stats.multivariate_normal.cdf`` of :math:`-Z` at :math:`-l`: exact for two components,
    randomised lattice rules with absolute error ``abseps`` and a fixed generator beyond, so the
    result is deterministic; singular covariances of rank ≥ 3 converge slowly, seconds per call).
    """
    return orthant_with_bound(mean, cov, low, closed, abseps)[0]


def orthant_with_bound(mean, cov, low, closed=None, abseps: float = ABSEPS,
                       where: str = "orthant_probability") -> tuple[float, float]:
    """:func:`orthant_probability` and a bound on its absolute error: 0 where the result is exact to rounding
    (at most two free components, or rank ≤ 2), ``abseps`` where Genz's algorithm integrates."""
    abseps = check_float(abseps, "abseps", where, 0.0, 0.1, high_open=False)
    m, C = to_numpy(as_tensor(mean, "mean", where)), to_numpy(as_tensor(cov, "cov", where))
    if m.ndim != 1 or m.size < 1 or not np.isfinite(m).all():
        fail("mean", where, "a finite array of shape (q,)", m)
    if C.shape != (m.size, m.size) or not np.isfinite(C).all() or np.abs(C - C.T).max() > 1e-10 * max(
            1.0, np.abs(C).max()) or np.linalg.eigvalsh(C).min() < -1e-10 * max(1.0, np.abs(C).max()):
        fail("cov", where, f"a symmetric positive semi-definite ({m.size}, {m.size}) matrix", C)
    low = to_numpy(as_tensor(low, "low", where))
    if low.ndim > 1 or low.size not in (1, m.size) or np.isnan(low).any():
        fail("low", where, f"a scalar or an array of shape ({m.size},)", low)
    low = np.broadcast_to(low.reshape(-1), m.shape).astype(float)
    closed = check_bools(closed, "closed", where, m.size)
    sd = np.sqrt(np.clip(np.diag(C), 0.0, None))
    scale = max(1.0, float(np.abs(m).max(initial=0.0)), float(sd.max(initial=0.0)))
    fixed = sd <= 1e-10 * scale
    tol = 1e-12 * scale
    ok = (m > low + tol) | (closed & (m >= low - tol))
    if np.any(fixed & ~ok):
        return 0.0, 0.0
    keep = ~fixed
    if not keep.any():
        return 1.0, 0.0
    m, C, low, sd = m[keep], C[np.ix_(keep, keep)], low[keep], sd[keep]
    if m.size == 1:
        return float(normal_cdf((m[0] - low[0]) / sd[0])), 0.0
    lam, V = np.linalg.eigh(C)
    big = lam > 1e-12 * lam.max()
    if big.sum() <= 2 and big.sum() < m.size:  # singular: Z = m + L ξ with ξ ~ N(0, I_r), r <= 2, exactly
        L = V[:, big] * np.sqrt(lam[big])
        p = _polygon_probability(L, low - m) if L.shape[1] == 2 else _interval_probability(L[:, 0], low - m)
        return p, 0.0
    from scipy.stats import multivariate_normal  # slow to import: only where Genz is needed

    p = multivariate_normal.cdf(-low, mean=-m, cov=C, allow_singular=True, abseps=abseps, releps=0.0,
                                rng=np.random.default_rng(0))
    return float(np.clip(p, 0.0, 1.0)), (0.0 if m.size == 2 else abseps)


def _interval_probability(l: np.ndarray, c: np.ndarray) -> float:
    r""":math:`P(l_i \xi > c_i\ \forall i)` for :math:`\xi \sim N(0, 1)` and ``l`` without zeros: an interval of ξ."""
    lo = max((ci / li for li, ci in zip(l, c) if li > 0), default=-math.inf)
    hi = min((ci / li for li, ci in zip(l, c) if li < 0), default=math.inf)
    return float(interval_mass(lo, hi)) if hi > lo else 0.0


def _polygon_probability(L: np.ndarray, c: np.ndarray) -> float:
    r""":math:`P(L\xi > c)` for :math:`\xi \sim N(0, I_2)`, ``L`` of shape ``(q, 2)``, by polar coordinates.

    Along the direction :math:`u_\theta` the constraints :math:`\rho\, (L u_\theta)_i > c_i` leave an interval
    :math:`\rho \in (\rho_-, \rho_+)` of :math:`\rho \ge 0`, and :math:`\rho^2/2 \sim \mathrm{Exp}(1)`, so

    .. math:: P = \frac1{2\pi}\int_0^{2\pi} \big[e^{-\rho_-(\theta)^2/2} - e^{-\rho_+(\theta)^2/2}\big]_+\, d\theta .

    The integrand is smooth between the angles where some :math:`(L u_\theta)_i` vanishes or two
    constraints bind together (:math:`(c_i L_j - c_j L_i)\cdot u_\theta = 0`); composite Gauss–Legendre on
    each piece gives the result to about 1e-14.
    """
    pairs = itertools.combinations(range(len(c)), 2)
    dirs = [L[i] for i in range(len(c))] + [c[i] * L[j] - c[j] * L[i] for i, j in pairs]
    cuts = [math.atan2(v[1], v[0]) + s for v in dirs if np.abs(v).max() > 0 for s in (-np.pi / 2, np.pi / 2)]
    pts = np.unique(np.concatenate([[0.0, 2 * np.pi], np.mod(cuts, 2 * np.pi)]))
    # 16 sub-panels per piece: near a zero of (L u)_i the integrand is flat like exp(-1/θ²), not analytic
    th, w = quadrature(0.0, 2 * np.pi, (pts[:-1, None] + np.diff(pts)[:, None] * np.linspace(0, 1, 17)).ravel())
    a = np.stack([np.cos(th), np.sin(th)], 1) @ L.T
    with np.errstate(divide="ignore", invalid="ignore"):
        r = c / a
    lo = np.maximum(np.where(a > 0, r, -np.inf).max(1), 0.0)
    hi = np.where(a < 0, r, np.inf).min(1)
    val = np.where(hi > lo, np.exp(-0.5 * lo ** 2) - np.exp(-0.5 * np.minimum(hi, 1e3) ** 2), 0.0)
    return float(min(max(w @ val / (2 * np.pi), 0.0), 1.0))


def interval_moments(lo, hi) -> np.ndarray:
    r""":math:`\int_{lo}^{hi} t^k \varphi(t)\,dt`, k = 0..3, shape ``(..., 4)``, for ``lo < hi`` (ends may be ±inf)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    fl, fh = np.isfinite(lo), np.isfinite(hi)
    tl, th = np.where(fl, lo, 0.0), np.where(fh, hi, 0.0)
    pl, ph = np.where(fl, phi(tl), 0.0), np.where(fh, phi(th), 0.0)
    m0 = interval_mass(lo, hi)
    m1 = pl - ph
    return np.stack([m0, m1, m0 + tl * pl - th * ph, 2 * m1 + tl * tl * pl - th * th * ph], -1)
