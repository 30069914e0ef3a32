r"""Resumable parameter sweeps: a TOML spec, pure cells, an append-only results store, three executors.

A sweep runs one experiment — a registered §7 diagnostic (``"table2"``) or a user function
(``"package.module:function"``, called as ``function(**params, seed=seed)`` and returning one dict) —
on every point of a grid: the product of the spec's axes and seeds. Each point is a :class:`Cell`,
a pure function of ``(experiment, parameters, seed)`` that yields one row. Its identity is

.. math::

    \mathrm{id} = \mathrm{sha256}\big(\mathrm{JSON}_{\mathrm{canonical}}
    (\text{experiment}, \text{table}, \text{parameters}, \text{seed})\big),

where the parameters are the experiment's full resolved ``Config`` (defaults included, seed excluded)
for a registered diagnostic, and the given keyword arguments for a user function.

Store (:mod:`softhard.results.store`): ``OUT/results/part-*.parquet`` (or ``.csv``), one file per batch of
finished cells, each written to a temporary name and renamed, with the sha256 of its bytes in its name, so a
killed run leaves only whole files and a part damaged later is recognised: it is reported (one line on
stderr naming the file), moved to ``OUT/results/damaged/`` and its cells are computed again by the next
run. A part holds ok rows and failure records (``status``, ``error``); :func:`read_results` unions the parts
and keeps one row per cell id. Re-running skips the cells stored as ok; failed cells are tried again.
``OUT/sweep.json`` records the spec and its cell ids, for :func:`read_results` and ``softhard sweep-report``.
Worker processes (``workers=``) end with the sweep's process, even when it is killed (SIGKILL). See
docs/sweeps.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import itertools
import json
import math
import os
import re
import sys
import threading
import time
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .._validate import check_float, check_int, fail
from ..experiments import REGISTRY, ROW_FIELDS, get, make_config
from ..results.io import atomic_write, to_jsonable
from ..results.store import FORMATS, Damaged, read_parts, write_part
from ..results.table import Table

__all__ = ["SpecError", "SweepSpec", "Cell", "SweepSummary", "load_spec", "run_cell", "run_sweep", "read_results"]

WHERE = "softhard sweep"
_KEYS = ("experiment", "table", "seeds", "format", "fixed", "axes")
_HEAD = ("cell_id", "seed")  # columns every stored record starts with (then the axes)
_STATUS = ("status", "error")


class SpecError(ValueError):
    """A malformed sweep spec; the message is one line naming the file, the key, the rule and the value."""


@dataclass(frozen=True)
class Cell:
    """One grid point: ``experiment`` run with keyword ``params`` and ``seed``; ``labels`` are its axis values.

    ``table`` picks the table a registered diagnostic's row comes from (its main table when ``None``,
    or one of its extras, e.g. ``"table1_multi"``).
    """

    id: str
    experiment: str
    params: dict[str, Any]
    seed: int
    labels: dict[str, Any]
    table: str | None = None


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: ``axes`` maps a name to its values (in file order), ``log_axes`` the log ranges."""

    experiment: str
    fixed: dict[str, Any]
    axes: dict[str, tuple]
    seeds: tuple[int, ...]
    table: str | None = None
    format: str = "parquet"
    log_axes: tuple[str, ...] = ()
    cells: tuple[Cell, ...] = field(default=(), repr=False, compare=False)

    def as_dict(self) -> dict:
        """JSON-ready description (written to ``OUT/sweep.json`` with the cell ids)."""
        return {"experiment": self.experiment, "table": self.table, "format": self.format,
                "fixed": to_jsonable(self.fixed), "axes": to_jsonable(self.axes), "log_axes": list(self.log_axes),
                "seeds": list(self.seeds)}


@dataclass(frozen=True)
class SweepSummary:
    """What one :func:`run_sweep` call did: cells in the spec, already stored, computed, failed; ``damaged``:
    the parts found damaged (and moved aside) when it read the store, whose cells it computed again."""

    total: int
    cached: int
    done: int
    failed: int
    seconds: float
    errors: dict[str, str]  # cell id -> error, for the cells that failed in this run
    damaged: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------- spec


