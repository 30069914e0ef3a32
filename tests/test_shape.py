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
    ParamSpace,
    PartitionTeacher,
    Uniform,
    UnitLinearRouter,
    binary_problem,
    hard_derivatives,
    hard_risk,
    profiled_hard_risk,
    shape_derivative,
    shape_gradient,
    shape_hessian,
    shape_hessian_matrix,
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


def _kink_case(name):
    """(router, teacher, law, experts, (dW, db)) with the student's interface on the teacher's, realizable."""
    if name == "voronoi3":  # K = 3, correlated law, three oblique interfaces meeting off the mean
        prob = voronoi3_problem()
        r = prob.teacher_student().router.as_linear()
        g = torch.Generator().manual_seed(1)
        return r, prob.teacher, prob.law, prob.teacher.moe.experts, (torch.randn(3, 2, generator=g, dtype=F64),
                                                                      torch.randn(3, generator=g, dtype=F64))
    d = 3 if name == "correlated_3d" else 2
    v = {"axis": [1.0, 0.0], "oblique": [1.0, 0.3], "correlated": [1.0, 0.3], "correlated_3d": [1.0, 0.3, -0.5]}[name]
    v, b = torch.tensor(v, dtype=F64), (0.0 if name in ("axis", "oblique") else 0.37)
    if name.startswith("correlated"):
        S = torch.tensor([[1.0, 0.4, 0.1], [0.4, 0.7, -0.2], [0.1, -0.2, 1.3]], dtype=F64)[:d, :d]
        law = Gaussian(torch.tensor([0.2, -0.1, 0.3], dtype=F64)[:d], S)
    else:
        law = Gaussian.standard(d)
    experts = LinearExperts(torch.tensor([[1.0, 1.0, 0.5], [-1.0, -1.0, 0.2]], dtype=F64)[:, :d], [1.0, -1.0])
    teacher = PartitionTeacher(MoE(LinearRouter.binary(v, b), experts))
    r = LinearRouter.binary(v, b)
    dW = torch.tensor([[0.0, 0.3, 0.2], [0.0, -0.3, -0.2]], dtype=F64)[:, :d]  # rotate the interface
    return r, teacher, law, experts, (dW, torch.tensor([0.2, -0.2], dtype=F64))  # and shift it


def _one_sided_fd(r, teacher, law, experts, direction, t=1e-4):
    """Richardson-extrapolated one-sided difference (2D(t) − D(2t), error O(t²)) of the exact hard risk."""
    def L(s):
        moved = LinearRouter(r.weight + s * direction[0], r.bias + s * direction[1])
        return hard_risk(MoE(moved, experts), teacher, law, method="exact").value

    L0 = L(0.0)
    return 2 * (L(t) - L0) / t - (L(2 * t) - L0) / (2 * t)


def _line_integral(r, law, experts, direction):
    """Realizable teacher at its own partition: both one-sided derivatives are ψ(0)E[|s|(h_1 − h_2)² | g = 0] =
    ∫_{g=0} |s| D² p/|∇g| dH¹ (doc §2) — here by SciPy quadrature along the line (d = 2), another route than the
    polyhedral moments of the conditioned law."""
    from scipy.integrate import quad
    from scipy.stats import multivariate_normal

    v, c = (r.weight[0] - r.weight[1]).numpy(), float(r.bias[0] - r.bias[1])
    ev, ec = (direction[0][0] - direction[0][1]).numpy(), float(direction[1][0] - direction[1][1])
    dw, db = (experts.weight[0] - experts.weight[1]).numpy(), float(experts.bias[0] - experts.bias[1])
    D = lambda x: float(dw @ x + db)  # noqa: E731
    x0, p = -c * v / (v @ v), np.array([-v[1], v[0]]) / np.linalg.norm(v)
    pdf = multivariate_normal(law.mean.numpy(), law.cov.numpy()).pdf
    f = lambda y: abs(ev @ (x0 + y * p) + ec) * D(x0 + y * p) ** 2 * pdf(x0 + y * p)  # noqa: E731
    return quad(f, -12, 12, epsabs=0, epsrel=1e-12, limit=200)[0] / np.linalg.norm(v)


