r"""Gates and margins (paper §2: (2.3), (2.6)–(2.12), (2.15)–(2.16), Lemma 4.1).

All functions take logits of shape ``(..., K)`` with ``K >= 2`` and work on the last axis; dtype
and device follow the input (float64 for non-tensors). Gates and bounds are computed in float64 whatever
the input's dtype and returned in it, so a float32 (or float16) input never gives NaN: τ below the
dtype's smallest number and logits near its largest are fine (τ = 1e-300 with float32 logits is the hard
gate, logits ±3e38 at τ = 1e39 a soft one). Margins are differences of the logits in their own dtype,
correctly rounded (``inf`` when a float32 difference exceeds float32's range).
"""

from __future__ import annotations

import math

import torch

from .._validate import as_tensor, check_float, check_int, check_logits, fail

__all__ = [
    "top_two",
    "softmax_gate",
    "hard_gate",
    "hard_winner",
    "top_two_margin",
    "pairwise_separation",
    "topk_margin",
    "tail_sum",
    "concentration_bound",
    "tolerance_width",
    "binary_entropy",
    "gate_entropy",
]


def _tau(tau, where: str) -> float:
    return check_float(tau, "tau", where, 0.0, math.inf)


def _wide(a: torch.Tensor) -> torch.Tensor:
    """``a`` in float64, where every τ in (0, inf) and every float32 logit divides without overflow to NaN."""
    return a if a.dtype == torch.float64 else a.to(torch.float64)


def _gate(a: torch.Tensor, t: float) -> torch.Tensor:
    """Softmax of ``a / t`` in float64 (trusted logits ``(..., K)``, τ > 0)."""
    a = _wide(a)
    return torch.softmax((a - a.max(dim=-1, keepdim=True).values) / t, dim=-1)


def softmax_gate(logits, tau: float = 1.0) -> torch.Tensor:
    r"""Softmax gate at temperature τ (2.3).

    .. math:: \pi_k^\tau(x) = \frac{\exp(a_k/\tau)}{\sum_j \exp(a_j/\tau)}
              = \frac{\exp((a_k - a_{(1)})/\tau)}{\sum_j \exp((a_j - a_{(1)})/\tau)}

    The max logit is subtracted before dividing by τ, in float64, so the gate is finite for every τ in
    (0, inf) and all finite logits (float32 inputs included); as τ → 0 it equals :func:`hard_gate` except on
    exact ties, where the tied experts share the mass equally.

    Args:
        logits: router logits ``a``, shape ``(..., K)``.
        tau: temperature τ > 0.

    Returns:
        gate probabilities, shape ``(..., K)``, summing to 1 on the last axis.
    """
    a = check_logits(logits, "softmax_gate")
    return _gate(a, _tau(tau, "softmax_gate")).to(a.dtype)


def hard_winner(logits) -> torch.Tensor:
    r"""Hard winner :math:`k^*(x) = \min \arg\max_k a_k(x)` (2.9), shape ``(...)``, int64.

    The lowest index wins a tie.
    """
    a = check_logits(logits, "hard_winner")
    return torch.argmax(a, dim=-1)  # torch returns the first maximal index


def hard_gate(logits) -> torch.Tensor:
    r"""Hard top-1 gate: one-hot of :math:`k^*(x)` (2.9), shape ``(..., K)``, dtype of the logits."""
    a = check_logits(logits, "hard_gate")
    return torch.nn.functional.one_hot(torch.argmax(a, dim=-1), a.shape[-1]).to(a.dtype)


