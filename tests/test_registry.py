"""The method registry: every registered (quantity, method) pair against a known value within 5 standard errors.

A new method is covered by registering it: `test_every_registered_method_is_exercised` fails until some case
below applies to it. Known values come from closed forms (checked against SciPy and hand values in
test_gaussian.py) or, for the bounds, from an independent plain Monte Carlo run with its own standard error.
"""

import math
import warnings

import numpy as np
import pytest
import torch

import softhard as sh
from softhard.closed.risk import risk_gap_exact
from softhard.estimators.reducer import TargetNotReached
from softhard.quantities import QUANTITIES

F64 = torch.float64


def k3():
    W = torch.tensor([[1.0, 0.0, 0.2], [-0.5, 0.8, 0.0], [-0.5, -0.8, -0.2]], dtype=F64)
    law = sh.Gaussian([0.1, 0.0, 0.2], [[1, 0.2, 0], [0.2, 1, 0.1], [0, 0.1, 0.5]])
    return sh.LinearRouter(W, [0.1, 0.0, -0.1]), law


def design71():
    router = sh.LinearRouter.binary([1.0, 0.0], b=0.2)
    return sh.MoE(router, sh.LinearExperts([[0.0, 1.0], [0.0, -1.0]])), sh.Gaussian.standard(2)


def as_callable(router, d):
    """The same linear router as a plain function: no closed form, no score space applies to it."""
    return sh.as_router(lambda x: router(x), d)


def reference(fn, n=1 << 18, seed=999):
    """An independent plain Monte Carlo value ``(value, stderr)``."""
    e = fn(method="mc", n=n, seed=seed)
    return np.asarray(e.value), np.asarray(e.stderr)


def cases():
    """``(quantity, label, call(**kw) -> Estimate, truth () -> (value, stderr of the truth))``."""
    r3, law3 = k3()
    moe, law = design71()
    binary = moe.router
    w = [0.05, 0.3]
    taus = [0.3, 0.05]

    def exact_of(fn):
        return lambda: (np.asarray(fn(method="exact").value), 0.0)

    out = []

    def add(q, label, fn, truth=None):
        out.append((q, label, fn, truth or exact_of(fn)))

    add("boundary_mass", "K=3 linear", lambda **kw: sh.boundary_mass(r3, law3, w, **kw))
    add("boundary_mass", "K=3 pairwise", lambda **kw: sh.boundary_mass(r3, law3, w, kind="pairwise", **kw))
    lin3 = lambda **kw: sh.boundary_mass(r3, law3, w, **kw)  # noqa: E731
    add("boundary_mass", "K=3 callable (lines)", lambda **kw: sh.boundary_mass(as_callable(r3, 3), law3, w, **kw),
        exact_of(lin3))
    add("ambiguity_mass", "K=2 linear", lambda **kw: sh.ambiguity_mass(binary, law, taus, **kw))
    add("coarea_constant", "K=3 linear", lambda **kw: sh.coarea_constant(r3, law3, (0, 2), **kw))
    lin = lambda **kw: sh.coarea_constant(r3, law3, (0, 2), **kw)  # noqa: E731
    add("coarea_constant", "K=3 callable", lambda **kw: sh.coarea_constant(as_callable(r3, 3), law3, (0, 2), **kw),
        exact_of(lin))
    add("coarea_sum", "K=3 linear", lambda **kw: sh.coarea_sum(r3, law3, **kw))
    add("level_set_profile", "K=3 linear", lambda **kw: sh.level_set_profile(r3, law3, [-0.5, 0.3], (0, 2), **kw))
    add("interface_constant", "K=3 linear", lambda **kw: sh.interface_constant(r3, law3, **kw))
    add("risk_gap", "7.1 design", lambda **kw: sh.risk_gap(moe, law, taus, **kw))
    add("gap_slope", "7.1 design", lambda **kw: sh.gap_slope(moe, law, **kw))
    add("gate_entropy_mean", "K=2 linear", lambda **kw: sh.gate_entropy_mean(binary, law, taus, **kw))
    # the bounds: Cauchy–Schwarz is the gap itself for a realizable teacher; the certificates against plain MC
    add("cauchy_schwarz_bound", "realizable", lambda **kw: sh.cauchy_schwarz_bound(moe, law, taus, **kw),
        lambda: (risk_gap_exact(moe, law, taus), 0.0))
    box = sh.Uniform([-3.0, -3.0], [3.0, 3.0])
    cert = lambda **kw: sh.gap_certificate(moe, box, taus, B_Y=3.0, B_h=3.0, **kw)  # noqa: E731
    add("gap_certificate", "box", cert, lambda: reference(cert))
    loc = lambda **kw: sh.local_gap_certificate(moe, law, taus, **kw)  # noqa: E731
    add("local_gap_certificate", "7.1 design", loc, lambda: reference(loc))
    return out


