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
    assert cs.method in ("mc", "score") and cs.info["sampling"] == "mc" and cs.info["stderr"] == "delta method"
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
