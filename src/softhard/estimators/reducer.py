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

import itertools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .._validate import check_float, check_int, check_seed, fail
from ..model.laws import as_law

__all__ = ["Estimate", "Moments", "exact_estimate", "monte_carlo", "mean_estimate", "draw", "resolve_seed", "BLOCK"]

BLOCK = 1 << 14  # samples per RNG block: fixes the stream, so results depend on (seed, n) only


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate: ``value`` and ``stderr`` (floats, or arrays of one shape), ``n`` samples.

    ``method`` names the estimator ("mc", "qmc", ...); ``seed`` is the integer seed used.
    """

    value: np.ndarray | float
    stderr: np.ndarray | float
    n: int
    method: str = "mc"
    seed: int | None = None
    info: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def rel_error(self):
        """``stderr / |value|`` (inf where the value is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.abs(np.asarray(self.stderr)) / np.abs(np.asarray(self.value))
        r = np.where(np.asarray(self.stderr) == 0, 0.0, r)
        return float(r) if np.ndim(r) == 0 else r

    def __getitem__(self, idx) -> "Estimate":
        """The estimate of one entry (or a slice) of an array-valued estimate."""
        v, s = np.asarray(self.value)[idx], np.asarray(self.stderr)[idx]
        return Estimate(_out(v), _out(s), self.n, self.method, self.seed, dict(self.info))

    def __len__(self):
        return len(np.asarray(self.value))

    def __format__(self, spec):
        if np.ndim(self.value) == 0:
            spec = spec or ".6g"
            return f"{self.value:{spec}} ± {self.stderr:.2g} (n={self.n}, {self.method})"
        return repr(self)

    def as_dict(self) -> dict:
        """JSON-ready dict (lists for arrays)."""
        tolist = lambda a: np.asarray(a).tolist()  # noqa: E731
        return {"value": tolist(self.value), "stderr": tolist(self.stderr), "n": self.n, "method": self.method,
                "seed": self.seed}


def exact_estimate(value, where: str) -> Estimate:
    """A closed-form value as an :class:`Estimate` (``stderr = 0``, ``n = 0``, method ``"exact"``)."""
    v = np.asarray(value, dtype=np.float64)
    return Estimate(float(v) if v.ndim == 0 else v, 0.0 if v.ndim == 0 else np.zeros_like(v), 0, "exact", None,
                    {"closed_form": where})


def _out(a):
    a = np.asarray(a, dtype=np.float64)
    return float(a) if a.ndim == 0 else a


class Moments:
    """Ordered merge of per-block (count, mean, M2): deterministic, numerically stable."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add_block(self, t: np.ndarray) -> None:
        nb = t.shape[0]
        mb = t.mean(axis=0)
        m2b = ((t - mb) ** 2).sum(axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
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
        t = t.detach().to("cpu", torch.float64).numpy()
    try:
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
    x = torch.cat([law.sample(m, _block_generator(seed, b)) for b, m in _block_sizes(n)])
    return x if device is None else x.to(device)


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", unit_scale=True, leave=False)


def monte_carlo(terms: Callable[[torch.Tensor], torch.Tensor], law, n: int, seed=0, *, method: str = "mc",
                scrambles: int = 16, chunk: int | None = None, device=None, target_rel_error: float | None = None,
                min_n: int = 1 << 14, workers: int = 1, progress: bool = False, desc: str = "sampling") -> Estimate:
    r"""Average per-sample terms over a law: :math:`\hat E[t(X)] = \frac1n\sum_i t(X_i)` with its standard error.

    Args:
        terms: ``x (N, d) -> (N, ...)`` per-sample terms (the trailing shape is the value's shape).
        law: a :class:`softhard.model.laws.Law`.
        n: number of samples (total over scramblings for QMC).
        seed: ``int``, ``torch.Generator`` (one integer is drawn from it) or ``None`` (fresh, recorded).
        method: ``"mc"`` (i.i.d. draws) or ``"qmc"`` (scrambled Sobol, ``scrambles`` independent copies).
        chunk: samples evaluated per call of ``terms`` (rounded to whole blocks); changes speed and
            memory, never the result. ``None``: one block (``BLOCK`` samples) per call on the CPU, which
            avoids concatenating blocks (``workers`` blocks with ``workers > 1``), and 16 blocks per call
            on another ``device``.
        device: where ``terms`` is evaluated (inputs are drawn on the CPU and moved there).
        target_rel_error: stop once every entry has ``stderr <= target·|value|``, after at least ``min_n``
            samples; ``n`` is then the budget. The rule is checked after every block ("mc"), or after 256,
            512, 1024, ..., 16384 and then every further 16384 points of every scrambling ("qmc"),
            so the stopping point, and the result, depend on ``(seed, n)`` only, not on ``chunk``; the
            result equals a plain run of the length where it stopped. An entry whose terms are all 0 so
            far has ``stderr = 0`` and counts as converged.
        min_n: (with ``target_rel_error``) the fewest samples before stopping.
        workers: threads drawing the blocks of a chunk in parallel ("mc"; NumPy releases the GIL while
            it fills an array); never changes the result.
        progress: show a progress bar.

    Returns:
        :class:`Estimate` with ``value`` and ``stderr`` of the terms' trailing shape.
    """
    if not callable(terms):
        fail("terms", "monte_carlo", "a callable x (N, d) -> per-sample terms (N, ...)", type(terms).__name__,
             TypeError)
    law = as_law(law, "monte_carlo")
    n = check_int(n, "n", "monte_carlo")
    if method not in ("mc", "qmc"):
        fail("method", "monte_carlo", "one of 'mc', 'qmc'", method)
    seed = resolve_seed(seed)
    workers = check_int(workers, "workers", "monte_carlo")
    if chunk is None:
        blocks_per_chunk = workers if device is None or torch.device(device).type == "cpu" else max(16, workers)
    else:
        blocks_per_chunk = max(1, check_int(chunk, "chunk", "monte_carlo") // BLOCK)
    if target_rel_error is not None:
        target_rel_error = check_float(target_rel_error, "target_rel_error", "monte_carlo", 0.0, math.inf)
        min_n = check_int(min_n, "min_n", "monte_carlo")
    if method == "qmc":
        scrambles = check_int(scrambles, "scrambles", "monte_carlo", low=2)
        if n < scrambles:
            fail("n", "monte_carlo", f"at least scrambles={scrambles} for QMC", n)
    bar = _progress(n, progress, desc)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    t0 = time.perf_counter()
    try:
        if method == "mc":
            est = _mc(terms, law, n, seed, blocks_per_chunk, device, target_rel_error, min_n, bar, pool)
        else:
            est = _qmc(terms, law, n, seed, scrambles, blocks_per_chunk, device, target_rel_error, min_n, bar)
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown()
    est.info["seconds"] = time.perf_counter() - t0
    return est


def _eval(terms, x, device) -> np.ndarray:
    if device is not None:
        x = x.to(device)
    with torch.no_grad():
        t = _to_numpy(terms(x))
    if t.shape[0] != x.shape[0]:
        fail("terms", "monte_carlo", f"a function returning one row per sample ({x.shape[0]})",
             f"{t.shape[0]} rows")
    if not np.isfinite(t).all():
        raise FloatingPointError("monte_carlo: the per-sample terms contain NaN or inf")
    return t


def _offsets(sizes) -> list[tuple[int, int]]:
    """``(start, stop)`` rows of each block of a chunk."""
    stops = np.cumsum(sizes).tolist()
    return list(zip([0] + stops[:-1], stops))


def _cat(xs: list[torch.Tensor]) -> torch.Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs)


def _converged(mean: np.ndarray, stderr: np.ndarray, target: float) -> bool:
    return bool(np.all(stderr <= target * np.abs(mean)))


def _mc(terms, law, n, seed, bpc, device, target, min_n, bar, pool) -> Estimate:
    acc = Moments()
    sample = lambda bm: law.sample(bm[1], _block_generator(seed, bm[0]))  # noqa: E731
    for part in _chunks(n, bpc):
        x = _cat(list(pool.map(sample, part)) if pool is not None else [sample(bm) for bm in part])
        t = _eval(terms, x, device)
        if bar is not None:
            bar.update(x.shape[0])
        for a, b in _offsets([m for _, m in part]):  # blocks merged in order; early stop checked after each
            acc.add_block(t[a:b])
            if target is not None and acc.n >= min_n and _converged(acc.mean, acc.stderr(), target):
                return Estimate(_out(acc.mean), _out(acc.stderr()), acc.n, "mc", seed)
    return Estimate(_out(acc.mean), _out(acc.stderr()), acc.n, "mc", seed)


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


def _qmc(terms, law, n, seed, R, bpc, device, target, min_n, bar) -> Estimate:
    """``R`` independent scramblings of ``n // R`` points each, advanced together chunk by chunk so that
    early stopping can look at all of them after every block."""
    engines = [torch.quasirandom.SobolEngine(law.qmc_dim, scramble=True, seed=int(
        np.random.SeedSequence([seed, 1, r]).generate_state(1, np.uint32)[0])) for r in range(R)]
    jitters = [_block_generator(seed, r, stream=2) for r in range(R)]
    accs = [Moments() for _ in range(R)]

    def result() -> Estimate:
        means = np.stack([a.mean for a in accs])
        return Estimate(_out(means.mean(0)), _out(means.std(0, ddof=1) / math.sqrt(R)), R * accs[0].n, "qmc", seed)

    for part in _grouped(_qmc_sizes(n // R), bpc):
        ts = []
        for r in range(R):
            u = _cat([_sobol_block(engines[r], jitters[r], m) for m in part])
            ts.append(_eval(terms, law.from_uniform(u), device))
            if bar is not None:
                bar.update(u.shape[0])
        for a, b in _offsets(part):
            for acc, t in zip(accs, ts):
                acc.add_block(t[a:b])
            if target is not None and R * accs[0].n >= min_n:
                est = result()
                if _converged(np.asarray(est.value), np.asarray(est.stderr), target):
                    return est
    return result()


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
    return Estimate(_out(acc.mean), _out(acc.stderr()), acc.n, "sample")
