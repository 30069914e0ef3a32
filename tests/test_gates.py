"""Gates and margins: (2.3), (2.6)–(2.12), (2.15)–(2.16), Lemma 4.1."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from softhard import (
    binary_entropy,
    concentration_bound,
    gate_entropy,
    hard_gate,
    hard_winner,
    pairwise_separation,
    softmax_gate,
    tail_sum,
    tolerance_width,
    top_two_margin,
    topk_margin,
)

BIG = 1e6


def logit_arrays(low=-BIG, high=BIG, kmax=7):
    """Logit vectors (K,) with 2 <= K <= kmax."""
    return st.integers(2, kmax).flatmap(lambda K: arrays(np.float64, K, elements=st.floats(low, high)))


small_int_logits = st.integers(2, 6).flatmap(lambda K: arrays(np.float64, K, elements=st.integers(-3, 3)))
taus = st.floats(-12, 6).map(lambda e: 10.0 ** e)  # τ log-uniform in [1e-12, 1e6]


# --- softmax gate (2.3) -------------------------------------------------------------------------------


@given(logit_arrays(), taus)
def test_softmax_finite_and_normalised(a, tau):
    p = softmax_gate(a, tau)
    assert p.dtype == torch.float64 and p.shape == a.shape
    assert torch.isfinite(p).all() and (p >= 0).all()
    assert abs(float(p.sum()) - 1.0) < 1e-12


def test_softmax_hand_values():
    p = softmax_gate([0.0, math.log(3.0)], 1.0)  # e^0 : e^{log 3} = 1 : 3
    assert torch.allclose(p, torch.tensor([0.25, 0.75], dtype=torch.float64), atol=1e-15)
    p = softmax_gate([[2.0, 0.0, 0.0]], 2.0)  # weights e : 1 : 1
    e = math.e
    assert torch.allclose(p, torch.tensor([[e, 1.0, 1.0]], dtype=torch.float64) / (e + 2), atol=1e-15)
    # the extreme corners of the stated range
    assert torch.equal(softmax_gate([BIG, -BIG], 1e-12), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # z = (a − max a)/τ = (0, −2): π = (σ(2), σ(−2))
    assert torch.allclose(softmax_gate([BIG, -BIG], 1e6), torch.sigmoid(torch.tensor([2.0, -2.0], dtype=torch.float64)),
                          atol=1e-15)


@given(st.integers(2, 6).flatmap(lambda K: st.lists(st.integers(-10 ** 6, 10 ** 6), min_size=K, max_size=K,
                                                    unique=True)))
def test_softmax_is_hard_gate_at_tiny_tau_without_ties(ints):
    a = np.array(ints, dtype=np.float64) * 1e-3  # distinct logits, gaps >= 1e-3 >> τ
    assert torch.equal(softmax_gate(a, 1e-12), hard_gate(a))


def test_softmax_splits_exact_ties_equally():
    p = softmax_gate([[1.0, 3.0, 3.0, -2.0]], 1e-12)
    assert torch.equal(p, torch.tensor([[0.0, 0.5, 0.5, 0.0]], dtype=torch.float64))
    assert torch.equal(hard_gate([[1.0, 3.0, 3.0, -2.0]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64))


def test_gates_follow_batch_shape_and_dtype():
    a = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    for f in (lambda x: softmax_gate(x, 0.5), hard_gate):
        out = f(a)
        assert out.shape == a.shape and out.dtype == torch.float32
    for f in (top_two_margin, pairwise_separation, hard_winner, lambda x: topk_margin(x, 3)):
        assert f(a).shape == (3, 4)


# --- hard gate (2.9) ----------------------------------------------------------------------------------


@given(small_int_logits)
def test_hard_gate_one_hot_lowest_index_wins(a):
    g = hard_gate(a)
    winner = min(i for i in range(len(a)) if a[i] == a.max())  # (2.9): k* = min argmax
    expected = np.zeros(len(a))
    expected[winner] = 1.0
    assert np.array_equal(g.numpy(), expected)
    assert int(hard_winner(a)) == winner


# --- margins (2.6), (2.12), top-k ---------------------------------------------------------------------


@given(logit_arrays(-50, 50))
def test_margins_against_brute_force(a):
    s = sorted(a.tolist(), reverse=True)
    assert float(top_two_margin(a)) == s[0] - s[1]
    delta = min(abs(x - y) for x, y in itertools.combinations(a.tolist(), 2))
    assert float(pairwise_separation(a)) == pytest.approx(delta, abs=1e-12)
    assert float(pairwise_separation(a)) <= float(top_two_margin(a))  # δ ≤ Δ
    for k in range(1, len(a)):
        assert float(topk_margin(a, k)) == s[k - 1] - s[k]


def test_margins_hand_values():
    a = [[0.5, 3.0, 2.0, -1.0]]
    assert top_two_margin(a).tolist() == [1.0]
    assert pairwise_separation(a).tolist() == [1.0]  # |0.5 - (-1)| = 1.5, |3 - 2| = 1, |2 - 0.5| = 1.5
    assert topk_margin(a, 2).tolist() == [1.5]
    assert topk_margin(a, 3).tolist() == [1.5]
    assert top_two_margin([[1.0, 1.0]]).tolist() == [0.0]


# --- Lemma 4.1 and (2.16) -----------------------------------------------------------------------------


@given(logit_arrays(-30, 30), st.floats(-3, 2).map(lambda e: 10.0 ** e))
def test_lemma_4_1(a, tau):
    p = softmax_gate(a, tau).numpy()
    k = int(hard_winner(a))
    miss = np.delete(p, k).sum()  # 1 − π_(1), summed over the losers (no cancellation)
    middle = float(tail_sum(a, tau))
    s = np.sort(a)[::-1]
    brute = sum(math.exp(-(s[0] - s[j]) / tau) for j in range(1, len(a)))
    assert middle == pytest.approx(brute, rel=1e-9, abs=1e-300)
    assert miss <= middle * (1 + 1e-12)
    bound = float(concentration_bound(a, tau))
    assert bound == pytest.approx((len(a) - 1) * math.exp(-(s[0] - s[1]) / tau), rel=1e-12, abs=1e-300)
    assert middle <= bound * (1 + 1e-12)
    assert 1 - p[k] <= bound + 1e-15  # (2.16)


def test_tail_sum_keeps_tiny_tails():
    # Δ/τ = 50: the tail e^{-50} ≈ 2e-22 is far below float64 resolution around 1
    assert float(tail_sum([50.0, 0.0], 1.0)) == pytest.approx(math.exp(-50.0), rel=1e-14)
    assert float(tail_sum([0.0, 0.0, -1.0], 1.0)) == pytest.approx(1 + math.exp(-1), rel=1e-15)  # a tie counts 1


# --- tolerance width (2.15) ---------------------------------------------------------------------------


def test_tolerance_width_hand_values():
    assert tolerance_width(0.3, 1 / (1 + math.e ** 2)) == pytest.approx(0.6, rel=1e-14)  # the paper's w = 2τ
    assert tolerance_width(2.0, 0.25) == pytest.approx(2 * math.log(3), rel=1e-15)
    grid = tolerance_width(torch.tensor([0.1, 1.0], dtype=torch.float64), 0.1)
    assert torch.allclose(grid, torch.tensor([0.1, 1.0], dtype=torch.float64) * math.log(9), rtol=1e-15)


@given(st.floats(-20, 20), st.floats(-20, 20), st.floats(-2, 1).map(lambda e: 10.0 ** e), st.floats(1e-6, 0.499))
def test_binary_tolerance_equivalence(a1, a2, tau, eps):
    w = tolerance_width(tau, eps)
    assume(abs(abs(a1 - a2) - w) > 1e-9 * max(1.0, w))  # away from the boundary, where rounding decides
    p1 = float(softmax_gate([a1, a2], tau)[0])
    assert (eps <= p1 <= 1 - eps) == (abs(a1 - a2) <= w)


# --- entropies ----------------------------------------------------------------------------------------


def test_entropies_hand_values():
    assert torch.allclose(binary_entropy([0.0, 0.5, 1.0]), torch.tensor([0.0, math.log(2), 0.0], dtype=torch.float64))
    assert float(binary_entropy(0.25)) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert float(gate_entropy([1.0, 1.0, 1.0, 1.0], 0.1)) == pytest.approx(math.log(4), rel=1e-15)
    # binary gate entropy equals the binary entropy of π_1 = σ(g/τ)
    assert float(gate_entropy([0.7, -0.2], 0.3)) == pytest.approx(float(binary_entropy(torch.sigmoid(
        torch.tensor(0.9 / 0.3, dtype=torch.float64)))), rel=1e-13)


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, -1.0, math.nan, math.inf])
@pytest.mark.parametrize("f", [softmax_gate, tail_sum, concentration_bound, gate_entropy])
def test_bad_tau(f, tau):
    with pytest.raises(ValueError, match=rf"'tau' parameter of {f.__name__} must be a float in \(0, inf\)"):
        f([1.0, 2.0], tau)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("f", [lambda a: softmax_gate(a, 1.0), hard_gate, hard_winner, top_two_margin,
                               pairwise_separation, topk_margin])
def test_non_finite_logits(f, bad):
    with pytest.raises(ValueError, match=r"'logits' parameter of \w+ must be finite .*Got 'non-finite"):
        f([[0.0, 1.0], [bad, 0.0]])


@pytest.mark.parametrize("logits", [[1.0], [[1.0], [2.0]], 3.0, []])
@pytest.mark.parametrize("f", [lambda a: softmax_gate(a, 1.0), hard_gate, top_two_margin, pairwise_separation])
def test_fewer_than_two_experts(f, logits):
    with pytest.raises(ValueError, match=r"'logits' parameter of \w+ must be an array of shape \(\.\.\., K\) with K >= 2"):
        f(logits)


def test_other_bad_parameters():
    with pytest.raises(TypeError, match=r"'tau' parameter of softmax_gate must be a float"):
        softmax_gate([1.0, 2.0], "hot")
    with pytest.raises(TypeError, match=r"'logits' parameter of softmax_gate must be an array of real numbers"):
        softmax_gate(["a", "b"], 1.0)
    with pytest.raises(ValueError, match=r"'k' parameter of topk_margin must be an int in \[1, 2\]. Got 3"):
        topk_margin([1.0, 2.0, 3.0], 3)
    for eps in (0.0, 0.5, -0.1, math.nan):
        with pytest.raises(ValueError, match=r"'eps' parameter of tolerance_width must be a float in \(0, 0.5\)"):
            tolerance_width(1.0, eps)
    with pytest.raises(ValueError, match=r"'tau' parameter of tolerance_width"):
        tolerance_width([1.0, -1.0], 0.1)
    with pytest.raises(ValueError, match=r"'p' parameter of binary_entropy must be an array of probabilities"):
        binary_entropy([0.5, 1.5])
