r"""Fits of the margin tail :math:`\mu(\Delta \le t) \approx C t^\alpha` (Assumption 4.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._validate import as_tensor, check_finite, check_float, fail

__all__ = ["MarginTail", "fit_margin_tail"]


@dataclass(frozen=True)
class MarginTail:
    r"""Fitted margin tail :math:`\mu(\Delta \le t) \approx C t^\alpha` on :math:`(0, t_{max}]` (Assumption 4.2).

    ``C``, ``alpha`` with standard errors ``C_stderr``, ``alpha_stderr``; ``n`` margins in all, ``n_tail``
    of them in :math:`(0, t_{max}]`; ``n_zero`` exact ties dropped (``zeros="drop"``).
    """

    C: float
    alpha: float
    C_stderr: float
    alpha_stderr: float
    t_max: float
    n: int
    n_tail: int
    n_zero: int = 0

    def __call__(self, t):
        """The fitted profile :math:`C t^\\alpha`."""
        return self.C * np.asarray(t, dtype=np.float64) ** self.alpha


def fit_margin_tail(margins, t_max: float | None = None, tail_fraction: float = 0.05,
                    zeros: str = "raise", where: str = "fit_margin_tail") -> MarginTail:
    r"""Fit :math:`\mu(\Delta \le t) \approx C t^\alpha` on :math:`(0, t_{max}]` from a sample of margins.

    If the power law holds on :math:`(0, t_{max}]`, the k margins in that range are, given k, i.i.d. with
    CDF :math:`(t/t_{max})^\alpha`, i.e. :math:`\log(t_{max}/\Delta_i) \sim \mathrm{Exp}(\alpha)`. Hence
    (Hill-type estimator)

    .. math:: \hat\alpha = \frac{k - 1}{\sum_{i:\,\Delta_i \le t_{max}} \log(t_{max}/\Delta_i)}, \quad
              \mathrm{se}(\hat\alpha) = \hat\alpha/\sqrt{k}, \qquad
              \hat C = \frac{k/n}{t_{max}^{\hat\alpha}}, \quad
              \mathrm{se}(\log\hat C)^2 = \frac{1 - k/n}{k} + (\log t_{max})^2\,\mathrm{se}(\hat\alpha)^2

    (:math:`\hat\alpha` unbiased; the count k/n and the conditional law are asymptotically independent).

    Args:
        margins: sample of margins Δ ≥ 0, shape ``(N,)``.
        t_max: upper end of the fit; ``None``: the ``tail_fraction`` quantile of the margins.
        zeros: exact ties Δ = 0 make :math:`\mu(\Delta \le t)` stay positive as t → 0, which no
            :math:`Ct^\alpha` with α > 0 fits: ``"raise"`` (default) or ``"drop"`` them (counted in
            ``n_zero``).
        where: the public function the user called (named in errors).

    Returns:
        :class:`MarginTail`.
    """
    m = as_tensor(margins, "margins", where)
    if m.ndim != 1 or m.shape[0] < 2:
        fail("margins", where, "an array of shape (N,) with N >= 2", f"shape {tuple(m.shape)}")
    check_finite(m, "margins", where)
    m = m.cpu().numpy()
    if (m < 0).any():
        fail("margins", where, "non-negative (margins Δ >= 0)", f"minimum {m.min():.3g}")
    if zeros not in ("raise", "drop"):
        fail("zeros", where, "one of ('raise', 'drop')", zeros)
    n_zero = int((m == 0).sum())
    if n_zero and zeros == "raise":
        fail("margins", where, "positive (exact ties Δ = 0 admit no power-law tail; pass zeros='drop')",
             f"{n_zero} zeros")
    n, pos = m.shape[0], m[m > 0]
    given = t_max is not None
    if t_max is None:
        tail_fraction = check_float(tail_fraction, "tail_fraction", where, 0.0, 1.0, high_open=False)
        t_max = float(np.quantile(pos, tail_fraction)) if pos.size else 0.0
    else:
        t_max = check_float(t_max, "t_max", where, 0.0, math.inf)
    tail = pos[pos <= t_max]
    k = tail.size
    if k < 3:
        fail("t_max" if given else "tail_fraction", where, "large enough to hold at least 3 positive margins",
             t_max if given else tail_fraction)
    logs = float(np.log(t_max / tail).sum())
    if not logs > 0:
        fail("margins", where, "a sample whose margins below t_max are not all equal to it (no tail to fit)",
             f"{k} margins equal to {t_max:.6g}")
    alpha = (k - 1) / logs
    a_se = alpha / math.sqrt(k)
    C = (k / n) * t_max ** -alpha
    C_se = C * math.sqrt((1 - k / n) / k + (math.log(t_max) * a_se) ** 2)
    return MarginTail(C, alpha, C_se, a_se, t_max, n, k, n_zero)