def load_spec(source: str | os.PathLike | dict, *, _where: str = "load_spec") -> SweepSpec:
    """Read and validate a sweep spec (a TOML file, or the same content as a dict).

    .. code-block:: toml

        experiment = "table2"           # a registry name or "package.module:function"
        table = "table2"                # optional: which table of the diagnostic gives the row
        seeds = [72]                    # optional: a list, or {start = 0, num = 5}
        format = "parquet"              # optional: or "csv"
        [fixed]                         # parameters held fixed
        samples = 65536
        [axes]                          # swept parameters: a list, or a range
        tau = [0.05, 0.1, 0.2]
        offsets = {start = 0.0, stop = 2.25, num = 10}   # add log = true for geometric spacing

    A scalar given to a tuple field of a diagnostic's ``Config`` becomes a one-element tuple. Seeds
    default to the diagnostic's own seed (``[0]`` for a user function).

    Numbers must be finite (no ``nan``/``inf``); for a registered diagnostic, temperatures (``tau``,
    ``taus``, ``*_taus``, ``*_tau_*``) must be > 0 and sample counts (``samples``, ``*_samples``) >= 1, so that
    a mistyped spec fails here, before any cell runs, instead of storing NaN rows.

    A registered diagnostic's cell must give one row: each list that makes the rows of its table
    (``offsets`` of table2, ``taus`` of table1, :data:`softhard.experiments.ROW_FIELDS`) needs one value per
    cell — an axis, or one value in ``[fixed]``; a spec that leaves such a list at its default fails here.

    Raises:
        SpecError: one line for an unreadable file, bad TOML, an unknown key, experiment or parameter,
            a wrong type, a value out of range, an empty or repeated axis, a cell that would give several rows.
            Errors name ``load_spec`` (``softhard sweep`` on the command line).
    """
    name = "sweep spec"
    if not isinstance(source, (dict, str, os.PathLike)):
        fail("source", "load_spec", "the path of a TOML file or a dict", type(source).__name__, TypeError)
    if not isinstance(source, dict):
        name = str(source)
        try:
            source = tomllib.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as e:
            raise SpecError(f"{name}: cannot read the file ({e.strerror})") from None
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{name}: not valid TOML ({e})") from None
    try:
        return _parse(source)
    except (ValueError, TypeError) as e:  # the template names the function the user called
        msg = _TEMPLATE.sub(lambda m: f"The '{m.group(1)}' parameter of {_where} must be", str(e), count=1)
        raise SpecError(f"{name}: {msg}") from None


_TEMPLATE = re.compile(r"The '([^']+)' parameter of .+? must be")


def _parse(doc: dict) -> SweepSpec:
    for key in doc:
        if key not in _KEYS:
            fail("spec", WHERE, f"a table with keys among {list(_KEYS)}", key)
    experiment = doc.get("experiment")
    if not isinstance(experiment, str) or not (experiment in REGISTRY or ":" in experiment):
        fail("experiment", WHERE, f"one of {sorted(REGISTRY)} or 'package.module:function'", experiment)
    fmt = doc.get("format", "parquet")
    if fmt not in FORMATS:
        fail("format", WHERE, f"one of {list(FORMATS)}", fmt)
    fixed = _mapping(doc.get("fixed", {}), "fixed")
    axes, log_axes = {}, []
    for key, spec in _mapping(doc.get("axes", {}), "axes").items():
        axes[key] = _axis(spec, f"axes.{key}")
        if isinstance(spec, dict) and spec.get("log", False):
            log_axes.append(key)
    for key in fixed:
        if key in axes:
            fail(key, WHERE, "either fixed or an axis, not both", key)
    for key in [*fixed, *axes]:
        if key in (*_HEAD, *_STATUS):
            fail(key, WHERE, "set through 'seeds'" if key == "seed" else "a name other than the reserved "
                 f"{list(_HEAD + _STATUS)}", key)
        for v in ([fixed[key]] if key in fixed else axes[key]):
            if not _is_param_value(v):
                fail(key, WHERE, "a number, string, boolean or list of numbers", v, TypeError)
            if any(isinstance(x, float) and not math.isfinite(x) for x in (v if isinstance(v, list) else [v])):
                fail(key, WHERE, "finite (no nan or inf)", v)
    table = doc.get("table")
    if table is not None and (not isinstance(table, str) or experiment not in REGISTRY):
        fail("table", WHERE, "a table name of a registered diagnostic (not used with 'module:function')", table)
    if experiment in REGISTRY:
        make, default_seed = _registry_maker(experiment, [*fixed, *axes])
    else:
        make, default_seed = _function_maker(experiment, [*fixed, *axes])
    seeds = _seeds(doc["seeds"]) if "seeds" in doc else (default_seed,)
    cells = []
    for combo in itertools.product(*axes.values()):
        labels = dict(zip(axes, combo))
        params, identity = make({**fixed, **labels})
        labels = {k: params[k][0] if isinstance(params[k], tuple) else params[k] for k in labels}  # as coerced
        for seed in seeds:
            cid = _cell_id({"experiment": experiment, "table": table, "params": identity, "seed": seed})
            cells.append(Cell(cid, experiment, params, seed, labels, table))
    if len({c.id for c in cells}) < len(cells):
        fail("axes", WHERE, "axes whose values give distinct cells (1 and 1.0 are one value)", axes)
    if experiment in REGISTRY:
        _one_row(experiment, table or experiment, cells, axes)
    return SweepSpec(experiment, fixed, axes, seeds, table, fmt, tuple(log_axes), tuple(cells))


