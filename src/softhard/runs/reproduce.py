"""``softhard reproduce``: run the §7 diagnostics, write tables, figures and a manifest.

For each selected table: build its config (defaults = the paper's design, then the TOML config file,
then ``--samples``/``--seed``), run it, write ``NAME.csv``/``NAME.json``/``NAME.tex`` (and its extra
tables) atomically, render its figures from the written files, and list everything in
``manifest.json``. A short summary table is printed at the end.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import tomllib
from pathlib import Path
from typing import Callable

from .. import __version__
from ..experiments import REGISTRY, get, make_config
from ..report.figures import FIGURES, render_figure
from ..results.io import write_manifest, write_table
from ..results.table import Table

__all__ = ["ReproduceError", "reproduce", "render_all", "summary_text", "SUMMARY_COLUMNS"]

# the columns printed at the end, per table
SUMMARY_COLUMNS = {
    "table1": ["tau", "boundary_mass", "boundary_mass_exact", "risk_gap", "risk_gap_exact", "gap_over_tau"],
    "table1_multi": ["K", "tau", "boundary_mass", "boundary_mass_exact", "risk_gap", "gap_over_tau"],
    "table2": ["offset", "boundary_mass", "boundary_mass_exact", "risk_gap", "risk_gap_exact", "flip_rate"],
    "table3": ["tau", "final_risk", "final_alignment", "router_norm", "boundary_mass", "gate_entropy"],
}


class ReproduceError(Exception):
    """A problem the user can fix (bad --only, bad config, unwritable directory); one line."""


def _select(only: str | None) -> list[str]:
    if not only:
        return list(REGISTRY)
    names = [s.strip() for s in only.split(",") if s.strip()]
    unknown = [s for s in names if s not in REGISTRY]
    if unknown or not names:
        raise ReproduceError(f"unknown table {unknown[0] if unknown else only!r} in --only; "
                             f"choose from {', '.join(REGISTRY)}")
    return names


def _load_config(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ReproduceError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ReproduceError(f"config file {path} is not valid TOML: {e}") from None
    for key, value in data.items():
        if key not in REGISTRY:
            raise ReproduceError(f"config file {path}: unknown section [{key}]; sections are {', '.join(REGISTRY)}")
        if not isinstance(value, dict):
            raise ReproduceError(f"config file {path}: '{key}' must be a section [{key}] of key = value lines")
    return data


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ReproduceError(f"output directory {out} cannot be written: {e.strerror or e}") from None


def reproduce(out: str | os.PathLike = "results", only: str | None = None, samples: int | None = None,
              seed: int | None = None, config: str | os.PathLike | None = None,
              echo: Callable[[str], None] = print, progress: bool = True) -> list[Path]:
    """Run the selected diagnostics into ``out``; returns the written paths (manifest last)."""
    out = Path(out)
    names = _select(only)
    overrides = _load_config(Path(config) if config is not None else None)
    if samples is not None and samples < 1:
        raise ReproduceError(f"--samples must be a positive integer, got {samples}")
    configs = {}
    for name in names:
        ov = dict(overrides.get(name, {}))
        if samples is not None:
            ov["samples"] = samples
        if seed is not None:
            ov["seed"] = seed
        try:
            configs[name] = make_config(name, ov)
        except (TypeError, ValueError) as e:
            raise ReproduceError(f"config for {name}: {e}") from None
    _check_writable(out)

    from tqdm.auto import tqdm

    paths, tables, timings = [], {}, {}
    bar = tqdm(names, desc="reproduce", unit="table", disable=not progress, file=sys.stderr)
    t_all = time.perf_counter()
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        table: Table = get(name).run(configs[name], progress=progress and sys.stderr.isatty())
        timings[name] = time.perf_counter() - t0
        table.meta.update({"config": configs[name], "seed": configs[name].seed, "samples": configs[name].samples,
                           "softhard_version": __version__, "seconds": timings[name],
                           "python": platform.python_version()})
        paths += write_table(table, out)
        paths += render_figure(name, out)
        tables[name] = table
    paths.append(write_manifest(out, paths, {"softhard_version": __version__, "tables_last_run": names,
                                             "seconds_last_run": {**timings, "total": time.perf_counter() - t_all}}))
    echo(summary_text(tables))
    echo(f"wrote {len(paths)} files to {out} in {time.perf_counter() - t_all:.1f} s")
    return paths


def render_all(out: str | os.PathLike) -> list[Path]:
    """Re-render every figure from the tables found in ``out`` (no recomputation)."""
    out = Path(out)
    names = [n for n in FIGURES if (out / f"{n}.json").exists()]
    if not names:
        raise ReproduceError(f"no tables found in {out} (expected files like table1.json)")
    return [p for n in names for p in render_figure(n, out)]


def summary_text(tables: dict[str, Table]) -> str:
    """A short plain-text summary of each table (the columns of :data:`SUMMARY_COLUMNS`)."""
    blocks = []
    for name, t in tables.items():
        cols = [c for c in SUMMARY_COLUMNS.get(name, t.columns[:6]) if c in t.columns]
        cells = [[_fmt(r[c]) for c in cols] for r in t.rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines = [name, "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _fmt(v) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)
