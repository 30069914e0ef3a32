"""Landscape of L_τ: symmetries, Hessians, critical points, recovery vs τ, uniform gap (Theorems 4.7, 5.17)."""

import itertools
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from softhard import (
    Gaussian,
    LinearExperts,
    LinearRouter,
    MoE,
    ParamSpace,
    PartitionTeacher,
    argmin_path,
    binary_problem,
    critical_points,
    draw,
    hessian,
    make_student,
    minima_path,
    random_family,
    risk_exact,
    shape_gradient,
    transfer_modulus,
    uniform_gap,
    voronoi3_problem,
)
from softhard.results.table import loglog_fit
from softhard.cli import app
from softhard.dynamics.landscape import Objective

F64 = torch.float64


@pytest.fixture(scope="module")
def binary():
    prob = binary_problem()
    return prob, draw(prob.law, 4096, 0)


def test_relabelling_and_gauge_leave_the_model_unchanged():
    prob = voronoi3_problem()
    student = prob.student(seed=3)
    space = ParamSpace(student)
    v = space.vector()
    x = draw(prob.law, 256, 1)
    a0, h0 = space.forward(v, x)
    f0 = torch.softmax(a0 / 0.1, -1).mul(h0).sum(-1)
    for perm in itertools.permutations(range(3)):
        w = space.permute(v, perm)
        a, h = space.forward(w, x)
        assert torch.allclose(torch.softmax(a / 0.1, -1).mul(h).sum(-1), f0, atol=1e-12)
        assert space.distance(v, w) < 1e-12
        assert torch.equal(space.permute(w, np.argsort(perm)), v)
    obj = Objective(space, prob.teacher, x, 0.1)
    N = space.null_directions(v)
    assert N.shape == (space.p, 2 + 1 + 1)  # gauge of W (d = 2 columns), of b, and the radial direction
    for j in range(N.shape[1]):
        assert float(obj.loss(v + 0.3 * N[:, j] * (1 if j < 3 else 0.1))) == pytest.approx(float(obj.loss(v)), 1e-12)
    B = space.complement(v)
    assert torch.allclose(B.T @ B, torch.eye(space.p - 4, dtype=F64), atol=1e-12)
    assert torch.allclose(N.T @ B, torch.zeros(4, space.p - 4, dtype=F64), atol=1e-12)


def test_gradient_and_hessian_match_finite_differences():
    prob = voronoi3_problem(noise_std=0.3)
    student = make_student(2, 3, experts="mlp", hidden=3, seed=2)
    space = ParamSpace(student)
    x = draw(prob.law, 512, 0)
    obj = Objective(space, prob.teacher, x, 0.2)
    v = space.vector()
    g, H = obj.grad(v), obj.hessian(v)
    assert torch.allclose(H, H.T, atol=1e-12)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(space.p, generator=gen, dtype=F64)
    e = 1e-6
    fd = (obj.loss(v + e * u) - obj.loss(v - e * u)) / (2 * e)
    assert float(fd) == pytest.approx(float(g @ u), rel=1e-6)
    fdg = (obj.grad(v + e * u) - obj.grad(v - e * u)) / (2 * e)
    assert torch.allclose(fdg, H @ u, rtol=1e-5, atol=1e-8)
    assert torch.allclose(hessian(space.load(v), prob.teacher, x, 0.2), H, atol=1e-12)
    assert obj.loss(v) > 0.09  # includes σ² = 0.09


def test_hessian_too_large_is_refused_with_its_size(binary):
    prob, x = binary
    student = prob.teacher_student()
    with pytest.raises(ValueError, match=r"would need .* = 2304 bytes\)\. Got '12 parameters'"):
        hessian(student, prob.teacher, x, 0.1, max_bytes=1000)
    with pytest.raises(ValueError, match="max_bytes=1000"):
        critical_points(student, prob.teacher, x, 0.1, [student], max_bytes=1000)