def _one_row(experiment: str, table: str, cells: list[Cell], axes: dict) -> None:
    """Every cell of a registered diagnostic gives one row of ``table`` (see :func:`load_spec`)."""
    fields = ROW_FIELDS.get(table, ())
    if fields is None:
        fail("table", WHERE, f"a table with one row per cell ({table} has one row per step of the run)", table)
    default = get(experiment).Config()
    for cell in cells[:1]:  # the cells differ only in the axes, each of which sets one value
        for f in fields:
            value = cell.params.get(f, getattr(default, f, ()))
            if isinstance(value, (list, tuple)) and len(value) != 1:
                hint = "the default" if f not in cell.params else "one cell"
                fail(f, WHERE, f"one value per cell, as an axis or in [fixed] ({table} gives one row per value of {f}"
                     f"{'; the spec has no axes' if not axes else ''})", f"{list(value)} ({hint})")


def _mapping(value, key: str) -> dict:
    if not isinstance(value, dict):
        fail(key, WHERE, "a table of name = value", value, TypeError)
    return value


def _is_param_value(v) -> bool:
    scalar = (bool, int, float, str)
    return isinstance(v, scalar) or (isinstance(v, (list, tuple)) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v))


def _axis(spec, key: str) -> tuple:
    """Values of one axis: a non-empty list without repeats, or ``{start, stop, num[, log]}``."""
    rule = "a non-empty list or a range {start, stop, num[, log]}"
    if isinstance(spec, dict):
        if set(spec) - {"start", "stop", "num", "log"} or not {"start", "stop", "num"} <= set(spec):
            fail(key, WHERE, rule, spec)
        log = spec.get("log", False)
        if not isinstance(log, bool):
            fail(f"{key}.log", WHERE, "a boolean", log, TypeError)
        low = 0.0 if log else -math.inf
        start = check_float(spec["start"], f"{key}.start", WHERE, low=low)
        stop = check_float(spec["stop"], f"{key}.stop", WHERE, low=low)
        num = check_int(spec["num"], f"{key}.num", WHERE, low=1)
        grid = (np.geomspace if log else np.linspace)(start, stop, num)
        if num > 1 and len(set(grid.tolist())) < num:
            fail(key, WHERE, "a range of distinct values", spec)
        ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("start", "stop"))
        if ints and all(float(g).is_integer() for g in grid):
            return tuple(int(g) for g in grid)
        return tuple(float(g) for g in grid)
    if not isinstance(spec, list) or not spec:
        fail(key, WHERE, rule, spec)
    if any(isinstance(v, list) for v in spec):
        fail(key, WHERE, "a list of scalars (a cell sets scalar parameters)", spec, TypeError)
    if len({json.dumps(v) for v in spec}) < len(spec):
        fail(key, WHERE, "a list without repeated values", spec)
    return tuple(spec)


