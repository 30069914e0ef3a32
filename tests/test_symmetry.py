"""symmetry.py: the two-expert Gaussian model, its exact linearisation, the reduced operator M (Lemmas 6.1/6.2,
Prop. 6.3), the linearised iteration and its rate (6.7)–(6.12), router-only training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad

from softhard import (
    TwoExpertGaussian,
    alignment,
    alignment_rate,
    alignment_ratio,
    draw,
    linear_iteration,
    operator_spectrum,
    reduced_operator,
    reduced_operator_mc,
    train_router,
)

F64 = torch.float64
SQ = math.sqrt(2 / math.pi)


def _t(x):
    return torch.tensor(x, dtype=F64)


def _model(d=3, seed=0, aniso=True):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64)
    cov = A @ A.T / d + 0.5 * torch.eye(d, dtype=F64) if aniso else torch.eye(d, dtype=F64)
    u, b0, c, w1, w2 = (torch.randn(d, generator=g, dtype=F64) for _ in range(5))
    return TwoExpertGaussian(cov, u, b0, c, w1, w2)


def _z(est, exact):
    return np.abs((np.asarray(est.value) - exact.numpy()) / np.asarray(est.stderr)).max()


def test_logistic_derivatives_at_zero():
    z = torch.zeros((), dtype=F64, requires_grad=True)
    (d1,) = torch.autograd.grad(torch.sigmoid(z), z, create_graph=True)
    (d2,) = torch.autograd.grad(d1, z)
    d1 = d1.detach()
    assert d1.item() == 0.25 and d2.item() == 0.0


THETAS = {"balanced": [0.0, 0.0, 0.0], "generic": [0.4, -0.3, 0.2], "large": [3.0, 1.0, -2.0]}


@pytest.mark.parametrize("where", list(THETAS))
def test_monte_carlo_matches_exact(where):
    m, th, tau = _model(), _t(THETAS[where]), 0.3
    ex = m.exact(th, tau)
    for est, exact in ((m.risk(th, tau, n=1 << 17, seed=1), torch.tensor(ex.risk)),
                       (m.gradient(th, tau, n=1 << 17, seed=2), ex.gradient),
                       (m.hessian(th, tau, n=1 << 17, seed=3), ex.hessian)):
        assert est.n == 1 << 17 and np.all(np.asarray(est.stderr) > 0)
        assert _z(est, exact) < 5.0


def test_linearisation_closed_form_matches_quadrature_and_risk_at_balance():
    m = _model(d=4, seed=5)
    tau = 0.2
    ex, lin = m.exact(torch.zeros(4, dtype=F64), tau), m.linearisation(tau)
    torch.testing.assert_close(ex.gradient, lin.drift, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ex.hessian, lin.hessian, rtol=1e-9, atol=1e-10)
    b = m.beta0 - (m.w1 + m.w2) / 2  # L(0) = bᵀΣb + cᵀΣc/4 (the cross term is odd)
    assert ex.risk == pytest.approx(float(b @ m.cov @ b + m.contrast @ m.cov @ m.contrast / 4), rel=1e-10)


@pytest.mark.parametrize("theta,tau", [([0.0, 0.0, 0.0], 0.5), ([0.4, -0.3, 0.2], 0.3), ([0.4, -0.3, 0.2], 0.02),
                                       ("u", 0.1)])
def test_exact_gradient_and_hessian_are_derivatives(theta, tau):
    m = _model()
    th = 2.0 * m.u if theta == "u" else _t(theta)  # θ ∥ u: the degenerate (rank-one) plane
    ex, h = m.exact(th, tau), 1e-4 * tau
    for i in range(3):
        e = torch.zeros(3, dtype=F64)
        e[i] = h
        up, dn = m.exact(th + e, tau), m.exact(th - e, tau)
        assert (up.risk - dn.risk) / (2 * h) == pytest.approx(float(ex.gradient[i]), rel=1e-6, abs=1e-7)
        torch.testing.assert_close((up.gradient - dn.gradient) / (2 * h), ex.hessian[i], rtol=1e-5, atol=1e-5)


def test_exact_is_converged_in_the_nodes():
    m = _model()
    th = _t([2.0, -1.0, 0.5])
    a, b = m.exact(th, 0.01, nodes=32), m.exact(th, 0.01, nodes=64)
    assert a.risk == pytest.approx(b.risk, rel=1e-12)
    torch.testing.assert_close(a.hessian, b.hessian, rtol=1e-9, atol=1e-9)


def test_linearisation_identity_case_by_hand():
    # Σ = I, u = e1, c = 2e2, δ = εc: drift = −(ε|c|²√(2/π)/(4τ)) u, H = (|δ|²I + 2δδᵀ)/(8τ²)
    d, tau, eps = 3, 0.25, 0.1
    e = torch.eye(d, dtype=F64)
    m = TwoExpertGaussian.around_shared(e, e[0], _t([0.3, 0.1, -0.2]), 2 * e[1], eps * 2 * e[1])
    lin = m.linearisation(tau)
    torch.testing.assert_close(lin.drift, -(eps * 4 * SQ / (4 * tau)) * e[0])
    delta2 = (2 * eps) ** 2
    torch.testing.assert_close(lin.eigenvalues, _t([3 * delta2, delta2, delta2]) / (8 * tau ** 2))
    assert float(lin.alignment[0]) == pytest.approx(0.0, abs=1e-12)  # top mode is δ ⟂ u
    assert lin.drift_alignment == pytest.approx(1.0)
    J = lin.jacobian(0.5)
    torch.testing.assert_close(torch.linalg.eigvalsh(J), (1 - 0.5 * lin.eigenvalues).sort().values)


def test_jacobian_warns_when_the_linear_descent_diverges():
    lin = _model().linearisation(0.1)
    eta = 2.5 / float(lin.eigenvalues[0])
    with pytest.warns(RuntimeWarning, match="diverges"):
        lin.jacobian(eta)


def test_fixed_point_of_the_linearised_descent():
    m = _model(seed=3)
    lin = m.linearisation(0.5)
    eta = 1.0 / float(lin.eigenvalues[0])
    J = lin.jacobian(eta)
    # θ_k = Σ_{j<k} J^j(−η∇L(0)) is the linearised descent from θ_0 = 0; doubling: θ_2k = J^k θ_k + θ_k
    th, Jk = -eta * lin.drift, J
    for _ in range(16):
        th, Jk = Jk @ th + th, Jk @ Jk
    torch.testing.assert_close(th, lin.fixed_point(), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(J @ lin.fixed_point() - eta * lin.drift, lin.fixed_point())


def test_reduced_operator_identity_eigenvalues():
    d, tau = 4, 0.3
    for u in (torch.eye(d, dtype=F64)[0], torch.nn.functional.normalize(_t([1.0, -2.0, 0.5, 3.0]), dim=0)):
        c = 0.7 * u + 0.4 * torch.linalg.svd(u[None]).Vh[1]  # c_u = 0.7, plus a part ⟂ u
        M = reduced_operator(torch.eye(d, dtype=F64), u, c, tau, "sign")
        spec = operator_spectrum(M, u)
        torch.testing.assert_close(spec.values, 0.7 * _t([SQ / tau] + [SQ / (2 * tau)] * (d - 1)))
        assert float(spec.alignment[0]) == pytest.approx(1.0)
        torch.testing.assert_close(M @ u, 0.7 * (SQ / tau) * u)


@pytest.mark.parametrize("response", ["sign", "tanh", lambda t: t ** 3 / (1 + t ** 2)])
@pytest.mark.parametrize("contrast", [[1.0, 2.0, 0.5], [-0.3, 1.0, 0.4]])
def test_reduced_operator_matches_monte_carlo(response, contrast):
    cov = _t([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])
    u, tau = _t([1.0, 0.5, -1.0]), 0.15
    est = reduced_operator_mc(cov, u, _t(contrast), tau, response, n=1 << 17, seed=4)
    assert _z(est, reduced_operator(cov, u, _t(contrast), tau, response)) < 5.0


def test_odd_moment_quadrature_against_closed_forms():
    cov, u, c = _t([[2.0, 0.6], [0.6, 1.0]]), _t([1.0, 0.5]), _t([1.0, 0.5])  # c_u = |u|
    torch.testing.assert_close(reduced_operator(cov, u, c, 0.2, torch.sign), reduced_operator(cov, u, c, 0.2, "sign"),
                               rtol=1e-12, atol=1e-12)
    # r(t) = t: E[T²] = σ², E[T⁴] = 3σ⁴, so M = (c_u/2τ)E[T²XXᵀ] = (c_u/2τ)(σ_u²Σ + 2ΣuuᵀΣ) (Isserlis)
    su = cov @ u
    expected = float(u.norm()) * (float(u @ su) * cov + 2 * torch.outer(su, su)) / (2 * 0.2)
    torch.testing.assert_close(reduced_operator(cov, u, c, 0.2, lambda t: t), expected, rtol=1e-12, atol=1e-12)
    # tanh(t/τ) → sign as τ → 0: M·τ converges to the sign operator·τ
    torch.testing.assert_close(reduced_operator(cov, u, c, 1e-7, "tanh"), reduced_operator(cov, u, c, 1e-7, "sign"),
                               rtol=1e-5, atol=0)


def test_sign_of_the_reduced_operator_is_the_sign_of_the_contrast_on_the_separator():
    """(6.8): M = c_u·M₁ with c_u = c·u/|u| — M ⪰ 0 for c_u > 0, ⪯ 0 for c_u < 0, 0 (with a warning: Prop. 6.3's
    hypothesis fails) for c ⟂ u. Before c_u was restored M was ⪰ 0 whatever the contrast."""
    cov = _t([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])
    u, tau = _t([1.0, 0.5, -1.0]), 0.3
    perp = _t([0.5, 0.0, 0.5])  # ⟂ u
    unit = reduced_operator(cov, u, u / u.norm(), tau)  # c_u = 1
    for c_u in (2.0, -0.7):
        c = c_u * u / u.norm() + 3.0 * perp
        M = reduced_operator(cov, u, c, tau)
        torch.testing.assert_close(M, c_u * unit, rtol=1e-12, atol=1e-14)
        lam = torch.linalg.eigvalsh(M)
        assert bool((c_u * lam > 0).all())  # definite, with the sign of c_u (Σ non-singular)
        assert math.copysign(1.0, float(u @ M @ u)) == math.copysign(1.0, c_u)
    with pytest.warns(RuntimeWarning, match="Prop. 6.3's hypothesis fails"):
        M0 = reduced_operator(cov, u, 3.0 * perp, tau)
    assert bool((M0 == 0).all())
    # the §7.3 anisotropic design: c = 2e_2 ⟂ u = e_1
    e = torch.eye(3, dtype=F64)
    with pytest.warns(RuntimeWarning, match="c·u = 0"):
        assert bool((reduced_operator(e, e[0], 2 * e[1], tau) == 0).all())


def _psd(entries, d):
    A = torch.tensor(entries, dtype=F64).reshape(d, d)
    return A @ A.T + 0.05 * torch.eye(d, dtype=F64)


floats = st.floats(-2, 2, allow_nan=False)


@settings(max_examples=25)
@given(st.integers(2, 4).flatmap(lambda d: st.tuples(st.just(d), st.lists(floats, min_size=d * d, max_size=d * d),
                                                     st.lists(floats, min_size=d, max_size=d),
                                                     st.lists(floats, min_size=d, max_size=d))),
       st.sampled_from(["sign", "tanh"]), st.floats(0.05, 2.0))
def test_lemma_6_1_and_prop_6_3(data, response, tau):
    d, entries, u, v = data
    cov, u, v = _psd(entries, d), _t(u), _t(v)
    if float(u.norm()) < 0.1:
        u = u + 1.0
    M = reduced_operator(cov, u, u, tau, response)  # c = u: c_u = |u|
    assert torch.allclose(M, M.T)
    # Lemma 6.1, with E[T r(T)] and E[T³ r(T)] from SciPy (an outside reference) or Lemma 6.2
    s = math.sqrt(float(u @ cov @ u))
    if response == "sign":
        m1, m3 = s * SQ, 2 * s ** 3 * SQ
    else:
        dens = lambda t: math.exp(-0.5 * (t / s) ** 2) / (s * math.sqrt(2 * math.pi))  # noqa: E731
        m1, m3 = (2 * quad(lambda t: t ** k * math.tanh(t / tau) * dens(t), 0, 12 * s, points=[tau], limit=200)[0]
                  for k in (1, 3))
    vs = float(v @ cov @ u)
    lemma = float(u.norm()) * (vs ** 2 / s ** 4 * m3 + (float(v @ cov @ v) - vs ** 2 / s ** 2) * m1) / (2 * tau)
    assert float(v @ M @ v) == pytest.approx(lemma, rel=1e-8, abs=1e-10)
    # Prop. 6.3 (c_u > 0): M ⪰ 0, and a positive eigenvalue has an eigenvector not orthogonal to u
    spec = operator_spectrum(M, u)
    assert float(spec.values[-1]) >= -1e-10 * float(spec.values[0])
    assert bool(((spec.values > 0) & (spec.alignment > 1e-8)).any())
    # c_u < 0: the mirror image, an eigenpair with λ < 0 and e·u ≠ 0
    spec = operator_spectrum(reduced_operator(cov, u, -0.5 * u, tau, response), u)
    assert float(spec.values[0]) <= 1e-10 * abs(float(spec.values[-1]))
    assert bool(((spec.values < 0) & (spec.alignment > 1e-8)).any())


@pytest.mark.parametrize("c_u", [1.0, -2.0])
def test_prop_6_3_leading_eigenvector_may_be_orthogonal_to_u(c_u):
    # Σ = diag(1, 100), u = e1, c = c_u e1 + 3e2: M = c_u(√(2/π)/2)diag(2, 100). The eigenpair Prop. 6.3 promises,
    # (λ, e) = (c_u√(2/π), e1) with sign λ = sign c_u and e·u = 1, exists; the leading eigenvector (c_u > 0) is
    # e2 ⟂ u — it refutes a "leading eigenvector" reading only
    u = _t([1.0, 0.0])
    spec = operator_spectrum(reduced_operator(torch.diag(_t([1.0, 100.0])), u, _t([c_u, 3.0]), 1.0), u)
    expected = c_u * SQ / 2 * _t([100.0, 2.0])
    order = [0, 1] if c_u > 0 else [1, 0]
    torch.testing.assert_close(spec.values, expected[order])
    k = order.index(1)  # the mode along e1
    assert float(spec.alignment[k]) == 1.0 and math.copysign(1.0, float(spec.values[k])) == c_u / abs(c_u)
    if c_u > 0:
        assert float(spec.alignment[0]) == 0.0 and float(spec.values[k]) > 0


def test_alignment_rate_matches_the_simulated_iteration_when_non_leading_modes_are_equal():
    d, tau, eta = 5, 0.2, 0.03
    u = torch.eye(d, dtype=F64)[0]
    M = reduced_operator(torch.eye(d, dtype=F64), u, u, tau)
    th0 = _t([0.05, 1.0, -0.5, 0.3, 0.2])
    ratio = alignment_ratio(linear_iteration(M, th0, eta, 200), u)
    rho = alignment_rate(M, eta)
    t = torch.arange(201, dtype=F64)
    torch.testing.assert_close(ratio, ratio[0] * torch.exp(-rho * t), rtol=1e-10, atol=0)
    assert rho == pytest.approx(math.log((1 + eta * SQ / tau) / (1 + eta * SQ / (2 * tau))))


def test_alignment_rate_bounds_and_asymptotics_in_general():
    cov = _t([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])
    u, tau, eta = _t([1.0, 0.5, -1.0]), 0.3, 0.02
    M = reduced_operator(cov, u, u / u.norm(), tau)
    spec = operator_spectrum(M, u)
    e1 = spec.vectors[:, 0]
    th = linear_iteration(M, _t([0.1, 1.0, 1.0]), eta, 150)
    ratio = alignment_ratio(th, e1)
    rho = alignment_rate(M, eta)
    t = torch.arange(151, dtype=F64)
    assert bool((ratio <= ratio[0] * torch.exp(-rho * t) * (1 + 1e-10)).all())  # (6.10) as a bound
    slope = float(torch.log(ratio[100] / ratio[150])) / 50
    assert slope == pytest.approx(rho, rel=1e-3)  # and the asymptotic rate
    assert slope > rho  # the faster-decaying third mode still contributes
    lam = spec.values
    small = 1e-4
    assert alignment_rate(M, small) == pytest.approx(small * float(lam[0] - lam[1]), rel=small * float(lam[0]))
    # the limit direction is e_1: the iteration ends aligned with it, not with u
    th = linear_iteration(M, _t([0.1, 1.0, 1.0]), eta, 600)
    assert float(alignment(th[-1], e1)) == pytest.approx(1.0, abs=1e-12)
    assert float(alignment(th[-1], u)) == pytest.approx(float(spec.alignment[0]), abs=1e-9)


@settings(max_examples=30)
@given(st.lists(floats, min_size=3, max_size=3), st.floats(1e-3, 1e3))
def test_alignment_properties(theta, scale):
    th, u = _t(theta), _t([1.0, -1.0, 0.5])
    a = float(alignment(th, u))
    assert 0.0 <= a <= 1.0 + 1e-12
    assert float(alignment(scale * th, -u)) == pytest.approx(a, abs=1e-12)
    if 1e-4 < a < 1 - 1e-4:  # tan from cos is well conditioned there
        assert float(alignment_ratio(th, u)) == pytest.approx(math.sqrt(1 - a * a) / a, rel=1e-8)


def test_training_first_step_is_the_monte_carlo_gradient_on_the_same_sample():
    m = _model(seed=2)
    th0, n, eta = _t([0.01, -0.02, 0.005]), 4096, 0.1
    x = draw(m.law, n, seed=9)
    threads = torch.get_num_threads()
    fit = train_router(m, x, th0, [0.3], eta, 1)
    assert torch.get_num_threads() == threads  # restored after the single-threaded loop
    grad = m.gradient(th0, 0.3, n=n, seed=9)  # the reducer averages over exactly draw(law, n, 9)
    torch.testing.assert_close(fit.theta[0], th0 - eta * torch.as_tensor(grad.value), rtol=1e-10, atol=1e-14)
    risk = m.risk(th0, 0.3, n=n, seed=9)
    assert float(fit.risk[0, 0]) == pytest.approx(risk.value, rel=1e-12)


def test_training_is_invariant_under_the_temperature_rescaling():
    # L depends on θ/τ only: (τ, η, θ_0) and (sτ, s²η, sθ_0) give θ'_t = sθ_t
    m = _model(seed=4)
    x = draw(m.law, 2048, seed=1)
    th0, s = _t([0.02, 0.01, -0.03]), 3.0
    a = train_router(m, x, th0, [0.1], 0.02, 50)
    b = train_router(m, x, s * th0, [s * 0.1], s * s * 0.02, 50)
    torch.testing.assert_close(b.theta, s * a.theta, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(b.alignment, a.alignment, rtol=1e-9, atol=1e-12)


def test_training_with_identity_covariance_aligns_in_one_step():
    # Σ = I, c ⟂ u, δ = εc: the drift −∇L(0) ∝ u, so one step from near balance aligns θ with u
    d = 4
    e = torch.eye(d, dtype=F64)
    m = TwoExpertGaussian.around_shared(e, e[0], e[3], 2 * e[1], 0.2 * e[1])
    th0 = 1e-4 * (0.1 * e[0] + math.sqrt(0.99) * e[2])
    fit = train_router(m, draw(m.law, 1 << 14, 0), th0, [0.1, 0.4], 0.05, 1)
    assert float(fit.alignment[0, 0]) == pytest.approx(0.1)
    assert bool((fit.alignment[1] > 0.99).all())


def test_bad_input():
    e = torch.eye(3, dtype=F64)
    z = torch.zeros(3, dtype=F64)
    with pytest.raises(ValueError, match="'u' parameter of TwoExpertGaussian must be a nonzero separator"):
        TwoExpertGaussian(e, z, z, z, z, z)
    with pytest.raises(ValueError, match="uᵀΣu > 0"):
        TwoExpertGaussian(torch.diag(_t([0.0, 1.0, 1.0])), e[0], z, z, z, z)
    singular = TwoExpertGaussian(torch.diag(_t([1.0, 0.0, 1.0])), e[0], z, e[1], e[1], -e[1])
    with pytest.raises(ValueError, match="positive definite .*Σ⁻¹E\\[XY\\]"):
        singular.best_shared_predictor()
    with pytest.raises(ValueError, match="invertible"):
        singular.linearisation(0.5).fixed_point()
    with pytest.raises(ValueError, match="nonzero separator"):
        reduced_operator(e, z, e[0], 0.1)
    with pytest.raises(ValueError, match="σ_u² = uᵀΣu > 0"):
        reduced_operator(torch.diag(_t([0.0, 1.0, 1.0])), e[0], e[0], 0.1)
    with pytest.raises(ValueError, match="must be an odd function"):
        reduced_operator(e, e[0], e[0], 0.1, lambda t: t ** 2)
    with pytest.raises(ValueError, match="'sign', 'tanh' or an odd callable"):
        reduced_operator(e, e[0], e[0], 0.1, "relu")
    with pytest.raises(ValueError, match="'tau' parameter of reduced_operator must be a float in \\(0, inf\\)"):
        reduced_operator(e, e[0], e[0], -1.0)
    with pytest.raises(ValueError, match="'contrast' parameter of reduced_operator must be a 1-d array of shape"):
        reduced_operator(e, e[0], _t([1.0, 0.0]), 0.1)
    with pytest.raises(ValueError, match="1 \\+ η·λ_i > 0"):
        alignment_rate(torch.diag(_t([1.0, -3.0])), 0.5)
    with pytest.raises(ValueError, match="symmetric"):
        linear_iteration(_t([[1.0, 2.0], [0.0, 1.0]]), _t([1.0, 1.0]), 0.1, 3)
    m = _model()
    with pytest.raises(ValueError, match="'theta' parameter of TwoExpertGaussian.exact must be a 1-d array of shape"):
        m.exact(torch.zeros(4, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="'eta' parameter of train_router"):
        train_router(m, draw(m.law, 16, 0), torch.zeros(3, dtype=F64), [0.1], 0.0, 3)
    with pytest.raises(ValueError, match="'x' parameter of train_router must be an array of shape \\(N, 3\\)"):
        train_router(m, torch.zeros(5, 2, dtype=F64), torch.zeros(3, dtype=F64), [0.1], 0.1, 3)
