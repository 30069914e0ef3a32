r"""Fast and precise estimators (issue 8): score-space sampling, conditional Monte Carlo across the
interface, line sampling for smooth routers, and the ``method="auto"`` rule. Derivations, variance
arguments and the rule are in ``docs/estimators.md``; every estimator feeds per-draw terms to the one
reducer :func:`~softhard.estimate.monte_carlo`, so seeds, standard errors, ``target_rel_error``,
``chunk``/``device`` and QMC work as everywhere else.

1. **Score space** [beyond]. For ``X ~ N(m, S)`` and linear maps :math:`Y = W X + b` (router logits,
   expert outputs, a linear teacher's logits and outputs stacked, ``q`` rows) :math:`Y \sim N(Wm + b,
   W S W^\top)`: sample Y directly, at a cost independent of d (:func:`score_space`).
2. **Conditional MC for a linear router** [beyond]. For the pair (i, j) put
   :math:`g = a_i - a_j = m_g + s\,\tau` with :math:`\tau \sim N(0, 1)`; writing :math:`Y = M + F\xi`
   (:math:`FF^\top = C`, :math:`\xi \sim N(0, I_q)`) and :math:`e = F^\top v/s` (:math:`v = e_i - e_j`),
   :math:`\tau = e\cdot\xi` and :math:`Y = \alpha + \gamma\tau` with :math:`\alpha = M + F(\xi - (e\cdot\xi)e)`
   independent of τ and :math:`\gamma = Fe`. Given α the set where {i, j} are the top two logits is an
   interval :math:`[l, u]` of τ (all logits are affine in τ), so

   .. math:: E[\phi(X)] = \sum_{i<j} E_\alpha\Big[\int_l^u \phi(\alpha + \gamma\tau)\,\varphi(\tau)\,d\tau\Big]

   for any per-sample function φ. The inner integral is exact for β(w) (a Gaussian cdf difference
   over :math:`[l, u] \cap \{|g| \le w\}`), a point value for the surface integrals (:math:`\tau_0 = -m_g/s`)
   and a Gauss–Legendre quadrature for the risk gap.
3. **Lines with the Crofton weight** [beyond] (any router, Gaussian or mixture law): lines
   :math:`X(t) = m + L(z + t e)`, e uniform on the sphere, z standard normal on :math:`e^\perp`,
   t ~ N(0, 1). Crossings of a level set are found on a grid (refined near the set) and by
   Illinois regula falsi; for a surface :math:`\Sigma = \{f = c\}` and :math:`H \ge 0`

   .. math:: \int_\Sigma \frac{p\,H}{|\nabla f|}\,dH^{d-1}
             = \frac{1}{\kappa_d}\,E\Big[\sum_{t_c:\,f(X(t_c)) = c}
               \frac{\varphi(t_c)\,H(X(t_c))}{|L^\top\nabla f(X(t_c))|}\Big],
             \qquad \kappa_d = E|e_1| = \frac{\Gamma(d/2)}{\sqrt\pi\,\Gamma((d+1)/2)},

   unbiased with bounded terms where :math:`|\nabla f| \ge c_0` (Assumption 3.4), even for lines that
   cross several times. It gives ψ_ij(0) (3.8), β(w) (level sets of Δ at a random level
   :math:`s = wU`) and :math:`G_1`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ._validate import DTYPE, fail
from .estimate import Estimate, monte_carlo
from .experts import ConstantExperts, LinearExperts
from .gaussian import gaussian_components
from .laws import _U_EPS, Gaussian, GaussianMixture, Law, _normal, _uniform
from .moe import HardTeacher, MoE, Teacher, hard_from
from .routers import LinearRouter, _cast

__all__ = ["ScoreSpace", "score_space", "crofton_constant", "resolve_method", "METHODS", "SAMPLINGS",
           "CONDITIONAL_TARGET"]

METHODS = ("auto", "mc", "qmc", "conditional", "exact")
SAMPLINGS = ("mc", "qmc")
CONDITIONAL_TARGET = 5e-3  # default relative error at which a conditional estimator stops (n is then a budget)
_LN2 = math.log(2.0)
_GL_X, _GL_W = (torch.tensor(a, dtype=DTYPE) for a in np.polynomial.legendre.leggauss(8))
_TAIL_TAU = 64.0  # the gap integrand is O(exp(-|g|/τ)): cut at |g| = 64τ (e^-64 < 1e-27)
_LAYERS = 2.0 ** torch.arange(7, dtype=DTYPE)  # quadrature breaks at |g| = τ, 2τ, ..., 64τ
_ROWS = 2048  # draws per vectorised batch inside the terms (memory), never changes a result


def resolve_method(method, where: str, exact: bool, conditional: bool, fallback: str = "mc",
                   methods: tuple = METHODS, conditional_rule: str = "a Gaussian or GaussianMixture law") -> str:
    r"""The estimator that ``method`` names for one call (``docs/estimators.md``, "Choosing").

    ``"auto"``: ``"exact"`` where a closed form applies, else ``"conditional"`` where a conditional
    estimator applies, else ``fallback``. An explicit ``"conditional"`` where none applies is an error;
    an explicit ``"exact"`` is left to the closed form, which says why it does not apply.
    """
    if method not in methods:
        fail("method", where, f"one of {methods}", method)
    if method == "auto":
        return "exact" if exact else "conditional" if conditional else fallback
    if method == "conditional" and not conditional:
        fail("method", where, f"one of {tuple(m for m in methods if m != 'conditional')} here: 'conditional' needs "
             f"{conditional_rule}", method)
    return method


def exact_estimate(value, where: str) -> Estimate:
    """A closed-form value as an :class:`Estimate` (``stderr = 0``, ``n = 0``, method ``"exact"``)."""
    v = np.asarray(value, dtype=np.float64)
    return Estimate(float(v) if v.ndim == 0 else v, 0.0 if v.ndim == 0 else np.zeros_like(v), 0, "exact", None,
                    {"closed_form": where})


# ----------------------------------------------------------------------------------------------------
# 1. Score space
# ----------------------------------------------------------------------------------------------------


def _linear_maps(model) -> list[tuple[str, torch.Tensor, torch.Tensor]] | None:
    """``[(name, W (k, d), b (k,)), ...]`` for a LinearRouter (``"logits"``), or an MoE with a LinearRouter and
    linear (or constant) experts (``"logits"``, ``"outputs"``); ``None`` when a map is not linear."""
    router = model.router if isinstance(model, MoE) else model
    if not isinstance(router, LinearRouter):
        return None
    maps = [("logits", router.weight, router.bias)]
    if isinstance(model, MoE):
        e = model.experts
        if isinstance(e, LinearExperts):
            maps.append(("outputs", e.weight, e.bias))
        elif isinstance(e, ConstantExperts):
            maps.append(("outputs", torch.zeros(e.num_experts, router.d, dtype=e.values.dtype), e.values))
        else:
            return None
    return maps


def _teacher_maps(moe: MoE, teacher):
    """Linear maps of a teacher (``[]`` for the student's own hard model), or ``None`` (not a hard linear MoE)."""
    if teacher is None or (isinstance(teacher, HardTeacher) and teacher.moe is moe):
        return []
    tm = teacher.moe if isinstance(teacher, HardTeacher) else teacher if isinstance(teacher, MoE) else None
    maps = _linear_maps(tm) if tm is not None else None
    if maps is None or len(maps) != 2:
        return None
    return [("teacher_logits", *maps[0][1:]), ("teacher_outputs", *maps[1][1:])]


@dataclass(frozen=True)
class ScoreSpace:
    r"""The joint Gaussian (mixture) law of stacked linear maps :math:`Y = WX + b` of ``X ~ law``.

    Attributes:
        law: a :class:`~softhard.laws.Gaussian` or :class:`~softhard.laws.GaussianMixture` on
            :math:`\mathbb R^q` (covariance :math:`W S W^\top`, usually singular when q > d); sample it
            with :func:`~softhard.estimate.monte_carlo` like any law, at a cost independent of d.
        slices: ``name -> slice`` of the q coordinates: ``"logits"`` and, for an MoE, ``"outputs"``, and for
            a linear teacher ``"teacher_logits"``, ``"teacher_outputs"``.
    """

    law: Law
    slices: dict


def score_space(model, law, teacher=None) -> ScoreSpace:
    r"""Score-space law of a linear model under a Gaussian (mixture) input law [beyond]: the router logits
    (and expert outputs, and a hard linear teacher's logits and outputs) stacked, :math:`Y = WX + b`,

    .. math:: Y \sim \sum_c \omega_c\, N(W m_c + b,\; W S_c W^\top),

    so that Monte Carlo over Y costs O(q²) per sample whatever d (e.g.
    ``monte_carlo(lambda y: top_two_margin(y) <= w, score_space(router, law).law, n)`` is β(w)).

    Args:
        model: a :class:`~softhard.routers.LinearRouter`, or an :class:`~softhard.moe.MoE` with a LinearRouter
            and linear or constant experts.
        law: Gaussian or GaussianMixture on ℝ^d.
        teacher: (MoE only) ``None``, or a hard linear MoE (or :class:`~softhard.moe.HardTeacher` of one).

    Returns:
        :class:`ScoreSpace`.
    """
    where = "score_space"
    maps = _linear_maps(model)
    if maps is None:
        fail("model", where, "a LinearRouter or an MoE with a LinearRouter and linear or constant experts",
             type(model).__name__, TypeError)
    tmaps = _teacher_maps(model, teacher) if isinstance(model, MoE) else [] if teacher is None else None
    if tmaps is None:
        fail("teacher", where, "None or a hard linear MoE (with an MoE model)", type(teacher).__name__, TypeError)
    comps = gaussian_components(law, where)
    maps += tmaps
    W = torch.cat([m[1].to(DTYPE) for m in maps])
    b = torch.cat([m[2].to(DTYPE) for m in maps])
    if W.shape[1] != law.d:
        fail("law", where, f"a law on R^{W.shape[1]} (the model's input dimension)", f"a law on R^{law.d}")
    slices, start = {}, 0
    for name, Wk, _ in maps:
        slices[name] = slice(start, start + Wk.shape[0])
        start += Wk.shape[0]
    means, covs = [], []
    for _, c in comps:
        Wc = W.to(c.mean)
        C = Wc @ c.cov @ Wc.T
        means.append(Wc @ c.mean + b.to(c.mean))
        covs.append(0.5 * (C + C.T))
    if len(comps) == 1:
        return ScoreSpace(Gaussian(means[0], covs[0]), slices)
    return ScoreSpace(GaussianMixture(law.weights, torch.stack(means), torch.stack(covs)), slices)


class _Draws(Law):
    """Standard draws for the conditional estimators: ``(N, u + k)``, ``u`` uniforms then ``k`` normals."""

    def __init__(self, uniforms: int, normals: int):
        self.u, self.k = uniforms, normals
        self.d = self.qmc_dim = uniforms + normals

    def sample(self, n, generator=None):
        n = self._n(n)
        u = _uniform(generator, (n, self.u), DTYPE, "cpu")
        return torch.cat([u, _normal(generator, (n, self.k), DTYPE, "cpu")], 1)

    def from_uniform(self, u):
        u = u.to(DTYPE)
        return torch.cat([u[:, :self.u], torch.special.ndtri(u[:, self.u:].clamp(_U_EPS, 1 - _U_EPS))], 1)


def _pick(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Component index of each draw from a uniform ``u (N,)``."""
    cum = torch.cumsum(weights.to(u), 0)
    return torch.searchsorted(cum, u.contiguous(), right=True).clamp_max(len(weights) - 1)


def _factors(law: Law) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``(weights (C,), means [(q,)], factors [(q, q)])`` of a Gaussian (mixture) law, ``F Fᵀ = cov``."""
    comps = gaussian_components(law, "score_space")
    w = torch.tensor([c[0] for c in comps], dtype=DTYPE)
    return w, [c[1].mean for c in comps], [c[1].scale_tril for c in comps]


def _by_component(comp: torch.Tensor, C: int, fn, *outs: torch.Tensor):
    """Fill ``outs`` row-wise with ``fn(c, mask)`` for each component ``c`` (a loop over components only)."""
    for c in range(C):
        m = comp == c
        if bool(m.any()):
            for o, v in zip(outs, fn(c, m)):
                o[m] = v


def _batched(fn, draws: torch.Tensor) -> torch.Tensor:
    """``fn`` on row batches of ``_ROWS`` draws, concatenated (bounded memory; per-row results)."""
    return torch.cat([fn(draws[i:i + _ROWS]) for i in range(0, draws.shape[0], _ROWS)])


def _interval_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r""":math:`[\Phi(b) - \Phi(a)]_+`, accurate in both tails."""
    nd = torch.special.ndtr
    return torch.where(a > 0, nd(-a) - nd(-b), nd(b) - nd(a)).clamp_min(0.0)


def _phi(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


# ----------------------------------------------------------------------------------------------------
# 2. Conditional Monte Carlo for a linear router under a Gaussian (mixture) law
# ----------------------------------------------------------------------------------------------------


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
        self.weights, self.means, self.factors = _factors(space.law)
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
    def draws(self) -> _Draws:
        return _Draws(1, self.q)

    def per_component(self, draws: torch.Tensor, fn) -> torch.Tensor:
        """``fn(consts, y (n, q), tau (n, P))`` for the draws ``(N, 1 + q)`` of each component, in row order."""
        comp, xi = _pick(self.weights, draws[:, 0]), draws[:, 1:]
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


def _check_sampling(sampling, where: str) -> str:
    if sampling not in SAMPLINGS:
        fail("sampling", where, f"one of {SAMPLINGS}", sampling)
    return sampling


def _run(terms, draws: Law, n, seed, sampling: str, where: str, mc: dict, info: dict) -> Estimate:
    """Reduce conditional terms with the one reducer; ``n`` is a budget: unless ``target_rel_error`` is given
    (``None``: use all ``n`` draws), sampling stops at ``CONDITIONAL_TARGET``."""
    mc = {"target_rel_error": CONDITIONAL_TARGET, **mc}
    est = monte_carlo(lambda d: _batched(terms, d), draws, n, seed, method=_check_sampling(sampling, where), **mc)
    return Estimate(est.value, est.stderr, est.n, "conditional", est.seed, {**est.info, "sampling": sampling, **info})


def boundary_mass_linear(router: LinearRouter, law, widths: torch.Tensor, n: int, seed, sampling: str = "qmc",
                         **mc) -> Estimate:
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
        return _interval_mass(a, b).sum(1)

    def terms(d):
        return pl.per_component(d, component)

    return _run(terms, pl.draws, n, seed, sampling, "boundary_mass", mc, {"estimator": "pairwise conditioning"})


def linear_gap_space(moe: MoE, law, teacher) -> ScoreSpace | None:
    """:func:`score_space` of (logits, outputs[, teacher logits, teacher outputs]) when the model and teacher are
    linear and the law Gaussian (mixture); ``None`` otherwise (then there is no conditional linear estimator)."""
    if not isinstance(law, (Gaussian, GaussianMixture)) or not isinstance(moe, MoE):
        return None
    maps = _linear_maps(moe)
    if maps is None or len(maps) != 2 or _teacher_maps(moe, teacher) is None:
        return None
    return score_space(moe, law, teacher)


def _winner(a: torch.Tensor, slope: torch.Tensor, side: float) -> torch.Tensor:
    """Hard winner of logits ``a (..., K)`` moving along ``slope`` just past the point (side ±1): ties within
    1e-9 broken by the larger ``side·slope``, then by the lowest index (2.9)."""
    top = a.amax(-1, keepdim=True)
    tied = a >= top - 1e-9 * (1.0 + top.abs())
    return torch.where(tied, side * slope, -math.inf).argmax(-1)


def risk_gap_linear(moe: MoE, law, taus: torch.Tensor, teacher, space: ScoreSpace, n: int, seed,
                    sampling: str = "qmc", **mc) -> Estimate:
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
            lim = _TAIL_TAU * temp
            a = torch.clamp(lo[:, p], min=float((-lim - mg) / sg))
            b = torch.clamp(hi[:, p], max=float((lim - mg) / sg))
            layers = (torch.cat([-temp * _LAYERS.flip(0), torch.zeros(1), temp * _LAYERS]).to(y) - mg) / sg
            pts = torch.sort(torch.cat([a[:, None], b[:, None], layers.expand(y.shape[0], -1), *brk_t], 1), 1).values
            pts = torch.minimum(torch.maximum(pts, a[:, None]), torch.maximum(a, b)[:, None])
            half, mid = (pts[:, 1:] - pts[:, :-1]) / 2, (pts[:, 1:] + pts[:, :-1]) / 2
            nodes = (mid[..., None] + half[..., None] * _GL_X.to(y)).flatten(1)  # (n, nodes)
            wts = (half[..., None] * _GL_W.to(y)).flatten(1) * _phi(nodes)
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

    return _run(lambda d: pl.per_component(d, component), pl.draws, n, seed, sampling, "risk_gap", mc,
                {"estimator": "pairwise conditioning + Gauss-Legendre in g"})


def gap_slope_linear(moe: MoE, law, teacher, space: ScoreSpace, n: int, seed, sampling: str = "qmc",
                     **mc) -> Estimate:
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
        bracket = (2 * _LN2 - 1) * D * D + 2 * _LN2 * (D * (fp - hi_) - D * (fm - hj))
        on = (lo < t0) & (t0 < hi)
        return torch.where(on, _phi(t0) / k["s"] * bracket, 0.0).sum(1)

    return _run(lambda d: pl.per_component(d, component), pl.draws, n, seed, sampling, "gap_slope", mc,
                {"estimator": "pairwise conditioning"})


# ----------------------------------------------------------------------------------------------------
# 3. Lines through a Gaussian (mixture) law, crossings, and the Crofton weight
# ----------------------------------------------------------------------------------------------------

_T_MAX = 6.0  # lines are searched on t ∈ [-6, 6]: crossings beyond carry weight φ(t) < 6.1e-9
_GRID = 32  # coarse cells on [-T, T]
_REFINE = 8  # sub-cells of a flagged cell
_DEPTH = 3  # levels of refinement where the winner changes twice inside a sub-cell
_ROOT_TOL = 1e-11  # bracket width at which a crossing is accepted
_ROOT_ITERS = 60


def crofton_constant(d: int) -> float:
    r""":math:`\kappa_d = E|e\cdot n| = \Gamma(d/2)/(\sqrt\pi\,\Gamma((d+1)/2))` for e uniform on the unit
    sphere of ℝ^d and any unit vector n (κ_1 = 1, κ_2 = 2/π)."""
    return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)


class _Lines:
    r"""Lines :math:`X(t) = x_0 + t\,\dot x` with :math:`x_0 = m_c + L_c z`, :math:`\dot x = L_c e` from draws
    ``(N, 2 + 2d)`` = (component uniform, level uniform, ξ (d), η (d)): :math:`e = \eta/|\eta|`,
    :math:`z = \xi - (\xi\cdot e)e`. Then ``X(t)`` with ``t ~ N(0, 1)`` has the law of the component."""

    def __init__(self, router, law):
        self.router, self.d = router, law.d
        self.weights, self.means, self.factors = _factors(law)
        self.kappa = crofton_constant(law.d)

    @property
    def draws(self) -> _Draws:
        return _Draws(2, 2 * self.d)

    def setup(self, draws: torch.Tensor):
        dev, d = draws.device, self.d
        self.comp = _pick(self.weights, draws[:, 0])
        self.level = draws[:, 1]
        xi, eta = draws[:, 2:2 + d], draws[:, 2 + d:]
        e = eta / eta.norm(dim=1, keepdim=True)
        z = xi - (xi * e).sum(1, keepdim=True) * e
        self.x0, self.dx = torch.empty_like(z), torch.empty_like(z)
        F = [f.to(dev) for f in self.factors]
        _by_component(self.comp, len(self.means), lambda c, m: (self.means[c].to(dev) + z[m] @ F[c].T, e[m] @ F[c].T),
                      self.x0, self.dx)

    def logits(self, rows: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Router logits at ``X(t)``: ``rows (B,)`` line indices, ``t (B, m)`` -> ``(B, m, K)``."""
        x = self.x0[rows, None, :] + t[..., None] * self.dx[rows, None, :]
        a = self.router(_cast(self.router, x.reshape(-1, self.d)))
        return a.to(DTYPE).reshape(*t.shape, a.shape[-1])

    def point(self, rows, t):
        return self.x0[rows] + t[:, None] * self.dx[rows]

    def grad_norm(self, rows: torch.Tensor, t: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        r""":math:`|L_c^\top \nabla_x (a_i - a_j)|` at ``X(t)`` (per-row pairs), by autograd: ``(B,)``."""
        x = _cast(self.router, self.point(rows, t)).detach().requires_grad_(True)
        with torch.enable_grad():
            a = self.router(x)
            (g,) = torch.autograd.grad((a.gather(1, i[:, None]) - a.gather(1, j[:, None])).sum(), x)
        g = g.to(DTYPE)
        out = torch.empty(g.shape[0], dtype=DTYPE, device=g.device)
        _by_component(self.comp[rows], len(self.means), lambda c, m: ((g[m] @ self.factors[c].to(g)).norm(dim=1),),
                      out)
        return out


def _near(v: torch.Tensor) -> torch.Tensor:
    """Cells ``(N, G)`` of grid values ``v (N, G+1)`` where ``|v|`` comes within the largest change of ``v``
    over the cell and its two neighbours of 0: where a pair of crossings could hide inside the cell."""
    step = (v[:, 1:] - v[:, :-1]).abs()
    step = torch.maximum(step, torch.maximum(torch.nn.functional.pad(step[:, 1:], (0, 1)),
                                             torch.nn.functional.pad(step[:, :-1], (1, 0))))
    return torch.minimum(v[:, 1:].abs(), v[:, :-1].abs()) <= step


def _top2(a: torch.Tensor):
    """``(Δ, first, second)`` of logits ``a (..., K)``."""
    v, idx = torch.topk(a, 2, dim=-1)
    return v[..., 0] - v[..., 1], idx[..., 0], idx[..., 1]


def _pair_value(a: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """:math:`a_i - a_j` for logits ``a (B, K)`` and per-row indices ``i, j (B,)``."""
    return a.gather(1, i[:, None])[:, 0] - a.gather(1, j[:, None])[:, 0]


def _illinois(fn, tl: torch.Tensor, tr: torch.Tensor, fl: torch.Tensor, fr: torch.Tensor) -> torch.Tensor:
    """Roots of ``fn(idx, t) -> (B,)`` in the brackets ``[tl, tr]`` (``fl > 0`` and ``fr <= 0`` or the reverse),
    vectorised over brackets: the Illinois variant of regula falsi (superlinear; the bracket is kept)."""
    tl, tr, fl, fr = tl.clone(), tr.clone(), fl.clone(), fr.clone()
    side = torch.zeros_like(tl)
    active = torch.arange(tl.shape[0], device=tl.device)
    for _ in range(_ROOT_ITERS):
        active = active[(tr[active] - tl[active]) > _ROOT_TOL]
        if active.numel() == 0:
            break
        a, b, fa, fb, sd = tl[active], tr[active], fl[active], fr[active], side[active]
        tm = (a * fb - b * fa) / (fb - fa)
        tm = torch.where((tm > a) & (tm < b), tm, 0.5 * (a + b))
        fm = fn(active, tm)
        right = (fm > 0) == (fa > 0)  # the root is in [tm, b]
        tl[active], fl[active] = torch.where(right, tm, a), torch.where(right, fm, torch.where(sd == -1, fa / 2, fa))
        tr[active], fr[active] = torch.where(right, b, tm), torch.where(right, torch.where(sd == 1, fb / 2, fb), fm)
        side[active] = right.to(side) * 2 - 1
        hit = active[fm == 0]
        tl[hit] = tr[hit] = tm[fm == 0]
    return 0.5 * (tl + tr)


@dataclass
class _Level:
    """Cells ``[ts[f, k], ts[f, k+1]]`` of lines ``rows[f]`` with logits ``a (F, R+1, K)`` at the points;
    ``leaf (F, R)``: the sub-cells not refined further."""

    rows: torch.Tensor
    ts: torch.Tensor
    a: torch.Tensor
    leaf: torch.Tensor


def _dips(v: torch.Tensor) -> torch.Tensor:
    """Cells ``(F, R)`` of fine-grid values ``v (F, R+1)`` where ``|v|`` may dip to 0 and back inside the cell:
    ``|v|`` falls into the cell and rises out of it (neighbouring slopes), and the smaller endpoint value is
    within the second difference there (16 times a parabola's dip over one cell)."""
    d = v[:, 1:] - v[:, :-1]
    before = torch.cat([d[:, :1], d[:, :-1]], 1)
    after = torch.cat([d[:, 1:], d[:, -1:]], 1)
    sgn = torch.where(v[:, :-1] > 0, 1.0, -1.0).to(v)
    return (before * sgn < 0) & (after * sgn > 0) & (torch.minimum(v[:, 1:].abs(), v[:, :-1].abs())
                                                      <= (after - before).abs())


class _Scan:
    """Router logits along lines: a coarse grid of ``t ∈ [-6, 6]``; the cells that ``flag(logits (N, G+1, K))
    -> (N, G)`` selects refined into ``_REFINE`` sub-cells; and, up to ``_DEPTH`` levels, sub-cells refined
    again where a watched function ``watch(logits) -> [(F, R+1), ...]`` may dip to 0 and back inside
    (:func:`_dips`) or, with ``changes``, where the winner changes twice. A leaf sub-cell is taken to
    hold at most one crossing of each watched function."""

    def __init__(self, lines: _Lines, flag, watch, changes: bool = False):
        N, dev = lines.x0.shape[0], lines.x0.device
        t = torch.linspace(-_T_MAX, _T_MAX, _GRID + 1, dtype=DTYPE, device=dev)
        a = lines.logits(torch.arange(N, device=dev), t.expand(N, -1))
        rows, cell = flag(a).nonzero(as_tuple=True)
        self.lines, self.missed, self.changes = lines, 0, []
        self.levels = [self._level(rows, t[cell], t[cell + 1], a[rows, cell], a[rows, cell + 1])]
        L = 0
        while L < len(self.levels):
            lev, last = self.levels[L], L + 1 >= _DEPTH
            refine = torch.zeros_like(lev.leaf)
            if not last:
                for v in watch(lev.a, lev.rows):
                    refine |= _dips(v)
                if changes:  # Δ dips to 0 where the winner changes: that V is resolved, not refined
                    win = lev.a.argmax(-1)
                    refine &= win[:, 1:] == win[:, :-1]
            if changes:
                f, k, tc, i, j, ok = self._winner_changes(lev, lev.leaf & ~refine)
                if last:
                    self.missed += int((~ok).sum())
                else:
                    refine[f[~ok], k[~ok]] = True
                self.changes.append((f[ok], k[ok], tc[ok], i[ok], j[ok], f[~ok], k[~ok]))
            if bool(refine.any()):
                lev.leaf &= ~refine
                bf, bk = refine.nonzero(as_tuple=True)
                self.levels.append(self._level(lev.rows[bf], lev.ts[bf, bk], lev.ts[bf, bk + 1], lev.a[bf, bk],
                                               lev.a[bf, bk + 1]))
            L += 1

    def _level(self, rows, t0, t1, a0, a1) -> _Level:
        ts = t0[:, None] + (t1 - t0)[:, None] * torch.linspace(0, 1, _REFINE + 1, dtype=DTYPE, device=t0.device)
        a = torch.cat([a0[:, None], self.lines.logits(rows, ts[:, 1:-1]), a1[:, None]], 1)
        return _Level(rows, ts, a, torch.ones(ts.shape[0], _REFINE, dtype=torch.bool, device=ts.device))

    def roots(self, lev: _Level, f, k, value):
        """Roots of ``value(logits (B, K), idx) -> (B,)`` in the sub-cells ``(f, k)`` (a sign change there)."""
        r = lev.rows[f]
        fn = lambda idx, tt: value(self.lines.logits(r[idx], tt[:, None])[:, 0], idx)  # noqa: E731
        ar = torch.arange(f.shape[0], device=f.device)
        return _illinois(fn, lev.ts[f, k], lev.ts[f, k + 1], value(lev.a[f, k], ar), value(lev.a[f, k + 1], ar))

    def pair_crossings(self, i: int, j: int):
        """All crossings ``(rows, t_c)`` of :math:`g_{ij} = 0` (leaf sub-cells with a sign change)."""
        out_r, out_t = [], []
        for lev in self.levels:
            g = lev.a[..., i] - lev.a[..., j]
            f, k = (((g[:, 1:] > 0) != (g[:, :-1] > 0)) & lev.leaf).nonzero(as_tuple=True)
            out_r.append(lev.rows[f])
            out_t.append(self.roots(lev, f, k, lambda la, idx: la[:, i] - la[:, j]))
        return torch.cat(out_r), torch.cat(out_t)

    def _winner_changes(self, lev: _Level, leaf: torch.Tensor):
        """``(f, k, t_c, i, j, ok)`` for the sub-cells ``(f, k)`` of ``leaf`` where the winner changes from i
        (before ``t_c``) to j (after); ``ok``: i and j are the top two at ``t_c`` (else two changes hide there)."""
        win = lev.a.argmax(-1)
        f, k = ((win[:, 1:] != win[:, :-1]) & leaf).nonzero(as_tuple=True)
        i, j = win[f, k], win[f, k + 1]
        tc = self.roots(lev, f, k, lambda la, idx: _pair_value(la, i[idx], j[idx]))
        la = self.lines.logits(lev.rows[f], tc[:, None])[:, 0]
        rest = la.scatter(1, i[:, None], -math.inf).scatter(1, j[:, None], -math.inf).amax(1)
        ok = torch.minimum(la.gather(1, i[:, None]), la.gather(1, j[:, None]))[:, 0] >= rest
        return f, k, tc, i, j, ok

    def winner_changes(self):
        """Crossings of the top-two interface per level: ``(f, k, t_c, i, j, bad_f, bad_k)``, i the winner before
        ``t_c`` and j after, on leaf sub-cells; ``(bad_f, bad_k)``: leaf sub-cells of the last level with two
        changes, left out (counted in ``missed``)."""
        return self.changes

    def level_crossings(self, s: torch.Tensor):
        r"""Crossings ``(rows, t)`` of :math:`\Delta = s_{row}` (``s (N,) > 0``). Δ dips to 0 at every winner
        change, so a sub-cell with a change is split there; sub-cells left out by :meth:`winner_changes`
        are skipped."""
        R, LO, HI, VLO, VHI = [], [], [], [], []
        for lev, (f, k, tc, _, _, bf, bk) in zip(self.levels, self.changes):
            delta = _top2(lev.a)[0] - s[lev.rows, None]  # (F, R+1)
            changed = ~lev.leaf.clone()
            changed[f, k] = changed[bf, bk] = True
            f0, k0 = (((delta[:, 1:] > 0) != (delta[:, :-1] > 0)) & ~changed).nonzero(as_tuple=True)
            left, right = delta[f, k] > 0, delta[f, k + 1] > 0  # Δ = s on [t_k, t_c] / on [t_c, t_k+1]
            fl, kl, fr, kr = f[left], k[left], f[right], k[right]
            sl, sr = s[lev.rows[fl]], s[lev.rows[fr]]
            R += [lev.rows[f0], lev.rows[fl], lev.rows[fr]]
            LO += [lev.ts[f0, k0], lev.ts[fl, kl], tc[right]]
            HI += [lev.ts[f0, k0 + 1], tc[left], lev.ts[fr, kr + 1]]
            VLO += [delta[f0, k0], delta[fl, kl], -sr]
            VHI += [delta[f0, k0 + 1], -sl, delta[fr, kr + 1]]
        rows = torch.cat(R)
        srow = s[rows]
        fn = lambda idx, tt: _top2(self.lines.logits(rows[idx], tt[:, None])[:, 0])[0] - srow[idx]  # noqa: E731
        return rows, _illinois(fn, torch.cat(LO), torch.cat(HI), torch.cat(VLO), torch.cat(VHI))


def _line_draws_check(law, where: str):
    if not isinstance(law, (Gaussian, GaussianMixture)):
        fail("law", where, "a Gaussian or GaussianMixture for method='conditional' (lines through the law)",
             type(law).__name__, TypeError)


def _line_run(router, law, terms_of_lines, n, seed, sampling, where, mc, info) -> Estimate:
    """Reduce per-line terms ``terms_of_lines(lines) -> (N, ...)`` with the one reducer."""
    _line_draws_check(law, where)
    lines = _Lines(router, law)

    def terms(d):
        lines.setup(d)
        return terms_of_lines(lines)

    return _run(terms, lines.draws, n, seed, sampling, where, mc,
                {"estimator": "lines + Crofton weight", "grid": (_T_MAX, _GRID, _REFINE), **info})


def coarea_lines(router, law, pair: tuple[int, int], n: int, seed, sampling: str = "qmc", **mc) -> Estimate:
    r"""Line estimate of the coarea constant :math:`\psi_{ij}(0)` (3.8) for any router under a Gaussian
    (mixture) law (module docstring, item 3; unbiased, no bandwidth):

    .. math:: \psi_{ij}(0) = \frac1{\kappa_d} E\Big[\sum_{t_c:\,g_{ij}(X(t_c)) = 0}
              \frac{\varphi(t_c)}{|L^\top \nabla g_{ij}(X(t_c))|}\Big].
    """
    i, j = pair

    def terms(lines):
        g = lambda a, rows: [a[..., i] - a[..., j]]  # noqa: E731
        rows, tc = _Scan(lines, lambda a: _near(a[..., i] - a[..., j]), g).pair_crossings(i, j)
        I = torch.full_like(rows, i)
        gn = lines.grad_norm(rows, tc, I, torch.full_like(rows, j))
        return _scatter(lines.x0.shape[0], rows, _phi(tc) / (lines.kappa * gn))

    return _line_run(router, law, terms, n, seed, sampling, "coarea_constant", mc, {})


def boundary_mass_lines(router, law, widths: torch.Tensor, n: int, seed, sampling: str = "qmc", **mc) -> Estimate:
    r"""Line estimate of β(w) (2.13) for any router under a Gaussian (mixture) law: with a level
    :math:`s = wU`, U ~ U(0, 1) (module docstring, item 3, applied to the level sets of Δ),

    .. math:: \beta(w) = \int_0^w f_\Delta(s)\,ds = w\,E\Big[\frac1{\kappa_d}\sum_{t_c:\,\Delta(X(t_c)) = s}
              \frac{\varphi(t_c)}{|L^\top\nabla(a_{(1)} - a_{(2)})(X(t_c))|}\Big],

    so the relative variance does not grow as w → 0. ``widths (W,)``; returns an :class:`Estimate` over them.
    """
    w = widths.to(DTYPE)
    missed = [0]

    def terms(lines):
        N = lines.x0.shape[0]
        s = lines.level[:, None] * w.to(lines.level)[None, :]  # (N, W)

        def flag(a):  # cells near Δ = 0 or Δ = s, or with a change of winner
            delta, win, _ = _top2(a)
            near = _near(delta) | (win[:, 1:] != win[:, :-1])
            for q in range(s.shape[1]):
                near |= _near(delta - s[:, q:q + 1])
            return near

        def watch(a, rows):
            delta = _top2(a)[0]
            return [delta] + [delta - s[rows, q, None] for q in range(s.shape[1])]

        scan = _Scan(lines, flag, watch, changes=True)
        out = torch.zeros(N, w.shape[0], dtype=DTYPE, device=lines.x0.device)
        for q in range(w.shape[0]):
            if float(w[q]) == 0.0:
                continue
            rows, tc = scan.level_crossings(s[:, q])
            la = lines.logits(rows, tc[:, None])[:, 0]
            _, i, j = _top2(la)
            out[:, q] = float(w[q]) * _scatter(N, rows, _phi(tc) / (lines.kappa * lines.grad_norm(rows, tc, i, j)))
        missed[0] += scan.missed
        return out

    est = _line_run(router, law, terms, n, seed, sampling, "boundary_mass", mc, {})
    est.info["unresolved_crossings"] = missed[0]
    return est


def gap_slope_lines(moe: MoE, law, teacher: Teacher, n: int, seed, sampling: str = "qmc", **mc) -> Estimate:
    r"""Line estimate of :math:`G_1` (paper.md §3 [beyond]) for any MoE under a Gaussian (mixture) law:

    .. math:: G_1 = \frac1{\kappa_d} E\Big[\sum_{t_c} \frac{\varphi(t_c)}{|L^\top\nabla g_{ij}|}
              \big[(2\ln2 - 1)D^2 + 2\ln2\,(D(f^*_+ - h_i) - D(f^*_- - h_j))\big](X(t_c))\Big]

    over the crossings :math:`t_c` of the top-two interface, i the winner before and j after,
    :math:`D = h_i - h_j`, :math:`f^*_\pm` the teacher just before / after (``t_c ∓ 1e-7``; exact traces
    for the student's own hard model).
    """
    same = isinstance(teacher, HardTeacher) and teacher.moe is moe
    missed = [0]

    def terms(lines):
        N = lines.x0.shape[0]
        scan = _Scan(lines, lambda a: _near(_top2(a)[0]) | (a.argmax(-1)[:, 1:] != a.argmax(-1)[:, :-1]),
                     lambda a, rows: [_top2(a)[0]], changes=True)
        changes = scan.winner_changes()
        missed[0] += scan.missed
        rows = torch.cat([lev.rows[c[0]] for lev, c in zip(scan.levels, changes)])
        tc, i, j = (torch.cat([c[q] for c in changes]) for q in (2, 3, 4))
        x = lines.point(rows, tc)
        h = moe.experts(_cast(moe.experts, x)).to(DTYPE)
        hi_, hj = h.gather(1, i[:, None])[:, 0], h.gather(1, j[:, None])[:, 0]
        if same:
            fp, fm = hi_, hj
        else:
            fp = teacher._signal(lines.point(rows, tc - 1e-7)).to(DTYPE)
            fm = teacher._signal(lines.point(rows, tc + 1e-7)).to(DTYPE)
        D = hi_ - hj
        bracket = (2 * _LN2 - 1) * D * D + 2 * _LN2 * (D * (fp - hi_) - D * (fm - hj))
        return _scatter(N, rows, _phi(tc) * bracket / (lines.kappa * lines.grad_norm(rows, tc, i, j)))

    est = _line_run(moe.router, law, terms, n, seed, sampling, "gap_slope", mc, {})
    est.info["unresolved_crossings"] = missed[0]
    return est


def _scatter(n: int, rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.zeros(n, dtype=DTYPE, device=v.device).index_add_(0, rows, v)
