r"""Symmetry breaking at the balanced router (paper §6; paper.md §5) and router-only training (§7.3).

The two-expert Gaussian model: :math:`X \sim N(0, \Sigma)` on ℝ^d, teacher separator ``u``, noiseless
teacher :math:`Y = \beta_0\cdot X + \tfrac12\,\mathrm{sign}(u\cdot X)\,c\cdot X` (experts
:math:`h^*_\pm(x) = (\beta_0 \pm c/2)\cdot x` on the cells :math:`\{u\cdot x > 0\}`, :math:`\{u\cdot x \le 0\}`),
student experts :math:`h_k(x) = w_k\cdot x` and a router θ with antisymmetric scores
:math:`a_{1,2} = \pm\theta\cdot x/2`, so :math:`\pi_1 = \sigma(\theta\cdot x/\tau)` and
:math:`f_\theta = \pi_1 h_1 + (1-\pi_1) h_2`.

What is here (derivations: ``docs/symmetry.md``):

- :class:`TwoExpertGaussian`: risk :math:`L(\theta)`, gradient (6.1)–(6.2) and Hessian by Monte Carlo
  (the one reducer, :func:`softhard.estimators.reducer.monte_carlo`) and exactly (:meth:`TwoExpertGaussian.exact`:
  Gaussian conditioning on the plane of (θ·X, u·X) and two-dimensional Gauss–Legendre quadrature);
  the exact linearisation at θ = 0 (:meth:`TwoExpertGaussian.linearisation`, closed form).
- the paper's reduced operator M (6.6), scaled by the teacher contrast's projection on the separator
  :math:`c_u = c\cdot u/|u|`, Lemmas 6.1/6.2 (:func:`reduced_operator`, Monte Carlo check
  :func:`reduced_operator_mc`), its spectrum (Prop. 6.3 — hypothesis :math:`c_u \ne 0` —,
  :func:`operator_spectrum`), the linearised iteration (6.7) (:func:`linear_iteration`) and the alignment
  rate (6.9)–(6.12) (:func:`alignment_rate`).
- full-batch router-only gradient descent on one fixed sample (:func:`train_router`, the §7.3 diagnostic).

Its Gaussian-moment closed forms live in :mod:`softhard.closed` (``split_on_score``, ``sign_moments``,
``drift_at_balance``, ``hessian_at_balance``, ``reduced_closed_form``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch

from .._validate import DTYPE, as_tensor, check_finite, check_float, check_grid, check_inputs, check_int, fail
from ..closed.balance import (
    contrast_on_separator,
    drift_at_balance,
    hessian_at_balance,
    reduced_closed_form,
    sign_moments,
)
from ..estimators.reducer import Estimate, monte_carlo
from ..model.laws import Gaussian

__all__ = ["TwoExpertGaussian", "ExactValues", "Linearisation", "Spectrum", "RouterTraining", "reduced_operator",
           "reduced_operator_mc", "operator_spectrum", "linear_iteration", "alignment_rate", "alignment",
           "alignment_ratio", "train_router"]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _vector(v, param: str, where: str, d: int | None = None) -> torch.Tensor:
    t = as_tensor(v, param, where, dtype=DTYPE)
    if t.ndim != 1 or (d is not None and t.shape[0] != d):
        fail(param, where, f"a 1-d array of shape ({d if d is not None else 'd'},)", f"shape {tuple(t.shape)}")
    return check_finite(t, param, where)


def _tau(tau, where: str) -> float:
    return check_float(tau, "tau", where, 0.0, math.inf)


def _rescaled(th: torch.Tensor) -> torch.Tensor:
    """``th`` divided by its largest entry (per row), so that norms neither underflow nor overflow."""
    top = th.abs().amax(dim=-1, keepdim=True)
    return th / torch.where(top > 0, top, torch.ones_like(top))


def alignment(theta, u) -> torch.Tensor:
    r"""Alignment :math:`|\cos(\theta, u)| = |\theta\cdot u| / (|\theta|\,|u|)`.

    ``theta (..., d)``, ``u (d,)`` -> ``(...)``; 0 where θ = 0. The alignment deficit of Figure 3 is
    :math:`1 - |\cos(\theta_t, u)|`.
    """
    th = _rescaled(as_tensor(theta, "theta", "alignment"))
    uu = as_tensor(u, "u", "alignment", dtype=th.dtype)
    norm = th.norm(dim=-1) * uu.norm()
    cos = (th @ uu).abs() / norm.clamp_min(torch.finfo(th.dtype).tiny)
    return torch.where(norm > 0, cos, torch.zeros_like(norm))


def alignment_ratio(theta, direction) -> torch.Tensor:
    r"""Non-leading/leading ratio :math:`|\theta - (\theta\cdot e)e| / |\theta\cdot e|` (6.10), ``(..., d) -> (...)``.

    ``direction`` ``e`` has shape ``(d,)`` (normalised here); the ratio is :math:`\tan\angle(\theta, e)`.
    """
    th = _rescaled(as_tensor(theta, "theta", "alignment_ratio"))
    e = as_tensor(direction, "direction", "alignment_ratio", dtype=th.dtype)
    e = e / e.norm()
    along = th @ e
    return (th - along[..., None] * e).norm(dim=-1) / along.abs()


# ----------------------------------------------------------------------------------------------------
# quadrature
# ----------------------------------------------------------------------------------------------------

_L = 8.5  # standard-normal truncation: φ(8.5) ≈ 1e-16
_NODES = {}


def _legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n not in _NODES:
        x, w = np.polynomial.legendre.leggauss(n)
        _NODES[n] = (torch.as_tensor(x, dtype=DTYPE), torch.as_tensor(w, dtype=DTYPE))
    return _NODES[n]


def _panels(breaks: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Legendre nodes/weights on consecutive panels ``breaks (..., P+1)`` -> ``(..., P·n)`` each."""
    x, w = _legendre(n)
    a, b = breaks[..., :-1, None], breaks[..., 1:, None]
    half = (b - a) / 2
    nodes, weights = (a + b) / 2 + half * x, half * w
    return nodes.flatten(-2), weights.flatten(-2)


