"""``softhard reproduce`` and ``softhard render``: the §7 diagnostics into one directory, beside the paper.

:func:`plan` checks everything a user gives (table names, sample size, seed, the TOML config, the output
directory) and creates nothing; :func:`reproduce` then runs each selected diagnostic (defaults = the
paper's design, then the config file, then ``--samples``/``--seed``), joins the paper's printed values
(:func:`softhard.runs.compare.join_paper`), and writes — through one staged output set
(:class:`softhard.results.outputs.OutputSet`: published together, manifest last) — per table
``NAME.csv``/``NAME.json`` (rows + config, seed, samples, versions, timing) and ``NAME.tex`` (short tables),
the figures (PNG, PDF, SVG), ``report.html`` and ``manifest.json``. :func:`render_all` redraws the figures
and the report from the written tables alone.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
import tomllib
from pathlib import Path
from typing import Callable

from ..experiments import MAX_SAMPLES, MIN_SAMPLES, REGISTRY, did_you_mean, get, make_config
from ..results.outputs import OutputError, OutputSet, check_output_dir

# this module is imported by the command line before the arguments are checked: numpy, torch and the
# writers are imported inside the functions that compute

__all__ = ["ReproduceError", "Plan", "plan", "reproduce", "render_all", "summary_text", "SUMMARY_COLUMNS",
           "MIN_SAMPLES", "TABLES"]

TABLES = tuple(REGISTRY)

# the columns printed at the end, per table
SUMMARY_COLUMNS = {
    "table1": ["tau", "boundary_mass", "boundary_mass_exact", "risk_gap", "risk_gap_exact", "gap_over_tau"],
    "table1_limit": ["tau", "gap_over_tau", "gap_over_tau_exact", "G1", "mass_over_2w", "mass_over_2w_exact"],
    "table1_multi": ["K", "tau", "boundary_mass", "boundary_mass_exact", "risk_gap", "risk_gap_exact", "gap_over_tau"],
    "table2": ["offset", "boundary_mass", "boundary_mass_exact", "risk_gap", "risk_gap_exact", "flip_rate"],
    "table3": ["tau", "final_risk", "final_alignment", "router_norm", "boundary_mass", "gate_entropy"],
}


class ReproduceError(Exception):
    """A problem the user can fix (bad --only, bad config, unwritable directory); one line."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """A checked request: the output directory, the tables in run order and their configs."""

    out: Path
    names: tuple[str, ...]
    configs: dict


def _select(only: str | None) -> list[str]:
    if only is None:
        return list(REGISTRY)
    names = [s.strip() for s in only.split(",") if s.strip()]
    if not names:
        raise ReproduceError(f"--only needs at least one table name; choose from {', '.join(REGISTRY)}")
    for s in names:
        if s not in REGISTRY:
            parent = max((t for t in REGISTRY if s.startswith(t + "_")), key=len, default=None)
            hint = f" ({s} is written by {parent}: use --only {parent})" if parent else did_you_mean(s, REGISTRY)
            raise ReproduceError(f"unknown table {s!r} in --only{hint}; choose from {', '.join(REGISTRY)}")
    return [t for t in REGISTRY if t in names]


def _load_config(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ReproduceError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ReproduceError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ReproduceError(f"config file {path} is not valid TOML: {e}") from None
    for key, value in data.items():
        if key not in REGISTRY:
            raise ReproduceError(f"config file {path}: unknown section [{key}]{did_you_mean(key, REGISTRY)}; "
                                 f"sections are {', '.join(f'[{t}]' for t in REGISTRY)}")
        if not isinstance(value, dict):
            raise ReproduceError(f"config file {path}: '{key}' must be a section [{key}] of key = value lines")
        fields = [f.name for f in dataclasses.fields(get(key).Config)]
        for k in value:
            if k not in fields:
                raise ReproduceError(f"config file {path}: [{key}] has no key {k!r}{did_you_mean(k, fields)}; "
                                     f"keys are {', '.join(fields)}")
    return data


def plan(out: str | os.PathLike = "results", only: str | None = None, samples: int | None = None,
         seed: int | None = None, config: str | os.PathLike | None = None) -> Plan:
    """Check a request without creating anything (raises :class:`ReproduceError`, one line).

    The cheap checks come first (table names, ``--samples``, ``--seed``, the output path), then the config
    file and each table's ``Config`` (which imports the diagnostics)."""
    names = _select(only)
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                or not MIN_SAMPLES <= samples <= MAX_SAMPLES):
        raise ReproduceError(f"--samples must be an integer in [{MIN_SAMPLES}, 2**{MAX_SAMPLES.bit_length() - 1}] "
                             f"(Monte Carlo draws per estimate), got {samples}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
        raise ReproduceError(f"--seed must be an integer in [0, 2**63), got {seed}")
    try:
        out = check_output_dir(out)
    except OutputError as e:
        raise ReproduceError(str(e)) from None
    where = f"config file {config}" if config is not None else "config"
    overrides = _load_config(Path(config) if config is not None else None)
    configs = {}
    for name in [*names, *(t for t in overrides if t not in names)]:  # every section of the file is checked,
        ov = dict(overrides.get(name, {}))                           # also those of tables not run now
        if name in names and samples is not None:
            ov["samples"] = samples
        if name in names and seed is not None:
            ov["seed"] = seed
        try:
            cfg = make_config(name, ov)
        except (TypeError, ValueError) as e:
            raise ReproduceError(f"{where}, [{name}]: {e}") from None
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if (f.name == "samples" or f.name.endswith("_samples")) and isinstance(v, int) and v < MIN_SAMPLES:
                raise ReproduceError(f"{where}, [{name}]: {f.name} must be >= {MIN_SAMPLES}, got {v}")
        if name in names:
            configs[name] = cfg
    return Plan(Path(out), tuple(names), configs)


def versions() -> dict:
    """Versions of softhard, Python and the numerical stack (written into every table's meta)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"softhard": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "numpy", "scipy", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "not installed"
    return out


def reproduce(out: str | os.PathLike = "results", only: str | None = None, samples: int | None = None,
              seed: int | None = None, config: str | os.PathLike | None = None,
              echo: Callable[[str], None] = print, progress: bool = True, command: str | None = None) -> list[Path]:
    """Run the selected diagnostics into ``out``; returns the published paths (manifest last)."""
    p = plan(out, only, samples, seed, config)
    from tqdm.auto import tqdm

    from .. import __version__
    from ..results.io import write_table
    from .compare import join_paper

    vers = versions()
    computed_at = _now()
    timings: dict[str, float] = {}
    tables = {}
    t_all = time.perf_counter()
    try:
        with OutputSet(p.out) as s:
            for line in s.recovered:
                echo(line)
            s.link_existing()
            bar = tqdm(p.names, desc="reproduce", unit="table", disable=not progress, file=sys.stderr)
            for name in bar:
                bar.set_postfix_str(name)
                cfg = p.configs[name]
                t0 = time.perf_counter()
                table = get(name).run(cfg, progress=progress and sys.stderr.isatty())
                timings[name] = time.perf_counter() - t0
                run_meta = {"config": cfg, "seed": cfg.seed, "samples": cfg.samples, "softhard_version": __version__,
                            "seconds": timings[name], "python": vers["python"], "versions": vers,
                            "produced_by": name, "computed_at": computed_at,
                            "computed_by": command or "softhard.runs.reproduce.reproduce"}
                table.meta.update(run_meta)
                for extra in table.extras.values():  # the extras carry the same provenance
                    for k, v in run_meta.items():
                        extra.meta.setdefault(k, v)
                join_paper(table)
                with s.owner(name):
                    write_table(table, s.stage)
                tables[name] = table
            _render_into(s, set(p.names), command, from_disk=False)
            manifest = {"softhard_version": __version__, "tables_last_run": list(p.names),
                        "seconds_last_run": {**timings, "total": time.perf_counter() - t_all}, "versions": vers}
            paths = s.publish(manifest)
    except OutputError as e:
        raise ReproduceError(str(e)) from None
    echo(summary_text(tables))
    echo(f"wrote {len(paths)} files to {p.out} in {time.perf_counter() - t_all:.1f} s; "
         f"open {p.out / 'report.html'}")
    return paths


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _render_into(s: OutputSet, changed: set[str] | None, command: str | None, from_disk: bool,
                 notes: list[str] = ()) -> None:
    """Render the figures whose tables changed (all when ``changed`` is None), then the report, in the stage.

    ``from_disk``: the tables were read back from files (``render``), so a table that cannot be read or drawn
    is the files' fault: a :class:`ReproduceError` naming the file, instead of a traceback. ``notes``: what the
    reader found wrong with the set (written at the top of the page)."""
    from ..experiments.paper import PAPER
    from ..report.figures import FIGURE_INPUTS, FIGURES, render_figure
    from ..report.reproduction import write_report
    from ..results.io import TableError, read_table
    from .compare import join_paper

    tables = {}
    for path in sorted(s.stage.glob("table*.json")):
        try:
            t = read_table(path)
            if from_disk:
                _check_numbers(t)
        except TableError as e:
            raise ReproduceError(f"{e}; run 'softhard reproduce --only {_owner(path.stem)}' to write it again") \
                from None
        if t.name in PAPER:  # in memory: the readings of this version, also for tables of an earlier one
            join_paper(t)
        tables[t.name] = t
    for name in FIGURES:
        inputs = FIGURE_INPUTS.get(name, (name,))
        if (s.stage / f"{name}.json").exists() and (changed is None or changed & set(inputs)):
            with s.owner(f"figures of {name}"):
                try:
                    render_figure(name, s.stage)
                except (ValueError, TypeError, KeyError, IndexError) as e:
                    if not from_disk:
                        raise
                    raise ReproduceError(f"cannot draw the figures of {name} from {s.out / (name + '.json')}: "
                                         f"{type(e).__name__}: {' '.join(str(e).split())[:160]} (a table changed "
                                         f"after softhard wrote it?); run 'softhard reproduce --only "
                                         f"{_owner(name)}' to write it again") from None
    with s.owner("report"):
        write_report(s.stage, tables, command=command, notes=list(notes))


def _owner(name: str) -> str:
    """The diagnostic that writes table ``name`` (``table3`` for ``table3_trajectory``)."""
    return max((t for t in REGISTRY if name == t or name.startswith(t + "_")), key=len, default=name)


def _check_numbers(t) -> None:
    """The columns that hold numbers (the paper's symbols and their qualified forms) hold numbers or nothing."""
    from ..results.io import TableError
    from ..results.labels import SYMBOLS

    for c in t.columns:
        base = next((c[: -len(x)] for x in ("_stderr", "_exact", "_first_order", "_paper_z", "_paper")
                     if c.endswith(x)), c)
        if base not in SYMBOLS:
            continue
        for i, r in enumerate(t.rows):
            v = r.get(c)
            if not (v is None or isinstance(v, (int, float)) and not isinstance(v, bool)):
                raise TableError(f"table {t.name}: row {i}, column {c!r} holds {v!r}, not a number")


def render_all(out: str | os.PathLike, echo: Callable[[str], None] = print, command: str | None = None) -> list[Path]:
    """Redraw every figure and ``report.html`` from the tables in ``out`` (no recomputation); returns the
    published paths (manifest last)."""
    out = Path(out)
    if not out.is_dir():
        raise ReproduceError(f"{out} is not a directory written by 'softhard reproduce'")
    from ..results.outputs import interrupted, read_manifest, verify

    found = [p.name for p in out.iterdir() if p.suffix == ".json" and p.stem in REGISTRY]
    if not found and not interrupted(out):  # checked before the lock and the clean-up touch the directory
        raise ReproduceError(f"no tables found in {out} (expected files like table1.json)")
    try:
        with OutputSet(out) as s:  # takes the lock; completes a publication an interrupted command cut
            for line in s.recovered:
                echo(line)
            notes = [p for p in verify(out) if "differs from manifest" in p or "missing" in p]
            for line in notes:
                echo(f"warning: {line}")
            tables = sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".csv")
                            and p.stem.startswith("table"))
            if not any(p.endswith(".json") and p[:-5] in REGISTRY for p in tables):
                raise ReproduceError(f"no tables found in {out} (expected files like table1.json)")
            keep = {k: v for k, v in read_manifest(out).items() if k != "files"}
            s.link_existing(tables)  # tables written without a manifest are seen too
            _render_into(s, None, command, from_disk=True,
                         notes=[*(f"{line}." for line in s.recovered if "incomplete" in line), *notes])
            keep["rendered_at"], keep["rendered_by"] = _now(), command or "softhard.runs.reproduce.render_all"
            return s.publish(keep)
    except OutputError as e:
        raise ReproduceError(str(e)) from None


def summary_text(tables: dict) -> str:
    """A short plain-text summary of each table (the columns of :data:`SUMMARY_COLUMNS`)."""
    blocks = []
    for name, t in tables.items():
        cols = [c for c in SUMMARY_COLUMNS.get(name, t.columns[:6]) if c in t.columns]
        cells = [[_fmt(r[c]) for c in cols] for r in t.rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines = [name, "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
        for c, info in t.meta.get("paper", {}).get("columns", {}).items():
            lines.append(f"  vs paper, {c}: {info['reading']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _fmt(v) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)
