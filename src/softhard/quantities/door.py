"""The public door of every quantity: arguments validated once, with errors naming the function the user
called, into a :class:`~softhard.estimators.registry.Call` that the registered methods trust.

Every quantity has the signature ``(model, law[, grid], *, teacher=None, method="auto", n=None, seed=0,
target_rel_error=None, **options)`` and returns an :class:`~softhard.estimators.reducer.Estimate`; the
sampling keywords accepted by all of them are :data:`SAMPLING_KEYWORDS`.
"""

from __future__ import annotations

import math

import torch

from .._validate import check_float, check_grid, fail
from ..estimators.reducer import Estimate, sampling_options
from ..estimators.registry import SAMPLINGS, Call
from ..model.laws import Gaussian, GaussianMixture, as_law
from ..model.moe import HardTeacher, MoE, Teacher, as_teacher
from ..model.routers import LinearRouter, as_router

__all__ = ["SAMPLING_KEYWORDS", "router_call", "moe_call", "temperature_grid", "width_grid", "logits_of", "finish",
           "sampler", "exact_guard", "is_gaussian", "is_linear_gaussian"]

SAMPLING_KEYWORDS = ("max_samples", "scrambles", "chunk", "device", "workers", "min_n", "progress", "desc",
                     "sampling", "max_seconds")


def _sampling(where: str, n, seed, target_rel_error, kw: dict):
    unknown = sorted(set(kw) - set(SAMPLING_KEYWORDS))
    if unknown:
        fail(unknown[0], where, f"one of the keywords of {where} (sampling keywords: {SAMPLING_KEYWORDS})",
             kw[unknown[0]], TypeError)
    sampling = kw.pop("sampling", None)
    if sampling is not None and sampling not in SAMPLINGS:
        fail("sampling", where, f"one of {SAMPLINGS}", sampling)
    max_seconds = kw.pop("max_seconds", None)  # an exact path predicted to run longer is refused (closed.boundary)
    if max_seconds is not None:
        max_seconds = check_float(max_seconds, "max_seconds", where, 0.0, math.inf, high_open=False)
    return sampling_options(where, n, seed, target_rel_error, **kw), {"sampling": sampling, "max_seconds": max_seconds}


def router_call(where: str, router, law, grid, n, seed, target_rel_error, kw: dict, **options) -> Call:
    """Validate ``(router, law)`` (a plain callable router gets ``d`` from the law), the sampling keywords
    ``kw`` and wrap them with ``grid`` (already validated) and the quantity's ``options``."""
    law = as_law(law, where)
    r = as_router(router, law.d, where)
    if r.d is not None and r.d != law.d:
        fail("law", where, f"a law on R^{r.d} (the router's input dimension)", f"a law on R^{law.d}")
    s, extra = _sampling(where, n, seed, target_rel_error, dict(kw))
    _probe(where, law, ("router", r, "logits"))
    return Call(where, r, law, grid, None, {**options, **extra}, s)


def exact_guard(c: Call) -> dict:
    """The keywords of an exact closed form's guard (:class:`softhard.closed.boundary.ExactRun`): ``max_seconds``
    (None: one hour) and ``progress`` (the user's ``progress=True``, else shown when predicted to be long)."""
    return {"max_seconds": c.options.get("max_seconds"), "progress": True if c.sampling.progress else None}


def sampler(c: Call, default: str) -> str:
    """The sampler over draws a method uses: the user's ``sampling=`` keyword, else the method's ``default``."""
    return c.options["sampling"] or default


def moe_call(where: str, moe, law, grid, teacher, n, seed, target_rel_error, kw: dict, **options) -> Call:
    """Validate ``(moe, law, teacher)`` and the sampling keywords (see :func:`router_call`)."""
    if not isinstance(moe, MoE):
        fail("moe", where, "a softhard MoE", type(moe).__name__, TypeError)
    law = as_law(law, where)
    if moe.d is not None and moe.d != law.d:
        fail("law", where, f"a law on R^{moe.d} (the MoE's input dimension)", f"a law on R^{law.d}")
    t = _teacher(teacher, moe, law, where)
    s, extra = _sampling(where, n, seed, target_rel_error, dict(kw))
    _probe(where, law, ("moe", moe.router, "router logits"), ("moe", moe.experts, "expert outputs"))
    return Call(where, moe, law, grid, t, {**options, **extra}, s)


