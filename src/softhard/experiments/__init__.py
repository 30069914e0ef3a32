"""The paper's §7 diagnostics as data: config in, tidy table out (no plotting here).

Each diagnostic module defines a frozen dataclass ``Config`` (defaults = the paper's design) and
``run(config, progress=False) -> Table``. :data:`REGISTRY` maps a table name ("table1", ...) to its
module; ``softhard reproduce`` and sweeps use only this registry.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from .._validate import fail

__all__ = ["REGISTRY", "get", "make_config"]


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
