"""Shared checks over one registry of every router, expert family, law and estimator.

Shapes, float64, determinism in the seed (same seed → same result, another seed → another result) and
bad parameters raising an error that names the parameter.
"""

import numpy as np
import pytest
import torch
from torch import nn

from softhard import (
    ConstantExperts,
    Empirical,
    Gaussian,
    GaussianMixture,
    LinearExperts,
    LinearRouter,
    MLPExperts,
    MLPRouter,
    Uniform,
    ambiguity_mass,
    as_experts,
    as_router,
    boundary_mass,
)

D, K, N = 4, 3, 64
F64 = torch.float64


def _fixed(*shape):
    return torch.linspace(-1.0, 1.0, int(np.prod(shape)), dtype=F64).reshape(shape)


def _module():
    lin = nn.Linear(D, K, dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(_fixed(K, D))
        lin.bias.copy_(_fixed(K))
    return lin


# name -> (factory(seed), seeded): routers and experts are deterministic given their seed, if they have one
ROUTERS = {
    "LinearRouter": (lambda seed: LinearRouter(_fixed(K, D), _fixed(K)), False),
    "MLPRouter": (lambda seed: MLPRouter(D, K, hidden=(5,), seed=seed), True),
    "nn.Module": (lambda seed: as_router(_module()), False),
    "callable": (lambda seed: as_router(lambda x: torch.stack([x[:, 0], x[:, 1] - x[:, 2], x.sum(1)], 1), d=D), False),
}
EXPERTS = {
    "LinearExperts": (lambda seed: LinearExperts(_fixed(K, D), _fixed(K)), False),
    "ConstantExperts": (lambda seed: ConstantExperts([1.0, 2.0, 3.0]), False),
    "MLPExperts": (lambda seed: MLPExperts(D, K, hidden=4, seed=seed), True),
    "callable": (lambda seed: as_experts(lambda x: x[:, :K] ** 2, d=D), False),
}
LAWS = {
    "Gaussian": lambda: Gaussian(_fixed(D), torch.eye(D, dtype=F64) + 0.1),
    "GaussianMixture": lambda: GaussianMixture([0.2, 0.8], torch.stack([_fixed(D), -_fixed(D)])),
    "Uniform": lambda: Uniform(-torch.ones(D), 1 + _fixed(D).abs()),
    "Empirical": lambda: Empirical(_fixed(10, D)),
}
ESTIMATORS = {
    "boundary_mass(top2)": lambda r, law, **kw: boundary_mass(r, law, [0.01, 0.1], **kw),
    "boundary_mass(pairwise)": lambda r, law, **kw: boundary_mass(r, law, [0.01, 0.1], kind="pairwise", **kw),
    "ambiguity_mass": lambda r, law, **kw: ambiguity_mass(r, law, [0.005, 0.05], **kw),
}
X = Gaussian.standard(D).sample(N, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ROUTERS)
def test_routers(name):
    make, seeded = ROUTERS[name]
    r = make(0)
    a = r.logits(X)
    assert a.shape == (N, K) and a.dtype == F64 and (r.num_experts, r.d) == (K, D)
    assert torch.equal(make(0).logits(X), a)
    if seeded:
        assert not torch.equal(make(1).logits(X), a)
    with pytest.raises(ValueError, match=r"The 'x' parameter of \w+.logits must be an array of shape \(N, 4\)"):
        r.logits(torch.zeros(N, D + 1))


@pytest.mark.parametrize("name", EXPERTS)
def test_experts(name):
    make, seeded = EXPERTS[name]
    e = make(0)
    h = e.outputs(X)
    assert h.shape == (N, K) and h.dtype == F64 and e.num_experts == K
    assert torch.equal(make(0).outputs(X), h)
    if seeded:
        assert not torch.equal(make(1).outputs(X), h)
    if e.d is not None:
        with pytest.raises(ValueError, match=r"The 'x' parameter of \w+.outputs must be an array of shape \(N, 4\)"):
            e.outputs(torch.zeros(N, D + 1))


@pytest.mark.parametrize("name", LAWS)
def test_laws(name):
    law = LAWS[name]()
    x = law.sample(N, torch.Generator().manual_seed(1))
    assert x.shape == (N, D) and x.dtype == F64 and law.d == D
    assert torch.equal(law.sample(N, torch.Generator().manual_seed(1)), x)
    assert not torch.equal(law.sample(N, torch.Generator().manual_seed(2)), x)
    u = torch.rand(N, law.qmc_dim, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert law.from_uniform(u).shape == (N, D) and law.from_uniform(u).dtype == F64
    if not isinstance(law, Empirical):
        lp = law.log_prob(x)
        assert lp.shape == (N,) and lp.dtype == F64 and bool(torch.isfinite(lp).all())
    with pytest.raises(ValueError, match=rf"The 'n' parameter of {name}.sample must be an int in \[0, inf\]"):
        law.sample(-1)


@pytest.mark.parametrize("law_name", LAWS)
@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimators(name, law_name):
    est, law, router = ESTIMATORS[name], LAWS[law_name](), ROUTERS["MLPRouter"][0](0)
    e = est(router, law, method="mc", n=2000, seed=1)
    assert e.value.shape == e.stderr.shape == (2,) and e.value.dtype == np.float64 and e.n == 2000
    assert np.all((0 <= e.value) & (e.value <= 1)) and np.all(e.stderr >= 0)
    again = est(router, law, method="mc", n=2000, seed=1)
    assert np.array_equal(again.value, e.value) and np.array_equal(again.stderr, e.stderr)
    assert not np.array_equal(est(router, law, method="mc", n=2000, seed=2).value, e.value)
    fn = name.split("(")[0]
    with pytest.raises(ValueError, match=rf"The 'n' parameter of {fn} must be an int in \[1, inf\]"):
        est(router, law, n=0, seed=1)
    with pytest.raises(ValueError, match=rf"The 'seed' parameter of {fn} must be an int in \[0, inf\]"):
        est(router, law, n=10, seed=-1)
    with pytest.raises(ValueError, match=rf"The 'law' parameter of {fn} must be a law on R\^4"):
        est(router, Gaussian.standard(D + 1), n=10, seed=1)
