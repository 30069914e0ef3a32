r"""Normal building blocks (the one copy of each): φ, Φ and interval masses that stay accurate in the tails,
Gauss–Legendre rules, the reduction of a Gaussian law along linear maps and its conditioning on a score, Gaussian
box and orthant probabilities with a true error bound, and truncated normal moments.

Every closed form of softhard is assembled from these (paper Example 3.8 and its K-expert extension
[beyond]). A Gaussian law :math:`X = m + Fz`, :math:`z \sim N(0, I)`, is reduced through its one float64 factor
``F`` (:attr:`softhard.model.laws.Gaussian.factor`), never through its covariance, so that condition numbers to
1e12 cost no digit the inputs have:

- a score ``g(x) = v·x + c`` has ``g(X) ~ N(m_g, s²)`` with ``m_g = v·m + c`` and ``s = |Fᵀv|``
  (:func:`score_law`); its density at 0 is the coarea constant :math:`\psi(0) = \varphi(m_g/s)/s` (3.14);
- conditioning on ``g(X) = t`` is a reflection in z-space: with ``a = Fᵀv`` and a Householder reflection H taking
  ``a/|a|`` to the first axis, ``X | g = t = m + F a (t − m_g)/s² + (FH)_{:,1:} z'`` — an exactly rank-deficient
  factor, with no ``S − S v vᵀ S / s²`` cancellation (:func:`condition_on_score`);
- several scores at once (router score differences): :func:`contrast_law` gives their means and factor rows.

Tail accuracy ([beyond]; ``docs/gaussian_closed_forms.md``): :func:`normal_cdf` is ½ erfc(−t/√2) (torch's
``ndtr`` is 0 below −8.3); :func:`log_interval_mass` is the log of the mass of an interval in the form that keeps
its digits — Gauss–Legendre of φ on a narrow interval, the Mills-ratio form on one side of 0, a plain difference
across 0 — so :func:`interval_mass` has relative error below 1e-12 down to masses of 1e-300; a mass below the
float64 range raises :class:`MassUnderflow` where a closed form returns it (:func:`finite_mass`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validate import as_tensor, check_bools, check_float, fail
from ..model.laws import Gaussian, GaussianMixture

__all__ = ["SQRT2PI", "ABSEPS", "TINY", "phi", "log_phi", "normal_cdf", "normal_sf", "log_normal_cdf", "logistic",
           "interval_mass", "log_interval_mass", "MassUnderflow", "finite_mass", "gauss_legendre", "quadrature",
           "log_concave_panels", "to_numpy", "gaussian_components", "linear_moments", "score_law",
           "condition_on_score", "contrast_law", "ContrastLaw", "Probability", "box_probability",
           "orthant_probability", "orthant_with_bound", "interval_moments", "SOV_BOUND_SE", "ROUNDING",
           "combined_bound", "EXACT_BUDGET", "factor_rel_error", "row_differences", "covariance_factor"]

SQRT2PI = math.sqrt(2 * math.pi)
_LOG_SQRT2PI = 0.5 * math.log(2 * math.pi)
_SQRT1_2 = math.sqrt(0.5)
ABSEPS = 1e-6  # absolute accuracy asked of a randomised (Genz) box probability by default
TINY = float(np.finfo(np.float64).tiny)  # the smallest normal float64, 2.2e-308
EPS = float(np.finfo(np.float64).eps)
ROUNDING = 1e-12  # relative error bound of a closed form that is exact to rounding (a margin of ~10^3 eps)


def phi(t):
    r"""Standard normal density :math:`\varphi(t) = e^{-t^2/2}/\sqrt{2\pi}` (array, float or tensor)."""
    if isinstance(t, torch.Tensor):
        return torch.exp(-0.5 * t * t) / SQRT2PI
    t = np.asarray(t, dtype=np.float64)
    return np.exp(-0.5 * t * t) / SQRT2PI


def log_phi(t):
    r""":math:`\log\varphi(t) = -t^2/2 - \log\sqrt{2\pi}` (array, float or tensor)."""
    if isinstance(t, torch.Tensor):
        return -0.5 * t * t - _LOG_SQRT2PI
    t = np.asarray(t, dtype=np.float64)
    return -0.5 * t * t - _LOG_SQRT2PI


def _on_numpy(fn, *xs) -> np.ndarray:
    """A torch function of float64 tensors applied to NumPy arrays or floats, as NumPy: torch is imported anyway,
    SciPy's special functions cost 0.4 s of start-up."""
    out = fn(*(torch.from_numpy(np.asarray(x, dtype=np.float64)) for x in xs))
    return out.numpy()


