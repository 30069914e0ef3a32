"""The soft–hard gap, its first-order constant G_1 (both signs) and the entropy constant."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

import softhard as sh
from softhard.closed import risk

TEMPLATE = r"The '\w+' parameter of [\w.]+ must be "
PSI0 = 1 / math.sqrt(2 * math.pi)


def design71():
    moe = sh.MoE(sh.LinearRouter.binary([1.0, 0.0]), sh.LinearExperts([[0.0, 1.0], [0.0, -1.0]]))
    return moe, sh.Gaussian.standard(2)


def continuous_teacher(moe):
    """f* = mean of the experts: continuous across every interface."""
    return sh.FunctionTeacher(lambda x: moe.expert_outputs(x).mean(-1))


def k3_design():
    W = torch.tensor([[1.0, 0.0, 0.0], [-0.5, 0.8, 0.0], [-0.5, -0.8, 0.0]], dtype=torch.float64)
    moe = sh.MoE(sh.LinearRouter(W), sh.LinearExperts([[0, 0, 1.0], [0, 0, -1.0], [0.5, 0, 0.5]]))
    return moe, sh.Gaussian.standard(3)


def within(exact, est, k=5.0):
    v, s = np.asarray(est.value), np.asarray(est.stderr)
    assert np.all(np.abs(np.asarray(exact) - v) <= k * s), (exact, v, s)


def test_universal_constants():
    assert integrate.quad(lambda u: special.expit(-u), 0, np.inf)[0] == pytest.approx(risk.LN2, rel=1e-10)
    sq = lambda u: ((u > 0) - special.expit(u)) ** 2  # noqa: E731
    assert integrate.quad(sq, -np.inf, 0)[0] + integrate.quad(sq, 0, np.inf)[0] == pytest.approx(
        risk.GAP_CONSTANT, rel=1e-10)
    H = lambda u: float(sh.binary_entropy(torch.tensor(special.expit(u))))  # noqa: E731
    assert integrate.quad(H, -60, 60, limit=200)[0] == pytest.approx(risk.ENTROPY_CONSTANT, rel=1e-8)


def test_risk_gap_matches_exact_quadrature():
    moe, law = design71()
    taus = [0.6, 0.1, 0.01]
    est = sh.risk_gap(moe, law, taus, method="mc", n=1 << 15, seed=1)
    assert est.value.shape == (3,) and est.n == 1 << 15
    within(sh.risk_gap_exact(moe, law, taus), est)
    student = sh.MoE(sh.LinearRouter.binary([1.0, 0.2], b=-0.4), sh.LinearExperts([[0.3, 1.0], [0.1, -1.0]]))
    teacher = sh.HardTeacher(sh.MoE(sh.LinearRouter.binary([0.8, 0.6], b=0.3),
                                    sh.LinearExperts([[0.5, 1.0], [0.0, -1.5]], [0.2, -0.1])), noise_std=0.5)
    mix = sh.GaussianMixture([0.3, 0.7], [[0.5, 0.0], [-0.3, 0.4]])
    within(sh.risk_gap_exact(student, mix, taus, teacher), sh.risk_gap(student, mix, taus, teacher=teacher, method="mc", n=1 << 15,
                                                                      seed=2))


def test_risk_gap_common_random_numbers():
    moe, law = design71()
    grid = sh.risk_gap(moe, law, [0.3, 0.05], method="mc", n=5000, seed=3)
    one = sh.risk_gap(moe, law, 0.05, method="mc", n=5000, seed=3)
    assert isinstance(one.value, float)
    # the same draws for every τ (up to the last bits of the block reduction)
    assert one.value == pytest.approx(grid.value[1], rel=1e-12) and one.stderr == pytest.approx(grid.stderr[1],
                                                                                                rel=1e-12)


def test_gap_slope_binary_both_signs():
    moe, law = design71()
    for teacher, g1 in [(None, (2 * math.log(2) - 1) * PSI0 * 4), (continuous_teacher(moe), -PSI0 * 4)]:
        if teacher is None:
            exact = sh.gap_slope(moe, law).value
            assert isinstance(exact, float) and exact == pytest.approx(g1, rel=1e-14) and exact > 0
            assert sh.risk_gap_exact(moe, law, [1e-3])[0] / 1e-3 == pytest.approx(g1, rel=1e-5)
        else:  # the FunctionTeacher has no closed form: the same value from a linear HardTeacher f* = 0
            zero = sh.MoE(moe.router, sh.LinearExperts(torch.zeros(2, 2)))
            assert sh.gap_slope(moe, law, teacher=zero).value == pytest.approx(g1, rel=1e-14) and g1 < 0
            assert sh.risk_gap_exact(moe, law, [1e-3], zero)[0] / 1e-3 == pytest.approx(g1, rel=1e-3)
        est = sh.gap_slope(moe, law, teacher=teacher, method="kernel", n=1 << 16, seed=4)
        assert est.method == "kernel" and est.info["bandwidth"] > 0
        within(g1, est)


@pytest.mark.parametrize("realizable", [True, False])
def test_gap_slope_kernel_k3_against_gap_over_tau(realizable):
    """No closed form for K = 3: the surface-integral estimate against the Monte Carlo gap(τ)/τ at small τ."""
    moe, law = k3_design()
    teacher = None if realizable else continuous_teacher(moe)
    g1 = sh.gap_slope(moe, law, teacher=teacher, method="kernel", n=1 << 16, seed=5)
    assert isinstance(g1, sh.Estimate)
    tau = 0.01
    g = sh.risk_gap(moe, law, tau, teacher=teacher, method="mc", n=1 << 16, seed=6)
    se = math.hypot(g1.stderr, g.stderr / tau)
    assert abs(g1.value - g.value / tau) <= 5 * se + 0.02  # 0.02: the O(τ) term, |G_2| τ
    assert (g1.value > 5 * g1.stderr) if realizable else (g1.value < -5 * g1.stderr)


def test_entropy_slope():
    moe, law = design71()
    slope = sh.entropy_slope(moe.router, law).value
    assert slope == pytest.approx(math.pi ** 2 / 3 * PSI0, rel=1e-14)
    tau = 0.005
    est = sh.gate_entropy_mean(moe.router, law, [tau, 0.2], method="mc", n=1 << 16, seed=7)
    assert abs(est.value[0] / tau - slope) <= 5 * est.stderr[0] / tau + slope * 2 * tau  # O(τ²) relative here
    kernel = sh.entropy_slope(moe.router, law, method="kernel", n=1 << 16, seed=8)
    within(slope, kernel)
    router3, law3 = k3_design()[0].router, k3_design()[1]
    slope3 = sh.entropy_slope(router3, law3).value
    est3 = sh.gate_entropy_mean(router3, law3, tau, method="mc", n=1 << 16, seed=9)
    assert abs(est3.value / tau - slope3) <= 5 * est3.stderr / tau + 0.05 * slope3


def test_bad_input_raises_with_template():
    moe, law = design71()
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.risk_gap(moe, law, [0.1, -1.0])
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.risk_gap(moe, law, 0.0)
    with pytest.raises(TypeError, match=TEMPLATE):
        sh.risk_gap(moe.router, law, 0.1)
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.risk_gap(moe, sh.Gaussian.standard(3), 0.1)
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.gap_slope(moe, law, method="closed")
    with pytest.raises(ValueError, match="binary"):
        sh.gap_slope(*k3_design(), method="exact")
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.gap_slope(moe, law, method="kernel", bandwidth=-1.0, n=100)
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.gate_entropy_mean(moe.router, law, [0.1], n=0)
