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
1981).
"""

from __future__ import annotations

import numpy as np

from .._validate import fail
from .reducer import Estimate

__all__ = ["jackknife"]


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
