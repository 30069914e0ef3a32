"""The paper's §7 diagnostics as data: config in, tidy table out (no plotting here).

Each diagnostic module defines a frozen dataclass ``Config`` (defaults = the paper's design) and
``run(config, progress=False) -> Table`` (and, optionally, ``check(config)``, which raises for a config
that cannot run). :data:`REGISTRY` maps a table name ("table1", ...) to its module; ``softhard reproduce``
and sweeps use only this registry. :func:`make_config` checks a config before anything runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from typing import Any

__all__ = ["REGISTRY", "ROW_FIELDS", "MIN_SAMPLES", "MAX_SAMPLES", "get", "make_config", "did_you_mean"]

# the smallest Monte Carlo sample size `softhard reproduce` accepts: a standard error from fewer draws is
# not worth printing (the library itself accepts 2)
MIN_SAMPLES = 100


def fail(*args, **kwargs):
    """The project's error template, imported on first use (this module stays light for the command line)."""
    from .._validate import fail as _fail

    _fail(*args, **kwargs)


# table name -> module path (imported lazily, so that `softhard --help` stays fast)
REGISTRY: dict[str, str] = {
    "table1": "softhard.experiments.boundary_scaling",
    "table1_limit": "softhard.experiments.boundary_limit",
    "table1_multi": "softhard.experiments.boundary_multi",
    "table2": "softhard.experiments.boundary_geometry",
    "table3": "softhard.experiments.symmetry_breaking",
}


# the Config fields whose values make the rows of each table (a sweep cell must give one row: one value each);
# None: a table whose rows are not set by the config's lists (a trajectory: one row per step)
ROW_FIELDS: dict[str, tuple[str, ...] | None] = {
    "table1": ("taus",), "table1_limit": ("taus",), "table1_multi": ("taus",), "table2": ("offsets",),
    "table3": ("taus",), "table3_trajectory": None, "table3_phase_contrast": ("phase_taus", "phase_contrasts"),
    "table3_phase_anisotropy": ("phase_taus", "phase_anisotropies"),
}
# the most Monte Carlo draws a config may ask for (about 4 hours of Table 1 on one core): a larger number is a
# typo, not a plan
MAX_SAMPLES = 1 << 34


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to ``word``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get(name: str):
    """The module of diagnostic ``name`` (has ``Config`` and ``run``)."""
    if name not in REGISTRY:
        fail("name", "experiments.get", f"one of {sorted(REGISTRY)}{did_you_mean(name, REGISTRY)}", name)
    return importlib.import_module(REGISTRY[name])


def make_config(name: str, overrides: dict[str, Any] | None = None):
    """``Config`` of diagnostic ``name`` with ``overrides`` checked before anything runs.

    Unknown keys (with the closest field suggested) and wrong types raise; then the values: sample sizes
    and ``steps``/``d``/``K`` at least 1 (``samples`` in [2, :data:`MAX_SAMPLES`]), seeds in [0, 2**63), temperatures
    (``tau``, ``taus``, ``*_taus``) positive, every number finite, no empty tuple; then the module's own
    ``check(config)`` if it has one. Errors use the project's template (``ValueError``/``TypeError``).
    """
    module = get(name)
    cls = module.Config
    fields = {f.name: f for f in dataclasses.fields(cls)}
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if key not in fields:
            fail("config", name, f"a mapping with keys among {sorted(fields)}{did_you_mean(key, fields)}", key)
        default = getattr(cls(), key)
        overrides[key] = _coerce(value, default, f"{name}.{key}")
    config = cls(**overrides)
    for key in fields:
        _check_value(key, getattr(config, key), name)
    if callable(getattr(module, "check", None)):
        module.check(config)
    return config


def _check_value(key: str, value, where: str) -> None:
    """The rules of :func:`make_config` that hold for every diagnostic, by field name."""
    values = value if isinstance(value, (tuple, list)) else (value,)
    if isinstance(value, (tuple, list)) and not value:
        fail(key, where, "a non-empty list", list(value))
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if any(not math.isfinite(v) for v in numbers):
        fail(key, where, "finite (no NaN or inf)", value)
    if key == "seed" and not 0 <= value < 2 ** 63:
        fail(key, where, "an int in [0, 2**63)", value)
    if (key == "samples" or key.endswith("_samples")) and not 2 <= value <= MAX_SAMPLES:
        fail(key, where, f"an int in [2, 2**{MAX_SAMPLES.bit_length() - 1}]", value)
    if key in ("steps", "d", "K") and value < 1:
        fail(key, where, "an int >= 1", value)
    if (key in ("tau", "taus") or key.endswith("_taus")) and any(v <= 0 for v in numbers):
        fail(key, where, "positive temperatures (> 0)", value)


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
