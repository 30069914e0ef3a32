"""Input laws: moments within 5 standard errors, densities against SciPy, the uniform maps, bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from softhard import Empirical, Gaussian, GaussianMixture, Uniform, mean_estimate, monte_carlo

S3 = torch.tensor([[2.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 0.5]], dtype=torch.float64)
M3 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def mixture():
    return GaussianMixture([0.3, 0.7], [[0.0, 1.0, 0.0], [2.0, -1.0, 1.0]],
                           torch.stack([S3, torch.diag(torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64))]))


def uniform():
    return Uniform([-1.0, 0.0, 2.0], [1.0, 3.0, 2.5])


def empirical():
    pts = torch.randn(50, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 + 1
    return Empirical(pts)


def true_moments(law):
    """Mean (d,) and covariance (d, d), computed by hand from the parameters."""
    if isinstance(law, Gaussian):
        return law.mean, law.cov
    if isinstance(law, GaussianMixture):
        w = law.weights
        ms = torch.stack([c.mean for c in law.components])
        m = w @ ms
        second = sum(wc * (c.cov + torch.outer(c.mean, c.mean)) for wc, c in zip(w, law.components))
        return m, second - torch.outer(m, m)
    if isinstance(law, Uniform):
        return (law.low + law.high) / 2, torch.diag((law.high - law.low) ** 2 / 12)
    p = law.points  # Empirical: uniform over the rows (population covariance)
    m = p.mean(0)
    return m, (p - m).T @ (p - m) / p.shape[0]


LAWS = {"gaussian": lambda: Gaussian(M3, S3), "mixture": mixture, "uniform": uniform, "empirical": empirical}


def moment_terms(m):
    """Per-sample terms whose expectations are the mean and the covariance (centred at the true mean)."""
    def terms(x):
        c = x - m
        return torch.cat([x, (c[:, :, None] * c[:, None, :]).flatten(1)], 1)
    return terms


def check_moments(est, law):
    m, S = true_moments(law)
    truth = torch.cat([m, S.flatten()]).numpy()
    z = np.abs(np.asarray(est.value) - truth) / np.maximum(np.asarray(est.stderr), 1e-300)
    assert np.all(z <= 5), (law, z.max())


@pytest.mark.parametrize("name", LAWS)
def test_sample_moments(name):
    law = LAWS[name]()
    x = law.sample(40_000, torch.Generator().manual_seed(1))
    assert x.shape == (40_000, 3) and x.dtype == torch.float64
    check_moments(mean_estimate(moment_terms(true_moments(law)[0])(x)), law)


@pytest.mark.parametrize("name", LAWS)
def test_from_uniform_is_the_same_law(name):
    law = LAWS[name]()
    est = monte_carlo(moment_terms(true_moments(law)[0]), law, 1 << 14, seed=3, method="qmc", scrambles=8)
    check_moments(est, law)


def test_gaussian_from_uniform_is_the_inverse_cdf_map():
    law = Gaussian(M3, S3)
    L = law.scale_tril
    assert torch.allclose(L @ L.T, S3, atol=1e-14)
    z = torch.tensor([[0.3, -1.2, 2.0], [0.0, 0.5, -0.7]], dtype=torch.float64)
    u = torch.from_numpy(stats.norm.cdf(z.numpy()))
    assert torch.allclose(law.from_uniform(u), M3 + z @ L.T, atol=1e-12)


def test_standard_gaussian_shortcut_gives_the_same_numbers():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(100, 4, generator=g, dtype=torch.float64)
    assert torch.equal(Gaussian.standard(4).sample(100, torch.Generator().manual_seed(0)), z)
    # a non-standard law goes through the affine map
    shifted = Gaussian(torch.ones(4, dtype=torch.float64))
    assert torch.equal(shifted.sample(100, torch.Generator().manual_seed(0)), 1 + z)


def test_log_prob_against_scipy():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [3.0, 1.0, -1.0], [0.5, 2.9, 2.2]], dtype=torch.float64)
    g = Gaussian(M3, S3)
    ref = stats.multivariate_normal(M3.numpy(), S3.numpy()).logpdf(x.numpy())
    assert np.allclose(g.log_prob(x).numpy(), ref, rtol=1e-12)
    assert np.allclose(g.density(x).numpy(), np.exp(ref), rtol=1e-12)

    mix = mixture()
    parts = [math.log(w) + stats.multivariate_normal(c.mean.numpy(), c.cov.numpy()).logpdf(x.numpy())
             for w, c in zip(mix.weights.tolist(), mix.components)]
    assert np.allclose(mix.log_prob(x).numpy(), logsumexp(parts, axis=0), rtol=1e-12)

    u = uniform()
    ref = stats.uniform(u.low.numpy(), (u.high - u.low).numpy()).logpdf(x.numpy()).sum(1)
    assert np.array_equal(np.isinf(ref), np.isinf(u.log_prob(x).numpy()))
    assert np.allclose(u.log_prob(x).numpy()[~np.isinf(ref)], ref[~np.isinf(ref)], rtol=1e-14)


def test_singular_gaussian_samples_but_has_no_density():
    v = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    law = Gaussian(torch.zeros(3), torch.outer(v, v))  # rank 1: X = Z v
    x = law.sample(1000, torch.Generator().manual_seed(0))
    ratio = x / v
    assert torch.allclose(ratio, ratio[:, :1].expand(-1, 3), atol=1e-10)
    assert float(ratio[:, 0].std()) == pytest.approx(1.0, abs=5 * math.sqrt(2 / 1000))
    with pytest.raises(ValueError, match=r"'cov' parameter of Gaussian.log_prob must be positive definite"):
        law.log_prob(torch.zeros(1, 3))


def test_mixture_skips_zero_weight_components():
    law = GaussianMixture([0.5, 0.0, 0.5], [[-100.0], [0.0], [100.0]])
    x = law.sample(2000, torch.Generator().manual_seed(0))
    assert bool((x.abs() > 90).all())
    assert 900 < int((x > 0).sum()) < 1100  # Binomial(2000, 1/2): 4.5 standard deviations


def test_empirical_rows_and_sampling():
    pts = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], dtype=torch.float64)
    law = Empirical(pts)
    assert torch.equal(law.rows(), pts)
    x = law.sample(300, torch.Generator().manual_seed(0))
    assert all(any(torch.equal(r, p) for p in pts) for r in x)
    u = torch.tensor([[0.0], [0.34], [0.99]], dtype=torch.float64)
    assert torch.equal(law.from_uniform(u), pts)  # floor(u N) picks row 0, 1, 2


@pytest.mark.parametrize("make, match", [
    (lambda: Gaussian([0.0, 0.0], [[1.0, 0.5], [0.0, 1.0]]), r"'cov' parameter of Gaussian must be symmetric"),
    (lambda: Gaussian([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]]), r"'cov' parameter of Gaussian must be positive semi-def"),
    (lambda: Gaussian([0.0, 0.0], [[1.0, 0.0, 0.0]]), r"'cov' parameter of Gaussian must be a \(2, 2\) matrix"),
    (lambda: Gaussian([0.0, 0.0], [[1.0, math.nan], [math.nan, 1.0]]), r"'cov' parameter of Gaussian must be finite"),
    (lambda: Gaussian([[0.0, 0.0]]), r"'mean' parameter of Gaussian must be a 1-d array"),
    (lambda: Gaussian(0.0), r"'mean' parameter of Gaussian must be a 1-d array"),
    (lambda: Gaussian([math.inf]), r"'mean' parameter of Gaussian must be finite"),
    (lambda: Gaussian.standard(0), r"'d' parameter of Gaussian.standard must be an int in \[1, inf\]"),
    (lambda: GaussianMixture([0.5, 0.6], [[0.0], [1.0]]), r"'weights' parameter of GaussianMixture .* summing to 1"),
    (lambda: GaussianMixture([1.5, -0.5], [[0.0], [1.0]]), r"'weights' parameter of GaussianMixture .*non-negative"),
    (lambda: GaussianMixture([0.5, 0.5], [[0.0], [1.0], [2.0]]), r"'means' parameter of GaussianMixture"),
    (lambda: GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [[[1.0]]]), r"'covs' parameter of GaussianMixture"),
    (lambda: GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [[[1.0]], [[-1.0]]]),
     r"'covs\[1\]' parameter of GaussianMixture must be positive semi-definite"),
    (lambda: Uniform([0.0, 1.0], [1.0, 1.0]), r"'high' parameter of Uniform must be strictly greater than low"),
    (lambda: Uniform([0.0, 1.0], [1.0]), r"'high' parameter of Uniform must be of the same shape as low"),
    (lambda: Uniform([], []), r"'low' parameter of Uniform must be a scalar or a non-empty 1-d array"),
    (lambda: Uniform([0.0, math.nan], [1.0, 2.0]), r"'low' parameter of Uniform must be finite"),
    (lambda: Empirical([1.0, 2.0]), r"'samples' parameter of Empirical must be an array of shape \(N, d\)"),
    (lambda: Empirical([[1.0, math.nan]]), r"'samples' parameter of Empirical must be finite"),
    (lambda: Gaussian.standard(2).sample(-1), r"'n' parameter of Gaussian.sample must be an int in \[0, inf\]"),
    (lambda: Gaussian.standard(2).log_prob(torch.zeros(4, 3)), r"'x' parameter of Gaussian.log_prob must be an array "
                                                               r"of shape \(N, 2\)"),
])
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()
