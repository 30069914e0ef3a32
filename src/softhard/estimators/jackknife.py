r"""Delete-one jackknife over independent units for smooth functions of sums.

Many estimates on a real model are smooth functions of sums over *units* that are independent of each other
while the terms inside one unit are not (the tokens of one sequence: a routing change moves every later
position's loss): a mean per token (a ratio of two sums), a kernel-weighted mean contrast (a ratio), a
cross-fitted prediction (a product of sums over two disjoint folds), a measured-minus-predicted difference
that shares tokens with its prediction. The delete-one jackknife gives all their standard errors, with every
correlation between them (paired errors) included, from the per-unit sums alone:

.. math:: \hat\theta = f\Big(\sum_j s_j\Big),\qquad \hat\theta_{(j)} = f\Big(\sum_i s_i - s_j\Big),\qquad
          \mathrm{se}^2 = \frac{n-1}{n}\sum_{j=1}^n\big(\hat\theta_{(j)} - \bar\theta_{(\cdot)}\big)^2,

``s_j (d,)`` the sums of unit ``j``. For a plain mean (``f(S) = S_1/n`` with the unit count fixed) it is the
usual :math:`s/\sqrt n`; for a smooth ``f`` it is the delta-method standard error to first order (Efron & Stein
1981). :func:`sequence_mean` and :func:`paired_ratio` are the same errors in closed form for a per-token mean and
a ratio of two per-token sums.
"""

from __future__ import annotations

import math

import numpy as np

from .._validate import fail
from .reducer import Estimate

__all__ = ["jackknife", "sequence_mean", "paired_ratio"]


def jackknife(stats, fn, *, chunk: int = 256) -> Estimate:
    r"""The estimate :math:`f(\sum_j s_j)` and its delete-one jackknife standard error (module docstring).

    Args:
        stats: per-unit sums ``(n, d)``, ``n >= 2`` units.
        fn: ``totals (m, d) -> values (m, p)`` (or ``(m,)``), evaluated row by row on the full totals and on
            the ``n`` totals with one unit left out; NaN where undefined.
        chunk: units per evaluation of ``fn`` (memory).

    Returns:
        :class:`Estimate` with ``value (p,)`` (or a float), ``stderr`` of the same shape, ``n`` units,
        ``method="jackknife"``, ``dof = n - 1``.
    """
    s = np.asarray(stats, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 2:
        fail("stats", "jackknife", "per-unit sums of shape (n, d) with n >= 2", f"shape {s.shape}")
    n = s.shape[0]
    total = s.sum(0)
    full = np.asarray(fn(total[None]), dtype=np.float64)
    reps = np.concatenate([np.asarray(fn(total[None] - s[a:a + chunk]), dtype=np.float64)
                           for a in range(0, n, chunk)])
    mean = reps.mean(0)
    se = np.sqrt((n - 1) / n * ((reps - mean) ** 2).sum(0))
    value = full[0]
    out = lambda a: float(a) if np.ndim(a) == 0 else a  # noqa: E731
    return Estimate(out(value), out(se), n, "jackknife", dof=n - 1)


# The same units in closed form for a mean and a ratio of per-token values: the delta method, which the
# jackknife equals to first order, without the n refits.


def sequence_mean(values: np.ndarray, units: np.ndarray) -> Estimate:
    r"""Mean of per-token ``values (N,)`` with the standard error over units (sequences) ``units (N,)``: the
    ratio estimator :math:`\bar v = \sum_u V_u / \sum_u n_u` with
    :math:`\mathrm{se}^2 = \frac{U}{U-1}\sum_u (V_u - \bar v n_u)^2 / (\sum_u n_u)^2` (:math:`V_u` the unit
    sums, :math:`n_u` the unit sizes, :math:`U` the units)."""
    v = np.asarray(values, dtype=np.float64)
    _, u = np.unique(np.asarray(units), return_inverse=True)
    if v.size == 0:
        return Estimate(math.nan, math.nan, 0, "sample")
    V = np.bincount(u, weights=v)
    n = np.bincount(u).astype(np.float64)
    mean = V.sum() / n.sum()
    U = V.size
    se = math.sqrt(U / (U - 1) * float(((V - mean * n) ** 2).sum())) / n.sum() if U > 1 else math.nan
    return Estimate(float(mean), se, int(v.size), "sample", info={"units": int(U)}, dof=max(U - 1, 1))


def paired_ratio(num: np.ndarray, den: np.ndarray, units: np.ndarray) -> tuple[float, float]:
    r"""``(R, se)``: :math:`R = \sum_t x_t / \sum_t y_t` of paired per-token ``num`` and ``den`` with the
    per-unit delta-method error :math:`\mathrm{se}^2 = \frac{U}{U-1}\sum_u (X_u - R Y_u)^2/(\sum_u Y_u)^2`
    (the correlation of the two within a sequence is kept). ``(nan, nan)`` when the denominator is 0."""
    x, y = np.asarray(num, np.float64), np.asarray(den, np.float64)
    _, u = np.unique(np.asarray(units), return_inverse=True)
    X, Y = np.bincount(u, weights=x), np.bincount(u, weights=y)
    if Y.sum() <= 0:
        return math.nan, math.nan
    R = X.sum() / Y.sum()
    U = X.size
    se = math.sqrt(U / (U - 1) * float(((X - R * Y) ** 2).sum())) / Y.sum() if U > 1 else math.nan
    return float(R), se