def test_known_saddle_of_the_binary_problem_is_a_strict_saddle(binary):
    """Done-when: the known saddle (the hard profile's saddle, problem.saddle()) is classified a strict saddle."""
    prob, x = binary
    land = critical_points(prob.teacher_student(), prob.teacher, x, 0.05, [prob.saddle()], law=prob.law,
                           method="newton")
    assert land.failed == 0 and len(land.points) == 1
    cp = land.points[0]
    assert cp.grad_norm <= 1e-8
    assert cp.kind == "strict saddle" and cp.negative == 1
    assert cp.min_eigenvalue < -0.5  # strongly negative: turning the interface towards the teacher's
    assert not cp.teacher_equivalent and cp.dead_experts == 0


def test_non_teacher_critical_points_are_strict_saddles_at_small_tau(binary):
    """Theorem 5.17 on the binary problem: minima are teacher-equivalent, the rest have λ_min < 0."""
    prob, x = binary
    starts = [prob.student(seed=s) for s in (1, 2, 3)] + [prob.saddle()]
    land = critical_points(prob.teacher_student(), prob.teacher, x, 0.05, starts[:3], law=prob.law)
    sad = critical_points(prob.teacher_student(), prob.teacher, x, 0.05, starts[3:], law=prob.law, method="newton")
    points = land.points + sad.points
    assert any(cp.teacher_equivalent and cp.kind == "minimum" for cp in points)
    for cp in points:
        if cp.kind == "minimum":
            assert cp.teacher_equivalent
        if not cp.teacher_equivalent and cp.dead_experts == 0:
            assert cp.min_eigenvalue < 0
    # the three random starts all end at one minimum (grouped modulo relabelling and gauge)
    assert len(land.points) == 1 and sorted(land.points[0].starts) == [0, 1, 2]


def test_recovery_error_at_the_minimum_shrinks_with_tau():
    """Done-when: the expert recovery error of the minimiser of L_τ decreases as τ decreases."""
    prob = voronoi3_problem()
    x = draw(prob.law, 8192, 0)
    path = minima_path(prob.teacher_student(), prob.teacher, x, [0.2, 0.1, 0.05], law=prob.law)
    err = [cp.recovery.expert_error.value for cp in path]
    mis = [cp.recovery.misrouted_mass.value for cp in path]
    assert all(cp.kind == "minimum" and cp.teacher_equivalent and cp.grad_norm <= 1e-8 for cp in path)
    assert err[0] > err[1] > err[2] and mis[0] > mis[1] > mis[2]
    assert err[2] < err[0] / 8  # faster than linear in τ (measured slope ≈ 2.5)


def test_uniform_gap_exponent(binary):
    """Cor. 4.4: the exponent of sup_F |L_τ − L_0| with an error bar that can be wrong, judged against the exact one."""
    prob, _ = binary
    template = prob.teacher_student()
    fam = random_family(template, 8, 0.3, seed=1)
    taus = [0.0025, 0.005, 0.01, 0.02, 0.04]
    res = uniform_gap(template, prob.teacher, prob.law, fam, taus, n=1 << 16, seed=3)
    assert res.gap.value.shape == (8, 5) and res.gap.n == 1 << 16
    # the exact sup-gap (closed/risk quadrature) and its exponent: Cor. 4.4's α = 1, approached from below
    assert res.alpha_exact == pytest.approx(1.0, abs=0.02) and np.all(np.diff(res.local_slopes_exact) < 0)
    assert np.all(np.abs(res.sup_gap - res.exact_sup_gap) <= 5 * res.sup_gap_stderr + 1e-12)
    # the delta-method error bar is not the fit's residual scale (which ignores that the τ share their draws) ...
    resid = loglog_fit(taus, res.sup_gap)["slope_stderr"]
    assert res.alpha_stderr > 3 * resid and 0.005 < res.alpha_stderr < 0.2
    # ... and the exponent is within it of the truth
    assert abs(res.alpha - res.alpha_exact) <= 4 * res.alpha_stderr and res.alpha_z == pytest.approx(
        (res.alpha - res.alpha_exact) / res.alpha_stderr)
    assert res.argmin_hard == 0 and np.all(res.excess_hard >= 0)  # by construction here (member 0 has L_0 = 0)
    t = res.table()
    assert t.meta["alpha"] == res.alpha and t.meta["alpha_exact"] == res.alpha_exact and len(t.rows) == 5


