"""Theorem 4.5, the sample certificates and the margin-tail fit; each bound holds and its overshoot is measured."""

import math

import numpy as np
import pytest
import torch

import softhard as sh

TEMPLATE = r"The '\w+' parameter of [\w.]+ must be "
PSI0 = 1 / math.sqrt(2 * math.pi)
TAUS = [0.1, 0.01]


def design71(law=None):
    moe = sh.MoE(sh.LinearRouter.binary([1.0, 0.0]), sh.LinearExperts([[0.0, 1.0], [0.0, -1.0]]))
    return moe, law or sh.Gaussian.standard(2)


def test_theorem45_constant_hand_value():
    assert sh.theorem45_constant(0.5, 1.0, 2.0, 1.0, 3) == pytest.approx(4 * 1 * 3 * 2 * 0.5 * 1.0)
    assert sh.theorem45_constant(1.0, 0.5, 1.0, 1.0, 2) == pytest.approx(8 * math.gamma(1.5))
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.theorem45_constant(1.0, 0.0, 1.0, 1.0, 2)
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.theorem45_constant(1.0, 1.0, 1.0, 1.0, 1)


def test_bounded_variant_theorem_and_certificate():
    """The 7.1 design on the box [-3, 3]²: B_h = B_Y = 3, μ(Δ <= t) = t/3 exactly (C_Δ = 1/3, α = 1).

    Theorem 4.5: 4·3·6·(1/3)·τ = 24τ; the certificate 72·E[e^{-|x_1|/τ}] = 24τ(1 - e^{-3/τ}); the gap
    is (2 ln 2 - 1)·ψ(0)·E[D² | g = 0] τ = (2 ln 2 - 1)(1/6)(12) τ ≈ 0.773τ, an overshoot of about 31x.
    """
    moe, box = design71(sh.Uniform([-3.0, -3.0], [3.0, 3.0]))
    gap = sh.risk_gap(moe, box, TAUS, n=1 << 15, seed=1)
    g1 = (2 * math.log(2) - 1) * 2.0
    assert np.all(np.abs(gap.value / TAUS - g1) <= 5 * gap.stderr / TAUS + 0.01)
    tail = sh.margin_tail(moe.router, box, n=1 << 15, seed=2, t_max=1.0)
    assert tail.alpha == pytest.approx(1.0, abs=5 * tail.alpha_stderr)
    assert tail.C == pytest.approx(1 / 3, abs=5 * tail.C_stderr)
    C = sh.theorem45_constant(1 / 3, 1.0, 3.0, 3.0, 2)
    assert C == pytest.approx(24.0)
    cert = sh.gap_certificate(moe, box, TAUS, B_Y=3.0, B_h=3.0, n=1 << 15, seed=1)
    within_ = np.abs(cert.value - 24 * np.asarray(TAUS)) <= 5 * cert.stderr
    assert np.all(within_)
    overshoot = cert.value / gap.value
    assert np.all(gap.value <= cert.value) and np.all((25 < overshoot) & (overshoot < 38))
    assert np.all(C * np.asarray(TAUS) / gap.value > 25)


def test_unbounded_7_1_local_certificate_and_cauchy_schwarz():
    """The 7.1 Gaussian design (B_h = ∞): the local certificate ≈ 8·2ψ(0)τ = 6.38τ against the gap
    0.616τ (≈ 10.4x); Cauchy–Schwarz is an equality for the realizable teacher."""
    moe, law = design71()
    exact = sh.risk_gap_exact(moe, law, TAUS)
    local = sh.local_gap_certificate(moe, law, TAUS, n=1 << 15, seed=3)
    assert np.all(np.abs(local.value - 16 * PSI0 * np.asarray(TAUS)) <= 5 * local.stderr + 0.02 * local.value)
    # the overshoot is that of the limit 16ψ(0)τ (the Monte Carlo value agrees with it within 5 SE above)
    overshoot = 16 * PSI0 * np.asarray(TAUS) / exact
    assert np.all((9.5 < overshoot) & (overshoot < 11.5))
    assert np.all(local.value - 5 * local.stderr <= 11.5 * exact) and np.all(local.value + 5 * local.stderr >= 9.5 * exact)
    cs = sh.cauchy_schwarz_bound(moe, law, TAUS, n=1 << 15, seed=4)
    assert cs.method == "mc" and cs.info["stderr"] == "delta method"
    assert np.all(np.abs(cs.value - exact) <= 5 * cs.stderr)
    same = sh.risk_gap(moe, law, TAUS, method="mc", n=1 << 15, seed=4)
    np.testing.assert_allclose(cs.value, same.value, rtol=1e-10)  # realizable: the bound is the gap itself


