"""The join with the paper's printed values and its readings, on hand-made tables (no sampling)."""

from __future__ import annotations

import pytest

from softhard.experiments.paper import PAPER
from softhard.results.table import Table
from softhard.runs.compare import join_paper


def _table1(ours, exact, se=0.001):
    keys = list(PAPER["table1"].rows)
    rows = []
    for k, o, e in zip(keys, ours, exact):
        rows.append({"tau": float(k), "gap_over_tau": o, "gap_over_tau_stderr": se, "gap_over_tau_exact": e})
    return Table("table1", ["tau", "gap_over_tau", "gap_over_tau_stderr", "gap_over_tau_exact"], rows, {})


def _printed(name, column):
    j = PAPER[name].columns.index(column)
    return [float(v[j]) for v in PAPER[name].rows.values()]


def test_z_and_within_noise():
    paper = _printed("table1", "gap_over_tau")
    t = join_paper(_table1([p + 0.002 for p in paper], [p + 0.002 for p in paper]))
    assert [r["gap_over_tau_paper"] for r in t.rows] == paper
    assert all(r["gap_over_tau_paper_z"] == pytest.approx(2.0) for r in t.rows)
    assert t.columns[-2:] == ["gap_over_tau_paper", "gap_over_tau_paper_z"]
    assert t.meta["paper"]["columns"]["gap_over_tau"]["reading"].startswith("within our Monte Carlo noise (|z| ≤ 2.0")
    assert "not in our table" in t.meta["paper"]["columns"]["boundary_mass"]["reading"]


def test_monte_carlo_noise_in_the_paper():
    paper = _printed("table1", "gap_over_tau")
    exact = [p * 1.05 for p in paper]  # the paper 5 % below the exact values, ours on them
    t = join_paper(_table1([e + 0.001 for e in exact], exact))
    reading = t.meta["paper"]["columns"]["gap_over_tau"]["reading"]
    assert reading.startswith("Monte Carlo noise in the paper: its values lie -4.8% from the exact ones")
    assert "ours within 1.0 standard errors" in reading


def test_unexplained_difference_is_flagged():
    paper = _printed("table1", "gap_over_tau")
    t = join_paper(_table1([p + 0.1 for p in paper], paper))
    assert t.meta["paper"]["columns"]["gap_over_tau"]["reading"].startswith("unexplained: |z| up to 100.0")


def test_unprinted_constant_and_deliberate_change():
    rows = [{"offset": float(k), "flip_rate": 0.5, "flip_rate_stderr": 0.01} for k in PAPER["table2"].rows]
    t = Table("table2", ["offset", "flip_rate", "flip_rate_stderr"], rows,
              {"perturbation": {"kind": "rotation", "angle_rad": 0.08}, "deviations": ["a rotation, not a flip"]})
    reading = join_paper(t).meta["paper"]["columns"]["flip_rate"]["reading"]
    assert reading.startswith("an unprinted design constant: the router perturbation")
    assert "(ours: angle_rad = 0.08)" in reading and reading.endswith("deliberate change: a rotation, not a flip")


def test_shape_reading_follows_the_numbers():
    keys = [float(k) for k in PAPER["table3"].rows]
    rows = [{"tau": k, "router_norm": 3.0 - k, "boundary_mass": 0.1 * k, "gate_entropy": 0.08 * k} for k in keys]
    t = join_paper(Table("table3", ["tau", "router_norm", "boundary_mass", "gate_entropy"], rows, {}))
    cols = t.meta["paper"]["columns"]
    assert cols["router_norm"]["reading"].startswith("shape: rises with τ in the paper, falls in ours")
    assert cols["boundary_mass"]["reading"].startswith("shape: rises with τ in both")
    assert "entropy/mass 0.8 (ours)" in cols["gate_entropy"]["reading"]
    assert all(r["router_norm_paper_z"] is None for r in t.rows)  # no standard error, no z


def test_rejoin_replaces_and_unknown_key_is_noted():
    paper = _printed("table1", "gap_over_tau")
    t = join_paper(join_paper(_table1(paper, paper)))
    assert t.columns.count("gap_over_tau_paper") == 1
    odd = join_paper(Table("table1", ["temperature"], [{"temperature": 0.1}], {}))
    assert "no column 'tau'" in odd.meta["paper"]["note"] and odd.columns == ["temperature"]
