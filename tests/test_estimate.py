"""The one streaming reducer: reproducibility, honesty of the standard error, QMC, early stopping."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from softhard import Estimate, Gaussian, LinearRouter, Uniform, draw, mean_estimate, monte_carlo, top_two_margin
from softhard.estimators.reducer import BLOCK

F64 = torch.float64
LAW = Gaussian(torch.tensor([0.5, -1.0, 0.0]), torch.tensor([[1.0, 0.3, 0.0], [0.3, 2.0, -0.4], [0.0, -0.4, 0.7]]))
ROUTER = LinearRouter([[1.0, 0.0, 0.5], [0.0, 1.0, -1.0], [-0.5, 0.5, 0.0], [0.2, 0.2, 0.2]])


def terms(x):
    """Continuous and indicator terms, through a matmul, a sort and transcendental functions."""
    a = ROUTER(x)
    m = top_two_margin(a)
    return torch.stack([a.sum(1), torch.exp(0.3 * a).mean(1), (m <= 0.5).double(), torch.sin(x).prod(1)], 1)


def same(e1: Estimate, e2: Estimate) -> bool:
    return (np.asarray(e1.value).tobytes() == np.asarray(e2.value).tobytes()
            and np.asarray(e1.stderr).tobytes() == np.asarray(e2.stderr).tobytes() and e1.n == e2.n)


# --- reproducibility ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["mc", "qmc"])
def test_bit_identical_whatever_chunk_and_threads(method):
    n = 2 * BLOCK + 123  # (scrambles × 3 for QMC) blocks: chunks group them [0][1][2], [0 1][2] or [0 1 2]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = monte_carlo(terms, LAW, n, seed=11, method=method, scrambles=2, chunk=BLOCK)
        for nt, chunk in ((1, 2 * BLOCK), (1, None), (2, BLOCK), (2, 1 << 20)):
            torch.set_num_threads(nt)
            assert same(monte_carlo(terms, LAW, n, seed=11, method=method, scrambles=2, chunk=chunk), ref)
    finally:
        torch.set_num_threads(threads)
    assert not same(monte_carlo(terms, LAW, n, seed=12, method=method, scrambles=2), ref)


def test_draw_is_exactly_the_averaged_sample():
    seen = []

    def record(x):
        seen.append(x.clone())
        return x

    n = 2 * BLOCK + 7
    est = monte_carlo(record, LAW, n, seed=5, chunk=BLOCK)
    x = draw(LAW, n, seed=5)
    assert torch.equal(torch.cat(seen), x)
    assert np.allclose(est.value, x.mean(0).numpy(), rtol=1e-13, atol=1e-15)
    assert est.n == n and est.seed == 5 and est.method == "mc"


def test_seed_kinds():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    e1, e2 = monte_carlo(terms, LAW, 1000, seed=g1), monte_carlo(terms, LAW, 1000, seed=g2)
    assert same(e1, e2) and e1.seed == e2.seed
    fresh = monte_carlo(terms, LAW, 1000, seed=None)  # a fresh seed, recorded so it can be replayed
    assert isinstance(fresh.seed, int) and same(monte_carlo(terms, LAW, 1000, seed=fresh.seed), fresh)
    state = torch.get_rng_state()
    monte_carlo(terms, LAW, 1000, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched


# --- honest standard errors ---------------------------------------------------------------------------


def test_stderr_is_honest_over_50_seeds():
    # truths: E[x0] = 0.5, E[x1²] = Var + mean² = 2 + 1 = 3, P(x2 > 1) = 1 − Φ(1/√0.7)
    truth = np.array([0.5, 3.0, 1 - stats.norm.cdf(1 / math.sqrt(0.7))])
    z = []
    for seed in range(50):
        e = monte_carlo(lambda x: torch.stack([x[:, 0], x[:, 1] ** 2, (x[:, 2] > 1).double()], 1), LAW,
                        20_000, seed=seed)
        z.append((e.value - truth) / e.stderr)
    z = np.array(z)  # (50 seeds, 3 columns)
    # With honest standard errors each column's z are ~ N(0, 1) i.i.d.:
    # P(fewer than 39 of 50 have |z| <= 2) = 1.9e-6 and P(Σz² outside the χ²_50 [1e-6, 1 − 1e-6] quantiles) = 2e-6,
    # so the test fails by chance with probability < 2e-5 (union over 3 columns × 2 checks); a standard error
    # off by a factor 1.5 either way fails it.
    lo, hi = stats.chi2.ppf([1e-6, 1 - 1e-6], 50)
    for col in z.T:
        assert np.sum(np.abs(col) <= 2) >= 39
        assert lo <= np.sum(col ** 2) <= hi


def test_qmc_beats_mc_on_a_smooth_integrand_and_covers_the_truth():
    a = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    law = Gaussian.standard(3)
    truth = math.exp(float(a @ a) / 2)  # E exp(a·X) for X ~ N(0, I)
    f = lambda x: torch.exp(x @ a)  # noqa: E731
    mc = monte_carlo(f, law, 1 << 16, seed=2)
    qmc = monte_carlo(f, law, 1 << 16, seed=2, method="qmc", scrambles=16)
    assert qmc.method == "qmc" and qmc.n == 1 << 16
    assert abs(mc.value - truth) <= 5 * mc.stderr
    assert abs(qmc.value - truth) <= 5 * qmc.stderr
    assert qmc.stderr < mc.stderr / 10


def test_qmc_uniform_points_are_unbiased():
    # E[x] = 1/2 exactly: torch's Sobol grid alone would be off by 2^-31, many QMC standard errors here
    e = monte_carlo(lambda x: x, Uniform([0.0], [1.0]), 1 << 14, seed=0, method="qmc", scrambles=8)
    assert abs(e.value - 0.5) <= 5 * e.stderr


# --- early stopping -----------------------------------------------------------------------------------


def test_target_rel_error_stops_early_and_does_not_depend_on_chunk():
    law = Uniform([1.0], [2.0])  # mean 1.5, sd 1/√12: rel. error 1e-3 needs about 37 000 samples
    e = monte_carlo(lambda x: x[:, 0], law, 10 ** 7, seed=4, target_rel_error=1e-3)
    assert e.n < 10 ** 7 and e.n % BLOCK == 0
    assert e.stderr <= 1e-3 * abs(e.value)
    assert abs(e.value - 1.5) <= 5 * e.stderr
    shorter = monte_carlo(lambda x: x[:, 0], law, e.n - BLOCK, seed=4)
    assert shorter.stderr > 1e-3 * abs(shorter.value)  # it stopped at the first block that met the target
    assert same(monte_carlo(lambda x: x[:, 0], law, e.n, seed=4), e)  # = a plain run of that length
    assert same(monte_carlo(lambda x: x[:, 0], law, 10 ** 7, seed=4, target_rel_error=1e-3, chunk=1 << 20), e)


# --- mean_estimate and Estimate -----------------------------------------------------------------------


def test_mean_estimate_matches_numpy():
    v = np.random.default_rng(0).standard_normal((50_000, 2)) * [1.0, 3.0] + [2.0, -1.0]
    e = mean_estimate(v)
    assert np.allclose(e.value, v.mean(0), rtol=1e-13)
    assert np.allclose(e.stderr, v.std(0, ddof=1) / math.sqrt(len(v)), rtol=1e-12)
    assert e.n == 50_000 and e.method == "sample"
    one = mean_estimate(torch.tensor([1.0, 2.0, 4.0]))
    assert one.value == pytest.approx(7 / 3) and one.stderr == pytest.approx(math.sqrt(7 / 3 / 3))


def test_estimate_helpers():
    e = Estimate(np.array([2.0, 0.0, -4.0]), np.array([0.1, 0.0, 0.2]), 100, seed=1)
    assert np.allclose(e.rel_error, [0.05, 0.0, 0.05])
    assert e[2].value == -4.0 and e[2].stderr == 0.2 and e[2].n == 100 and len(e) == 3
    assert e.as_dict() == {"value": [2.0, 0.0, -4.0], "stderr": [0.1, 0.0, 0.2], "n": 100, "method": "mc", "seed": 1,
                           "converged": True, "dof": math.inf, "error_bound": [0.0, 0.0, 0.0], "target": None}
    assert f"{e[0]}" == "2 ± 0.1 (n=100, mc)"


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(n=0), ValueError, r"'n' parameter of monte_carlo must be an int in \[1, inf\]. Got 0"),
    (dict(n=1.5), TypeError, r"'n' parameter of monte_carlo must be an int"),
    (dict(seed=-1), ValueError, r"'seed' parameter of monte_carlo must be an int in \[0, inf\]"),
    (dict(seed="a"), TypeError, r"'seed' parameter of monte_carlo"),
    (dict(method="sobol"), ValueError, r"'method' parameter of monte_carlo must be one of 'mc', 'qmc'"),
    (dict(method="qmc", scrambles=1), ValueError, r"'scrambles' parameter of monte_carlo must be an int in \[2, inf\]"),
    (dict(method="qmc", n=3, scrambles=4), ValueError, r"'n' parameter of monte_carlo must be at least scrambles=4"),
    (dict(target_rel_error=0.0), ValueError, r"'target_rel_error' parameter of monte_carlo must be a float in \(0, inf\)"),
    (dict(chunk=0), ValueError, r"'chunk' parameter of monte_carlo"),
    (dict(law="normal"), TypeError, r"'law' parameter of monte_carlo must be a softhard Law"),
    (dict(terms=3.0), TypeError, r"'terms' parameter of monte_carlo must be a callable"),
    (dict(terms=lambda x: x[:5]), ValueError, r"'terms' parameter of monte_carlo must be a function returning one row "
                                              r"per sample \(100\). Got '5 rows'"),
    (dict(terms=lambda x: x.sum()), ValueError, r"'terms' parameter of monte_carlo must be a function returning "
                                                r"per-sample terms"),
])
def test_bad_input(kwargs, exc, match):
    args = dict(terms=lambda x: x, law=LAW, n=100, seed=0) | kwargs
    with pytest.raises(exc, match=match):
        monte_carlo(**args)


def test_bad_input_elsewhere():
    with pytest.raises(ValueError, match=r"'terms' parameter of monte_carlo must be a function returning finite "
                                         r"per-sample terms. Got 'non-finite terms such as \[nan"):
        monte_carlo(lambda x: torch.log(x[:, 0] - 10), LAW, 100)
    with pytest.raises(ValueError, match=r"'terms' parameter of monte_carlo must be a function that runs on inputs of "
                                         r"shape \(100, 3\); it raised IndexError") as info:
        monte_carlo(lambda x: x[:, 0][10 ** 6], LAW, 100)  # the user's own error, kept as the cause
    assert isinstance(info.value.__cause__, IndexError)
    with pytest.raises(ValueError, match=r"'terms' parameter of monte_carlo must be a function returning at least "
                                         r"one value per sample. Got 'shape \(100, 0\)'"):
        monte_carlo(lambda x: x[:, 5:6], LAW, 100)
    with pytest.raises(ValueError, match=r"'values' parameter of mean_estimate must be an array of shape \(N, \.\.\.\) "
                                         r"with N >= 1"):
        mean_estimate(np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"'values' parameter of mean_estimate must be finite"):
        mean_estimate([1.0, math.nan])
    with pytest.raises(ValueError, match=r"'n' parameter of draw must be an int in \[1, inf\]"):
        draw(LAW, 0)
    with pytest.raises(TypeError, match=r"'law' parameter of draw must be a softhard Law"):
        draw(None, 10)
