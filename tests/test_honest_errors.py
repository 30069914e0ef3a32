"""Honest standard errors: for every estimator of issue 8, over 50 seeds, |value − exact| ≤ 2·stderr about
95% of the time, and the error bars are not inflated either.

With honest error bars z = (value − exact)/stderr is about N(0, 1) (plain MC) or Student-t with 15 degrees
of freedom (16 scramblings, QMC: P(|t₁₅| ≤ 2) = 0.936). The checks, for each estimator:

- coverage: at least ``K_LO`` of the 50 have |z| ≤ 2, where P(Binomial(50, 0.93) < K_LO) < 1e-5 (an
  underestimated stderr, by 1.5x say, fails it: coverage 0.82);
- no inflation: mean |z| ≥ 0.45 (honest: 0.80 for N(0, 1), 0.82 for t₁₅, with a standard deviation of
  0.09 over 50 seeds: a false failure is 4 sd away; a stderr twice too large gives about 0.4).

Sample sizes are small (the tests must be fast); truths come from the closed forms of softhard.closed
or from SciPy.
"""

import numpy as np
import pytest
import torch
from scipy import stats

import softhard as sh

K_LO = int(stats.binom.ppf(1e-5, 50, 0.93))
SEEDS = range(100, 150)


def check_honest(estimate, exact):
    ests = [estimate(s) for s in SEEDS]
    z = np.array([(np.asarray(e.value) - exact) / np.asarray(e.stderr) for e in ests]).reshape(len(SEEDS), -1)
    for col in z.T:
        assert np.sum(np.abs(col) <= 2) >= K_LO, col
        assert np.mean(np.abs(col)) >= 0.45, col


def k4():
    g = torch.Generator().manual_seed(0)
    return sh.LinearRouter(torch.randn(4, 3, generator=g, dtype=torch.float64), [0.2, -0.1, 0.0, 0.3])


LAW = sh.GaussianMixture([0.4, 0.6], [[0.3, 0.0, -0.2], [-0.2, 0.4, 0.0]], [np.eye(3), np.diag([0.5, 1.0, 2.0])])


def binary_design():
    student = sh.MoE(sh.LinearRouter.binary([1.0, 0.2], b=-0.4), sh.LinearExperts([[0.3, 1.0], [0.1, -1.0]]))
    teacher = sh.HardTeacher(sh.MoE(sh.LinearRouter.binary([0.8, 0.6], b=0.3),
                                    sh.LinearExperts([[0.5, 1.0], [0.0, -1.5]], [0.2, -0.1])))
    return student, teacher, sh.GaussianMixture([0.3, 0.7], [[0.5, 0.0], [-0.3, 0.4]])


def sphere(d=3, c=2.0):
    return sh.as_router(lambda x: torch.stack([(x ** 2).sum(1) - c, torch.zeros_like(x[:, 0])], 1), d)


@pytest.mark.parametrize("sampling", ["mc", "qmc"])
def test_boundary_mass_conditional_linear(sampling):
    exact = sh.boundary_mass_exact(k4(), LAW, [0.05])[0]
    check_honest(lambda s: sh.boundary_mass(k4(), LAW, 0.05, method="conditional", n=1024, seed=s,
                                            sampling=sampling), exact)


def test_boundary_mass_plain_qmc():
    exact = sh.boundary_mass_exact(k4(), LAW, [0.3])[0]
    check_honest(lambda s: sh.boundary_mass(k4(), LAW, 0.3, method="qmc", n=2048, seed=s), exact)


def test_risk_gap_conditional_linear():
    student, teacher, mix = binary_design()
    exact = sh.risk_gap_exact(student, mix, [0.05], teacher)[0]
    check_honest(lambda s: sh.risk_gap(student, mix, 0.05, teacher=teacher, method="conditional", n=256, seed=s), exact)


def test_gap_slope_conditional_linear():
    student, teacher, mix = binary_design()
    exact = sh.gap_slope(student, mix, teacher=teacher).value
    check_honest(lambda s: sh.gap_slope(student, mix, teacher=teacher, method="conditional", n=512, seed=s), exact)


# The line estimators with plain MC draws (their QMC error bars come from independent scramblings, as above;
# plain MC keeps these runs short: one call of the line search per estimate instead of sixteen).


def test_gap_slope_lines():
    student, teacher, mix = binary_design()
    lines = sh.MoE(sh.as_router(lambda x: student.router(x), 2), student.experts)
    check_honest(lambda s: sh.gap_slope(lines, mix, teacher=teacher, method="conditional", n=1024, seed=s, sampling="mc"),
                 sh.gap_slope(student, mix, teacher=teacher).value)


def test_coarea_lines():
    check_honest(lambda s: sh.coarea_constant(sphere(), sh.Gaussian.standard(3), method="conditional", n=1024,
                                              seed=s, sampling="mc"), stats.chi2(3).pdf(2.0))


def test_boundary_mass_lines():
    exact = stats.chi2(3).cdf(2.0 + 0.02) - stats.chi2(3).cdf(2.0 - 0.02)
    check_honest(lambda s: sh.boundary_mass(sphere(), sh.Gaussian.standard(3), 0.02, method="conditional", n=1024,
                                            seed=s, sampling="mc"), exact)
