r"""Per-layer routing metrics of one training step that the inspection code does not already compute:
:func:`load_summary`, expert loads relative to the balanced load, their maximum (``load_imbalance``), minimum
and normalised entropy, per expert only up to a cap. (The predicted bf16 flip rate is
:func:`softhard.inspect.price.flips.predicted_flip_rate`.)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["load_summary"]

def load_summary(counts, max_expert_keys: int) -> dict[str, float]:
    r"""Expert loads of one layer from ``counts (K,)``, the token–slot assignments per expert.

    With shares :math:`p_j = c_j/\sum_l c_l` and the balanced share :math:`1/K`, the relative loads are
    :math:`\ell_j = K p_j` (1 = balanced). Returns ``load_imbalance`` :math:`= \max_j \ell_j` (1 balanced,
    K when one expert takes everything), ``load_min`` :math:`= \min_j \ell_j`, ``load_entropy``
    :math:`= -\sum_j p_j \log p_j / \log K` (1 balanced), and ``expert{j}_load`` :math:`= \ell_j` for every
    expert when :math:`K \le` ``max_expert_keys`` (none otherwise). NaN for all when there are no assignments.
    """
    c = np.asarray(counts, dtype=np.float64)
    K, total = c.size, c.sum()
    if total <= 0:
        out = {"load_imbalance": math.nan, "load_min": math.nan, "load_entropy": math.nan}
        return out | ({f"expert{j}_load": math.nan for j in range(K)} if K <= max_expert_keys else {})
    p = c / total
    nz = p[p > 0]
    out = {"load_imbalance": float(K * p.max()), "load_min": float(K * p.min()),
           "load_entropy": float(-(nz * np.log(nz)).sum() / math.log(K))}
    if K <= max_expert_keys:
        out |= {f"expert{j}_load": float(K * p[j]) for j in range(K)}
    return out
