r"""The one method registry: every quantity registers its methods, ``method="auto"`` picks among them.

A quantity (``boundary_mass``, ``risk_gap``, ...) is a :class:`Quantity`; each of its methods is a
:class:`Method` with

- an applicability rule ``applies(call) -> None | str`` (``None``: it applies; else the reason it does
  not, which an explicit ``method=`` that does not apply reports);
- a cost model ``cost(call) -> float`` in seconds, deterministic given the call: closed forms count their
  integrations; samplers multiply the samples they need for the target (from a pilot run stopped at the
  first checkpoint of a targeted run, :func:`~softhard.estimators.reducer.first_stop`, its variance scaled by
  the 1/n law) by a per-draw cost. A sampler without a cost model is a fallback;
- ``run(call) -> Estimate``.

``method="auto"`` (the default everywhere):

1. the cheapest applicable closed form, if it costs at most :data:`CHEAP` seconds;
2. else the costed samplers' pilots are run, the cheapest pilot first, skipping a pilot that alone would
   cost more than the best option so far: the first whose pilot already meets the target is taken (the pilot
   is the result); otherwise the cheapest of the closed forms and the samplers' remaining costs;
3. else the first applicable sampler in registration order.

A pilot that already reaches the target is the result itself (:func:`reuse_pilot`: a targeted run stops at
the same first checkpoint with the same draws, so nothing is computed twice and the result still depends on
``(seed, n)`` only). The chosen method is in ``Estimate.method`` and ``Estimate.info["chosen_by"]``. The cost
constants were measured by ``benchmarks/run.py --cases auto``; ``docs/estimators.md`` lists them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .._validate import fail
from .reducer import DEFAULT_TARGET, Estimate, Sampling, check_budget, duration, first_stop

__all__ = ["Call", "Method", "Quantity", "QUANTITIES", "SAMPLINGS", "CHEAP", "PILOT_INDICATORS", "target_of", "pilot",
           "pilot_size", "pilot_price", "reuse_pilot", "remaining_cost", "evaluation_seconds", "check_time",
           "max_seconds_of"]

SAMPLINGS = ("mc", "qmc")
CHEAP = 0.01  # seconds: a closed form at most this expensive is taken without comparing with sampling
PILOT_INDICATORS = 1024  # pilot draws of a sampler of indicator terms (64 per scrambling)


def evaluation_seconds(module, d: int) -> float:
    """Cost model of one evaluation of a model on one input in ℝ^d: 0.2 µs plus 1 ns per parameter and input
    coordinate (a plain callable counts as 1000 parameters). Measured on a linear router (K = 8, d = 64) and a
    tanh MLP by ``benchmarks/run.py``."""
    params = sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers()) if hasattr(
        module, "parameters") else 0
    return 2e-7 + 1e-9 * (params or 1000) + 1e-9 * d


@dataclass
class Call:
    """One validated call of a public quantity, as its methods see it.

    ``model``: the router or MoE; ``law``; ``grid``: widths or temperatures ``(G,)`` as a float64 tensor
    (``None`` for a quantity without a grid); ``teacher``: a :class:`~softhard.model.moe.Teacher` or ``None``;
    ``options``: the quantity's own keywords (validated); ``sampling``: the budget and sampler settings;
    ``cache``: what the applicability rules and cost models computed (score spaces, pilots).
    """

    where: str
    model: Any
    law: Any
    grid: Any = None
    teacher: Any = None
    options: dict = field(default_factory=dict)
    sampling: Sampling = field(default_factory=Sampling)
    cache: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A registered estimation method of one quantity (see the module docstring).

    A closed form has ``cost(call)`` (seconds). A costed sampler has ``draws(call, sampling) -> Estimate`` (the
    run on a given budget, also used for its pilot), ``per_draw(call)`` (seconds per draw), ``sampler(call)``
    ("qmc" or "mc", which sets the first checkpoint) and ``pilot_draws``: ``None`` for a pilot of the first
    checkpoint, which ``run`` reuses when it met the target (estimators whose relative variance per draw is
    O(1)), or a smaller number for samplers of indicators, which rarely meet a target that early.
    ``dominated_by``: methods that draw terms of the same law (sampling the K logits instead of the d inputs);
    ``"auto"`` does not consider this one where one of them applies at a per-draw cost no higher. ``setup(call)``:
    seconds spent once per call before the first draw (building a score space), counted in the pilot's price.
    ``rate``: the relative error falls like :math:`n^{-\text{rate}}` (1/2; a kernel estimate, whose bandwidth
    shrinks with n, 3/8).
    """

    name: str
    run: Callable[[Call], Estimate]
    applies: Callable[[Call], str | None]
    cost: Callable[[Call], float] | None = None
    exact: bool = False
    summary: str = ""
    draws: Callable[[Call, Sampling], Estimate] | None = None
    per_draw: Callable[[Call], float] | None = None
    sampler: Callable[[Call], str] | None = None
    pilot_draws: int | None = None
    dominated_by: tuple[str, ...] = ()
    setup: Callable[[Call], float] | None = None
    rate: float = 0.5