@pytest.mark.parametrize("name", ["axis", "oblique", "correlated", "correlated_3d", "voronoi3"])
def test_one_sided_derivative_at_a_teacher_interface(name):
    """At the teacher partition the hard risk has a kink: both one-sided derivatives are positive (§2 of the doc).

    Before the rank-revealing factor of the conditioned law only "axis" (x_1 = 0 under N(0, I_2), where Cholesky of
    the rank-1 conditional covariance fails) was right: for an oblique or correlated interface Cholesky succeeded
    with a rounding-level pivot, the coinciding teacher constraint looked non-constant on the interface and the
    two traces were averaged (oblique: ∓2.5e-8 instead of +2.1048 both ways), and shape_gradient did not refuse.
    References: Richardson one-sided differences of the exact hard risk; for d = 2 binary cases also SciPy
    quadrature of ψ(0)E[|s|(h_1 − h_2)² | g = 0] along the interface."""
    r, teacher, law, experts, (dW, db) = _kink_case(name)
    with pytest.raises(ValueError, match="one-sided derivatives"):
        shape_gradient(r, teacher, law, experts=experts)
    for sign in (1.0, -1.0):
        direction = (sign * dW, sign * db)
        d = shape_derivative(r, teacher, law, direction, experts=experts)
        assert d > 0.1
        assert d == pytest.approx(_one_sided_fd(r, teacher, law, experts, direction), rel=1e-6)
        if law.d == 2 and name != "voronoi3":
            assert d == pytest.approx(_line_integral(r, law, experts, direction), rel=1e-10)
        # L_0(φ + tη)/t → D_η: at t = 1e-9 the student's interface is ~3e-10 rad off the teacher's, which the rank
        # test of region_moments (then 1e-9) took for parallel: 0.42·D_η in the oblique case
        t = 1e-9
        moved = MoE(LinearRouter(r.weight + t * direction[0], r.bias + t * direction[1]), experts)
        assert hard_risk(moved, teacher, law, method="exact").value / t == pytest.approx(d, rel=1e-6)


def test_exact_hard_risk_against_polar_quadrature():
    """Exact hard risk against an independent route: polar coordinates of the whitened law, radial integrals in
    closed form, angular Gauss–Kronrod (SciPy) split where the ray crosses a vertex or turns parallel to a line."""
    prob = voronoi3_problem()
    g = torch.Generator().manual_seed(3)
    cases = [(prob.student(seed=2, router="linear"), prob.teacher, prob.law),
             (MoE(_router(2, 5), LinearExperts(torch.randn(2, 2, generator=g, dtype=F64), [0.3, -0.2])),
              prob.teacher, Gaussian(torch.tensor([0.5, -1.0], dtype=F64), [[2.0, -0.6], [-0.6, 0.5]]))]
    for student, tch, lw in cases:
        ex = hard_risk(student, tch, lw, method="exact").value
        ref = _polar_hard_risk(student, tch, lw)
        assert ex == pytest.approx(ref, rel=1e-13)


def test_exact_hard_risk_on_a_conditioned_law():
    """A law of rank 2 in R³ (N(0, I₃) conditioned on a plane): the hard risk equals the 2-D problem in the plane's
    coordinates. Before the rank-revealing factor, Cholesky left a spurious third column and the exact method
    refused ("3 directions")."""
    from softhard.closed.normal import condition_on_score

    g = torch.Generator().manual_seed(4)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    v = rnd(3)
    law3 = condition_on_score(Gaussian.standard(3), v, 0.2)
    B = torch.linalg.svd(law3.cov).U[:, :2] * torch.linalg.svd(law3.cov).S[:2].sqrt()  # X = m + B z, z ~ N(0, I₂)
    m = law3.mean
    WT, bT, ET, cT, W, b, E, c = rnd(2, 3), rnd(2), rnd(2, 3), rnd(2), rnd(3, 3), rnd(3), rnd(3, 3), rnd(3)
    ex = hard_risk(MoE(LinearRouter(W, b), LinearExperts(E, c)),
                   PartitionTeacher.linear(WT, bT, LinearExperts(ET, cT)), law3, method="exact").value
    ref = _polar_hard_risk(MoE(LinearRouter(W @ B, b + W @ m), LinearExperts(E @ B, c + E @ m)),
                           PartitionTeacher.linear(WT @ B, bT + WT @ m, LinearExperts(ET @ B, cT + ET @ m)),
                           Gaussian.standard(2))
    assert ex == pytest.approx(ref, rel=1e-13)