def test_bounds_hold_for_a_continuous_teacher():
    """f* = 0 (continuous): the gap ≈ -1.60τ is negative. The local certificate is E[4x_2² e^{-|x_1|/τ}]
    ≈ 3.19τ (2x); Cauchy–Schwarz overshoots by about 1/√τ."""
    moe, law = design71()
    zero = sh.MoE(moe.router, sh.LinearExperts(torch.zeros(2, 2)))
    gap = sh.risk_gap_exact(moe, law, TAUS, zero)
    assert np.all(gap < 0)
    cs = sh.cauchy_schwarz_bound(moe, law, TAUS, teacher=zero, n=1 << 15, seed=5)
    local = sh.local_gap_certificate(moe, law, TAUS, teacher=zero, n=1 << 15, seed=5)
    assert np.all(np.abs(gap) < cs.value - 5 * cs.stderr) and np.all(np.abs(gap) < local.value - 5 * local.stderr)
    np.testing.assert_allclose(local.value / np.abs(gap), 2.0, rtol=0.1)
    # E(f_τ - f_0)² ≈ 0.616τ, E(f_τ + f_0)² ≈ 4, |gap| ≈ 1.60τ: ratio ≈ 1.57/(1.60 √τ)
    np.testing.assert_allclose(cs.value / np.abs(gap), 1.57 / (1.60 * np.sqrt(TAUS)), rtol=0.1)


def test_gap_certificate_checks_its_bounds():
    moe, law = design71()
    with pytest.raises(ValueError, match="'B_h' parameter of gap_certificate must be a bound"):
        sh.gap_certificate(moe, law, 0.1, B_Y=3.0, B_h=3.0, n=1 << 12, seed=0)
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.gap_certificate(moe, law, 0.1, B_Y=-1.0, B_h=3.0)


def test_fit_margin_tail_recovers_a_power_law():
    rng = np.random.default_rng(0)
    C, alpha, n = 0.8, 0.5, 40000
    u = rng.random(n)
    m = np.where(u < 0.3, (u / C) ** (1 / alpha), 1.0 + rng.random(n))  # μ(Δ <= t) = C t^α on (0, (0.3/C)^2]
    fit = sh.fit_margin_tail(m, t_max=0.1)
    assert fit.n == n and fit.n_tail == int((m <= 0.1).sum()) and fit.t_max == 0.1
    assert fit.alpha == pytest.approx(alpha, abs=5 * fit.alpha_stderr)
    assert fit.C == pytest.approx(C, abs=5 * fit.C_stderr)
    assert fit(0.04) == pytest.approx(fit.C * 0.04 ** fit.alpha)
    default = sh.fit_margin_tail(m)  # t_max = 5% quantile
    assert default.t_max == pytest.approx(np.quantile(m, 0.05))


def test_fit_margin_tail_stderr_coverage():
    rng = np.random.default_rng(1)
    z = []
    for _ in range(200):
        m = rng.random(3000) ** (1 / 1.5)  # μ(Δ <= t) = t^1.5 on (0, 1]
        fit = sh.fit_margin_tail(m, t_max=0.5)
        z.append(((fit.alpha - 1.5) / fit.alpha_stderr, (fit.C - 1.0) / fit.C_stderr))
    cover = np.mean(np.abs(np.array(z)) <= 2, axis=0)
    assert np.all((0.9 <= cover) & (cover <= 0.99)), cover


