r"""The samplers every quantity registers, and their cost models (which see K and d).

A sampled quantity is a mean of per-draw terms that depend on the input only through the router's logits
``a (N, K)``, the experts' outputs ``h (N, K)`` and the teacher's signal ``f* (N,)``. Two ways to draw them:

- over inputs (``"qmc"``, ``"mc"``): ``x ~ law``, then the model; any model, law and teacher;
- in score space (``"score"``): for a linear router (with linear or constant experts, and a hard linear teacher or
  the model itself) under a Gaussian (mixture) law the stacked maps :math:`Y = WX + b` are Gaussian (q rows:
  logits, outputs, the teacher's), so Y is drawn directly with a factor of rank :math:`r \le \min(q, d)`
  (:func:`~softhard.estimators.score_space.thin_law`): the same terms, the same law of the terms, at
  :math:`O(qr)` per draw instead of :math:`O(d^2 + qd)`.

Both see the same distribution of terms, so they need the same number of draws for a target; ``"auto"`` takes the
one with the smaller per-draw cost (``dominated_by``). Cost models (seconds, one thread; constants measured by
``benchmarks/scale.py``):

- a draw over inputs: :func:`~softhard.estimators.reducer.draw_seconds` (10 ns per normal, 1 ns per entry of a
  Gaussian's dense factor) plus :func:`~softhard.estimators.registry.evaluation_seconds` of the model (and of a
  teacher MoE) plus the terms;
- a draw in score space: 10 ns per normal (r of them) plus 1 ns per entry of the q × r factor plus the terms;
  once per call, building the space: 1 ns per entry of :math:`WSW^\top` (:math:`q d^2`, per component) and
  :math:`10 q^3` ns for its factor.
"""

from __future__ import annotations

import torch

from ..estimators.reducer import Estimate, draw_seconds, sample_mean
from ..estimators.registry import PILOT_INDICATORS, Call, Quantity, evaluation_seconds
from ..estimators.score_space import ScoreSpace, linear_gap_space, score_space, thin_law
from ..model.moe import HardTeacher, MoE, hard_from
from .door import is_gaussian, logits_of, sampler

__all__ = ["space_of", "input_view", "score_view", "input_seconds", "score_seconds", "score_setup",
           "register_samplers", "TERM_SECONDS"]

TERM_SECONDS = 2e-8  # per logit and grid point: the terms of a draw once its scores are known


def _router(c: Call):
    return c.model.router if isinstance(c.model, MoE) else c.model


def _teacher_moe(c: Call):
    t = c.teacher
    if t is None or not isinstance(c.model, MoE) or (isinstance(t, HardTeacher) and t.moe is c.model):
        return None
    return t.moe if isinstance(t, HardTeacher) else None


def space_of(c: Call) -> ScoreSpace | None:
    """The call's score space (cached): router logits (a router), or logits, outputs and a hard linear teacher's
    (an MoE); ``None`` where the maps are not linear or the law not Gaussian."""
    if "space" not in c.cache:
        if not is_gaussian(c.law):
            c.cache["space"] = None
        elif isinstance(c.model, MoE):
            c.cache["space"] = linear_gap_space(c.model, c.law, c.teacher)
        else:
            from ..model.routers import LinearRouter

            c.cache["space"] = score_space(c.model, c.law) if isinstance(c.model, LinearRouter) else None
    return c.cache["space"]


def _space_rows(c: Call) -> int | None:
    """q, the rows of the score space, without building it (``None``: no score space)."""
    from ..estimators.score_space import linear_maps_rows

    return linear_maps_rows(c.model, c.law, c.teacher)


def input_view(c: Call):
    """``x (N, d) -> (a, h, f*)`` over inputs (``h``, ``f*``: ``None`` for a router)."""
    if not isinstance(c.model, MoE):
        return lambda x: (logits_of(c.model, x, c.where), None, None)
    moe, teacher = c.model, c.teacher
    same = isinstance(teacher, HardTeacher) and teacher.moe is moe

    def view(x):  # x comes from the law: the trusted path, no validation per block
        a, h = moe._scores(x)
        return a, h, (hard_from(a, h) if same else teacher._signal(x))
    return view