CASES = cases()
PAIRS = [(q, label, m) for q, label, fn, _ in CASES for m in QUANTITIES[q].methods]


def applies(quantity, method, fn):
    try:
        fn(method=method, n=64, seed=0)
    except ValueError as e:
        if "must be a method that applies here" in str(e):
            return False
        raise
    return True


@pytest.mark.parametrize("quantity, label, method", PAIRS, ids=[f"{q}-{lab}-{m}" for q, lab, m in PAIRS])
def test_registered_method_agrees_with_the_known_value(quantity, label, method):
    fn, truth = next((f, t) for q, lab, f, t in CASES if q == quantity and lab == label)
    if not applies(quantity, method, fn):
        pytest.skip(f"{method} does not apply to {label}")
    est = fn(method=method, n=1 << 14, seed=1)
    assert est.method == method and est.info["chosen_by"] == "user"
    value, se = truth()
    if QUANTITIES[quantity].methods[method].exact:
        assert np.all(np.asarray(est.stderr) == 0) and est.n == 0 and math.isinf(est.dof)
        assert np.all(np.abs(np.asarray(est.value) - value) <= 5 * np.asarray(se) + 1e-12 + np.asarray(est.error_bound))
    else:
        tol = 5 * np.hypot(np.asarray(est.stderr), se)
        assert np.all(np.abs(np.asarray(est.value) - value) <= tol), (est, value, se)


def test_every_registered_method_is_exercised():
    """Each registered (quantity, method) applies to at least one case above."""
    missing = []
    for name, q in QUANTITIES.items():
        for m in q.methods:
            if not any(qq == name and applies(name, m, fn) for qq, _, fn, _ in CASES):
                missing.append(f"{name}:{m}")
    assert not missing, f"registered methods without a test case: {missing}"


def test_auto_takes_an_applicable_method_and_says_so():
    for q, label, fn, _ in CASES:
        est = fn(n=1 << 12, seed=2)
        assert est.info["chosen_by"] == "auto" and est.method in QUANTITIES[q].methods, (q, label)
    r3, law3 = k3()
    assert sh.boundary_mass(r3, law3, 0.1).method == "exact"  # the closed form is cheap here
    # a plain-callable router under a Gaussian law: lines (O(1) variance per draw, ~150 evaluations a line) against
    # QMC over inputs (one evaluation, relative variance ~1/β): QMC at w = 0.1, lines at w = 1e-3
    assert sh.boundary_mass(as_callable(r3, 3), law3, 0.1, n=1 << 12).method == "qmc"
    assert sh.boundary_mass(as_callable(r3, 3), law3, 1e-3, n=1 << 12).method == "conditional"
    assert sh.boundary_mass(r3, sh.Uniform([-1.0] * 3, [1.0] * 3), 0.1, n=1 << 12).method == "qmc"