def test_margin_tail_linear_gaussian_and_zeros():
    moe, law = design71()
    tail = sh.margin_tail(moe.router, law, n=1 << 16, seed=3)
    assert tail.C == pytest.approx(2 * PSI0, abs=5 * tail.C_stderr)  # μ(|x_1| <= t) ≈ 2ψ(0) t
    assert tail.alpha == pytest.approx(1.0, abs=5 * tail.alpha_stderr)
    m = np.array([0.0, 0.0] + list(np.linspace(0.01, 1, 200)))
    with pytest.raises(ValueError, match="zeros='drop'"):
        sh.fit_margin_tail(m)
    assert sh.fit_margin_tail(m, t_max=0.5, zeros="drop").n_zero == 2
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.fit_margin_tail([-0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.fit_margin_tail(np.linspace(0.1, 1, 50), t_max=0.05)


def _binary(m=0.4, s=1.3):
    """A binary linear router whose score g = a_1 − a_2 ~ N(m, s²) under N(0, I_2)."""
    return sh.LinearRouter([[s / 2, 0.0], [-s / 2, 0.0]], [m / 2, -m / 2]), sh.Gaussian.standard(2)


def test_margin_slope_constant_bounds_beta_and_tends_to_2_psi0():
    """Prop. 3.7's C_1 on (0, w0]: sup_w β(w)/w ≤ C_1 (β by SciPy), equality as w0 → 0 (= 2 C_Σ, Prop. 3.5)."""
    from scipy.stats import norm

    r, law = _binary()
    for w0 in (0.05, 0.5, 2.0):
        C1 = sh.margin_slope_constant(r, law, w0)
        w = np.linspace(1e-6, w0, 2001)
        beta = norm.cdf((w - 0.4) / 1.3) - norm.cdf((-w - 0.4) / 1.3)
        assert np.max(beta / w) <= C1 * (1 + 1e-12)
        assert C1 == pytest.approx(2 * norm.pdf(max(0.4 - w0, 0.0) / 1.3) / 1.3, rel=1e-13)
    assert sh.margin_slope_constant(r, law, 0.0) == pytest.approx(2 * float(sh.interface_constant(r, law).value),
                                                                  rel=1e-12)
    # K = 3: β_pair(w) ≤ C_1 w against plain sampling of the smallest pairwise separation (2.12)
    W = np.array([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]])
    r3 = sh.LinearRouter(W, [0.1, 0.0, -0.1])
    x = np.random.default_rng(0).normal(size=(1 << 18, 2))
    a = x @ W.T + np.array([0.1, 0.0, -0.1])
    delta = np.min(np.abs(a[:, [0, 0, 1]] - a[:, [1, 2, 2]]), 1)
    for w in (0.05, 0.2):
        ind = delta <= w
        assert ind.mean() - 5 * ind.std() / math.sqrt(len(ind)) <= sh.margin_slope_constant(r3, law, 0.2) * w


def test_corollary44_bound_holds_against_the_exact_gap():
    """Cor. 4.4 with constant experts (|Y|, |h_k| ≤ B): the bound ≥ |L_τ − L_0|, the gap by SciPy quadrature."""
    from scipy import integrate
    from scipy.stats import norm

    r, law = _binary()
    c1, c2, B = 0.8, -0.5, 0.8
    taus = np.array([0.003, 0.03, 0.3])
    bound = sh.corollary44_bound(r, law, taus, B=B, w0=0.5)
    for t, bd in zip(taus, bound):
        # realizable teacher (the hard model itself): L_τ − L_0 = (c1 − c2)² E[σ(−|g|/τ)²]
        gap = integrate.quad(lambda g: norm.pdf(g, 0.4, 1.3) * ((c1 - c2) * math.exp(-np.logaddexp(0, abs(g) / t))) ** 2,
                             -12, 12, points=[0.0], limit=400, epsabs=1e-14)[0]
        assert 0 < gap <= bd, (t, gap, bd)
    C1 = sh.margin_slope_constant(r, law, 0.5)
    assert bound == pytest.approx(8 * B * B * (C1 * taus + np.exp(-0.5 / taus)), rel=1e-14)


def test_lemma57_constant_against_the_ambiguity_mass():
    """Lemma 5.7: m_ε(τ) ≤ C_ε τ for τ ≤ w0/λ_ε, and m_ε(τ)/τ → C_ε (first order), K = 2 by SciPy; K = 3 sampled."""
    from scipy.stats import norm

    r, law = _binary()
    eps = 0.1
    lam = math.log((1 - eps) / eps)
    first, unif = sh.lemma57_constant(r, law, eps), sh.lemma57_constant(r, law, eps, w0=0.5)
    for t in (1e-5, 0.01, 0.5 / lam):
        m = norm.cdf((lam * t - 0.4) / 1.3) - norm.cdf((-lam * t - 0.4) / 1.3)  # K = 2: m_ε(τ) = μ(|g| < λτ)
        assert m <= unif * t * (1 + 1e-12)
    t = 1e-5
    assert (norm.cdf((lam * t - 0.4) / 1.3) - norm.cdf((-lam * t - 0.4) / 1.3)) / t == pytest.approx(first, rel=1e-8)
    W = np.array([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]])
    r3 = sh.LinearRouter(W, [0.1, 0.0, -0.1])
    x = np.random.default_rng(1).normal(size=(1 << 17, 2))
    a = (x @ W.T + np.array([0.1, 0.0, -0.1])) / 0.05
    p = np.exp(a - a.max(1, keepdims=True))
    amb = (p / p.sum(1, keepdims=True)).max(1) < 1 - eps
    lam3 = lam + math.log(2)
    C = sh.lemma57_constant(r3, law, eps, w0=lam3 * 0.05)
    assert amb.mean() - 5 * amb.std() / math.sqrt(len(amb)) <= C * 0.05
    with pytest.raises(TypeError, match="'router' parameter of lemma57_constant must be a LinearRouter"):
        sh.lemma57_constant(lambda x: x, law)
