"""Sweeps: spec validation, cell identity, the store, resume after SIGKILL, failed-cell retry, executors, CLI."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from typer.testing import CliRunner

from softhard.cli import app
from softhard.experiments import REGISTRY
from softhard.results.store import read_part, write_part
from softhard.runs.sweep import SpecError, load_spec, read_results, run_cell, run_sweep

TESTS = Path(__file__).parent
MASS = """
experiment = "sweep_cells:mass"
seeds = [1, 2]
[fixed]
samples = 4096
[axes]
tau = [0.1, 0.25]
offset = {start = 0, stop = 1, num = 3}
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def toy(monkeypatch):
    """A registry-style diagnostic ("toy" -> tests/sweep_cells.py), for in-process runs only."""
    monkeypatch.setitem(REGISTRY, "toy", "sweep_cells")


def without_ids(rows):
    return [{k: v for k, v in r.items() if k != "cell_id"} for r in rows]


# ------------------------------------------------------------------------------------------ spec


def test_cells_grid_and_identity(tmp_path):
    spec = load_spec(write(tmp_path, MASS))
    assert spec.axes == {"tau": (0.1, 0.25), "offset": (0.0, 0.5, 1.0)}
    assert len(spec.cells) == 2 * 3 * 2
    assert [(c.labels["tau"], c.labels["offset"], c.seed) for c in spec.cells[:3]] == [
        (0.1, 0.0, 1), (0.1, 0.0, 2), (0.1, 0.5, 1)]
    assert len({c.id for c in spec.cells}) == 12
    # the id is the sha256 of the canonical JSON of (experiment, table, parameters, seed)
    c = spec.cells[0]
    text = ('{"experiment":"sweep_cells:mass","params":{"offset":0.0,"samples":4096,"tau":0.1},'
            '"seed":1,"table":null}')
    assert c.id == hashlib.sha256(text.encode()).hexdigest()
    # ints given to float arguments are the same cell; key order does not matter
    again = load_spec({"experiment": "sweep_cells:mass", "seeds": [1], "fixed": {"offset": 0, "samples": 4096},
                       "axes": {"tau": [0.1]}})
    assert again.cells[0].id == c.id


def test_ranges():
    spec = load_spec({"experiment": "sweep_cells:nodefault",
                      "axes": {"a": {"start": 0.01, "stop": 1.0, "num": 3, "log": True},
                               "b": {"start": 2, "stop": 8, "num": 4}}, "seeds": {"start": 3, "num": 2}})
    assert spec.axes["a"] == pytest.approx((0.01, 0.1, 1.0), rel=1e-12)
    assert spec.axes["b"] == (2, 4, 6, 8) and all(type(b) is int for b in spec.axes["b"])
    assert spec.seeds == (3, 4) and spec.log_axes == ("a",)


