"""Issue 16: no NaN at any temperature or dtype, no silent wrong answer, errors that name the right parameter.

The bad-input fuzz that found these lives in ``benchmarks/fuzz.py`` (a measurement, not a test).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softhard import (
    Empirical,
    FunctionTeacher,
    Gaussian,
    GaussianMixture,
    LinearExperts,
    LinearRouter,
    MoE,
    Uniform,
    as_teacher,
    binary_entropy,
    concentration_bound,
    gate_entropy,
    risk_gap,
    softmax_gate,
    tail_sum,
    tolerance_width,
)
from softhard.model.moe import soft_from

F32, F64 = torch.float32, torch.float64


# --- gates: float32 and float64 over every temperature --------------------------------------------------

def _logits(dtype):
    big = float(torch.finfo(dtype).max) if dtype == F32 else 1e308
    edge = st.sampled_from([0.0, 1.0, -1.0, big, -big, big / 2, 1e-300, -1e-300])
    value = st.one_of(edge, st.floats(-big, big, width=32 if dtype == F32 else 64))
    return st.integers(2, 5).flatmap(lambda K: st.lists(value, min_size=K, max_size=K))


@settings(max_examples=300)
@given(data=st.data(), dtype=st.sampled_from([F32, F64]),
       tau=st.one_of(st.sampled_from([1e-300, 1e-45, 1e-38, 3e38, 1e39, 1e300]),
                     st.floats(-300, 300).map(lambda e: 10.0 ** e)))
def test_gates_never_nan_in_float32_or_float64(data, dtype, tau):
    """τ ∈ [1e-300, 1e300], logits up to ±1e308 (±3.4e38 in float32): no NaN, the dtype kept, the gate a
    probability vector, entropy in [0, log K], and Lemma 4.1 (1 − π_(1) ≤ tail ≤ (K−1)e^{−Δ/τ}) in the dtype."""
    a = torch.tensor([data.draw(_logits(dtype))], dtype=dtype)
    K, eps = a.shape[-1], float(torch.finfo(dtype).eps)
    p, tail, bound, H = softmax_gate(a, tau), tail_sum(a, tau), concentration_bound(a, tau), gate_entropy(a, tau)
    for v in (p, tail, bound, H):
        assert v.dtype == dtype and not bool(torch.isnan(v).any()), (a, tau, v)
    assert bool(((p >= 0) & (p <= 1)).all()) and abs(float(p.double().sum()) - 1) <= 4 * K * eps
    assert -eps <= float(H) <= math.log(K) * (1 + 4 * eps)
    assert 0 <= float(tail) <= K - 1 and 0 <= float(bound) <= K - 1
    top = float(p.max())
    assert 1 - top <= float(tail) * (1 + 8 * eps) + 4 * K * eps
    assert float(tail) <= float(bound) * (1 + 8 * eps) + 1e-300
    # the MoE's soft predictor (the same gate, float64 inside): a convex combination of the expert outputs
    h = torch.linspace(-1.0, 2.0, K, dtype=dtype)[None]
    f = soft_from(a, h, torch.tensor([tau], dtype=F64), scalar=True)
    assert f.dtype == dtype and bool(torch.isfinite(f).all()) and -1 - 4 * eps <= float(f) <= 2 + 8 * eps


def test_float32_gates_at_extreme_temperatures():
    """The issue's cases: τ below float32's range is the hard gate; ±3e38 at τ = 1e39 a soft one."""
    torch.testing.assert_close(softmax_gate(torch.tensor([[1.0, 0.0]]), 1e-300), torch.tensor([[1.0, 0.0]]))
    p = softmax_gate(torch.tensor([[3e38, -3e38]]), 1e39)
    torch.testing.assert_close(p, torch.tensor([[1 / (1 + math.exp(-0.6)), 1 / (1 + math.exp(0.6))]]))
    assert float(gate_entropy(torch.tensor([[3e38, -3e38]]), 1e39)) == pytest.approx(
        float(binary_entropy(torch.tensor(1 / (1 + math.exp(-0.6)), dtype=F64))), rel=1e-6)
    assert tolerance_width(torch.tensor([1e-30], dtype=F32), 0.1).dtype == F32


def test_float32_risk_gap_at_tiny_temperature():
    """A float32 law and model at τ = 1e-50: the soft predictor is the hard one, the gap exactly 0, not NaN."""
    law = Gaussian.standard(2, dtype=F32)
    moe = MoE(LinearRouter(torch.eye(2)), LinearExperts(torch.eye(2)))  # float32 parameters
    est = risk_gap(moe, law, [1e-50, 0.1], n=4096, seed=0, method="mc")
    assert est.value[0] == 0.0 and est.stderr[0] == 0.0 and est.value[1] > 0
    assert np.isfinite(est.value).all()


# --- laws: honest covariance checks, dtypes, devices ---------------------------------------------------

def test_indefinite_covariance_beside_a_huge_eigenvalue_is_refused():
    with pytest.raises(ValueError, match=r"The 'cov' parameter of Gaussian must be positive semi-definite. "
                                         r"Got 'a matrix with eigenvalue -50 \(largest 1e\+12"):
        Gaussian([0.0, 0.0], [[1e12, 0.0], [0.0, -50.0]])
    with pytest.raises(ValueError, match=r"'covs\[1\]' parameter of GaussianMixture must be positive semi-definite"):
        GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [np.eye(2), [[1e12, 0.0], [0.0, -50.0]]])
    # a tiny matrix is judged at its own scale (the old floor of 1 let -1e-21 beside 1e-20 through)
    with pytest.raises(ValueError, match="positive semi-definite"):
        Gaussian([0.0, 0.0], [[1e-20, 0.0], [0.0, -1e-21]])
    # singular matrices with rounding noise are fine: A Aᵀ of rank 1, and W S Wᵀ in float32
    v = torch.tensor([1.0, 1e-3, 3.0], dtype=F64)
    Gaussian(torch.zeros(3, dtype=F64), torch.outer(v, v))
    A = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F32)
    Gaussian(torch.zeros(5), A @ A.T, dtype=F32)


def test_law_dtype_and_device_are_checked_first_and_named():
    with pytest.raises(TypeError, match=r"The 'dtype' parameter of Gaussian must be torch.float32 or torch.float64. "
                                        r"Got 'float64'"):
        Gaussian([0.0, 0.0], dtype="float64")
    for law in (lambda **kw: Gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], **kw),
                lambda **kw: GaussianMixture([1.0], [[0.0, 0.0]], **kw),
                lambda **kw: Uniform([0.0], [1.0], **kw), lambda **kw: Empirical([[0.0], [1.0]], **kw)):
        with pytest.raises(TypeError, match="The 'dtype' parameter of .* must be torch.float32 or torch.float64"):
            law(dtype=torch.int64)
        with pytest.raises(ValueError, match=r"The 'device' parameter of .* must be None, 'cpu' or the name of an "
                                             r"available device .* Got 'bogus'"):
            law(device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"'device' parameter of Gaussian .*\(cuda is not available here\)"):
            Gaussian([0.0], device="cuda")
    g = Gaussian(torch.tensor([0, 1]), torch.tensor([[2, 1], [1, 2]]))  # integer data, float64 law
    assert g.mean.dtype == g.cov.dtype == F64 and g.cov.tolist() == [[2.0, 1.0], [1.0, 2.0]]
    g32 = GaussianMixture([0.3, 0.7], [[0.0], [1.0]], dtype=F32)  # weights summing to 1 in float64
    assert g32.weights.dtype == F64 and g32.sample(3).dtype == F32  # one float64 law, float32 draws (issue 19)
    assert torch.isfinite(Gaussian.standard(2, dtype=F32).from_uniform(torch.tensor([[1 - 1e-16, 0.0]]))).all()
    with pytest.raises(TypeError, match=r"The 'generator' parameter of Gaussian.sample must be None, a torch"):
        Gaussian.standard(2).sample(3, generator=7)
    with pytest.raises(TypeError, match=r"The 'mean' parameter of Gaussian must be an array of real numbers"):
        Gaussian(torch.tensor([1 + 1j, 0j]))
    with pytest.raises(ValueError, match=r"The 'mean' parameter of Gaussian must be a tensor with data"):
        Gaussian(torch.zeros(2, device="meta"))
    with pytest.raises(ValueError, match=r"The 'high' parameter of Uniform must be of the same shape as low"):
        Uniform([0.0, 0.0], [[1.0, 1.0]])
    with pytest.raises(ValueError, match=r"The 'high' parameter of Uniform must be within a finite distance of low"):
        Uniform([-1e308], [1e308])


# --- MoE and teachers -------------------------------------------------------------------------------------

def _moe(d=2):
    return MoE(LinearRouter.binary(torch.ones(d, dtype=F64)), LinearExperts(torch.eye(2, d, dtype=F64)))


def test_teacher_on_the_wrong_input_dimension_is_named():
    with pytest.raises(ValueError, match=r"The 'teacher' parameter of risk_gap must be a teacher on R\^2 "
                                         r"\(the model's input dimension\). Got 'a teacher on R\^3'"):
        as_teacher(_moe(3), _moe(2), "risk_gap")
    with pytest.raises(TypeError, match=r"The 'moe' parameter of as_teacher must be a softhard MoE"):
        as_teacher(lambda x: x[:, 0], moe=3)
    with pytest.raises(ValueError, match=r"The 'd' parameter of MoE must be the router's input dimension 2"):
        MoE(LinearRouter.binary([1.0, 0.0]), LinearExperts(torch.eye(2)), d=3)


def test_teacher_returning_nan_or_failing_is_named():
    moe = _moe()
    with pytest.raises(ValueError, match=r"The 'teacher' parameter of risk_gap must be a function with finite "
                                         r"values. Got 'nan at x = \["):
        as_teacher(lambda x: x[:, 0] * math.nan, moe, "risk_gap").signal(torch.ones(3, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"'teacher' parameter of (as_teacher|risk_gap) must be a function with "
                                         r"finite"):
        risk_gap(moe, Gaussian.standard(2), 0.1, teacher=lambda x: x[:, 0] / (x[:, 0] > 5), n=1024, method="mc")
    with pytest.raises(ValueError, match=r"The 'fn' parameter of FunctionTeacher must be a function \(N, d\) -> "
                                         r"\(N,\) that runs on the inputs. Got 'ZeroDivisionError"):
        FunctionTeacher(lambda x: 1 / 0).signal(torch.ones(3, 2, dtype=F64))


# --- dynamics ---------------------------------------------------------------------------------------------

def test_alignment_ratio_never_nan():
    from softhard import alignment, alignment_ratio

    with pytest.raises(ValueError, match=r"The 'direction' parameter of alignment_ratio must be a nonzero vector"):
        alignment_ratio(torch.tensor([1.0, 0.0], dtype=F64), torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match=r"The 'direction' parameter of alignment_ratio must be a 1-d array of "
                                         r"shape \(2,\)"):
        alignment_ratio([[1.0, 0.0]], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"The 'theta' parameter of alignment must be finite"):
        alignment([math.nan, 0.0], [1.0, 0.0])
    r = alignment_ratio(torch.tensor([[0.0, 1.0], [0.0, 0.0], [1e308, 1e308], [3.0, 4.0]], dtype=F64), [1.0, 0.0])
    assert r.tolist() == [math.inf, math.inf, pytest.approx(1.0, rel=1e-15), pytest.approx(4 / 3, rel=1e-15)]
    assert float(alignment([0.0, 0.0], [1.0, 0.0])) == 0.0


def test_critical_points_bad_starts_and_options():
    from softhard import binary_problem, critical_points, draw, hessian

    prob = binary_problem()
    s, x = prob.teacher_student(), draw(prob.law, 256, 0)
    with pytest.raises(TypeError, match=r"The 'starts' parameter of critical_points must be a non-empty list of MoEs"):
        critical_points(s, prob.teacher, x, 0.1, starts=0)
    with pytest.raises(ValueError, match=r"The 'starts' parameter of critical_points must be a non-empty list"):
        critical_points(s, prob.teacher, x, 0.1, starts=[])
    with pytest.raises(TypeError, match=r"The 'newton_iter' parameter of critical_points must be an int"):
        critical_points(s, prob.teacher, x, 0.1, [s], newton_iter=None)
    with pytest.raises(ValueError, match=r"The 'sample' parameter of hessian must be inputs on which the teacher and "
                                         r"the model are finite"):
        hessian(s, prob.teacher, torch.full((8, 2), 1e308, dtype=F64), 0.1)
    assert torch.isfinite(hessian(s, prob.teacher, x, 1e-300)).all()  # the float64 gate is the hard one there
    # a float32 sample is cast (it used to fail inside torch: "expected m1 and m2 to have the same dtype")
    x32 = x.float()
    torch.testing.assert_close(hessian(s, prob.teacher, x32, 0.2), hessian(s, prob.teacher, x32.double(), 0.2))


@pytest.mark.parametrize("call, exc, message", [
    (lambda: Gaussian([0.0, 0.0], dtype="float64"), TypeError, r"'dtype' parameter of Gaussian"),
    (lambda: GaussianMixture([1.0], [[0.0]], dtype=torch.int64), TypeError, r"'dtype' parameter of GaussianMixture"),
    (lambda: _sym("reduced_operator")(np.eye(2), [1.0, 0.0, 0.0], [1.0, 0.0], 0.1), ValueError,
     r"'u' parameter of reduced_operator must be a 1-d array of shape \(2,\)"),
    (lambda: _sym("TwoExpertGaussian")(np.eye(2), [1.0, 0.0, 0.0], [0, 0], [1, 0], [1, 0], [0, 1]), ValueError,
     r"'u' parameter of TwoExpertGaussian must be a 1-d array of shape \(2,\)"),
    (lambda: _sym("score_difference")(LinearRouter(torch.eye(2, 3, dtype=F64)), torch.zeros(4, 2), (0, 1)),
     ValueError, r"'x' parameter of score_difference must be an array of shape \(N, 3\)"),
    (lambda: LinearRouter.binary([math.nan, 1.0]), ValueError, r"'v' parameter of LinearRouter.binary must be finite"),
    (lambda: _sym("get_problem")("nope"), ValueError, r"'name' parameter of get_problem"),
    (lambda: _sym("make_student")(2, 2, init_scale=1e308), ValueError,
     r"'init_scale' parameter of make_student"),
    (lambda: _sym("hard_risk")(_sym("binary_problem")().student(), _sym("binary_problem")().teacher,
                               Gaussian.standard(3)), ValueError,
     r"'law' parameter of hard_risk must be a law on R\^2"),
    (lambda: _sym("recovery")(_moe(3), _sym("binary_problem")().teacher, Gaussian.standard(2)), ValueError,
     r"'teacher' parameter of recovery must be a teacher on R\^3 like the student"),
    (lambda: MoE(3, LinearExperts(torch.eye(2))), TypeError, r"'router' parameter of MoE must be a Router"),
    (lambda: _sym("PartitionTeacher")(_moe(), noise_std=-1.0), ValueError,
     r"'noise_std' parameter of PartitionTeacher"),
    (lambda: _sym("binary_problem")(noise_std=-1.0), ValueError, r"'noise_std' parameter of binary_problem"),
    (lambda: _sym("MLPRouter")(2, 2, seed=2 ** 70), ValueError, r"'seed' parameter of MLPRouter must be an int in "
                                                                 r"\[0, 2\*\*64 - 1\]"),
    (lambda: _moe().soft(torch.zeros(1, 2, dtype=F64), True), TypeError, r"'tau' parameter of MoE.soft"),
])
def test_template_errors_name_the_right_parameter_and_function(call, exc, message):
    """Errors the fuzz (benchmarks/fuzz.py) found blaming another parameter or an inner function."""
    with pytest.raises(exc, match=message):
        call()


def _sym(name):
    import softhard

    return getattr(softhard, name)
