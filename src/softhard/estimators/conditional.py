r"""Conditional Monte Carlo across the interface for a linear router under a Gaussian (mixture) law [beyond].

For the pair (i, j) put :math:`g = a_i - a_j = m_g + s\,\tau` with :math:`\tau \sim N(0, 1)`; writing
:math:`Y = M + F\xi` (:math:`FF^\top = C`, :math:`\xi \sim N(0, I_q)`, Y the score-space vector of
:mod:`.score_space`) and :math:`e = F^\top v/s` (:math:`v = e_i - e_j`), :math:`\tau = e\cdot\xi` and
:math:`Y = \alpha + \gamma\tau` with :math:`\alpha = M + F(\xi - (e\cdot\xi)e)` independent of τ and
:math:`\gamma = Fe`. Given α the set where {i, j} are the top two logits is an interval :math:`[l, u]` of τ
(all logits are affine in τ), so

.. math:: E[\phi(X)] = \sum_{i<j} E_\alpha\Big[\int_l^u \phi(\alpha + \gamma\tau)\,\varphi(\tau)\,d\tau\Big]

for any per-sample function φ. Items:

1. the line of a pair through a draw: :math:`Y = \alpha + \gamma\tau`, as above;
2. the interval :math:`[l, u]` where i and j are the top two along it (:meth:`_PairLines.interval`);
3. shifted draws for the tails. The outer expectation over :math:`\xi_\perp` hides rare events: the pair's region
   on its surface can lie many standard deviations from the centre (K = 3 under N((5.2, 0), I): plain draws
   never reach it and the estimate lost 0.2 % with an error bar of 1e-4 %), or a common region can end at a
   far plane (the loss beyond it, 5e-5, was never seen). Each pair p has shifts :math:`\mu_{p,m} \perp e`
   (:func:`_pair_shifts`: the region's point of least norm and the feet of far planes) with weights
   :math:`\pi_{p,m}` (:math:`\mu_{p,0} = 0`), and every draw ξ contributes, deterministically for every m,
   :math:`\pi_{p,m}\,t_p(\xi + \mu_{p,m})\,\varphi(\xi + \mu_{p,m}) / \sum_{m'} \pi_{p,m'}
   \varphi(\xi + \mu_{p,m} - \mu_{p,m'})` (the balance heuristic of multiple importance sampling): unbiased for
   :math:`E[t_p]` for any shifts, with the rare parts sampled in proportion;
4. the inner integral: exact for β(w) (a Gaussian cdf difference over :math:`[l, u] \cap \{|g| \le w\}`, with
   a rounding bound), a point value for the surface integrals (:math:`\tau_0 = -m_g/s`) and Gauss–Legendre for
   the risk gap on panels that follow both the gate and the normal density (:func:`_panel_breaks`).

Derivations, variances and the coverage of the intervals: ``docs/estimators.md``.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch

from .._validate import DTYPE, fail
from ..closed.normal import gauss_legendre, interval_mass, normal_cdf, phi
from ..closed.risk import TAIL_TAU, g1_bracket
from ..model.moe import MoE, hard_from
from ..model.routers import LinearRouter
from .reducer import Estimate, Sampling
from .score_space import ScoreSpace, StandardDraws, gaussian_factors, pick_component, run_conditional, score_space

__all__ = ["boundary_mass_linear", "risk_gap_linear", "gap_slope_linear", "setup_seconds", "beta_draw_seconds",
           "gap_draw_seconds", "slope_draw_seconds"]

# rounding of a normal cdf difference: (8 + 2t²) ulps of each cdf value Φ(t) it subtracts (tail side): 8 for the
# difference and erfc itself, 2t² for the argument's own rounding (a few ulps of t), which d log Φ/dt ≈ |t| amplifies
_ULPS = 8.0
_NORMAL_REACH = 8.0  # the density is integrated up to 8 standard units beyond the interface and the centre


@functools.lru_cache(maxsize=4096)
def _panel_breaks(m_g: float, s: float, temp: float) -> tuple[tuple[float, float], torch.Tensor]:
    r"""The range ``(lo, hi)`` of τ integrated across the interface of a pair and the panel breaks inside it
    (τ units; :math:`g = m_g + s\tau`, interface at :math:`\tau_0 = -m_g/s`) for the gap at temperature ``temp``.

    The integrand is the gate's :math:`O(e^{-|g|/T})` (Lemma 4.1) times the normal density φ(τ). Range:
    :math:`|g| \le T(64 + \tau_0^2/2)`, where the gate is below :math:`e^{-64}` times the density's largest ratio
    :math:`\varphi(0)/\varphi(\tau_0)` over the relevant points, and τ within 8 of
    :math:`[\min(0, \tau_0), \max(0, \tau_0)]`, beyond which φ is below :math:`e^{-32}` of its value at the
    nearer end. Breaks: :math:`g = 0, \pm T 2^k` (each panel's share of the gate falls like
    :math:`e^{-2^k}`) and the normal's own scale, steps :math:`\min(1, 2/|\tau|)`, so that φ changes by at most
    a factor :math:`e^2` on a panel (8-point Gauss–Legendre is then exact to rounding for it)."""
    t0 = -m_g / s
    reach = temp * (TAIL_TAU + 0.5 * t0 * t0)
    lo = max((-reach - m_g) / s, min(0.0, t0) - _NORMAL_REACH)
    hi = min((reach - m_g) / s, max(0.0, t0) + _NORMAL_REACH)
    if not lo < hi:
        return (lo, lo), torch.tensor([lo], dtype=DTYPE)
    k = np.arange(math.ceil(math.log2(reach / temp)) + 1)
    gate = (np.concatenate([-temp * 2.0 ** k[::-1], [0.0], temp * 2.0 ** k]) - m_g) / s
    steps = [0.0]
    for sign in (1.0, -1.0):
        x = 0.0
        while (x < hi) if sign > 0 else (x > lo):
            x += sign * min(1.0, 2.0 / max(1.0, abs(x)))
            steps.append(x)
    pts = np.concatenate([gate, steps])
    return (lo, hi), torch.as_tensor(np.unique(pts[(pts > lo) & (pts < hi)]), dtype=DTYPE)


_RARE_FROM = 1.5  # the pair's surface region this many standard deviations from the draws' centre: sampled there too
_EDGE_FROM = 2.5  # a plane bounding the region this far from the centre gets its own shift
_EDGE_SHARE = 0.1  # the mixture weight of the shifts towards far planes (the unshifted draws keep 0.9)
_MAX_SHIFTS = 8  # shifted copies per pair at most (the farthest planes first)


def _least_distance(G: np.ndarray, h: np.ndarray) -> np.ndarray | None:
    r"""The point of least norm of :math:`\{x : Gx \ge h\}` (``G (m, q)``, ``h (m,)``), or ``None`` when the set is
    empty: least distance programming by non-negative least squares (Lawson & Hanson, ch. 23):
    :math:`u = \arg\min_{u \ge 0} |Eu - f|` with :math:`E = [G^\top; h^\top]`, :math:`f = e_{q+1}`, residual
    :math:`r = Eu - f`; the set is empty iff :math:`r = 0`, else :math:`x = -r_{1..q}/r_{q+1}`."""
    from scipy.optimize import nnls

    E = np.vstack([G.T, h[None, :]])
    f = np.zeros(E.shape[0])
    f[-1] = 1.0
    u, _ = nnls(E, f, maxiter=50 * E.shape[1] + 100)
    r = E @ u - f
    if np.linalg.norm(r) <= 1e-10:
        return None
    return -r[:-1] / r[-1]


def _pair_shifts(F: np.ndarray, M: np.ndarray, e: np.ndarray, gamma: np.ndarray, m_g: float, s: float,
                 i: int, j: int, logits: slice) -> tuple[list[np.ndarray], float]:
    r"""Shifts :math:`\mu \perp e` of the draws ξ for pair (i, j) and the weight of the unshifted draws (module
    docstring, item 3). On the surface :math:`g_{ij} = 0` (:math:`\tau = \tau_0`) the pair is the top two where
    :math:`n_k\cdot\xi_\perp + c_k > 0` for every other k, with :math:`n_k = P_{e^\perp}F^\top(e_i - e_k)` and
    :math:`c_k = (M + \tau_0\gamma)_i - (M + \tau_0\gamma)_k`: a polyhedron R of :math:`\xi_\perp`.

    - The origin outside R (the pair's region is rare): the point of R of least norm, if at least
      :data:`_RARE_FROM` away, and the feet of the violated planes; all draws weigh alike.
    - The origin inside R: the foot of every plane at least :data:`_EDGE_FROM` away (where the region ends: a
      rare loss that plain draws rarely see), sharing the weight :data:`_EDGE_SHARE`.
    """
    K = logits.stop - logits.start
    base = (M + (-m_g / s) * gamma)[logits]  # the draw's centre moved onto the surface along the line
    others = np.array([k for k in range(K) if k not in (i, j)], dtype=int)
    if others.size == 0:
        return [], 1.0
    U = F[logits].T  # (q, K): columns Fᵀe_k
    Nk = U[:, [i]] - U[:, others]  # (q, K - 2): Fᵀ(e_i − e_k)
    Nk = Nk - np.outer(e, e @ Nk)  # projected on e^⊥
    ck = base[i] - base[others]
    flat = np.linalg.norm(Nk, axis=0) <= 1e-12 * max(1.0, np.abs(F).max())
    if bool((flat & (ck <= 0)).any()):
        return [], 1.0  # never the top two on the surface: nothing to find
    rows, rhs = Nk[:, ~flat].T, ck[~flat]
    if rows.shape[0] == 0:
        return [], 1.0
    G, c = rows, rhs
    norm = np.linalg.norm(G, axis=1)
    dist = c / norm  # signed distance of the origin from each plane (> 0: on the region's side)
    order = np.argsort(-np.abs(dist))

    def feet(keep):
        return [-c[k] * G[k] / norm[k] ** 2 for k in order if keep(dist[k])][:_MAX_SHIFTS]

    if bool((dist < 0).any()):
        x = _least_distance(G, -c)
        if x is None or np.linalg.norm(x) < _RARE_FROM or _least_distance(G, 1e-7 * norm - c) is None:
            return [], 1.0  # an empty or flat region, or one that plain draws reach
        shifts = [x] + feet(lambda t: t < -_RARE_FROM)
        share = None
    else:
        shifts = feet(lambda t: t >= _EDGE_FROM)
        share = _EDGE_SHARE
    kept = []
    for x in shifts:  # one shift per place: planes of a low-rank law often share their feet
        if all(np.linalg.norm(x - y) > 0.25 for y in kept):
            kept.append(x)
    kept = kept[:_MAX_SHIFTS]
    if not kept:
        return [], 1.0
    return kept, (1.0 / (1 + len(kept)) if share is None else 1.0 - share)


class _PairLines:
    r"""For every pair (i, j) of a K-expert linear router and every draw :math:`\xi` of a component
    :math:`Y = M + F\xi`: the score-space line :math:`Y = \alpha + \gamma\tau` along which
    :math:`g_{ij} = m_g + s\tau` (:math:`\tau = e\cdot\xi`, :math:`\alpha = Y - \tau\gamma`), and the interval
    :math:`[l, u]` of τ on which i and j are the top two logits (module docstring, item 2), for the draw itself
    and for its shifted copies :math:`\xi + \mu_{p,m}` (item 3). Everything but ``Y`` and τ is a per-component
    constant."""

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
        self.shifted_pairs = 0
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
            m_g = V @ M
            mu, logpi = self._shifts(F, M, e, gamma, m_g, s, sl)
            self.consts.append(dict(e=e, gamma=gamma, m_g=m_g, s=s, c1=c1, inv=1.0 / c1,
                                    lower=others & (c1 > 0), upper=others & (c1 < 0), flat=others & (c1 == 0),
                                    mu=mu, Fmu=mu @ F.T, logpi=logpi, half=0.5 * (mu * mu).sum(-1),
                                    gram=mu @ mu.transpose(1, 2), tops=self.tops))

    def _shifts(self, F, M, e, gamma, m_g, s, sl):
        """``mu (P, S, q)`` (slot 0: no shift) and ``log π (P, S)`` (equal weights, ``-inf`` for unused slots)."""
        Fn, Mn, en, gn = (t.detach().cpu().numpy() for t in (F, M, e, gamma))
        per = [_pair_shifts(Fn, Mn, en[p], gn[p], float(m_g[p]), float(s[p]), i, j, sl)
               for p, (i, j) in enumerate(self.pairs)]
        S = 1 + max(len(x) for x, _ in per)
        mu = torch.zeros(len(per), S, self.q, dtype=DTYPE)
        logpi = torch.full((len(per), S), -math.inf, dtype=DTYPE)
        for p, (x, w0) in enumerate(per):
            logpi[p, 0] = math.log(w0)
            if x:
                mu[p, 1:1 + len(x)] = torch.as_tensor(np.array(x), dtype=DTYPE)
                logpi[p, 1:1 + len(x)] = math.log((1 - w0) / len(x))
                self.shifted_pairs += 1
        return mu, logpi

    @property
    def draws(self) -> StandardDraws:
        return StandardDraws(1, self.q)

    def info(self, estimator: str = "pairwise conditioning") -> dict:
        return {"estimator": estimator, "shifted_pairs": self.shifted_pairs}

    def per_component(self, draws: torch.Tensor, fn) -> torch.Tensor:
        r""":math:`\sum_p \sum_m \pi_{p,m}\,w_p(\xi + \mu_{p,m})\,t_p(\xi + \mu_{p,m})` for the draws
        ``(N, 1 + q)`` of each component, in row order, with ``fn(consts, y (n, P, q), tau (n, P)) -> (n, P, ...)``
        the pair terms :math:`t_p` at the (shifted) draws and :math:`w_p` the likelihood ratio of the standard law
        to the pair's mixture of shifted ones (module docstring, item 3)."""
        comp, xi = pick_component(self.weights, draws[:, 0]), draws[:, 1:]
        out = None
        for c in range(self.C):
            m = comp == c
            if not bool(m.any()):
                continue
            k = {key: v.to(draws.device) for key, v in self.consts[c].items()}
            x = xi[m]
            y = self.means[c].to(draws) + x @ self.factors[c].to(draws).T  # (n, q)
            tau = x @ k["e"].T  # (n, P): unchanged by the shifts, which are orthogonal to e
            proj = torch.einsum("nq,psq->nps", x, k["mu"])  # (n, P, S): μ_{p,m'}·ξ
            v = 0.0
            for slot in range(k["mu"].shape[1]):
                idx = torch.isfinite(k["logpi"][:, slot]).nonzero()[:, 0]  # the pairs with a draw in this slot
                if idx.numel() == 0:
                    continue
                ks = {key: val[idx] for key, val in k.items()}  # every constant is indexed by pair first
                ys = y[:, None, :] + ks["Fmu"][None, :, slot]  # (n, P', q): the draw ξ + μ_{p,slot}
                t = fn(ks, ys, tau[:, idx])
                if k["mu"].shape[1] > 1:  # the balance-heuristic weight π_m φ(x) / Σ_m' π_m' φ(x − μ_m'), x = ξ + μ_m
                    expo = ks["logpi"][None] + proj[:, idx] + ks["gram"][None, :, :, slot] - ks["half"][None]
                    wt = (ks["logpi"][:, slot][None] - torch.logsumexp(expo, -1)).exp()  # (n, P')
                    t = wt.reshape(*wt.shape, *([1] * (t.dim() - 2))) * t
                v = v + t.sum(1)
            if out is None:
                out = torch.zeros(draws.shape[0], *v.shape[1:], dtype=v.dtype, device=v.device)
            out[m] = v
        return out

    def interval(self, k: dict, y: torch.Tensor, tau: torch.Tensor):
        r"""``(l, u)`` each ``(n, P)`` for per-pair points ``y (n, P, q)``: :math:`a_{top} - a_k = c_0 + c_1\tau > 0`
        for top ∈ {i, j}, k ∉ {i, j}."""
        a = y[..., self.space.slices["logits"]]  # (n, P, K)
        top = k["tops"][None].expand(a.shape[0], -1, -1)  # (n, P, 2)
        d0 = a.gather(2, top)[..., None] - a[:, :, None, :]  # (n, P, 2, K): a_top - a_k at the draw
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

    (module docstring, items 2 and 4): on the interval where i, j are the top two, :math:`\Delta = |g_{ij}|`.
    Terms are bounded by 1 and smooth in the draws, so ``sampling="qmc"`` (the default) pays.
    ``widths``: ``(W,)``; returns an :class:`Estimate` over ``widths``.
    """
    pl = _PairLines(score_space(router, law), "boundary_mass")

    def component(k, y, tau):
        lo, hi = pl.interval(k, y, tau)
        w = widths.to(y)[None, None, :]
        a = torch.maximum(lo[..., None], ((-w - k["m_g"][:, None]) / k["s"][:, None]))
        b = torch.minimum(hi[..., None], ((w - k["m_g"][:, None]) / k["s"][:, None]))
        nd = normal_cdf  # rounding of the cdf difference: (8 + 2t²) ulps of each cdf value Φ(t) it subtracts
        upper = a > 0
        fa, fb = (_ULPS + 2 * a.clamp(-40, 40) ** 2), (_ULPS + 2 * b.clamp(-40, 40) ** 2)
        rounding = torch.finfo(DTYPE).eps * torch.where(upper, fa * nd(-a) + fb * nd(-b), fa * nd(a) + fb * nd(b))
        return torch.cat([interval_mass(a, b), torch.where(b > a, rounding, 0.0)], -1)

    def terms(d):
        return pl.per_component(d, component)

    W = widths.numel()
    est = run_conditional(terms, pl.draws, opts, sampling, pl.info(),
                          bound=torch.cat([(widths > 0).to(DTYPE), torch.zeros(W, dtype=DTYPE)]).numpy())
    info = {key: (np.asarray(v)[:W] if np.ndim(v) == 1 and np.size(v) == 2 * W else v) for key, v in est.info.items()}
    out = est[:W].replace(info=info)
    rounding = np.abs(np.asarray(est.value)[W:])  # the mean rounding bound of the terms
    return out.replace(error_bound=np.asarray(out.error_bound) + rounding, info={"rounding_bound": rounding})


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

    (noise cancels). Gauss–Legendre (8 nodes) on the panels of :func:`_panel_breaks` (dyadic in g for the gate,
    on the normal's own scale for the density) and split at every crossing of two teacher logits, where
    :math:`f^*` jumps (module docstring, item 4).
    """
    pl = _PairLines(space, "risk_gap")
    sl = space.slices
    has_teacher = "teacher_logits" in sl
    t = taus.to(DTYPE)

    gx, gw = gauss_legendre(8, like=torch.zeros((), dtype=DTYPE))

    def integrals(al, ga, a, b, brk, temp):
        """``(m,)``: the integral across the interface along m lines (``al (m, q)``: the line's point at τ = 0,
        ``ga (m, q)``: its direction γ, ``[a, b]``: the range integrated, ``brk (m, B)``: panel breaks)."""
        cuts = [a[:, None], b[:, None], brk]
        if has_teacher:  # crossings of two teacher logits along the line: f* jumps there
            ta, tg = al[:, sl["teacher_logits"]], ga[:, sl["teacher_logits"]]
            i, j = torch.triu_indices(ta.shape[-1], ta.shape[-1], 1, device=al.device)
            cuts.append((-(ta[:, i] - ta[:, j]) / (tg[:, i] - tg[:, j])).nan_to_num(0.0, 0.0, 0.0))
        pts = torch.sort(torch.cat(cuts, -1), -1).values
        pts = torch.minimum(torch.maximum(pts, a[:, None]), b[:, None])
        half, mid = (pts[:, 1:] - pts[:, :-1]) / 2, (pts[:, 1:] + pts[:, :-1]) / 2
        nodes = (mid[..., None] + half[..., None] * gx.to(al)).flatten(1)  # (m, N)
        wts = (half[..., None] * gw.to(al)).flatten(1) * phi(nodes)
        yy = al[:, None, :] + nodes[..., None] * ga[:, None, :]  # (m, N, q)
        lg, h = yy[..., sl["logits"]], yy[..., sl["outputs"]]
        f0 = h.gather(-1, lg.argmax(-1, keepdim=True))[..., 0]
        e = torch.exp((lg - lg.amax(-1, keepdim=True)) / temp)  # softmax weights, unnormalised
        ft = (e * h).sum(-1) / e.sum(-1)
        fs = hard_from(yy[..., sl["teacher_logits"]], yy[..., sl["teacher_outputs"]]) if has_teacher else f0
        return (wts * ((fs - ft) ** 2 - (fs - f0) ** 2)).sum(-1)

    def component(k, y, tau):
        lo, hi = pl.interval(k, y, tau)
        out = torch.zeros(*lo.shape, len(t), dtype=DTYPE, device=y.device)
        for q, temp in enumerate(t):
            parts = [_panel_breaks(float(mg), float(sg), float(temp)) for mg, sg in zip(k["m_g"], k["s"])]
            ends = torch.tensor([e for e, _ in parts], dtype=DTYPE, device=y.device)
            a, b = torch.maximum(lo, ends[:, 0]), torch.minimum(hi, ends[:, 1])
            r, p = (a < b).nonzero(as_tuple=True)  # only the lines that cross their pair's interval
            if r.numel() == 0:
                continue
            B = max(len(x) for _, x in parts)
            brk = torch.stack([torch.cat([x, x[-1:].expand(B - len(x))]) for _, x in parts]).to(y)
            al = y[r, p] - tau[r, p, None] * k["gamma"][p]
            crossings = (lambda k_: k_ * (k_ - 1) // 2)(sl["teacher_logits"].stop - sl["teacher_logits"].start
                                                        if has_teacher else 0)
            rows = max(1, (1 << 22) // (8 * (B + 3 + crossings) * y.shape[2]))  # (rows, nodes, q) near 2**22
            out[r, p, q] = torch.cat([integrals(al[c:c + rows], k["gamma"][p[c:c + rows]], a[r, p][c:c + rows],
                                                b[r, p][c:c + rows], brk[p[c:c + rows]], float(temp))
                                      for c in range(0, r.numel(), rows)])
        return out

    return run_conditional(lambda d: pl.per_component(d, component), pl.draws, opts, sampling,
                           pl.info("pairwise conditioning + Gauss-Legendre in g"))


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

    def component(k, y, tau):
        lo, hi = pl.interval(k, y, tau)
        t0 = -k["m_g"] / k["s"]  # (P,): where g_ij = 0 on each pair's line
        y0 = y + (t0 - tau)[..., None] * k["gamma"]  # (n, P, q) on the surface g_ij = 0
        h = y0[..., sl["outputs"]]
        ar = torch.arange(k["tops"].shape[0], device=y.device)
        hi_, hj = h[:, ar, k["tops"][:, 0]], h[:, ar, k["tops"][:, 1]]
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
        return torch.where(on, phi(t0) / k["s"] * bracket, 0.0)

    return run_conditional(lambda d: pl.per_component(d, component), pl.draws, opts, sampling, pl.info())


# --- cost models (seconds, one thread; benchmarks/scale.py) -----------------------------------------------------


def setup_seconds(K: int, q: int) -> float:
    """Building the pair lines once: per pair, its constraint planes and, where the pair's region is rare, a least
    distance program over its K − 2 planes in q dimensions."""
    pairs = K * (K - 1) / 2
    return 1e-3 + pairs * (5e-4 + 1e-9 * q * K * K)


def beta_draw_seconds(K: int, widths: int) -> float:
    """β: per draw, per pair, the interval of the line and a normal cdf difference per width."""
    return 1e-6 + 3e-7 * K * (K - 1) / 2 * (1 + (widths - 1) / 4)


def gap_draw_seconds(K: int, q: int, temps: int, teacher_K: int = 0) -> float:
    """The gap: per draw, every pair's interval, then Gauss–Legendre along the lines that cross their pair's
    interval (about K − 1 of them: a line passes through few top-two cells), 8 nodes on ~25 panels plus the
    teacher's crossings, each node O(q)."""
    pairs = K * (K - 1) / 2
    nodes = 8 * (25 + teacher_K * (teacher_K - 1) / 2)
    return 1e-6 + 3e-7 * pairs + temps * (K - 1) * nodes * q * 3e-9


def slope_draw_seconds(K: int, q: int) -> float:
    """G_1: per draw, per pair, the interval and the bracket at the surface point, O(q)."""
    return 1e-6 + K * (K - 1) / 2 * (3e-7 + 3e-9 * q)