def _seeds(spec) -> tuple[int, ...]:
    if isinstance(spec, dict):
        if set(spec) != {"start", "num"}:
            fail("seeds", WHERE, "a non-empty list of ints or {start, num}", spec)
        start = check_int(spec["start"], "seeds.start", WHERE, low=0)
        return tuple(range(start, start + check_int(spec["num"], "seeds.num", WHERE, low=1)))
    if not isinstance(spec, list) or not spec:
        fail("seeds", WHERE, "a non-empty list of ints or {start, num}", spec)
    for s in spec:
        if not isinstance(s, int) or isinstance(s, bool):
            fail("seeds", WHERE, "a list of ints >= 0", s, TypeError)
        if s < 0:
            fail("seeds", WHERE, "a list of ints >= 0", s)
    seeds = tuple(spec)
    if len(set(seeds)) < len(seeds):
        fail("seeds", WHERE, "a list without repeated values", spec)
    return seeds


def _registry_maker(name: str, keys: list[str]) -> tuple[Callable, int]:
    """``make(params) -> (config overrides, identity)`` for diagnostic ``name``, and its default seed."""
    try:
        cls = get(name).Config
    except ImportError as e:
        raise ValueError(f"The 'experiment' parameter of {WHERE} must be an importable diagnostic; "
                         f"{name!r} fails to import ({e}).") from None
    fields, default = [f.name for f in dataclasses.fields(cls) if f.name != "seed"], cls()
    for key in keys:
        if key not in fields:
            fail(key, WHERE, f"a field of {name}.Config, one of {fields}", key)
    tuples = {f for f in fields if isinstance(getattr(default, f), tuple)}

    def make(params: dict) -> tuple[dict, dict]:
        params = {k: ([v] if k in tuples and not isinstance(v, (list, tuple)) else v) for k, v in params.items()}
        config = make_config(name, params)
        params = {k: getattr(config, k) for k in params}
        identity = {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}
        return params, identity

    return make, int(default.seed)


def _function_maker(path: str, keys: list[str]) -> tuple[Callable, int]:
    """``make(params) -> (params, identity)`` for a user function, checked against its signature."""
    fn = _import_function(path)
    sig = inspect.signature(fn)
    names = {p.name: p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    if "seed" not in names and not open_kw:
        fail("experiment", WHERE, "a function with a 'seed' keyword argument", path)
    for key in keys:
        if key not in names and not open_kw:
            fail(key, WHERE, f"an argument of {path}, one of {sorted(set(names) - {'seed'})}", key)
    for n, p in names.items():
        if n != "seed" and p.default is p.empty and n not in keys:
            fail(n, WHERE, f"given (in [fixed] or [axes]; {path} has no default for it)", None)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: no type checks
        hints = {}

    def make(params: dict) -> tuple[dict, dict]:
        out = {}
        for k, v in params.items():
            hint = hints.get(k)
            if hint is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            wrong = not isinstance(v, hint) or (hint is not bool and isinstance(v, bool))
            if hint in (bool, int, float, str) and wrong:
                fail(k, path, f"of type {hint.__name__}", v, TypeError)
            out[k] = v
        return out, out

    return make, 0


def _import_function(path: str) -> Callable:
    module, _, attr = path.rpartition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"The 'experiment' parameter of {WHERE} must be an importable 'package.module:function'. "
                         f"Got {path!r} ({type(e).__name__}: {e}).") from None
    if not callable(fn):
        fail("experiment", WHERE, "a callable", path, TypeError)
    return fn