def _hinge():
    """A continuous teacher f* = |x_1| + x_2 and a binary student whose interface is transverse to the teacher's:
    L_0 is smooth at its minimiser on the bias segment, so the first-order displacement is predicted."""
    teacher = PartitionTeacher(MoE(LinearRouter.binary(torch.tensor([1.0, 0.0], dtype=F64)),
                                   LinearExperts([[1.0, 1.0], [-1.0, 1.0]], [0.0, 0.0])))
    student = MoE(LinearRouter([[0.5, 0.15], [-0.5, -0.15]], [0.0, 0.0], trainable=True),
                  LinearExperts([[1.2, 0.9], [-0.8, 1.1]], [0.1, -0.2], trainable=True))
    eta = torch.zeros(ParamSpace(student).p, dtype=F64)
    eta[4], eta[5] = 0.5, -0.5  # the router bias: g = a_1 - a_2 moves by t
    return teacher, Gaussian.standard(2), student, eta


def test_argmin_path_moves_at_the_predicted_rate():
    """Theorem 4.7 on a segment where argmin L_τ moves with τ: t_τ − t_0 = −τ G_1'(t_0)/L_0''(t_0) + O(τ²)."""
    teacher, law, student, eta = _hinge()
    taus = [0.2, 0.1, 0.05, 0.025, 0.0125]
    res = argmin_path(student, teacher, law, eta, taus, span=(-1.0, 1.0), grid=21)
    assert res.converges and not res.reasons and res.predicted is not None
    assert res.rate == pytest.approx(1.0, abs=0.2) and np.all(np.diff(res.distance) < 0)
    rel = (res.t_soft - res.t_hard) / res.predicted - 1  # O(τ): halves with τ
    assert abs(rel[-1]) < 0.06 and np.all(np.abs(rel[2:] / rel[1:-1] - 0.5) < 0.06), rel  # 0.70 from τ = 0.2
    assert res.curvature > 0 and np.all(res.excess_hard > 0) and np.all(np.diff(res.excess_hard) < 0)
    # an independent look at t_0: L_0'(t_0) = 0 by the shape gradient (Prop. 5.10) at fixed experts
    space = ParamSpace(student)
    m0 = space.load(space.vector() + res.t_hard * eta)
    g = shape_gradient(m0.router, teacher, law, m0.experts)
    assert abs(float(g["bias"].value @ eta[4:6].numpy())) < 1e-8
    # the rule can fail: temperatures too close together to show the approach
    close = argmin_path(student, teacher, law, eta, [0.02, 0.018, 0.016], span=(-1.0, 1.0), grid=21)
    assert not close.converges and any("not below half" in r for r in close.reasons)
    assert close.table().meta["converges"] is False


