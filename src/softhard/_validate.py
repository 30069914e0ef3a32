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
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)) and not (
        isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
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
        if t.dtype == torch.bool:
            fail(param, where, "an array of real numbers (not booleans)", t, TypeError)
        if not t.is_floating_point():
            t = t.to(DTYPE)
        if dtype is not None:
            t = t.to(dtype)
    else:
        t = torch.as_tensor(real_array(value, param, where), dtype=dtype or DTYPE)
    if device is not None:
        t = t.to(device)
    return t


def real_array(value: Any, param: str, where: str) -> np.ndarray:
    """``value`` as a float64 NumPy array, refusing what only looks like numbers: text (``'0.1'``, ``b'0.1'``,
    ``['0.1']``), booleans (``True``, boolean arrays), ``None`` or other objects inside a list, complex values."""
    rule = "an array of real numbers"
    if isinstance(value, (str, bytes, np.str_, np.bytes_)):
        fail(param, where, f"{rule} (not text)", value, TypeError)
    if isinstance(value, (bool, np.bool_)):
        fail(param, where, f"{rule} (not a boolean)", value, TypeError)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError, OverflowError):  # ragged lists, objects NumPy cannot hold
        fail(param, where, rule, value, TypeError)
    kind = arr.dtype.kind
    if kind in "USa":
        fail(param, where, f"{rule} (not text)", value, TypeError)
    if kind == "b":
        fail(param, where, f"{rule} (not booleans)", value, TypeError)
    if kind == "c" or np.iscomplexobj(arr):
        fail(param, where, f"{rule} (not complex)", value, TypeError)
    if kind == "O":
        bad = next((v for v in arr.reshape(-1).tolist() if isinstance(v, (bool, np.bool_, str, bytes)) or not
                    isinstance(v, (numbers.Real, np.floating, np.integer, torch.Tensor))), None)
        if bad is not None:
            fail(param, where, rule, value, TypeError)
    try:
        return np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        fail(param, where, rule, value, TypeError)


def check_bools(value: Any, param: str, where: str, size: int) -> np.ndarray:
    """``None`` (all ``False``), one boolean (for all), or a list of ``size`` booleans, as an array ``(size,)``."""
    rule = f"None, a boolean or a list of {size} booleans"
    if value is None:
        return np.zeros(size, bool)
    if isinstance(value, (bool, np.bool_)):
        return np.full(size, bool(value))
    if isinstance(value, (str, bytes)):
        fail(param, where, rule, value, TypeError)
    try:
        arr = np.asarray(value.tolist() if isinstance(value, torch.Tensor) else value, dtype=object).reshape(-1)
    except (TypeError, ValueError):
        fail(param, where, rule, value, TypeError)
    if not all(isinstance(v, (bool, np.bool_)) for v in arr.tolist()):
        fail(param, where, rule, value, TypeError)
    if arr.size != size:
        fail(param, where, rule, value)
    return arr.astype(bool)


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
