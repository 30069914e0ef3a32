r"""Conditional Monte Carlo across the interface for a linear router under a Gaussian (mixture) law [beyond].

For the pair (i, j) put :math:`g = a_i - a_j = m_g + s\,\tau` with :math:`\tau \sim N(0, 1)`; writing
:math:`Y = M + F\xi` (:math:`FF^\top = C`, :math:`\xi \sim N(0, I_q)`, Y the score-space vector of
:mod:`.score_space`) and :math:`e = F^\top v/s` (:math:`v = e_i - e_j`), :math:`\tau = e\cdot\xi` and
:math:`Y = \alpha + \gamma\tau` with :math:`\alpha = M + F(\xi - (e\cdot\xi)e)` independent of τ and
:math:`\gamma = Fe`. Given α the set where {i, j} are the top two logits is an interval :math:`[l, u]` of τ
(all logits are affine in τ), so

.. math:: E[\phi(X)] = \sum_{i<j} E_\alpha\Big[\int_l^u \phi(\alpha + \gamma\tau)\,\varphi(\tau)\,d\tau\Big]

for any per-sample function φ. The inner integral is exact for β(w) (a Gaussian cdf difference over
:math:`[l, u] \cap \{|g| \le w\}`), a point value for the surface integrals (:math:`\tau_0 = -m_g/s`) and a
Gauss–Legendre quadrature for the risk gap. Derivation and variance: ``docs/estimators.md``.
"""

from __future__ import annotations

import itertools
import math

import torch

from .._validate import DTYPE, fail
from ..closed.normal import gauss_legendre, interval_mass, phi
from ..closed.risk import TAIL_TAU, g1_bracket
from ..model.moe import MoE, hard_from
from ..model.routers import LinearRouter
from .reducer import Estimate, Sampling
from .score_space import ScoreSpace, StandardDraws, gaussian_factors, pick_component, run_conditional, score_space

__all__ = ["boundary_mass_linear", "risk_gap_linear", "gap_slope_linear"]

_LAYERS = 2.0 ** torch.arange(7, dtype=DTYPE)  # quadrature breaks at |g| = τ, 2τ, ..., 64τ


class _PairLines:
    r"""For every pair (i, j) of a K-expert linear router and every draw :math:`\xi` of a component
    :math:`Y = M + F\xi`: the score-space line :math:`Y = \alpha + \gamma\tau` along which
    :math:`g_{ij} = m_g + s\tau` (:math:`\tau = e\cdot\xi`, :math:`\alpha = Y - \tau\gamma`), and the interval
    :math:`[l, u]` of τ on which i and j are the top two logits (module docstring, item 2). Everything but
    ``Y`` and τ is a per-component constant."""

    def __init__(self, space: ScoreSpace, where: str):
        self.space, sl = space, space.slices["logits"]
        self.K = sl.stop - sl.start
        self.pairs = list(itertools.combinations(range(self.K), 2))
        P = len(self.pairs)
        self.weights, self.means, self.factors = gaussian_factors(space.law)
        self.q, self.C = self.means[0].shape[0], len(self.means)
        V = torch.zeros(P, self.q, dtype=DTYPE)
        for p, (i, j) in enumerate(self.pairs):
            V[p, sl.start + i], V[p, sl.start + j] = 1.0, -1.0
        self.tops = torch.tensor(self.pairs)  # (P, 2)
        others = torch.ones(P, 1, self.K, dtype=torch.bool)  # (P, 1, K): k ∉ {i, j}
        for p, (i, j) in enumerate(self.pairs):
            others[p, 0, [i, j]] = False
        self.consts = []
        for M, F in zip(self.means, self.factors):
            Fv = V @ F  # (P, q): rows Fᵀv
            s = Fv.norm(dim=1)
            if bool((s <= 1e-12 * max(1.0, float(F.abs().max()))).any()):
                p = self.pairs[int(torch.argmin(s))]
                fail("router", where, "a router whose score differences a_i - a_j all have a non-degenerate law "
                     "(vᵀSv > 0) for the conditional estimator", f"pair {p} with vᵀSv = 0")
            e = Fv / s[:, None]
            gamma = e @ F.T  # (P, q): γ = F e
            c = gamma[:, sl]
            c1 = c.gather(1, self.tops)[:, :, None] - c[:, None, :]  # (P, 2, K): slope of a_top - a_k in τ
            self.consts.append(dict(e=e, gamma=gamma, m_g=V @ M, s=s, c1=c1, inv=1.0 / c1,
                                    lower=others & (c1 > 0), upper=others & (c1 < 0), flat=others & (c1 == 0)))

    @property
    def draws(self) -> StandardDraws:
        return StandardDraws(1, self.q)

    def per_component(self, draws: torch.Tensor, fn) -> torch.Tensor:
        """``fn(consts, y (n, q), tau (n, P))`` for the draws ``(N, 1 + q)`` of each component, in row order."""
        comp, xi = pick_component(self.weights, draws[:, 0]), draws[:, 1:]
        out = None
        for c in range(self.C):
            m = comp == c
            if not bool(m.any()):
                continue
            k = {key: v.to(draws.device) for key, v in self.consts[c].items()}
            x = xi[m]
            v = fn(k, self.means[c].to(draws) + x @ self.factors[c].to(draws).T, x @ k["e"].T)
            if out is None:
                out = torch.zeros(draws.shape[0], *v.shape[1:], dtype=v.dtype, device=v.device)
            out[m] = v
        return out

    def interval(self, k: dict, y: torch.Tensor, tau: torch.Tensor):
        r"""``(l, u)`` each ``(n, P)``: :math:`a_{top} - a_k = c_0 + c_1\tau > 0` for top ∈ {i, j}, k ∉ {i, j}."""
        a = y[:, self.space.slices["logits"]]
        top = self.tops.to(a.device)
        d0 = a[:, top][..., None] - a[:, None, None, :]  # (n, P, 2, K): a_top - a_k at the draw
        r = tau[..., None, None] - d0 * k["inv"]  # root of c_0 + c_1 τ' = 0, c_0 = d0 - c_1 τ
        lo = torch.where(k["lower"], r, -math.inf).flatten(2).amax(-1)
        hi = torch.where(k["upper"], r, math.inf).flatten(2).amin(-1)
        never = (k["flat"] & (d0 <= 0)).flatten(2).any(-1)
        return lo, torch.where(never, -math.inf, hi)