def _path(value, param: str, where: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        fail(param, where, "a path (str or os.PathLike)", type(value).__name__, TypeError)
    return Path(value)


def _cell_id(obj: dict) -> str:
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# --------------------------------------------------------------------------------------------- cells


def run_cell(cell: Cell) -> dict:
    """Compute one cell; never raises for a failing experiment.

    Returns a record ``{cell_id, seed, <axis values>, status, error, <row>}``: ``status`` is ``"ok"``
    and ``error`` ``None`` with the experiment's row, or ``"failed"`` with ``"ExcType: message"``.
    """
    head = {"cell_id": cell.id, "seed": cell.seed, **cell.labels}
    try:
        row = _compute(cell)
        for key, value in row.items():
            if key in _STATUS or (key in head and value != head[key]):
                raise ValueError(f"the row's column {key!r} clashes with a sweep column of the same name")
        return {**head, "status": "ok", "error": None, **{k: _scalar(v) for k, v in row.items() if k not in head}}
    except Exception as e:  # recorded, retried on the next run
        return {**head, "status": "failed", "error": f"{type(e).__name__}: {e}"}


def _compute(cell: Cell) -> dict:
    if cell.experiment not in REGISTRY:
        row = _import_function(cell.experiment)(**cell.params, seed=cell.seed)
        if not isinstance(row, dict):
            raise TypeError(f"{cell.experiment} must return one row (a dict); it returned {type(row).__name__}")
        return row
    table: Table = get(cell.experiment).run(make_config(cell.experiment, {**cell.params, "seed": cell.seed}))
    if cell.table not in (None, table.name):
        if cell.table not in table.extras:
            fail("table", WHERE, f"one of {[table.name, *table.extras]}", cell.table)
        table = table.extras[cell.table]
    if len(table.rows) != 1:
        raise ValueError(f"a cell must give one row; {table.name} gave {len(table.rows)} (give each tuple field "
                         "it reads one value, in [fixed] or as an axis)")
    return table.rows[0]


def _scalar(v):
    """A storable scalar: NumPy/torch scalars unwrapped, containers as JSON text."""
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, (list, tuple, dict)) or hasattr(v, "tolist"):
        return json.dumps(to_jsonable(v.tolist() if hasattr(v, "tolist") else v))
    return v


# --------------------------------------------------------------------------------------------- store


def _store(out: Path) -> Path:
    return Path(out) / "results"


def _records(store: Path) -> tuple[dict[str, dict], dict[str, dict], list[Damaged]]:
    """``(ok, failed, damaged)``: the first ok record of every cell, the latest failure of cells never ok, and
    the damaged parts (reported, moved aside: their cells count as not computed)."""
    ok, failed = {}, {}
    parts, damaged = read_parts(store) if store.is_dir() else ([], [])
    for records in parts:
        for rec in records:
            if rec.get("status") == "ok":
                ok.setdefault(rec["cell_id"], rec)
            else:
                failed[rec["cell_id"]] = rec
    return ok, {k: v for k, v in failed.items() if k not in ok}, damaged


def read_results(out: str | os.PathLike) -> Table:
    """The rows of the sweep last run into ``out``: one per stored cell, in the spec's cell order.

    Columns: ``cell_id``, ``seed``, the axes, then the experiment's columns. ``meta`` holds the spec
    (``meta["spec"]``), the failed cells (``meta["failed"]``: records with ``error``), the number of
    cells not yet computed (``meta["missing"]``) and the damaged parts found and moved aside by this read
    (``meta["damaged"]``; their cells are missing until the sweep is run again).
    """
    out = _path(out, "out", "read_results")
    try:
        saved = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
        cells = saved["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        fail("out", "read_results", "a directory written by softhard sweep (with a readable sweep.json)", str(out))
    ok, failed, damaged = _records(_store(out))
    rows = [{k: v for k, v in ok[c].items() if k not in _STATUS} for c in cells if c in ok]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{c: r.get(c) for c in columns} for r in rows]
    meta = {"spec": saved.get("spec"), "softhard_version": saved.get("softhard_version"),
            "failed": [failed[c] for c in cells if c in failed],
            "missing": sum(c not in ok for c in cells),
            "damaged": [{"part": str(d.path), "moved_to": str(d.moved_to), "reason": d.reason} for d in damaged]}
    return Table("sweep", columns, rows, meta)


# ------------------------------------------------------------------------------------------ executors


def _inline(cells: list[Cell]) -> Iterator[dict]:
    for cell in cells:
        yield run_cell(cell)


def _worker_init(parent: int | None = None) -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker process; results do not depend on it
    if parent is not None:
        _die_with(parent)


def _die_with(pid: int) -> None:
    """End this (worker) process as soon as process ``pid`` ends, however it ends (SIGKILL included).

    A watchdog thread waits on a pidfd of ``pid`` (Linux >= 5.3; elsewhere it polls every 0.2 s) and calls
    ``os._exit``. On Linux the process also asks for SIGKILL when its parent (the forkserver) dies. Once the
    workers are gone, the forkserver and the resource tracker see their pipes close and exit too; without
    this, workers blocked on the pool's queue (whose write end they hold themselves) lived on for ever.
    """
    import select
    import signal

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
            pass
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)  # the sweep already ended
    except (AttributeError, OSError):  # pragma: no cover - no pidfd: poll
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])
        else:  # pragma: no cover
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="softhard-sweep-parent-watch", daemon=True).start()