def target_of(call: Call) -> float | None:
    """The relative error a sampling run of this call aims at (``None``: a fixed sample size)."""
    s = call.sampling
    return s.target if s.target is not None else (DEFAULT_TARGET if s.n is None else None)


def pilot(call: Call, m: Method) -> Estimate:
    """The pilot run of a costed sampler for this call (cached): the same draws as a targeted run, stopped at
    its first checkpoint."""
    key = ("pilot", m.name)
    if key not in call.cache:
        s = call.sampling
        n0 = min(pilot_size(call, m), s.n or s.max_samples)
        call.cache[key] = m.draws(call, dataclasses.replace(s, n=n0, target=None, progress=False, quiet=True))
    return call.cache[key]


def pilot_price(call: Call, m: Method) -> float:
    """Seconds of a costed sampler's pilot: its setup and its draws."""
    return (m.setup(call) if m.setup else 0.0) + m.per_draw(call) * pilot_size(call, m)


def pilot_size(call: Call, m: Method) -> int:
    """Draws of a sampler's pilot: its first checkpoint, or its ``pilot_draws``."""
    return m.pilot_draws or first_stop(m.sampler(call), call.sampling)


def reuse_pilot(call: Call, m: Method) -> Estimate | None:
    """The cached pilot if it already is this call's result: no ``n`` given, every entry within the target."""
    est, t = call.cache.get(("pilot", m.name)), target_of(call)
    if est is None or call.sampling.n is not None or t is None or m.pilot_draws or est.info.get("no_hit") is not None:
        return None
    se, v = np.asarray(est.stderr), np.asarray(est.value)
    return est.replace(target=t, converged=True) if bool(np.all(se <= t * np.abs(v))) else None


