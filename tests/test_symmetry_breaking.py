"""§7.3 diagnostic (table3): columns, alignment, Monte Carlo vs exact, phase diagram, figures, reproduce."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.special import expit, xlogy
from scipy.stats import norm
from typer.testing import CliRunner

from softhard.cli import app
from softhard.experiments import get, make_config
from softhard.dynamics.symmetry import alignment
from softhard.experiments.symmetry_breaking import Config, design, initial_router, run
from softhard.report.fig_symmetry import figure3
from softhard.results.io import read_table, to_jsonable, write_table

COLUMNS = ["tau", "final_risk", "final_risk_stderr", "final_alignment", "router_norm", "boundary_mass",
           "boundary_mass_stderr", "gate_entropy", "gate_entropy_stderr", "alignment_step1", "steps_to_align"]
SMALL_PHASE = dict(steps=200, samples=1 << 11, phase_taus=(0.1, 0.2), phase_contrasts=(0.0, 0.03, 0.1),
                   phase_anisotropies=(1.0, 3.0), phase_samples=1 << 13)
# the paper's printed Table 3 (τ: router norm, boundary mass, gate entropy), for comparison only
PAPER_TABLE3 = {0.05: (1.430, 0.056, 0.046), 0.1: (1.997, 0.080, 0.065), 0.2: (2.780, 0.114, 0.093),
                0.4: (3.840, 0.163, 0.133)}


def _isotropic_mass(s: float, tau: float) -> float:
    """μ(|θ·X| ≤ 2τ) for θ·X ~ N(0, s²): 2Φ(2τ/s) − 1."""
    return 2 * norm.cdf(2 * tau / s) - 1


def _isotropic_entropy(s: float, tau: float) -> float:
    """E[H(σ(θ·X/τ))] for θ·X ~ N(0, s²), nats, by SciPy quadrature (H even in z)."""
    def h(z):
        p = expit(s * z / tau)
        return float(-xlogy(p, p) - xlogy(1 - p, 1 - p)) * norm.pdf(z)

    return 2 * quad(h, 0, 12, points=[k * tau / s for k in (1, 5, 20)], epsabs=1e-14, limit=200)[0]


def test_default_design():
    """The default 7.3 run (phase diagram aside, it is tested on a small grid below); one test, so that the
    run is done once per test session even under pytest-xdist."""
    table3 = run(Config(phase=False))
    _check_columns(table3)
    _check_every_tau_ends_aligned(table3)
    _check_the_transient(table3)
    _check_monte_carlo_columns_against_exact_values(table3)
    _check_meta_records_the_design(table3)
    _check_predictions_apply_to_the_design(table3)


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
        assert rows[1]["step"] == 1
        assert 1 - rows[1]["alignment_deficit"] == pytest.approx(table3.rows[[0.05, 0.1, 0.2, 0.4].index(tau)][
            "alignment_step1"])


def _check_the_transient(table3):
    """The paper's described transient: |cos| ≈ 0.8 after one step, 0.99 after a few to a hundred steps, more for
    larger τ. Step 1 is the descent step from θ_0 on the training sample: it equals the population step
    (exact gradient, meta alignment_step1_population) within 5 standard errors of the Monte Carlo gradient on
    that sample (delta method for the cosine)."""
    cfg = Config()
    model = design(cfg)
    th0 = initial_router(cfg)
    hits = [r["steps_to_align"] for r in table3.rows]
    assert hits == sorted(hits) and 1 < hits[0] <= 10 and 50 <= hits[-1] <= 300
    for r, pred in zip(table3.rows, table3.meta["predictions"]):
        assert 0.75 < r["alignment_step1"] < 0.9
        g = model.gradient(th0, r["tau"], n=cfg.samples, seed=cfg.seed)  # the training sample's gradient
        step = th0 - cfg.eta * torch.as_tensor(g.value)
        assert float(alignment(step, model.u)) == pytest.approx(r["alignment_step1"], rel=1e-9)
        ghat = step / step.norm()
        cos = float(ghat @ model.u)
        dcos = (model.u - cos * ghat) / float(step.norm())  # ∂cos/∂θ_1, θ_1 = θ_0 − η g
        se = cfg.eta * math.sqrt(float(((dcos * torch.as_tensor(g.stderr)) ** 2).sum()))
        assert abs(r["alignment_step1"] - pred["alignment_step1_population"]) < 5 * se
        assert pred["alignment_step1_population"] == pytest.approx(pred["drift_alignment"], abs=2e-3)
        assert pred["drift_alignment"] == pytest.approx(6 / math.sqrt(52), rel=1e-9)  # −∇L(0) ∝ 6u + 4e_2 (by hand)


def _check_monte_carlo_columns_against_exact_values(table3):
    model = design(Config())
    assert torch.equal(model.cov, torch.eye(Config().d, dtype=torch.float64))  # the isotropic design
    for r, exact_risk, theta in zip(table3.rows, table3.meta["final_risk_exact"], table3.meta["theta_final"]):
        assert abs(r["final_risk"] - exact_risk) < 5 * r["final_risk_stderr"]
        assert float(np.linalg.norm(theta)) == pytest.approx(r["router_norm"])
        # Σ = I: θ·X ~ N(0, |θ|²), so the mass and entropy columns are closed forms at our router norms
        s, tau = r["router_norm"], r["tau"]
        assert abs(r["boundary_mass"] - _isotropic_mass(s, tau)) < 5 * r["boundary_mass_stderr"]
        assert abs(r["gate_entropy"] - _isotropic_entropy(s, tau)) < 5 * r["gate_entropy_stderr"]
    # the paper's printed columns are the same closed forms at its router norms (to 1.3 %, 3-digit printing)
    for tau, (s, mass, ent) in PAPER_TABLE3.items():
        assert _isotropic_mass(s, tau) == pytest.approx(mass, rel=0.013)
        assert _isotropic_entropy(s, tau) == pytest.approx(ent, rel=0.006)


def _check_meta_records_the_design(table3):
    design_meta = table3.meta["design"]
    for key in ("variant", "d", "Sigma", "u", "beta0", "c", "c_u", "student_contrast", "delta", "init_norm",
                "init_alignment", "theta0", "eta", "steps", "training_samples", "seed", "evaluation"):
        assert key in design_meta
    cfg = Config()
    assert design_meta["variant"] == "isotropic" and design_meta["c_u"] == 1.0
    assert np.allclose(design_meta["c"], [1.0, 2.0] + [0.0] * (cfg.d - 2))
    th0 = np.asarray(design_meta["theta0"])
    assert np.linalg.norm(th0) == pytest.approx(cfg.init_norm)
    assert th0[0] / np.linalg.norm(th0) == pytest.approx(cfg.init_alignment)
    assert np.allclose(design_meta["delta"], cfg.student_contrast * np.asarray(design_meta["c"]))
    assert torch.equal(initial_router(cfg), torch.tensor(design_meta["theta0"], dtype=torch.float64))


def _check_predictions_apply_to_the_design(table3):
    """Only predictions that apply are printed beside the run; nothing is NaN."""
    text = json.dumps(to_jsonable(table3.meta))
    assert "nan" not in text.lower().replace("nano", "")
    for p, r in zip(table3.meta["predictions"], table3.rows):
        assert p["limit_alignment_predicted"] == pytest.approx(1.0)  # Σ = I: M ∝ I + uuᵀ, e_1 = u
        assert abs(p["limit_alignment_predicted"] - r["final_alignment"]) < 1e-3
        assert "rate_predicted" not in p and "steps_predicted" not in p
    assert "left out of Table 3" in table3.meta["predictions_note"]


def test_anisotropic_variant_leaves_the_reduced_model_out():
    """c = 2e_2 ⟂ u: Prop. 6.3's hypothesis fails, M = 0, no reduced-model prediction (and no warning: it is not
    computed); the first step points along Σu (|cos| = 2/√5 by hand)."""
    cfg = Config(variant="anisotropic", phase=False, steps=40, samples=1 << 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table3 = run(cfg)
    d = table3.meta["design"]
    assert d["c_u"] == 0.0 and d["anisotropy"] == 3.0 and np.allclose(d["c"], [0.0, 2.0] + [0.0] * 6)
    assert "hypothesis c_u ≠ 0 fails" in table3.meta["predictions_note"]
    for p in table3.meta["predictions"]:
        assert "limit_alignment_predicted" not in p and "lambda_1" not in p
        assert p["drift_alignment"] == pytest.approx(2 / math.sqrt(5), rel=1e-9)
    assert "nan" not in json.dumps(to_jsonable(table3.meta)).lower()


def test_phase_diagram(tmp_path):
    small = run(Config(**SMALL_PHASE))
    contrast, aniso = small.extras["table3_phase_contrast"], small.extras["table3_phase_anisotropy"]
    assert len(contrast.rows) == 2 * 3 and len(aniso.rows) == 2 * 2
    for r in contrast.rows:
        if r["student_contrast"] == 0.0:  # identical experts: ∇L ≡ 0, nothing moves
            assert r["final_alignment"] == pytest.approx(Config().init_alignment)
            assert r["steps_to_align"] is None and r["steps_scaled"] is None and r["drift_alignment"] == 0.0
        # the reduced model has no ε: its prediction is the same at every ε (hence the figure compares rates at
        # one ε only)
        same = [q for q in contrast.rows if q["tau"] == r["tau"]]
        assert len({q["rate_predicted"] for q in same}) == 1 and len({q["steps_predicted"] for q in same}) == 1
    for r in aniso.rows:
        assert r["limit_alignment_predicted"] is not None  # c = e_1 + 2e_2: c_u = 1, Prop. 6.3 applies
        if r["anisotropy"] == 1.0:  # Σ = I: M ∝ I + uuᵀ, its limit direction is u; the first step is the drift's
            assert r["limit_alignment_predicted"] == pytest.approx(1.0) and r["steps_predicted"] is not None
            assert r["drift_alignment"] == pytest.approx(6 / math.sqrt(52))
        else:  # the leading eigenvector of M is tilted away from u: (6.7) never reaches the threshold
            assert r["limit_alignment_predicted"] < 0.99 and r["steps_predicted"] is None
        assert r["final_alignment"] > 0.99  # while descent does reach it
    # to first order in ε, router-only descent runs on the clock t·ηε/τ² (docs/symmetry.md)
    rows = [r for r in contrast.rows if r["student_contrast"] > 0]
    scaled = np.array([r["steps_scaled"] for r in rows], dtype=float)
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
    assert make_config("table3", {"variant": "anisotropic"}).variant == "anisotropic"
    for bad, match in (({"d": 2}, "'d' parameter"), ({"taus": (0.1, -0.2)}, "'taus' parameter"),
                       ({"init_alignment": 1.5}, "'init_alignment' parameter"), ({"eta": 0.0}, "'eta' parameter"),
                       ({"variant": "diagonal"}, "'variant' parameter"), ({"contrast": (0.0, 0.0)}, "'contrast'"),
                       ({"anisotropy": -1.0}, "'anisotropy' parameter")):
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
