r"""Closed forms of the reduced two-expert Gaussian model of §6 (``softhard.dynamics.symmetry``): the moments
of the sign response, the split :math:`X = kT + R` along the teacher score, the drift and Hessian at the
balanced router, and Lemma 6.1 in matrix form. Derivations in ``docs/symmetry.md``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["sign_moments", "split_on_score", "drift_at_balance", "hessian_at_balance", "contrast_on_separator",
           "reduced_closed_form"]


def sign_moments(sigma_u: float) -> tuple[float, float]:
    r""":math:`(E|T|, E|T|^3) = (\sigma_u\sqrt{2/\pi},\ 2\sigma_u^3\sqrt{2/\pi})`, :math:`T \sim N(0, \sigma_u^2)`."""
    return sigma_u * math.sqrt(2.0 / math.pi), 2.0 * sigma_u ** 3 * math.sqrt(2.0 / math.pi)


def split_on_score(cov: torch.Tensor, u: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    r"""``(σ_u, k, C_R)`` with :math:`X = kT + R`, :math:`T = u\cdot X`, :math:`k = \Sigma u/\sigma_u^2`,
    :math:`C_R = \mathrm{Cov}\,R = \Sigma - \Sigma u u^\top\Sigma/\sigma_u^2` (R independent of T)."""
    su = cov @ u
    var = float(u @ su)
    return math.sqrt(var), su / var, cov - torch.outer(su, su) / var


def drift_at_balance(cov, u, c, w1, w2, tau) -> torch.Tensor:
    r""":math:`\nabla L(0) = -\frac{1}{4\tau}E[\mathrm{sign}(T)(c\cdot X)(\delta\cdot X)X]` in closed form:

    .. math:: E[\mathrm{sign}(T)(c\cdot X)(\delta\cdot X)X] = E|T|^3 (c\cdot k)(\delta\cdot k)k
              + E|T|\,[(c\cdot k)C_R\delta + (\delta\cdot k)C_R c + (c^\top C_R\delta)k].
    """
    s_u, k, CR = split_on_score(cov, u)
    m1, m3 = sign_moments(s_u)
    delta = w1 - w2
    ck, dk = float(c @ k), float(delta @ k)
    third = m3 * ck * dk * k + m1 * (ck * (CR @ delta) + dk * (CR @ c) + float(c @ CR @ delta) * k)
    return -third / (4.0 * tau)


def hessian_at_balance(cov, delta, tau) -> torch.Tensor:
    r""":math:`\nabla^2 L(0) = \frac{1}{8\tau^2}E[(\delta\cdot X)^2XX^\top]
    = \frac{1}{8\tau^2}[(\delta^\top\Sigma\delta)\Sigma + 2\Sigma\delta\delta^\top\Sigma]` (Isserlis)."""
    sd = cov @ delta
    return (float(delta @ sd) * cov + 2.0 * torch.outer(sd, sd)) / (8.0 * tau ** 2)


def contrast_on_separator(c, u) -> float:
    r"""The teacher contrast's projection on the separator, :math:`c_u = c\cdot u/|u|` (paper §6; its sign is the
    sign of M, (6.8)). ``c``, ``u`` of shape ``(d,)``; exactly 0 when :math:`|c\cdot u| \le 10^{-12}|c|\,|u|`
    (rounding), so that Prop. 6.3's hypothesis :math:`c_u \ne 0` is decided without noise."""
    cu, scale = float(c @ u), float(c.norm()) * float(u.norm())
    return 0.0 if abs(cu) <= 1e-12 * scale else cu / float(u.norm())


def reduced_closed_form(cov, u, c_u: float, m1: float, m3: float, tau: float) -> torch.Tensor:
    r"""Lemma 6.1 in matrix form: :math:`M = \frac{c_u}{2\tau}[E[T^3 r(T)]\,kk^\top + E[T r(T)]\,C_R]`."""
    _, k, CR = split_on_score(cov, u)
    return c_u * (m3 * torch.outer(k, k) + m1 * CR) / (2.0 * tau)
