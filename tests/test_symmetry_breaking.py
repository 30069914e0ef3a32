"""§7.3 diagnostic (table3): columns, alignment, Monte Carlo vs exact, phase diagram, figures, reproduce."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from softhard.cli import app
from softhard.experiments import get, make_config
from softhard.experiments.symmetry_breaking import Config, design, initial_router, run
from softhard.report.fig_symmetry import figure3
from softhard.results.io import read_table, write_table

COLUMNS = ["tau", "final_risk", "final_risk_stderr", "final_alignment", "router_norm", "boundary_mass",
           "boundary_mass_stderr", "gate_entropy", "gate_entropy_stderr"]
SMALL_PHASE = dict(steps=200, samples=1 << 11, phase_taus=(0.1, 0.2), phase_contrasts=(0.0, 0.03, 0.1),
                   phase_anisotropies=(1.0, 3.0), phase_samples=1 << 13)


def test_default_design():
    """The default 7.3 run (phase diagram aside, it is tested on a small grid below); one test, so that the
    run is done once per test session even under pytest-xdist."""
    table3 = run(Config(phase=False))
    _check_columns(table3)
    _check_every_tau_ends_aligned(table3)
    _check_monte_carlo_columns_against_exact_values(table3)
    _check_meta_records_the_design(table3)


def _check_columns(table3):
    assert get("table3").run is run
    assert table3.name == "table3" and table3.columns == COLUMNS
    assert [r["tau"] for r in table3.rows] == [0.05, 0.1, 0.2, 0.4]
    for r in table3.rows:
        assert all(r[c] > 0 for c in COLUMNS if c.endswith("_stderr"))


def _check_every_tau_ends_aligned(table3):
    assert all(r["final_alignment"] > 0.99 for r in table3.rows)
    traj = table3.extras["table3_trajectory"]
    assert traj.columns == ["tau", "step", "alignment_deficit", "risk", "router_norm"]
    for tau in (0.05, 0.1, 0.2, 0.4):
        rows = [r for r in traj.rows if r["tau"] == tau]
        assert rows[0]["step"] == 0 and rows[-1]["step"] == Config().steps
        assert rows[0]["alignment_deficit"] == pytest.approx(1 - Config().init_alignment)
        assert rows[-1]["risk"] < rows[0]["risk"]
    # smaller τ aligns in fewer steps
    hits = [p["steps_to_align"] for p in table3.meta["predictions"]]
    assert hits == sorted(hits) and hits[0] < hits[-1]


def _check_monte_carlo_columns_against_exact_values(table3):
    model = design(Config())
    for r, exact_risk, theta in zip(table3.rows, table3.meta["final_risk_exact"], table3.meta["theta_final"]):
        assert abs(r["final_risk"] - exact_risk) < 5 * r["final_risk_stderr"]
        th = torch.tensor(theta, dtype=torch.float64)
        s = math.sqrt(float(th @ model.cov @ th))  # θ·X ~ N(0, s²): μ(|θ·X| ≤ 2τ) = erf(√2·τ/s)
        assert abs(r["boundary_mass"] - math.erf(math.sqrt(2) * r["tau"] / s)) < 5 * r["boundary_mass_stderr"]
        assert float(np.linalg.norm(theta)) == pytest.approx(r["router_norm"])


def _check_meta_records_the_design(table3):
    design_meta = table3.meta["design"]
    for key in ("d", "Sigma", "u", "beta0", "c", "student_contrast", "delta", "init_norm", "init_alignment",
                "theta0", "eta", "steps", "training_samples", "seed", "evaluation"):
        assert key in design_meta
    cfg = Config()
    th0 = np.asarray(design_meta["theta0"])
    assert np.linalg.norm(th0) == pytest.approx(cfg.init_norm)
    assert th0[0] / np.linalg.norm(th0) == pytest.approx(cfg.init_alignment)
    assert np.allclose(design_meta["delta"], cfg.student_contrast * np.asarray(design_meta["c"]))
    assert torch.equal(initial_router(cfg), torch.tensor(design_meta["theta0"], dtype=torch.float64))


def test_phase_diagram(tmp_path):
    small = run(Config(**SMALL_PHASE))
    contrast, aniso = small.extras["table3_phase_contrast"], small.extras["table3_phase_anisotropy"]
    assert len(contrast.rows) == 2 * 3 and len(aniso.rows) == 2 * 2
    for r in contrast.rows:
        if r["student_contrast"] == 0.0:  # identical experts: ∇L ≡ 0, nothing moves
            assert r["final_alignment"] == pytest.approx(Config().init_alignment)
            assert math.isnan(r["steps_to_align"]) and r["drift_alignment"] == 0.0
    for r in aniso.rows:
        if r["anisotropy"] == 1.0:  # drift ∝ Σu = u: aligned after (at most) two steps; (6.7) takes longer
            assert r["steps_to_align"] <= 2 and r["drift_alignment"] == pytest.approx(1.0)
            assert r["steps_predicted"] > r["steps_to_align"]
        else:  # the leading eigenvector of M is tilted away from u: (6.7) never reaches the threshold
            assert r["limit_alignment_predicted"] < 0.99 and math.isnan(r["steps_predicted"])
            assert r["drift_alignment"] < 0.99
    # to first order in ε, router-only descent runs on the clock t·ηε/τ² (docs/symmetry.md)
    rows = [r for r in contrast.rows if r["student_contrast"] > 0]
    scaled = np.array([r["steps_scaled"] for r in rows])
    assert len(scaled) == 4 and np.isfinite(scaled).all() and scaled.max() / scaled.min() < 1.25
    steps = np.array([r["steps_to_align"] for r in rows])
    assert steps.max() / steps.min() > 10  # while the raw step counts differ by more than a factor 10
    # the figures are drawn from the written files alone
    write_table(small, tmp_path)
    for name in ("table3_phase_contrast", "table3_phase_anisotropy"):
        assert read_table(tmp_path / f"{name}.json").columns == contrast.columns
    paths = figure3(tmp_path)
    assert [p.name for p in paths] == ["figure3.png", "figure3_phase.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_config_checks():
    cfg = make_config("table3", {"samples": 1000, "taus": [0.1, 0.2]})
    assert cfg.samples == 1000 and cfg.taus == (0.1, 0.2)
    with pytest.raises(ValueError, match="keys among"):
        make_config("table3", {"sample": 10})
    for bad, match in (({"d": 2}, "'d' parameter"), ({"taus": (0.1, -0.2)}, "'taus' parameter"),
                       ({"init_alignment": 1.5}, "'init_alignment' parameter"), ({"eta": 0.0}, "'eta' parameter")):
        with pytest.raises(ValueError, match=match):
            run(dataclasses.replace(Config(), **bad))


def test_reproduce_only_table3(tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text("[table3]\nsteps = 100\nphase = false\n", encoding="utf-8")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["reproduce", "--only", "table3", "--out", str(out), "--samples", "2048",
                                   "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    for f in [f"{n}.{ext}" for n in ("table3", "table3_trajectory") for ext in ("csv", "json")] + ["table3.tex"]:
        assert (out / f).stat().st_size > 0
    assert (out / "figure3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "figure3_phase.png").exists()  # no phase tables, no phase figure
    back = read_table(out / "table3.json")
    assert [c for c in back.columns if not c.endswith(("_paper", "_paper_z"))] == COLUMNS  # + the paper's values
    assert back.meta["samples"] == 2048 and back.meta["design"]["training_samples"] == 2048
    assert back.meta["seed"] == Config().seed and back.meta["design"]["steps"] == 100