def boundary_mass_linear(router: LinearRouter, law, widths: torch.Tensor, opts: Sampling,
                         sampling: str = "qmc") -> Estimate:
    r"""Conditional estimate of β(w) (2.13) for a K-expert linear router under a Gaussian (mixture) law.

    .. math:: \beta(w) = \sum_{i<j} E_\alpha\big[\Phi(\min(u, \tfrac{w - m_g}{s}))
              - \Phi(\max(l, \tfrac{-w - m_g}{s}))\big]_+

    (module docstring, item 2): on the interval where i, j are the top two, :math:`\Delta = |g_{ij}|`.
    Terms are bounded by 1 and smooth in the draws, so ``sampling="qmc"`` (the default) pays.
    ``widths``: ``(W,)``; returns an :class:`Estimate` over ``widths``.
    """
    pl = _PairLines(score_space(router, law), "boundary_mass")

    def component(k, y, tau):
        lo, hi = pl.interval(k, y, tau)
        w = widths.to(y)[None, None, :]
        a = torch.maximum(lo[..., None], ((-w - k["m_g"][:, None]) / k["s"][:, None]))
        b = torch.minimum(hi[..., None], ((w - k["m_g"][:, None]) / k["s"][:, None]))
        return interval_mass(a, b).sum(1)

    def terms(d):
        return pl.per_component(d, component)

    return run_conditional(terms, pl.draws, opts, sampling, {"estimator": "pairwise conditioning"})


def _winner(a: torch.Tensor, slope: torch.Tensor, side: float) -> torch.Tensor:
    """Hard winner of logits ``a (..., K)`` moving along ``slope`` just past the point (side ±1): ties within
    1e-9 broken by the larger ``side·slope``, then by the lowest index (2.9)."""
    top = a.amax(-1, keepdim=True)
    tied = a >= top - 1e-9 * (1.0 + top.abs())
    return torch.where(tied, side * slope, -math.inf).argmax(-1)