def _cdf_t(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.special.erfc(-t * _SQRT1_2)


def normal_cdf(t):
    r"""Standard normal distribution function :math:`\Phi(t) = \tfrac12\,\mathrm{erfc}(-t/\sqrt2)` (array, float or
    tensor): relative error below 1e-12 in the lower tail down to the float64 range (t ≈ −37.5)."""
    if isinstance(t, torch.Tensor):
        return _cdf_t(t.to(torch.float64)).to(t.dtype) if t.dtype != torch.float64 else _cdf_t(t)
    return _on_numpy(_cdf_t, t)


def normal_sf(t):
    r""":math:`1 - \Phi(t) = \Phi(-t)`, accurate in the upper tail."""
    return normal_cdf(-t)


def log_normal_cdf(t):
    r""":math:`\log\Phi(t)` (array, float or tensor), accurate for every t (``log_ndtr``)."""
    if isinstance(t, torch.Tensor):
        return torch.special.log_ndtr(t)
    return _on_numpy(torch.special.log_ndtr, t)


def logistic(u):
    r"""The logistic function :math:`\sigma(u) = 1/(1 + e^{-u})` (array, float or tensor), without overflow."""
    return torch.sigmoid(u) if isinstance(u, torch.Tensor) else _on_numpy(torch.sigmoid, u)


@functools.lru_cache(maxsize=None)
def _leggauss(m: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(m)
    x.flags.writeable = w.flags.writeable = False
    return x, w


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(1 - e^x)` for x ≤ 0, accurate at both ends."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


_NARROW_NODES = 8
_DEEP = 1e-290  # below this a mass is recomputed in logs (near and below the float64 range)


def _mirror(a: torch.Tensor, b: torch.Tensor):
    """``(lo, hi)``: the interval mirrored, where needed, so that its centre is <= 0 (the mass on the lower side)."""
    a, b = torch.broadcast_tensors(a, b)
    flip = (a + b) > 0
    return torch.where(flip, -b, a), torch.where(flip, -a, b)


def _interval_t(a: torch.Tensor, b: torch.Tensor, want_log: bool) -> torch.Tensor:
    """The mass (or its log) of [a, b] under N(0, 1) on float64 tensors (:func:`log_interval_mass`)."""
    lo, hi = _mirror(a, b)
    with torch.no_grad():
        h = hi - lo
        p = torch.clamp(_cdf_t(hi) - _cdf_t(lo), min=0.0)
        out = torch.log(p) if want_log else p
        narrow = h * (torch.maximum(lo.abs(), hi.abs()) + 1.0) <= 1.0
        deep = (p < _DEEP) & (h > 0) & ~narrow if want_log else None
        if bool(narrow.any()):
            xg, wg = (torch.from_numpy(np.array(v)).to(h.device) for v in _leggauss(_NARROW_NODES))
            c, half = 0.5 * (lo[narrow] + hi[narrow]), 0.5 * h[narrow]
            u = half[:, None] * xg
            val = log_phi(c) + torch.log(half) + torch.logsumexp(-c[:, None] * u - 0.5 * u * u + torch.log(wg), 1)
            out = out.clone()
            out[narrow] = val if want_log else torch.exp(val)
        if want_log and bool(deep.any()):
            lh, ll = torch.special.log_ndtr(hi[deep]), torch.special.log_ndtr(lo[deep])
            out = out.clone()
            out[deep] = lh + _log1mexp(ll - lh)
        return torch.where(h > 0, out, torch.full_like(out, -math.inf) if want_log else torch.zeros_like(out))


def _interval_np(a, b, want_log: bool) -> np.ndarray:
    """:func:`_interval_t` in NumPy (SciPy's special functions; far less overhead on small arrays)."""
    from scipy.special import erfc, log_ndtr

    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    flip = (a + b) > 0
    lo, hi = np.where(flip, -b, a), np.where(flip, -a, b)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        h = hi - lo
        p = np.maximum(0.5 * erfc(-hi * _SQRT1_2) - 0.5 * erfc(-lo * _SQRT1_2), 0.0)
        out = np.log(p) if want_log else p
        narrow = h * (np.maximum(np.abs(lo), np.abs(hi)) + 1.0) <= 1.0
        if narrow.any():
            xg, wg = _leggauss(_NARROW_NODES)
            c, half = 0.5 * (lo[narrow] + hi[narrow]), 0.5 * h[narrow]
            u = half[:, None] * xg
            e = -c[:, None] * u - 0.5 * u * u + np.log(wg)
            top = e.max(1)
            val = log_phi(c) + np.log(half) + top + np.log(np.exp(e - top[:, None]).sum(1))
            out = np.array(out, dtype=np.float64, copy=True)
            out[narrow] = val if want_log else np.exp(val)
        if want_log:
            deep = (p < _DEEP) & (h > 0) & ~narrow
            if deep.any():
                lh, ll = log_ndtr(hi[deep]), log_ndtr(lo[deep])
                x = ll - lh
                out = np.array(out, dtype=np.float64, copy=True)
                out[deep] = lh + np.where(x > -math.log(2.0), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))
        return np.where(h > 0, out, -np.inf if want_log else 0.0)


def _apply(a, b, want_log: bool):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ref = a if isinstance(a, torch.Tensor) else b
        a = torch.as_tensor(a, dtype=torch.float64, device=ref.device)
        b = torch.as_tensor(b, dtype=torch.float64, device=ref.device)
        out = _interval_t(a, b, want_log)
        return out if ref.dtype == torch.float64 else out.to(ref.dtype)
    out = _interval_np(a, b, want_log)
    return out if out.ndim else float(out)


def log_interval_mass(a, b):
    r""":math:`\log\,[\Phi(b) - \Phi(a)]` (−inf where b ≤ a), accurate to about 1e-13 relative in the mass for
    every interval, down to masses far below the float64 range (array, float or tensor; broadcast).

    The interval is mirrored so that its centre is ≤ 0 (its mass on the lower side, where Φ = ½ erfc(−t/√2) is
    accurate relative to itself). A narrow interval (:math:`h\,(\max(|a|,|b|) + 1) \le 1`, h its width) is
    integrated by 8-point Gauss–Legendre of :math:`\varphi(c)e^{-cu - u^2/2}` around its centre c (exact to
    rounding there); any other one is :math:`\Phi(b) - \Phi(a)`, which keeps its digits since then
    :math:`\Phi(a)/\Phi(b) \le e^{-0.27}` (the Mills ratio bounds the slope of log Φ); below 1e-290 it is
    :math:`\log\Phi(b) + \log(1 - e^{\log\Phi(a) - \log\Phi(b)})` with ``log_ndtr``.
    """
    return _apply(a, b, True)


def interval_mass(a, b):
    r""":math:`[\Phi(b) - \Phi(a)]_+`, accurate to about 1e-13 relative in both tails down to 1e-300 (0 only
    below the float64 range: :func:`log_interval_mass` has the logarithm); array, float or tensor, broadcast."""
    return _apply(a, b, False)


class MassUnderflow(FloatingPointError):
    """A positive probability (or density) below the float64 range (2.2e-308): returned as 0 it would be a wrong
    answer, so the closed form says so. ``log_value``: its natural logarithm."""

    def __init__(self, where: str, what: str, log_value: float):
        self.log_value = float(log_value)
        super().__init__(f"{where}: {what} is exp({self.log_value:.6g}) = 10^{self.log_value / math.log(10):.6g}, "
                         f"below the float64 range (smallest normal 2.2e-308); it is positive, not 0")


def finite_mass(value, log_value, where: str, what: str):
    """``value`` itself, or :class:`MassUnderflow` where a positive mass (``log_value`` > −inf) fell below the
    smallest normal float64 (where its relative accuracy would be lost)."""
    v, lv = np.asarray(value, float), np.asarray(log_value, float)
    bad = (v < TINY) & (lv > -np.inf)
    if np.any(bad):
        raise MassUnderflow(where, what, float(np.max(np.where(bad, lv, -np.inf))))
    return value


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


def log_concave_panels(logw, lo: float, hi: float, breaks=(), *, nats: float = 80.0, drop: float = 2.0,
                       m: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Gauss–Legendre nodes for :math:`\int_{lo}^{hi} e^{\ell(t)} f(t)\,dt` with a log-concave weight (``logw``:
    vectorised ℓ, concave between ``breaks``) and a smooth f, accurate relative to the integral wherever in the
    tails the weight sits.

    The window is cut where ℓ is ``nats`` below its largest value on [lo, hi] (e^-80: nothing left out
    matters); panel ends are taken from a geometric grid around the maximiser so that ℓ changes by at most
    ``drop`` nats across a panel (the panel is then resolved by m = 24 nodes to rounding, however steep the tail);
    ``breaks`` (kinks of ℓ or f) are panel ends too. ``lo``, ``hi`` finite.

    Returns:
        ``(t (N,), weights (N,), ℓ(t) (N,))``; empty arrays where the weight is 0 on the whole window.
    """
    empty = np.zeros(0)
    if not hi > lo:
        return empty, empty, empty
    width = hi - lo
    brk = np.asarray(breaks, float).ravel()
    brk = brk[(brk > lo) & (brk < hi)]
    # locate the maximiser: a grid, then two zooms around the best point
    grid = np.unique(np.concatenate([np.linspace(lo, hi, 129), brk]))
    lw = np.asarray(logw(grid), float)
    if not np.isfinite(lw).any() or np.nanmax(lw) == -np.inf:
        return empty, empty, empty
    for _ in range(3):
        i = int(np.nanargmax(lw))
        a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        g2 = np.linspace(a, b, 33)
        l2 = np.asarray(logw(g2), float)
        grid, lw = np.concatenate([grid, g2]), np.concatenate([lw, l2])
    i = int(np.nanargmax(lw))
    t0, top = float(grid[i]), float(lw[i])
    # candidate ends: geometric offsets from t0 on each side, 8 per octave, from 1e-10 of the width
    off = width * 1e-10 * 2.0 ** (np.arange(0, 8 * 35) / 8.0)
    off = off[off < width]
    ends = [t0]
    for sgn, bound in ((1.0, hi), (-1.0, lo)):
        cand = t0 + sgn * off
        cand = np.append(cand[(cand - bound) * sgn < 0], bound)
        lc = np.asarray(logw(cand), float)
        lc = np.where(np.isnan(lc), -np.inf, lc)
        prev, k, last = top, -1, len(cand) - 1
        while k < last:
            # the farthest candidate of the contiguous run within `drop` nats of the previous end (ℓ is monotone)
            far = np.abs(lc[k + 2:] - prev) > drop
            run = k + 1 + (int(np.argmax(far)) if far.any() else last - k - 1)
            ends.append(float(cand[run]))
            prev, k = lc[run], run
            if lc[run] < top - nats:
                break
    pts = np.unique(np.concatenate([ends, brk]))
    pts = pts[(pts >= min(ends)) & (pts <= max(ends))]
    x, w = _leggauss(m)
    half, mid = (pts[1:] - pts[:-1]) / 2, (pts[1:] + pts[:-1]) / 2
    t, wt = (mid[:, None] + half[:, None] * x).ravel(), (half[:, None] * w).ravel()
    return t, wt, np.asarray(logw(t), float)


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
    r"""Mean ``(K,)`` and covariance ``(K, K)`` of :math:`A = W X + b` for ``X ~ N(m, S)``: ``(W m + b, (WF)(WF)ᵀ)``
    with the law's float64 factor F, computed in float64 (whatever the dtypes of the router and the law)."""
    f64 = torch.float64
    W = weight.detach().to(device=law.mean.device, dtype=f64)
    WF = W @ law.factor
    C = WF @ WF.T
    return W @ law.mean + bias.detach().to(W), 0.5 * (C + C.T)


def score_law(v: torch.Tensor, c: float, law: Gaussian) -> tuple[float, float]:
    r"""``(m_g, s)`` with :math:`g(X) = v\cdot X + c \sim N(m_g, s^2)` (Example 3.8), :math:`s = |F^\top v|`."""
    v = torch.as_tensor(v).to(law.mean)
    return float(v @ law.mean) + c, float(torch.linalg.vector_norm(law.factor.T @ v))


def _householder(a: np.ndarray) -> np.ndarray:
    """The symmetric orthogonal H with ``H a = |a| e_1`` (so ``H e_1 = a/|a|``)."""
    n = float(np.linalg.norm(a))
    u = a.astype(float).copy()
    u[0] += math.copysign(n, u[0]) if u[0] != 0 else n
    H = np.eye(len(a)) - 2.0 * np.outer(u, u) / float(u @ u)
    return H if a[0] < 0 else -H  # -H a = |a| e_1 when u[0] = a_0 + |a| (a_0 >= 0); H a = |a| e_1 otherwise


def condition_on_score(law: Gaussian, v: torch.Tensor, c: float, t: float = 0.0) -> Gaussian:
    r"""The conditional law of ``X ~ N(m, FFᵀ)`` given :math:`v\cdot X + c = t` (a degenerate Gaussian).

    .. math:: X \mid g = t \sim m + F\hat a\,\frac{t - m_g}{s} + (FH)_{:,2:}\,z', \qquad a = F^\top v,\ s = |a|,

    H the Householder reflection taking :math:`\hat a = a/s` to the first axis: the factor :math:`(FH)_{:,2:}` has
    exactly one column less, so the conditional covariance :math:`S - Svv^\top S/s^2` is never formed (it loses
    the digits of an ill-conditioned S) and its zero variance along v is exact.
    """
    v = torch.as_tensor(v).to(law.mean)
    m_g, s = score_law(v, c, law)
    if s == 0.0:
        fail("v", "condition_on_score", "a direction with vᵀSv > 0", v)
    F = to_numpy(law.factor)
    a = F.T @ to_numpy(v)
    G = F @ _householder(a)
    mean = to_numpy(law.mean) + F @ (a / s) * ((t - m_g) / s)
    rest = G[:, 1:] if G.shape[1] > 1 else np.zeros((F.shape[0], 1))
    return Gaussian.from_factor(torch.from_numpy(mean).to(law.mean.device), torch.from_numpy(rest).to(law.mean.device))


@dataclass(frozen=True)
class ContrastLaw:
    r"""The joint law of contrasts :math:`Y = D X + c` (rows of D: e.g. router score differences
    :math:`w_i - w_j`) of one Gaussian component: ``mean (p,)``, ``factor (p, r)`` with
    :math:`Y = \text{mean} + \text{factor}\,z`, and ``rel_error (p,)``: a bound on the relative error of each row's
    standard deviation from rounding (the factor's backward error and the product DF), used by error bounds."""

    mean: np.ndarray
    factor: np.ndarray
    rel_error: np.ndarray

    @property
    def sd(self) -> np.ndarray:
        return np.linalg.norm(self.factor, axis=1)


_SPLIT = 134217729.0  # 2^27 + 1 (Dekker's splitting of a float64)
EXACT_BUDGET = 4_000_000  # error-free products computed for a reduction at most this many terms


def _two_prod(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p, e)`` with ``p + e = a·b`` exactly (Dekker/Veltkamp; finite inputs well inside the float64 range)."""
    p = a * b
    A, B = a * _SPLIT, b * _SPLIT
    ah, bh = A - (A - a), B - (B - b)
    al, bl = a - ah, b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(s, e)`` with ``s + e = a + b`` exactly (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _terms(D: np.ndarray, Dl: np.ndarray, X: np.ndarray) -> list[np.ndarray]:
    """The exact products of ``(D + Dl)[:, None]`` with ``X`` as float arrays (Dl·X's own rounding is below ε² of
    the terms and is left out)."""
    a, b = _two_prod(D[:, None], X)
    return [a, b, Dl[:, None] * X]


def _exact_congruence(D: np.ndarray, Dl: np.ndarray, S: np.ndarray) -> np.ndarray:
    r""":math:`DSD^\top` with every entry correctly rounded (to ε² of its terms), ``D + Dl`` the rows as an exact
    sum of two floats: each product :math:`D_{ki}S_{ij}D_{lj}` split into floats by error-free products and summed
    by ``math.fsum``."""
    p = D.shape[0]
    C = np.zeros((p, p))
    for k in range(p):
        first = _terms(D[k], Dl[k], S)
        for l in range(k, p):
            parts = []
            for t in first:
                a, b = _two_prod(t, D[l][None, :])
                parts += [a.ravel(), b.ravel(), (t * Dl[l][None, :]).ravel()]
            C[k, l] = C[l, k] = math.fsum(np.concatenate(parts))
    return C


def _exact_product(D: np.ndarray, Dl: np.ndarray, F: np.ndarray) -> np.ndarray:
    """``(D + Dl) @ F`` with every entry correctly rounded (error-free products, ``math.fsum``)."""
    out = np.zeros((D.shape[0], F.shape[1]))
    for k in range(D.shape[0]):
        parts = _terms(D[k], Dl[k], F)
        for j in range(F.shape[1]):
            out[k, j] = math.fsum(np.concatenate([t[:, j] for t in parts]))
    return out


def contrast_law(D, c, law: Gaussian, D_lo=None, c_lo=None) -> ContrastLaw:
    r"""Means and factor rows of :math:`Y = DX + c` for ``X ~ law`` (D ``(p, d)``, c ``(p,)``). ``D_lo``, ``c_lo``:
    optional low parts, so that the rows are exactly ``D + D_lo`` (a difference of two router rows is not exact
    in floating point when their entries differ in size: :func:`row_differences` gives both parts).

    Small reductions (at most :data:`EXACT_BUDGET` error-free products) are exact to rounding whatever the
    law's condition number: :math:`DSD^\top` with every entry correctly rounded from the law's covariance as
    given (or :math:`DF`, for a law given by its factor), then a rank-revealing factor of that small ``(p, p)``
    matrix through its correlation matrix, so ``rel_error`` is a few ε. Larger ones use the law's factor,
    ``D F`` in float64: each computed row is :math:`(D + \delta D)F` with :math:`|\delta D F| \le \gamma_d|D||F|`,
    and F carries its factorisation's backward error (:math:`\le \gamma_d|F||F|^\top` in :math:`FF^\top`),
    so each standard deviation is accurate to :math:`\rho_i = 2\gamma_d\,\||D_i||F|\|^2/s_i^2`
    (``rel_error``, :math:`\gamma_d = (d + 2)\epsilon`) — a condition number of 1e12 along a contrast costs
    up to 12 of the 16 digits there, and the error bounds say so. Means: ``math.fsum`` of exact products.
    """
    D = np.atleast_2d(np.asarray(D, float))
    p, d = D.shape
    Dl = np.zeros_like(D) if D_lo is None else np.atleast_2d(np.asarray(D_lo, float))
    F, m = to_numpy(law.factor), to_numpy(law.mean)
    c = np.broadcast_to(np.asarray(c, float), (p,))
    cl = np.zeros(p) if c_lo is None else np.broadcast_to(np.asarray(c_lo, float), (p,))
    mean = np.array([math.fsum(np.concatenate([*_two_prod(Di, m), Dli * m, [ci, cli]]))
                     for Di, Dli, ci, cli in zip(D, Dl, c, cl)])
    given_factor = getattr(law, "given", "cov") == "factor"
    if given_factor and p * d * F.shape[1] * 3 <= EXACT_BUDGET:
        rows = _exact_product(D, Dl, F)
        return ContrastLaw(mean, rows, np.full(p, 8 * EPS * (F.shape[1] + 2)))
    if not given_factor and 9 * d * d * p * (p + 1) // 2 <= EXACT_BUDGET:
        C = _exact_congruence(D, Dl, to_numpy(law.cov))
        return ContrastLaw(mean, covariance_factor(C), np.full(p, 8 * EPS * (p + 2)))
    rows = D @ F + Dl @ F
    return ContrastLaw(mean, rows, factor_rel_error(D, F, rows))


def row_differences(W: np.ndarray, pairs) -> tuple[np.ndarray, np.ndarray]:
    """``(D, D_lo)`` with ``D + D_lo = W[i] - W[j]`` exactly for each pair ``(i, j)`` (two-sum)."""
    i = np.array([p[0] for p in pairs], dtype=int)
    j = np.array([p[1] for p in pairs], dtype=int)
    return _two_sum(W[i], -W[j])


def factor_rel_error(D: np.ndarray, F: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    r"""Relative error bound of the standard deviations :math:`|D_iF|` computed in float64 through a factor F of
    the law (:func:`contrast_law`): :math:`\rho_i = 2\gamma_d\,\||D_i||F|\|^2 / s_i^2`, :math:`\gamma_d = (d+2)\epsilon`."""
    D = np.atleast_2d(np.asarray(D, float))
    rows = D @ F if rows is None else rows
    sd = np.linalg.norm(rows, axis=1)
    absrow = np.linalg.norm(np.abs(D) @ np.abs(F), axis=1)
    gamma = (D.shape[1] + 2) * EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, 2 * gamma * (absrow / np.where(sd > 0, sd, 1.0)) ** 2, np.inf)


# ----------------------------------------------------------------------------- box and orthant probabilities

SOV_BOUND_SE = 7.0  # a randomised estimate's error bound: this many standard errors of 16 random shifts
_DEP_TOL = 1e-9  # a standardised row whose residual (orthogonal to the earlier levels) is below this is dependent
_SCRAMBLES = 16


@dataclass(frozen=True)
class Probability:
    r"""A Gaussian probability: ``value``, a bound on its absolute error ``bound``, its natural logarithm ``log``
    (accurate where ``value`` underflows), the ``method`` ("exact" to rounding, or "sov": randomised
    quasi-Monte Carlo of the separation-of-variables integrand), the integrand ``points`` used and ``se``, the
    standard error of the randomised part: ``bound`` is :data:`SOV_BOUND_SE` · ``se`` plus the rounding bound, and a
    sum of independent runs is bounded by :func:`combined_bound`."""

    value: float
    bound: float
    log: float
    method: str = "exact"
    points: int = 0
    se: float = 0.0  # standard error of the randomised part (0 where exact): independent runs add in quadrature


def _plan(G: np.ndarray, a: np.ndarray, b: np.ndarray):
    r"""Pivoted LQ of standardised rows ``G (q, r)`` (unit norms) with the Genz–Bretz order: at each level the row
    whose interval is least likely given the earlier levels at their truncated means. Returns ``(L (q, k), level
    (q,), k)``: row i bounds variable ``level[i]`` given the earlier ones, :math:`a_i < L_i\cdot\xi < b_i`
    with :math:`L_{i,\text{level}[i]} \ne 0`; rows whose residual beyond the earlier levels is below
    ``_DEP_TOL`` are dependent and join the last level."""
    G = G.copy()
    q, r = G.shape
    level = -np.ones(q, dtype=int)
    y: list[float] = []
    k = 0
    while k < r:
        free = np.flatnonzero(level < 0)
        if free.size == 0:
            break
        res = np.linalg.norm(G[free, k:], axis=1)
        dep = res <= _DEP_TOL
        if k > 0:
            level[free[dep]] = k - 1
        cand, rc = free[~dep], res[~dep]
        if cand.size == 0:
            break
        s = G[cand, :k] @ np.asarray(y) if k else np.zeros(cand.size)
        with np.errstate(invalid="ignore"):
            lo, hi = (a[cand] - s) / rc, (b[cand] - s) / rc
        piv = int(cand[int(np.argmin(log_interval_mass(lo, hi)))])
        H = _householder(G[piv, k:])
        G[:, k:] = G[:, k:] @ H
        G[piv, k + 1:] = 0.0
        level[piv] = k
        pl, ph = float((a[piv] - (G[piv, :k] @ np.asarray(y) if k else 0.0)) / G[piv, k]), float(
            (b[piv] - (G[piv, :k] @ np.asarray(y) if k else 0.0)) / G[piv, k])
        y.append(_truncated_mean(pl, ph))
        k += 1
    level[level < 0] = k - 1
    return G[:, :k], level, k


def _truncated_mean(lo: float, hi: float) -> float:
    """E[ξ | lo < ξ < hi], ξ ~ N(0, 1), computed from logs (accurate in the tails; the nearer end where the
    ratio overflows, which happens only far beyond the float64 range of the mass)."""
    near = lo if lo > 0 else (hi if hi < 0 else 0.0)
    lm = log_interval_mass(lo, hi)
    if lm == -np.inf:
        return near
    with np.errstate(over="ignore", invalid="ignore"):
        f = [0.0 if not np.isfinite(t) else float(np.exp(float(log_phi(t)) - lm)) for t in (lo, hi)]
        v = f[0] - f[1]
    return float(np.clip(v, lo, hi)) if np.isfinite(v) else near


def _level_bounds(L: np.ndarray, level: np.ndarray, a: np.ndarray, b: np.ndarray, xi: np.ndarray, k: int):
    """``(lo, hi)`` of variable k for draws of the earlier variables ``xi (n, k)`` (or a scalar grid)."""
    rows = np.flatnonzero(level == k)
    s = xi[:, :k] @ L[rows, :k].T if k else np.zeros((xi.shape[0], rows.size))
    c = L[rows, k]
    with np.errstate(invalid="ignore", divide="ignore"):
        ra, rb = (a[rows] - s) / c, (b[rows] - s) / c
    lo = np.where(c > 0, ra, rb).max(1)
    hi = np.where(c > 0, rb, ra).min(1)
    return np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi)


def _two_level(L, level, a, b) -> tuple[float, float]:
    r"""``(log P, log of the error bound)`` for two levels: :math:`P = \int \varphi(\xi_0)\,e_1(\xi_0)\,d\xi_0` over
    the first variable's interval, :math:`e_1` the mass of the second's; the weight is log-concave (Prékopa), with
    kinks where two bounds of the second variable cross, so :func:`log_concave_panels` integrates it to rounding
    in the tails too."""
    lo0, hi0 = _level_bounds(L, level, a, b, np.zeros((1, 0)), 0)
    lo0, hi0 = float(lo0[0]), float(hi0[0])
    rows = np.flatnonzero(level == 1)
    # bound lines of ξ_1 as functions of ξ_0: (α + β ξ_0); kinks where two cross
    c = L[rows, 1]
    alpha = np.concatenate([a[rows] / c, b[rows] / c])
    beta = np.concatenate([-L[rows, 0] / c, -L[rows, 0] / c])
    kinks = []
    for i in range(len(alpha)):
        for j in range(i + 1, len(alpha)):
            if beta[i] != beta[j] and np.isfinite(alpha[i]) and np.isfinite(alpha[j]):
                kinks.append((alpha[j] - alpha[i]) / (beta[i] - beta[j]))
    def logw(t):
        t = np.atleast_1d(np.asarray(t, float))
        l1, h1 = _level_bounds(L, level, a, b, t[:, None], 1)
        return log_phi(t) + log_interval_mass(l1, h1)

    # where the second variable's interval is not empty: an interval of ξ_0 (hi_1 − lo_1 is concave, piecewise
    # linear), so a mass beyond |ξ_0| = 50 (below e^-1250, far under the float64 range) is still seen as positive
    flo, fhi = lo0, hi0
    lower, upper = [], []
    for r in rows:
        c = L[r, 1]
        for bound, is_lo in ((a[r], c > 0), (b[r], c < 0)):
            if np.isfinite(bound):
                (lower if is_lo else upper).append((bound / c, -L[r, 0] / c))
    for au, bu in upper:
        for al, bl in lower:
            da, db = au - al, bu - bl  # hi_1 − lo_1 >= da + db ξ_0 must be > 0
            if db > 0:
                flo = max(flo, -da / db)
            elif db < 0:
                fhi = min(fhi, -da / db)
            elif da <= 0:
                return -math.inf, -math.inf
    if not fhi > flo:
        return -math.inf, -math.inf
    span = 50.0
    lo, hi = max(flo, -span), min(fhi, span)
    t, w, lw = log_concave_panels(logw, lo, hi, np.asarray(kinks, float)) if hi > lo else (np.zeros(0),) * 3
    if t.size and np.max(lw) > -math.inf:
        top = float(np.max(lw))
        s = float(w @ np.exp(lw - top))
        if s > 0:
            return top + math.log(s), -math.inf
    # far outside: the largest log-weight on the feasible interval (golden section; log-concave) is log P to
    # within the log of a width, enough to say how far below the float64 range the mass is
    x0, x1 = max(flo, -1e12), min(fhi, 1e12)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        u, v = x1 - g * (x1 - x0), x0 + g * (x1 - x0)
        if float(logw(u)[0]) > float(logw(v)[0]):
            x1 = v
        else:
            x0 = u
    top = float(logw(0.5 * (x0 + x1))[0])
    return (top if np.isfinite(top) else -1e300), -math.inf


def _narrow_first(L, level, a, b) -> float | None:
    r"""log P of three levels whose first is a narrow band (a score difference within a small w: the pairs form of
    β at small widths): 8-point Gauss–Legendre over :math:`\xi_0` in its band times the two-level probability of
    the rest given :math:`\xi_0` (exact to rounding when the band is narrow on the scale of every factor of the
    integrand: :math:`h(\max|\text{ends}| + 1)(1 + \max_i |L_{i0}|/|L_{i,1:}|) \le 1/2`); ``None`` otherwise."""
    lo0, hi0 = (float(v[0]) for v in _level_bounds(L, level, a, b, np.zeros((1, 0)), 0))
    if not (np.isfinite(lo0) and np.isfinite(hi0)) or hi0 <= lo0:
        return None
    rest = np.flatnonzero(level >= 1)
    steep = float(np.max(np.abs(L[rest, 0]) / np.maximum(np.linalg.norm(L[rest, 1:], axis=1), 1e-300)))
    if (hi0 - lo0) * (max(abs(lo0), abs(hi0)) + 1.0) * (1.0 + steep) > 0.5:
        return None
    xg, wg = _leggauss(8)
    half, mid = 0.5 * (hi0 - lo0), 0.5 * (hi0 + lo0)
    logs = []
    for x, w in zip(mid + half * xg, half * wg):
        shift = L[rest, 0] * x
        lp, _ = _two_level(L[rest, 1:], level[rest] - 1, a[rest] - shift, b[rest] - shift)
        logs.append(math.log(w) + float(log_phi(x)) + lp)
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs)) if top > -math.inf else -math.inf


def _sov_draws(L, level, a, b, k: int, u: np.ndarray) -> np.ndarray:
    r"""log of the separation-of-variables integrand at uniforms ``u (n, k-1)``, tail-accurate throughout: each
    level's mass as in :func:`log_interval_mass` (mirrored to the lower side; Gauss–Legendre where narrow; logs
    below 1e-290) and its draw :math:`\xi = \Phi^{-1}(\Phi(lo) + u\,e)` on the same side."""
    f64 = torch.float64
    U = torch.from_numpy(u)
    n = U.shape[0]
    Lt, at, bt = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)) for x in (L, a, b))
    xi = torch.zeros((n, k), dtype=f64)
    logp = torch.zeros(n, dtype=f64)
    xg, wg = (torch.from_numpy(np.array(v)) for v in _leggauss(_NARROW_NODES))
    for lev in range(k):
        rows = torch.from_numpy(np.flatnonzero(level == lev))
        s = xi[:, :lev] @ Lt[rows, :lev].T if lev else torch.zeros((n, len(rows)), dtype=f64)
        c = Lt[rows, lev]
        ra, rb = (at[rows] - s) / c, (bt[rows] - s) / c
        lo = torch.nan_to_num(torch.where(c > 0, ra, rb).amax(1), nan=-math.inf)
        hi = torch.nan_to_num(torch.where(c > 0, rb, ra).amin(1), nan=math.inf)
        flip = (lo + hi) > 0
        l2, h2 = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
        cl = _cdf_t(l2)
        e = torch.clamp(_cdf_t(h2) - cl, min=0.0)
        h = h2 - l2
        narrow = h * (torch.maximum(l2.abs(), h2.abs()) + 1.0) <= 1.0
        le = torch.log(e)
        if bool(narrow.any()):
            cc, half = 0.5 * (l2[narrow] + h2[narrow]), 0.5 * h[narrow]
            uu = half[:, None] * xg
            le[narrow] = log_phi(cc) + torch.log(half) + torch.logsumexp(-cc[:, None] * uu - 0.5 * uu * uu
                                                                          + torch.log(wg), 1)
            e[narrow] = torch.exp(le[narrow])
        deep = (e < _DEEP) & (h > 0) & ~narrow
        if bool(deep.any()):
            lh, ll = torch.special.log_ndtr(h2[deep]), torch.special.log_ndtr(l2[deep])
            le[deep] = lh + _log1mexp(ll - lh)
        le = torch.where(h > 0, le, torch.full_like(le, -math.inf))
        logp += le
        if lev == k - 1:
            break
        v = torch.where(flip, 1.0 - U[:, lev], U[:, lev])
        x = torch.special.ndtri(torch.clamp(cl + v * e, 0.0, 1.0))
        low = (cl + v * e < _DEEP) & torch.isfinite(le)
        if bool(low.any()):
            from scipy.special import ndtri_exp

            lp = torch.logaddexp(torch.special.log_ndtr(l2[low]), torch.log(v[low]) + le[low])
            x[low] = torch.from_numpy(np.asarray(ndtri_exp(np.minimum(lp.numpy(), 0.0)), dtype=np.float64))
        x = torch.minimum(torch.maximum(x, l2), h2)
        x = torch.where(flip, -x, x)
        xi[:, lev] = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    return logp.numpy()


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in range(2, int(math.isqrt(n)) + 1):
        if n % p == 0:
            return False
    return True


def _primitive_root(p: int) -> int:
    pm, factors, x = p - 1, [], p - 1
    f = 2
    while f * f <= x:
        if x % f == 0:
            factors.append(f)
            while x % f == 0:
                x //= f
        f += 1
    if x > 1:
        factors.append(x)
    r = 2
    while any(pow(r, pm // q, p) == 1 for q in factors):
        r += 1
    return r


@functools.lru_cache(maxsize=64)
def _lattice(dim: int, n: int) -> tuple[np.ndarray, int]:
    r"""A rank-1 lattice rule for ``dim`` dimensions with a prime number of points ≤ n: ``(z, p)``, points
    :math:`\{i z / p\}`, i < p. The generating vector is built component by component (fast CBC, Nuyens and Cools
    2006, for the Korobov space of product weights :math:`0.8^j`, as SciPy's ``multivariate_normal`` does), so that
    with the tent transform :math:`u \mapsto |2u - 1|` a smooth integrand's error falls almost like 1/p²."""
    p = n
    while not _is_prime(p):
        p -= 1
    m = (p - 1) // 2
    g = _primitive_root(p)
    perm = np.ones(m, dtype=np.int64)
    for j in range(m - 1):
        perm[j + 1] = (g * perm[j]) % p
    perm = np.minimum(p - perm, perm)
    pn = perm / p
    c = pn * pn - pn + 1.0 / 6
    fc = np.fft.fft(c)
    z = np.ones(dim, dtype=np.int64)
    q, w = np.ones(m), 0
    for s in range(1, dim):
        reordered = np.concatenate([c[:w + 1][::-1], c[w + 1:m][::-1]])
        q = q * (1.0 + 0.8 ** (s - 1) * reordered)
        w = int(np.fft.ifft(fc * np.fft.fft(q)).real.argmin())
        z[s] = perm[w]
    z.flags.writeable = False
    return z, p


_BLOCK = 1 << 15


def _sov(L, level, a, b, k: int, abseps: float, releps: float, seed: int, max_points: int,
         progress=None) -> tuple[float, float, int]:
    """``(log P, standard error, points)`` of the separation-of-variables integral by a lattice rule (fast CBC)
    with the tent transform and 16 independent random shifts, doubling the points until :data:`SOV_BOUND_SE`
    standard errors of the 16 shift means are within ``max(abseps, releps·P)`` or ``max_points`` are used. Each
    round is a new rule; the estimate is the last round's."""
    dim = k - 1
    rng = np.random.default_rng([seed, dim, 19])
    shifts = rng.random((_SCRAMBLES, dim))
    n, total = 1 << 9, 0
    while True:
        z, p = _lattice(dim, n)
        lm = np.empty(_SCRAMBLES)
        for r in range(_SCRAMBLES):
            parts = []
            for start in range(0, p, _BLOCK):
                i = np.arange(start, min(start + _BLOCK, p), dtype=np.float64)
                u = np.abs(2.0 * np.mod(np.outer(i, z / p) + shifts[r], 1.0) - 1.0)
                lp = _sov_draws(L, level, a, b, k, np.clip(u, 1e-300, 1 - 1e-16))
                top = float(np.max(lp))
                parts.append(top + math.log(float(np.sum(np.exp(lp - top)))) if top > -math.inf else -math.inf)
            top = max(parts)
            lm[r] = top + math.log(sum(math.exp(x - top) for x in parts)) - math.log(p) if top > -math.inf \
                else -math.inf
        total += p * _SCRAMBLES
        if progress is not None:
            progress(p * _SCRAMBLES)
        ref = float(np.max(lm))
        if ref == -math.inf:
            return -math.inf, 0.0, total
        means = np.exp(lm - ref)
        est = float(means.mean())
        se = float(means.std(ddof=1) / math.sqrt(_SCRAMBLES))
        logp = ref + math.log(est)
        value, se_abs = math.exp(logp), se * math.exp(ref)
        goal = max(abseps, releps * value)
        if SOV_BOUND_SE * se_abs <= goal or total >= max_points:
            return logp, se_abs, total
        # the error of a tent-transformed lattice rule falls at least like n^-1.5: jump there (2x to 16x)
        grow = (SOV_BOUND_SE * se_abs / goal) ** (1 / 1.5) if goal > 0 else 16.0
        n = int(n * min(max(grow * 1.2, 2.0), 16.0))
        n = min(n, max(max_points // _SCRAMBLES, 1 << 9))


MAX_SOV_POINTS = 1 << 20


def box_probability(mean, factor, lower, upper=None, closed=None, *, abseps: float = ABSEPS, releps: float = 0.0,
                    row_scale=None, row_error=None, seed: int = 0, max_points: int = MAX_SOV_POINTS,
                    progress=None) -> Probability:
    r"""Gaussian box probability :math:`P(l_i < m_i + F_i\cdot\xi < u_i\ \forall i)`, :math:`\xi \sim N(0, I_r)`,
    with a true error bound, accurate relative to P in the tails.

    Shapes: ``mean`` ``(q,)``, ``factor`` ``(q, r)`` (rows may be dependent: a singular law is fine), ``lower``,
    ``upper`` ``(q,)`` or scalars (``upper=None``: +inf, an orthant), ``closed`` ``(q,)`` booleans: for a row of zero
    variance, whether its bounds are attained (a tie-break). A row is of zero variance where its norm is below
    1e-13 of ``row_scale`` (its input-space scale; default the largest row norm) and is then decided exactly.

    The rest is standardised and reordered by Genz–Bretz into levels with a pivoted LQ of the factor (no
    covariance is formed): level k bounds :math:`\xi_k` given :math:`\xi_{<k}`, every interval mass in the
    tail-accurate form of :func:`log_interval_mass`, so

    - 0 levels: 0 or 1; 1 level: an interval mass; 2 levels: one integral of a log-concave function by
      :func:`log_concave_panels` — all exact to rounding (``bound`` :data:`ROUNDING` · P, method "exact");
    - 3 levels or more: :math:`P = E_u[\prod_k e_k]`, the separation-of-variables integrand (Genz 1992) of
      uniforms u, averaged over 16 independent scramblings of a Sobol sequence (products in logs, so nothing
      underflows), doubling the points until :data:`SOV_BOUND_SE` = 10 standard errors of the 16 scrambling
      means are within ``max(abseps, releps·P)`` or ``max_points`` are used (then ``bound`` is what was reached);
      ``bound`` is those 7 standard errors (a Student-t(15) two-sided tail of 6e-6) plus the rounding term;
      ``seed`` picks the scramblings (independent runs: different seeds).

    ``row_error (q,)``: relative errors of the rows' standard deviations from rounding in their inputs
    (:class:`ContrastLaw.rel_error`); their first-order effect, :math:`4\sum_i \rho_i (1 + Z^2)` relative with
    :math:`Z = 2 + \sqrt{-2\log P}` (the depth of the event in standard deviations), is added to ``bound``.
    """
    m = np.asarray(mean, float).ravel()
    F = np.asarray(factor, float).reshape(m.size, -1)
    lo = np.broadcast_to(np.asarray(lower, float).ravel(), m.shape).astype(float)
    hi = np.full(m.shape, np.inf) if upper is None else np.broadcast_to(np.asarray(upper, float).ravel(),
                                                                         m.shape).astype(float)
    cl = np.zeros(m.shape, bool) if closed is None else np.broadcast_to(np.asarray(closed, bool), m.shape)
    rn = np.linalg.norm(F, axis=1)
    scale = np.broadcast_to(np.asarray(rn.max(initial=0.0) if row_scale is None else row_scale, float), m.shape)
    fixed = rn <= 1e-13 * scale
    tol = 1e-12 * (np.abs(m) + scale)
    with np.errstate(invalid="ignore"):
        ok = ((m > lo + tol) | (cl & (m >= lo - tol))) & ((m < hi - tol) | (cl & (m <= hi + tol)))
    if np.any(fixed & ~ok):
        return Probability(0.0, 0.0, -math.inf)
    keep = ~fixed
    if not keep.any():
        return Probability(1.0, 0.0, 0.0)
    rho = np.zeros(m.shape) if row_error is None else np.broadcast_to(np.asarray(row_error, float), m.shape)
    G = F[keep] / rn[keep, None]
    a, b = (lo[keep] - m[keep]) / rn[keep], (hi[keep] - m[keep]) / rn[keep]
    L, level, k = _plan(G, a, b)
    se = 0.0
    if k == 1:
        lo0, hi0 = _level_bounds(L, level, a, b, np.zeros((1, 0)), 0)
        logp, method, pts = float(log_interval_mass(lo0[0], hi0[0])), "exact", 0
    elif k == 2:
        logp, _ = _two_level(L, level, a, b)
        method, pts = "exact", 0
    elif k == 3 and (narrow := _narrow_first(L, level, a, b)) is not None:
        logp, method, pts = narrow, "exact", 0
    else:
        logp, se, pts = _sov(L, level, a, b, k, abseps, releps, seed, max_points, progress)
        method = "sov"
    p = math.exp(logp) if math.isfinite(logp) else 0.0
    depth = 2.0 + math.sqrt(max(-2.0 * logp, 0.0)) if math.isfinite(logp) else 0.0
    # rounding in the pipeline: each standardised bound is computed to a few ε, amplified by 1/|L_i,level(i)| (a row
    # nearly dependent on earlier levels) and, in the tails, by the depth² of the event
    pivots = np.abs(L[np.arange(len(level)), level])
    kappa = float(np.max(1.0 / np.maximum(pivots, 1e-300))) * k
    rounding = ROUNDING + 4.0 * (float(np.sum(rho[keep])) + 16 * EPS * kappa) * (1.0 + depth ** 2)
    return Probability(p, SOV_BOUND_SE * se + rounding * p, logp, method, pts, se)


def combined_bound(probs, weights=None) -> float:
    r"""A bound on the error of :math:`\sum_k \omega_k P_k` for independent :func:`box_probability` runs: the
    randomised parts add in quadrature (:math:`7\sqrt{\sum \omega_k^2 se_k^2}`), the rounding parts linearly."""
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, float)
    se = math.sqrt(sum((wk * p.se) ** 2 for wk, p in zip(w, probs)))
    rounding = sum(abs(wk) * (p.bound - SOV_BOUND_SE * p.se) for wk, p in zip(w, probs))
    return SOV_BOUND_SE * se + rounding


def _check_moments(mean, cov, where: str):
    m, C = to_numpy(as_tensor(mean, "mean", where)), to_numpy(as_tensor(cov, "cov", where))
    if m.ndim != 1 or m.size < 1 or not np.isfinite(m).all():
        fail("mean", where, "a finite array of shape (q,)", m)
    if C.shape != (m.size, m.size) or not np.isfinite(C).all() or np.abs(C - C.T).max() > 1e-10 * max(
            1.0, np.abs(C).max()) or np.linalg.eigvalsh(C).min() < -1e-10 * max(1.0, np.abs(C).max()):
        fail("cov", where, f"a symmetric positive semi-definite ({m.size}, {m.size}) matrix", C)
    return m, C


def covariance_factor(C: np.ndarray) -> np.ndarray:
    """A rank-revealing factor of a covariance (small, q × q), through its correlation matrix: eigenvalues of the
    correlation matrix below 1e-12 of the largest are 0."""
    sd = np.sqrt(np.clip(np.diag(C), 0.0, None))
    s = np.where(sd > 0, sd, 1.0)
    lam, V = np.linalg.eigh(C / np.outer(s, s))  # the correlation matrix: well scaled
    lam = np.where(lam > 1e-12 * max(lam.max(), 0.0), lam, 0.0)
    return (V * np.sqrt(lam)) * s[:, None]


def orthant_probability(mean, cov, low, closed=None, abseps: float = ABSEPS) -> float:
    r"""Gaussian orthant probability :math:`P(Z_i > l_i\ \forall i)` for :math:`Z \sim N(m, C)`.

    Shapes: ``mean`` ``(q,)``, ``cov`` ``(q, q)`` (symmetric positive semi-definite, may be singular),
    ``low`` ``(q,)`` or a scalar, ``closed`` ``(q,)`` booleans or ``None``. Components with zero
    variance are decided exactly (:math:`m_i > l_i`, or :math:`m_i \ge l_i` where ``closed[i]``, a tie-break for
    deterministic ties); the rest is :func:`box_probability` of a rank-revealing factor of the correlation
    matrix: exact to rounding when it has rank ≤ 2, randomised with a bound (``abseps`` absolute) beyond.
    """
    return orthant_with_bound(mean, cov, low, closed, abseps)[0]


def orthant_with_bound(mean, cov, low, closed=None, abseps: float = ABSEPS,
                       where: str = "orthant_probability") -> tuple[float, float]:
    """:func:`orthant_probability` and a bound on its absolute error (:func:`box_probability`)."""
    abseps = check_float(abseps, "abseps", where, 0.0, 0.1, high_open=False)
    m, C = _check_moments(mean, cov, where)
    low = to_numpy(as_tensor(low, "low", where))
    if low.ndim > 1 or low.size not in (1, m.size) or np.isnan(low).any():
        fail("low", where, f"a scalar or an array of shape ({m.size},)", low)
    closed = check_bools(closed, "closed", where, m.size)
    sd = np.sqrt(np.clip(np.diag(C), 0.0, None))
    scale = 1e3 * max(1.0, float(np.abs(m).max(initial=0.0)), float(sd.max(initial=0.0)))
    p = box_probability(m, covariance_factor(C), np.broadcast_to(low.reshape(-1), m.shape), None, closed,
                        abseps=abseps, row_scale=scale)
    return p.value, p.bound


def interval_moments(lo, hi) -> np.ndarray:
    r""":math:`\int_{lo}^{hi} t^k \varphi(t)\,dt`, k = 0..3, shape ``(..., 4)``, for ``lo < hi`` (ends may be ±inf)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    fl, fh = np.isfinite(lo), np.isfinite(hi)
    tl, th = np.where(fl, lo, 0.0), np.where(fh, hi, 0.0)
    pl, ph = np.where(fl, phi(tl), 0.0), np.where(fh, phi(th), 0.0)
    m0 = interval_mass(lo, hi)
    m1 = pl - ph
    return np.stack([m0, m1, m0 + tl * pl - th * ph, 2 * m1 + tl * tl * pl - th * th * ph], -1)
