"""The paper's §7 diagnostics as data: config in, tidy table out (no plotting here).

Each diagnostic module defines a frozen dataclass ``Config`` (defaults = the paper's design) and
``run(config, progress=False) -> Table``. :data:`REGISTRY` maps a table name ("table1", ...) to its
module; ``softhard reproduce`` and sweeps use only this registry.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from .._validate import fail

__all__ = ["Table", "REGISTRY", "get", "make_config", "loglog_fit"]


@dataclass
class Table:
    """A tidy table: ``rows`` (one dict per row, same keys in ``columns`` order) plus metadata.

    ``meta`` holds everything needed to re-read and re-render the table: the config, seed, sample
    size, package version, timing and any design values (e.g. the perturbation used for a flip rate).
    Extra tables (e.g. a τ sweep beside table1) go to ``extras`` under their own names.
    """

    name: str
    columns: list[str]
    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, "Table"] = field(default_factory=dict)

    def column(self, key: str) -> list:
        return [r[key] for r in self.rows]


# table name -> module path (imported lazily, so that `softhard --help` stays fast)
REGISTRY: dict[str, str] = {
    "table1": "softhard.experiments.boundary_scaling",
    "table1_multi": "softhard.experiments.boundary_multi",
    "table2": "softhard.experiments.boundary_geometry",
    "table3": "softhard.experiments.symmetry_breaking",
}


def get(name: str):
    """The module of diagnostic ``name`` (has ``Config`` and ``run``)."""
    if name not in REGISTRY:
        fail("name", "experiments.get", f"one of {sorted(REGISTRY)}", name)
    return importlib.import_module(REGISTRY[name])


def make_config(name: str, overrides: dict[str, Any] | None = None):
    """``Config`` of diagnostic ``name`` with ``overrides`` checked: unknown keys and wrong types raise."""
    cls = get(name).Config
    fields = {f.name: f for f in dataclasses.fields(cls)}
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if key not in fields:
            fail("config", name, f"a mapping with keys among {sorted(fields)}", key)
        default = getattr(cls(), key)
        overrides[key] = _coerce(value, default, f"{name}.{key}")
    return cls(**overrides)


def _coerce(value, default, where):
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in value)
        value = tuple(float(v) if isinstance(d, float) else v for v, d in
                      zip(value, list(default) + [0.0] * len(value))) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        fail(where.split(".")[-1], where.split(".")[0], f"of type {type(default).__name__}", value, TypeError)
    return value


def loglog_fit(x, y, stderr=None) -> dict[str, float]:
    r"""Least-squares fit of :math:`\log y = a + s \log x`; returns ``{"slope", "slope_stderr", "intercept"}``.

    With ``stderr`` (of ``y``), points are weighted by :math:`(y/\mathrm{se})^2` (delta method on
    :math:`\log y`). Needs at least 3 positive points (``ValueError`` otherwise).
    """
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = (x > 0) & (y > 0)
    if keep.sum() < 3:
        fail("y", "loglog_fit", "at least 3 positive points", y)
    lx, ly = np.log(x[keep]), np.log(y[keep])
    w = np.ones_like(lx) if stderr is None else (y[keep] / np.maximum(np.asarray(stderr, float)[keep], 1e-300)) ** 2
    A = np.stack([np.ones_like(lx), lx], axis=1)
    Aw = A * w[:, None]
    cov = np.linalg.inv(A.T @ Aw)
    coef = cov @ (Aw.T @ ly)
    resid = ly - A @ coef
    dof = max(1, len(lx) - 2)
    scale = float(resid @ (w * resid)) / dof
    return {"slope": float(coef[1]), "slope_stderr": float(np.sqrt(cov[1, 1] * max(scale, 1e-300))),
            "intercept": float(coef[0])}