def _context():
    """forkserver with softhard preloaded (workers start by fork, not by importing torch), else spawn.

    The preload list is the process's forkserver setting; it takes effect if the server is not running yet.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - Windows
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["softhard.runs.sweep"])
    return ctx


def _processes(cells: list[Cell], workers: int) -> Iterator[dict]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_worker_init, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(run_cell, c): c for c in cells}
        for fut in as_completed(futures):
            yield _outcome(fut, futures[fut])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


CONNECT_SECONDS = 20  # how long run_sweep tries to reach a Dask scheduler


def _dask_client(scheduler: str | None, workers: int | None):
    """``(client, cluster)``: connected before anything is written, so that an unreachable scheduler leaves no
    file behind (an ``OSError`` naming the address, one line)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - dask is part of softhard[sweep]
        raise ImportError("Dask executors need dask[distributed]: pip install 'softhard[sweep]'") from None
    import logging

    cluster = None
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # its retries and warnings are not for the user: the one line below is
    try:
        if scheduler is None:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
        return Client(cluster if cluster is not None else scheduler, timeout=CONNECT_SECONDS), cluster
    except (OSError, TimeoutError, ValueError, TypeError) as e:
        if cluster is not None:
            cluster.close()
        where = f"the Dask scheduler at {scheduler}" if scheduler is not None else "a local Dask cluster"
        raise OSError(f"cannot reach {where}: {' '.join(str(e).split())}") from None
    finally:
        logger.setLevel(level)


def _dask(cells: list[Cell], connected) -> Iterator[dict]:
    from distributed import as_completed

    client, cluster = connected
    try:
        futures = {client.submit(run_cell, c, key=f"softhard-cell-{c.id}"): c for c in cells}
        for fut in as_completed(futures):
            yield _outcome(fut, futures[fut])
            fut.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _close(connected) -> None:
    client, cluster = connected
    client.close()
    if cluster is not None:
        cluster.close()


def _outcome(fut, cell: Cell) -> dict:
    """The record of a finished future; a crashed worker becomes a failure record (retried next run)."""
    try:
        return fut.result()
    except Exception as e:
        return {"cell_id": cell.id, "seed": cell.seed, **cell.labels, "status": "failed",
                "error": f"{type(e).__name__}: {e}"}


def run_sweep(spec: SweepSpec | str | os.PathLike, out: str | os.PathLike, *, workers: int | None = None,
              scheduler: str | None = None, dask_local: bool = False, fresh: bool = False, progress: bool = False,
              batch: int = 256, flush_seconds: float = 2.0) -> SweepSummary:
    """Run every cell of ``spec`` not yet stored under ``out``; returns counts.

    Args:
        spec: a :class:`SweepSpec` or the path of its TOML file.
        out: output directory (``results/`` parts and ``sweep.json`` go there).
        workers: local worker processes (forkserver, or spawn); with ``dask_local``, the number of Dask workers.
        scheduler: address of a running Dask scheduler (``"tcp://host:8786"``); cells run there.
        dask_local: start a Dask ``LocalCluster`` (worker processes, one thread each) for this run.
        fresh: delete the stored parts first and recompute every cell (default: resume).
        progress: show a progress bar over cells (done / cached / failed).
        batch, flush_seconds: finished cells are written as one part as soon as ``batch`` of them are
            waiting, else every ``flush_seconds`` (a timer thread), and at the end (also on an error or
            Ctrl-C). A killed run loses the cells running and those finished in the last
            ``flush_seconds``, nothing else.

    With none of ``workers``/``scheduler``/``dask_local`` the cells run in this process, in order. Rows do
    not depend on the executor.
    """
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    if workers is not None:
        workers = check_int(workers, "workers", "run_sweep", low=1)
    if scheduler is not None and (workers is not None or dask_local):
        fail("scheduler", "run_sweep", "used alone (not with workers or dask_local)", scheduler)
    batch = check_int(batch, "batch", "run_sweep", low=1)
    flush_seconds = check_float(flush_seconds, "flush_seconds", "run_sweep", low=0.0)
    out, t0 = _path(out, "out", "run_sweep"), time.perf_counter()
    connected = _dask_client(scheduler, workers) if scheduler is not None or dask_local else None
    store = _store(out)
    created = [p for p in (store, out, *out.absolute().parents) if not p.exists()][::-1]
    try:
        store.mkdir(parents=True, exist_ok=True)
        return _run(spec, out, store, connected, workers, fresh, progress, batch, flush_seconds, t0)
    except BaseException:
        if connected is not None:
            with _suppress():
                _close(connected)
        _remove_empty(out, store, created)
        raise


