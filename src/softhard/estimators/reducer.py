r"""The one streaming Monte Carlo / quasi-Monte Carlo reducer.

A Monte Carlo quantity is a function ``terms(x) -> (N, ...)`` of per-sample terms; :func:`monte_carlo`
averages it over ``n`` draws of a law in fixed-size blocks and returns an :class:`Estimate`
``(value, stderr, n)``.

Reproducibility: block ``b`` (``BLOCK`` samples) is drawn from its own NumPy generator (SFC64) seeded by
``SeedSequence([seed, 0, b])`` and reduced on its own (mean and centred sum of squares, in NumPy,
single-threaded), and blocks are merged in order (Chan et al.). Hence the result depends on
``(seed, n)`` only — not on ``chunk`` (how many blocks are evaluated per call), ``workers`` (threads
drawing the blocks of a chunk), the thread count, or the device the terms are evaluated on (up to the
device's float rounding). Inputs are always drawn on the CPU (so a CUDA run averages the same draws)
and moved to ``device``. Memory is ``O(chunk · (d + terms))``, flat in ``n``. Precision: the draws and
the terms are computed in the law's dtype (float64 by default; a float32 law with a float32 model
runs in float32), the reduction always in float64.

Standard errors: plain MC uses the sample standard deviation over :math:`\sqrt n`; scrambled Sobol
QMC uses ``R`` independent scramblings, value = mean of the ``R`` estimates, stderr = their standard
deviation over :math:`\sqrt R`. Each scrambled Sobol point is exactly uniform on [0, 1)^s (torch's
30-bit points get a uniform offset inside their grid cell), so every scrambling is unbiased. A
scrambling's points are reduced in blocks of 256, 256, 512, ..., 8192 and then ``BLOCK`` points, the
sizes at which early stopping (``target_rel_error``) looks at all scramblings together.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable
import warnings

import numpy as np
import torch

from .._validate import check_device, check_float, check_int, check_seed, fail, real_array
from ..model.laws import as_law

__all__ = ["Estimate", "Moments", "Sampling", "sampling_options", "sample_mean", "TargetNotReached", "NoHit",
           "DEFAULT_TARGET", "MAX_SAMPLES", "MAX_SECONDS", "first_stop", "monte_carlo", "mean_estimate", "draw",
           "resolve_seed", "BLOCK", "no_hit_bound", "draw_seconds", "check_budget", "duration", "user_stacklevel"]

BLOCK = 1 << 14  # samples per RNG block: fixes the stream, so results depend on (seed, n) only


@dataclass(frozen=True)
class Estimate:
    r"""An estimate: ``value`` and ``stderr`` (floats, or arrays of one shape) from ``n`` samples.

    Attributes:
        value, stderr: the estimate and its standard error (``stderr = 0`` for a closed form; NaN where it
            cannot be estimated, e.g. from a single sequence of a per-sequence mean).
        n: samples used (after any rounding, e.g. QMC's ``n`` is a multiple of its scramblings; 0 for a
            closed form).
        method: the estimator that produced it (``"exact"``, ``"conditional"``, ``"qmc"``, ``"mc"``, ...).
        seed: the integer seed used (``None`` for a closed form).
        info: details (closed form used, bandwidth, timing, requested ``n``, ...).
        converged: ``False`` when a ``target_rel_error`` was asked and a budget or cap stopped the sampling
            before every entry reached it (a warning says so too); ``True`` otherwise.
        dof: degrees of freedom of ``stderr``: ``n − 1`` for i.i.d. sampling, ``R − 1`` for QMC with R
            independent scramblings (whose standard error is the spread of R estimates), ``inf`` for a
            closed form. Intervals use the Student-t quantile with ``dof`` degrees of freedom.
        error_bound: a deterministic bound on the absolute error left by a closed form's numerical
            integration (e.g. Genz's algorithm, ``abseps`` per orthant), 0 where the closed form is exact
            to rounding; or, for a sampled entry that saw no hit (``info["no_hit"]``), its 95 % upper bound
            (the value is then 0; :func:`no_hit_bound`); added to the half-width of :meth:`interval`.
        target: the relative error that was asked (``None``: none).
    """

    value: np.ndarray | float
    stderr: np.ndarray | float
    n: int
    method: str = "mc"
    seed: int | None = None
    info: dict = field(default_factory=dict, compare=False, repr=False)
    converged: bool = True
    dof: float = math.inf
    error_bound: np.ndarray | float = 0.0
    target: float | None = None

    def __post_init__(self):
        _check_estimate(self)

    def __bool__(self):
        raise TypeError("The truth value of an Estimate is not defined: test est.value (an array for a grid), "
                        "est.converged or est.stderr instead.")

    @classmethod
    def exact(cls, value, closed_form: str, error_bound=0.0, **info) -> "Estimate":
        """A closed-form value (``stderr = 0``, ``n = 0``, method ``"exact"``) with its integration error bound."""
        v = np.asarray(value, dtype=np.float64)
        b = np.broadcast_to(np.asarray(error_bound, dtype=np.float64), v.shape)
        return cls(_out(v), _out(np.zeros_like(v)), 0, "exact", None, {"closed_form": closed_form, **info},
                   error_bound=_out(b))

    @property
    def rel_error(self):
        """``stderr / |value|`` (0 where ``stderr`` is 0, inf where only the value is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.abs(np.asarray(self.stderr)) / np.abs(np.asarray(self.value))
        r = np.where(np.asarray(self.stderr) == 0, 0.0, r)
        return float(r) if np.ndim(r) == 0 else r

    def multiplier(self, level: float = 0.95, _where: str = "Estimate.multiplier") -> float:
        r"""Half-width of the ``level`` interval in standard errors: the Student-t quantile
        :math:`t_{\nu}((1 + \text{level})/2)` with :math:`\nu` = ``dof`` (1.96 for large ``n`` at 95 %;
        2.13 for QMC with 16 scramblings)."""
        level = check_float(level, "level", _where, 0.0, 1.0)
        from scipy.special import stdtrit, ndtri

        q = 0.5 + level / 2
        return float(ndtri(q)) if not math.isfinite(self.dof) else float(stdtrit(max(self.dof, 1.0), q))

    def interval(self, level: float = 0.95):
        """``(low, high)``: ``value ∓ (multiplier(level)·stderr + error_bound)`` (arrays for an array value)."""
        half = self.multiplier(level, "Estimate.interval") * np.asarray(self.stderr) + np.asarray(self.error_bound)
        v = np.asarray(self.value)
        return _out(v - half), _out(v + half)

    def replace(self, **changes) -> "Estimate":
        """A copy with some fields changed (``info`` is merged, not replaced)."""
        if "info" in changes:
            changes["info"] = {**self.info, **changes["info"]}
        return dataclasses.replace(self, **changes)

    def scaled(self, c: float) -> "Estimate":
        """The estimate of ``c`` times the quantity (value, stderr and error bound scaled by ``|c|``)."""
        return self.replace(value=_out(np.asarray(self.value) * c), stderr=_out(np.asarray(self.stderr) * abs(c)),
                            error_bound=_out(np.asarray(self.error_bound) * abs(c)))

    def __float__(self):
        if np.ndim(self.value) != 0:
            raise TypeError(f"float() of an Estimate with an array value of shape {np.shape(self.value)}")
        return float(self.value)

    def __getitem__(self, idx) -> "Estimate":
        """The estimate of one entry (or a slice) of an array-valued estimate."""
        pick = lambda a: _out(np.broadcast_to(np.asarray(a), np.shape(self.value))[idx])  # noqa: E731
        shape = np.shape(self.value)
        info = {k: pick(v) for k, v in self.info.items() if isinstance(v, np.ndarray) and v.shape == shape}
        return self.replace(value=pick(self.value), stderr=pick(self.stderr), error_bound=pick(self.error_bound),
                            info=info)

    def __len__(self):
        return len(np.asarray(self.value))

    def __format__(self, spec):
        if np.ndim(self.value) == 0:
            spec = spec or ".6g"
            if self.method == "exact":
                bound = f" (±{self.error_bound:.1g})" if self.error_bound else ""
                return f"{self.value:{spec}}{bound} (exact)"
            if np.any(self.info.get("no_hit", 0.0)):
                return f"≤ {self.error_bound:.3g} (95 % upper bound: no hit in n={self.n}, {self.method})"
            flag = "" if self.converged else ", target not reached"
            return f"{self.value:{spec}} ± {self.stderr:.2g} (n={self.n}, {self.method}{flag})"
        return repr(self)

    def as_dict(self) -> dict:
        """JSON-ready dict (lists for arrays)."""
        tolist = lambda a: np.asarray(a).tolist()  # noqa: E731
        return {"value": tolist(self.value), "stderr": tolist(self.stderr), "n": self.n, "method": self.method,
                "seed": self.seed, "converged": self.converged, "dof": self.dof,
                "error_bound": tolist(np.broadcast_to(np.asarray(self.error_bound, float), np.shape(self.value))),
                "target": self.target}


def _check_estimate(e: "Estimate") -> None:
    """The fields of an :class:`Estimate` a user builds by hand (errors name ``Estimate``)."""
    where = "Estimate"
    value = np.asarray(real_array(e.value, "value", where))
    stderr = np.asarray(real_array(e.stderr, "stderr", where))
    if stderr.shape not in ((), value.shape):
        fail("stderr", where, f"a scalar or an array of the value's shape {value.shape}", f"shape {stderr.shape}")
    if bool((stderr < 0).any()):
        fail("stderr", where, "standard errors >= 0 (or NaN: not estimable)", e.stderr)
    bound = np.asarray(real_array(e.error_bound, "error_bound", where))
    if bound.shape not in ((), value.shape) or bool((bound < 0).any()):
        fail("error_bound", where, "bounds >= 0, a scalar or of the value's shape", e.error_bound)
    if isinstance(e.n, bool) or not isinstance(e.n, (int, np.integer)) or e.n < 0:
        fail("n", where, "an int >= 0 (the samples used)", e.n, TypeError if not isinstance(e.n, (int, np.integer))
             or isinstance(e.n, bool) else ValueError)
    if not isinstance(e.method, str):
        fail("method", where, "a str naming the estimator", e.method, TypeError)
    if e.seed is not None and (isinstance(e.seed, bool) or not isinstance(e.seed, (int, np.integer)) or e.seed < 0):
        fail("seed", where, "None or an int >= 0", e.seed, TypeError)
    if not isinstance(e.converged, (bool, np.bool_)):
        fail("converged", where, "a bool", e.converged, TypeError)
    if isinstance(e.dof, bool) or not isinstance(e.dof, (int, float, np.integer, np.floating)) or not e.dof >= 0:
        fail("dof", where, "a number >= 0 (inf for a closed form)", e.dof)
    if e.target is not None and (isinstance(e.target, bool) or not isinstance(e.target, (int, float, np.floating))
                                 or not 0 < e.target < math.inf):
        fail("target", where, "None or a relative error in (0, inf)", e.target)


def _out(a):
    a = np.asarray(a, dtype=np.float64)
    return float(a) if a.ndim == 0 else a


class Moments:
    """Ordered merge of per-block (count, mean, M2): deterministic, numerically stable; ``hits``: the number of
    non-zero terms of each entry."""

    def __init__(self):
        self.n, self.mean, self.m2, self.hits = 0, None, None, None

    def add_block(self, t: np.ndarray) -> None:
        nb = t.shape[0]
        mb = t.mean(axis=0)
        m2b = ((t - mb) ** 2).sum(axis=0)
        hb = np.count_nonzero(t, axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2, self.hits = nb, mb, m2b, hb
            return
        self.hits = self.hits + hb
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta ** 2 * (self.n * nb / n)
        self.n = n

    def stderr(self) -> np.ndarray:
        if self.n < 2:
            return np.full_like(self.mean, np.inf)
        return np.sqrt(self.m2 / (self.n - 1) / self.n)


def _to_numpy(t, param: str = "terms", where: str = "monte_carlo") -> np.ndarray:
    rule = "per-sample terms of shape (N, ...)" if param == "values" else \
        "a function returning per-sample terms of shape (N, ...)"
    if isinstance(t, torch.Tensor):
        if t.is_complex() or t.is_meta:
            fail(param, where, rule + " of real numbers", f"a {t.dtype} tensor on {t.device}", TypeError)
        t = t.detach().to("cpu", torch.float64).numpy()
    try:
        if np.iscomplexobj(t):
            fail(param, where, rule + " of real numbers", "complex values", TypeError)
        t = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        fail(param, where, rule, type(t).__name__, TypeError)
    if t.ndim == 0:
        fail(param, where, rule, "a scalar")
    return t


def resolve_seed(seed, where: str = "monte_carlo") -> int:
    """An integer seed from ``int | torch.Generator | None`` (None draws a fresh one, to be recorded)."""
    check_seed(seed, where)
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2 ** 31 - 1, (1,), generator=seed))
    return int(seed)


def _block_generator(seed: int, b: int, stream: int = 0) -> np.random.Generator:
    """The generator of block ``b`` of stream ``stream`` (0: samples, 2: QMC jitter)."""
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, stream, b])))