def risk_gap_linear(moe: MoE, law, taus: torch.Tensor, teacher, space: ScoreSpace, opts: Sampling,
                    sampling: str = "qmc") -> Estimate:
    r"""Conditional estimate of :math:`L_\tau - L_0` (2.5), (2.11) for a linear router with linear experts
    (and a hard linear teacher) under a Gaussian (mixture) law, on a grid of temperatures ``taus (T,)``.

    .. math:: L_\tau - L_0 = \sum_{i<j} E_\alpha\Big[\int_{[l,u]\cap\{|g| \le 64\tau\}}
              \big[(f^* - f_\tau)^2 - (f^* - f_0)^2\big](\alpha + \gamma t)\,\varphi(t)\,dt\Big]

    (noise cancels). Gauss–Legendre (8 nodes) on panels split at :math:`g = 0, \pm\tau 2^k` (k ≤ 6) and at
    every crossing of two teacher logits, where :math:`f^*` jumps; beyond :math:`|g| = 64\tau` the
    integrand is below :math:`e^{-64}`.
    """
    pl = _PairLines(space, "risk_gap")
    sl = space.slices
    has_teacher = "teacher_logits" in sl
    t = taus.to(DTYPE)

    def pair_terms(k, y, tau, lo, hi, p):
        """``(n, T)``: the integral across the interface of pair p, for every draw and temperature."""
        ga, mg, sg = k["gamma"][p], k["m_g"][p], k["s"][p]
        al = y - tau[:, p, None] * ga  # (n, q): the line's point at τ = 0
        brk_t = []
        if has_teacher:  # crossings of two teacher logits along the line: f* jumps there
            ta, tg = al[:, sl["teacher_logits"]], ga[sl["teacher_logits"]]
            i, j = torch.triu_indices(ta.shape[1], ta.shape[1], 1, device=y.device)
            brk_t = [(-(ta[:, i] - ta[:, j]) / (tg[i] - tg[j])).nan_to_num(0.0, 0.0, 0.0)]
        out = []
        for temp in t:
            lim = TAIL_TAU * temp
            a = torch.clamp(lo[:, p], min=float((-lim - mg) / sg))
            b = torch.clamp(hi[:, p], max=float((lim - mg) / sg))
            layers = (torch.cat([-temp * _LAYERS.flip(0), torch.zeros(1), temp * _LAYERS]).to(y) - mg) / sg
            pts = torch.sort(torch.cat([a[:, None], b[:, None], layers.expand(y.shape[0], -1), *brk_t], 1), 1).values
            pts = torch.minimum(torch.maximum(pts, a[:, None]), torch.maximum(a, b)[:, None])
            half, mid = (pts[:, 1:] - pts[:, :-1]) / 2, (pts[:, 1:] + pts[:, :-1]) / 2
            gx, gw = gauss_legendre(8, like=y)
            nodes = (mid[..., None] + half[..., None] * gx).flatten(1)  # (n, nodes)
            wts = (half[..., None] * gw).flatten(1) * phi(nodes)
            yy = al[:, None, :] + nodes[..., None] * ga  # (n, nodes, q)
            lg, h = yy[..., sl["logits"]], yy[..., sl["outputs"]]
            f0 = h.gather(-1, lg.argmax(-1, keepdim=True))[..., 0]
            e = torch.exp((lg - lg.amax(-1, keepdim=True)) / temp)  # softmax weights, unnormalised
            ft = torch.einsum("...k,...k->...", e, h) / e.sum(-1)
            fs = hard_from(yy[..., sl["teacher_logits"]], yy[..., sl["teacher_outputs"]]) if has_teacher else f0
            out.append((wts * ((fs - ft) ** 2 - (fs - f0) ** 2)).sum(1))
        return torch.stack(out, 1)

    def component(k, y, tau):
        lo, hi = pl.interval(k, y, tau)
        return sum(pair_terms(k, y, tau, lo, hi, p) for p in range(len(pl.pairs)))

    return run_conditional(lambda d: pl.per_component(d, component), pl.draws, opts, sampling,
                           {"estimator": "pairwise conditioning + Gauss-Legendre in g"})


def gap_slope_linear(moe: MoE, law, teacher, space: ScoreSpace, opts: Sampling, sampling: str = "qmc") -> Estimate:
    r"""Conditional estimate of :math:`G_1` (paper.md §3 [beyond]) for a K-expert linear router with linear
    experts (and a hard linear teacher) under a Gaussian (mixture) law:

    .. math:: G_1 = \sum_{i<j} E_\alpha\Big[\frac{\varphi(\tau_0)}{s}\,1\{l < \tau_0 < u\}\,
              \big[(2\ln2 - 1)D^2 + 2\ln2\,(D(f^*_+ - h_i) - D(f^*_- - h_j))\big](\alpha + \gamma\tau_0)\Big],
              \quad \tau_0 = -m_g/s,

    with :math:`D = h_i - h_j` and the teacher's one-sided traces :math:`f^*_\pm` (its winner just past
    :math:`\tau_0` on i's side, :math:`g > 0`, and on j's side).
    """
    pl = _PairLines(space, "gap_slope")
    sl = space.slices
    has_teacher = "teacher_logits" in sl
    I, J = pl.tops[:, 0], pl.tops[:, 1]

    def component(k, y, tau):
        lo, hi = pl.interval(k, y, tau)
        t0 = -k["m_g"] / k["s"]  # (P,): where g_ij = 0 on each pair's line
        y0 = y[:, None, :] + (t0 - tau)[..., None] * k["gamma"]  # (n, P, q) on the surface g_ij = 0
        h = y0[..., sl["outputs"]]
        ar = torch.arange(len(pl.pairs), device=y.device)
        hi_, hj = h[:, ar, I.to(y.device)], h[:, ar, J.to(y.device)]
        D = hi_ - hj
        if has_teacher:  # g_ij = m_g + sτ grows with τ: i's side is τ > τ_0
            ta, th = y0[..., sl["teacher_logits"]], y0[..., sl["teacher_outputs"]]
            tg = k["gamma"][:, sl["teacher_logits"]].expand_as(ta)
            fp = th.gather(2, _winner(ta, tg, 1.0)[..., None])[..., 0]
            fm = th.gather(2, _winner(ta, tg, -1.0)[..., None])[..., 0]
        else:
            fp, fm = hi_, hj
        bracket = g1_bracket(D, fp, hi_, fm, hj)
        on = (lo < t0) & (t0 < hi)
        return torch.where(on, phi(t0) / k["s"] * bracket, 0.0).sum(1)

    return run_conditional(lambda d: pl.per_component(d, component), pl.draws, opts, sampling,
                           {"estimator": "pairwise conditioning"})