PROBE = 64  # draws on which a user's router and experts are tried at the door


def _probe(where: str, law, *parts) -> None:
    """Evaluate each ``(param, module, what)`` of ``parts`` on :data:`PROBE` draws of the law (a fixed seed, no global
    RNG touched): a router or experts giving NaN or inf there is the user's mistake, reported naming ``param``
    and ``where`` (a value that is non-finite only at rarer points is still caught where the terms are summed)."""
    from ..estimators.reducer import draw

    x = draw(law, PROBE, 0)
    for param, module, what in parts:
        with torch.no_grad():
            out = module(x)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
            bad = out[~torch.isfinite(out)].flatten()[:3].tolist()
            fail(param, where, f"a model with finite {what} on inputs drawn from the law",
                 f"non-finite {what} such as {bad} on {PROBE} draws")


def _teacher(teacher, moe: MoE, law, where: str) -> Teacher:
    """The teacher as a :class:`~softhard.model.moe.Teacher` on the law's dimension (a callable is probed on two
    points, so that a mistake is reported here, naming ``where``)."""
    t = as_teacher(teacher, moe, where)
    if isinstance(t, HardTeacher) and t.moe.d is not None and t.moe.d != law.d:
        fail("teacher", where, f"a teacher on R^{law.d} (the law's dimension)", f"an MoE on R^{t.moe.d}")
    if not isinstance(t, HardTeacher):
        try:
            with torch.no_grad():
                out = t.signal(torch.zeros(2, law.d, dtype=law.dtype))
        except (ValueError, TypeError):
            raise
        except Exception as e:  # noqa: BLE001 - any failure of a user's teacher
            fail("teacher", where, f"a teacher whose signal takes inputs of shape (N, {law.d})",
                 f"{type(e).__name__}: {e}")
        if not isinstance(out, torch.Tensor) or out.shape != (2,):
            fail("teacher", where, "a teacher whose signal returns shape (N,)", f"output {getattr(out, 'shape', out)}")
    return t


def _scalar(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        isinstance(v, torch.Tensor) and v.ndim == 0)


def temperature_grid(taus, where: str) -> tuple[torch.Tensor, bool]:
    """Temperatures as a float64 tensor ``(T,)`` of values in (0, inf), and whether a scalar was given."""
    if _scalar(taus):
        return torch.tensor([check_float(taus, "taus", where, 0.0, math.inf)], dtype=torch.float64), True
    return check_grid(taus, "taus", where, low=0.0, low_open=True).to(torch.float64), False


def width_grid(values, where: str) -> tuple[torch.Tensor, bool]:
    """Widths as a float64 tensor ``(W,)`` of values in [0, inf), and whether a scalar was given."""
    if _scalar(values):
        return torch.tensor([check_float(values, "widths", where, 0.0, math.inf, low_open=False)],
                            dtype=torch.float64), True
    return check_grid(values, "widths", where, low=0.0).to(torch.float64), False


def logits_of(router, x: torch.Tensor, where: str, param: str = "router") -> torch.Tensor:
    """Router logits at trusted inputs, as float64 ``(N, K)``; a non-finite logit is an error naming ``param`` (the
    user's router, or the MoE that holds it) and ``where``."""
    a = router(x).to(torch.float64)
    if not bool(torch.isfinite(a).all()):
        bad = a[~torch.isfinite(a)].flatten()[:3].tolist()
        fail(param, where, "a router whose logits are finite on inputs drawn from the law",
             f"non-finite logits such as {bad}")
    return a


def finish(est: Estimate, scalar: bool) -> Estimate:
    """The estimate of a scalar grid point as floats."""
    return est[0] if scalar else est


def is_gaussian(law) -> bool:
    return isinstance(law, (Gaussian, GaussianMixture))


def is_linear_gaussian(router, law) -> bool:
    return isinstance(router, LinearRouter) and is_gaussian(law)

