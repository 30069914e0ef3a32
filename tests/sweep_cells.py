"""Cells for the sweep tests, importable by worker processes (spawn, Dask): tests/ is on their sys.path.

``mass``, ``flaky`` and ``nodefault`` are user functions ("sweep_cells:mass"); the module itself is a tiny
registry-style diagnostic (``Config`` + ``run``) that the tests register as "toy".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from softhard import Gaussian, monte_carlo
from softhard.results.table import Table


def mass(tau: float, offset: float, seed: int, samples: int = 4096, sleep: float = 0.0) -> dict:
    """Monte Carlo P(|X_1 - offset| <= 2 tau), X ~ N(0, I_2), with its standard error (and an optional delay)."""
    time.sleep(sleep)
    est = monte_carlo(lambda x: ((x[:, 0] - offset).abs() <= 2 * tau).double()[:, None], Gaussian.standard(2),
                      samples, seed)
    return {"mass": float(est.value[0]), "mass_stderr": float(est.stderr[0])}


def flaky(x: int, marker: str, seed: int) -> dict:
    """Fails for odd ``x`` until the file ``marker`` exists."""
    if x % 2 and not Path(marker).exists():
        raise RuntimeError(f"x={x} is not ready")
    return {"y": 10 * x + seed}


def nodefault(a: float, b: int, seed: int) -> dict:
    return {"a": a, "b_plus_seed": b + seed}


@dataclass(frozen=True)
class Config:
    taus: tuple[float, ...] = (0.1, 0.2)
    scale: float = 1.0
    K: int = 2
    seed: int = 5


def run(config: Config = Config(), progress: bool = False) -> Table:
    rows = [{"tau": t, "value": config.scale * t * config.K + config.seed} for t in config.taus]
    extra = Table("toy_extra", ["K2"], [{"K2": config.K ** 2}])
    return Table("toy", ["tau", "value"], rows, {}, {"toy_extra": extra})