def test_an_explicit_method_that_does_not_apply_says_why():
    r3, law3 = k3()
    with pytest.raises(ValueError, match=r"The 'method' parameter of boundary_mass must be a method that applies "
                                         r"here: 'exact' needs a LinearRouter and a Gaussian"):
        sh.boundary_mass(as_callable(r3, 3), law3, 0.1, method="exact")
    with pytest.raises(ValueError, match=r"The 'method' parameter of risk_gap must be one of \('auto', 'exact', "
                                         r"'conditional', 'qmc', 'mc'\). Got 'lines'"):
        sh.risk_gap(*design71(), 0.1, method="lines")


def test_a_target_is_reached_or_the_miss_is_said():
    r3, law3 = k3()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a reached target warns nothing
        ok = sh.boundary_mass(r3, law3, [0.05, 0.3], method="mc", target_rel_error=0.05, seed=3)
    assert ok.converged and ok.target == 0.05 and np.all(ok.rel_error <= 0.05)
    with pytest.warns(TargetNotReached, match=r"boundary_mass: target relative error 0.001 not reached: 0.0\d+ "
                                              r"after 16384 samples \(the budget n=16384\)"):
        miss = sh.boundary_mass(r3, law3, 0.05, method="mc", n=1 << 14, target_rel_error=1e-3, seed=3)
    assert not miss.converged and miss.n == 1 << 14 and miss.rel_error > 1e-3
    with pytest.warns(TargetNotReached, match=r"the cap max_samples=32768"):
        capped = sh.risk_gap(*design71(), 0.01, method="mc", target_rel_error=1e-3, max_samples=1 << 15, seed=4)
    assert not capped.converged and capped.n == 1 << 15


def test_exact_values_carry_their_integration_error_bound():
    """K = 4 at w = 1e-4: the complement form would lose β ≈ 2wC_Σ to Genz's absolute error; the coarea form
    keeps it, and β(w)/(2w) is within O(w) of the exact surface constant."""
    g = torch.Generator().manual_seed(0)
    r = sh.LinearRouter(torch.randn(4, 6, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64) * 0.3)
    law = sh.Gaussian.standard(6)
    beta = sh.boundary_mass(r, law, [1e-4, 1e-3], method="exact")
    assert beta.info["forms"] == ["coarea", "coarea"] and np.all(beta.error_bound <= 1e-3 * beta.value)
    c = sh.interface_constant(r, law).value
    slope = np.asarray(beta.value) / (2 * np.array([1e-4, 1e-3]))
    assert abs(slope[0] - c) <= 1e-3 * c and abs(slope[1] - c) <= 1e-2 * c  # deviation O(w)
    assert abs((slope[1] - c) / (slope[0] - c) - 10) < 0.5  # linear in w: the density of Δ has a slope at 0⁺
    big = sh.boundary_mass(r, law, 1.0, method="exact")
    assert big.info["forms"] == ["complement"] and 0 < big.error_bound <= 4 * 1e-6
    lo, hi = big.interval()
    assert hi - lo == pytest.approx(2 * big.error_bound)


def test_intervals_use_the_student_t_quantile_of_the_scramblings():
    r3, law3 = k3()
    q = sh.boundary_mass(r3, law3, 0.3, method="qmc", n=1 << 12, seed=5)
    m = sh.boundary_mass(r3, law3, 0.3, method="mc", n=1 << 12, seed=5)
    assert q.dof == 15 and q.multiplier() == pytest.approx(2.131449545559323, rel=1e-12)  # t_15(0.975)
    assert m.dof == (1 << 12) - 1 and m.multiplier() == pytest.approx(1.9605, abs=1e-3)
    assert q.n == 1 << 12 and sh.boundary_mass(r3, law3, 0.3, method="qmc", n=1000, seed=5).info["n_requested"] == 1000
    lo, hi = q.interval(0.9)
    assert hi - lo == pytest.approx(2 * q.stderr * 1.7530503556925552, rel=1e-10)  # t_15(0.95)
    assert math.isinf(sh.boundary_mass(r3, law3, 0.3).dof)
