"""Issue 19, the closed forms: exact under ill-conditioning and in the tails, error bounds that bound, one law per
law, exact paths priced. Every reference is written here in 50-digit mpmath (or plain NumPy), from the inputs as
given (the float64 matrices are the exact problem), never from the library's own code."""

import math
import warnings

import mpmath
import numpy as np
import pytest
import torch

import softhard as sh
from softhard.closed import boundary, normal

mp = mpmath.mp
mp.dps = 50
LN2 = mpmath.log(2)


def _mpm(a):
    return mpmath.matrix(np.asarray(a, float).tolist())


def _quad_form(x, S, y):
    """xᵀSy in 50 digits from float64 inputs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return mpmath.fsum(mpmath.mpf(x[i]) * mpmath.mpf(S[i, j]) * mpmath.mpf(y[j])
                       for i in range(len(x)) for j in range(len(y)))


def _dot(x, m):
    return mpmath.fsum(mpmath.mpf(a) * mpmath.mpf(b) for a, b in zip(np.asarray(x, float), np.asarray(m, float)))


def ill_conditioned(d, cond, seed):
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]
    S = Q @ np.diag(np.geomspace(1, 1 / cond, d)) @ Q.T
    return (S + S.T) / 2


def mass_ref(a, b):
    """Φ(b) − Φ(a) in 50 digits (on the side where it does not cancel)."""
    a, b = mpmath.mpf(a), mpmath.mpf(b)
    return mpmath.ncdf(-a) - mpmath.ncdf(-b) if a > 0 else mpmath.ncdf(b) - mpmath.ncdf(a)


def within_bound(value, bound, ref):
    """|value − ref| ≤ bound (and the bound is no more than the value itself: it says something)."""
    err = abs(mpmath.mpf(float(value)) - ref)
    return err <= mpmath.mpf(float(bound)), float(err), float(bound)


# --------------------------------------------------------------------------- tail-accurate interval masses


def test_interval_masses_relative_1e_10_down_to_1e_300():
    rng = np.random.default_rng(0)
    worst = 0.0
    for z in range(38):
        for width in (1e-12, 1e-6, 1e-3, 0.05, 0.5, 3.0, math.inf):
            for sign in (1.0, -1.0):
                a, b = (z, z + width) if sign > 0 else (-z - width, -z)
                ref = mass_ref(a, b)
                if ref < mpmath.mpf("1e-300"):
                    continue
                v = normal.interval_mass(a, b)
                worst = max(worst, float(abs((v - ref) / ref)))
                assert float(normal.log_interval_mass(a, b)) == pytest.approx(float(mpmath.log(ref)), rel=1e-13)
        t = z + rng.random()  # a tensor, and the lower tail of Φ itself
        assert float(normal.normal_cdf(torch.tensor(-t, dtype=torch.float64))) == pytest.approx(
            float(mpmath.ncdf(-t)), rel=1e-12)
    assert worst < 1e-10, worst
    # far below the float64 range: the log is still right, the mass says 0 only as a float
    assert normal.log_interval_mass(50.0, 50.5) == pytest.approx(float(mpmath.log(mass_ref(50, 50.5))), rel=1e-14)


def test_reproducer_2_rare_boundary_mass_is_tail_accurate_and_underflow_is_an_error():
    """Issue 19, reproducer 2: β(0.001) of a binary router whose interface sits b standard deviations out
    (before: 2e-3 wrong at b = 7, 2.6 % at 7.5, exactly 0 from 8.3 on, all with error_bound 0)."""
    for b in (0.0, 7.0, 7.5, 8.3, 8.5, 20.0, 37.0):
        est = sh.boundary_mass(sh.LinearRouter.binary([1.0, 0.0], b=b), sh.Gaussian.standard(2), 0.001)
        ref = mass_ref(-b - 0.001, -b + 0.001)
        assert est.method == "exact" and float(abs((est.value - ref) / ref)) < 1e-10, b
        ok, err, bound = within_bound(est.value, est.error_bound, ref)
        assert ok and bound <= 1e-9 * est.value, (b, err, bound)
    with pytest.raises(normal.MassUnderflow, match=r"boundary_mass.*10\^-33\d.*below the float64 range"):
        sh.boundary_mass(sh.LinearRouter.binary([1.0, 0.0], b=39.0), sh.Gaussian.standard(2), 0.001)
    with pytest.raises(FloatingPointError):  # MassUnderflow is a FloatingPointError: never a silent 0
        sh.coarea_constant(sh.LinearRouter.binary([1.0, 0.0], b=40.0), sh.Gaussian.standard(2))


# --------------------------------------------------------------------------- ill-conditioned laws


def test_reproducer_1_gap_slope_under_condition_number_1e8():
    """Issue 19, reproducer 1: G₁ along the smallest-variance direction of a law with condition number 1e8 was
    −186.3 with error_bound 0. Reference: (2 ln 2 − 1) ψ(0) E[D² | g = 0], the conditional law of the contrast D
    from the bivariate normal (g, D) in 50 digits and E[D² | g = 0] by 1-d quadrature."""
    S = ill_conditioned(4, 1e8, 3)
    v = 2 * np.linalg.eigh(S)[1][:, 0]
    router = sh.LinearRouter.binary(v, b=0.3 * np.sqrt(v @ S @ v))
    E, c = np.random.default_rng(4).standard_normal((2, 4)), [0.2, -0.1]
    moe = sh.MoE(router, sh.LinearExperts(E, c))
    est = sh.gap_slope(moe, sh.Gaussian(np.zeros(4), S))
    dv = E[0] - E[1]
    vg, cgd, vd = _quad_form(v, S, v), _quad_form(v, S, dv), _quad_form(dv, S, dv)
    mg, md = mpmath.mpf(float(router.bias[0] - router.bias[1])), mpmath.mpf(c[0] - c[1])
    mu, var = md - cgd / vg * mg, vd - cgd ** 2 / vg
    ed2 = mpmath.quad(lambda x: x * x * mpmath.npdf(x, mu, mpmath.sqrt(var)), [-mpmath.inf, mu, mpmath.inf])
    ref = (2 * LN2 - 1) * mpmath.npdf(mg / mpmath.sqrt(vg)) / mpmath.sqrt(vg) * ed2
    assert float(ref) == pytest.approx(71.97, abs=0.005)
    assert est.method == "exact" and float(abs(est.value - ref) / ref) < 1e-8
    assert within_bound(est.value, est.error_bound, ref)[0]


def test_condition_numbers_to_1e12_keep_their_smallest_variance():
    for cond in (1e4, 1e8, 1e12):
        S = ill_conditioned(5, cond, 7)
        law = sh.Gaussian(np.zeros(5), S)
        v = np.linalg.eigh(S)[1][:, 0]  # the smallest-variance direction
        ref = mpmath.sqrt(_quad_form(v, S, v))
        # ψ(0) of a score along it, 3 standard deviations out, against 50 digits: exact to rounding (the score's
        # variance is vᵀSv correctly rounded from S as given, not through a factor that lost it)
        router = sh.LinearRouter.binary(v, b=3 * float(ref))
        psi = sh.coarea_constant(router, law)
        exact = mpmath.npdf(3) / ref
        assert float(abs(psi.value - exact) / exact) < 1e-12 and within_bound(psi.value, psi.error_bound, exact)[0]
        # the profile ψ(s) at s = 0 and 30 standard deviations further out (z = −33: 1e-237), same digits
        prof = sh.level_set_profile(router, law, [0.0, -30 * float(ref)])
        assert prof.method == "exact"
        for z, val, bound in zip((3, 33), prof.value, prof.error_bound):
            exact = mpmath.npdf(z) / ref
            assert float(abs(val - exact) / exact) < 1e-12 and within_bound(val, bound, exact)[0]
        # conditioning on a score through the factor: exactly zero variance along it, no S − SvvᵀS/s² residue
        cond_law = normal.condition_on_score(law, torch.tensor(v), 0.0, 0.0)
        assert float(torch.linalg.vector_norm(cond_law.factor.T @ torch.tensor(v))) <= 1e-15  # rounding of v·F only


def test_factor_laws_and_conditioning_are_exactly_rank_deficient():
    F = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1e-7]])
    law = sh.Gaussian.from_factor([1.0, 2.0, 3.0], F)
    assert law.factor.shape == (3, 3) and float(law.factor[:, 2].abs().max()) == 0.0  # padded with a zero column
    np.testing.assert_allclose(law.cov.numpy(), F @ F.T, rtol=0, atol=1e-300)
    with pytest.raises(ValueError, match=r"The 'factor' parameter of Gaussian.from_factor must be an array of shape"):
        sh.Gaussian.from_factor([0.0, 0.0], np.eye(3))


# --------------------------------------------------------------------------- one law per law


def test_reproducer_5_a_float32_law_is_one_law_for_every_method():
    """Issue 19, reproducer 5 (here: a binary router along the smallest-variance direction of a float32 law with
    condition number 1e8, w = 1e-4): exact 0.4300, conditional 0.4199, QMC 0.3674 before — three laws. Now one
    float64 factor on the law: every method within its errors of the 50-digit value."""
    S = ill_conditioned(4, 1e8, 3)
    v = 2 * np.linalg.eigh(S)[1][:, 0]
    b = 0.3 * np.sqrt(v @ S @ v)
    router = sh.LinearRouter.binary(v, b=b)
    law32 = sh.Gaussian(np.zeros(4), S, dtype=torch.float32)
    s = mpmath.sqrt(_quad_form(v, S, v))
    mg = mpmath.mpf(float(router.bias[0] - router.bias[1]))
    ref = mpmath.ncdf((1e-4 - mg) / s) - mpmath.ncdf((-1e-4 - mg) / s)
    assert law32.sample(4, np.random.default_rng(0)).dtype == torch.float32
    exact = sh.boundary_mass(router, law32, 1e-4, method="exact")
    assert exact.value == sh.boundary_mass(router, sh.Gaussian(np.zeros(4), S), 1e-4, method="exact").value
    assert within_bound(exact.value, exact.error_bound, ref)[0]
    for method in ("conditional", "score", "qmc"):
        est = sh.boundary_mass(router, law32, 1e-4, method=method, n=1 << 14, seed=1)
        assert abs(est.value - float(ref)) <= 5 * est.stderr + est.error_bound + 1e-9, (method, est)


# --------------------------------------------------------------------------- K = 2..6 against mpmath


@pytest.mark.parametrize("cond,z", [(1e12, 37.0), (1e8, 5.0), (1.0, 0.0)])
def test_exact_binary_beta_against_50_digits_any_law(cond, z):
    """K = 2 under a law given by its covariance (any direction, condition numbers to 1e12): the score's variance
    vᵀSv is correctly rounded from S as given, so β is relative-accurate to 1e-10 at 37σ."""
    S = ill_conditioned(4, cond, 5)
    v = np.random.default_rng(5).standard_normal(4)
    s = mpmath.sqrt(_quad_form(v, S, v))
    router = sh.LinearRouter.binary(v, b=z * float(s))
    mg = mpmath.mpf(float(router.bias[0] - router.bias[1]))
    w = 0.01 * float(s)
    ref = mass_ref((-w - mg) / s, (w - mg) / s)
    est = sh.boundary_mass(router, sh.Gaussian(np.zeros(4), S), w, method="exact")
    assert float(abs(est.value - ref) / ref) < 1e-10 and within_bound(est.value, est.error_bound, ref)[0]


def k3_reference(W, b, m, S, w):
    """β(w) of a K = 3 linear router ``W (3, 2)``, ``b (3,)`` under N(m, S) in d = 2, in 50 digits: the coarea sum
    over the three interfaces, each a 1-d integral across its band (also the reference of
    ``benchmarks/tail_accuracy.py``)."""
    L = mpmath.cholesky(_mpm(S))
    total = mpmath.mpf(0)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        k = 3 - i - j
        # the score differences, exactly (in 50 digits, not rounded to float64)
        rows = [([mpmath.mpf(W[x, t]) - mpmath.mpf(W[y, t]) for t in range(2)], mpmath.mpf(b[x]) - mpmath.mpf(b[y]))
                for x, y in ((i, j), (i, k), (j, k))]
        # in z (X = m + Lz): each row is μ + a·z; rotate so that z_1 runs along the first row
        a = [L.T * mpmath.matrix(r) for r, _ in rows]
        mu = [mpmath.fsum(r[t] * mpmath.mpf(m[t]) for t in range(2)) + c for r, c in rows]
        s0 = mpmath.norm(a[0])
        e1 = a[0] / s0
        e2 = mpmath.matrix([-e1[1], e1[0]])

        def band(u, a=a, mu=mu, e1=e1, e2=e2, s0=s0):  # u: g_ij/s0 standardised; the other two rows > 0
            lo, hi = -mpmath.inf, mpmath.inf
            for r in (1, 2):
                p, q = (a[r].T * e1)[0], (a[r].T * e2)[0]
                t = -(mu[r] + p * u) / q
                lo, hi = (max(lo, t), hi) if q > 0 else (lo, min(hi, t))
            return mpmath.npdf(u) * mass_ref(lo, hi) if hi > lo else mpmath.mpf(0)
        u_lo, u_hi = (-w - mu[0]) / s0, (w - mu[0]) / s0
        total += quad_scaled(band, mpmath.linspace(u_lo, u_hi, 9), (u_lo + u_hi) / 2)
    return total


@pytest.mark.parametrize("lead", [0.0, 30.0, 52.0])
def test_rank_two_law_k3_in_two_dimensions_any_shape(lead):
    """K = 3 in d = 2 (logits of rank 2, correlated, a law with condition number 1e10), from the bulk to β ≈ 1e-290:
    β is exact to rounding. Reference: the coarea sum over the three interfaces, each a 1-d integral across its
    band in 50 digits. (K = 3..6 with ranks 3..5 against 50-digit references: benchmarks/tail_accuracy.py.)"""
    S = ill_conditioned(2, 1e10, 11)
    lam, V = np.linalg.eigh(S)
    W = np.array([[1.0, 0.3], [-0.4, 1.0], [0.2, -0.8]]) @ np.stack([V[:, 1], V[:, 0] * 1e5])  # rows to 1e5
    b = np.array([lead, 0.0, 0.1])
    m = np.zeros(2)
    router, law = sh.LinearRouter(W, b), sh.Gaussian(m, S)
    w = 0.02
    total = k3_reference(W, b, m, S, w)
    est = sh.boundary_mass(router, law, w, method="exact")
    assert total > mpmath.mpf("1e-300") and float(abs(est.value - total) / total) < 1e-10
    assert within_bound(est.value, est.error_bound, total)[0]


def quad_scaled(f, pts, at):
    """mpmath.quad of f over the split ``pts``, with f divided by its value at ``at`` (mpmath's error control is
    absolute: an integrand of size 1e-167 would be integrated to a few digits only)."""
    c = f(at)
    if c == 0:
        return mpmath.quad(f, pts)
    return c * mpmath.quad(lambda y: f(y) / c, pts)


def test_gap_slope_and_surface_constant_far_in_the_tails():
    """An interface 30 standard deviations out: G₁ = (2 ln 2 − 1) ψ(0) E[D² | g = 0] and C_Σ = ψ(0) (K = 2),
    relative 1e-10 against 50 digits (before: the quadrature windows of ±12 s missed them)."""
    moe = sh.MoE(sh.LinearRouter.binary([1.0, 0.0], b=30.0), sh.LinearExperts([[0.0, 1.0], [0.0, -1.0]]))
    law = sh.Gaussian.standard(2)
    mg = float(moe.router.bias[0] - moe.router.bias[1])  # g = x_1 + m_g ~ N(m_g, 1)
    assert abs(mg) == 30.0
    psi = mpmath.npdf(30)
    g1 = sh.gap_slope(moe, law)
    assert float(abs(g1.value - (2 * LN2 - 1) * psi * 4) / ((2 * LN2 - 1) * psi * 4)) < 1e-10
    c = sh.interface_constant(moe.router, law)
    assert float(abs(c.value - psi) / psi) < 1e-10 and within_bound(c.value, c.error_bound, psi)[0]
    tau = 0.02  # the gap at small τ is G₁τ to first order: checked against a 50-digit quadrature
    e = lambda t: (1 if t >= 0 else 0) - 1 / (1 + mpmath.exp(-t / tau))  # noqa: E731
    pts = [s * tau * k for s in (-1, 1) for k in (64, 16, 4, 1)] + [0]
    ref = quad_scaled(lambda t: mpmath.npdf(t - mg) * e(t) * (4 * (1 if t >= 0 else 0) * 2 - 4 * (
        (1 if t >= 0 else 0) + 1 / (1 + mpmath.exp(-t / tau)))), sorted(pts), 0)
    gap = sh.risk_gap(moe, law, tau, method="exact")
    assert float(abs(gap.value - ref) / abs(ref)) < 1e-9 and within_bound(gap.value, gap.error_bound, ref)[0]


# --------------------------------------------------------------------------- pricing, progress, refusal


def test_exact_paths_are_priced_refused_when_too_long_and_show_progress(capsys):
    g = torch.Generator().manual_seed(1)
    big = sh.LinearRouter(torch.randn(64, 32, generator=g, dtype=torch.float64))
    law = sh.Gaussian.standard(32)
    # K = 64, d = 32: box probabilities of rank 31 — far beyond an hour; refused with the predicted time, before
    # any of the work
    with pytest.raises(ValueError, match=r"The 'max_seconds' parameter of boundary_mass_exact must be at least the "
                                         r"predicted time of this exact computation, [\d.e+]+ (min|h)"):
        sh.boundary_mass_exact(big, law, 0.01)
    # through the quantity: refused by the same price (by the closed form's guard, or by the registry's check of the
    # registered cost, whichever comes first)
    with pytest.raises(ValueError, match=r"parameter of boundary_mass must be .*predicted .*pass max_seconds="):
        sh.boundary_mass(big, law, 0.01, method="exact")
    assert boundary.boundary_mass_seconds(big, law, np.array([0.01])) > 3600
    # the price grows with the number of box probabilities: K(K-1)/2 bands at small w, K winners at large w
    small = sh.LinearRouter(torch.randn(5, 32, generator=g, dtype=torch.float64))
    t_band = boundary.boundary_mass_seconds(small, law, np.array([1e-3]))
    t_win = boundary.boundary_mass_seconds(small, law, np.array([3.0]))
    assert t_band / t_win == pytest.approx(10 / 5, rel=0.05)
    # a progress bar on request (and on its own past 10 s)
    k3 = sh.LinearRouter(torch.randn(3, 2, generator=g, dtype=torch.float64))
    sh.boundary_mass(k3, sh.Gaussian.standard(2), [1e-3, 0.1], method="exact", progress=True)
    assert "boundary_mass (exact" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"The 'max_seconds' parameter of boundary_mass must be a float"):
        sh.boundary_mass(k3, sh.Gaussian.standard(2), 0.1, method="exact", max_seconds=-1.0)


def test_box_probability_bounds_hold_for_randomised_integration():
    """A trivariate equicorrelated orthant (ρ = 1/2: 1/8 + 3 arcsin(1/2)/4π = 1/4) and a deep one (a 1-d integral
    reference): the 7-SE bound of the randomised lattice rule covers the error."""
    C = np.full((3, 3), 0.5) + 0.5 * np.eye(3)
    F = np.linalg.cholesky(C)
    p = normal.box_probability(np.zeros(3), F, 0.0)
    assert p.method == "sov" and abs(p.value - 0.25) <= p.bound <= 1e-6
    deep = normal.box_probability(np.zeros(3), F, 6.0, releps=1e-4, abseps=0.0)
    # Z_i = (W + E_i)/√2: P(Z > 6)³ jointly = ∫ φ(w) Q(6√2 − w)³ dw
    ref = mpmath.quad(lambda t: mpmath.npdf(t) * mpmath.ncdf(t - 6 * mpmath.sqrt(2)) ** 3, [-mpmath.inf, 0, 6, 12,
                                                                                          mpmath.inf])
    # deep and correlated, the SOV integrand varies most: 1e-4 relative asked, what was reached is the bound
    assert within_bound(deep.value, deep.bound, ref)[0] and deep.bound <= 1e-3 * deep.value


def test_mixture_and_singular_logits_exact():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = sh.LinearRouter([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [0.5, -0.5]])  # d = 2 < K − 1: rank 2
        mix = sh.GaussianMixture([0.4, 0.6], [[0.0, 0.0], [20.0, -20.0]], [np.eye(2), np.eye(2) * 1e-6])
        v, bound, forms = boundary.boundary_mass_closed(r, mix, [1e-3, 0.5])
        parts = [boundary.boundary_mass_closed(r, c, [1e-3, 0.5])[0] for c in mix.components]
        np.testing.assert_allclose(v, 0.4 * parts[0] + 0.6 * parts[1], rtol=1e-13)
        assert np.all(bound <= 1e-10 * v)  # rank 2: exact to rounding