def _suppress():
    import contextlib

    return contextlib.suppress(Exception)


def _remove_empty(out: Path, store: Path, created: list[Path]) -> None:
    """After a failed first run into a new directory (a full disk, a crash before any cell was stored): remove
    what this run created and left empty, so that nothing but finished cells ever stays behind."""
    if out.absolute() not in [c.absolute() for c in created] or any(store.glob("part-*")):
        return
    for p in (store, out):
        for tmp in [*p.glob(".*.tmp"), p / "sweep.json"] if p.is_dir() else []:
            tmp.unlink(missing_ok=True)
    for d in reversed(created):  # deepest first; stops at the first that is not empty
        try:
            d.rmdir()
        except OSError:
            break


def _run(spec, out, store, connected, workers, fresh, progress, batch, flush_seconds, t0) -> SweepSummary:
    from .. import __version__

    if fresh:
        for p in [*store.glob("part-*"), *store.glob(".part-*.tmp")]:
            p.unlink()
    atomic_write(out / "sweep.json", json.dumps({"spec": spec.as_dict(), "softhard_version": __version__,
                                                 "cells": [c.id for c in spec.cells]}, indent=1) + "\n")
    ok, _, damaged = _records(store)
    pending = [c for c in spec.cells if c.id not in ok]
    cached = len(spec.cells) - len(pending)
    if not pending:
        records: Iterable[dict] = ()
        if connected is not None:
            _close(connected)
    elif connected is not None:
        records = _dask(pending, connected)
    elif workers is not None:
        records = _processes(pending, workers)
    else:
        records = _inline(pending)
    summary = _drain(records, store, spec, cached, progress, batch, flush_seconds, t0)
    return dataclasses.replace(summary, damaged=tuple(str(d.path) for d in damaged))


def _drain(records, store, spec, cached, progress, batch, flush_seconds, t0) -> SweepSummary:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(spec.cells), initial=cached, desc="sweep", unit="cell", disable=not progress)
    writer, errors, done = _Writer(store, spec.format, batch, flush_seconds), {}, 0
    try:
        for rec in records:
            writer.add(rec)
            if rec["status"] == "ok":
                done += 1
            else:
                errors[rec["cell_id"]] = rec["error"]
            bar.update(1)
            bar.set_postfix(done=done, cached=cached, failed=len(errors), refresh=False)
    finally:
        writer.close()
        bar.close()
    return SweepSummary(len(spec.cells), cached, done, len(errors), time.perf_counter() - t0, errors)


class _Writer:
    """Finished records to parts: at once when ``batch`` are waiting, else on a timer every ``every`` seconds.

    The timer (a daemon thread) bounds how long a finished cell waits for its write, however long the
    next cell takes; ``close`` stops it and writes what is left. A failed write is raised by the next ``add``.
    """

    def __init__(self, store: Path, fmt: str, batch: int, every: float):
        self.store, self.fmt, self.batch = store, fmt, batch
        self.waiting, self.lock, self.stop, self.error = [], threading.Lock(), threading.Event(), None
        self.thread = threading.Thread(target=self._tick, args=(every,), daemon=True)
        self.thread.start()

    def _tick(self, every: float) -> None:
        while not self.stop.wait(every):
            try:
                self.flush()
            except BaseException as e:  # handed to the main thread
                self.error = e
                return

    def add(self, record: dict) -> None:
        if self.error is not None:
            raise self.error
        with self.lock:
            self.waiting.append(record)
            full = len(self.waiting) >= self.batch
        if full:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            if self.waiting:
                write_part(self.store, self.waiting, self.fmt)
                self.waiting = []

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.flush()