def top_two(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(Δ, first, second)`` of trusted logits ``a (..., K)``: the top-two margin
    :math:`\Delta = a_{(1)} - a_{(2)}` (2.6) and the indices of the two leading experts, each of shape ``(...)``.

    The one definition of the margin inside softhard (no validation: for logits a model produced);
    :func:`top_two_margin` is the validated public door.
    """
    v, idx = torch.topk(a, 2, dim=-1)
    return v[..., 0] - v[..., 1], idx[..., 0], idx[..., 1]


def top_two_margin(logits) -> torch.Tensor:
    r"""Top-two margin :math:`\Delta(x) = a_{(1)}(x) - a_{(2)}(x) \ge 0` (2.6), shape ``(...)``."""
    return top_two(check_logits(logits, "top_two_margin"))[0]


def topk_margin(logits, k: int = 1) -> torch.Tensor:
    r"""Top-k margin :math:`a_{(k)} - a_{(k+1)}` for ``1 <= k <= K-1`` [beyond], shape ``(...)``.

    It is the distance to a change of the *set* of top-k experts; ``k = 1`` gives Δ (2.6).
    """
    a = check_logits(logits, "topk_margin")
    k = check_int(k, "k", "topk_margin", 1, a.shape[-1] - 1)
    top = torch.topk(a, k + 1, dim=-1).values
    return top[..., k - 1] - top[..., k]


def pairwise_separation(logits) -> torch.Tensor:
    r"""Smallest pairwise separation :math:`\delta(x) = \min_{i<j} |a_i - a_j|` (2.12), shape ``(...)``.

    Computed as the smallest gap between consecutive sorted logits; :math:`\delta \le \Delta`.
    """
    a = check_logits(logits, "pairwise_separation")
    s = torch.sort(a, dim=-1).values
    return (s[..., 1:] - s[..., :-1]).min(dim=-1).values


def tail_sum(logits, tau: float) -> torch.Tensor:
    r"""Lemma 4.1 middle term :math:`\sum_{j\ge2} e^{-(a_{(1)}-a_{(j)})/\tau}`, shape ``(...)``.

    Lemma 4.1: :math:`1 - \pi^\tau_{(1)} \le \sum_{j\ge 2} e^{-(a_{(1)}-a_{(j)})/\tau} \le (K-1)e^{-\Delta/\tau}`.
    """
    a = check_logits(logits, "tail_sum")
    t = _tau(tau, "tail_sum")
    w = _wide(a)
    top = w.max(dim=-1, keepdim=True)
    e = torch.exp((w - top.values) / t)
    # drop the winner's term exp(0) = 1 instead of subtracting 1, which would cancel a tiny tail to 0
    return e.scatter(-1, top.indices, 0.0).sum(dim=-1).to(a.dtype)


def concentration_bound(logits, tau: float) -> torch.Tensor:
    r"""Softmax concentration bound (2.16): :math:`(K-1)\,e^{-\Delta(x)/\tau}`, shape ``(...)``.

    Bounds :math:`1 - \pi^\tau_{k^*}(x)` from above.
    """
    a = check_logits(logits, "concentration_bound")
    t = _tau(tau, "concentration_bound")
    return ((a.shape[-1] - 1) * torch.exp(-top_two(_wide(a))[0] / t)).to(a.dtype)


def tolerance_width(tau, eps: float) -> torch.Tensor | float:
    r"""Width selected by a temperature and a tolerance (2.15): :math:`w_{\tau,\varepsilon} = \tau\log\frac{1-\varepsilon}{\varepsilon}`.

    In the binary case :math:`\varepsilon \le \pi_1^\tau \le 1-\varepsilon \iff |a_1-a_2| \le w_{\tau,\varepsilon}`.
    ``tau`` may be a float (returns a float) or a 1-d grid (returns a tensor of the same shape).
    The paper's diagnostics use ``eps = 1/(1+e^2)``, i.e. ``w = 2τ``.
    """
    e = check_float(eps, "eps", "tolerance_width", 0.0, 0.5)
    factor = math.log((1.0 - e) / e)
    if isinstance(tau, (int, float)):  # bools are refused by _tau
        return _tau(tau, "tolerance_width") * factor
    t = as_tensor(tau, "tau", "tolerance_width")
    if t.ndim > 1 or t.numel() == 0 or not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        fail("tau", "tolerance_width", "a float or a non-empty 1-d array of floats in (0, inf)", t)
    return (_wide(t) * factor).to(t.dtype)


def binary_entropy(p) -> torch.Tensor:
    r"""Binary entropy in nats :math:`H(p) = -p\log p - (1-p)\log(1-p)` with :math:`0\log 0 = 0`.

    ``p``: probabilities in [0, 1], any shape; returns the same shape.
    """
    p = as_tensor(p, "p", "binary_entropy")
    if not bool(((p >= 0) & (p <= 1)).all()):  # also catches NaN
        fail("p", "binary_entropy", "an array of probabilities in [0, 1]", p)
    w = _wide(p)
    return (-(torch.special.xlogy(w, w) + torch.special.xlogy(1.0 - w, 1.0 - w))).to(p.dtype)


def gate_entropy(logits, tau: float) -> torch.Tensor:
    r"""Routing entropy :math:`-\sum_k \pi_k^\tau \log \pi_k^\tau` in nats, shape ``(...)``."""
    a = check_logits(logits, "gate_entropy")
    p = _gate(a, _tau(tau, "gate_entropy"))
    return (-torch.special.xlogy(p, p).sum(dim=-1)).to(a.dtype)