@pytest.mark.parametrize("text, words", [
    ('experiment = "tabel2"', ["'experiment'", "'tabel2'", "table2"]),
    ('experiment = "sweep_cells:nope"', ["'experiment'", "importable", "nope"]),
    ('experiment = "sweep_cells:mass"\n[axes]\ntau = [0.1]\noffset = [0]\nbogus = [1]', ["'bogus'", "argument"]),
    ('experiment = "sweep_cells:mass"\n[axes]\ntau = ["a"]\noffset = [0]', ["'tau'", "float", "'a'"]),
    ('experiment = "sweep_cells:mass"\n[axes]\ntau = []\noffset = [0]', ["'axes.tau'", "non-empty", "[]"]),
    ('experiment = "sweep_cells:mass"\n[axes]\ntau = {start = 0, stop = 1, num = 0}\noffset = [0]',
     ["'axes.tau.num'", "[1, inf]", "0"]),
    ('experiment = "sweep_cells:mass"\n[axes]\ntau = {start = 0, stop = 1, num = 3, log = true}\noffset = [0]',
     ["'axes.tau.start'", "(0, inf)"]),
    ('experiment = "sweep_cells:mass"\n[axes]\ntau = [0.1, 0.1]\noffset = [0]', ["'axes.tau'", "repeated"]),
    ('experiment = "sweep_cells:mass"\n[axes]\ntau = [0.1]\noffset = [0]\nseed = [1, 2]', ["'seed'", "seeds"]),
    ('experiment = "sweep_cells:mass"\n[fixed]\ntau = 0.1\n[axes]\ntau = [0.1]\noffset = [0]', ["'tau'", "not both"]),
    ('experiment = "sweep_cells:mass"\nseeds = [1.5]\n[axes]\ntau = [0.1]\noffset = [0]', ["'seeds'", "1.5"]),
    ('experiment = "sweep_cells:nodefault"\n[axes]\na = [1.0]', ["'b'", "no default"]),
    ('experiment = "sweep_cells:mass"\naxis = 1', ["'spec'", "'axis'"]),
    ('experiment = "sweep_cells:mass"\nformat = "xlsx"', ["'format'", "'xlsx'"]),
    ('experiment = ', ["not valid TOML"]),
])
def test_malformed_spec_one_line(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path))
    for w in words:
        assert w in msg


@pytest.mark.parametrize("text, words", [
    ('experiment = "table2"\n[axes]\ntau = [0]', ["'tau'", "positive temperatures (> 0)", "0.0"]),
    ('experiment = "table2"\n[axes]\ntau = [0.1, nan]', ["'tau'", "finite", "nan"]),
    ('experiment = "table2"\n[fixed]\nsamples = 0', ["'samples'", "an int in [2, 2**34]", "0"]),
    ('experiment = "table2"\n[fixed]\nsamples = 4611686018427387904\n[axes]\noffsets = [1.0]',
     ["'samples' parameter of load_spec", "an int in [2, 2**34]"]),
    ('experiment = "table2"\n[fixed]\nsamples = 4096', ["'offsets' parameter of load_spec must be one value per cell",
                                                        "the spec has no axes", "(the default)"]),
    ('experiment = "table2"\n[axes]\ntau = [0.1, 0.2]', ["'offsets' parameter of load_spec must be one value per "
                                                         "cell", "table2 gives one row per value of offsets"]),
    ('experiment = "table3"\ntable = "table3_trajectory"\n[axes]\ntaus = [0.1]',
     ["'table' parameter of load_spec must be a table with one row per cell"]),
    ('experiment = "table2"\n[fixed]\noffsets = [1.0, inf]', ["'offsets'", "finite", "inf"]),
    ('experiment = "table1_limit"\n[fixed]\ntaus = [0.1, -0.1]', ["'taus'", "positive temperatures (> 0)"]),
    ('experiment = "sweep_cells:mass"\n[axes]\ntau = [nan]\noffset = [0]', ["'tau'", "finite"]),
])
def test_values_out_of_range_fail_at_load(tmp_path, text, words):
    """NaN anywhere, and for a registered diagnostic a temperature <= 0 or no samples, fail before any cell runs."""
    pytest.importorskip("softhard.experiments.boundary_geometry", exc_type=ImportError)
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    for w in words:
        assert w in msg, msg


def test_bad_source_and_out_types(tmp_path):
    with pytest.raises(TypeError, match=r"The 'source' parameter of load_spec must be the path of a TOML file"):
        load_spec(3)
    with pytest.raises(TypeError, match=r"The 'out' parameter of read_results must be a path"):
        read_results(None)


