r"""The estimators behind a price: margin bins, contrast profiles, cross-fitting folds, per-sequence sums.

A price of a router change is assembled from two things measured on a model: every router row's *margin*
(one clean pass) and, on a sample of rows, the *contrast profile* :math:`F_s(u) = \varphi_s(u) -
\varphi_s(\infty)` — how much the loss of the row's sequence changes when that row alone is moved to the
scaled margin :math:`u` (``docs/hardening.md`` §3). This module holds the pieces that do not run the model:

- :func:`profile_basis`: the interpolation of a profile known at the quadrature nodes :math:`u_q` to any
  :math:`u`, as :math:`(1 - p)\,q(p)`, :math:`p = \sigma(u)`, ``q`` the polynomial through
  :math:`F(u_q)/(1 - p_q)` (exact at the nodes, 0 at :math:`u = \infty`);
- :func:`margin_bins`: the margin bins of the whole-curve prediction, edges at multiples of the bandwidth;
- :func:`sample_rows`: the stratified sample of rows that get a contrast (all bins, each with its inclusion
  probability, so every bin mean is a Horvitz–Thompson ratio);
- :func:`sequence_folds`: the two cross-fitting folds, by sequence;
- :func:`segment_sums`: per-sequence sums of per-row or per-position terms (rows of one sequence are
  contiguous).

The standard errors come from :func:`softhard.estimators.jackknife.jackknife` over sequences.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BIN_EDGES", "BANDWIDTHS", "profile_basis", "margin_bins", "sample_rows", "sequence_folds",
           "segment_sums", "crossfit_stats"]

BIN_EDGES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # × h: bins [0, h/4), [h/4, h/2), ..., [16h, inf)
BANDWIDTHS = (1.0, 0.5, 0.25)  # × h: the bandwidths G1 is estimated at (the first is the rule's)


def profile_basis(u: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    r"""Interpolation weights ``(Q, n)``: a profile with values :math:`F_q` at the ``nodes`` :math:`u_q`
    ``(Q,)`` is :math:`F(u) \approx \sum_q F_q\,b_q(u)` at ``u (n,)`` (``inf`` allowed: 0), with
    :math:`b_q(u) = \frac{1 - p}{1 - p_q}\prod_{r \ne q}\frac{p - p_r}{p_q - p_r}`, :math:`p = \sigma(u)`."""
    u = np.asarray(u, dtype=np.float64)
    with np.errstate(over="ignore"):
        p = 1.0 / (1.0 + np.exp(-u))
    pq = 1.0 / (1.0 + np.exp(-np.asarray(nodes, dtype=np.float64)))
    Q = pq.size
    out = np.empty((Q, u.size))
    for q in range(Q):
        lag = np.ones(u.size)
        for r in range(Q):
            if r != q:
                lag *= (p - pq[r]) / (pq[q] - pq[r])
        out[q] = lag * (1 - p) / (1 - pq[q])
    return out


def margin_bins(d: np.ndarray, h: float) -> np.ndarray:
    """Bin index ``(n,)`` of margins ``d`` for edges :data:`BIN_EDGES` × ``h``; ``-1`` for infinite margins."""
    edges = np.asarray(BIN_EDGES) * h
    b = np.searchsorted(edges, d, side="right")
    return np.where(np.isfinite(d), b, -1)


def sample_rows(d: np.ndarray, h: float, near_cap: int, bin_cap: int, rng: np.random.Generator):
    """The rows that get a contrast: ``(take (n,) bool, prob (n,))``. Rows with ``d <= h`` (the bandwidth of
    the first-order constant) are kept with probability ``min(1, near_cap / #)``; rows of each bin beyond
    ``h`` with ``min(1, bin_cap / #bin)``; infinite margins never (their contrast is 0)."""
    n = d.size
    prob = np.zeros(n)
    finite = np.isfinite(d)
    near = finite & (d <= h)
    m = int(near.sum())
    prob[near] = min(1.0, near_cap / m) if m else 0.0
    bins = margin_bins(d, h)
    for b in range(int(np.searchsorted(BIN_EDGES, 1.0, side="right")), len(BIN_EDGES) + 1):
        sel = finite & ~near & (bins == b)
        mb = int(sel.sum())
        if mb:
            prob[sel] = min(1.0, bin_cap / mb)
    take = rng.random(n) < prob
    return take, prob


def sequence_folds(n_seq: int, seed: int) -> np.ndarray:
    """Fold ``0`` or ``1`` of each of ``n_seq`` sequences ``(n_seq,)``: a seeded permutation split in halves."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 29]))
    fold = np.zeros(n_seq, dtype=np.int64)
    fold[rng.permutation(n_seq)[: n_seq // 2]] = 1
    return fold


def segment_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of ``values (n, ...)`` over the contiguous segments starting at ``starts (S,)`` (``(S, ...)``)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] == 0:
        return np.zeros((len(starts),) + values.shape[1:])
    return np.add.reduceat(values, starts, axis=0)


def crossfit_stats(stats: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Per-sequence sums ``(n, d)`` placed in the columns of their fold: ``(n, 2d)``, fold 0 in ``[:d]``."""
    n, d = stats.shape
    out = np.zeros((n, 2 * d))
    out[fold == 0, :d] = stats[fold == 0]
    out[fold == 1, d:] = stats[fold == 1]
    return out
