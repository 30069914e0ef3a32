"""Boundary mass β (2.13), β_pair (2.14), ambiguity mass m_ε (5.5) and the Remark 5.4 sandwich."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from softhard import (
    Empirical,
    Gaussian,
    GaussianMixture,
    LinearRouter,
    MLPRouter,
    ambiguity_mass,
    boundary_mass,
    draw,
    softmax_gate,
    tolerance_width,
    top_two_margin,
)

F64 = torch.float64


def within_5_se(est, exact):
    v, se, exact = np.atleast_1d(est.value), np.atleast_1d(est.stderr), np.atleast_1d(exact)
    assert np.all(np.abs(v - exact) <= 5 * se + 1e-15), (v, exact, se)


# --- binary Gaussian: the exact formula (3.11) --------------------------------------------------------


def binary_exact(w, m_g, s):
    """(3.11): β(w) = Φ((w − m_g)/s) − Φ((−w − m_g)/s)."""
    w = np.asarray(w, dtype=float)
    return stats.norm.cdf((w - m_g) / s) - stats.norm.cdf((-w - m_g) / s)


V, B0 = torch.tensor([1.5, -0.5], dtype=F64), 0.4
M, S = torch.tensor([0.3, 1.0], dtype=F64), torch.tensor([[1.0, 0.4], [0.4, 2.0]], dtype=F64)
M_G, S_G = float(V @ M) + B0, math.sqrt(float(V @ S @ V))  # g(X) = V·X + B0 ~ N(M_G, S_G²)
WIDTHS = [0.0, 0.05, 0.2, 1.0, 3.0]


@pytest.mark.parametrize("method", ["mc", "qmc"])
def test_binary_beta_matches_3_11(method):
    est = boundary_mass(LinearRouter.binary(V, B0), Gaussian(M, S), WIDTHS, n=1 << 17, seed=1, method=method)
    assert est.value.shape == est.stderr.shape == (5,) and est.value[0] == 0.0
    within_5_se(est[1:], binary_exact(WIDTHS[1:], M_G, S_G))


def test_binary_beta_for_a_mixture():
    law = GaussianMixture([0.25, 0.75], torch.stack([M, -M]), torch.stack([S, 0.5 * S]))
    exact = sum(w * binary_exact(WIDTHS[1:], float(V @ c.mean) + B0, math.sqrt(float(V @ c.cov @ V)))
                for w, c in zip([0.25, 0.75], law.components))
    within_5_se(boundary_mass(LinearRouter.binary(V, B0), law, WIDTHS, method="mc", n=1 << 17, seed=2)[1:], exact)


def test_binary_ambiguity_mass_matches_3_11():
    taus = [0.05, 0.2, 0.6]
    eps = 0.1
    est = ambiguity_mass(LinearRouter.binary(V, B0), Gaussian(M, S), taus, eps=eps, method="mc", n=1 << 17, seed=3)
    # K = 2: m_ε(τ) = μ(|g| < w_{τ,ε}) (Remark 5.4 with log(K−1) = 0)
    within_5_se(est, binary_exact([tolerance_width(t, eps) for t in taus], M_G, S_G))


# --- K = 3, d = 1: β and β_pair exactly as Gaussian probabilities of intervals --------------------------

C = np.array([1.0, -0.5, 0.2])  # a_k(x) = C_k x + E_k
E = np.array([0.0, 0.3, -0.1])
MU, SIG = 0.2, 1.5


def prob(lo, hi):
    return max(0.0, stats.norm.cdf((hi - MU) / SIG) - stats.norm.cdf((lo - MU) / SIG))


def beta_pair_exact(w):
    """μ(δ ≤ w) = μ(∪_{i<j} {|(C_i − C_j)x + (E_i − E_j)| ≤ w}): merge the three intervals."""
    iv = sorted(sorted(((-w - (E[i] - E[j])) / (C[i] - C[j]), (w - (E[i] - E[j])) / (C[i] - C[j])))
                for i, j in itertools.combinations(range(3), 2))
    total, (lo, hi) = 0.0, iv[0]
    for a, b in iv[1:]:
        if a > hi:
            total, lo, hi = total + prob(lo, hi), a, b
        else:
            hi = max(hi, b)
    return total + prob(lo, hi)


def beta_exact(w):
    """1 − β(w) = Σ_k μ(a_k − a_j > w for all j ≠ k); each event is an interval of x."""
    clear = 0.0
    for k in range(3):
        lo, hi = -np.inf, np.inf
        for j in set(range(3)) - {k}:
            c, e = C[k] - C[j], E[k] - E[j]
            if c > 0:
                lo = max(lo, (w - e) / c)
            else:
                hi = min(hi, (w - e) / c)
        clear += prob(lo, hi)
    return 1.0 - clear


def test_three_experts_in_one_dimension_exact():
    router = LinearRouter(torch.tensor(C[:, None]), torch.tensor(E))
    law = Gaussian([MU], [[SIG ** 2]])
    widths = [0.02, 0.1, 0.3, 0.8]
    top = boundary_mass(router, law, widths, method="mc", n=1 << 17, seed=4)
    pair = boundary_mass(router, law, widths, kind="pairwise", method="mc", n=1 << 17, seed=4)
    within_5_se(top, [beta_exact(w) for w in widths])
    within_5_se(pair, [beta_pair_exact(w) for w in widths])
    assert np.all(top.value <= pair.value)
    assert beta_pair_exact(0.3) > beta_exact(0.3) + 0.01  # the two profiles really differ here


@pytest.mark.parametrize("kind, k", [("top2", 1), ("top2", 2), ("top2", 3), ("pairwise", 1)])
def test_profiles_equal_a_brute_force_count_on_the_same_sample(kind, k):
    router = MLPRouter(3, 4, hidden=(8,), seed=1)
    law = Gaussian.standard(3)
    widths = [0.01, 0.1, 0.5]
    est = boundary_mass(router, law, widths, kind=kind, k=k, method="mc", n=5000, seed=9)
    with torch.no_grad():
        a = router(draw(law, 5000, seed=9)).numpy()
    s = -np.sort(-a, axis=1)
    margin = s[:, k - 1] - s[:, k] if kind == "top2" else np.min(np.diff(np.sort(a, axis=1), axis=1), axis=1)
    assert np.allclose(est.value, [(margin <= w).mean() for w in widths], rtol=1e-12, atol=1e-15)


# --- deterministic properties on one sample (hypothesis) ----------------------------------------------

ROUTER4 = MLPRouter(2, 4, hidden=(6,), seed=0)
LAW2 = Gaussian([0.5, -0.5], [[1.0, 0.5], [0.5, 1.5]])


@settings(max_examples=15)
@given(st.integers(0, 2 ** 31), st.lists(st.floats(0.0, 2.0), min_size=2, max_size=6))
def test_profiles_are_monotone_and_ordered(seed, widths):
    widths = sorted(widths)
    top = boundary_mass(ROUTER4, LAW2, widths, method="mc", n=3000, seed=seed)
    pair = boundary_mass(ROUTER4, LAW2, widths, kind="pairwise", method="mc", n=3000, seed=seed)
    assert np.all(np.diff(top.value) >= 0) and np.all(np.diff(pair.value) >= 0)  # non-decreasing in w
    assert np.all(top.value <= pair.value)  # β ≤ β_pair since δ ≤ Δ


def sandwich_flags(a, tau, eps):
    """(Δ < w, ambiguous, Δ < w + τ log(K−1)) for one logit vector, from ambiguity_mass and boundary_mass
    themselves (identity router, the one-point law)."""
    K = len(a)
    law, router = Empirical(a[None]), (lambda x: x)
    w = tolerance_width(tau, eps)
    amb = ambiguity_mass(router, law, tau, eps=eps, method="mc", n=1, seed=0).value
    lo, hi = boundary_mass(router, law, [w, w + tau * math.log(K - 1)], method="mc", n=1, seed=0).value
    return lo == 1.0, amb == 1.0, hi == 1.0


@given(st.integers(2, 6).flatmap(lambda K: arrays(np.float64, K, elements=st.floats(-5, 5))),
       st.floats(-2, 1).map(lambda e: 10.0 ** e), st.floats(1e-4, 0.49))
def test_remark_5_4_sandwich_per_sample(a, tau, eps):
    K = len(a)
    delta = float(top_two_margin(a))
    w = tolerance_width(tau, eps)
    for edge in (w, w + tau * math.log(K - 1)):  # away from the edges, where float rounding decides
        assume(abs(delta - edge) > 1e-9 * max(1.0, edge))
    below, ambiguous, below_hi = sandwich_flags(a, tau, eps)
    assert ambiguous == (float(softmax_gate(a, tau).max()) < 1 - eps)  # (5.4)
    assert (not below) or ambiguous  # Δ < w ⇒ x ∈ A
    assert (not ambiguous) or below_hi  # x ∈ A ⇒ Δ < w + τ log(K−1)
    if K == 2:
        assert below == ambiguous


def test_sandwich_on_one_sample_and_k2_equality():
    taus, eps = np.array([0.02, 0.1, 0.3]), 0.05
    w = np.array([tolerance_width(t, eps) for t in taus])
    m = ambiguity_mass(ROUTER4, LAW2, taus, eps=eps, method="mc", n=20_000, seed=6)
    lo = boundary_mass(ROUTER4, LAW2, w, method="mc", n=20_000, seed=6)
    hi = boundary_mass(ROUTER4, LAW2, w + taus * math.log(3), method="mc", n=20_000, seed=6)
    assert np.all(lo.value <= m.value) and np.all(m.value <= hi.value)
    assert np.all(lo.value < hi.value)  # not vacuous
    binary = LinearRouter.binary(V, B0)
    assert np.array_equal(ambiguity_mass(binary, LAW2, taus, eps=eps, method="mc", n=20_000, seed=6).value,
                          boundary_mass(binary, LAW2, w, method="mc", n=20_000, seed=6).value)


# --- interface and bad input --------------------------------------------------------------------------


def test_scalar_width_and_callable_router():
    r = LinearRouter.binary(V, B0)
    e = boundary_mass(r, Gaussian(M, S), 0.2, method="mc", n=4096, seed=0)
    assert isinstance(e.value, float) and isinstance(e.stderr, float) and e.n == 4096
    f = boundary_mass(lambda x: r(x), Gaussian(M, S), 0.2, method="mc", n=4096, seed=0)  # d is taken from the law
    assert f.value == e.value


@pytest.mark.parametrize("call, exc, match", [
    (lambda r, law: boundary_mass(r, law, [-0.1, 0.2]), ValueError,
     r"'widths' parameter of boundary_mass must be an array of values >= 0"),
    (lambda r, law: boundary_mass(r, law, [math.nan]), ValueError, r"'widths' parameter of boundary_mass must be finite"),
    (lambda r, law: boundary_mass(r, law, []), ValueError, r"'widths' parameter of boundary_mass must be a non-empty"),
    (lambda r, law: boundary_mass(r, law, [[0.1]]), ValueError, r"'widths' parameter of boundary_mass must be a scalar or a 1-d"),
    (lambda r, law: boundary_mass(r, law, 0.1, n=0), ValueError, r"'n' parameter of boundary_mass must be an int in \[1, inf\]"),
    (lambda r, law: boundary_mass(r, Gaussian.standard(3), 0.1), ValueError,
     r"'law' parameter of boundary_mass must be a law on R\^2 \(the router's input dimension\). Got 'a law on R\^3'"),
    (lambda r, law: boundary_mass(r, law, 0.1, kind="top3"), ValueError, r"'kind' parameter of boundary_mass must be one of"),
    (lambda r, law: boundary_mass(r, law, 0.1, k=2), ValueError, r"'k' parameter of boundary_mass must be an int in \[1, 1\]"),
    (lambda r, law: boundary_mass(r, law, 0.1, kind="pairwise", k=2), ValueError, r"'k' parameter of boundary_mass must be 1"),
    (lambda r, law: boundary_mass(r, "gauss", 0.1), TypeError, r"'law' parameter of boundary_mass must be a softhard Law"),
    (lambda r, law: boundary_mass(5, law, 0.1), TypeError, r"'router' parameter of boundary_mass"),
    (lambda r, law: ambiguity_mass(r, law, [0.1, 0.0]), ValueError, r"'taus' parameter of ambiguity_mass must be an array of values > 0"),
    (lambda r, law: ambiguity_mass(r, law, 0.1, eps=0.5), ValueError, r"'eps' parameter of ambiguity_mass must be a float in \(0, 0.5\)"),
    (lambda r, law: ambiguity_mass(r, law, 0.1, n=-3), ValueError, r"'n' parameter of ambiguity_mass"),
    (lambda r, law: ambiguity_mass(r, Gaussian.standard(1), 0.1), ValueError, r"'law' parameter of ambiguity_mass must be a law on R\^2"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(LinearRouter.binary(V, B0), Gaussian(M, S))
