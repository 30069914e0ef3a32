"""`softhard reproduce` for tables 1 and 2: columns, exact vs Monte Carlo, slopes, rendering, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from softhard.cli import app
from softhard.results.io import atomic_write, read_table
from softhard.runs.reproduce import ReproduceError, render_all, reproduce

SAMPLES = 1 << 17


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    reproduce(out, only="table1,table1_multi,table2", samples=SAMPLES, echo=lambda s: None, progress=False)
    return out


def test_files_and_manifest(results):
    manifest = json.loads((results / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    for name in ("table1", "table1_multi", "table2"):
        for ext in ("csv", "json", "tex"):
            assert f"{name}.{ext}" in listed and (results / f"{name}.{ext}").stat().st_size > 0
    assert {"figure1.png", "figure1_multi.png", "figure2.png", "table1_limit.csv"} <= listed
    meta = json.loads((results / "table1.json").read_text())["meta"]
    assert meta["samples"] == SAMPLES and meta["seed"] == 71 and "softhard_version" in meta


def test_columns(results):
    t1, t2 = read_table(results / "table1.csv"), read_table(results / "table2.csv")
    assert t1.columns[:2] == ["tau", "boundary_mass"]
    assert {"risk_gap", "gap_over_tau", "boundary_mass_stderr", "risk_gap_stderr", "gap_over_tau_stderr",
            "boundary_mass_exact", "risk_gap_exact", "risk_gap_first_order"} <= set(t1.columns)
    assert [r["tau"] for r in t1.rows] == [0.02, 0.05, 0.1, 0.2, 0.45, 0.6]
    assert {"offset", "boundary_mass", "risk_gap", "flip_rate", "flip_rate_stderr", "flip_rate_exact"} <= set(
        t2.columns)
    assert [r["offset"] for r in t2.rows] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.25]
    assert "perturbation" in read_table(results / "table2.json").meta


@pytest.mark.parametrize("name", ["table1", "table2", "table1_limit", "table1_multi"])
def test_exact_and_monte_carlo_agree(results, name):
    t = read_table(results / f"{name}.csv")
    checked = 0
    for row in t.rows:
        for col in t.columns:
            if f"{col}_exact" in t.columns and f"{col}_stderr" in t.columns:
                err = abs(row[col] - row[f"{col}_exact"])
                assert err <= 5 * row[f"{col}_stderr"] + 1e-12, (name, col, row)
                checked += 1
    assert checked >= len(t.rows)


def test_loglog_slopes_near_one(results):
    slopes = read_table(results / "table1.json").meta["slopes"]
    assert abs(slopes["boundary_mass"] - 1) < 0.1
    assert abs(slopes["risk_gap"] - 1) < 0.1


def test_first_order_limit(results):
    lim = read_table(results / "table1_limit.csv")
    g1, psi0 = lim.rows[0]["G1"], lim.rows[0]["psi0"]
    assert psi0 == pytest.approx(1 / np.sqrt(2 * np.pi))
    assert g1 == pytest.approx((2 * np.log(2) - 1) * 4 / np.sqrt(2 * np.pi))
    smallest = min(lim.rows, key=lambda r: r["tau"])
    assert smallest["gap_over_tau_exact"] == pytest.approx(g1, rel=1e-2)
    assert smallest["mass_over_2w_exact"] == pytest.approx(psi0, rel=1e-3)


def test_render_redraws_the_same_figures(results):
    before = {p: (results / p).read_bytes() for p in ("figure1.png", "figure1_multi.png", "figure2.png")}
    for p in before:
        (results / p).unlink()
    written = render_all(results)
    assert {p.name for p in written} >= set(before)
    for p, data in before.items():
        assert (results / p).read_bytes() == data


def test_cli_bad_input(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["reproduce", "--out", str(tmp_path), "--only", "table9"])
    assert r.exit_code == 2 and "unknown table 'table9'" in r.output and "Traceback" not in r.output
    cfg = tmp_path / "c.toml"
    cfg.write_text("[table1]\nbogus = 1\n")
    r = runner.invoke(app, ["reproduce", "--out", str(tmp_path), "--only", "table1", "--config", str(cfg)])
    assert r.exit_code == 2 and "bogus" in r.output
    cfg.write_text("[table2]\ntau = 'hot'\n")
    r = runner.invoke(app, ["reproduce", "--out", str(tmp_path), "--only", "table2", "--config", str(cfg)])
    assert r.exit_code == 2 and "tau" in r.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = runner.invoke(app, ["reproduce", "--out", str(blocker / "sub"), "--only", "table1"])
    assert r.exit_code == 2 and "cannot be written" in r.output
    r = runner.invoke(app, ["render", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no tables" in r.output


def test_reproduce_rejects_bad_samples(tmp_path):
    with pytest.raises(ReproduceError, match="--samples"):
        reproduce(tmp_path, only="table1", samples=0, echo=lambda s: None)


def test_atomic_write_leaves_nothing_on_interrupt(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    atomic_write(target, "old\n")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
