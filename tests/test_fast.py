"""Fast estimators (issue 8): score space, conditional Monte Carlo, lines with the Crofton weight, the
method dispatch, QMC early stopping, and the reducer's speed options. Exact values come from the closed
forms of softhard.closed (checked elsewhere against sampling) or from SciPy quadrature."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

import softhard as sh
from softhard.estimators import lines as L
from softhard.estimators.reducer import DEFAULT_TARGET
from softhard.estimators.reducer import BLOCK
from softhard.estimators.score_space import score_space
from softhard.model.gates import top_two

F64 = torch.float64
TEMPLATE = r"The '\w+' parameter of [\w.]+ must be "


def within(exact, est, k=5.0):
    exact = exact.value if isinstance(exact, sh.Estimate) else exact
    v, s = np.asarray(est.value), np.asarray(est.stderr)
    assert np.all(np.abs(np.asarray(exact) - v) <= k * s), (exact, v, s)


def k4_router():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 5, generator=g, dtype=F64)
    return sh.LinearRouter(W, torch.tensor([0.2, -0.1, 0.0, 0.3], dtype=F64))


MIX5 = sh.GaussianMixture([0.4, 0.6], [[0.3, 0.0, -0.2, 0.1, 0.0], [-0.2, 0.4, 0.0, 0.0, 0.3]],
                          [np.eye(5), np.diag([0.5, 1.0, 2.0, 1.0, 0.7])])


def binary_design():
    """Binary linear student, a different hard linear teacher, a Gaussian mixture (test_gap's design)."""
    student = sh.MoE(sh.LinearRouter.binary([1.0, 0.2], b=-0.4), sh.LinearExperts([[0.3, 1.0], [0.1, -1.0]]))
    teacher = sh.HardTeacher(sh.MoE(sh.LinearRouter.binary([0.8, 0.6], b=0.3),
                                    sh.LinearExperts([[0.5, 1.0], [0.0, -1.5]], [0.2, -0.1])), noise_std=0.5)
    return student, teacher, sh.GaussianMixture([0.3, 0.7], [[0.5, 0.0], [-0.3, 0.4]])


def k3_design():
    W = torch.tensor([[1.0, 0.0, 0.0], [-0.5, 0.8, 0.0], [-0.5, -0.8, 0.0]], dtype=F64)
    return sh.MoE(sh.LinearRouter(W), sh.LinearExperts([[0, 0, 1.0], [0, 0, -1.0], [0.5, 0, 0.5]])), \
        sh.Gaussian.standard(3)


def as_callable(router, d):
    """The same router seen as a plain callable (no closed form, no score space: the line estimators)."""
    return sh.as_router(lambda x: router(x), d)


def sphere_router(d=4, c=3.0):
    """g = |x|² − c: under N(0, I_d), g + c ~ χ²_d, and every line crosses the sphere 0 or 2 times."""
    return sh.as_router(lambda x: torch.stack([(x ** 2).sum(1) - c, torch.zeros_like(x[:, 0])], 1), d)


def squares_beta(w, K=3):
    """β(w) for logits a_k = x_k² under N(0, I_K): K(K−1)∫ f(y)[F(y + w) − F(y)]F(y)^{K−2} dy over χ²_1."""
    F = stats.chi2(1).cdf
    f = lambda u: 2 * stats.norm.pdf(u) * (F(u * u + w) - F(u * u)) * F(u * u) ** (K - 2)  # noqa: E731 (y = u²)
    return K * (K - 1) * integrate.quad(f, 0, 12, limit=400, epsabs=1e-13, epsrel=1e-12)[0]


# --- 1. score space -----------------------------------------------------------------------------------


def test_score_space_moments_and_sampling():
    moe, law = k3_design()
    law = sh.Gaussian([0.3, -0.2, 0.1], [[1.0, 0.3, 0.0], [0.3, 2.0, 0.1], [0.0, 0.1, 0.5]])
    space = score_space(moe, law)
    assert space.slices == {"logits": slice(0, 3), "outputs": slice(3, 6)}
    W = torch.cat([moe.router.weight, moe.experts.weight])
    torch.testing.assert_close(space.law.mean, W @ law.mean, rtol=0, atol=1e-14)
    torch.testing.assert_close(space.law.cov, W @ law.cov @ W.T, rtol=0, atol=1e-14)
    # sampling the 6-d score vector directly gives the law of (a(X), h(X)): compare second moments by MC
    y = sh.draw(space.law, 1 << 16, seed=1)
    x = sh.draw(law, 1 << 16, seed=2)
    z = torch.cat([moe.router(x), moe.experts(x)], 1)
    for s in (y, z):
        se = s.std(0) / math.sqrt(s.shape[0])
        assert torch.all((s.mean(0) - space.law.mean).abs() <= 5 * se)
    mix = score_space(k4_router(), MIX5)
    assert isinstance(mix.law, sh.GaussianMixture) and mix.law.d == 4
    W = k4_router().weight
    for c, comp in zip(mix.law.components, MIX5.components):
        torch.testing.assert_close(c.cov, W @ comp.cov @ W.T, rtol=0, atol=1e-13)


def test_score_space_rejects_non_linear_models():
    with pytest.raises(TypeError, match=TEMPLATE + "a LinearRouter or an MoE"):
        score_space(sh.MLPRouter(5, 3, (4,)), MIX5)
    with pytest.raises(TypeError, match=TEMPLATE + "None or a hard linear MoE"):
        score_space(k3_design()[0], sh.Gaussian.standard(3), sh.FunctionTeacher(lambda x: x[:, 0]))
    with pytest.raises(ValueError, match=TEMPLATE + r"a law on R\^5"):
        score_space(k4_router(), sh.Gaussian.standard(3))


def test_auto_falls_back_to_qmc_in_score_space():
    """The top-2 margin k = 2 has no closed form: auto samples the 4 logits (not the inputs) with QMC."""
    r = k4_router()
    est = sh.boundary_mass(r, MIX5, [0.1, 0.5], k=2, method="auto", n=1 << 15, seed=3)
    ref = sh.boundary_mass(r, MIX5, [0.1, 0.5], k=2, method="mc", n=1 << 16, seed=4)
    assert est.method == "score" and est.info["sampling"] == "qmc"
    assert np.all(np.abs(est.value - ref.value) <= 5 * np.hypot(est.stderr, ref.stderr))


# --- 2. conditional Monte Carlo, linear routers -------------------------------------------------------


@pytest.mark.parametrize("sampling", ["mc", "qmc"])
def test_boundary_mass_conditional_linear(sampling):
    r, w = k4_router(), [0.0, 0.01, 0.3]
    exact = sh.boundary_mass_exact(r, MIX5, w)
    est = sh.boundary_mass(r, MIX5, w, method="conditional", n=1 << 15, seed=5, sampling=sampling)
    assert est.method == "conditional" and est.info["sampling"] == sampling and est.value[0] == 0.0
    within(exact[1:], est[1:])
    assert np.all(est.stderr[1:] / est.value[1:] < 0.02)  # plain MC at w = 0.01: about 6% here


def test_risk_gap_conditional_matches_quadrature():
    student, teacher, mix = binary_design()
    taus = [0.6, 0.05, 1e-3]
    exact = sh.risk_gap_exact(student, mix, taus, teacher)
    for sampling in ("mc", "qmc"):
        within(exact, sh.risk_gap(student, mix, taus, teacher=teacher, method="conditional", n=1 << 12, seed=6,
                                  sampling=sampling))
    moe, law = k3_design()  # K = 3 has no closed form: gap/τ at small τ against G_1 (both conditional)
    tau = 1e-3
    gap = sh.risk_gap(moe, law, tau, method="auto", n=1 << 12, seed=7)
    g1 = sh.gap_slope(moe, law, method="auto", n=1 << 12, seed=8)
    assert gap.method == g1.method == "conditional"
    assert abs(gap.value / tau - g1.value) <= 5 * math.hypot(gap.stderr / tau, g1.stderr) + 2 * tau


def test_gap_slope_conditional_linear_and_lines():
    student, teacher, mix = binary_design()
    exact = sh.gap_slope(student, mix, teacher=teacher).value  # closed form
    within(exact, sh.gap_slope(student, mix, teacher=teacher, method="conditional", n=1 << 14, seed=9))
    # the same MoE with its router as a plain callable: lines, one-sided teacher traces at the crossings
    lines = sh.MoE(as_callable(student.router, 2), student.experts)
    est = sh.gap_slope(lines, mix, teacher=teacher, method="conditional", n=1 << 13, seed=10)
    assert est.info["estimator"] == "lines + Crofton weight"
    within(exact, est)
    realizable = sh.gap_slope(student, mix).value
    within(realizable, sh.gap_slope(lines, mix, teacher=sh.HardTeacher(lines), method="conditional", n=1 << 13,
                                    seed=11))


# --- 3. lines with the Crofton weight -----------------------------------------------------------------


def test_crofton_constant():
    assert L.crofton_constant(1) == pytest.approx(1.0, rel=1e-14)
    assert L.crofton_constant(2) == pytest.approx(2 / math.pi, rel=1e-14)
    assert L.crofton_constant(3) == pytest.approx(0.5, rel=1e-14)
    e = np.random.default_rng(0).standard_normal((200_000, 7))
    u = np.abs(e[:, 0]) / np.linalg.norm(e, axis=1)
    assert abs(u.mean() - L.crofton_constant(7)) <= 5 * u.std() / math.sqrt(len(u))


def test_coarea_lines_nonlinear_and_multiple_crossings():
    def router(x):  # g = x_1 + x_2² under N(0, I_2): ψ(0) = ∫ φ(−y²) φ(y) dy
        g = x[:, 0] + x[:, 1] ** 2
        return torch.stack([g / 2, -g / 2], 1)

    psi = integrate.quad(lambda y: stats.norm.pdf(y * y) * stats.norm.pdf(y), -np.inf, np.inf)[0]
    est = sh.coarea_constant(router, sh.Gaussian.standard(2), n=1 << 13, seed=12)
    assert est.method == "conditional"
    within(psi, est)
    # a sphere: lines cross it twice (or not at all); ψ(0) is the χ²_4 density at 3
    within(stats.chi2(4).pdf(3.0), sh.coarea_constant(sphere_router(), sh.Gaussian.standard(4), n=1 << 13, seed=13))
    # a linear router through lines (random directions) against (3.14); a mixture law
    r = k4_router()
    within(sh.coarea_constant(r, MIX5, (1, 3)),
           sh.coarea_constant(as_callable(r, 5), MIX5, (1, 3), method="conditional", n=1 << 13, seed=14))


def test_boundary_mass_lines_against_exact_values():
    r = k4_router()
    w = [0.01, 0.2]
    est = sh.boundary_mass(as_callable(r, 5), MIX5, w, method="auto", n=1 << 12, seed=15)
    assert est.method == "conditional" and est.info["unresolved_crossings"] <= 2
    within(sh.boundary_mass_exact(r, MIX5, w), est)
    # a_k = x_k²: the winner changes at |x_i| = |x_j|, several times along most lines
    sq = sh.as_router(lambda x: x ** 2, 3)
    within([squares_beta(v) for v in w], sh.boundary_mass(sq, sh.Gaussian.standard(3), w, method="conditional",
                                                          n=1 << 12, seed=16))
    # the sphere: Δ = |g|, two crossings of Δ = s near each crossing of the sphere
    exact = [stats.chi2(4).cdf(3 + v) - stats.chi2(4).cdf(3 - v) for v in w]
    within(exact, sh.boundary_mass(sphere_router(), sh.Gaussian.standard(4), w, method="conditional", n=1 << 12,
                                   seed=17))


def test_lines_find_every_crossing_on_a_fine_grid():
    """The scan (coarse grid, refinement, Illinois) against a brute-force grid of 24 001 points per line: every
    crossing the grid sees is found, and the other crossings found come in pairs too close for the grid."""
    sq = sh.as_router(lambda x: x ** 2, 3)
    lines = L._Lines(sq, sh.Gaussian.standard(3))
    lines.setup(lines.draws.sample(200, np.random.default_rng(0)))
    s = 0.2 * lines.level

    def flag(a):
        delta, win, _ = top_two(a)
        return L._near(delta) | (win[:, 1:] != win[:, :-1]) | L._near(delta - s[:, None])

    scan = L._Scan(lines, flag, lambda a, rows: [top_two(a)[0], top_two(a)[0] - s[rows, None]], True)
    rows, tc = scan.level_crossings(s)
    t = torch.linspace(-6, 6, 24001, dtype=F64)
    h = float(t[1] - t[0])
    for r in range(200):
        delta = top_two(sq(lines.x0[r] + t[:, None] * lines.dx[r]))[0] - s[r]
        true = t[1:][(delta[1:] > 0) != (delta[:-1] > 0)]
        mine = torch.sort(tc[rows == r]).values
        dist = (mine[:, None] - true[None, :]).abs()
        assert torch.all(dist.amin(0) <= h), (r, mine, true)  # every crossing on the grid is found
        extra = mine[dist.amin(1) > h] if true.numel() else mine
        gaps = (extra[1:] - extra[:-1]) if extra.numel() > 1 else extra[:0]
        assert extra.numel() % 2 == 0 and torch.all(gaps[::2] <= 2 * h), (r, mine, true)


@settings(max_examples=30)
@given(st.lists(st.floats(-3, 3), min_size=3, max_size=3), st.floats(0.05, 2.0))
def test_illinois_finds_the_bracketed_root(coef, scale):
    """f(t) = scale·(t − r)(1 + 0.1t²): one sign change in [−4, 4], at r, found to 1e-10."""
    r = torch.tensor(coef, dtype=F64)
    f = lambda idx, t: scale * (t - r[idx]) * (1 + 0.1 * t * t)  # noqa: E731
    lo, hi = torch.full((3,), -4.0, dtype=F64), torch.full((3,), 4.0, dtype=F64)
    idx = torch.arange(3)
    root = L._illinois(f, lo, hi, f(idx, lo), f(idx, hi))
    assert torch.all((root - r).abs() <= 1e-10)


# --- dispatch -----------------------------------------------------------------------------------------


def test_auto_rule_and_exact_estimates():
    r = k4_router()
    auto = sh.boundary_mass(r, MIX5, [0.1, 0.2], method="auto")
    assert auto.method == "exact" and np.all(auto.stderr == 0) and auto.n == 0
    np.testing.assert_array_equal(auto.value, sh.boundary_mass_exact(r, MIX5, [0.1, 0.2]))
    assert sh.boundary_mass(r, MIX5, 0.1, method="exact").value == pytest.approx(auto.value[0], rel=1e-14)
    student, teacher, mix = binary_design()
    gap = sh.risk_gap(student, mix, 0.1, teacher=teacher, method="auto")
    assert gap.method == "exact" and gap.value == pytest.approx(sh.risk_gap_exact(student, mix, [0.1], teacher)[0])
    assert sh.risk_gap(*k3_design(), 0.1, method="auto", n=1 << 12).method == "conditional"
    fn = sh.FunctionTeacher(lambda x: x[:, 0])  # no score space for a general teacher: QMC over inputs
    assert sh.risk_gap(*k3_design(), 0.1, teacher=fn, method="auto", n=1 << 12).method == "qmc"
    uni = sh.Uniform([-1.0, -1.0], [1.0, 1.0])  # no conditional estimator off Gaussian laws
    assert sh.coarea_constant(sphere_router(2, 0.5), uni, method="auto", n=1 << 12).method == "kernel"
    assert sh.boundary_mass(sphere_router(2, 0.5), uni, 0.1, method="auto", n=1 << 12).method == "qmc"
    assert sh.coarea_constant(sphere_router(2, 0.5), uni, method="kernel", sampling="qmc",
                              n=1 << 12).info["kernel"] == "Epanechnikov"


def test_n_with_a_target_is_a_budget_and_alone_a_sample_size():
    r = k4_router()
    stopped = sh.boundary_mass(r, MIX5, 0.3, method="conditional", n=1 << 20, seed=1, target_rel_error=5e-3)
    assert stopped.n < 1 << 20 and stopped.stderr <= 5e-3 * stopped.value and stopped.converged
    default = sh.boundary_mass(r, MIX5, 0.3, method="conditional", seed=1)  # no n: the default target, 0.5 %
    assert default.n == stopped.n and default.target == DEFAULT_TARGET == 5e-3
    full = sh.boundary_mass(r, MIX5, 0.3, method="conditional", n=1 << 15, seed=1)
    assert full.n == 1 << 15 and full.target is None


def test_bad_methods_raise_with_template():
    r = k4_router()
    uni = sh.Uniform([-1.0] * 5, [1.0] * 5)
    with pytest.raises(ValueError, match=TEMPLATE + "a method that applies here: 'conditional' needs"):
        sh.boundary_mass(r, uni, 0.1, method="conditional")
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.boundary_mass(r, MIX5, 0.1, kind="pairwise", method="conditional")
    with pytest.raises(ValueError, match=TEMPLATE + r"one of \('auto', 'exact', 'conditional', 'score', 'qmc', 'mc'\)"):
        sh.boundary_mass(r, MIX5, 0.1, method="sobol")
    with pytest.raises(ValueError, match=TEMPLATE + "a method that applies here: 'conditional' needs"):
        sh.risk_gap(*k3_design(), 0.1, teacher=sh.FunctionTeacher(lambda x: x[:, 0]), method="conditional")
    with pytest.raises(ValueError, match=r"'sampling' parameter of boundary_mass must be one of \('mc', 'qmc'\)"):
        sh.boundary_mass(r, MIX5, 0.1, method="conditional", sampling="sobol")
    with pytest.raises(ValueError, match=TEMPLATE + "one of"):
        sh.gap_slope(*k3_design(), method="lines")
    degenerate = sh.LinearRouter([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.0, 0.5, 0.0])  # a_0 − a_1 constant
    with pytest.raises(ValueError, match=TEMPLATE + "a router whose score differences"):
        sh.boundary_mass(degenerate, sh.Gaussian.standard(2), 0.1, method="conditional", n=100)


# --- the reducer: QMC early stopping, bit-identity, threads, float32 ----------------------------------


def test_qmc_target_rel_error_stops_at_a_dyadic_size_and_equals_a_plain_run():
    law = sh.Uniform([1.0], [2.0])
    e = sh.monte_carlo(lambda x: torch.exp(x[:, 0]), law, 1 << 22, seed=3, method="qmc", target_rel_error=1e-6)
    assert e.n < 1 << 22 and e.stderr <= 1e-6 * e.value and e.method == "qmc"
    assert abs(e.value - (math.e ** 2 - math.e)) <= 5 * e.stderr
    plain = sh.monte_carlo(lambda x: torch.exp(x[:, 0]), law, e.n, seed=3, method="qmc")
    assert plain.value == e.value and plain.stderr == e.stderr and plain.n == e.n
    assert e.n // 16 in (256, 512, 1024, 2048, 4096, 8192, BLOCK) or (e.n // 16) % BLOCK == 0


def test_conditional_results_do_not_depend_on_chunk_or_workers():
    kw = dict(method="conditional", n=BLOCK + 500, seed=4, sampling="mc")
    a = sh.boundary_mass(k4_router(), MIX5, [0.05, 0.3], **kw)
    b = sh.boundary_mass(k4_router(), MIX5, [0.05, 0.3], chunk=2 * BLOCK, workers=2, **kw)
    assert np.array_equal(a.value, b.value) and np.array_equal(a.stderr, b.stderr)
    x = sh.boundary_mass(k4_router(), MIX5, 0.3, n=3 * BLOCK, seed=5)
    y = sh.boundary_mass(k4_router(), MIX5, 0.3, n=3 * BLOCK, seed=5, workers=2)
    assert x.value == y.value and x.stderr == y.stderr


def test_float32_law_and_router():
    r64 = k4_router()
    r32 = sh.LinearRouter(r64.weight.float(), r64.bias.float())
    law = sh.Gaussian(torch.zeros(5, dtype=torch.float32), dtype=torch.float32)
    assert sh.draw(law, 10, seed=0).dtype == torch.float32
    est = sh.boundary_mass(r32, law, [0.1, 0.5], method="mc", n=1 << 16, seed=6)
    within(sh.boundary_mass_exact(r64, sh.Gaussian.standard(5), [0.1, 0.5]), est)


def test_sample_accepts_numpy_and_torch_generators():
    for law in (sh.Gaussian.standard(3), MIX5, sh.Uniform([0.0], [1.0]), sh.Empirical(np.arange(10.0)[:, None])):
        a = law.sample(50, np.random.default_rng(1))
        assert a.shape == (50, law.d) and torch.equal(a, law.sample(50, np.random.default_rng(1)))
        assert law.sample(50, torch.Generator().manual_seed(1)).shape == (50, law.d)


def test_trusted_paths_agree_with_validated_ones():
    moe, law = k3_design()
    x = sh.draw(law, 100, seed=1)
    a, h = moe._scores(x)
    assert torch.equal(a, moe.logits(x)) and torch.equal(h, moe.expert_outputs(x))
    t = sh.HardTeacher(moe)
    assert torch.equal(t._signal(x), t.signal(x))
    state = torch.get_rng_state()
    r1, r2 = sh.MLPRouter(4, 3, (5,), seed=2), sh.MLPRouter(4, 3, (5,), seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(r1.parameters(), r2.parameters()))
