r"""Gaussian moments over polyhedra (used by the exact shape derivative, ``softhard.dynamics.shape``).

For :math:`X = m + Lz`, :math:`z \sim N(0, I_r)` (L may be rank deficient, e.g. a law conditioned on a
hyperplane) and a region :math:`\{Ax + \alpha > 0\}`, :func:`region_moments` computes
:math:`T = E[\tilde x\otimes\tilde x\otimes\tilde x\, 1_{region}]`, :math:`\tilde x = (x, 1)`, shape ``(d+1,)*3``;
it holds every moment up to order 3 (``T[..., d]`` the second, ``T[:, d, d]`` the first, ``T[d, d, d]`` the
mass). In z the constraints read :math:`(AL)z + (Am + \alpha) > 0`; their normals span q ≤ 2 directions Q
(else :class:`SpanError`; normals whose relative singular value is below 1e-12 count as parallel, an
absolute error of at most ~1e-12), :math:`z = Qu + Pw` with w ⟂ u independent, so only the q-dimensional u
is truncated. A constraint constant on the support (:math:`|AL| \le 10^{-11}|A|\,|L|`) is decided by its
value; that needs L to be rank revealing (exact zero columns where the law is degenerate, as
:class:`softhard.model.laws.Gaussian` makes them), else a rounding-level column makes it look variable.


- q = 1: an interval, :math:`\int t^k\varphi = [-t^{k-1}\varphi]_{lo}^{hi} + (k-1)\int t^{k-2}\varphi`
  (closed form, :func:`softhard.closed.normal.interval_moments`);
- q = 2: a polygon, in a rotated frame :math:`(v_1, v_2)` in which no edge is close to parallel to the
  :math:`v_2` axis: the inner integral over :math:`v_2` is the interval closed form between the
  piecewise-linear bounds; the outer one is Gauss–Legendre on pieces of length ≤ 1/2 between the vertices'
  :math:`v_1` (analytic there), over :math:`|v_1| \le 10` (tail mass < 1e-22).

The w-part contributes :math:`E[ww^\top] = I` to the terms with two w factors (odd ones vanish).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .normal import gauss_legendre, interval_moments, phi

__all__ = ["SpanError", "region_moments", "product_moment"]


class SpanError(ValueError):
    """The constraints' normals span more than two directions (no exact polyhedral moments)."""


def _powers(q: int) -> tuple[np.ndarray, ...]:
    """For ũ = (u_1..u_q, 1): how many factors of each entry of ũ⊗ũ⊗ũ are u_1, ..., u_q."""
    idx = np.indices((q + 1,) * 3)
    return tuple((idx == c).sum(0) for c in range(q))


_ROTATIONS = np.linspace(0.0, math.pi, 90, endpoint=False)


def _polygon_moments(A: np.ndarray, alpha: np.ndarray, nodes: int = 16) -> np.ndarray:
    """E[ũ⊗ũ⊗ũ 1{A u + α > 0}], u ~ N(0, I_2), ũ = (u, 1); ``A (m, 2)`` with unit rows; ``nodes``: the
    Gauss–Legendre rule on each piece of the outer integral."""
    # frame u = R v whose v_2 axis is as far as possible from every edge direction
    c, s = np.cos(_ROTATIONS), np.sin(_ROTATIONS)
    best = np.argmax(np.min(np.abs(A[:, [0]] * -s + A[:, [1]] * c), axis=0))
    R = np.array([[c[best], -s[best]], [s[best], c[best]]])
    Av = A @ R
    brk = [-10.0, 10.0]
    for i in range(len(Av)):
        for j in range(i + 1, len(Av)):
            M = Av[[i, j]]
            if abs(np.linalg.det(M)) > 1e-13:
                brk.append(np.linalg.solve(M, -alpha[[i, j]])[0])
    edges = np.unique(np.clip(brk, -10.0, 10.0))
    pieces = [np.linspace(a, b, int(math.ceil((b - a) / 0.5)) + 1) for a, b in zip(edges[:-1], edges[1:])]
    grid = np.unique(np.concatenate(pieces))
    a, b = grid[:-1], grid[1:]
    gx, gw = gauss_legendre(nodes)
    v1 = ((0.5 * (b - a))[:, None] * gx + (0.5 * (a + b))[:, None]).ravel()
    w = ((0.5 * (b - a))[:, None] * gw).ravel() * phi(v1)
    with np.errstate(divide="ignore"):
        bound = (-alpha - np.outer(v1, Av[:, 0])) / Av[:, 1]
    lo = np.max(np.where(Av[:, 1] > 0, bound, -np.inf), axis=1)
    hi = np.min(np.where(Av[:, 1] < 0, bound, np.inf), axis=1)
    ok = hi > lo
    mk = interval_moments(np.where(ok, lo, 0.0), np.where(ok, hi, 1.0)) * ok[:, None]
    p1, p2 = _powers(2)
    Tv = np.einsum("n,nabc->abc", w, v1[:, None, None, None] ** p1 * mk[:, p2])
    Rb = np.eye(3)
    Rb[:2, :2] = R
    return np.einsum("ia,jb,kc,abc->ijk", Rb, Rb, Rb, Tv)


