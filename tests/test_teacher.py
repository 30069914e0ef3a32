"""Teachers, students, recovery modulo relabelling and the Lemma 5.5 / Prop. 5.8 decomposition."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import norm

from softhard import (
    LinearExperts,
    MoE,
    PartitionTeacher,
    Uniform,
    UnitLinearRouter,
    admissible_matching,
    binary_problem,
    draw,
    get_problem,
    hard_risk,
    make_student,
    misrouting_bound,
    recovery,
    risk_decomposition,
    shape_gradient,
    voronoi3_problem,
)
from softhard.dynamics.teacher import EPS_2TAU

F64 = torch.float64


def test_voronoi_cells_are_nearest_centres():
    centers = torch.tensor([[0.0, 1.0], [1.0, -0.5], [-1.2, -0.3]], dtype=F64)
    experts = LinearExperts(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64), [0.0, 1.0, -1.0])
    t = PartitionTeacher.voronoi(centers, experts, noise_std=0.3)
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    cell = t.cell(x)
    assert torch.equal(cell, torch.cdist(x, centers).argmin(1))
    assert torch.allclose(t.signal(x), experts(x).gather(1, cell[:, None])[:, 0])
    y = t.sample_y(x, torch.Generator().manual_seed(1))
    assert abs(float((y - t.signal(x)).std()) - 0.3) < 5 * 0.3 / math.sqrt(2 * 500)


@given(st.integers(2, 5), st.integers(1, 4), st.floats(0.1, 10.0), st.integers(0, 10 ** 6))
def test_unit_router_scale_and_invariances(K, d, scale, seed):
    g = torch.Generator().manual_seed(seed)
    W, b = torch.randn(K, d, generator=g, dtype=F64), torch.randn(K, generator=g, dtype=F64)
    r = UnitLinearRouter(W, b, scale=scale)
    We, _ = r.effective()
    pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
    rms = math.sqrt(sum(float(torch.sum((We[i] - We[j]).detach() ** 2)) for i, j in pairs) / len(pairs))
    assert rms == pytest.approx(scale, rel=1e-12)
    x = torch.randn(7, d, generator=g, dtype=F64)
    moved = UnitLinearRouter(3.7 * W + torch.randn(1, d, generator=g, dtype=F64), b + 2.5, scale=scale)
    assert torch.allclose(moved(x), r(x), atol=1e-12)
    assert torch.allclose(r.as_linear()(x), r(x), atol=1e-12)


def test_teacher_student_reproduces_the_teacher():
    for name in ("binary", "voronoi3"):
        prob = get_problem(name)
        ts = prob.teacher_student()
        x = draw(prob.law, 4096, 0)
        assert torch.allclose(ts.hard(x), prob.teacher.signal(x), atol=1e-12)
        assert hard_risk(ts, prob.teacher, prob.law, method="exact").value == pytest.approx(0.0, abs=1e-12)
        rec = recovery(ts, prob.teacher, prob.law, method="exact")
        assert rec.expert_error.value == pytest.approx(0.0, abs=1e-12)
        assert rec.misrouted_mass.value == pytest.approx(0.0, abs=1e-12)
        assert rec.matching == tuple(range(prob.num_experts))


def _relabel(moe, perm):
    r, e = moe.router, moe.experts
    p = list(perm)
    return MoE(UnitLinearRouter(r.weight.detach()[p], r.bias.detach()[p]),
               LinearExperts(e.weight.detach()[p], e.bias.detach()[p], trainable=True))


def test_recovery_is_modulo_relabelling():
    prob = voronoi3_problem()
    ts = prob.teacher_student()
    perm = (2, 0, 1)
    rec = recovery(_relabel(ts, perm), prob.teacher, prob.law, method="exact")
    assert rec.expert_error.value == pytest.approx(0.0, abs=1e-12)
    assert rec.misrouted_mass.value == pytest.approx(0.0, abs=1e-12)
    assert [perm[s] for s in rec.matching] == [0, 1, 2]  # student expert σ(k) is teacher expert k


def test_recovery_exact_matches_monte_carlo():
    prob = voronoi3_problem()
    student = prob.student(seed=3)
    ex = recovery(student, prob.teacher, prob.law, method="exact")
    mc = recovery(student, prob.teacher, prob.law, n=1 << 16, seed=4)
    assert mc.matching == ex.matching
    for k in ("expert_error", "misrouted_mass"):
        e, m = getattr(ex, k), getattr(mc, k)
        assert abs(e.value - m.value) <= 5 * m.stderr
        assert m.n == 1 << 16 and e.method == "exact"
    assert np.all(np.abs(mc.cost.value - ex.cost.value) <= 5 * mc.cost.stderr + 1e-12)


def test_decomposition_lemma55_and_prop58():
    prob = voronoi3_problem(noise_std=0.2)
    student = prob.student(seed=1)
    x = draw(prob.law, 1 << 14, 3)
    tau = 0.2
    dec = risk_decomposition(student, prob.teacher, tau=tau, sample=x)
    # Lemma 5.5 on one sample: total = ambiguity + interior (exactly, up to rounding)
    assert dec.total.value == pytest.approx(dec.ambiguity.value + dec.interior.value, rel=1e-12)
    with torch.no_grad():
        direct = float(((prob.teacher.signal(x) - student.soft(x, tau)) ** 2).mean())
    assert dec.total.value == pytest.approx(direct, rel=1e-12)
    # Prop. 5.8 (pointwise form) holds cell by cell, and the G_k are disjoint parts of the interior
    assert np.all(dec.cell_interior.value <= dec.cell_bound.value + 1e-15)
    assert dec.cell_interior.value.sum() <= dec.interior.value + 1e-12
    assert dec.cell_mass.value.sum() <= 1 - dec.ambiguity_mass.value + 1e-12
    assert dec.recovery.matching == recovery(student, prob.teacher, sample=x).matching


def test_binary_ambiguity_mass_is_the_boundary_mass():
    """K = 2 and ε = 1/(1+e²): m_ε(τ) = μ(|g| < 2τ) (Remark 5.4), exact by (3.11)."""
    prob = binary_problem()
    student = prob.student(seed=2)
    tau = 0.1
    dec = risk_decomposition(student, prob.teacher, prob.law, tau, n=1 << 16, seed=9)
    W, b = student.router.effective()
    v, c = (W[0] - W[1]).detach(), float(b[0] - b[1])
    m_g, s = c, float(torch.linalg.norm(v))  # law N(0, I)
    exact = norm.cdf((2 * tau - m_g) / s) - norm.cdf((-2 * tau - m_g) / s)
    assert abs(dec.ambiguity_mass.value - exact) <= 5 * dec.ambiguity_mass.stderr
    assert dec.eps == EPS_2TAU


def test_binary_saddle_is_a_critical_point_of_the_profile():
    prob = binary_problem()
    moe = prob.saddle()
    g = shape_gradient(moe.router, prob.teacher, prob.law)
    assert max(np.abs(g["weight"].value).max(), np.abs(g["bias"].value).max()) < 1e-9
    assert recovery(moe, prob.teacher, prob.law, method="exact").misrouted_mass.value > 0.2  # not the teacher


def test_make_student_kinds_and_bad_input():
    for router in ("unit", "linear", "mlp"):
        for experts in ("linear", "mlp"):
            m = make_student(2, 3, router=router, experts=experts, seed=1)
            out = m.soft(torch.zeros(4, 2, dtype=F64), 0.1)
            assert out.shape == (4,) and out.dtype == F64
            assert all(p.requires_grad for p in m.parameters())
    a, b = make_student(2, 3, seed=5), make_student(2, 3, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="'router' parameter of make_student must be one of"):
        make_student(2, 3, router="tree")
    with pytest.raises(ValueError, match="'name' parameter of get_problem"):
        get_problem("nope")
    with pytest.raises(ValueError, match="'weight' parameter of UnitLinearRouter must be an array whose rows"):
        UnitLinearRouter([[1.0, 2.0], [1.0, 2.0]])
    with pytest.raises(TypeError, match="'teacher' parameter of recovery must be a PartitionTeacher"):
        recovery(make_student(2, 2), lambda x: x[:, 0], binary_problem().law)
    with pytest.raises(ValueError, match="'student' parameter of recovery must be an MoE with at least 3"):
        recovery(make_student(2, 2), voronoi3_problem().teacher, voronoi3_problem().law)
    with pytest.raises(ValueError, match="'eps' parameter of risk_decomposition"):
        risk_decomposition(make_student(2, 2), binary_problem().teacher, binary_problem().law, 0.1, eps=0.7)


def _near_masses_numpy(student, teacher, x, eta):
    """μ(Ω_k ∩ {|h_j − h*_k| < η}) by plain NumPy on the sample x (an independent reading of (5.15))."""
    xn = x.numpy()
    WT, bT = teacher.moe.router.weight.numpy(), teacher.moe.router.bias.numpy()
    cell = np.argmax(xn @ WT.T + bT, 1)
    E, c = student.experts.weight.detach().numpy(), student.experts.bias.detach().numpy()
    ET, cT = teacher.moe.experts.weight.numpy(), teacher.moe.experts.bias.numpy()
    h, hs = xn @ E.T + c, xn @ ET.T + cT
    out = np.zeros((len(WT), len(E), len(xn)))
    for k in range(len(WT)):
        for j in range(len(E)):
            out[k, j] = (cell == k) & (np.abs(h[:, j] - hs[:, k]) < eta)
    return out


def test_admissible_matching_exact_against_sampling():
    """Assumption 5.11's (η, c₀): the exact polyhedral masses against NumPy sampling, and σ minimises the worst
    off-matching mass over all matchings (brute force in the test)."""
    prob = voronoi3_problem()
    student = prob.student(seed=4)
    m = admissible_matching(student, prob.teacher, prob.law, 0.5, method="exact")
    x = draw(prob.law, 1 << 17, 11)
    ind = _near_masses_numpy(student, prob.teacher, x, 0.5)
    mc, se = ind.mean(-1), ind.std(-1) / math.sqrt(ind.shape[-1])
    assert np.all(np.abs(m.near.value - mc) <= 5 * se + 1e-12)
    worst = {p: max(m.near.value[k, j] for k in range(3) for j in range(3) if j != p[k])
             for p in itertools.permutations(range(3))}
    assert m.sigma == min(worst, key=worst.get) and float(m.c0.value) == pytest.approx(min(worst.values()))
    assert float(m.c0.value) > 0  # linear experts cross the teacher's somewhere: c₀ = 0 is only a limit
    sampled = admissible_matching(student, prob.teacher, sample=x, eta=0.5)
    assert sampled.sigma == m.sigma and abs(float(sampled.c0.value) - float(m.c0.value)) <= 5 * sampled.c0.stderr


def test_misrouting_bound_lemma_5_16():
    """(5.11)–(5.15) on one sample: μ(M) by NumPy, (5.12) and (5.13) hold, (5.14) holds where |h_k| ≤ B."""
    prob = voronoi3_problem()
    student = prob.student(seed=4)
    law = Uniform([-2.0, -2.0], [2.0, 2.0])  # bounded inputs: |h_k| ≤ B holds for affine experts
    x = draw(law, 1 << 14, 5)
    tau, eps, eta = 0.1, 0.02, 1.5
    B = float((x.abs().sum(1).max()) * student.experts.weight.abs().max() + student.experts.bias.abs().max()) + 1
    res = misrouting_bound(student, prob.teacher, tau=tau, eps=eps, eta=eta, B=B, sample=x)
    # μ(M) and the residual on M, independently
    a = student.logits(x).detach().numpy()
    pi = np.exp((a - a.max(1, keepdims=True)) / tau)
    pi /= pi.sum(1, keepdims=True)
    cell = np.argmax(x.numpy() @ prob.teacher.moe.router.weight.numpy().T + prob.teacher.moe.router.bias.numpy(), 1)
    sigma = np.array(res.matching.sigma)
    conf = pi >= 1 - eps
    conf[np.arange(len(a)), sigma[cell]] = False
    inM = conf.any(1)
    assert float(res.mass.value) == pytest.approx(inM.mean(), abs=1e-15) and inM.mean() > 0.05
    h = student.expert_outputs(x).detach().numpy()
    f = (pi * h).sum(1)
    fs = prob.teacher.signal(x).numpy()
    assert float(res.residual.value) == pytest.approx(np.mean((fs - f) ** 2 * inM), rel=1e-12)
    K = 3
    assert res.lower <= float(res.residual.value) + 1e-12  # (5.12)
    assert float(res.mass.value) <= res.mass_bound  # (5.13)
    assert res.confidence_ratio <= 1 and float(res.bound_violated.value) == 0  # (5.14)
    assert res.mass_bound == pytest.approx(float(res.excess.value) / (eta - 2 * B * eps) ** 2
                                           + K * (K - 1) * float(res.matching.c0.value)) or eta <= 2 * B * eps
    small = misrouting_bound(student, prob.teacher, tau=tau, eps=eps, eta=eta, B=1.0, sample=x)
    assert float(small.bound_violated.value) > 0.5  # B = 1 is no bound for these experts: reported, not hidden
    with pytest.raises(ValueError, match="'eps' parameter of misrouting_bound must be"):
        misrouting_bound(student, prob.teacher, tau=tau, eps=0.7, eta=eta, B=B, sample=x)
    with pytest.raises(ValueError, match="'eta' parameter of admissible_matching must be"):
        admissible_matching(student, prob.teacher, sample=x, eta=-1.0)
