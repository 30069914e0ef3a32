r"""The one method registry: every quantity registers its methods, ``method="auto"`` picks among them.

A quantity (``boundary_mass``, ``risk_gap``, ...) is a :class:`Quantity`; each of its methods is a
:class:`Method` with

- an applicability rule ``applies(call) -> None | str`` (``None``: it applies; else the reason it does
  not, which an explicit ``method=`` that does not apply reports);
- a cost estimate ``cost(call) -> float`` in seconds (a model, deterministic given the call: closed forms
  count their integrations, samplers run a short pilot and scale its variance to the target);
- ``run(call) -> Estimate``.

``method="auto"`` (the default everywhere) takes the cheapest applicable method: the cheapest closed
form when one applies and costs less than :data:`CHEAP` seconds, else the cheaper of that closed form and
the first applicable sampling method (methods are registered from the most to the least efficient sampler,
so only the first one needs a pilot). The chosen method is recorded in ``Estimate.method`` and
``Estimate.info["chosen_by"]``. The rule and the cost constants (measured by ``benchmarks/run.py``) are
documented in ``docs/estimators.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .._validate import fail
from .reducer import DEFAULT_TARGET, Estimate, Sampling

__all__ = ["Call", "Method", "Quantity", "QUANTITIES", "SAMPLINGS", "CHEAP", "PILOT", "target_of", "samples_for"]

SAMPLINGS = ("mc", "qmc")
CHEAP = 0.05  # seconds: a closed form at most this expensive is taken without comparing with sampling
PILOT = 1 << 12  # draws of a pilot run that estimates a sampler's variance


@dataclass
class Call:
    """One validated call of a public quantity, as its methods see it.

    ``model``: the router or MoE; ``law``; ``grid``: widths or temperatures ``(G,)`` as a float64 tensor
    (``None`` for a quantity without a grid); ``teacher``: a :class:`~softhard.model.moe.Teacher` or ``None``;
    ``options``: the quantity's own keywords (validated); ``sampling``: the budget and sampler settings.
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
    """A registered estimation method of one quantity (see the module docstring)."""

    name: str
    run: Callable[[Call], Estimate]
    applies: Callable[[Call], str | None]
    cost: Callable[[Call], float] | None = None
    exact: bool = False
    summary: str = ""


def target_of(call: Call) -> float | None:
    """The relative error a sampling run of this call aims at (``None``: a fixed sample size)."""
    s = call.sampling
    return s.target if s.target is not None else (DEFAULT_TARGET if s.n is None else None)


def samples_for(pilot: Estimate, call: Call) -> float:
    r"""Samples a sampler needs for the call's target, from a pilot of ``pilot.n`` draws:
    :math:`n = n_{pilot}\,\max_g (\mathrm{se}_g / (t\,|v_g|))^2` (at least the pilot; ``n`` itself for a fixed
    sample size; capped by the budget)."""
    s = call.sampling
    t = target_of(call)
    if t is None:
        return float(s.n)
    rel = pilot.rel_error
    worst = float(max(rel)) if hasattr(rel, "__len__") else float(rel)
    need = pilot.n * (worst / t) ** 2 if math.isfinite(worst) else math.inf
    return min(max(need, float(pilot.n)), float(s.n if s.n is not None else s.max_samples))


class Quantity:
    """A public quantity's methods, in registration order (closed forms first, then samplers, most efficient
    first). ``register`` is used as a decorator on the method's ``run`` function."""

    def __init__(self, name: str):
        self.name = name
        self.methods: dict[str, Method] = {}
        QUANTITIES[name] = self

    def register(self, name: str, *, applies: Callable[[Call], str | None], cost: Callable[[Call], float] | None = None,
                 exact: bool = False, summary: str = ""):
        def deco(run):
            self.methods[name] = Method(name, run, applies, cost, exact, summary)
            return run
        return deco

    @property
    def names(self) -> tuple[str, ...]:
        return ("auto", *self.methods)

    def check_method(self, method, where: str) -> str:
        if not isinstance(method, str) or method not in self.names:
            fail("method", where, f"one of {self.names}", method)
        return method

    def applicable(self, call: Call) -> list[Method]:
        return [m for m in self.methods.values() if m.applies(call) is None]

    def choose(self, call: Call) -> Method:
        """The method ``"auto"`` takes for this call (module docstring)."""
        cands = self.applicable(call)
        if not cands:
            reasons = "; ".join(f"'{m.name}' needs {m.applies(call)}" for m in self.methods.values())
            fail("method", call.where, f"a method that applies to this model and law ({reasons})", "auto")
        closed = [m for m in cands if m.exact]
        sampled = [m for m in cands if not m.exact]
        if not closed:
            return sampled[0]
        costs = [m.cost(call) if m.cost else 0.0 for m in closed]
        best = closed[costs.index(min(costs))]
        if not sampled or min(costs) <= CHEAP or sampled[0].cost is None:
            return best
        return best if min(costs) <= sampled[0].cost(call) else sampled[0]

    def estimate(self, call: Call, method: str) -> Estimate:
        """Run ``method`` (validated by :meth:`check_method`) on the call; ``"auto"`` chooses first."""
        if method == "auto":
            m, how = self.choose(call), "auto"
        else:
            m, how = self.methods[method], "user"
            why = m.applies(call)
            if why is not None:
                fail("method", call.where, f"a method that applies here: '{method}' needs {why}", method)
        return m.run(call).replace(method=m.name, info={"chosen_by": how})


QUANTITIES: dict[str, Quantity] = {}