def region_moments(mean: np.ndarray, L: np.ndarray, A: np.ndarray, alpha: np.ndarray,
                    tie: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """T = E[x̃⊗x̃⊗x̃ 1{A x + α > 0}] for x = mean + L z; also whether a tie rule decided a constraint.

    A constraint that is constant on the support (its normal is killed by L) holds if its value is
    positive; if the value is zero (an interface coinciding with the support's hyperplane) it holds iff
    ``tie > 0`` for that row.
    """
    d, r = L.shape
    Az, off = A @ L, A @ mean + alpha
    size = np.linalg.norm(A, axis=1) * max(np.linalg.norm(L, 2), 1e-300)
    const = np.linalg.norm(Az, axis=1) <= 1e-11 * np.maximum(size, 1e-300)
    scale = np.linalg.norm(A, axis=1) * (np.linalg.norm(mean) + np.linalg.norm(L, 2)) + np.abs(alpha)
    zero = const & (np.abs(off) <= 1e-11 * np.maximum(scale, 1e-300))
    tied = bool(zero.any())
    holds = np.where(zero, (tie if tie is not None else -np.ones(len(A))) > 0, off > 0)
    if np.any(const & ~holds):
        return np.zeros((d + 1,) * 3), tied
    Az, off = Az[~const], off[~const]
    nrm = np.linalg.norm(Az, axis=1)
    Az, off = Az / nrm[:, None], off / nrm
    if len(Az):
        _, sv, Vt = np.linalg.svd(Az)
        q = int((sv > 1e-12 * sv[0]).sum())
    else:
        Vt, q = np.eye(r), 0
    if q > 2:
        raise SpanError(q)
    Q, P = Vt[:q].T, Vt[q:].T
    Au = Az @ Q
    if q == 0:
        Tu = np.ones((1, 1, 1))
    elif q == 1:
        t = Au[:, 0]
        lo = max([-o / c for c, o in zip(t, off) if c > 0], default=-np.inf)
        hi = min([-o / c for c, o in zip(t, off) if c < 0], default=np.inf)
        Tu = interval_moments(lo, hi)[_powers(1)[0]] if hi > lo else np.zeros((2, 2, 2))
    else:
        Tu = _polygon_moments(Au, off)
    B = np.zeros((r + 1, q + 1))
    B[:r, :q], B[r, q] = Q, 1.0
    C = np.zeros((r + 1, r - q))
    C[:r] = P
    CC, v1 = C @ C.T, B @ Tu[:, q, q]
    Tz = (np.einsum("ia,jb,kc,abc->ijk", B, B, B, Tu) + np.einsum("i,jk->ijk", v1, CC)
          + np.einsum("j,ik->ijk", v1, CC) + np.einsum("k,ij->ijk", v1, CC))
    G = np.zeros((d + 1, r + 1))
    G[:d, :r], G[:d, r], G[d, r] = L, mean, 1.0
    return np.einsum("ia,jb,kc,abc->ijk", G, G, G, Tz), tied


def _interval_moments4(lo: float, hi: float) -> np.ndarray:
    r""":math:`\int_{lo}^{hi} t^k\varphi(t)\,dt`, k = 0..4 (``lo < hi``, ends may be ±inf):
    :math:`\int t^4\varphi = [-t^3\varphi]_{lo}^{hi} + 3\int t^2\varphi`."""
    m = interval_moments(lo, hi)
    edge = sum(sgn * (t ** 3 * float(phi(t)) if math.isfinite(t) else 0.0) for sgn, t in ((1.0, lo), (-1.0, hi)))
    return np.append(m, 3.0 * m[2] + edge)


def _isserlis(alpha: np.ndarray, C: np.ndarray) -> np.ndarray:
    r""":math:`E_\omega[\prod_i(\alpha_i(u) + \omega_i)]` as polynomials in u: ``alpha (B, n, 2)`` holds
    :math:`\alpha_i = \alpha_{i0} + \alpha_{i1}u`, ``C (B, n, n)`` the covariance of the centred Gaussian ω;
    returns coefficients ``(B, n + 1)`` (Isserlis: sum over partial pairings of the factors)."""
    B, n, _ = alpha.shape

    def poly(idx):
        out = np.zeros((B, n + 1))
        out[:, 0] = 1.0
        for i in idx:
            nxt = np.zeros_like(out)
            nxt[:, :-1] += out[:, :-1] * alpha[:, i, :1]
            nxt[:, 1:] += out[:, :-1] * alpha[:, i, 1:]
            out = nxt
        return out

    total = poly(range(n))
    for i, j in itertools.combinations(range(n), 2):
        rest = [k for k in range(n) if k not in (i, j)]
        total += C[:, i, j][:, None] * poly(rest)
        if len(rest) == 2:  # the second pair of a full pairing of four factors (each pairing counted once)
            if (i, j) < (rest[0], rest[1]):
                total[:, 0] += C[:, i, j] * C[:, rest[0], rest[1]]
    return total


def product_moment(mean: np.ndarray, L: np.ndarray, factors: np.ndarray, A: np.ndarray, alpha: np.ndarray,
                   tie: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    r"""Gaussian moments of products of affine functions over a region cut by at most one direction.

    .. math:: E\Big[\prod_{i=1}^n (f_i\cdot\tilde X)\;1\{AX + \alpha > 0\}\Big], \qquad X = m + Lz,\
              z \sim N(0, I_r),\ \tilde x = (x, 1),\ n \le 4,

    for a batch of factor lists ``factors (B, n, d+1)``; returns ``(values (B,), tied)``. Write
    :math:`z = Qu + Pw` with Q the (at most one) direction the variable constraints cut (else
    :class:`SpanError`) and w independent of u: each factor is :math:`\alpha_i(u) + \omega_i`, the
    w-expectation is Isserlis' sum over pairings of the ω's, and the u-integral over the interval the
    constraints leave is the closed form :math:`\int_{lo}^{hi} t^k\varphi`, k ≤ 4. Constant constraints are decided
    as in :func:`region_moments` (``tied``: a constraint zero on the support decided by ``tie``). This is
    what the second variation of the hard risk needs on an interface (``softhard.dynamics.shape``), where
    order-4 moments appear and the contraction keeps the cost at ``O(B·n²·r)`` for any dimension.
    """
    factors = np.asarray(factors, dtype=np.float64)
    B, n, _ = factors.shape
    if n > 4:
        raise ValueError(f"product_moment: at most 4 factors, got {n}")
    d, r = L.shape
    Az, off = A @ L, A @ mean + alpha
    size = np.linalg.norm(A, axis=1) * max(np.linalg.norm(L, 2), 1e-300)
    const = np.linalg.norm(Az, axis=1) <= 1e-11 * np.maximum(size, 1e-300)
    scale = np.linalg.norm(A, axis=1) * (np.linalg.norm(mean) + np.linalg.norm(L, 2)) + np.abs(alpha)
    zero = const & (np.abs(off) <= 1e-11 * np.maximum(scale, 1e-300))
    tied = bool(zero.any())
    holds = np.where(zero, (tie if tie is not None else -np.ones(len(A))) > 0, off > 0)
    if np.any(const & ~holds):
        return np.zeros(B), tied
    Az, off = Az[~const], off[~const]
    nrm = np.linalg.norm(Az, axis=1)
    Az, off = Az / nrm[:, None], off / nrm
    if len(Az):
        _, sv, Vt = np.linalg.svd(Az)
        q = int((sv > 1e-12 * sv[0]).sum())
    else:
        Vt, q = np.eye(r), 0
    if q > 1:
        raise SpanError(q)
    Q, P = Vt[:q].T, Vt[q:].T
    c = factors[:, :, :d] @ mean + factors[:, :, d]  # (B, n)
    bz = factors[:, :, :d] @ L  # (B, n, r)
    al = np.zeros((B, n, 2))
    al[:, :, 0] = c
    if q == 1:
        al[:, :, 1] = (bz @ Q)[:, :, 0]
        t = Az @ Q[:, 0]
        lo = max([-o / ci for ci, o in zip(t, off) if ci > 0], default=-np.inf)
        hi = min([-o / ci for ci, o in zip(t, off) if ci < 0], default=np.inf)
        if not hi > lo:
            return np.zeros(B), tied
        mom = _interval_moments4(lo, hi)
    else:
        mom = np.array([1.0, 0.0, 1.0, 0.0, 3.0])
    bw = bz @ P
    coef = _isserlis(al, np.einsum("bir,bjr->bij", bw, bw))
    return coef @ mom[:n + 1], tied
