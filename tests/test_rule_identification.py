"""The routing rule is identified from enough tokens, then re-checked on every later call against what the experts
compute and the weights the router returns; a rule that stops agreeing is reported (issue 20 item 6)."""

import pytest
import torch
from torch import nn

from softhard.inspect import find_routers, inspect_model
from softhard.inspect.layouts import IDENTIFY_MIN_TOKENS
from softhard.inspect.loading import Batch


class Gate(nn.Module):
    """Top-2 of sigmoid(a) + bias, weights sigmoid(a)[S] normalised × 2; with ``flip`` it selects the bottom 2."""

    def __init__(self, d=6, K=8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(K, d, generator=g, dtype=torch.float64))
        self.e_score_correction_bias = nn.Buffer(torch.randn(K, generator=g, dtype=torch.float64) * 0.1)
        self.num_experts, self.top_k, self.flip, self.scale = K, 2, False, 2.0

    def forward(self, h):
        a = h @ self.weight.T
        s = torch.sigmoid(a) + self.e_score_correction_bias
        if self.flip:
            s = -s
        idx = torch.topk(s, 2, dim=-1).indices
        w = torch.sigmoid(a).gather(1, idx)
        return a, self.scale * w / w.sum(-1, keepdim=True), idx


class Experts(nn.Module):
    def __init__(self, d=6, K=8):
        super().__init__()
        self.w = nn.Parameter(torch.randn(K, d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64))

    def forward(self, h, idx, w):
        return (torch.einsum("nd,nked->nke", h, self.w[idx]) *
                w[..., None]).sum(1)


class Block(nn.Module):
    def __init__(self, switch_at=None, scale_at=None):
        super().__init__()
        self.scale_at = scale_at  # from block call scale_at + 1 on, the weights are scaled by 3 instead of 2
        self.gate, self.experts = Gate(), Experts()
        self.calls, self.switch_at = 0, switch_at  # from block call switch_at + 1 on, the router changes its rule

    def forward(self, x):
        self.calls += 1
        self.gate.flip = self.switch_at is not None and self.calls > self.switch_at
        self.gate.scale = 3.0 if self.scale_at is not None and self.calls > self.scale_at else 2.0
        _, w, idx = self.gate(x)
        return x + self.experts(x, idx, w)


def _batches(n_tokens, per_call):
    x = torch.randn(n_tokens, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return [Batch({"x": x[i:i + per_call]}, torch.arange(i, min(i + per_call, n_tokens))[:, None])
            for i in range(0, n_tokens, per_call)]


def test_one_token_per_call_is_identified_over_enough_calls():
    block = Block()
    ins = inspect_model(block, _batches(40, 1), taus=(), dense=False, perturbation=None, measure_overhead=False)
    row = ins.rows[0]
    assert row["rule"] == "top-2 of sigmoid(a) + bias; weights sigmoid(a)[S] normalised × 2"
    assert row["agreement"] == 1.0 and row["agreement_source"] == "experts" and row["weight_agreement"] == 1.0
    assert ins.meta["tokens"] == 40 and ins.meta["rule_checks"] == []
    # from the first call alone, softhard cannot tell the rule yet (the old reading): not settled after one call
    from softhard.inspect import RouterCapture

    sites = find_routers(Block())
    x = _batches(IDENTIFY_MIN_TOKENS, 1)
    with RouterCapture(sites, lambda s, r, a: None), torch.no_grad():
        sites[0].block(**x[0].inputs)
        assert not sites[0].identified
        for b in x[1:]:
            sites[0].block(**b.inputs)
    assert sites[0].identified and "identified from 16 tokens" in sites[0].rule.source


def test_a_rule_that_stops_agreeing_is_reported():
    # identified on the first call of 32 tokens, then the router picks the bottom 2 from its 3rd call on
    block = Block(switch_at=2)  # calls: 1 identification + 5 inspected (the first batch again, then the others)
    ins = inspect_model(block, _batches(32 * 5, 32), taus=(), dense=False, perturbation=None, measure_overhead=False)
    row = ins.rows[0]
    assert row["agreement"] == pytest.approx(1 / 5) and row["agreement_source"] == "experts"
    assert any("selects as the experts that computed each token on 20.0% of 160 tokens only" in line
               for line in ins.meta["rule_checks"])


def test_weights_that_stop_agreeing_are_reported():
    block = Block()
    ins = inspect_model(block, _batches(64, 32), taus=(), dense=False, perturbation=None, measure_overhead=False)
    assert ins.rows[0]["weight_agreement"] == 1.0
    block = Block(scale_at=2)  # calls: identification, then the two batches; the second one's weights drift
    ins = inspect_model(block, _batches(64, 32), taus=(), dense=False, perturbation=None, measure_overhead=False)
    assert ins.rows[0]["weight_agreement"] == pytest.approx(0.5) and ins.rows[0]["agreement"] == 1.0
    assert any("returned weights equal the identified weight map on 50.0% of 64 tokens only" in line
               for line in ins.meta["rule_checks"])
