"""Declared validation with one error template.

Every check raises ``ValueError``/``TypeError`` worded as
``The 'tau' parameter of softmax_gate must be a float in (0, inf). Got -1.0.``
so that the parameter, the rule and the offending value are always named.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

DTYPE = torch.float64


def fail(param: str, where: str, rule: str, value: Any, exc: type[Exception] = ValueError) -> None:
    """Raise ``exc`` with the project's single error template."""
    shown = value
    if isinstance(value, torch.Tensor):
        shown = f"tensor of shape {tuple(value.shape)}" if value.numel() > 6 or value.device.type == "meta" else (
            value.tolist())
    elif isinstance(value, np.ndarray):
        shown = f"array of shape {value.shape}" if value.size > 6 else value.tolist()
    raise exc(f"The '{param}' parameter of {where} must be {rule}. Got {shown!r}.")


def check_float(value: Any, param: str, where: str, low: float = -math.inf, high: float = math.inf,
                low_open: bool = True, high_open: bool = True) -> float:
    """A real scalar in an interval; returns it as ``float``."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    rule = f"a float in {lo}{low:g}, {high:g}{hi}"
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)) and not (
        isinstance(value, torch.Tensor) and value.numel() == 1
    ):
        fail(param, where, rule, value, TypeError)
    v = float(value)
    if math.isnan(v) or (v <= low if low_open else v < low) or (v >= high if high_open else v > high):
        fail(param, where, rule, value)
    return v


def check_int(value: Any, param: str, where: str, low: int = 1, high: int | None = None) -> int:
    """An integer in ``[low, high]``; floats like ``1e6`` that are whole numbers are accepted."""
    rule = f"an int in [{low}, {'inf' if high is None else high}]"
    if isinstance(value, bool):
        fail(param, where, rule, value, TypeError)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, (numbers.Integral, np.integer)):
        fail(param, where, rule, value, TypeError)
    v = int(value)
    if v < low or (high is not None and v > high):
        fail(param, where, rule, value)
    return v


def as_tensor(value: Any, param: str, where: str, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Convert to a floating tensor (float64 unless ``value`` is already a floating tensor).

    Complex values and tensors without data (the ``meta`` device) are refused, not cast; ``device`` is
    checked with :func:`check_device` (the error names ``'device'``).
    """
    if device is not None:
        device = check_device(device, where)
    if isinstance(value, torch.Tensor):
        t = value
        if t.is_complex():
            fail(param, where, "an array of real numbers", f"a tensor of dtype {t.dtype}", TypeError)
        if t.device.type == "meta":
            fail(param, where, "a tensor with data (not on the 'meta' device)", f"tensor of shape {tuple(t.shape)}")
        if not t.is_floating_point():
            t = t.to(DTYPE)
        if dtype is not None:
            t = t.to(dtype)
    else:
        try:
            if np.iscomplexobj(value):
                raise TypeError("complex")
            t = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype or DTYPE)
        except (TypeError, ValueError, OverflowError):
            fail(param, where, "an array of real numbers", value, TypeError)
    if device is not None:
        t = t.to(device)
    return t


def check_device(device: Any, where: str, param: str = "device") -> torch.device:
    """A ``torch.device`` (or its name) that exists here: ``"cpu"``, or an available accelerator."""
    rule = "None, 'cpu' or the name of an available device such as 'cuda:0'"
    if not isinstance(device, (str, torch.device)):
        fail(param, where, rule, device, TypeError)
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        fail(param, where, rule, device)
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        fail(param, where, f"{rule} (the 'meta' device holds no data)", device)
    backend = getattr(torch, dev.type, None)
    count = getattr(backend, "device_count", None)
    try:
        available = bool(backend.is_available()) and (dev.index is None or count is None or dev.index < count())
    except Exception:  # noqa: BLE001 - a backend that cannot answer is not available
        available = False
    if not available:
        fail(param, where, f"{rule} ({dev.type} is not available here)", device)
    return dev


def check_dtype(dtype: Any, where: str, param: str = "dtype",
                allowed: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> torch.dtype:
    """One of ``allowed`` floating torch dtypes (float64 or float32 by default)."""
    if not isinstance(dtype, torch.dtype) or dtype not in allowed:
        names = " or ".join(str(a) for a in allowed)
        fail(param, where, names, dtype, TypeError)
    return dtype


def check_finite(t: torch.Tensor, param: str, where: str) -> torch.Tensor:
    if not bool(torch.isfinite(t).all()):
        bad = t[~torch.isfinite(t)].flatten()[:3].tolist()
        fail(param, where, "finite (no NaN or inf)", f"non-finite entries such as {bad}")
    return t


def check_logits(logits: Any, where: str, param: str = "logits") -> torch.Tensor:
    """Logits of shape ``(..., K)`` with ``K >= 2``, finite."""
    t = as_tensor(logits, param, where)
    if t.ndim < 1 or t.shape[-1] < 2:
        fail(param, where, "an array of shape (..., K) with K >= 2 experts", f"shape {tuple(t.shape)}")
    return check_finite(t, param, where)


def check_grid(values: Any, param: str, where: str, low: float = 0.0, low_open: bool = False) -> torch.Tensor:
    """A non-empty 1-d grid of finite reals ``>= low`` (or ``> low``)."""
    try:
        ndim = np.ndim(values)
    except ValueError:  # ragged nested lists
        ndim = None
    t = as_tensor(values, param, where).reshape(-1) if ndim is not None and ndim <= 1 else None
    if t is None:
        fail(param, where, "a scalar or a 1-d array", values)
    if t.numel() == 0:
        fail(param, where, "a non-empty array", values)
    check_finite(t, param, where)
    if bool((t <= low).any() if low_open else (t < low).any()):
        fail(param, where, f"an array of values {'>' if low_open else '>='} {low:g}", t)
    return t


def check_inputs(x: Any, d: int | None, where: str, param: str = "x") -> torch.Tensor:
    """Inputs of shape ``(N, d)``, finite."""
    t = as_tensor(x, param, where)
    if t.ndim != 2 or (d is not None and t.shape[1] != d):
        fail(param, where, f"an array of shape (N, {d if d is not None else 'd'})", f"shape {tuple(t.shape)}")
    return check_finite(t, param, where)


SEED_MAX = 2 ** 64 - 1  # the largest seed torch.Generator.manual_seed takes


def check_seed(seed: Any, where: str) -> None:
    if seed is None or isinstance(seed, torch.Generator):
        return
    check_seed_value(seed, where)


def check_seed_value(seed: Any, where: str, param: str = "seed") -> int:
    """An int seed in ``[0, 2**64 - 1]`` (what ``torch.Generator.manual_seed`` takes)."""
    v = check_int(seed, param, where, low=0)
    if v > SEED_MAX:
        fail(param, where, "an int in [0, 2**64 - 1]", seed)
    return v
