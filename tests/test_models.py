"""Routers, experts, the MoE predictors (2.4)/(2.10), teachers (5.1)–(5.3), score differences (3.1)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from softhard import (
    ConstantExperts,
    FunctionTeacher,
    HardTeacher,
    LinearExperts,
    LinearRouter,
    MLPExperts,
    MLPRouter,
    MoE,
    as_experts,
    as_router,
    as_teacher,
    mean_estimate,
    score_difference,
    score_gradient,
)

F64 = torch.float64
W = torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]], dtype=F64)
B = torch.tensor([0.0, -0.5, 0.25], dtype=F64)
EW = torch.tensor([[2.0, 0.0], [0.0, -1.0], [1.0, 1.0]], dtype=F64)
EB = torch.tensor([1.0, 0.0, -2.0], dtype=F64)
X = torch.tensor([[0.3, -0.2], [1.0, 1.0], [-2.0, 0.5], [0.0, 0.0]], dtype=F64)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- routers ------------------------------------------------------------------------------------------


def test_linear_router_logits_by_hand():
    r = LinearRouter(W, B)
    expected = X.numpy() @ W.numpy().T + B.numpy()
    assert np.allclose(r.logits(X).numpy(), expected, rtol=1e-15)
    lin = nn.Linear(2, 3).to(F64)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(B)
    assert torch.allclose(as_router(lin).logits(X), r.logits(X), rtol=1e-15)  # nn.Linear convention, d from it
    assert (r.num_experts, r.d) == (3, 2)


def test_binary_router_score():
    v = torch.tensor([2.0, -1.0], dtype=F64)
    r = LinearRouter.binary(v, b=0.5)
    assert torch.allclose(score_difference(r, X), X @ v + 0.5, rtol=1e-15)
    assert torch.allclose(r.logits(X).sum(1), torch.zeros(4, dtype=F64), atol=1e-15)  # gauge Σ a = 0


def test_mlp_router_forward_by_hand_and_seeding():
    state = torch.get_rng_state()
    r = MLPRouter(2, 3, hidden=(5, 4), seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    lin = [m for m in r.net if isinstance(m, nn.Linear)]
    h = X
    for m in lin[:-1]:
        h = torch.tanh(h @ m.weight.T + m.bias)
    assert torch.allclose(r.logits(X), h @ lin[-1].weight.T + lin[-1].bias, rtol=1e-14)
    assert all(p.dtype == F64 for p in r.parameters())
    same, other = MLPRouter(2, 3, hidden=(5, 4), seed=7), MLPRouter(2, 3, hidden=(5, 4), seed=8)
    assert all(torch.equal(p, q) for p, q in zip(r.parameters(), same.parameters()))
    assert not torch.equal(r.logits(X), other.logits(X))
    assert MLPRouter(2, 3, hidden=4.0).logits(X).shape == (4, 3)  # whole floats are accepted as ints


def test_callable_and_float32_module_routers():
    r = as_router(lambda x: torch.stack([x[:, 0], -x[:, 0], x[:, 1]], 1), d=2)
    assert (r.num_experts, r.d) == (3, 2)
    assert torch.equal(r.logits(X)[:, 2], X[:, 1])
    lin32 = nn.Linear(2, 4)  # float32: inputs are cast to its dtype
    out = as_router(lin32).logits(X)
    assert out.dtype == torch.float32 and out.shape == (4, 4)
    with torch.no_grad():
        assert torch.allclose(out, lin32(X.float()))


def test_router_bad_input():
    with pytest.raises(ValueError, match=r"'weight' parameter of LinearRouter must be an array of shape \(K, d\) with K >= 2"):
        LinearRouter([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"'bias' parameter of LinearRouter must be an array of shape \(3,\)"):
        LinearRouter(W, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"'weight' parameter of LinearRouter must be finite"):
        LinearRouter([[1.0, math.nan], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"'x' parameter of LinearRouter.logits must be an array of shape \(N, 2\)"):
        LinearRouter(W).logits(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"'x' parameter of LinearRouter.logits must be finite"):
        LinearRouter(W).logits([[0.0, math.inf]])
    with pytest.raises(ValueError, match=r"'d' parameter of as_router must be given"):
        as_router(lambda x: x)
    with pytest.raises(ValueError, match=r"'router' parameter of as_router must be a map \(N, d\) -> \(N, K\) with K >= 2"):
        as_router(lambda x: x[:, :1], d=2)
    with pytest.raises(ValueError, match=r"'router' parameter of as_router must be callable on inputs of shape \(N, 3\)"):
        as_router(nn.Linear(2, 3), d=3)
    with pytest.raises(TypeError, match=r"'router' parameter of as_router must be a Router"):
        as_router(42)
    with pytest.raises(ValueError, match=r"'num_experts' parameter of MLPRouter must be an int in \[2, inf\]"):
        MLPRouter(2, 1)
    with pytest.raises(ValueError, match=r"'activation' parameter of MLPRouter"):
        MLPRouter(2, 2, activation="sigmoid")


# --- experts ------------------------------------------------------------------------------------------


def test_experts_by_hand():
    e = LinearExperts(EW, EB)
    assert np.allclose(e.outputs(X).numpy(), X.numpy() @ EW.numpy().T + EB.numpy(), rtol=1e-15)
    c = ConstantExperts([1.0, -2.0, 3.0])
    assert torch.equal(c.outputs(X), torch.tensor([[1.0, -2.0, 3.0]] * 4, dtype=F64))
    m = MLPExperts(2, 3, hidden=4, seed=1)
    for k in range(3):
        hk = torch.tanh(X @ m.W1[k].T + m.b1[k]) @ m.W2[k] + m.b2[k]
        assert torch.allclose(m.outputs(X)[:, k], hk, rtol=1e-14)
    f = as_experts(lambda x: torch.stack([x.sum(1), x.prod(1)], 1), d=2)
    assert f.num_experts == 2 and torch.equal(f.outputs(X)[:, 1], X.prod(1))


def test_experts_bad_input():
    with pytest.raises(ValueError, match=r"'bias' parameter of LinearExperts must be an array of shape \(3,\)"):
        LinearExperts(EW, [1.0])
    with pytest.raises(ValueError, match=r"'values' parameter of ConstantExperts must be a non-empty 1-d array"):
        ConstantExperts([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"'hidden' parameter of MLPExperts must be an int in \[1, inf\]"):
        MLPExperts(2, 2, hidden=0)
    with pytest.raises(ValueError, match=r"'d' parameter of as_experts must be given"):
        as_experts(lambda x: x)
    with pytest.raises(ValueError, match=r"'experts' parameter of as_experts must be a map \(N, d\) -> \(N, K\)"):
        as_experts(lambda x: x.sum(1), d=2)


# --- MoE (2.4), (2.10) --------------------------------------------------------------------------------


def moe():
    return MoE(LinearRouter(W, B), LinearExperts(EW, EB))


def test_soft_and_hard_predictions_by_hand():
    m = moe()
    a = X.numpy() @ W.numpy().T + B.numpy()
    h = X.numpy() @ EW.numpy().T + EB.numpy()
    for tau in (0.1, 1.0, 7.0):
        f = (np_softmax(a / tau) * h).sum(1)  # (2.4)
        assert np.allclose(m.soft(X, tau).numpy(), f, rtol=1e-13)
        assert np.allclose(m(X, tau).numpy(), f, rtol=1e-13)
    assert np.array_equal(m.hard(X).numpy(), h[np.arange(4), a.argmax(1)])  # (2.10)
    grid = m.soft(X, [0.1, 1.0, 7.0])
    assert grid.shape == (4, 3)
    assert torch.allclose(grid[:, 1], m.soft(X, 1.0), rtol=1e-15)
    assert m.soft(X, torch.tensor(1.0)).shape == (4,)  # a 0-d tensor is a scalar τ


def test_hard_prediction_lowest_index_wins_a_tie():
    m = MoE(LinearRouter(W, torch.tensor([1.0, 1.0, 0.0], dtype=F64)), ConstantExperts([10.0, 20.0, 30.0]))
    assert m.hard(torch.zeros(1, 2)).tolist() == [10.0]  # a_0 = a_1 = 1 > a_2 = 0 at x = 0
    assert m.soft(torch.zeros(1, 2), 1e-9).tolist() == [15.0]  # the soft gate splits the tie


def test_soft_tends_to_hard_away_from_ties():
    m = moe()
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    a, h = m.logits(x), m.expert_outputs(x)
    delta = a.topk(2, 1).values
    delta = delta[:, 0] - delta[:, 1]
    x, a, h, delta = x[delta > 1e-3], a[delta > 1e-3], h[delta > 1e-3], delta[delta > 1e-3]
    assert torch.equal(m.soft(x, 1e-8), m.hard(x))  # e^{-1e5} = 0: exactly the hard predictor
    bh = float(h.abs().max())
    for tau in (1.0, 0.1, 0.01):
        # proof of Theorem 4.5: |f_τ − f_0| ≤ 2 B_h (1 − π_k*) ≤ 2 B_h (K−1) e^{−Δ/τ}
        gap = (m.soft(x, tau) - m.hard(x)).abs()
        assert bool((gap <= 2 * bh * 2 * torch.exp(-delta / tau) + 1e-12).all())


def test_loss_by_hand():
    m = moe()
    y = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=F64)
    assert torch.allclose(m.loss(X, y), (y - m.hard(X)) ** 2, rtol=1e-15)
    assert torch.allclose(m.loss(X, y, 0.3), (y - m.soft(X, 0.3)) ** 2, rtol=1e-15)
    assert m.loss(X, y, [0.1, 0.3]).shape == (4, 2)
    with pytest.raises(ValueError, match=r"'y' parameter of MoE.loss must be an array of shape \(4,\)"):
        m.loss(X, y[:3])


def test_moe_bad_input():
    with pytest.raises(ValueError, match=r"'experts' parameter of MoE must be 3 experts to match the router. Got 2"):
        MoE(LinearRouter(W), ConstantExperts([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"'experts' parameter of MoE must be of input dimension 2"):
        MoE(LinearRouter(W), LinearExperts(torch.zeros(3, 5)))
    with pytest.raises(ValueError, match=r"'x' parameter of MoE.soft must be an array of shape \(N, 2\)"):
        moe().soft(torch.zeros(3, 4), 1.0)
    for tau in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match=r"'tau' parameter of MoE.soft must be a float in \(0, inf\)"):
            moe().soft(X, tau)
    with pytest.raises(ValueError, match=r"'tau' parameter of MoE.soft must be an array of values > 0"):
        moe().soft(X, [0.1, 0.0])


# --- teachers (5.1)–(5.3) -----------------------------------------------------------------------------


def test_teachers_and_conditional_risk():
    m = moe()
    t = HardTeacher(m, noise_std=0.5)
    assert torch.equal(t.signal(X), m.hard(X))
    f = m.soft(X, 0.2)
    assert torch.allclose(t.conditional_risk(X, f), (m.hard(X) - f) ** 2 + 0.25, rtol=1e-15)  # (5.3)
    assert torch.allclose(t.conditional_risk(X, m.soft(X, [0.2, 1.0]))[:, 0], t.conditional_risk(X, f))
    ft = FunctionTeacher(lambda x: x[:, 0] ** 2, noise_std=0.0)
    assert torch.equal(ft.signal(X), X[:, 0] ** 2)
    assert torch.equal(ft.sample_y(X), X[:, 0] ** 2)  # noiseless
    assert isinstance(as_teacher(None, m), HardTeacher) and isinstance(as_teacher(m), HardTeacher)
    assert isinstance(as_teacher(lambda x: x[:, 0]), FunctionTeacher) and as_teacher(t) is t


def test_teacher_noise_has_the_stated_variance():
    t = FunctionTeacher(lambda x: x[:, 0], noise_std=0.7)
    x = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    y = t.sample_y(x, torch.Generator().manual_seed(2))
    assert torch.equal(y, t.sample_y(x, torch.Generator().manual_seed(2)))
    est = mean_estimate(torch.stack([y - x[:, 0], (y - x[:, 0]) ** 2], 1))
    assert abs(est.value[0]) <= 5 * est.stderr[0]
    assert abs(est.value[1] - 0.49) <= 5 * est.stderr[1]


def test_teacher_bad_input():
    with pytest.raises(ValueError, match=r"'noise_std' parameter of HardTeacher must be a float in \[0, inf\)"):
        HardTeacher(moe(), noise_std=-1.0)
    with pytest.raises(TypeError, match=r"'moe' parameter of HardTeacher must be a softhard MoE"):
        HardTeacher(lambda x: x)
    with pytest.raises(ValueError, match=r"'fn' parameter of FunctionTeacher must be a callable returning shape \(N,\)"):
        FunctionTeacher(lambda x: x).signal(X)
    with pytest.raises(TypeError, match=r"'teacher' parameter of as_teacher"):
        as_teacher(3.0)


# --- score differences (3.1) and their input gradients ------------------------------------------------


def test_score_difference_and_gradient_linear():
    r = LinearRouter(W, B)
    assert torch.allclose(score_difference(r, X, (1, 2)), X @ (W[1] - W[2]) + (B[1] - B[2]), rtol=1e-15)
    assert torch.allclose(score_gradient(r, X, (1, 2)), (W[1] - W[2]).expand(4, 2), rtol=1e-15)


def test_score_gradient_of_a_callable_by_hand():
    r = as_router(lambda x: torch.stack([x[:, 0] ** 2, x[:, 0] * x[:, 1], torch.sin(x[:, 1])], 1), d=2)
    g02 = torch.stack([2 * X[:, 0], -torch.cos(X[:, 1])], 1)  # ∇(x0² − sin x1)
    g12 = torch.stack([X[:, 1], X[:, 0] - torch.cos(X[:, 1])], 1)  # ∇(x0 x1 − sin x1)
    assert torch.allclose(score_gradient(r, X, (0, 2)), g02, rtol=1e-14)
    assert torch.allclose(score_gradient(r, X, (1, 2)), g12, rtol=1e-14)
    assert torch.allclose(score_difference(r, X, (0, 2)), X[:, 0] ** 2 - torch.sin(X[:, 1]), rtol=1e-15)
    plain = lambda x: torch.stack([x[:, 0] ** 2, torch.sin(x[:, 1])], 1)  # noqa: E731 - d is taken from x
    assert torch.allclose(score_gradient(plain, X), torch.stack([2 * X[:, 0], -torch.cos(X[:, 1])], 1), rtol=1e-14)


def test_score_gradient_of_an_mlp_by_finite_differences():
    r = MLPRouter(2, 3, hidden=(6,), seed=3)
    grad = score_gradient(r, X, (2, 0))
    h = 1e-6
    for j in range(2):
        e = torch.zeros(2, dtype=F64)
        e[j] = h
        fd = (score_difference(r, X + e, (2, 0)) - score_difference(r, X - e, (2, 0))) / (2 * h)
        assert torch.allclose(grad[:, j], fd, atol=1e-8)


@pytest.mark.parametrize("pair", [(0, 0), (0, 3), (-1, 1)])
def test_bad_pair(pair):
    with pytest.raises(ValueError, match=r"'pair' parameter of score_difference must be two distinct indices in \[0, 2\]"):
        score_difference(LinearRouter(W), X, pair)
