r"""Score-space sampling [beyond] and the draws shared by the conditional and line estimators.

For ``X ~ N(m, S)`` and linear maps :math:`Y = W X + b` (router logits, expert outputs, a linear teacher's
logits and outputs stacked, ``q`` rows) :math:`Y \sim N(Wm + b, W S W^\top)`: sample Y directly, at a cost
independent of d (:func:`score_space`). Mixtures: the same per component. Derivations and variance
arguments: ``docs/estimators.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import DTYPE, fail
from ..closed.normal import gaussian_components
from ..model.experts import ConstantExperts, LinearExperts
from ..model.laws import U_EPS, Gaussian, GaussianMixture, Law, standard_normal, standard_uniform
from ..model.moe import HardTeacher, MoE
from ..model.routers import LinearRouter
from .reducer import Estimate, Sampling, sample_mean

__all__ = ["ScoreSpace", "score_space", "linear_gap_space", "StandardDraws", "pick_component", "gaussian_factors",
           "by_component", "batched", "run_conditional", "ROWS", "FactorLaw", "thin_law", "linear_maps_rows"]

ROWS = 2048  # draws per vectorised batch inside the terms (memory), never changes a result


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
        law: a :class:`~softhard.model.laws.Gaussian` or :class:`~softhard.model.laws.GaussianMixture` on
            :math:`\mathbb R^q` (covariance :math:`W S W^\top`, usually singular when q > d); sample it
            with :func:`~softhard.estimators.reducer.monte_carlo` like any law, at a cost independent of d.
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
        model: a :class:`~softhard.model.routers.LinearRouter`, or an :class:`~softhard.model.moe.MoE` with a
            LinearRouter
            and linear or constant experts.
        law: Gaussian or GaussianMixture on ℝ^d.
        teacher: (MoE only) ``None``, or a hard linear MoE (or :class:`~softhard.model.moe.HardTeacher` of one).

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
    for name, Wk, _ in maps + tmaps:
        if Wk.shape[1] != law.d:
            param, who = ("teacher", "the teacher") if name.startswith("teacher") else ("law", "the model")
            fail(param, where, f"on the law's R^{law.d}" if param == "teacher" else
                 f"a law on R^{Wk.shape[1]} ({who}'s input dimension)",
                 f"{who} on R^{Wk.shape[1]}" if param == "teacher" else f"a law on R^{law.d}")
    maps += tmaps
    W = torch.cat([m[1].to(DTYPE) for m in maps])
    b = torch.cat([m[2].to(DTYPE) for m in maps])
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


def linear_maps_rows(model, law, teacher=None) -> int | None:
    """q, the rows :func:`score_space` would stack for ``(model, law, teacher)`` (an MoE's teacher: as in
    :func:`linear_gap_space`), or ``None`` where it does not apply; nothing is computed."""
    if not isinstance(law, (Gaussian, GaussianMixture)):
        return None
    maps = _linear_maps(model)
    if maps is None:
        return None
    if isinstance(model, MoE):
        if len(maps) != 2:
            return None
        tmaps = _teacher_maps(model, teacher)
        if tmaps is None:
            return None
        maps = maps + tmaps
    return sum(int(m[1].shape[0]) for m in maps)


class FactorLaw(Law):
    r"""A Gaussian (mixture) :math:`\sum_c \omega_c N(M_c, F_cF_c^\top)` sampled through thin factors
    ``F_c (q, r_c)``: ``r = max r_c`` normals per draw (and a uniform picking the component of a mixture), so a
    law of rank r on ℝ^q costs O(qr) per draw, not O(q²) (:func:`thin_law`)."""

    def __init__(self, weights: torch.Tensor, means: list, factors: list):
        self.weights, self.means, self.factors = weights, means, factors
        self.r = max(f.shape[1] for f in factors)
        self.d = means[0].shape[0]
        self.mixed = len(means) > 1
        self.qmc_dim = self.r + int(self.mixed)
        self.dtype = means[0].dtype

    def _assemble(self, u, z):
        if not self.mixed:
            return self.means[0] + z[:, :self.factors[0].shape[1]] @ self.factors[0].T
        comp = pick_component(self.weights, u)
        y = torch.empty(z.shape[0], self.d, dtype=z.dtype)
        for c, (M, F) in enumerate(zip(self.means, self.factors)):
            m = comp == c
            if bool(m.any()):
                y[m] = M + z[m, :F.shape[1]] @ F.T
        return y

    def sample(self, n, generator=None):
        n = self._n(n, generator)
        u = standard_uniform(generator, (n,), DTYPE, "cpu") if self.mixed else None
        return self._assemble(u, standard_normal(generator, (n, self.r), DTYPE, "cpu"))

    def from_uniform(self, u):
        u = u.to(DTYPE)
        z = torch.special.ndtri(u[:, int(self.mixed):].clamp(U_EPS, 1 - U_EPS))
        return self._assemble(u[:, 0] if self.mixed else None, z)


def thin_law(law: Law) -> FactorLaw:
    """The Gaussian (mixture) ``law`` as a :class:`FactorLaw`: each component's factor without the columns that
    are exactly 0 (the dropped eigen-directions of a singular covariance, ``model.laws``), in float64."""
    w, means, factors = gaussian_factors(law)
    thin = [F[:, F.abs().amax(0) > 0].to(DTYPE) for F in factors]
    thin = [F if F.shape[1] else torch.zeros(F.shape[0], 1, dtype=DTYPE) for F in thin]
    return FactorLaw(w, [M.to(DTYPE) for M in means], thin)


class StandardDraws(Law):
    """Standard draws for the conditional estimators: ``(N, u + k)``, ``u`` uniforms then ``k`` normals."""

    def __init__(self, uniforms: int, normals: int):
        self.u, self.k = uniforms, normals
        self.d = self.qmc_dim = uniforms + normals

    def sample(self, n, generator=None):
        n = self._n(n)
        u = standard_uniform(generator, (n, self.u), DTYPE, "cpu")
        return torch.cat([u, standard_normal(generator, (n, self.k), DTYPE, "cpu")], 1)

    def from_uniform(self, u):
        u = u.to(DTYPE)
        return torch.cat([u[:, :self.u], torch.special.ndtri(u[:, self.u:].clamp(U_EPS, 1 - U_EPS))], 1)


def pick_component(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Component index of each draw from a uniform ``u (N,)``."""
    cum = torch.cumsum(weights.to(u), 0)
    return torch.searchsorted(cum, u.contiguous(), right=True).clamp_max(len(weights) - 1)


