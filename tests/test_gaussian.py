"""Closed forms of softhard.closed, each against hand values, SciPy or Monte Carlo (5 standard errors)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

import softhard as sh
from softhard.closed import boundary, normal, risk

TEMPLATE = r"The '\w+' parameter of [\w.]+ must be "
LN2 = math.log(2)


def design71(offset=0.0):
    """Paper §7.1: g = x_1 - offset, h_1,2 = ±x_2, X ~ N(0, I_2)."""
    moe = sh.MoE(sh.LinearRouter.binary([1.0, 0.0], b=-offset), sh.LinearExperts([[0.0, 1.0], [0.0, -1.0]]))
    return moe, sh.Gaussian.standard(2)


def general_case():
    """A student and a different hard teacher with noise, under a two-component mixture."""
    student = sh.MoE(sh.LinearRouter.binary([1.0, 0.2], b=-0.4),
                     sh.LinearExperts([[0.3, 1.0], [0.1, -1.0]], [0.1, 0.0]))
    teacher = sh.HardTeacher(sh.MoE(sh.LinearRouter.binary([0.8, 0.6], b=0.3),
                                    sh.LinearExperts([[0.5, 1.0], [0.0, -1.5]], [0.2, -0.1])), noise_std=0.5)
    law = sh.GaussianMixture([0.3, 0.7], [[0.5, 0.0], [-0.3, 0.4]],
                             [[[1.0, 0.3], [0.3, 0.8]], [[0.6, -0.1], [-0.1, 1.2]]])
    return student, teacher, law


def within(exact, est, k=5.0):
    v, s = np.asarray(est.value), np.asarray(est.stderr)
    assert np.all(np.abs(np.asarray(exact) - v) <= k * s + 1e-12), (exact, v, s)


# ------------------------------------------------------------------ orthant probabilities


def test_orthant_hand_values():
    # bivariate: 1/4 + arcsin(ρ)/(2π); trivariate equicorrelated: 1/8 + 3 arcsin(ρ)/(4π)
    for rho in (-0.7, 0.0, 0.4):
        C = np.array([[1.0, rho], [rho, 1.0]])
        assert normal.orthant_probability([0, 0], C, 0.0) == pytest.approx(0.25 + math.asin(rho) / (2 * math.pi), abs=1e-12)
    C3 = np.full((3, 3), 0.5) + 0.5 * np.eye(3)
    assert normal.orthant_probability(np.zeros(3), C3, 0.0) == pytest.approx(0.25, abs=2e-6)
    # one component: a normal tail
    assert normal.orthant_probability([0.3], [[4.0]], 1.0) == pytest.approx(stats.norm.sf(1.0, 0.3, 2.0), abs=1e-15)


def test_orthant_singular_exact():
    # rank 2 in 3 dimensions, Z = Lξ with rows at angles 0, π/4, π/2: the cone θ ∈ (0, π/2), probability 1/4
    ang = np.array([0.0, math.pi / 4, math.pi / 2])
    L = np.stack([np.cos(ang), np.sin(ang)], 1)
    assert normal.orthant_probability(np.zeros(3), L @ L.T, 0.0) == pytest.approx(0.25, abs=1e-13)
    # rows summing to 0 (the gauge Σa = 0): empty
    ang = 2 * math.pi * np.arange(3) / 3
    L = np.stack([np.cos(ang), np.sin(ang)], 1)
    assert normal.orthant_probability(np.zeros(3), L @ L.T, 0.0) == pytest.approx(0.0, abs=1e-13)
    # rank 1: an interval of ξ: Z = (1, 2, -1)ξ + m > 0  <=>  ξ > max(-m_1, -m_2/2), ξ < m_3
    m = np.array([0.2, -0.1, 0.7])
    l = np.array([1.0, 2.0, -1.0])
    assert normal.orthant_probability(m, np.outer(l, l), 0.0) == pytest.approx(
        special.ndtr(0.7) - special.ndtr(max(-0.2, 0.05)), abs=1e-14)
    # rank 2 with a shifted mean against an independent Monte Carlo of Z = m + Fξ
    rng = np.random.default_rng(0)
    F, m = rng.standard_normal((4, 2)), np.array([0.3, -0.2, 0.1, 0.5])
    hits = ((m + rng.standard_normal((1 << 18, 2)) @ F.T) > 0).all(1)
    assert abs(normal.orthant_probability(m, F @ F.T, 0.0) - hits.mean()) <= 5 * hits.std() / 2 ** 9


def test_orthant_deterministic_components():
    C = np.diag([1.0, 0.0])
    assert normal.orthant_probability([0.0, 0.5], C, 0.0) == pytest.approx(0.5)  # 0.5 > 0: always
    assert normal.orthant_probability([0.0, 0.0], C, 0.0) == 0.0  # 0 > 0: never
    assert normal.orthant_probability([0.0, 0.0], C, 0.0, closed=[False, True]) == pytest.approx(0.5)  # 0 >= 0


# ------------------------------------------------------------------ boundary mass


def test_binary_mass_is_3_11_and_matches_mc():
    moe, law = design71(offset=0.7)
    w = np.array([0.0, 0.05, 0.4, 2.0])
    exact = boundary.boundary_mass_exact(moe.router, law, w)
    assert exact.shape == (4,)
    np.testing.assert_allclose(exact, stats.norm.cdf(w - 0.7) - stats.norm.cdf(-w - 0.7), atol=1e-15)
    within(exact, sh.boundary_mass(moe.router, law, w, n=1 << 15, seed=1))
    # (3.13): β(w) = 2w φ(m_g/s)/s + O(w³)
    assert boundary.boundary_mass_exact(moe.router, law, [1e-4])[0] / 2e-4 == pytest.approx(stats.norm.pdf(0.7), rel=1e-7)


@pytest.mark.parametrize("kind", ["top2", "pairwise"])
def test_k3_orthant_formula_matches_independent_mc(kind):
    W = torch.tensor([[1.0, 0.0, 0.2], [-0.5, 0.8, 0.0], [-0.5, -0.8, -0.2]], dtype=torch.float64)
    router = sh.LinearRouter(W, [0.1, 0.0, -0.1])
    law = sh.Gaussian([0.1, 0.0, 0.2], [[1, 0.2, 0], [0.2, 1, 0.1], [0, 0.1, 0.5]])
    w = [0.05, 0.3, 1.0]
    within(boundary.boundary_mass_exact(router, law, w, kind=kind), sh.boundary_mass(router, law, w, kind=kind, method="mc",
                                                                                      n=1 << 15, seed=2))


def test_k5_orthant_formula_matches_independent_mc():
    gen = torch.Generator().manual_seed(5)
    router = sh.LinearRouter(torch.randn(5, 4, generator=gen, dtype=torch.float64), [0.2, 0.0, -0.1, 0.1, 0.0])
    law = sh.Gaussian(torch.zeros(4), torch.eye(4) * 0.5)
    w = [0.1, 0.5]  # abseps = 1e-4 (Genz, 4 dimensions) is plenty against a Monte Carlo error of 2e-3
    within(boundary.boundary_mass_exact(router, law, w, abseps=1e-4), sh.boundary_mass(router, law, w, method="mc", n=1 << 15,
                                                                                            seed=3))


def test_k5_gauge_singular_and_mixture():
    # gauge Σ_k a_k = 0 and d = 2 < K - 1: the differences have a rank-2 covariance; a mixture law
    ang = 2 * np.pi * np.arange(5) / 5
    W = torch.tensor(np.stack([np.cos(ang), np.sin(ang)], 1))
    router = sh.LinearRouter(W - W.mean(0), [0.1, 0.0, -0.1, 0.05, -0.05])
    assert abs(float((router.weight.sum(0)).abs().max())) < 1e-15
    law = sh.GaussianMixture([0.4, 0.6], [[0.3, 0.0], [-0.2, 0.1]])
    w = [0.05, 0.3]
    exact = boundary.boundary_mass_exact(router, law, w)
    within(exact, sh.boundary_mass(router, law, w, method="mc", n=1 << 15, seed=4))
    parts = [boundary.boundary_mass_exact(router, c, w) for c in law.components]
    np.testing.assert_allclose(exact, 0.4 * parts[0] + 0.6 * parts[1], atol=1e-14)
    within(boundary.boundary_mass_exact(router, law, [0.3], kind="pairwise"),
           sh.boundary_mass(router, law, [0.3], kind="pairwise", method="mc", n=1 << 15, seed=4))


def test_identical_experts_degenerate_differences():
    # rows 0 and 1 equal: A_0 - A_1 ≡ 0, so Δ = 0 whenever one of them leads: β(0) = P(x_1 > x_2) = 1/2
    router = sh.LinearRouter([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    law = sh.Gaussian.standard(2)
    exact = boundary.boundary_mass_exact(router, law, [0.0, 0.2])
    assert exact[0] == pytest.approx(0.5, abs=1e-14)
    within(exact, sh.boundary_mass(router, law, [0.0, 0.2], n=1 << 15, seed=5))
    np.testing.assert_allclose(boundary.boundary_mass_exact(router, law, [0.0, 0.2], kind="pairwise"), 1.0, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(-2, 2), min_size=9, max_size=9),
       st.lists(st.one_of(st.just(0.0), st.floats(1e-300, 2)), min_size=3, max_size=3))
def test_mass_profiles_monotone_and_ordered(wflat, widths):
    # (a width below 1e-300 may give β below the float64 range: MassUnderflow, tested in test_closed_tails.py)
    router = sh.LinearRouter(torch.tensor(wflat, dtype=torch.float64).reshape(3, 3))
    law = sh.Gaussian.standard(3)
    w = np.sort(np.asarray(widths))
    top2 = boundary.boundary_mass_exact(router, law, w)
    pair = boundary.boundary_mass_exact(router, law, w, kind="pairwise")
    assert np.all(np.diff(top2) >= -1e-12) and np.all(np.diff(pair) >= -1e-12)
    assert np.all(top2 <= pair + 1e-12) and np.all((top2 >= 0) & (pair <= 1))


# ------------------------------------------------------------------ interface constant and flips


def test_interface_constant_exact():
    moe, law = design71(offset=0.7)
    assert boundary.interface_constant_exact(moe.router, law) == pytest.approx(stats.norm.pdf(0.7), rel=1e-14)
    W = torch.tensor([[1.0, 0.0, 0.2], [-0.5, 0.8, 0.0], [-0.5, -0.8, -0.2]], dtype=torch.float64)
    router = sh.LinearRouter(W, [0.1, 0.0, -0.1])
    law3 = sh.Gaussian([0.1, 0.0, 0.2], [[1, 0.2, 0], [0.2, 1, 0.1], [0, 0.1, 0.5]])
    c = boundary.interface_constant_exact(router, law3)
    # Prop. 3.5: β(w) = 2w C_Σ + o(w); the pairwise sum (3.9) is larger (it counts non-top-two pairs)
    assert boundary.boundary_mass_exact(router, law3, [1e-5])[0] / 2e-5 == pytest.approx(c, rel=1e-4)
    assert c < sum(boundary.pair_density_at_zero(router, law3, p) for p in [(0, 1), (0, 2), (1, 2)])


def test_flip_probability():
    law = sh.Gaussian.standard(2)
    a = sh.LinearRouter.binary([1.0, 0.0])
    b = sh.LinearRouter.binary([math.cos(0.3), math.sin(0.3)])
    # zero means: P(sign g ≠ sign g') = angle/π
    assert boundary.flip_probability_exact(a, b, law) == pytest.approx(0.3 / math.pi, abs=1e-12)
    assert boundary.flip_probability_exact(a, a, law) == pytest.approx(0.0, abs=1e-12)
    c = sh.LinearRouter.binary([math.cos(0.05), math.sin(0.05)], b=0.2)
    mc = sh.monte_carlo(lambda x: (a(x).argmax(-1) != c(x).argmax(-1)).double(), law, 1 << 15, 6)
    within(boundary.flip_probability_exact(a, c, law), mc)
    W = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]], dtype=torch.float64)
    r1, r2 = sh.LinearRouter(W, [0.1, 0.0, -0.1]), sh.LinearRouter(W + 0.1 * torch.eye(3, 2, dtype=torch.float64))
    mc = sh.monte_carlo(lambda x: (r1(x).argmax(-1) != r2(x).argmax(-1)).double(), law, 1 << 15, 7)
    within(boundary.flip_probability_exact(r1, r2, law), mc)


# ------------------------------------------------------------------ risks by quadrature


def test_risks_match_mc_general_teacher():
    student, teacher, law = general_case()
    taus = [0.05, 0.3]
    L_tau, L_0 = risk.risk_exact(student, law, taus, teacher)

    def terms(x):
        return torch.stack([teacher.conditional_risk(x, student.soft(x, t)) for t in taus]
                           + [teacher.conditional_risk(x, student.hard(x))], 1)

    within(np.append(L_tau, L_0), sh.monte_carlo(terms, law, 1 << 15, 8))
    np.testing.assert_allclose(risk.risk_gap_exact(student, law, taus, teacher), L_tau - L_0, atol=1e-13)


def test_gap_quadrature_against_scipy_quad_small_tau():
    moe, law = design71(offset=0.3)
    tau = 1e-4
    # E[D² | g = t] = E[4 x_2²] = 4, g ~ N(-0.3, 1); realizable gap = ∫ φ(t + 0.3) 4 (1{t>0} - σ(t/τ))² dt
    f = lambda t: stats.norm.pdf(t + 0.3) * 4 * ((t > 0) - special.expit(t / tau)) ** 2  # noqa: E731
    ref = sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-13, limit=200)[0] for a, b in [(-0.05, 0), (0, 0.05)])
    assert risk.risk_gap_exact(moe, law, [tau])[0] == pytest.approx(ref, rel=1e-10)


def test_gap_slope_exact_hand_values_and_limit():
    moe, law = design71()
    psi0 = 1 / math.sqrt(2 * math.pi)
    g1 = risk.gap_slope_exact(moe, law)
    assert g1 == pytest.approx((2 * LN2 - 1) * psi0 * 4, rel=1e-14)  # E[D² | g=0] = 4
    cont = sh.MoE(moe.router, sh.LinearExperts([[0.0, 0.0], [0.0, 0.0]]))  # f* = (h_1 + h_2)/2 = 0
    assert risk.gap_slope_exact(moe, law, cont) == pytest.approx(-psi0 * 4, rel=1e-14)
    student, teacher, mix = general_case()
    for m, lw, t, slope in [(moe, law, None, g1), (moe, law, cont, -4 * psi0),
                            (student, mix, teacher, risk.gap_slope_exact(student, mix, teacher))]:
        assert risk.risk_gap_exact(m, lw, [1e-4], t)[0] / 1e-4 == pytest.approx(slope, rel=2e-3)


def test_bad_input_raises_with_template():
    moe, law = design71()
    with pytest.raises(ValueError, match=TEMPLATE):
        normal.orthant_probability([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]], 0.0)  # not positive semi-definite
    with pytest.raises(ValueError, match=TEMPLATE):
        normal.orthant_probability([0.0, 0.0], np.eye(3), 0.0)
    with pytest.raises(ValueError, match=TEMPLATE):
        normal.orthant_probability([0.0, 0.0], np.eye(2), [0.0, 1.0, 2.0])
    with pytest.raises(TypeError, match=TEMPLATE):
        boundary.boundary_mass_exact(lambda x: torch.stack([x[:, 0] ** 3, -x[:, 0] ** 3], 1), law, [0.1])
    with pytest.raises(TypeError, match=TEMPLATE):
        boundary.boundary_mass_exact(moe.router, sh.Uniform([0, 0], [1, 1]), [0.1])
    with pytest.raises(ValueError, match=TEMPLATE):
        boundary.boundary_mass_exact(moe.router, sh.Gaussian.standard(3), [0.1])
    with pytest.raises(ValueError, match=TEMPLATE):
        boundary.boundary_mass_exact(moe.router, law, [-0.1])
    with pytest.raises(ValueError, match=TEMPLATE):
        boundary.boundary_mass_exact(moe.router, law, [0.1], kind="top3")
    with pytest.raises(ValueError, match="K! orthant"):
        boundary.boundary_mass_exact(sh.LinearRouter(torch.eye(7, 2, dtype=torch.float64)), law, [0.1], kind="pairwise")
    k3 = sh.MoE(sh.LinearRouter(torch.eye(3, 2, dtype=torch.float64)), sh.LinearExperts(torch.eye(3, 2)))
    with pytest.raises(ValueError, match="binary"):
        risk.risk_gap_exact(k3, law, [0.1])
    with pytest.raises(TypeError, match="piecewise-linear teacher"):
        risk.risk_gap_exact(moe, law, [0.1], teacher=sh.FunctionTeacher(lambda x: x[:, 0]))
    with pytest.raises(ValueError, match=TEMPLATE):
        risk.risk_gap_exact(moe, law, [0.0])
    with pytest.raises(ValueError, match="non-degenerate"):
        risk.risk_gap_exact(moe, sh.Gaussian([0.0, 0.0], [[0.0, 0.0], [0.0, 1.0]]), [0.1])