def _polar_hard_risk(student, teacher, law):
    """E[(f* − h_{k*})²] for d = 2 linear routers, affine experts, X ~ N(m, S), in polar coordinates of z (X = m + Lz):
    on each ray the cells are intervals of ρ and ∫(c₀ + c₁ρ)² ρ e^{−ρ²/2} dρ is closed form."""
    from scipy.integrate import quad
    from scipy.special import ndtr

    num = lambda t: t.detach().numpy()  # noqa: E731
    W, b = num(student.router.weight), num(student.router.bias)
    WT, bT = num(teacher.moe.router.weight), num(teacher.moe.router.bias)
    th = np.c_[num(student.experts.weight), num(student.experts.bias)]
    tt = np.c_[num(teacher.moe.experts.weight), num(teacher.moe.experts.bias)]
    m, L = law.mean.numpy(), np.linalg.cholesky(law.cov.numpy())
    routers = [(W @ L, W @ m + b), (WT @ L, WT @ m + bT)]
    lines = [(A[i] - A[j], a[i] - a[j]) for A, a in routers for i in range(len(A)) for j in range(i + 1, len(A))]

    def antiderivative(r, c0, c1):  # of (c0 + c1 ρ)² ρ e^{−ρ²/2}
        if r == np.inf:
            return 2 * c0 * c1 * math.sqrt(2 * math.pi)
        e = math.exp(-r * r / 2)
        return -c0 * c0 * e + 2 * c0 * c1 * (math.sqrt(2 * math.pi) * ndtr(r) - r * e) - c1 * c1 * (r * r + 2) * e

    def ray(a):
        e = np.array([math.cos(a), math.sin(a)])
        cuts = sorted({0.0, np.inf} | {-c / (n @ e) for n, c in lines if n @ e != 0 and -c / (n @ e) > 0})
        total = 0.0
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            mid = lo + 1.0 if hi == np.inf else (lo + hi) / 2
            k, km = (int(np.argmax(A @ e * mid + a)) for A, a in routers)
            dth = tt[km] - th[k]
            c0, c1 = dth[:-1] @ m + dth[-1], dth[:-1] @ (L @ e)
            total += antiderivative(hi, c0, c1) - antiderivative(lo, c0, c1)
        return total / (2 * math.pi)

    angles = {0.0, 2 * math.pi}
    for i, (n, c) in enumerate(lines):
        angles |= {math.atan2(n[0], -n[1]) % (2 * math.pi), math.atan2(-n[0], n[1]) % (2 * math.pi)}
        for n2, c2 in lines[i + 1:]:
            M = np.array([n, n2])
            if abs(np.linalg.det(M)) > 1e-14:
                p = np.linalg.solve(M, -np.array([c, c2]))
                angles.add(math.atan2(p[1], p[0]) % (2 * math.pi))
    angles = sorted(angles)
    return sum(quad(ray, a0 + (a1 - a0) * j / 4, a0 + (a1 - a0) * (j + 1) / 4, epsabs=1e-16, epsrel=1e-13,
                    limit=200)[0] for a0, a1 in zip(angles[:-1], angles[1:]) for j in range(4)) + teacher.noise_std ** 2


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


# ------------------------------------------------------------------------------------------------
# Second variation (docs/shape_derivative.md §7): central finite differences of the exact hard risk


def _fd_mixed(L, x0, e1, e2, h):
    """Central second difference of L at x0 along (e1, e2), step h (error O(h²))."""
    return (L(x0 + h * e1 + h * e2) - L(x0 + h * e1 - h * e2) - L(x0 - h * e1 + h * e2) + L(x0 - h * e1 - h * e2)) / (
        4 * h * h)


def _richardson(L, x0, e1, e2, h=5e-4):
    """Richardson-extrapolated central second difference (error O(h⁴))."""
    return (4 * _fd_mixed(L, x0, e1, e2, h / 2) - _fd_mixed(L, x0, e1, e2, h)) / 3


CASES_H = {
    "binary": ([[0.8, 0.3], [-0.2, 0.1]], [0.3, -0.1], [[1.0, 0.5], [-0.7, -1.2]], [0.4, -0.6]),
    "voronoi3": ([[0.9, 0.2], [-0.5, 0.7], [-0.3, -0.8]], [0.1, -0.2, 0.15], [[1.0, 0.5], [-0.7, -1.2], [0.3, 0.2]],
                 [0.4, -0.6, 0.1]),
}


