"""Plain-NumPy baselines, written the obvious way: sample x, compute logits (and expert outputs), sort,
count or average the per-sample terms. Chunks of 65 536 samples (memory stays flat), one NumPy generator,
float64. Each function returns ``(value, stderr)`` of the plain Monte Carlo mean over ``n`` samples.

Used by ``benchmarks/run.py``; not part of the package.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 16


def _mean_stderr(s1: np.ndarray, s2: np.ndarray, n: int):
    mean = s1 / n
    var = (s2 - n * mean ** 2) / (n - 1)
    return mean, np.sqrt(np.maximum(var, 0.0) / n)


def _inputs(mean: np.ndarray, chol: np.ndarray, n: int, seed: int):
    """Chunks of x ~ N(mean, chol cholᵀ)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n:
        m = min(CHUNK, n - done)
        yield mean + rng.standard_normal((m, mean.shape[0])) @ chol.T
        done += m


def _average(terms, mean, chol, n, seed):
    s1 = s2 = 0.0
    for x in _inputs(mean, chol, n, seed):
        t = terms(x)
        s1 = s1 + t.sum(0)
        s2 = s2 + (t * t).sum(0)
    return _mean_stderr(s1, s2, n)


def risk_gap(Wr, br, We, be, mean, chol, tau: float, n: int, seed: int = 0):
    """Soft–hard gap :math:`E[(f^* - f_\\tau)^2 - (f^* - f_0)^2]`, teacher = the hard model itself (f* = f_0)."""
    def terms(x):
        a = x @ Wr.T + br
        h = x @ We.T + be
        z = (a - a.max(1, keepdims=True)) / tau
        p = np.exp(z)
        soft = (p * h).sum(1) / p.sum(1)
        hard = h[np.arange(len(h)), a.argmax(1)]
        return (hard - soft) ** 2

    return _average(terms, mean, chol, n, seed)


def top2_mass(W, b, mean, chol, w: float, n: int, seed: int = 0):
    """β(w) = P(a_(1) − a_(2) ≤ w) for logits a = W x + b: sort, count."""
    def terms(x):
        s = np.sort(x @ W.T + b, axis=1)
        return (s[:, -1] - s[:, -2] <= w).astype(float)

    return _average(terms, mean, chol, n, seed)


def mlp_logits(x, layers):
    """A tanh MLP given as ``[(W, b), ...]`` (the last layer linear)."""
    for W, b in layers[:-1]:
        x = np.tanh(x @ W.T + b)
    W, b = layers[-1]
    return x @ W.T + b


def mlp_top2_mass(layers, d: int, w: float, n: int, seed: int = 0):
    """β(w) of an MLP router under N(0, I_d): sort, count."""
    def terms(x):
        s = np.sort(mlp_logits(x, layers), axis=1)
        return (s[:, -1] - s[:, -2] <= w).astype(float)

    return _average(terms, np.zeros(d), np.eye(d), n, seed)


def mlp_coarea(layers, d: int, pair, h: float, n: int, seed: int = 0):
    """ψ_ij(0), the density of g = a_i − a_j at 0, by the Epanechnikov kernel of bandwidth h."""
    i, j = pair

    def terms(x):
        a = mlp_logits(x, layers)
        u = (a[:, i] - a[:, j]) / h
        return np.where(np.abs(u) <= 1, 0.75 * (1 - u * u), 0.0) / h

    return _average(terms, np.zeros(d), np.eye(d), n, seed)
