"""Independent references for the coverage benchmark and the tail tests: plain SciPy quadrature of the
definitions, sharing no code with softhard (no closed form, no estimator).

A linear router ``a = W x + b`` under ``X ~ N(m, S)`` is first whitened, ``x = m + L ξ`` (``LLᵀ = S``), so that
everything below is under ``ξ ~ N(0, I_d)``: ``a = (W L) ξ + (W m + b)``. In d = 2 (and d = 3 for β) each
pair (i, j) is handled on its own: on the hyperplane ``g_ij = a_i − a_j = t`` the set where i and j are the two
largest logits is an interval (d = 2) or a polygon (d = 3) of the remaining coordinates, every constraint
``a_i > a_k``, ``a_j > a_k`` being affine there. Quadrature: ``scipy.integrate.quad`` with ``epsabs = 0`` (relative
accuracy only, so tail values of 1e-300 keep their digits), the normal cdf differences taken in the tail that
keeps precision.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, special

LN2 = math.log(2.0)
EPSREL = 1e-11


def whiten(W, b, m, S):
    """``(W L, W m + b)`` for ``LLᵀ = S``: the router seen from ξ ~ N(0, I)."""
    W, b, m, S = (np.asarray(a, dtype=float) for a in (W, b, m, S))
    L = np.linalg.cholesky(S)
    return W @ L, W @ m + b


def _mass(lo, hi):
    """Φ(hi) − Φ(lo) (0 when empty), accurate in both tails."""
    if hi <= lo:
        return 0.0
    if lo > 0:
        return float(special.ndtr(-lo) - special.ndtr(-hi))
    return float(special.ndtr(hi) - special.ndtr(lo))


def _quad(f, a, b, points=()):
    pts = sorted(p for p in set(points) if a < p < b)
    edges = [a, *pts, b]
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        total += integrate.quad(f, lo, hi, epsabs=0.0, epsrel=EPSREL, limit=200)[0]
    return total


def _frame(W, i, j):
    """Unit normal ``n`` of the hyperplanes g_ij = const, ``|v|`` (v = W_i − W_j) and an orthonormal basis of the
    hyperplane's directions (``(d − 1, d)``)."""
    v = W[i] - W[j]
    nv = float(np.linalg.norm(v))
    n = v / nv
    Q = np.linalg.qr(np.column_stack([n, np.eye(len(n))]))[0]
    return n, nv, Q[:, 1:len(n)].T


def _constraints(W, b, i, j, n, nv, basis, t):
    """Affine constraints ``c0 + C1 @ u > 0`` on the hyperplane g_ij = t, ``ξ = r n + basisᵀ u`` with
    ``r = (t − (b_i − b_j))/|v|``: a_top − a_k > 0 for top ∈ {i, j}, k ∉ {i, j}."""
    r = (t - (b[i] - b[j])) / nv
    c0, C1 = [], []
    for k in range(W.shape[0]):
        if k in (i, j):
            continue
        for top in (i, j):
            dv = W[top] - W[k]
            c0.append(float(dv @ n) * r + b[top] - b[k])
            C1.append(basis @ dv)
    return r, np.array(c0), np.array(C1).reshape(len(c0), W.shape[1] - 1)


def _interval(c0, c1):
    """The interval of u (1-d) with ``c0 + c1 u > 0`` for all rows, as ``(lo, hi)`` (empty: lo >= hi)."""
    lo, hi = -math.inf, math.inf
    for a, s in zip(c0, c1):
        if s > 0:
            lo = max(lo, -a / s)
        elif s < 0:
            hi = min(hi, -a / s)
        elif a <= 0:
            return 0.0, 0.0
    return lo, hi