def score_view(c: Call):
    """``y (N, q) -> (a, h, f*)`` in score space (:func:`space_of`)."""
    sl = space_of(c).slices

    def view(y):
        a = y[:, sl["logits"]]
        if "outputs" not in sl:
            return a, None, None
        h = y[:, sl["outputs"]]
        fs = hard_from(y[:, sl["teacher_logits"]], y[:, sl["teacher_outputs"]]) if "teacher_logits" in sl else \
            hard_from(a, h)
        return a, h, fs
    return view


def _grid(c: Call) -> int:
    return 1 if c.grid is None else c.grid.numel()


def input_seconds(c: Call) -> float:
    """Seconds per draw over inputs: the draw, the model (and a teacher MoE), the terms."""
    t = draw_seconds(c.law) + evaluation_seconds(c.model, c.law.d)
    if _teacher_moe(c) is not None:
        t += evaluation_seconds(_teacher_moe(c), c.law.d)
    return t + TERM_SECONDS * _router(c).num_experts * _grid(c)


def score_seconds(c: Call) -> float:
    """Seconds per draw in score space: r normals and the q × r factor (r ≤ min(q, d)), the terms."""
    q = _space_rows(c)
    r = min(q, c.law.d)
    return 2e-7 + 1e-8 * r + 1e-9 * q * r + TERM_SECONDS * _router(c).num_experts * _grid(c)


def score_setup(c: Call) -> float:
    """Seconds to build the score space once: :math:`WSW^\\top` per component and the factor of the q × q result."""
    q, d = _space_rows(c), c.law.d
    comps = len(getattr(c.law, "components", [c.law]))
    return comps * (1e-9 * q * d * d + 1e-8 * q ** 3)


def _score_applies(c: Call):
    if _space_rows(c) is None:
        return ("a LinearRouter (with linear or constant experts and a teacher that is None or a hard linear MoE) "
                "and a Gaussian or GaussianMixture law")
    return None


def register_samplers(quantity: Quantity, terms_of, *, bound=None, post=None, order=("score", "qmc", "mc"),
                      score_sampling: str = "qmc"):
    """Register the costed samplers ``order`` of ``quantity`` for per-draw terms ``terms_of(call, view)``, with
    ``view(v) -> (a, h, f*)`` (:func:`input_view`, :func:`score_view`). ``bound(call)``: the reducer's bound on
    ``|terms|`` (a sampler that sees no hit then reports an upper bound); ``post(est)``: applied to the result.
    The score sampler's default sampling is ``score_sampling`` (QMC: scrambled Sobol over the r normals); the input
    samplers are named by their sampling. Every pilot is 1024 draws (a terms' variance is judged there)."""
    def finish(c, est, how):
        est = est.replace(info={"sampling": how})
        return post(est) if post else est

    def bound_of(c):
        return None if bound is None else bound(c)

    for name in order:
        if name == "score":
            def draws(c: Call, opts) -> Estimate:
                how = sampler(c, score_sampling)
                est = sample_mean(terms_of(c, score_view(c)), thin_law(space_of(c).law), how, opts,
                                  bound=bound_of(c))
                return finish(c, est, how)

            quantity.register_sampler("score", applies=_score_applies, per_draw=score_seconds, setup=score_setup,
                                      sampler=lambda c: sampler(c, score_sampling), pilot_draws=PILOT_INDICATORS,
                                      summary="QMC/MC over the Gaussian scores (logits, outputs) drawn directly")(draws)
        else:
            def draws(c: Call, opts, name=name) -> Estimate:
                return finish(c, sample_mean(terms_of(c, input_view(c)), c.law, name, opts, bound=bound_of(c)), name)

            quantity.register_sampler(name, applies=lambda c: None, per_draw=input_seconds,
                                      sampler=lambda c, name=name: name, pilot_draws=PILOT_INDICATORS,
                                      dominated_by=("score",) if "score" in order else (),
                                      summary=f"{name} over inputs")(draws)