def gaussian_factors(law: Law) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``(weights (C,), means [(q,)], factors [(q, q)])`` of a Gaussian (mixture) law, ``F Fᵀ = cov``."""
    comps = gaussian_components(law, "score_space")
    w = torch.tensor([c[0] for c in comps], dtype=DTYPE)
    return w, [c[1].mean for c in comps], [c[1].scale_tril for c in comps]


def by_component(comp: torch.Tensor, C: int, fn, *outs: torch.Tensor):
    """Fill ``outs`` row-wise with ``fn(c, mask)`` for each component ``c`` (a loop over components only)."""
    for c in range(C):
        m = comp == c
        if bool(m.any()):
            for o, v in zip(outs, fn(c, m)):
                o[m] = v


def batched(fn, draws: torch.Tensor) -> torch.Tensor:
    """``fn`` on row batches of ``ROWS`` draws, concatenated (bounded memory; per-row results)."""
    return torch.cat([fn(draws[i:i + ROWS]) for i in range(0, draws.shape[0], ROWS)])


def run_conditional(terms, draws: Law, opts: Sampling, sampling: str, info: dict, bound=None) -> Estimate:
    """Reduce per-draw conditional terms with the one reducer (``sampling``: "mc" or "qmc" over the draws;
    ``bound``: as in :func:`~softhard.estimators.reducer.sample_mean`)."""
    est = sample_mean(lambda d: batched(terms, d), draws, sampling, opts, bound=bound)
    return est.replace(method="conditional", info={"sampling": sampling, **info})


def linear_gap_space(moe: MoE, law, teacher) -> ScoreSpace | None:
    """:func:`score_space` of (logits, outputs[, teacher logits, teacher outputs]) when the model and teacher are
    linear and the law Gaussian (mixture); ``None`` otherwise (then there is no conditional linear estimator)."""
    if not isinstance(law, (Gaussian, GaussianMixture)) or not isinstance(moe, MoE):
        return None
    maps = _linear_maps(moe)
    if maps is None or len(maps) != 2 or _teacher_maps(moe, teacher) is None:
        return None
    return score_space(moe, law, teacher)