@pytest.mark.parametrize("name", ["binary", "voronoi3"])
def test_shape_hessian_matches_finite_differences(name):
    """K = 2 and K = 3 (with a triple junction and teacher crossings): exact second variation vs central FD."""
    prob = PROBLEMS[name]()
    W, b, E, c = (np.array(v, dtype=float) for v in CASES_H[name])
    K, d = W.shape
    ex = LinearExperts(E, c)
    router = LinearRouter(torch.tensor(W), torch.tensor(b))
    sv = shape_hessian_matrix(router, prob.teacher, prob.law, ex)
    assert sv.hessian.shape == (K * (d + 1),) * 2 and sv.asymmetry < 1e-12

    def L(vec):
        r = LinearRouter(torch.tensor(vec[:K * d].reshape(K, d)), torch.tensor(vec[K * d:]))
        return float(hard_risk(MoE(r, ex), prob.teacher, prob.law, method="exact").value)

    x0 = np.concatenate([W.ravel(), b])
    rng = np.random.default_rng(7)
    for _ in range(2):
        e1, e2 = rng.normal(size=len(x0)), rng.normal(size=len(x0))
        fd = _richardson(L, x0, e1, e2)
        assert abs(e1 @ sv.hessian @ e2 - fd) <= 1e-6 * (1 + abs(fd)), (e1 @ sv.hessian @ e2, fd)
        g_fd = (L(x0 + 1e-5 * e1) - L(x0 - 1e-5 * e1)) / 2e-5
        assert abs(sv.gradient @ e1 - g_fd) <= 1e-6 * (1 + abs(g_fd))
    # the directional form, both slots
    dW, db = torch.tensor(rng.normal(size=(K, d))), torch.tensor(rng.normal(size=K))
    dW2, db2 = torch.tensor(rng.normal(size=(K, d))), torch.tensor(rng.normal(size=K))
    h12 = shape_hessian(router, prob.teacher, prob.law, (dW, db), (dW2, db2), experts=ex)
    h21 = shape_hessian(router, prob.teacher, prob.law, {"weight": dW2, "bias": db2}, (dW, db), experts=ex)
    v1, v2 = np.concatenate([dW.numpy().ravel(), db.numpy()]), np.concatenate([dW2.numpy().ravel(), db2.numpy()])
    assert h12 == pytest.approx(v1 @ sv.hessian @ v2, rel=1e-12) and h12 == pytest.approx(h21, rel=1e-10)


def test_profiled_second_variation_and_the_binary_saddle():
    """Assumption 5.14: the profiled Hessian (full tangent (η, Dθ*η)) vs FD of the exact profiled risk, through a
    UnitLinearRouter under a mixture law; at the binary problem's saddle it has a negative eigenvalue."""
    prob = voronoi3_problem()
    mix = GaussianMixture([0.4, 0.6], [[0.3, -0.2], [-0.4, 0.5]],
                          [[[1.0, 0.2], [0.2, 0.6]], [[0.7, -0.1], [-0.1, 1.2]]])
    W, b = np.array(CASES_H["voronoi3"][0]), np.array(CASES_H["voronoi3"][1])
    router = UnitLinearRouter(torch.tensor(W), torch.tensor(b), scale=1.7)
    sv = shape_hessian_matrix(router, prob.teacher, mix, profiled=True)

    def Lp(vec):
        r = UnitLinearRouter(torch.tensor(vec[:6].reshape(3, 2)), torch.tensor(vec[6:]), scale=1.7)
        return float(profiled_hard_risk(r, prob.teacher, mix).risk.value)

    x0 = np.concatenate([W.ravel(), b])
    e1, e2 = np.random.default_rng(3).normal(size=(2, 9))
    fd = _richardson(Lp, x0, e1, e2)
    assert abs(e1 @ sv.hessian @ e2 - fd) <= 1e-6 * (1 + abs(fd))
    # the fixed-expert Hessian at the profiled experts is larger (profiling only lowers the curvature)
    fixed = shape_hessian_matrix(router, prob.teacher, mix)
    assert np.linalg.eigvalsh(fixed.hessian - sv.hessian).min() > -1e-9
    bp = binary_problem()
    sad = shape_hessian_matrix(bp.saddle().router, bp.teacher, bp.law, profiled=True)
    eig = sad.eigenvalues()
    assert eig[0] < -1.0 and eig[-1] > 0.05  # one descending direction (the mountain pass), one ascending
    assert np.sum(np.abs(eig) < 1e-10) == 4  # the gauge (3) and the scale of W: exact invariances