def remaining_cost(call: Call, m: Method) -> float:
    r"""Seconds a costed sampler still needs after its pilot: ``per_draw`` times the draws for the target beyond
    the pilot's :math:`n_0`, :math:`n = n_0 \max_g (\mathrm{se}_g / (t |v_g|))^{1/\text{rate}}` (at most the budget);
    0 when the pilot met the target. With a fixed ``n`` and no target the samplers are ranked by the time they would need for
    the default target (the product of time and variance per draw), since the same ``n`` buys them very different
    accuracies."""
    s, t = call.sampling, target_of(call)
    cap = s.n if (s.n is not None and t is not None) else s.max_samples
    t = DEFAULT_TARGET if t is None else t
    est = pilot(call, m)
    se, v = np.asarray(est.stderr, float), np.abs(np.asarray(est.value, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(se == 0, 0.0, se / (t * v))
    if m.pilot_draws:  # an indicator pilot without a single hit knows nothing of that entry's variance
        rel = np.where((se == 0) & (v == 0), np.inf, rel)
    worst = float(np.max(rel))
    need = est.n * worst ** (1 / m.rate) if math.isfinite(worst) else math.inf
    return m.per_draw(call) * max(0.0, min(need, float(cap)) - est.n)


def check_time(call: Call, m: Method) -> None:
    """Refuse a run predicted to exceed ``max_seconds`` (default an hour), naming the prediction: a closed form by
    its cost model, a sampler with a requested ``n`` by ``n`` times its per-draw cost."""
    s = dataclasses.replace(call.sampling, max_seconds=max_seconds_of(call))
    if m.cost is not None:
        seconds = m.cost(call)
        if seconds > s.max_seconds:
            fail("method", call.where, f"a method whose predicted time is at most max_seconds={s.max_seconds:g} s "
                 f"('{m.name}' is predicted to take {duration(seconds)}; pass max_seconds= to allow it)", m.name)
    elif m.per_draw is not None and s.n is not None:
        check_budget(call.law, m.name, s, m.per_draw(call) + (m.setup(call) if m.setup else 0.0) / s.n)


def max_seconds_of(call: Call) -> float:
    """The call's ``max_seconds``: the user's keyword (in the sampling settings, or among the options where the door
    keeps it for the exact paths' guard), else :data:`~softhard.estimators.reducer.MAX_SECONDS`."""
    given = call.options.get("max_seconds")
    return float(given) if given is not None else call.sampling.max_seconds


class Quantity:
    """A public quantity's methods, in registration order (closed forms first, then samplers, most efficient
    first). ``register`` is used as a decorator on the method's ``run`` function."""

    def __init__(self, name: str):
        self.name = name
        self.methods: dict[str, Method] = {}
        QUANTITIES[name] = self

    def register(self, name: str, *, applies: Callable[[Call], str | None], cost: Callable[[Call], float] | None = None,
                 exact: bool = False, summary: str = ""):
        """Decorator registering ``run(call) -> Estimate`` (a closed form with ``cost``, or an un-costed sampler)."""
        def deco(run):
            self.methods[name] = Method(name, run, applies, cost, exact, summary)
            return run
        return deco

    def register_sampler(self, name: str, *, applies: Callable[[Call], str | None], per_draw: Callable[[Call], float],
                         sampler: Callable[[Call], str], pilot_draws: int | None = None,
                         dominated_by: tuple[str, ...] = (), setup: Callable[[Call], float] | None = None,
                         rate: float = 0.5, summary: str = ""):
        """Decorator registering a costed sampler ``draws(call, sampling) -> Estimate``."""
        def deco(draws):
            method = Method(name, lambda c: reuse_pilot(c, method) or draws(c, c.sampling), applies, None, False,
                            summary, draws, per_draw, sampler, pilot_draws, dominated_by, setup, rate)
            self.methods[name] = method
            return draws
        return deco

    @property
    def names(self) -> tuple[str, ...]:
        return ("auto", *self.methods)

    def check_method(self, method, where: str) -> str:
        if not isinstance(method, str) or method not in self.names:
            fail("method", where, f"one of {self.names}", method)
        return method

    def choose(self, call: Call) -> Method:
        """The method ``"auto"`` takes for this call (module docstring)."""
        methods = list(self.methods.values())
        closed = sorted(((m.cost(call), i, m) for i, m in enumerate(methods) if m.exact and m.applies(call) is None),
                        key=lambda c: c[:2])
        closed = [c for c in closed if c[0] <= max_seconds_of(call)]  # the rest would be refused
        if closed and closed[0][0] <= CHEAP:
            return closed[0][2]  # before any sampler's applicability is judged (a kernel's is a pilot run)
        sampled = [(i, m) for i, m in enumerate(methods) if not m.exact and m.applies(call) is None]
        cheaper = {m.name: m.per_draw(call) for _, m in sampled if m.per_draw is not None}
        sampled = [(i, m) for i, m in sampled if not any(
            n in cheaper and m.per_draw is not None and cheaper[n] <= cheaper[m.name] for n in m.dominated_by)]
        pilots = sorted(((pilot_price(call, m), i, m) for i, m in sampled if m.draws), key=lambda c: c[:2])
        best = closed[0] if closed else None
        for price, i, m in pilots:
            if best is not None and price >= best[0]:
                continue  # its pilot alone would cost more than the best so far
            left = remaining_cost(call, m)
            if left == 0.0:
                return m  # its pilot met the target: it is the answer
            if best is None or left < best[0]:
                best = (left, i, m)
        if best is not None:
            return best[2]
        if sampled:
            return sampled[0][1]
        reasons = "; ".join(f"'{m.name}' needs {m.applies(call)}" for m in methods)
        fail("method", call.where, f"a method that applies to this model and law ({reasons})", "auto")

    def estimate(self, call: Call, method: str) -> Estimate:
        """Run ``method`` (validated by :meth:`check_method`) on the call; ``"auto"`` chooses first. A run predicted
        to take longer than ``max_seconds`` is refused first (:func:`check_time`)."""
        if method == "auto":
            m, how = self.choose(call), "auto"
        else:
            m, how = self.methods[method], "user"
            why = m.applies(call)
            if why is not None:
                fail("method", call.where, f"a method that applies here: '{method}' needs {why}", method)
        check_time(call, m)
        return m.run(call).replace(method=m.name, info={"chosen_by": how})


QUANTITIES: dict[str, Quantity] = {}