def test_transfer_modulus_at_the_binary_saddle():
    """Assumption 5.13: ω(τ) → 0 at the rate τ at a hard saddle; the soft side's rule against the closed form."""
    prob = binary_problem()
    tr = transfer_modulus(prob.saddle(), prob.teacher, prob.law, [0.1, 0.05, 0.025], nodes=4, check=False)
    assert np.all(tr.grad_norm < 1e-8) and np.all(np.diff(tr.omega_grad) < 0) and np.all(np.diff(tr.omega_hess) < 0)
    assert tr.rate_grad > 0.9 and tr.rate_hess > 0.75  # predicted: at least 1 (measured 1.9 and 0.88 -> 1)
    assert np.all(tr.soft_min_eigenvalue < -0.5) and np.all(tr.hard_min_eigenvalue < -0.5)  # both a saddle
    # the quadrature rule's L_τ at the last point against the exact 1-d quadrature of closed/risk
    space = ParamSpace(prob.saddle())
    m = space.load(torch.as_tensor(tr.points[-1]))
    lin = MoE(m.router.as_linear(), LinearExperts(m.experts.weight.detach(), m.experts.bias.detach()))
    exact = risk_exact(lin, prob.law, [0.025], prob.teacher)[0][0]
    from softhard.dynamics.landscape import _plane_rule
    from softhard.dynamics.params import Objective
    W, b = m.router.as_linear().weight, m.router.as_linear().bias
    x, w = _plane_rule(prob.law, ((W[0] - W[1]).numpy(), float(b[0] - b[1])), (np.array([1.0, 0.0]), 0.0), 0.025, 8)
    assert float(Objective(space, prob.teacher, x, 0.025, weights=w).loss(space.vector(m))) == pytest.approx(
        exact, rel=1e-10)
    with pytest.raises(TypeError, match="'moe' parameter of transfer_modulus must be a binary student"):
        transfer_modulus(voronoi3_problem().teacher_student(), voronoi3_problem().teacher, voronoi3_problem().law,
                         [0.1, 0.05, 0.02])


def test_bad_input(binary):
    prob, x = binary
    s = prob.teacher_student()
    with pytest.raises(ValueError, match="'method' parameter of critical_points"):
        critical_points(s, prob.teacher, x, 0.1, [s], method="anneal")
    with pytest.raises(ValueError, match="'starts' parameter of critical_points"):
        critical_points(s, prob.teacher, x, 0.1, [torch.zeros(3)])
    with pytest.raises(ValueError, match=r"'family' parameter of uniform_gap must be an array of shape \(P, 12\)"):
        uniform_gap(s, prob.teacher, prob.law, torch.zeros(4, 5), [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="'taus' parameter of uniform_gap must be at least 3"):
        uniform_gap(s, prob.teacher, prob.law, random_family(s, 2, 0.1), [0.1, 0.2])
    with pytest.raises(TypeError, match="'moe' parameter of ParamSpace"):
        ParamSpace(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"'sample' parameter of minima_path must be an array of shape \(N, 2\)"):
        minima_path(s, prob.teacher, torch.zeros(10, 3), [0.1])
    with pytest.raises(TypeError, match="'teacher' parameter of critical_points must be a PartitionTeacher"):
        critical_points(s, lambda x: x[:, 0], x, 0.1, [s])


def test_cli_landscape(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["landscape", "--problem", "nope", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown problem 'nope'" in bad.output
    res = runner.invoke(app, ["landscape", "--problem", "binary", "--out", str(tmp_path), "--samples", "512"])
    assert res.exit_code == 0, res.output
    table = json.loads((tmp_path / "landscape.json").read_text())
    kinds = {(r["kind"], r["teacher_equivalent"]) for r in table["rows"]}
    assert ("minimum", True) in kinds and ("strict saddle", False) in kinds
    m = table["meta"]
    assert abs(m["gamma_alpha"] - m["gamma_alpha_exact"]) <= 4 * m["gamma_alpha_stderr"] and "±" in res.output
    assert m["argmin_converges"] is True and "converges (landscape_argmin)" in res.output
    assert json.loads((tmp_path / "landscape_argmin.json").read_text())["meta"]["rule"].startswith("fails if")
    # the soft saddles are hard saddles too, by the exact profiled second variation alone
    assert all(r["hard_profiled_min_eigenvalue"] < 0 for r in table["rows"] if r["kind"] == "strict saddle")
    for name in ("landscape_recovery.png", "landscape_spectra.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spectra = json.loads((tmp_path / "landscape_spectra.json").read_text())["rows"]
    assert {r["point"] for r in spectra} >= {0, 1} and any(r["eigenvalue"] < 0 for r in spectra)