def _block_sizes(n: int, start: int = 0, stop: int | None = None):
    """``(block index, size)`` of the blocks ``start <= b < stop`` covering ``n`` samples (lazily)."""
    last = -(-n // BLOCK)
    for b in range(start, last if stop is None else min(stop, last)):
        yield b, min(BLOCK, n - b * BLOCK)


def _chunks(n: int, bpc: int):
    """Lists of ``bpc`` consecutive blocks (the last one shorter), generated lazily: memory flat in ``n``."""
    for start in range(0, -(-n // BLOCK), bpc):
        yield list(_block_sizes(n, start, start + bpc))


def draw(law, n: int, seed=0, device=None) -> torch.Tensor:
    """The exact inputs ``(n, d)`` that :func:`monte_carlo` averages over for ``(seed, n)`` (method "mc").

    Use it for procedures that need one fixed sample (training on a fixed Monte Carlo sample).
    """
    law = as_law(law, "draw")
    n = check_int(n, "n", "draw")
    seed = resolve_seed(seed, "draw")
    device = None if device is None else check_device(device, "draw")
    x = torch.cat([law.sample(m, _block_generator(seed, b)) for b, m in _block_sizes(n)])
    return x if device is None else x.to(device)


DEFAULT_TARGET = 5e-3  # relative error sampled to when neither n nor target_rel_error is given
MAX_SAMPLES = 1 << 24  # the cap on samples when n is not given (raise it with max_samples=)
MAX_SECONDS = 3600.0  # a requested n predicted to take longer is refused (raise it with max_seconds=)
NO_HIT_LEVEL = 0.95  # the confidence of the upper bound reported for an entry that saw no hit


class TargetNotReached(UserWarning):
    """A ``target_rel_error`` was asked and a budget or cap stopped the sampling first."""


class NoHit(UserWarning):
    """A sampled entry saw no hit (every term 0): it is reported as an upper bound, not as 0 ± 0."""


@dataclass(frozen=True)
class Sampling:
    """How to sample, validated once at the public door by :func:`sampling_options`.

    ``n``: a fixed sample size, or (with ``target``) the budget; ``None``: sample until ``target`` (the
    default target :data:`DEFAULT_TARGET` if none is given), at most ``max_samples``.
    """

    n: int | None = None
    seed: int = 0
    target: float | None = None
    max_samples: int = MAX_SAMPLES
    scrambles: int = 16
    chunk: int | None = None
    device: torch.device | None = None
    workers: int = 1
    min_n: int | None = None
    progress: bool = False
    desc: str = "sampling"
    where: str = "monte_carlo"
    max_seconds: float = MAX_SECONDS
    quiet: bool = False


def sampling_options(where: str, n=None, seed=0, target_rel_error=None, *, max_samples=None, scrambles=16,
                     chunk=None, device=None, workers=1, min_n=None, progress=False, desc=None,
                     max_seconds=MAX_SECONDS) -> Sampling:
    """Validate the sampling arguments of a public function ``where`` (errors name it) into a :class:`Sampling`."""
    n = None if n is None else check_int(n, "n", where)
    target = None if target_rel_error is None else check_float(target_rel_error, "target_rel_error", where, 0.0,
                                                               math.inf)
    cap = MAX_SAMPLES if max_samples is None else check_int(max_samples, "max_samples", where)
    return Sampling(n, resolve_seed(seed, where), target, cap, check_int(scrambles, "scrambles", where, low=2),
                    None if chunk is None else check_int(chunk, "chunk", where),
                    None if device is None else check_device(device, where), check_int(workers, "workers", where),
                    None if min_n is None else check_int(min_n, "min_n", where), bool(progress), desc or where, where,
                    check_float(max_seconds, "max_seconds", where, 0.0, math.inf, high_open=False))


def draw_seconds(law) -> float:
    """Cost model of drawing one input from ``law`` (seconds, one thread): 10 ns per normal or uniform number
    and, for a Gaussian that is not N(0, I), 1 ns per entry of its factor (the map ``m + Lz``); a floor for
    anything sampled from it (``benchmarks/scale.py`` measured it)."""
    from ..model.laws import Gaussian, GaussianMixture

    d = getattr(law, "qmc_dim", getattr(law, "d", 1))
    comps = law.components if isinstance(law, GaussianMixture) else [law] if isinstance(law, Gaussian) else []
    return 1e-8 * d + (1e-9 * law.d * law.d if any(_dense(c) for c in comps) else 0.0)


_DENSE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _dense(g) -> bool:
    """Whether a Gaussian maps its normals through a factor (not N(0, I)); cached per law object."""
    if g not in _DENSE:
        L = g.scale_tril
        _DENSE[g] = not (bool((g.mean == 0).all()) and bool((torch.diagonal(L) == 1).all())
                         and int(torch.count_nonzero(L)) == g.d)
    return _DENSE[g]


def check_budget(law, method: str, s: Sampling, per_draw: float | None = None, what: str = "n") -> None:
    """Refuse a requested ``n`` whose predicted time (``per_draw`` seconds per draw, default the floor
    :func:`draw_seconds`) exceeds ``s.max_seconds``, before anything is drawn."""
    if s.n is None:
        return
    seconds = s.n * (draw_seconds(law) if per_draw is None else per_draw)
    if seconds > s.max_seconds:
        fail(what, s.where, f"a sample size whose predicted time is at most max_seconds={s.max_seconds:g} s "
             f"(predicted {duration(seconds)} for n={s.n} with method '{method}'; pass max_seconds= to allow it)",
             s.n)


def duration(seconds: float) -> str:
    """A time span in words: '2.3 h', '4.1e+17 years'."""
    for unit, size in (("years", 3.15576e7), ("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", unit_scale=True, leave=False)


def monte_carlo(terms: Callable[[torch.Tensor], torch.Tensor], law, n: int | None = None, seed=0, *,
                method: str = "mc", target_rel_error: float | None = None, max_samples: int | None = None,
                scrambles: int = 16, chunk: int | None = None, device=None, min_n: int | None = None, workers: int = 1,
                progress: bool = False, desc: str = "sampling", max_seconds: float = MAX_SECONDS) -> Estimate:
    r"""Average per-sample terms over a law: :math:`\hat E[t(X)] = \frac1n\sum_i t(X_i)` with its standard error.

    Args:
        terms: ``x (N, d) -> (N, ...)`` per-sample terms (the trailing shape is the value's shape).
        law: a :class:`softhard.model.laws.Law`.
        n: number of samples (total over scramblings for QMC, rounded down to a multiple of ``scrambles``;
            ``Estimate.n`` is what was used). With ``target_rel_error`` it is the budget. ``None``: sample
            until ``target_rel_error`` (:data:`DEFAULT_TARGET` = 0.5 % if not given), at most ``max_samples``.
        seed: ``int``, ``torch.Generator`` (one integer is drawn from it) or ``None`` (fresh, recorded).
        method: ``"mc"`` (i.i.d. draws) or ``"qmc"`` (scrambled Sobol, ``scrambles`` independent copies).
        target_rel_error: stop once every entry has ``stderr <= target·|value|``, after at least ``min_n``
            samples. The rule is checked after every block ("mc"), or after 256, 512, 1024, ..., 16384 and
            then every further 16384 points of every scrambling ("qmc"), so the stopping point, and the
            result, depend on ``(seed, n)`` only, not on ``chunk``; the result equals a plain run of the length
            where it stopped. An entry whose terms are all 0 so far has ``stderr = 0`` and counts as converged.
            If the budget (``n``) or the cap (``max_samples``) stops the run first, the estimate has
            ``converged=False`` and a :class:`TargetNotReached` warning names the reached and requested errors.
        max_samples: the cap when ``n`` is ``None`` (default :data:`MAX_SAMPLES` = 2²⁴).
        chunk: samples evaluated per call of ``terms`` (rounded to whole blocks); changes speed and
            memory, never the result. ``None``: one block (``BLOCK`` samples) per call on the CPU, which
            avoids concatenating blocks (``workers`` blocks with ``workers > 1``), and 16 blocks per call
            on another ``device``.
        device: where ``terms`` is evaluated (inputs are drawn on the CPU and moved there).
        min_n: (with a target) the fewest samples before stopping; default :func:`first_stop`: one block
            (16384) for "mc", 256 points of every scrambling (4096 with 16) for "qmc".
        workers: threads drawing the blocks of a chunk in parallel ("mc"; NumPy releases the GIL while
            it fills an array); never changes the result.
        progress: show a progress bar.
        max_seconds: a requested ``n`` whose predicted time exceeds it is refused at once with the prediction
            (here a floor: :func:`draw_seconds` per draw; the quantities use their methods' cost models).

    Returns:
        :class:`Estimate` with ``value`` and ``stderr`` of the terms' trailing shape; ``dof`` is ``n − 1``
        ("mc") or ``scrambles − 1`` ("qmc").
    """
    where = "monte_carlo"
    if not callable(terms):
        fail("terms", where, "a callable x (N, d) -> per-sample terms (N, ...)", type(terms).__name__, TypeError)
    law = as_law(law, where)
    if method not in ("mc", "qmc"):
        fail("method", where, "one of 'mc', 'qmc'", method)
    opts = sampling_options(where, n, seed, target_rel_error, max_samples=max_samples, scrambles=scrambles,
                            chunk=chunk, device=device, workers=workers, min_n=min_n, progress=progress, desc=desc,
                            max_seconds=max_seconds)
    return sample_mean(terms, law, method, opts)


def first_stop(method: str, s: Sampling) -> int:
    """The fewest samples before a targeted run may stop: ``s.min_n``, else one block (16384) for "mc" and the
    first dyadic checkpoint of every scrambling (256 points each, 4096 in all with 16 scramblings) for "qmc"."""
    if s.min_n is not None:
        return s.min_n
    return BLOCK if method == "mc" else s.scrambles * _QMC_FIRST[0]


def no_hit_bound(n: int, level: float = NO_HIT_LEVEL) -> float:
    r"""The one-sided upper confidence bound on a probability p after n draws without a hit (Clopper–Pearson):
    :math:`1 - (1 - \text{level})^{1/n}`, about :math:`3/n` at 95 % (the rule of three)."""
    return -math.expm1(math.log1p(-level) / n)


def sample_mean(terms, law, method: str, s: Sampling, default_target: float | None = DEFAULT_TARGET, *,
                bound=None) -> Estimate:
    r"""The trusted core of :func:`monte_carlo` (arguments validated by the caller, :func:`sampling_options`).

    Budget: ``s.n`` samples (or until ``s.target`` within them); with ``s.n = None``, until ``s.target`` or
    ``default_target``, at most ``s.max_samples``.

    ``bound``: a bound ``B`` on ``|terms|`` per entry (a float or an array of the value's shape; 0 exempts an
    entry whose value is 0 by construction, such as β(0)), for terms that are 0 except on an event (indicators,
    kernel windows, ...). An entry without a single non-zero term ("no hit") is then never taken as converged,
    and if the run ends so it is reported as an upper bound: ``value = 0``, ``error_bound =`` :math:`B` times
    :func:`no_hit_bound` (:math:`|E\,t| \le B\,P(t \ne 0)`, and P(t ≠ 0) is below the rule-of-three bound at 95 %;
    for QMC the n points are counted as if independent, which scrambled nets, spread more evenly than
    independent draws, do not make optimistic), ``converged = False``, ``info["no_hit"]``, and a
    :class:`NoHit` warning. ``info["hits"]`` counts the non-zero terms of every entry.
    """
    check_budget(law, method, s)
    target = s.target if s.target is not None or s.n is not None else default_target
    n = s.n if s.n is not None else s.max_samples
    min_n = first_stop(method, s)
    R = s.scrambles
    if method == "qmc" and n < R:
        fail("n", s.where, f"at least scrambles={R} for QMC", n)
    if s.chunk is None:
        bpc = s.workers if s.device is None or s.device.type == "cpu" else max(16, s.workers)
    else:
        bpc = max(1, s.chunk // BLOCK)
    bar = _progress(n, s.progress, s.desc)
    pool = ThreadPoolExecutor(s.workers) if s.workers > 1 and method == "mc" else None
    B = None if bound is None else np.asarray(bound, dtype=np.float64)
    t0 = time.perf_counter()
    try:
        if method == "mc":
            est, hits = _mc(terms, law, n, s.seed, bpc, s.device, target, min_n, bar, pool, s.where, B)
        else:
            est, hits = _qmc(terms, law, n, s.seed, R, bpc, s.device, target, min_n, bar, s.where, B)
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown()
    info = {"seconds": time.perf_counter() - t0}
    if s.n is not None and est.n != s.n and target is None:
        info["n_requested"] = s.n
    converged = target is None or _converged(np.asarray(est.value), np.asarray(est.stderr), target, hits, B)
    info["hits"] = _out(hits)
    if B is not None:
        none = (hits == 0) & (np.broadcast_to(B, np.shape(hits)) > 0)
        if bool(np.any(none)):
            upper = np.where(none, np.broadcast_to(B, none.shape) * no_hit_bound(est.n), 0.0)
            info.update(no_hit=_out(none.astype(float)), upper_bound=_out(upper))
            est = est.replace(error_bound=_out(upper))
            converged = False
            if not s.quiet:
                which = "" if none.ndim == 0 else f" at entries {np.flatnonzero(none).tolist()}"
                warnings.warn(f"{s.where}: no hit in {est.n} draws{which}: reported as 0 with the 95 % upper bound "
                              f"{float(np.max(upper)):.3g} (rule of three, 3/n) in error_bound; raise n or use a "
                              "method that samples the event (method='exact' or 'conditional' where they apply)",
                              NoHit, stacklevel=user_stacklevel())
    if not converged and target is not None and not _converged(np.asarray(est.value), np.asarray(est.stderr),
                                                               target):
        reached = float(np.max(np.where(np.asarray(est.stderr) == 0, 0.0, np.asarray(est.rel_error))))
        stop = f"the budget n={s.n}" if s.n is not None else f"the cap max_samples={s.max_samples}"
        if not s.quiet:
            warnings.warn(f"{s.where}: target relative error {target:g} not reached: {reached:.3g} after {est.n} "
                          f"samples ({stop}); raise {'n' if s.n is not None else 'max_samples'} or relax the target",
                          TargetNotReached, stacklevel=user_stacklevel())
    return est.replace(info=info, converged=converged, target=target)


def user_stacklevel() -> int:
    """The ``stacklevel`` of a warning issued here that points at the first frame outside softhard (the user's
    call), however deep the package's own frames are."""
    import os
    import sys

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _eval(terms, x, device, where: str) -> np.ndarray:
    if device is not None:
        x = x.to(device)
    with torch.no_grad():
        try:
            out = terms(x)
        except Exception as e:  # a user's terms: their error, its traceback kept as the cause
            if where != "monte_carlo" or _ours(e):
                raise
            raise ValueError(f"The 'terms' parameter of monte_carlo must be a function that runs on inputs of shape "
                             f"{tuple(x.shape)}; it raised {type(e).__name__}: {e} (its traceback is the cause of "
                             f"this error).") from e
        t = _to_numpy(out, where=where)
    if t.shape[0] != x.shape[0]:
        fail("terms", where, f"a function returning one row per sample ({x.shape[0]})", f"{t.shape[0]} rows")
    if t.size == 0:
        fail("terms", where, "a function returning at least one value per sample", f"shape {t.shape}")
    if not np.isfinite(t).all():
        if where == "monte_carlo":
            bad = t[~np.isfinite(t)][:3].tolist()
            fail("terms", where, "a function returning finite per-sample terms", f"non-finite terms such as {bad}")
        raise FloatingPointError(f"{where}: the per-sample terms contain NaN or inf (the model, the teacher or the "
                                 "law produced a non-finite value)")
    return t


def _ours(e: Exception) -> bool:
    """An error in softhard's template (a user's mistake already reported), not a failure to wrap."""
    return isinstance(e, (ValueError, TypeError)) and str(e).startswith("The '") and " parameter of " in str(e)


def _offsets(sizes) -> list[tuple[int, int]]:
    """``(start, stop)`` rows of each block of a chunk."""
    stops = np.cumsum(sizes).tolist()
    return list(zip([0] + stops[:-1], stops))


def _cat(xs: list[torch.Tensor]) -> torch.Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs)


def _converged(mean: np.ndarray, stderr: np.ndarray, target: float, hits=None, bound=None) -> bool:
    """Every entry within the target; with a ``bound``, an entry without a hit (and a bound > 0) is not."""
    ok = stderr <= target * np.abs(mean)
    if bound is not None:
        ok = ok & ((np.asarray(hits) > 0) | (np.broadcast_to(bound, np.shape(ok)) == 0))
    return bool(np.all(ok))


def _mc(terms, law, n, seed, bpc, device, target, min_n, bar, pool, where, bound) -> tuple[Estimate, np.ndarray]:
    acc = Moments()
    sample = lambda bm: law.sample(bm[1], _block_generator(seed, bm[0]))  # noqa: E731
    for part in _chunks(n, bpc):
        x = _cat(list(pool.map(sample, part)) if pool is not None else [sample(bm) for bm in part])
        t = _eval(terms, x, device, where)
        if bar is not None:
            bar.update(x.shape[0])
        for a, b in _offsets([m for _, m in part]):  # blocks merged in order; early stop checked after each
            acc.add_block(t[a:b])
            if target is not None and acc.n >= min_n and _converged(acc.mean, acc.stderr(), target, acc.hits, bound):
                break
        else:
            continue
        break
    return Estimate(_out(acc.mean), _out(acc.stderr()), acc.n, "mc", seed, dof=acc.n - 1), acc.hits


def _sobol_block(engine, jitter: np.random.Generator, m: int) -> torch.Tensor:
    """``m`` scrambled Sobol points made exactly uniform on [0, 1): torch's points lie on the grid
    ``k / 2**MAXBIT`` (mean ``1/2 - 2**-(MAXBIT+1)``, a bias visible at QMC accuracy), so each point gets an
    independent uniform offset inside its grid cell, which keeps the low-discrepancy structure."""
    u = engine.draw(m, dtype=torch.float64)
    return u + torch.from_numpy(jitter.random(tuple(u.shape))) * 2.0 ** -engine.MAXBIT


_QMC_FIRST = (256, 256, 512, 1024, 2048, 4096, 8192)  # the first BLOCK points of a scrambling, in dyadic pieces


def _qmc_sizes(m: int):
    """Blocks of one scrambling of ``m`` points: the first ``BLOCK`` points in the dyadic pieces ``_QMC_FIRST``
    (so early stopping can look at small runs, at sizes where Sobol points are balanced), then whole blocks."""
    start = 0
    for size in itertools.chain(_QMC_FIRST, itertools.repeat(BLOCK)):
        if start >= m:
            return
        yield min(size, m - start)
        start += size


def _grouped(sizes, bpc: int):
    """Lists of ``bpc`` consecutive blocks (the last one shorter), lazily."""
    sizes = iter(sizes)
    while part := list(itertools.islice(sizes, bpc)):
        yield part


def _qmc(terms, law, n, seed, R, bpc, device, target, min_n, bar, where, bound) -> tuple[Estimate, np.ndarray]:
    """``R`` independent scramblings of ``n // R`` points each, advanced together chunk by chunk so that
    early stopping can look at all of them after every block."""
    engines = [torch.quasirandom.SobolEngine(law.qmc_dim, scramble=True, seed=int(
        np.random.SeedSequence([seed, 1, r]).generate_state(1, np.uint32)[0])) for r in range(R)]
    jitters = [_block_generator(seed, r, stream=2) for r in range(R)]
    accs = [Moments() for _ in range(R)]

    def result() -> Estimate:
        means = np.stack([a.mean for a in accs])
        return Estimate(_out(means.mean(0)), _out(means.std(0, ddof=1) / math.sqrt(R)), R * accs[0].n, "qmc", seed,
                        dof=R - 1)

    def hits():
        return sum(a.hits for a in accs)

    for part in _grouped(_qmc_sizes(n // R), bpc):
        ts = []
        for r in range(R):
            u = _cat([_sobol_block(engines[r], jitters[r], m) for m in part])
            ts.append(_eval(terms, law.from_uniform(u), device, where))
            if bar is not None:
                bar.update(u.shape[0])
        for a, b in _offsets(part):
            for acc, t in zip(accs, ts):
                acc.add_block(t[a:b])
            if target is not None and R * accs[0].n >= min_n:
                est = result()
                if _converged(np.asarray(est.value), np.asarray(est.stderr), target, hits(), bound):
                    return est, hits()
    return result(), hits()


def mean_estimate(values) -> Estimate:
    r"""Reduce given per-sample terms ``values (N, ...)`` (e.g. on a fixed sample) to an :class:`Estimate`.

    .. math:: \bar t = \frac1N\sum_{i=1}^N t_i, \qquad
              \mathrm{se} = \sqrt{\frac{1}{N(N-1)}\sum_{i=1}^N (t_i - \bar t)^2}

    entrywise over the trailing shape, with the same block reducer as :func:`monte_carlo`.
    """
    t = _to_numpy(values, "values", "mean_estimate")
    if t.shape[0] < 1:
        fail("values", "mean_estimate", "an array of shape (N, ...) with N >= 1", f"shape {t.shape}")
    if not np.isfinite(t).all():
        fail("values", "mean_estimate", "finite (no NaN or inf)", t)
    acc = Moments()
    for a, b in _offsets([m for _, m in _block_sizes(t.shape[0])]):
        acc.add_block(t[a:b])
    return Estimate(_out(acc.mean), _out(acc.stderr()), acc.n, "sample", dof=acc.n - 1)
