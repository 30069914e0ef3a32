"""Profiled hard risk and its shape gradient (Prop. 5.10 in computable form, docs/shape_derivative.md)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softhard import (
    Gaussian,
    GaussianMixture,
    LinearExperts,
    LinearRouter,
    MLPRouter,
    MoE,
    PartitionTeacher,
    Uniform,
    binary_problem,
    hard_risk,
    profiled_hard_risk,
    shape_derivative,
    shape_gradient,
    voronoi3_problem,
)
from softhard.closed import moments

F64 = torch.float64
PROBLEMS = {"binary": binary_problem, "voronoi3": voronoi3_problem}


def _router(K, seed):
    g = torch.Generator().manual_seed(seed)
    return LinearRouter(torch.randn(K, 2, generator=g, dtype=F64), 0.3 * torch.randn(K, generator=g, dtype=F64))


def _mc_moments(mean, L, A, alpha, n=400_000, seed=0):
    """Monte Carlo E[x̃⊗x̃⊗x̃ 1{A x + α > 0}] with per-entry standard errors."""
    rng = np.random.default_rng(seed)
    x = mean + rng.standard_normal((n, L.shape[1])) @ L.T
    xt = np.concatenate([x, np.ones((n, 1))], 1)
    ind = np.all(x @ A.T + alpha > 0, axis=1)
    terms = np.einsum("n,na,nb,nc->nabc", ind.astype(float), xt, xt, xt).reshape(n, -1)
    return terms.mean(0).reshape((xt.shape[1],) * 3), (terms.std(0) / math.sqrt(n)).reshape((xt.shape[1],) * 3)


@pytest.mark.parametrize("case", ["polygon", "interval", "hyperplane"])
def test_region_moments_match_monte_carlo(case):
    mean = np.array([0.3, -0.2])
    L = np.array([[1.0, 0.0], [0.4, 0.8]])
    if case == "polygon":
        A, alpha = np.array([[1.0, 0.3], [-0.2, 1.0], [0.5, -1.0]]), np.array([0.2, -0.1, 0.7])
    elif case == "interval":
        A, alpha = np.array([[1.0, 0.5], [-2.0, -1.0]]), np.array([0.3, 1.0])
    else:  # a law on a line (rank-one factor), as after conditioning on an interface
        L = np.array([[0.6, 0.0], [-0.9, 0.0]])
        A, alpha = np.array([[1.0, 0.2], [0.0, 1.0]]), np.array([0.1, 0.4])
    T, _ = moments.region_moments(mean, L, A, alpha)
    mc, se = _mc_moments(mean, L, A, alpha)
    assert np.all(np.abs(T - mc) <= 5 * se + 1e-12)
    assert 0.05 < T[-1, -1, -1] < 0.95  # a non-trivial region


@settings(max_examples=25)
@given(st.lists(st.tuples(st.floats(-3, 3), st.floats(-1, 1), st.floats(-1, 1)), min_size=1, max_size=5))
def test_polygon_quadrature_is_converged(rows):
    A = np.array([[c, s] for _, c, s in rows])
    if np.any(np.linalg.norm(A, axis=1) < 1e-3):
        return
    A /= np.linalg.norm(A, axis=1)[:, None]
    alpha = np.array([a for a, _, _ in rows])
    T = moments._polygon_moments(A, alpha)
    ref = moments._polygon_moments(A, alpha, nodes=64)
    assert np.max(np.abs(T - ref)) < 1e-12
    assert -1e-14 <= T[2, 2, 2] <= 1 + 1e-14


@pytest.mark.parametrize("name", PROBLEMS)
def test_profiled_hard_risk_exact_matches_monte_carlo(name):
    prob = PROBLEMS[name]()
    r = _router(prob.num_experts, 3)
    ex = profiled_hard_risk(r, prob.teacher, prob.law)
    mc = profiled_hard_risk(r, prob.teacher, prob.law, method="mc", n=1 << 16, seed=5)
    assert ex.risk.stderr == 0.0 and ex.risk.method == "exact"
    assert abs(ex.risk.value - mc.risk.value) <= 5 * mc.risk.stderr
    assert np.allclose(ex.cell_mass.sum(), 1.0, atol=1e-12)
    # the profiled experts are optimal: any other affine experts do worse (exact hard risk)
    worse = LinearExperts(ex.experts.weight + 0.05, ex.experts.bias - 0.05)
    assert hard_risk(MoE(r, worse), prob.teacher, prob.law, method="exact").value > ex.risk.value
    assert hard_risk(ex.moe(r), prob.teacher, prob.law, method="exact").value == pytest.approx(ex.risk.value, 1e-12)


def test_exact_hard_risk_matches_monte_carlo():
    prob = voronoi3_problem(noise_std=0.5)
    student = prob.student(seed=4)
    ex = hard_risk(student, prob.teacher, prob.law, method="exact")
    mc = hard_risk(student, prob.teacher, prob.law, n=1 << 16, seed=1)
    assert abs(ex.value - mc.value) <= 5 * mc.stderr
    assert ex.value > 0.25  # includes σ² = 0.25


def _fd_profile(router_factory, W, b, eps=1e-5, **kw):
    def L(Wx, bx):
        return profiled_hard_risk(router_factory(Wx, bx), **kw).risk.value

    gW, gb = np.zeros(W.shape), np.zeros(b.shape)
    for idx in np.ndindex(*W.shape):
        E = torch.zeros_like(W)
        E[idx] = eps
        gW[idx] = (L(W + E, b) - L(W - E, b)) / (2 * eps)
    for k in range(len(b)):
        E = torch.zeros_like(b)
        E[k] = eps
        gb[k] = (L(W, b + E) - L(W, b - E)) / (2 * eps)
    return np.concatenate([gW.ravel(), gb])


@pytest.mark.parametrize("name", PROBLEMS)
@pytest.mark.parametrize("seed", [3, 11])
def test_shape_gradient_matches_finite_differences(name, seed):
    """Done-when: the shape gradient matches central finite differences of L_0^prof (< 2 % relative)."""
    prob = PROBLEMS[name]()
    r = _router(prob.num_experts, seed)
    g = shape_gradient(r, prob.teacher, prob.law)
    grad = np.concatenate([g["weight"].value.ravel(), g["bias"].value])
    fd = _fd_profile(LinearRouter, r.weight, r.bias, teacher=prob.teacher, law=prob.law)
    rel = np.linalg.norm(grad - fd) / np.linalg.norm(fd)
    assert rel < 0.02
    assert rel < 1e-5  # what it actually achieves (exact moments, ~1e-14)
    assert np.allclose(g["weight"].value.sum(0), 0, atol=1e-12)  # gauge: rows of the gradient sum to 0


def test_shape_gradient_chains_through_unit_router():
    prob = voronoi3_problem()
    student = prob.student(seed=2)
    r = student.router
    g = shape_gradient(r, prob.teacher, prob.law)
    fd = _fd_profile(lambda W, b: type(r)(W, b), r.weight.detach(), r.bias.detach(), teacher=prob.teacher,
                     law=prob.law)
    grad = np.concatenate([g["weight"].value.ravel(), g["bias"].value])
    assert np.linalg.norm(grad - fd) / np.linalg.norm(fd) < 1e-5
    # scale invariance of the unit router: the gradient is orthogonal to the raw weight
    assert abs(float(np.sum(g["weight"].value * r.weight.detach().numpy()))) < 1e-10


def test_one_sided_derivative_at_a_teacher_interface():
    """At the teacher partition the hard risk has a kink: both one-sided derivatives are positive (§2 of the doc)."""
    prob = binary_problem()
    ts = prob.teacher_student()
    r = ts.router.as_linear()
    experts = prob.teacher.moe.experts
    with pytest.raises(ValueError, match="one-sided derivatives"):
        shape_gradient(r, prob.teacher, prob.law, experts=experts)
    dW = torch.tensor([[0.0, 0.3], [0.0, -0.3]], dtype=F64)  # rotate the interface
    db = torch.tensor([0.2, -0.2], dtype=F64)  # and shift it
    for sign in (1.0, -1.0):
        d = shape_derivative(r, prob.teacher, prob.law, (sign * dW, sign * db), experts=experts)
        t = 1e-6
        moved = LinearRouter(r.weight + sign * t * dW, r.bias + sign * t * db)
        fd = (hard_risk(MoE(moved, experts), prob.teacher, prob.law, method="exact").value
              - hard_risk(MoE(r, experts), prob.teacher, prob.law, method="exact").value) / t
        assert d > 0.1
        assert d == pytest.approx(fd, rel=1e-3)


def test_directional_derivative_is_the_gradient_where_transverse():
    prob = voronoi3_problem()
    r = _router(3, 7)
    g = shape_gradient(r, prob.teacher, prob.law)
    gen = torch.Generator().manual_seed(0)
    dW, db = torch.randn(3, 2, generator=gen, dtype=F64), torch.randn(3, generator=gen, dtype=F64)
    d = shape_derivative(r, prob.teacher, prob.law, {"weight": dW, "bias": db})
    assert d == pytest.approx(float(np.sum(g["weight"].value * dW.numpy()) + g["bias"].value @ db.numpy()),
                              rel=1e-9, abs=1e-12)


def test_monte_carlo_shape_gradient_matches_exact():
    prob = binary_problem()
    r = _router(2, 3)
    ex = shape_gradient(r, prob.teacher, prob.law)
    h = 0.05
    mc = shape_gradient(r, prob.teacher, prob.law, method="mc", n=1 << 17, seed=2, bandwidth=h)
    for k in ("weight", "bias"):
        # 5 standard errors plus the O(h²) slab bias (bounded generously by 2h² times the gradient scale)
        tol = 5 * mc[k].stderr + 2 * h * h * np.abs(ex[k].value).max()
        assert np.all(np.abs(mc[k].value - ex[k].value) <= tol)
        assert mc[k].n == 1 << 17


def test_mixture_law_is_the_weighted_sum():
    prob = binary_problem()
    r = _router(2, 5)
    a = Gaussian(torch.tensor([0.5, 0.0], dtype=F64))
    b = Gaussian(torch.tensor([-0.5, 0.3], dtype=F64), torch.tensor([[1.0, 0.2], [0.2, 0.5]], dtype=F64))
    mix = GaussianMixture([0.3, 0.7], torch.stack([a.mean, b.mean]), torch.stack([a.cov, b.cov]))
    ex = prob.teacher.moe.experts
    ga, gb, gm = (shape_gradient(r, prob.teacher, law, experts=ex)["weight"].value for law in (a, b, mix))
    assert np.allclose(gm, 0.3 * ga + 0.7 * gb, rtol=1e-10, atol=1e-13)


def test_bad_input():
    prob = voronoi3_problem()
    with pytest.raises(TypeError, match="'router' parameter of profiled_hard_risk must be a LinearRouter"):
        profiled_hard_risk(MLPRouter(2, 3), prob.teacher, prob.law)
    with pytest.raises(TypeError, match="'law' parameter"):
        profiled_hard_risk(_router(3, 0), prob.teacher, Uniform([-1.0, -1.0], [1.0, 1.0]))
    with pytest.raises(ValueError, match="'method' parameter of shape_gradient"):
        shape_gradient(_router(3, 0), prob.teacher, prob.law, method="quadrature")
    with pytest.raises(ValueError, match="'direction' parameter of shape_derivative"):
        shape_derivative(_router(3, 0), prob.teacher, prob.law, (torch.zeros(2, 2), torch.zeros(3)))
    # three cells in d = 3: more than two whitened directions -> refused with a pointer to "mc"
    centers = torch.tensor([[1.0, 0.2, -0.5], [0.1, 1.0, 0.3], [-0.4, 0.6, 1.0]], dtype=F64)
    t3 = PartitionTeacher.voronoi(centers, LinearExperts(torch.eye(3, dtype=F64)))
    r3 = LinearRouter(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="method='mc'"):
        profiled_hard_risk(r3, t3, Gaussian.standard(3))
    with pytest.raises(ValueError, match="'bandwidth' parameter"):
        shape_gradient(_router(3, 0), prob.teacher, prob.law, method="mc", bandwidth=0.0)
