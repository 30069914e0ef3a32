r"""Per-layer routing metrics of one training step that the inspection code does not already compute.

- :func:`load_summary`: expert loads relative to the balanced load, their maximum (``load_imbalance``),
  minimum and normalised entropy, per expert only up to a cap.
- :func:`flip_probability_bf16`: **PLACEHOLDER** for the bf16 flip predictor of ``softhard.inspect.price``
  (branch ``i20-flips``). One formula, in this one place, to be replaced by theirs when it lands.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["BF16_UNIT_ROUNDOFF", "flip_probability_bf16", "load_summary"]

BF16_UNIT_ROUNDOFF = 2.0 ** -8  # bfloat16 keeps 8 significant bits: |fl(x) - x| <= 2^-8 |x|


def flip_probability_bf16(rule, logits: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    r"""PLACEHOLDER (until ``i20-flips``' predictor lands): per token, the probability that the selected set
    changes when the scores the margin is measured on are rounded to bfloat16.

    With :math:`v` the margin's score vector (``rule.margin_scores``), :math:`v_{(k)}, v_{(k+1)}` its k-th and
    (k+1)-th largest entries, :math:`m` the decision margin and :math:`u = 2^{-8}` the unit roundoff of bf16,
    each rounded score is :math:`v(1+\varepsilon)` with :math:`\varepsilon` uniform on :math:`[-u, u]`
    (variance :math:`u^2/3`), so the error of :math:`v_{(k)} - v_{(k+1)}` has variance
    :math:`\sigma^2 = \tfrac{u^2}{3}(v_{(k)}^2 + v_{(k+1)}^2)`, and in a normal approximation

    .. math:: p = \Phi(-m/\sigma) \quad (0 \text{ where } \sigma = 0 \text{ or } m = \infty).

    It rounds the router's *output* only, not the matmul that produces it, and uses the top-k boundary also
    for group-limited rules. Shapes: ``logits (N, K)``, ``margin (N,)`` (computed when ``None``); returns
    ``(N,)`` float64.
    """
    m = rule.margin(logits) if margin is None else margin
    v = rule.margin_scores(logits)
    k = rule.k
    if rule.hash_table is not None or k >= v.shape[-1]:
        return torch.zeros_like(m)
    top = torch.topk(v, k + 1, dim=-1).values
    sigma = BF16_UNIT_ROUNDOFF / math.sqrt(3.0) * torch.hypot(top[:, k - 1], top[:, k])
    p = torch.special.ndtr(-m / sigma)
    return torch.where(sigma > 0, p, torch.zeros_like(p)).nan_to_num(0.0)


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
