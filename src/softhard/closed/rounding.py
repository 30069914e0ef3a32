r"""Rounding to a floating-point or integer grid, and the flip probability of one ranked pair under it.

Closed forms used by the flip predictor (:mod:`softhard.inspect.price.flips`; derivation in ``docs/flips.md``):

- :func:`ulp`: the spacing of a binary floating-point format at :math:`x` — :math:`2^{\lfloor\log_2|x|\rfloor-p+1}`
  for a normal :math:`x`, :math:`2^{e_{min}-p+1}` below the smallest normal (subnormals);
- :func:`rounding_variance`: the variance :math:`\mathrm{ulp}(x)^2/12` of the round-to-nearest error of a value
  that lies at random within its grid cell (the standard probabilistic model of rounding);
- :func:`pair_flip_probability`: for a pair whose score difference is :math:`g > 0` before the change,
  a Gaussian error :math:`D \sim N(0, \sigma^2)` of that difference and a final rounding of both scores to a
  common grid of spacing :math:`q` (ties broken either way with probability 1/2), the probability that the
  order is reversed:

  .. math:: P = \mathbb P(g + D + U < 0),\quad U \sim \mathrm{Unif}(-q, q)
            = \frac{\sigma}{2q}\Big[G\Big(\frac{q-g}{\sigma}\Big) - G\Big(\frac{-q-g}{\sigma}\Big)\Big],
            \qquad G(x) = x\,\Phi(x) + \varphi(x),

  with the limits :math:`\Phi(-g/\sigma)` (:math:`q = 0`) and :math:`\operatorname{clip}((q-g)/2q, 0, 1)`
  (:math:`\sigma = 0`);
- :func:`abs_mean_rounded`: :math:`\mathbb E|\sigma Z + T|` with :math:`T` the difference of two independent
  roundings to a grid of spacing :math:`q` (triangular on :math:`(-q, q)`), the observed size of a score-difference
  error whose two scores were rounded — what an error scale is calibrated against when one side of a comparison
  is rounded (Gauss–Legendre on each half of the triangle, where the integrand
  :math:`\mathbb E|\sigma Z + t| = \sigma\sqrt{2/\pi}\,e^{-t^2/2\sigma^2} + t\,(1 - 2\Phi(-t/\sigma))` is smooth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import fail
from .normal import gauss_legendre, normal_cdf, phi

__all__ = ["FloatFormat", "FORMATS", "ulp", "rounding_variance", "pair_flip_probability", "abs_mean_rounded"]


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: ``precision`` bits of significand (the implicit bit counted), the
    smallest normal exponent ``emin`` and the largest finite value ``max``. Unit roundoff :math:`u = 2^{-p}`."""

    name: str
    precision: int
    emin: int
    max: float

    @property
    def unit_roundoff(self) -> float:
        return 2.0 ** -self.precision


FORMATS = {
    "bf16": FloatFormat("bf16", 8, -126, 3.3895313892515355e38),
    "fp16": FloatFormat("fp16", 11, -14, 65504.0),
    "fp8": FloatFormat("fp8 e4m3", 4, -6, 448.0),
    "fp32": FloatFormat("fp32", 24, -126, 3.4028234663852886e38),
}


def _format(fmt, where: str) -> FloatFormat:
    if isinstance(fmt, FloatFormat):
        return fmt
    if fmt not in FORMATS:
        fail("fmt", where, f"one of {tuple(FORMATS)} or a FloatFormat", fmt)
    return FORMATS[fmt]


def ulp(x: torch.Tensor, fmt="bf16") -> torch.Tensor:
    r"""Spacing of the format ``fmt`` at each element of ``x`` (any shape, float64 out):
    :math:`2^{\max(\lfloor\log_2|x|\rfloor, e_{min}) - p + 1}`; at 0 the subnormal spacing."""
    f = _format(fmt, "ulp")
    x = torch.as_tensor(x, dtype=torch.float64)
    _, e = torch.frexp(x)  # x = m 2^e, |m| in [0.5, 1): floor(log2|x|) = e - 1
    e = torch.clamp(e.to(torch.float64) - 1, min=float(f.emin))
    e = torch.where(x == 0, torch.full_like(e, float(f.emin)), e)
    return torch.exp2(e - (f.precision - 1))