def test_registry_spec(toy, tmp_path):
    with pytest.raises(SpecError, match=r"The 'bogus' parameter of load_spec must be a field of toy.Config"):
        load_spec({"experiment": "toy", "axes": {"bogus": [1]}})
    with pytest.raises(SpecError, match=r"The 'K' parameter of load_spec must be of type int. Got 1.5."):
        load_spec({"experiment": "toy", "axes": {"K": [2, 1.5]}})
    spec = load_spec({"experiment": "toy", "fixed": {"scale": 2}, "axes": {"taus": [0.5, 1.0], "K": [2, 3]}})
    assert spec.seeds == (5,)  # the diagnostic's own seed
    assert spec.cells[0].params == {"scale": 2.0, "taus": (0.5,), "K": 2}  # scalar -> one-element tuple
    run_sweep(spec, tmp_path / "main")
    rows = read_results(tmp_path / "main").rows
    assert [(r["taus"], r["K"], r["tau"], r["value"]) for r in rows] == [
        (0.5, 2, 0.5, 2 * 0.5 * 2 + 5), (0.5, 3, 0.5, 2 * 0.5 * 3 + 5), (1.0, 2, 1.0, 9.0), (1.0, 3, 1.0, 11.0)]
    # the row can come from an extra table; a table with more than one row is a failed cell
    extra = load_spec({"experiment": "toy", "table": "toy_extra", "axes": {"K": [3]}})
    assert run_cell(extra.cells[0])["K2"] == 9
    many = run_cell(load_spec({"experiment": "toy", "axes": {"K": [3]}}).cells[0])
    assert many["status"] == "failed" and "one row; toy gave 2" in many["error"]
    wrong = run_cell(load_spec({"experiment": "toy", "table": "nope", "axes": {"K": [3]}}).cells[0])
    assert "The 'table' parameter of softhard sweep must be one of ['toy', 'toy_extra']" in wrong["error"]


@settings(max_examples=25, deadline=None)
@given(tau=st.floats(0.01, 10, allow_nan=False), offset=st.integers(-5, 5), seed=st.integers(0, 2 ** 31))
def test_identity_properties(tau, offset, seed):
    """Same cell however the spec spells it (int vs float, fixed vs axis, key order); other values differ."""
    a = load_spec({"experiment": "sweep_cells:mass", "seeds": [seed], "axes": {"tau": [tau], "offset": [offset]}})
    b = load_spec({"experiment": "sweep_cells:mass", "seeds": [seed], "fixed": {"offset": float(offset)},
                   "axes": {"tau": [tau]}})
    c = load_spec({"experiment": "sweep_cells:mass", "seeds": [seed + 1], "axes": {"tau": [tau], "offset": [offset]}})
    d = load_spec({"experiment": "sweep_cells:mass", "seeds": [seed], "axes": {"tau": [tau * 2], "offset": [offset]}})
    assert a.cells[0].id == b.cells[0].id
    assert len({a.cells[0].id, c.cells[0].id, d.cells[0].id}) == 3


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({
    "cell_id": st.text("0123456789abcdef", min_size=4, max_size=8),
    "x": st.floats(allow_nan=False, width=64), "k": st.integers(-2 ** 40, 2 ** 40),
    "s": st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=5).filter(
        lambda s: s not in ("True", "False") and not _isnum(s))}), min_size=1, max_size=5),
    fmt=st.sampled_from(["parquet", "csv"]))
def test_store_roundtrip(tmp_path_factory, rows, fmt):
    """A part reads back exactly (floats bit for bit, inf included) in both formats."""
    store = tmp_path_factory.mktemp("store")
    assert read_part(write_part(store, rows, fmt)) == rows