def phi(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def beta(W, b, w):
    r"""β(w) = P(a_(1) − a_(2) ≤ w) under ξ ~ N(0, I_d), d = 2 or 3:
    :math:`\sum_{i<j}\int_{-w}^{w} \varphi(r)/|v|\; P_u(\text{i, j top two on } g_{ij} = t)\,dt`."""
    W, b = np.asarray(W, float), np.asarray(b, float)
    d, total = W.shape[1], 0.0
    for i in range(W.shape[0]):
        for j in range(i + 1, W.shape[0]):
            n, nv, basis = _frame(W, i, j)

            def slice_mass(t):
                r, c0, C1 = _constraints(W, b, i, j, n, nv, basis, t)
                if d == 2:
                    return phi(r) / nv * _mass(*_interval(c0, C1[:, 0]))
                return phi(r) / nv * _polygon(c0, C1)

            total += _quad(slice_mass, -w, w, [0.0])
    return total


def _polygon(c0, C1):
    """P(c0 + C1 u > 0) for u ~ N(0, I_2): ∫ φ(u_1) [Φ(hi(u_1)) − Φ(lo(u_1))] du_1, split where a constraint
    starts or stops binding (the vertices)."""
    def inner(u1):
        return phi(u1) * _mass(*_interval(c0 + C1[:, 0] * u1, C1[:, 1]))

    kinks = []
    for p in range(len(c0)):
        for q in range(p + 1, len(c0)):
            A = np.array([C1[p], C1[q]])
            if abs(np.linalg.det(A)) > 1e-14:
                kinks.append(float(np.linalg.solve(A, -np.array([c0[p], c0[q]]))[0]))
        if C1[p, 1] == 0 and C1[p, 0] != 0:
            kinks.append(-c0[p] / C1[p, 0])
    return _quad(inner, -40.0, 40.0, [k for k in kinks if abs(k) < 40] + [0.0])


def _interfaces(W, b):
    """For each pair of a 2-d router: ``(i, j, nv, r, lo, hi, n, basis)`` with Γ_ij = {r n + u basis: lo < u < hi}."""
    out = []
    for i in range(W.shape[0]):
        for j in range(i + 1, W.shape[0]):
            n, nv, basis = _frame(W, i, j)
            r, c0, C1 = _constraints(W, b, i, j, n, nv, basis, 0.0)
            lo, hi = _interval(c0, C1[:, 0])
            if hi > lo:
                out.append((i, j, nv, r, lo, hi, n, basis[0]))
    return out


def _line(f, lo, hi):
    return _quad(f, max(lo, -40.0), min(hi, 40.0), [0.0])


def interface_constant(W, b):
    r"""C_Σ = Σ_{i<j} ∫_{Γ_ij} φ_2/|∇g_ij| dH (Prop. 3.5) under ξ ~ N(0, I_2)."""
    W, b = np.asarray(W, float), np.asarray(b, float)
    return sum(phi(r) / nv * _mass(lo, hi) for _, _, nv, r, lo, hi, _, _ in _interfaces(W, b))


def gap_slope(W, b, E, c):
    r"""G_1 for the hard model as its own teacher, ξ ~ N(0, I_2), experts ``h = E ξ + c`` (already whitened):
    :math:`(2\ln 2 - 1)\sum_{i<j}\int_{\Gamma_{ij}} \varphi_2\,D_{ij}^2/|\nabla g_{ij}|\,dH`."""
    W, b, E, c = (np.asarray(a, float) for a in (W, b, E, c))
    total = 0.0
    for i, j, nv, r, lo, hi, n, u in _interfaces(W, b):
        dE, dc = E[i] - E[j], c[i] - c[j]
        total += _line(lambda s: phi(r) * phi(s) * (dE @ (r * n + s * u) + dc) ** 2 / nv, lo, hi)
    return (2 * LN2 - 1) * total


def pair_density(W, b, i, j):
    """ψ_ij(0): the density of g_ij = a_i − a_j at 0 under ξ ~ N(0, I): φ(m/s)/s, m = b_i − b_j, s = |W_i − W_j|."""
    W, b = np.asarray(W, float), np.asarray(b, float)
    s = float(np.linalg.norm(W[i] - W[j]))
    return phi((b[i] - b[j]) / s) / s


def _gauss(lo, hi, breaks, m=20, panel=None):
    """Composite m-point Gauss–Legendre nodes and weights on [lo, hi], split at ``breaks`` and into panels of
    at most ``panel``."""
    x, w = np.polynomial.legendre.leggauss(m)
    pts = sorted({lo, hi, *[p for p in breaks if lo < p < hi]})
    if panel:
        pts = sorted({*pts, *np.arange(math.ceil(lo / panel), math.floor(hi / panel) + 1) * panel})
        pts = [p for p in pts if lo <= p <= hi]
    pts = np.array(pts)
    half, mid = (pts[1:] - pts[:-1]) / 2, (pts[1:] + pts[:-1]) / 2
    return (mid[:, None] + half[:, None] * x).ravel(), (half[:, None] * w).ravel()


def risk_gap(W, b, E, c, tau):
    r"""L_τ − L_0 for the hard model as its own teacher (no noise), ξ ~ N(0, I_2), experts ``h = E ξ + c``:
    :math:`E[(f_0 - f_\tau)^2]`, integrated over each pair's top-two cell in the coordinates (t = g_ij, u)
    by a tensor Gauss–Legendre rule (20 nodes per panel; t: panels at 0, ±τ2^k and the normal's scale; u: panels
    of width 1/4 on [−12, 12] inside the cell), so that each slice is smooth."""
    W, b, E, c = (np.asarray(a, float) for a in (W, b, E, c))
    total = 0.0
    for i in range(W.shape[0]):
        for j in range(i + 1, W.shape[0]):
            n, nv, basis = _frame(W, i, j)
            t0 = (b[i] - b[j]) / nv  # g = nv r + (b_i - b_j): r = 0 at g = b_i - b_j
            reach = tau * (64 + 0.5 * t0 * t0)
            lo_t = max(-reach, (b[i] - b[j]) - nv * (abs(t0) + 12))
            hi_t = min(reach, (b[i] - b[j]) + nv * (abs(t0) + 12))
            if not lo_t < hi_t:
                continue
            ts, tw = _gauss(lo_t, hi_t, [0.0] + [s * tau * 2.0 ** k for k in range(12) for s in (-1, 1)],
                            panel=nv / 4)
            for t, wt in zip(ts, tw):
                r, c0, C1 = _constraints(W, b, i, j, n, nv, basis, t)
                lo, hi = _interval(c0, C1[:, 0])
                lo, hi = max(lo, -12.0), min(hi, 12.0)
                if not hi > lo:
                    continue
                us, uw = _gauss(lo, hi, [], panel=0.25)
                x = r * n[None, :] + us[:, None] * basis[0][None, :]
                a, h = x @ W.T + b, x @ E.T + c
                p = np.exp((a - a.max(1, keepdims=True)) / tau)
                f0 = h[np.arange(len(us)), np.argmax(a, 1)]
                ft = (p * h).sum(1) / p.sum(1)
                total += wt * phi(r) / nv * float(uw @ (np.exp(-0.5 * us * us) / math.sqrt(2 * math.pi)
                                                       * (f0 - ft) ** 2))
    return total