def _phi(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _odd_moments(r: Callable, sigma: float, n: int = 24) -> tuple[float, float]:
    r""":math:`(E[T r(T)], E[T^3 r(T)])`, :math:`T\sim N(0,\sigma^2)`, by Gauss–Legendre on geometric panels of
    :math:`(0, 8.5\sigma]` (the integrands are even: :math:`E[T^k r(T)] = 2\int_0^\infty t^k r(t)\varphi_\sigma(t)dt`);
    the panels refine towards 0 so that responses with a sharp step at 0 (``tanh(t/τ)``, small τ) are resolved."""
    breaks = torch.tensor([0.0] + [10.0 ** e for e in range(-8, 0)] + [0.25, 0.5, 1, 1.5, 2, 3, 4, 5.5, 7, _L],
                          dtype=DTYPE)
    z, w = _panels(breaks, n)
    t = sigma * z
    rt = _response_values(r, t)
    dens = 2.0 * w * _phi(z)
    return float((dens * t * rt).sum()), float((dens * t ** 3 * rt).sum())


class ExactValues(NamedTuple):
    """Exact risk (float), gradient ``(d,)`` and Hessian ``(d, d)`` of the two-expert model at one θ."""

    risk: float
    gradient: torch.Tensor
    hessian: torch.Tensor


class Linearisation(NamedTuple):
    r"""Exact linearisation of the risk at the balanced router θ = 0 (experts fixed).

    ``drift`` :math:`\nabla L(0)` ``(d,)``; ``hessian`` :math:`\nabla^2 L(0)` ``(d, d)``; its ``eigenvalues``
    ``(d,)`` (descending) and ``eigenvectors`` ``(d, d)`` (columns); ``alignment`` ``(d,)`` = :math:`|e_i\cdot u|/|u|`;
    ``drift_alignment`` = :math:`|\cos(\nabla L(0), u)|`; ``u`` the separator.
    """

    drift: torch.Tensor
    hessian: torch.Tensor
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    alignment: torch.Tensor
    drift_alignment: float
    u: torch.Tensor

    def jacobian(self, eta: float) -> torch.Tensor:
        r"""One-step Jacobian of gradient descent at θ = 0: :math:`J = I - \eta\nabla^2 L(0)`, ``(d, d)``.

        Its eigenvectors are those of the Hessian, with eigenvalues :math:`1 - \eta\lambda_i`. Warns
        (``RuntimeWarning``) when the linear iteration diverges, i.e. :math:`\eta\lambda_{max} > 2`
        (:math:`|1 - \eta\lambda_{max}| > 1`).
        """
        eta = check_float(eta, "eta", "Linearisation.jacobian", 0.0, math.inf)
        lam = float(self.eigenvalues[0])
        if eta * lam > 2.0:
            warnings.warn(f"the linearised gradient descent at θ = 0 diverges: η·λ_max(∇²L(0)) = "
                          f"{eta * lam:.4g} > 2 (|1 − ηλ_max| > 1)", RuntimeWarning, stacklevel=2)
        return torch.eye(self.hessian.shape[0], dtype=self.hessian.dtype) - eta * self.hessian

    def fixed_point(self) -> torch.Tensor:
        r"""Fixed point of the linearised descent :math:`\theta^* = -(\nabla^2L(0))^{-1}\nabla L(0)`, ``(d,)``.

        Needs :math:`\nabla^2L(0) = \frac{1}{8\tau^2}[(\delta^\top\Sigma\delta)\Sigma + 2\Sigma\delta\delta^\top\Sigma]`
        invertible, i.e. Σ non-singular and :math:`\delta^\top\Sigma\delta > 0`; a ``ValueError`` otherwise.
        """
        lam = self.eigenvalues
        if float(lam[-1]) <= 1e-12 * max(float(lam[0]), 1e-300):
            fail("cov", "Linearisation.fixed_point",
                 "such that ∇²L(0) is invertible (Σ non-singular and δᵀΣδ > 0)",
                 f"smallest Hessian eigenvalue {float(lam[-1]):.3g}")
        return -torch.linalg.solve(self.hessian, self.drift)


class TwoExpertGaussian:
    r"""The two-expert Gaussian model of paper §5/§6 (paper.md §5).

    .. math::
        X \sim N(0,\Sigma),\quad Y = \beta_0\cdot X + \tfrac12\,s(u\cdot X)\,c\cdot X,\quad
        s(t) = \begin{cases}+1 & t > 0\\ -1 & t \le 0\end{cases},\\
        f_\theta(x) = \sigma(\theta\cdot x/\tau)\,w_1\cdot x + (1-\sigma(\theta\cdot x/\tau))\,w_2\cdot x,\quad
        L(\theta) = E[(Y - f_\theta(X))^2].

    Args:
        cov: Σ, shape ``(d, d)``, symmetric positive semi-definite.
        u: teacher separator, shape ``(d,)``, with :math:`u^\top\Sigma u > 0`.
        beta0: teacher baseline β_0, shape ``(d,)``.
        contrast: teacher contrast c, shape ``(d,)``.
        w1, w2: student experts, shape ``(d,)`` each.
    """

    def __init__(self, cov, u, beta0, contrast, w1, w2):
        where = "TwoExpertGaussian"
        self.u = _vector(u, "u", where)
        d = self.u.shape[0]
        if float(self.u.norm()) == 0.0:
            fail("u", where, "a nonzero separator (|u| > 0)", self.u)
        self.law = Gaussian(torch.zeros(d, dtype=DTYPE), as_tensor(cov, "cov", where, dtype=DTYPE))
        self.cov = self.law.cov
        if float(self.u @ self.cov @ self.u) <= 1e-12 * float(self.u @ self.u) * max(1.0, float(self.cov.abs().max())):
            fail("u", where, "a separator with uᵀΣu > 0 (u·X not almost surely 0)", self.u)
        self.beta0 = _vector(beta0, "beta0", where, d)
        self.contrast = _vector(contrast, "contrast", where, d)
        self.w1, self.w2 = _vector(w1, "w1", where, d), _vector(w2, "w2", where, d)
        self.d = d

    @classmethod
    def around_shared(cls, cov, u, beta0, contrast, student_contrast) -> "TwoExpertGaussian":
        r"""Student experts at contrast δ around the best shared linear predictor (§7.3):
        :math:`w_{1,2} = \beta_{LS} \pm \delta/2`, :math:`\beta_{LS} = \Sigma^{-1}E[XY]` (see
        :meth:`best_shared_predictor`); ``student_contrast`` δ has shape ``(d,)``."""
        shared = cls(cov, u, beta0, contrast, beta0, beta0).best_shared_predictor()
        delta = _vector(student_contrast, "student_contrast", "TwoExpertGaussian.around_shared", shared.shape[0])
        return cls(cov, u, beta0, contrast, shared + delta / 2, shared - delta / 2)

    def best_shared_predictor(self) -> torch.Tensor:
        r"""Least-squares linear predictor :math:`\beta_{LS} = \Sigma^{-1}E[XY]`, shape ``(d,)``.

        :math:`E[XY] = \Sigma\beta_0 + \tfrac12 E[s(u\cdot X)XX^\top]c = \Sigma\beta_0`, because
        :math:`s(u\cdot X)XX^\top` is odd under :math:`X \to -X` (up to the null set u·X = 0); hence
        :math:`\beta_{LS} = \beta_0`. It is unique only if Σ is invertible: a ``ValueError`` otherwise.
        """
        lam = torch.linalg.eigvalsh(self.cov)
        if float(lam[0]) <= 1e-12 * float(lam[-1]):
            fail("cov", "TwoExpertGaussian.best_shared_predictor",
                 "positive definite (invertible) for the least-squares predictor Σ⁻¹E[XY]",
                 f"smallest eigenvalue {float(lam[0]):.3g}")
        return torch.linalg.solve(self.cov, self.cov @ self.beta0)

    # --- per-sample quantities -------------------------------------------------------------------

    def teacher(self, x) -> torch.Tensor:
        r"""Teacher signal :math:`Y = \beta_0\cdot x + \tfrac12 s(u\cdot x)\,c\cdot x`, ``x (N, d) -> (N,)``."""
        x = check_inputs(x, self.d, "TwoExpertGaussian.teacher")
        s = torch.where(x @ self.u.to(x) > 0, 1.0, -1.0).to(x)
        return x @ self.beta0.to(x) + 0.5 * s * (x @ self.contrast.to(x))

    def predict(self, x, theta, tau: float) -> torch.Tensor:
        r"""Soft student :math:`f_\theta = \pi_1 h_1 + (1-\pi_1)h_2`, :math:`\pi_1 = \sigma(\theta\cdot x/\tau)`.

        ``x (N, d)``, ``theta (d,)`` -> ``(N,)``.
        """
        x = check_inputs(x, self.d, "TwoExpertGaussian.predict")
        th = self._theta(theta, "TwoExpertGaussian.predict")
        p = torch.sigmoid((x @ th.to(x)) / _tau(tau, "TwoExpertGaussian.predict"))
        return p * (x @ self.w1.to(x)) + (1 - p) * (x @ self.w2.to(x))

    def _theta(self, theta, where: str) -> torch.Tensor:
        return _vector(theta, "theta", where, self.d)

    def _terms(self, theta: torch.Tensor, tau: float, order: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per-sample terms of L (order 0), ∇L (1) or ∇²L (2) at θ."""
        delta, mid = self.w1 - self.w2, (self.w1 + self.w2) / 2

        def terms(x):
            z = (x @ theta.to(x)) / tau
            p = torch.sigmoid(z)
            dp = p * torch.sigmoid(-z)
            D = x @ delta.to(x)
            resid = self.teacher(x) - (x @ mid.to(x)) - (p - 0.5) * D
            if order == 0:
                return resid ** 2
            if order == 1:
                return (-2.0 / tau) * (resid * D * dp)[:, None] * x
            coef = (2.0 / tau ** 2) * (D * D * dp * dp - resid * D * dp * (1 - 2 * p))
            return coef[:, None, None] * x[:, :, None] * x[:, None, :]

        return terms

    def _mc(self, theta, tau, order, n, seed, where, **mc) -> Estimate:
        th = self._theta(theta, where)
        return monte_carlo(self._terms(th, _tau(tau, where), order), self.law, n, seed, **mc)

    def risk(self, theta, tau: float, n: int = 1 << 18, seed=0, **mc) -> Estimate:
        r"""Monte Carlo risk :math:`L(\theta) = E[(Y - f_\theta(X))^2]` (scalar :class:`Estimate`); ``theta (d,)``."""
        return self._mc(theta, tau, 0, n, seed, "TwoExpertGaussian.risk", **mc)

    def gradient(self, theta, tau: float, n: int = 1 << 18, seed=0, **mc) -> Estimate:
        r"""Monte Carlo gradient (6.1)–(6.2), an :class:`Estimate` of shape ``(d,)``:

        .. math:: \nabla_\theta L = -\frac{2}{\tau}E\big[(Y - f_\theta)(h_1 - h_2)(X)\,\pi_1(1-\pi_1)\,X\big].
        """
        return self._mc(theta, tau, 1, n, seed, "TwoExpertGaussian.gradient", **mc)

    def hessian(self, theta, tau: float, n: int = 1 << 18, seed=0, **mc) -> Estimate:
        r"""Monte Carlo Hessian, an :class:`Estimate` of shape ``(d, d)``; with :math:`D = \delta\cdot X`,
        :math:`z = \theta\cdot X/\tau`:

        .. math:: \nabla^2 L = \frac{2}{\tau^2}E\big[(D^2\sigma'(z)^2 - (Y - f_\theta)D\,\sigma''(z))XX^\top\big],
                  \quad \sigma' = \sigma(1-\sigma),\ \sigma'' = \sigma'(1-2\sigma).
        """
        return self._mc(theta, tau, 2, n, seed, "TwoExpertGaussian.hessian", **mc)

    # --- exact values ----------------------------------------------------------------------------

    def exact(self, theta, tau: float, nodes: int = 32) -> ExactValues:
        r"""Exact :math:`L(\theta)`, :math:`\nabla L(\theta)`, :math:`\nabla^2 L(\theta)` (conditioning, quadrature).

        The integrands depend on X through :math:`S = \theta\cdot X` and :math:`T = u\cdot X` and polynomially
        otherwise. With :math:`\zeta = (\zeta_1, \zeta_2) \sim N(0, I_2)` Σ-orthonormal coordinates of the
        plane of (θ, u) (:math:`S = s_1\zeta_1`, :math:`T = t_1\zeta_1 + t_2\zeta_2`),
        :math:`X \mid \zeta \sim N(B\zeta, C)` with :math:`B = \Sigma P^\top`, :math:`C = \Sigma - BB^\top`,
        so the residual :math:`Y - f_\theta = a(\zeta)\cdot X`,
        :math:`a = \beta_0 - \bar w + \tfrac12 s(T)c - (\sigma(S/\tau) - \tfrac12)\delta`, and

        .. math:: L = E_\zeta[(a\cdot\mu)^2 + a^\top C a],\qquad
                  E[(\alpha\cdot X)(\beta\cdot X)X \mid \zeta],\ E[(\alpha\cdot X)(\beta\cdot X)XX^\top \mid \zeta]

        are Gaussian moments (docs/symmetry.md). The ζ-integral is a tensor Gauss–Legendre rule
        (``nodes`` per panel) on [−8.5, 8.5]², split at S = 0 (panels refined on the scale τ/s_1 of the
        gate) and, for each ζ_1, at the teacher boundary T = 0, so every panel integrand is smooth.

        Args:
            theta: router θ, shape ``(d,)``.
            tau: temperature τ > 0.
            nodes: Gauss–Legendre nodes per panel.

        Returns:
            :class:`ExactValues` ``(risk, gradient (d,), hessian (d, d))``.
        """
        where = "TwoExpertGaussian.exact"
        th = self._theta(theta, where)
        tau = _tau(tau, where)
        n = check_int(nodes, "nodes", where, low=4)
        S = self.cov
        # Σ-orthonormal basis p1 (along θ, or u if θ = 0), p2 (rest of u)
        nt = math.sqrt(max(float(th @ S @ th), 0.0))
        p1 = th / nt if nt > 0 else self.u / math.sqrt(float(self.u @ S @ self.u))
        q = self.u - float(self.u @ S @ p1) * p1
        nq = math.sqrt(max(float(q @ S @ q), 0.0))
        p2 = q / nq if nq > 1e-9 * math.sqrt(float(self.u @ S @ self.u)) else torch.zeros_like(q)
        s1, t1, t2 = nt, float(self.u @ S @ p1), float(self.u @ S @ p2)
        B = torch.stack([S @ p1, S @ p2], dim=1)  # (d, 2)
        C = S - B @ B.T
        # nodes in ζ_1: panels refined around 0 on the gate's scale h = τ/s_1 and on the scale r = t_2/|t_1| on
        # which the teacher boundary sweeps through the ζ_2-range (small when θ is nearly parallel to u)
        h = tau / s1 if s1 > 0 else math.inf
        r = t2 / abs(t1) if t2 > 0 and t1 != 0 else math.inf
        scales = [2 * h, 8 * h, 40 * h, r, 4 * r, 16 * r, 64 * r]
        b1 = torch.tensor([0.0, _L] + scales, dtype=DTYPE).clamp(max=_L)
        b1 = torch.sort(torch.cat([-b1, b1]).unique()).values
        z1, w1 = _panels(b1, n)
        # nodes in ζ_2: split at the teacher boundary T = 0
        vstar = (-t1 * z1 / t2).clamp(-_L, _L) if t2 > 0 else torch.full_like(z1, _L)
        b2 = torch.stack([torch.full_like(z1, -_L), vstar, torch.full_like(z1, _L)], dim=-1)
        z2, w2 = _panels(b2, n + 8)  # (N1, 2(n+8))
        z1 = z1[:, None].expand_as(z2)
        w = (w1 * _phi(z1[:, 0]))[:, None] * w2 * _phi(z2)
        z1, z2, w = z1.reshape(-1), z2.reshape(-1), w.reshape(-1)
        mu = z1[:, None] * B[:, 0] + z2[:, None] * B[:, 1]  # (N, d)
        T = t1 * z1 + t2 * z2
        sT = torch.where(T > 0, 1.0, -1.0).to(DTYPE)
        zg = s1 * z1 / tau
        sg = torch.sigmoid(zg)
        d1 = sg * torch.sigmoid(-zg)
        d2 = d1 * (1 - 2 * sg)
        delta = self.w1 - self.w2
        a = (self.beta0 - (self.w1 + self.w2) / 2) + 0.5 * sT[:, None] * self.contrast - (sg - 0.5)[:, None] * delta
        amu, dmu = (a * mu).sum(-1), mu @ delta
        Ca, Cd = a @ C, C @ delta
        risk = float((w * (amu ** 2 + (a * Ca).sum(-1))).sum())
        # gradient: -(2/τ) E[σ' (a·X)(δ·X) X]
        grad = (-2.0 / tau) * _third(w * d1, a, amu, Ca, mu, dmu, Cd)
        # Hessian: (2/τ²) E[(α·X)(δ·X)XXᵀ] with α = σ'² δ − σ'' a (bilinear in α)
        alpha = (d1 * d1)[:, None] * delta - d2[:, None] * a
        hess = (2.0 / tau ** 2) * _fourth(w, alpha, mu, dmu, Cd, C)
        return ExactValues(risk, grad, 0.5 * (hess + hess.T))

    def linearisation(self, tau: float) -> Linearisation:
        r"""Exact linearisation at the balanced router θ = 0 (experts fixed, :math:`\delta = w_1 - w_2`).

        With :math:`\sigma'(0) = 1/4` and :math:`\sigma''(0) = 0`:

        .. math:: \nabla L(0) = -\frac{1}{2\tau}E\big[(Y - \tfrac{h_1+h_2}{2})(\delta\cdot X)X\big]
                  = -\frac{1}{4\tau}E[s(T)(c\cdot X)(\delta\cdot X)X],\qquad
                  \nabla^2 L(0) = \frac{1}{8\tau^2}E[(\delta\cdot X)^2XX^\top]
                  = \frac{(\delta^\top\Sigma\delta)\Sigma + 2\Sigma\delta\delta^\top\Sigma}{8\tau^2},

        the third moment in closed form through :math:`X = kT + R` (docs/symmetry.md). Gradient descent
        :math:`\theta_{t+1} = \theta_t - \eta\nabla L(\theta_t)` linearised at 0 has Jacobian
        :math:`I - \eta\nabla^2L(0)` (:meth:`Linearisation.jacobian`).

        Returns:
            :class:`Linearisation` (drift ``(d,)``, Hessian ``(d, d)``, its spectrum, eigenvector alignments).
        """
        tau = _tau(tau, "TwoExpertGaussian.linearisation")
        g = drift_at_balance(self.cov, self.u, self.contrast, self.w1, self.w2, tau)
        H = hessian_at_balance(self.cov, self.w1 - self.w2, tau)
        lam, V = torch.linalg.eigh(H)
        lam, V = lam.flip(0), V.flip(1)
        return Linearisation(g, H, lam, V, (V.T @ self.u).abs() / self.u.norm(), float(alignment(g, self.u)),
                             self.u)


def _third(wk, a, amu, Ca, mu, dmu, Cd) -> torch.Tensor:
    r""":math:`\sum_n w_n E[(a_n\cdot X)(\delta\cdot X)X \mid \zeta_n]` with
    :math:`E[(\alpha\cdot X)(\beta\cdot X)X] = \alpha_\mu\beta_\mu\mu + (\alpha^\top C\beta)\mu
    + \alpha_\mu C\beta + \beta_\mu C\alpha` for :math:`X \sim N(\mu, C)`, :math:`\alpha_\mu = \alpha\cdot\mu`."""
    aCd = a @ Cd
    return ((wk * (amu * dmu + aCd))[:, None] * mu).sum(0) + float((wk * amu).sum()) * Cd \
        + ((wk * dmu)[:, None] * Ca).sum(0)


def _fourth(w, alpha, mu, dmu, Cd, C) -> torch.Tensor:
    r""":math:`\sum_n w_n E[(\alpha_n\cdot X)(\delta\cdot X)XX^\top \mid \zeta_n]` (Isserlis):

    .. math:: (\alpha_\mu\beta_\mu + \alpha^\top C\beta)(\mu\mu^\top + C)
              + \alpha_\mu(\mu(C\beta)^\top + C\beta\mu^\top) + \beta_\mu(\mu(C\alpha)^\top + C\alpha\mu^\top)
              + C\alpha(C\beta)^\top + C\beta(C\alpha)^\top.
    """
    amu = (alpha * mu).sum(-1)
    Calpha = alpha @ C
    k = w * (amu * dmu + alpha @ Cd)
    out = (k[:, None] * mu).T @ mu + float(k.sum()) * C
    A = ((w * amu)[:, None] * mu).sum(0)[:, None] * Cd[None, :]
    Bm = ((w * dmu)[:, None] * mu).T @ Calpha
    Cc = (w[:, None] * Calpha).sum(0)[:, None] * Cd[None, :]
    return out + A + A.T + Bm + Bm.T + Cc + Cc.T


# ----------------------------------------------------------------------------------------------------
# the reduced operator M (6.6), Lemmas 6.1/6.2, Prop. 6.3, (6.7)–(6.12)
# ----------------------------------------------------------------------------------------------------

_ODD_POINTS = (0.03, 0.3, 0.7, 1.3, 2.9)


def _response_values(r: Callable, t: torch.Tensor) -> torch.Tensor:
    out = r(t)
    out = out if isinstance(out, torch.Tensor) else as_tensor(out, "response", "reduced_operator")
    if out.shape != t.shape:
        fail("response", "reduced_operator", f"a function mapping t of shape {tuple(t.shape)} to the same shape",
             f"output shape {tuple(out.shape)}")
    return check_finite(out.to(t), "response", "reduced_operator")


def _response(response, tau: float, sigma_u: float, where: str) -> Callable | None:
    """The response r as a callable (``None`` for "sign", which has a closed form); checks oddness."""
    if isinstance(response, str):
        if response == "sign":
            return None
        if response == "tanh":
            return lambda t: torch.tanh(t / tau)
        fail("response", where, "'sign', 'tanh' or an odd callable r(t)", response)
    if not callable(response):
        fail("response", where, "'sign', 'tanh' or an odd callable r(t)", type(response).__name__, TypeError)
    t = sigma_u * torch.tensor(_ODD_POINTS, dtype=DTYPE)
    plus, minus = _response_values(response, t), _response_values(response, -t)
    bad = (plus + minus).abs() > 1e-9 * (1.0 + plus.abs())
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        fail("response", where, "an odd function, r(−t) = −r(t)",
             f"r({float(t[i]):.3g}) = {float(plus[i]):.6g}, r({-float(t[i]):.3g}) = {float(minus[i]):.6g}")
    return response


def _operator_inputs(cov, u, contrast, tau, where):
    u = _vector(u, "u", where)
    if float(u.norm()) == 0.0:
        fail("u", where, "a nonzero separator (|u| > 0)", u)
    c = _vector(contrast, "contrast", where, u.shape[0])
    cov = Gaussian(torch.zeros(u.shape[0], dtype=DTYPE), as_tensor(cov, "cov", where, dtype=DTYPE)).cov
    var = float(u @ cov @ u)
    if var <= 1e-12 * float(u @ u) * max(1.0, float(cov.abs().max())):
        fail("cov", where, "such that σ_u² = uᵀΣu > 0 (Lemma 6.1 divides by it)", f"uᵀΣu = {var:.3g}")
    c_u = contrast_on_separator(c, u)
    if c_u == 0.0:
        warnings.warn(f"{where}: Prop. 6.3's hypothesis fails — the teacher contrast has no projection on the "
                      "separator (c·u = 0), so M = 0 and the reduced model predicts no growth, rate or limit "
                      "direction of the router", RuntimeWarning, stacklevel=3)
    return cov, u, c_u, _tau(tau, where), math.sqrt(var)


def reduced_operator(cov, u, contrast, tau: float, response="sign") -> torch.Tensor:
    r"""The reduced operator (6.6) in closed form (Lemma 6.1 [recon], Lemma 6.2), shape ``(d, d)``.

    .. math:: M = \frac{c_u}{2\tau}E[\kappa(u\cdot X)XX^\top],\quad \kappa(t) = t\,r(t),\quad
              c_u = \frac{c\cdot u}{|u|},\quad X\sim N(0,\Sigma);

    :math:`c_u`, the teacher contrast's projection on the separator, fixes the sign of M (6.8): M ⪰ 0 for
    :math:`c_u > 0`, M ⪯ 0 for :math:`c_u < 0`, and M = 0 when :math:`c_u = 0` — where Prop. 6.3's hypothesis
    fails and a ``RuntimeWarning`` says so. With :math:`T = u\cdot X`, :math:`\sigma_u^2 = u^\top\Sigma u`,
    :math:`X = (\Sigma u/\sigma_u^2)T + R` (R independent of T), Lemma 6.1:

    .. math:: v^\top Mv = \frac{c_u}{2\tau}\Big[\frac{(v^\top\Sigma u)^2}{\sigma_u^4}E[T^3r(T)]
              + \Big(v^\top\Sigma v - \frac{(v^\top\Sigma u)^2}{\sigma_u^2}\Big)E[Tr(T)]\Big];

    for the sign response (Lemma 6.2)
    :math:`M = \frac{c_u\sqrt{2/\pi}}{2\tau}[\sigma_u\Sigma + \Sigma uu^\top\Sigma/\sigma_u]`.
    For other responses the two moments are one-dimensional integrals (Gauss–Legendre, see
    ``docs/symmetry.md``).

    Args:
        cov: Σ, shape ``(d, d)``.
        u: teacher separator, shape ``(d,)``, with :math:`u^\top\Sigma u > 0`.
        contrast: the teacher contrast c, shape ``(d,)`` (teacher experts :math:`(\beta_0 \pm c/2)\cdot x`).
        tau: temperature τ > 0.
        response: ``"sign"``, ``"tanh"`` (:math:`r(t) = \tanh(t/\tau)`) or an odd callable ``r`` mapping a
            tensor of t values to a tensor of the same shape (oddness is checked at a few points).
    """
    where = "reduced_operator"
    cov, u, c_u, tau, s_u = _operator_inputs(cov, u, contrast, tau, where)
    r = _response(response, tau, s_u, where)
    m1, m3 = sign_moments(s_u) if r is None else _odd_moments(r, s_u)
    return reduced_closed_form(cov, u, c_u, m1, m3, tau)


def reduced_operator_mc(cov, u, contrast, tau: float, response="sign", n: int = 1 << 18, seed=0,
                        **mc) -> Estimate:
    r"""Monte Carlo estimate of M (6.6), :math:`\frac{c_u}{2\tau}\frac1n\sum_i \kappa(u\cdot X_i)X_iX_i^\top`,
    an :class:`Estimate` of shape ``(d, d)`` (arguments as :func:`reduced_operator`)."""
    where = "reduced_operator_mc"
    cov, u, c_u, tau, s_u = _operator_inputs(cov, u, contrast, tau, where)
    r = _response(response, tau, s_u, where) or torch.sign

    def terms(x):
        t = x @ u.to(x)
        kappa = t * _response_values(r, t)
        return (c_u * kappa / (2.0 * tau))[:, None, None] * x[:, :, None] * x[:, None, :]

    return monte_carlo(terms, Gaussian(torch.zeros(u.shape[0], dtype=DTYPE), cov), n, seed, **mc)


class Spectrum(NamedTuple):
    """Eigen-decomposition of a symmetric operator: ``values (d,)`` descending, ``vectors (d, d)`` (columns),
    ``alignment (d,)`` = :math:`|e_i\\cdot u|/|u|`."""

    values: torch.Tensor
    vectors: torch.Tensor
    alignment: torch.Tensor


def _symmetric(M, where: str) -> torch.Tensor:
    M = as_tensor(M, "M", where, dtype=DTYPE)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        fail("M", where, "a square matrix of shape (d, d)", f"shape {tuple(M.shape)}")
    check_finite(M, "M", where)
    if not torch.allclose(M, M.T, atol=1e-10 * max(1.0, float(M.abs().max())), rtol=0):
        fail("M", where, "symmetric", M)
    return 0.5 * (M + M.T)


def operator_spectrum(M, u) -> Spectrum:
    r"""Spectrum of M with each eigenvector's alignment with u (Prop. 6.3).

    Prop. 6.3 (hypothesis: :math:`c_u \ne 0`): for a response with :math:`t\,r(t) \ge 0`,
    :math:`u^\top Mu = c_u E[T^3 r(T)]/(2\tau)` has the sign of :math:`c_u`, so M has an eigenpair with
    :math:`e_i\cdot u \ne 0` and :math:`\mathrm{sign}\,\lambda_i = \mathrm{sign}\,c_u` — for
    :math:`c_u > 0` a growing mode (λ > 0) correlated with u. It need not be the leading one (Σ = diag(1, 100),
    u = e_1 gives M ∝ c_u·diag(2, 100); ``docs/symmetry.md`` §5), hence the alignment of every eigenvector is
    returned. (For :math:`c_u = 0`, M = 0 and nothing follows; :func:`reduced_operator` warns.) Eigenvector
    signs are fixed so that :math:`e_i\cdot u \ge 0`. ``M (d, d)``, ``u (d,)``; values descending.
    """
    M = _symmetric(M, "operator_spectrum")
    u = _vector(u, "u", "operator_spectrum", M.shape[0])
    lam, V = torch.linalg.eigh(M)
    lam, V = lam.flip(0), V.flip(1)
    sign = torch.where(V.T @ u < 0, -1.0, 1.0).to(V)
    V = V * sign
    return Spectrum(lam, V, (V.T @ u).abs() / u.norm())


def _growth(M, eta, where) -> tuple[torch.Tensor, torch.Tensor, float]:
    M = _symmetric(M, where)
    eta = check_float(eta, "eta", where, 0.0, math.inf)
    lam = torch.linalg.eigvalsh(M).flip(0)
    if float(1 + eta * lam[-1]) <= 0:
        fail("eta", where, "such that 1 + η·λ_i > 0 for every eigenvalue of M (else the iteration (6.7) flips sign "
             "every step and the rate (6.11) is undefined)",
             f"{eta} with 1 + η·λ_min = {float(1 + eta * lam[-1]):.4g}")
    return M, lam, eta


def alignment_rate(M, eta: float) -> float:
    r"""Alignment rate of the linearised iteration (6.11):

    .. math:: \rho = \log\frac{1 + \eta\lambda_1}{1 + \eta\lambda_2} \approx \eta(\lambda_1 - \lambda_2)\quad(6.12),

    so that the non-leading/leading ratio of :math:`\theta_t = \sum_i(1+\eta\lambda_i)^t c_i e_i` (6.9) is at
    most :math:`r_0 e^{-\rho t}` (6.10), with equality when :math:`\lambda_2 = \dots = \lambda_d`.
    ``M (d, d)`` symmetric; a ``ValueError`` if :math:`1 + \eta\lambda_i \le 0` for some i.
    """
    _, lam, eta = _growth(M, eta, "alignment_rate")
    return math.log1p(eta * float(lam[0])) - math.log1p(eta * float(lam[1]))


def linear_iteration(M, theta0, eta: float, steps: int) -> torch.Tensor:
    r"""The linearised router iteration (6.7) :math:`\theta_{t+1} = (I + \eta M)\theta_t`, simulated.

    Each iterate is divided by :math:`(1 + \eta\lambda_1)^t` (the growth of the leading mode) so that long
    runs neither overflow nor underflow; directions, alignments and ratios are unchanged by this.

    Args:
        M: symmetric operator, shape ``(d, d)``.
        theta0: start, shape ``(d,)``.
        eta: step size η > 0 (``ValueError`` if :math:`1 + \eta\lambda_i \le 0` for some i).
        steps: number of steps.

    Returns:
        the rescaled iterates :math:`\theta_t/(1+\eta\lambda_1)^t`, shape ``(steps + 1, d)``.
    """
    M, lam, eta = _growth(M, eta, "linear_iteration")
    th = _vector(theta0, "theta0", "linear_iteration", M.shape[0])
    steps = check_int(steps, "steps", "linear_iteration", low=0)
    A = (torch.eye(M.shape[0], dtype=DTYPE) + eta * M) / (1 + eta * float(lam[0]))
    out = [th]
    for _ in range(steps):
        out.append(A @ out[-1])
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------------
# router-only training (§7.3)
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RouterTraining:
    r"""Result of :func:`train_router` for ``R`` temperatures and ``steps`` steps.

    ``taus (R,)``; ``theta (R, d)`` final routers; ``alignment``, ``risk``, ``norm``: ``(steps + 1, R)``
    trajectories of :math:`|\cos(\theta_t, u)|`, the training objective :math:`\hat L(\theta_t)` on the fixed
    sample and :math:`|\theta_t|`.
    """

    taus: torch.Tensor
    theta: torch.Tensor
    alignment: torch.Tensor
    risk: torch.Tensor
    norm: torch.Tensor


def train_router(model: TwoExpertGaussian, x, theta0, taus, eta: float, steps: int, *,
                 progress: bool = False) -> RouterTraining:
    r"""Router-only full-batch gradient descent on one fixed sample (§7.3), one run per temperature.

    .. math:: \theta_{t+1} = \theta_t - \eta\,\hat\nabla L(\theta_t),\qquad
              \hat\nabla L(\theta) = -\frac{2}{\tau}\frac1n\sum_i (Y_i - f_\theta(X_i))(\delta\cdot X_i)\,
              \pi_1(1-\pi_1)(X_i)\,X_i\quad(6.2)

    with the experts fixed; every run starts from the same ``theta0`` and uses the same sample. The loop runs
    on one thread (each step is a few small vector operations), so the result does not depend on the thread
    count.

    Args:
        model: the :class:`TwoExpertGaussian` (teacher and fixed experts).
        x: the training sample, shape ``(n, d)`` (e.g. :func:`softhard.estimators.reducer.draw` of ``model.law``).
        theta0: initial router, shape ``(d,)``.
        taus: temperatures, shape ``(R,)``.
        eta: step size η > 0.
        steps: number of gradient steps.
        progress: show a progress bar over the steps.

    Returns:
        :class:`RouterTraining` (final θ ``(R, d)`` and ``(steps + 1, R)`` trajectories).
    """
    where = "train_router"
    if not isinstance(model, TwoExpertGaussian):
        fail("model", where, "a TwoExpertGaussian", type(model).__name__, TypeError)
    x = check_finite(check_inputs(x, model.d, where).to(DTYPE), "x", where)
    th = _vector(theta0, "theta0", where, model.d)
    t = check_grid(taus, "taus", where, low=0.0, low_open=True).to(DTYPE)
    eta = check_float(eta, "eta", where, 0.0, math.inf)
    steps = check_int(steps, "steps", where, low=0)
    n = x.shape[0]
    delta, mid = model.w1 - model.w2, (model.w1 + model.w2) / 2
    D = x @ delta  # (n,)
    e = model.teacher(x) - x @ mid  # residual of the balanced router
    theta = th.repeat(t.numel(), 1)  # (R, d)
    tau = t[:, None]
    xt = x.T.contiguous()
    align, risk, norm = [], [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="router training", unit="step", leave=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few small vector operations per step only lose time to threading (restored below)
    try:
        for step in range(steps + 1):
            p = torch.sigmoid(torch.mm(theta / tau, xt))  # π_1, (R, n)
            resid = torch.addcmul(e, p - 0.5, D, value=-1.0)  # Y − f_θ
            risk.append((resid * resid).mean(1))
            align.append(alignment(theta, model.u))
            norm.append(theta.norm(dim=1))
            if step == steps:
                break
            weight = resid.mul_(D).mul_(p).mul_(1.0 - p)  # (Y − f)(δ·X) π_1(1 − π_1), in place
            theta = theta - eta * (-2.0 / n) * torch.mm(weight, x) / tau
            if bar is not None:
                bar.update(1)
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
    return RouterTraining(t, theta, torch.stack(align), torch.stack(risk), torch.stack(norm))
