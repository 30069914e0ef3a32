"""Coarea constants, the kernel density-at-zero estimator (accuracy and coverage) and the Assumption 3.4
diagnostic."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import softhard as sh
from softhard.closed.boundary import pair_score
from softhard.estimators import kernel

TEMPLATE = r"The '\w+' parameter of [\w.]+ must be "


def within(exact, est, k=5.0):
    assert abs(exact - est.value) <= k * est.stderr, (exact, est)


def wavy(x):
    """A fixed non-linear 3-expert router on R^2 (or R^3: the last coordinate is ignored)."""
    return torch.stack([torch.sin(2 * x[:, 0]) + x[:, 1], x[:, 0] * x[:, 1], -x[:, 0]], 1)


def k3_router():
    W = torch.tensor([[1.0, 0.0, 0.2], [-0.5, 0.8, 0.0], [-0.5, -0.8, -0.2]], dtype=torch.float64)
    law = sh.Gaussian([0.1, 0.0, 0.2], [[1, 0.2, 0], [0.2, 1, 0.1], [0, 0.1, 0.5]])
    return sh.LinearRouter(W, [0.1, 0.0, -0.1]), law


def test_density_at_zero_two_and_one_sided():
    rng = np.random.default_rng(0)
    est = sh.density_at_zero(rng.normal(0.5, 1.3, 20000))
    assert est.method == "kernel" and est.info["bandwidth"] > 0 and est.n == 20000
    within(stats.norm.pdf(0, 0.5, 1.3), est)
    # one-sided: |N(0, 1)| has density 2φ(0) at 0⁺; Exp(2) has density 2 at 0⁺
    within(2 * stats.norm.pdf(0), sh.density_at_zero(np.abs(rng.normal(size=20000)), one_sided=True))
    within(2.0, sh.density_at_zero(rng.exponential(0.5, 20000), one_sided=True))


@pytest.mark.parametrize("one_sided", [False, True])
def test_density_at_zero_coverage(one_sided):
    """'value ± 2 stderr' covers the truth about 95% of the time: the bias is small against the error bar."""
    rng = np.random.default_rng(1)
    reps, N = 300, 5000
    if one_sided:  # a density with slope and curvature at 0⁺: Gamma(shape 1, scale 1) mixed with |N(0, 0.5²)|
        truth = 0.5 * 1.0 + 0.5 * 2 * stats.norm.pdf(0, 0, 0.5)
        draws = [np.where(rng.random(N) < 0.5, rng.exponential(1.0, N), np.abs(rng.normal(0, 0.5, N)))
                 for _ in range(reps)]
    else:
        truth = stats.norm.pdf(0, 0.7, 1.0)
        draws = [rng.normal(0.7, 1.0, N) for _ in range(reps)]
    ests = [sh.density_at_zero(v, one_sided=one_sided) for v in draws]
    cover = np.mean([abs(e.value - truth) <= 2 * e.stderr for e in ests])
    # binomial(300, 0.954): sd 0.012; a bias of one stderr would drop coverage to about 0.83
    assert 0.90 <= cover <= 0.99, cover


def test_coarea_constant_exact_and_kernel():
    router, law = k3_router()
    for pair in [(0, 1), (1, 2)]:
        exact = sh.coarea_constant(router, law, pair).value
        assert isinstance(exact, float)
        v, c = pair_score(router, pair)
        m_g, s = float(v @ law.mean) + c, math.sqrt(float(v @ law.cov @ v))
        assert exact == pytest.approx(stats.norm.pdf(0, m_g, s), rel=1e-14)  # (3.14)
        within(exact, sh.coarea_constant(router, law, pair, method="kernel", n=1 << 15, seed=3))
    total = sh.coarea_sum(router, law).value
    assert total == pytest.approx(sum(sh.coarea_constant(router, law, p).value for p in [(0, 1), (0, 2), (1, 2)]))
    within(total, sh.coarea_sum(router, law, method="kernel", n=1 << 15, seed=4))


def test_coarea_constant_nonlinear_router():
    # g(x) = x_1 + x_2² under N(0, I_2): ψ(0) = ∫ φ(-y²) φ(y) dy
    def router(x):
        g = x[:, 0] + x[:, 1] ** 2
        return torch.stack([g / 2, -g / 2], 1)

    law = sh.Gaussian.standard(2)
    psi = integrate.quad(lambda y: stats.norm.pdf(y * y) * stats.norm.pdf(y), -np.inf, np.inf)[0]
    est = sh.coarea_constant(router, law, method="kernel", n=1 << 16, seed=5)
    assert est.method == "kernel"
    within(psi, est)
    auto = sh.coarea_constant(router, law, n=1 << 14, seed=5)  # "auto": line sampling for a smooth router
    assert auto.method != "kernel"
    within(psi, auto)


def test_interface_constant_exact_and_kernel():
    router, law = k3_router()
    exact = sh.interface_constant(router, law).value
    within(exact, sh.interface_constant(router, law, method="kernel", n=1 << 16, seed=6))
    moe_router = sh.LinearRouter.binary([1.0, 0.0], b=0.4)
    assert sh.interface_constant(moe_router, sh.Gaussian.standard(2)).value == pytest.approx(stats.norm.pdf(0.4))


def test_interface_diagnostic_flat_and_regular():
    law = sh.Gaussian.standard(2)

    def cube(x):  # g(x) = x_1³: the interface {x_1 = 0} is flat, |∇g| = 3x_1² -> 0 there
        return torch.stack([x[:, 0] ** 3 / 2, -x[:, 0] ** 3 / 2], 1)

    flat = sh.interface_diagnostic(cube, law, n=10000, seed=0)
    assert flat.verdict == "degenerate" and len(flat.reasons) == 2
    assert flat.tail.alpha == pytest.approx(1 / 3, abs=5 * flat.tail.alpha_stderr)
    assert flat.grad_near["q90"] < 1e-2 * flat.grad_median
    assert flat.density[0] > 3 * flat.density[-1]  # mass piles up near Δ = 0
    regular = sh.interface_diagnostic(sh.LinearRouter.binary([1.0, 0.0]), law, n=10000, seed=0)
    assert regular.verdict == "regular" and regular.reasons == ()
    assert regular.tail.alpha == pytest.approx(1.0, abs=5 * regular.tail.alpha_stderr)
    np.testing.assert_allclose(list(regular.grad_near.values()), 1.0, rtol=1e-12)  # |∇g| = |e_1|
    assert sh.interface_diagnostic(wavy, law, n=10000, seed=0).verdict == "regular"


def test_bad_input_raises_with_template():
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.density_at_zero([-1.0, 0.5, 2.0], one_sided=True)
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.density_at_zero(np.ones((3, 2)))
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.density_at_zero([0.0, 1.0, np.nan])
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.density_at_zero([0.0, 1.0, 2.0], bandwidth=0.0)
    with pytest.raises(ValueError, match=TEMPLATE):
        kernel.kernel_bandwidth(np.zeros(10))
    router, law = k3_router()
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.coarea_constant(router, law, method="histogram")
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.coarea_constant(router, law, pair=(0, 0))
    with pytest.raises(ValueError, match=r"The 'method' parameter of coarea_constant must be a method that applies "
                                         r"here: 'exact' needs a LinearRouter"):
        sh.coarea_constant(wavy, law, method="exact")
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.coarea_constant(wavy, sh.Gaussian.standard(2), method="kernel", pair=(0, 3), n=100)
    with pytest.raises(ValueError, match=TEMPLATE):
        sh.interface_diagnostic(router, law, n=10)


def test_level_set_profile_at_nonzero_levels():
    """ψ_ij(s) (3.8) for s ≠ 0: the exact form against SciPy's normal density of g_ij(X) (a mixture), the kernel
    estimate against it within 5 standard errors, and ψ_ij(0) = coarea_constant."""
    r3, _ = k3_router()
    law = sh.GaussianMixture([0.3, 0.7], [[0.5, 0.0, 0.1], [-0.3, 0.4, 0.0]],
                             [[[1, 0.2, 0], [0.2, 1, 0.1], [0, 0.1, 0.5]], [[0.6, 0, 0], [0, 0.9, 0], [0, 0, 0.4]]])
    s = np.array([-1.5, -0.4, 0.0, 0.7, 2.0])
    est = sh.level_set_profile(r3, law, s, (0, 2))
    v, c = (t.numpy() if hasattr(t, "numpy") else t for t in pair_score(r3, (0, 2)))
    ref = sum(w * stats.norm.pdf(s, loc=float(v @ m.numpy()) + c, scale=math.sqrt(float(v @ S.numpy() @ v)))
              for w, m, S in zip([0.3, 0.7], [comp.mean for comp in law.components], [comp.cov for comp in law.components]))
    assert est.method == "exact" and np.allclose(est.value, ref, rtol=1e-13, atol=0)
    assert float(sh.level_set_profile(r3, law, 0.0, (0, 2)).value) == pytest.approx(
        float(sh.coarea_constant(r3, law, (0, 2)).value), rel=1e-14)
    ker = sh.level_set_profile(r3, law, s, (0, 2), method="kernel", n=1 << 17, seed=3)
    assert ker.value.shape == (5,) and np.all(np.abs(ker.value - ref) <= 5 * ker.stderr)
    with pytest.raises(ValueError, match="'levels' parameter of level_set_profile must be"):
        sh.level_set_profile(r3, law, [0.0, float("nan")])