def _isnum(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------ run/resume


def test_rows_correct_resume_fresh_and_csv(tmp_path):
    spec = load_spec(write(tmp_path, MASS))
    s = run_sweep(spec, tmp_path / "a")
    assert (s.total, s.cached, s.done, s.failed) == (12, 0, 12, 0)
    table = read_results(tmp_path / "a")
    assert table.columns == ["cell_id", "seed", "tau", "offset", "mass", "mass_stderr"]
    assert [r["cell_id"] for r in table.rows] == [c.id for c in spec.cells]
    for r in table.rows:  # the rows are the cells' Monte Carlo values: exact P(|X - o| <= 2τ) within 5 se
        exact = norm.cdf(r["offset"] + 2 * r["tau"]) - norm.cdf(r["offset"] - 2 * r["tau"])
        assert abs(r["mass"] - exact) < 5 * r["mass_stderr"]
    s = run_sweep(spec, tmp_path / "a")
    assert (s.cached, s.done) == (12, 0) and len(list((tmp_path / "a/results").iterdir())) == 1
    s = run_sweep(spec, tmp_path / "a", fresh=True)
    assert (s.cached, s.done) == (0, 12) and read_results(tmp_path / "a").rows == table.rows
    csv_spec = load_spec(write(tmp_path, 'format = "csv"\n' + MASS, "csv.toml"))
    run_sweep(csv_spec, tmp_path / "c")
    assert read_results(tmp_path / "c").rows == table.rows
    # a sweep with fewer cells in the same directory reports only its own cells
    small = load_spec({"experiment": "sweep_cells:mass", "seeds": [2], "fixed": {"samples": 4096},
                       "axes": {"tau": [0.25], "offset": [1]}})
    assert run_sweep(small, tmp_path / "a").cached == 1
    assert read_results(tmp_path / "a").rows == [table.rows[-1]]


def test_failed_cells_recorded_and_retried(tmp_path):
    marker = tmp_path / "ready"
    spec = load_spec({"experiment": "sweep_cells:flaky", "seeds": [0], "fixed": {"marker": str(marker)},
                      "axes": {"x": [1, 2, 3, 4]}})
    s = run_sweep(spec, tmp_path / "out")
    assert (s.done, s.failed) == (2, 2)
    assert sorted(s.errors.values()) == ["RuntimeError: x=1 is not ready", "RuntimeError: x=3 is not ready"]
    t = read_results(tmp_path / "out")
    assert [r["x"] for r in t.rows] == [2, 4] and [f["x"] for f in t.meta["failed"]] == [1, 3]
    assert t.meta["missing"] == 2
    marker.touch()
    s = run_sweep(spec, tmp_path / "out")
    assert (s.cached, s.done, s.failed) == (2, 2, 0)
    t = read_results(tmp_path / "out")
    assert [r["y"] for r in t.rows] == [10, 20, 30, 40] and t.meta["failed"] == [] and t.meta["missing"] == 0


def test_killed_run_resumes_to_one_row_per_cell(tmp_path):
    spec_path = write(tmp_path, """
experiment = "sweep_cells:mass"
seeds = [0]
[fixed]
samples = 1024
sleep = 0.05
[axes]
tau = {start = 0.05, stop = 0.3, num = 6}
offset = [0.0, 0.5, 1.0, 1.5, 2.0]
""")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from softhard.runs.sweep import run_sweep; run_sweep(sys.argv[1], sys.argv[2], batch=1)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(spec_path), str(out)], env=env)
    deadline = time.monotonic() + 45
    while len(list(out.glob("results/part-*"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # whatever was written is whole: every part reads, and only cells that finished are there
    stored = read_results(out)
    assert 3 <= len(stored.rows) < 30 and stored.meta["missing"] == 30 - len(stored.rows)
    s = run_sweep(spec_path, out)
    assert (s.cached, s.done, s.failed) == (len(stored.rows), 30 - len(stored.rows), 0)
    spec = load_spec(spec_path)
    rows = read_results(out).rows
    assert [r["cell_id"] for r in rows] == [c.id for c in spec.cells]  # exactly one row per cell
    ref = [run_cell(c) for c in spec.cells[:3]]
    assert rows[:3] == [{k: v for k, v in r.items() if k not in ("status", "error")} for r in ref]


def test_finished_cell_written_while_next_runs(tmp_path):
    """The timer writes a finished cell within flush_seconds even while the next (slow) cell still runs."""
    import threading

    spec = load_spec({"experiment": "sweep_cells:mass", "fixed": {"tau": 0.1, "offset": 0.0},
                      "axes": {"sleep": [0.0, 3.0]}})
    run = threading.Thread(target=run_sweep, args=(spec, tmp_path), kwargs={"flush_seconds": 0.1})
    run.start()
    deadline = time.monotonic() + 2.5
    while not list(tmp_path.glob("results/part-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    parts = list(tmp_path.glob("results/part-*"))
    assert run.is_alive() and len(parts) == 1 and [r["sleep"] for r in read_part(parts[0])] == [0.0]
    run.join()
    assert len(read_results(tmp_path).rows) == 2


# ----------------------------------------------------------------------------------- damaged parts


def _cut_inside_last_number(path: Path) -> None:
    """Truncate a CSV part inside the last float of its last row (the file keeps no final newline)."""
    text = path.read_text(encoding="utf-8")
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    cut = len(text.rstrip("\n")) - len(last) + last.rindex(".") + 6  # five digits after the point
    path.write_text(text[:cut], encoding="utf-8")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_damaged_part_is_reported_set_aside_and_recomputed(tmp_path, fmt, capsys):
    """A truncated Parquet part, a CSV part cut inside a number, a CSV cut to a short row: each is named on
    stderr in one line, moved to results/damaged/, and a resumed run recomputes its cells, giving rows
    identical to an undamaged run."""
    spec = load_spec(write(tmp_path, f'format = "{fmt}"\n' + MASS))
    run_sweep(spec, tmp_path / "ref")
    reference = read_results(tmp_path / "ref").rows
    out = tmp_path / "out"
    run_sweep(spec, out, batch=4)  # three parts of four cells
    parts = sorted((out / "results").glob("part-*"))
    assert len(parts) == 3 and all(len(p.name.rsplit("-", 1)[1].split(".")[0]) == 64 for p in parts)
    damages = [lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])]
    if fmt == "csv":
        damages = [_cut_inside_last_number,
                   lambda p: p.write_text(p.read_text().rstrip("\n").rsplit(",", 3)[0] + "\n")]  # a short row
    for damage in damages:
        victim = sorted((out / "results").glob("part-*"))[0]
        lost = {r["cell_id"] for r in read_part(victim)}
        damage(victim)
        capsys.readouterr()
        table = read_results(out)  # the damaged part is left out, not trusted, not fatal
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(victim) in err[0] and "damaged" in err[0]
        assert not victim.exists() and (out / "results" / "damaged" / victim.name).exists()
        assert len(table.rows) == 12 - len(lost) and table.meta["missing"] == len(lost)
        assert [d["part"] for d in table.meta["damaged"]] == [str(victim)]
        s = run_sweep(spec, out, batch=4)
        assert (s.cached, s.done, s.failed, s.damaged) == (12 - len(lost), len(lost), 0, ())
        assert read_results(out).rows == reference  # bit for bit, in the spec's order


def test_legacy_parts_without_checksum_are_decoded_strictly(tmp_path):
    """Parts written before checksums: a CSV without its final newline, or with a short row, is damaged."""
    from softhard.results.store import DamagedPart

    rows = [{"cell_id": "a", "x": 0.002370090206640141, "status": "ok"}]
    good = write_part(tmp_path, rows, "csv")
    legacy = tmp_path / "part-00000000000000000001-1-0.csv"
    legacy.write_bytes(good.read_bytes())
    assert read_part(legacy) == rows
    legacy.write_text(good.read_text()[:-9], encoding="utf-8")  # ...,0.0023700902
    with pytest.raises(DamagedPart, match="ends inside a row"):
        read_part(legacy)
    legacy.write_text("cell_id,x,status\na,0.5\n", encoding="utf-8")
    with pytest.raises(DamagedPart, match="line 2 has 2 fields, the header 3"):
        read_part(legacy)


def _group(pgid: int) -> list[int]:
    """Live processes (not zombies) of process group ``pgid``, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_pool_parent_leaves_no_orphan(tmp_path):
    """SIGKILL of a --workers 2 sweep: its workers, the forkserver and the resource tracker are gone within 5 s."""
    spec_path = write(tmp_path, """
experiment = "sweep_cells:mass"
seeds = [0]
[fixed]
samples = 256
sleep = 2.0
[axes]
tau = [0.1, 0.2, 0.3, 0.4]
offset = [0.0, 1.0]
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from softhard.runs.sweep import run_sweep; run_sweep(sys.argv[1], sys.argv[2], workers=2)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(spec_path), str(tmp_path / "out")], env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(_group(proc.pid)) < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # parent, resource tracker, forkserver, two workers
        assert len(_group(proc.pid)) >= 5, "the pool did not start"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while _group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _group(proc.pid) == []
    finally:
        for pid in _group(proc.pid):  # only what this test started
            os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------- executors


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    spec = load_spec(write(tmp, MASS))
    run_sweep(spec, tmp / "inline")
    return spec, read_results(tmp / "inline").rows


def test_two_local_workers_identical_rows(reference, tmp_path):
    spec, rows = reference
    s = run_sweep(spec, tmp_path, workers=2)
    assert s.done == 12 and read_results(tmp_path).rows == rows


def test_dask_local_cluster_identical_rows(reference, tmp_path):
    spec, rows = reference
    s = run_sweep(spec, tmp_path, dask_local=True, workers=2)
    assert s.done == 12 and read_results(tmp_path).rows == rows


def test_bad_run_arguments(reference, tmp_path):
    spec, _ = reference
    with pytest.raises(ValueError, match="The 'scheduler' parameter of run_sweep must be used alone"):
        run_sweep(spec, tmp_path, scheduler="tcp://127.0.0.1:1", workers=2)
    with pytest.raises(ValueError, match=r"The 'workers' parameter of run_sweep must be an int in \[1, inf\]"):
        run_sweep(spec, tmp_path, workers=0)
    with pytest.raises(ValueError, match="The 'out' parameter of read_results must be a directory written by"):
        read_results(tmp_path / "nothing")


def test_real_table2_cell(tmp_path):
    pytest.importorskip("softhard.experiments.boundary_geometry", exc_type=ImportError)
    from softhard.experiments import get, make_config

    spec = load_spec({"experiment": "table2", "fixed": {"samples": 1 << 14}, "axes": {"offsets": [1.0]}})
    run_sweep(spec, tmp_path)
    (row,) = read_results(tmp_path).rows
    direct = get("table2").run(make_config("table2", {"offsets": [1.0], "samples": 1 << 14})).rows[0]
    assert {k: row[k] for k in direct} == direct and row["seed"] == 72 and row["offsets"] == 1.0


@pytest.mark.parametrize("name, cells", [("sweep_tau_offset.toml", 50), ("sweep_tau_K.toml", 30)])
def test_example_specs(name, cells):
    pytest.importorskip("softhard.experiments.boundary_geometry", exc_type=ImportError)
    spec = load_spec(TESTS.parent / "examples" / name)
    assert len(spec.cells) == cells


# ------------------------------------------------------------------------------------------- CLI


def test_cli_sweep_and_report(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    runner = CliRunner()
    spec, out = write(tmp_path, MASS), tmp_path / "out"
    r = runner.invoke(app, ["sweep", str(spec), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "12 cells: 12 done, 0 cached, 0 failed" in r.output
    r = runner.invoke(app, ["sweep", str(spec), "--out", str(out)])
    assert "12 cells: 0 done, 12 cached, 0 failed" in r.output
    r = runner.invoke(app, ["sweep", str(spec), "--out", str(out), "--fresh"])
    assert "12 cells: 12 done, 0 cached, 0 failed" in r.output
    r = runner.invoke(app, ["sweep-report", str(out)])
    assert r.exit_code == 0 and r.output.strip() == f"wrote {out / 'sweep_mass.png'}"
    assert (out / "sweep_mass.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = runner.invoke(app, ["sweep-report", str(out), "--x", "seed"])
    assert r.exit_code == 2 and "The 'x' parameter of sweep_figures must be a numeric axis" in r.output


def test_cli_errors_and_failures(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    runner = CliRunner()
    bad = write(tmp_path, 'experiment = "sweep_cells:mass"\n[axes]\ntau = []\noffset = [0]', "bad.toml")
    r = runner.invoke(app, ["sweep", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error: ")
    assert "'axes.tau' parameter of softhard sweep must be a non-empty list" in r.output
    good = write(tmp_path, MASS)
    r = runner.invoke(app, ["sweep", str(good), "--out", str(tmp_path / "o"), "--workers", "2", "--scheduler", "x:1"])
    assert r.exit_code == 2 and "used alone" in r.output
    pytest.importorskip("distributed")
    import softhard.runs.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "CONNECT_SECONDS", 1)  # issue 23: unreachable, one line, nothing written
    r = runner.invoke(app, ["sweep", str(good), "--out", str(tmp_path / "u"), "--scheduler", "tcp://127.0.0.1:9"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in r.stderr and not (tmp_path / "u").exists()
    flaky = write(tmp_path, f'experiment = "sweep_cells:flaky"\n[fixed]\nmarker = "{tmp_path / "no"}"\n'
                            "[axes]\nx = [1, 2]", "flaky.toml")
    r = runner.invoke(app, ["sweep", str(flaky), "--out", str(tmp_path / "f")])
    assert r.exit_code == 1 and "2 cells: 1 done, 0 cached, 1 failed" in r.output
    assert "RuntimeError: x=1 is not ready" in r.output and "again to retry" in r.output


# ---------------------------------------------------------------------------------------- report


def test_sweep_series_aggregates_seeds():
    """Mean over seeds with se = sd/sqrt(k); with one seed the row's own stderr; exact drawn as given."""
    from softhard.report.fig_sweep import plotted_columns, sweep_series
    from softhard.results.table import Table

    rows = []
    for o in (0.0, 1.0):
        for K in (2, 3):
            for tau in (0.2, 0.1):
                for seed, noise in ((0, -0.5), (1, 0.25), (2, 1.0)):
                    rows.append({"cell_id": "x", "seed": seed, "tau": tau, "offset": o, "K": K, "o": o,
                                 "m": 10 * tau + o + K + noise, "m_stderr": 0.1, "m_exact": 10 * tau + o + K})
    table = Table("sweep", list(rows[0]), rows, {"spec": {"axes": {"tau": [0.2, 0.1], "offset": [0.0, 1.0],
                                                                  "K": [2, 3]}}})
    assert plotted_columns(table) == ["m"]  # not "o", a copy of the offset axis
    series = sweep_series(table, "m")  # x = tau, facet = offset, lines over K
    assert list(series) == [0.0, 1.0] and list(series[1.0]) == [(("K", 2),), (("K", 3),)]
    xs, mean, se, exact = series[1.0][(("K", 3),)]
    noise = np.array([-0.5, 0.25, 1.0])
    np.testing.assert_array_equal(xs, [0.1, 0.2])
    np.testing.assert_allclose(mean, [1 + 1 + 3 + noise.mean(), 2 + 1 + 3 + noise.mean()], rtol=1e-14)
    np.testing.assert_allclose(se, [noise.std(ddof=1) / math.sqrt(3)] * 2, rtol=1e-12)
    np.testing.assert_allclose(exact, [5.0, 6.0])
    one = Table("sweep", table.columns, [r for r in rows if r["seed"] == 0], table.meta)
    xs, mean, se, _ = sweep_series(one, "m", x="tau", facet="K")[3][(("offset", 0.0),)]
    np.testing.assert_allclose(mean, [0.1 * 10 + 3 - 0.5, 0.2 * 10 + 3 - 0.5], rtol=1e-14)
    np.testing.assert_array_equal(se, [0.1, 0.1])
    with pytest.raises(ValueError, match="The 'facet' parameter of sweep_figures must be an axis other than x"):
        sweep_series(table, "m", x="tau", facet="tau")