def rounding_variance(x: torch.Tensor, fmt="bf16") -> torch.Tensor:
    r""":math:`\mathrm{ulp}(x)^2/12` elementwise (float64): the variance of the round-to-nearest error of a value
    uniformly placed within its grid cell; 0 where ``x`` is 0 (exactly representable)."""
    u = ulp(x, fmt)
    return torch.where(torch.as_tensor(x) == 0, torch.zeros_like(u), u * u / 12)


def _G(x: torch.Tensor) -> torch.Tensor:
    return x * normal_cdf(x) + phi(x)


def pair_flip_probability(gap, sigma, q=0.0) -> torch.Tensor:
    r""":math:`\mathbb P(g + D + U < 0)` with :math:`D \sim N(0,\sigma^2)`, :math:`U \sim \mathrm{Unif}(-q, q)`
    (module docstring), elementwise over broadcastable ``gap``, ``sigma``, ``q`` (float64 out). ``sigma`` and
    ``q`` must be ``>= 0``; ``gap`` may be ``+inf`` (probability 0)."""
    g = torch.as_tensor(gap, dtype=torch.float64)
    s = torch.as_tensor(sigma, dtype=torch.float64)
    q = torch.as_tensor(q, dtype=torch.float64)
    g, s, q = torch.broadcast_tensors(g, s, q)
    if bool((s < 0).any()) or bool((q < 0).any()) or bool(torch.isnan(s).any() | torch.isnan(q).any()):
        fail("sigma", "pair_flip_probability", "non-negative (and q too)", (s.min().item(), q.min().item()))
    tiny = 1e-300
    gauss = normal_cdf(-g / torch.clamp(s, min=tiny))
    ramp = torch.clamp((q - g) / torch.clamp(2 * q, min=tiny), 0.0, 1.0)
    sq = torch.clamp(s, min=tiny)
    conv = sq / torch.clamp(2 * q, min=tiny) * (_G((q - g) / sq) - _G((-q - g) / sq))
    out = torch.where(q <= 1e-7 * s, gauss, torch.where(s <= 1e-9 * q, ramp, conv))
    hard = (s == 0) & (q == 0)
    out = torch.where(hard, (g < 0).to(torch.float64) + 0.5 * (g == 0).to(torch.float64), out)
    out = torch.where(torch.isinf(g) & (g > 0), torch.zeros_like(out), out)
    return torch.clamp(out, 0.0, 1.0)


def abs_mean_rounded(sigma, q, nodes: int = 32) -> torch.Tensor:
    r""":math:`\mathbb E|\sigma Z + T|`, :math:`Z \sim N(0, 1)`, :math:`T` triangular on :math:`(-q, q)` (module
    docstring); elementwise over broadcastable ``sigma, q >= 0`` (float64 out). :math:`\sigma\sqrt{2/\pi}` at
    :math:`q = 0`, :math:`q/3` at :math:`\sigma = 0`."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    q = torch.as_tensor(q, dtype=torch.float64)
    s, q = torch.broadcast_tensors(s, q)
    x, w = gauss_legendre(nodes, s)
    t = q[..., None] * (x + 1) / 2  # nodes on (0, q); the density (1 - t/q)/q, symmetric halves
    dens = (1 - (x + 1) / 2) / torch.clamp(q[..., None], min=1e-300)
    sz = torch.clamp(s[..., None], min=1e-300)
    inner = sz * math.sqrt(2 / math.pi) * torch.exp(-0.5 * (t / sz) ** 2) + t * (1 - 2 * normal_cdf(-t / sz))
    half = (inner * dens * w * q[..., None] / 2).sum(-1)  # integral over (0, q); the same over (-q, 0)
    out = 2 * half
    out = torch.where(q == 0, s * math.sqrt(2 / math.pi), out)
    return torch.where(s == 0, q / 3, out)
