"""Streaming statistics, hooks and layouts of softhard.inspect on small hand-made MoE modules."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from softhard.estimators.reducer import mean_estimate
from softhard.model.gates import topk_margin
from softhard.inspect import (InspectError, LayerStats, Routed, RoutingRule, StreamMean, find_routers, perturb_hidden,
                              relative_change)
from softhard.inspect.layouts import parse_layers
from softhard.inspect.stats import selection_changed


class _Block(nn.Module):
    def __init__(self, d=3, K=4, k=2, gate_name="gate"):
        super().__init__()
        setattr(self, gate_name, nn.Linear(d, K, dtype=torch.float64))
        self.experts = nn.ModuleList(nn.Linear(d, d, dtype=torch.float64) for _ in range(K))
        self.top_k = k


class _Unknown(nn.Module):  # an MoE with a router class softhard does not know
    def __init__(self):
        super().__init__()
        self.router = nn.Sequential(nn.Linear(3, 4))
        self.experts = nn.ModuleList(nn.Linear(3, 3) for _ in range(4))


def _site(K=4, k=2):
    site = find_routers(nn.Sequential(_Block(K=K, k=k)))[0]
    site.rule = RoutingRule(K, k, weights="block")  # what the first call identifies for a linear gate
    return site


def test_stream_mean_equals_the_reducer_on_the_whole_sample():
    x = np.random.default_rng(0).normal(size=(1000, 3))
    s = StreamMean()
    for part in np.array_split(x, 7):
        s.add(part)
    a, b = s.estimate(), mean_estimate(x)
    np.testing.assert_allclose(a.value, b.value, rtol=1e-13)
    np.testing.assert_allclose(a.stderr, b.stderr, rtol=1e-12)
    assert a.n == 1000 and math.isnan(StreamMean().estimate().value)


def test_reservoir_keeps_everything_then_a_uniform_sample():
    site = _site()
    st_all = LayerStats(site, [0.1], reservoir=100, seed=1)
    logits = torch.randn(80, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    st_all.update(Routed(logits, torch.topk(logits, 2).indices), np.arange(80))
    d = st_all.margins(logits)[0].numpy()
    assert np.array_equal(np.sort(st_all.sample[:, 0]), np.sort(d))  # n <= R: all of them
    # n > R: the stream 0, 1, ..., n-1 (as margins) -> a uniform sample of R distinct items
    n, R = 20000, 500
    st_big = LayerStats(site, [0.1], reservoir=R, seed=2)
    for start in range(0, n, 1500):
        v = torch.arange(start, min(n, start + 1500), dtype=torch.float64)
        st_big._reservoir_add(np.stack([v.numpy(), v.numpy()], 1))
        st_big.n += v.numel()
    kept = st_big.sample[:, 0]
    assert kept.size == R and np.unique(kept).size == R and kept.max() < n
    se = n / math.sqrt(12 * R) * math.sqrt(1 - R / n)  # mean of a uniform R-subset of 0..n-1
    assert abs(kept.mean() - (n - 1) / 2) < 5 * se
    assert (kept >= n / 2).mean() == pytest.approx(0.5, abs=5 * math.sqrt(0.25 / R))
    again = LayerStats(site, [0.1], reservoir=R, seed=2)
    for start in range(0, n, 1500):  # same seed, same stream -> same reservoir
        v = np.arange(start, min(n, start + 1500), dtype=np.float64)
        again._reservoir_add(np.stack([v, v], 1))
        again.n += v.size
    assert np.array_equal(again.sample, st_big.sample)


def test_layer_stats_by_hand():
    site = _site(K=3, k=1)
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 0.25], [2.0, 2.0, -1.0]], dtype=torch.float64)
    sel = torch.tensor([[0], [1], [1]])  # the model picked expert 1 on the tie of row 3
    s = LayerStats(site, [0.0, 0.3, 2.0], nearest=2)
    s.update(Routed(logits, sel), np.array([10, 11, 12]))
    # Δ = (2, 0.25, 0): β(0) = 1/3, β(0.3) = 2/3, β(2) = 1
    np.testing.assert_allclose(s.beta.estimate().value, [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(s.load, [1, 2, 0])
    assert s.agreement.estimate().value == pytest.approx(2 / 3)  # torch.topk picks expert 0 on row 3
    assert s.result()["nearest"] == [(0.0, 12), (0.25, 11)]
    p = torch.softmax(logits, -1)
    assert s.entropy.estimate().value == pytest.approx(float(-(p * p.log()).sum(-1).mean()))


@given(st.integers(2, 6), st.integers(0, 10_000), st.floats(1e-4, 1.0))
def test_flip_needs_a_margin_below_twice_the_logit_shift(K, seed, size):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(64, K, generator=g, dtype=torch.float64)
    b = a + size * torch.randn(64, K, generator=g, dtype=torch.float64)
    for k in range(1, K):
        flip = selection_changed(torch.topk(a, k).indices, torch.topk(b, k).indices)
        bound = topk_margin(a, k) <= 2 * (b - a).abs().max(-1).values
        assert bool((~flip | bound).all())


def test_hash_routing_has_no_boundary_mass():
    site = _site(K=4, k=2)
    site.rule = RoutingRule(4, 2, hash_table=torch.tensor([[0, 1], [2, 3], [1, 3]]), weights="block")
    s = LayerStats(site, [0.0, 1.0, 100.0])
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = torch.tensor([2, 0, 1])
    s.update(Routed(logits, torch.tensor([[1, 3], [0, 1], [2, 3]]), token_ids=ids), np.arange(3))
    res = s.result()
    assert res["beta"].value.tolist() == [0.0, 0.0, 0.0] and res["agreement"].value == 1.0
    assert res["density0"].value == 0.0 and res["density0"].method == "exact"


def test_perturbations():
    h = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    h16 = perturb_hidden(h, "fp16")
    assert h16.dtype == h.dtype and torch.equal(perturb_hidden(h16, "fp16"), h16) and not torch.equal(h16, h)
    hn = perturb_hidden(h, "noise", 0.01, torch.Generator().manual_seed(1))
    rel2 = (((hn - h).double().norm(dim=-1) / h.double().norm(dim=-1)) ** 2).numpy()
    est = mean_estimate(rel2)  # E|s·rms·z|²/|h|² = s² exactly
    assert abs(est.value - 1e-4) < 5 * est.stderr + 1e-7
    with pytest.raises(ValueError, match="kind"):
        perturb_hidden(h, "bf16")


def test_relative_change_by_hand():
    ref = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    new = torch.tensor([[3.0, 5.0], [1.0, 1.0], [1.0, 0.0]])
    assert relative_change(new, ref).tolist() == [0.2, 0.0]  # the zero row is left out


def test_find_routers_on_hand_made_modules():
    model = nn.Sequential(_Block(), nn.Tanh(), _Block(gate_name="router", k=1))
    sites = find_routers(model)
    assert [(s.name, s.layout.name, s.top_k, s.num_experts) for s in sites] == [
        ("0.gate", "unread", 2, 4), ("2.router", "unread", 1, 4)]
    x = torch.randn(5, 3, dtype=torch.float64)
    r = sites[0].read((x,), sites[0].router(x))  # the first call reads the format and identifies the rule
    assert sites[0].layout.name == "logits" and not r.observed and sites[0].rule.k == 2
    assert torch.equal(r.selected, torch.sort(torch.topk(r.logits, 2).indices, -1).values)
    with pytest.raises(InspectError, match="Unknown MoE router layout for model class _Unknown"):
        find_routers(_Unknown())
    assert find_routers(_Unknown(), router_path="router.0")[0].name == "router.0"
    with pytest.raises(InspectError, match="no MoE layers"):
        find_routers(nn.Sequential(nn.Linear(2, 2)))
    assert parse_layers("0,2,5-7") == [0, 2, 5, 6, 7] and parse_layers(None) is None
    with pytest.raises(InspectError, match="layers"):
        parse_layers("a-b")


def test_top_k_for_a_gate_whose_block_declares_none():
    block = _Block(K=5, k=2)
    del block.top_k  # a user's block that does not say how many experts it routes to
    site = find_routers(nn.Sequential(block), top_k=3)[0]
    x = torch.randn(7, 3, dtype=torch.float64)
    r = site.read((x,), site.router(x))
    assert site.rule.k == 3 and r.selected.shape == (7, 3)
    assert torch.equal(r.selected, torch.sort(torch.topk(r.logits, 3).indices, -1).values)