def test_hard_derivatives_in_parameter_space():
    """Gradient and Hessian of L_0 in all parameters (router raw + experts), against FD of the exact risk."""
    prob = binary_problem()
    student = prob.student(seed=3)
    space = ParamSpace(student)
    g, H = hard_derivatives(student, prob.teacher, prob.law)
    v0 = space.vector().numpy()

    def L(v):
        return float(hard_risk(space.load(torch.tensor(v)), prob.teacher, prob.law, method="exact").value)

    e1, e2 = np.random.default_rng(0).normal(size=(2, len(v0)))
    fd = _richardson(L, v0, e1, e2)
    assert abs(e1 @ H @ e2 - fd) <= 1e-6 * (1 + abs(fd))
    assert abs(g @ e1 - (L(v0 + 1e-5 * e1) - L(v0 - 1e-5 * e1)) / 2e-5) <= 1e-6


def test_shape_hessian_refuses_where_it_does_not_exist():
    prob = binary_problem()
    ts = prob.teacher_student()  # the student interface is the teacher's: a kink
    with pytest.raises(ValueError, match="coincides with a teacher interface"):
        shape_hessian_matrix(ts.router, prob.teacher, prob.law, ts.experts)
    with pytest.raises(ValueError, match="coincides with a teacher interface"):
        hard_derivatives(ts, prob.teacher, prob.law)
    # a K = 3 student whose triple junction lies on a teacher interface: a degenerate junction
    vp = voronoi3_problem()
    WT, bT = vp.teacher.moe.router.weight.numpy(), vp.teacher.moe.router.bias.numpy()
    n01, c01 = WT[0] - WT[1], bT[0] - bT[1]
    p = -c01 * n01 / (n01 @ n01)  # a point of the teacher line between cells 0 and 1
    W = np.array([[1.0, 0.2], [-0.4, 0.9], [-0.5, -0.8]])
    b = np.array([0.0, (W[0] - W[1]) @ p, (W[0] - W[2]) @ p])  # all three logits tie at p
    with pytest.raises(ValueError, match="degenerate junction"):
        shape_hessian_matrix(LinearRouter(W, b), vp.teacher, vp.law, LinearExperts(np.eye(3, 2), [0.0, 0.1, 0.2]))
    with pytest.raises(TypeError, match="'experts' parameter of shape_hessian_matrix must be None when profiled"):
        shape_hessian_matrix(ts.router, prob.teacher, prob.law, ts.experts, profiled=True)
    with pytest.raises(TypeError, match="'router' parameter of shape_hessian must be a LinearRouter"):
        shape_hessian(MLPRouter(2, 2, (4,), seed=0), prob.teacher, prob.law, (torch.zeros(2, 2), torch.zeros(2)))
    r = _router(2, 0)
    with pytest.raises(ValueError, match="'direction2' parameter of shape_hessian must be tensors"):
        shape_hessian(r, prob.teacher, prob.law, (torch.zeros(2, 2), torch.zeros(2)), (torch.zeros(3, 2),
                                                                                       torch.zeros(2)))


def test_product_moments_match_monte_carlo():
    """closed.moments.product_moment (order 4 over a slab, a rank-deficient factor) against plain sampling."""
    rng = np.random.default_rng(0)
    mean, L = rng.normal(size=3), np.tril(rng.normal(size=(3, 3)))
    L[:, 0] = 0.0
    A = rng.normal(size=(1, 3))
    A = np.concatenate([A, -2 * A])
    alpha = np.array([0.3, 0.4])
    F = rng.normal(size=(3, 4, 4))
    val, tied = moments.product_moment(mean, L, F, A, alpha)
    z = rng.normal(size=(400_000, 3))
    x = mean + z @ L.T
    xt = np.c_[x, np.ones(len(x))]
    ind = np.all(x @ A.T + alpha > 0, 1)
    for k in range(3):
        t = np.prod(xt @ F[k].T, 1) * ind
        assert abs(val[k] - t.mean()) <= 5 * t.std() / math.sqrt(len(t)), (val[k], t.mean())
    assert not tied
