"""Routing rules as data: the decision margin against an exact brute-force minimal perturbation, and its
properties (invariance, flips need it)."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from softhard.inspect.rules import RoutingRule, group_topk_margin, topk_gap
from softhard.inspect.stats import selection_changed


def brute_force_margin(s: torch.Tensor, rule: RoutingRule) -> float:
    r"""Exact :math:`2\varepsilon^*` for one score vector ``s (K,)``: the smallest L∞ perturbation that makes the
    rule select another set, by one linear program per (target set, allowed groups, group witnesses) — the
    closure of "the allowed groups' witness sums beat every r-subset of every other group, and the target set beats
    every other allowed expert" — minimised with SciPy's HiGHS. Independent of the closed form under test."""
    from scipy.optimize import linprog

    s = s.to(torch.float64).numpy()
    K, k = s.size, rule.k
    G = rule.n_group if rule.grouped else 1
    t = rule.topk_group if rule.grouped else 1
    r, M = rule.group_top, K // G
    S0 = set(rule.select(torch.as_tensor(s)[None]).reshape(-1).tolist())
    groups = [list(range(j * M, (j + 1) * M)) for j in range(G)]
    n = K + 1  # variables: s' (K) and eps
    box = np.zeros((2 * K, n))
    box[:K, :K], box[K:, :K] = np.eye(K), -np.eye(K)
    box[:, K] = -1.0
    box_b = np.concatenate([s, -s])
    c = np.zeros(n)
    c[K] = 1.0
    best = math.inf
    for A in itertools.combinations(range(G), t):
        members = [i for j in A for i in groups[j]]
        out = [j for j in range(G) if j not in A]
        for witnesses in itertools.product(*[list(itertools.combinations(groups[j], r)) for j in A]):
            rows = []
            for W in witnesses:
                for j in out:
                    for Q in itertools.combinations(groups[j], r):
                        row = np.zeros(n)
                        row[list(Q)] += 1.0
                        row[list(W)] -= 1.0
                        rows.append(row)
            for S in itertools.combinations(members, k):
                if set(S) == S0:
                    continue
                extra = []
                for i in S:
                    for j in members:
                        if j not in S:
                            row = np.zeros(n)
                            row[j], row[i] = 1.0, -1.0
                            extra.append(row)
                A_ub = np.vstack([box] + rows + extra)
                b_ub = np.concatenate([box_b, np.zeros(len(rows) + len(extra))])
                res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=[(None, None)] * n, method="highs")
                if res.status == 0:
                    best = min(best, float(res.x[K]))
    return 2 * best


# (K, n_group, topk_group, k, group_top): plain top-k, DeepSeek-V3-like (sum of the top 2), DeepSeek-V2-like (max)
CASES = [(6, 1, 1, 2, 2), (6, 3, 1, 2, 2), (6, 3, 2, 3, 2), (8, 4, 2, 3, 2), (6, 3, 2, 1, 2), (8, 4, 2, 3, 1),
         (9, 3, 1, 2, 1), (9, 3, 2, 3, 2)]


@pytest.mark.parametrize("K, G, t, k, r", CASES)
def test_decision_margin_equals_the_brute_force_minimal_perturbation(K, G, t, k, r):
    rule = RoutingRule(K, k, scores="logits", n_group=G, topk_group=t, group_top=r)
    gen = torch.Generator().manual_seed(1000 * K + 100 * G + 10 * t + k + r)
    binding_group_term = 0
    for _ in range(12 if K < 9 else 3):
        s = torch.randn(1, K, generator=gen, dtype=torch.float64)
        m = float(rule.margin(s)[0])
        assert m == pytest.approx(brute_force_margin(s[0], rule), abs=1e-7)
        if rule.grouped:
            allowed = s.clone()
            g = s.view(1, G, K // G).topk(r, -1).values.sum(-1)
            keep = torch.zeros_like(g, dtype=torch.bool).scatter(1, g.topk(t, -1).indices, True)
            allowed[~keep.repeat_interleave(K // G, 1)] = -math.inf
            binding_group_term += m < float(topk_gap(allowed, k)[0]) - 1e-12
    if G > 1:  # the group terms decide the margin on some vectors: the check covers them
        assert binding_group_term > 0


def test_margin_properties():
    gen = torch.Generator().manual_seed(5)
    s = torch.randn(200, 8, generator=gen, dtype=torch.float64)
    rule = RoutingRule(8, 3, scores="logits", n_group=4, topk_group=2, group_top=2)
    m = rule.margin(s)
    torch.testing.assert_close(rule.margin(s + 3.7), m, rtol=0, atol=1e-12)  # one constant added: same selection
    assert bool((m >= 0).all())
    # a single group of everything is plain top-k: a_(k) - a_(k+1)
    plain = RoutingRule(8, 3)
    top = torch.sort(s, -1, descending=True).values
    torch.testing.assert_close(plain.margin(s), top[:, 2] - top[:, 3], rtol=0, atol=0)
    torch.testing.assert_close(group_topk_margin(s, 3, 1, 1, 2), top[:, 2] - top[:, 3], rtol=0, atol=0)
    # hash routing: no change of the scores moves the selection
    h = RoutingRule(8, 2, hash_table=torch.randint(0, 8, (50, 2), generator=gen))
    assert bool(torch.isinf(h.margin(s)).all()) and h.margin_space == "none"


def _random_rule(seed):
    g = torch.Generator().manual_seed(seed)
    kind = seed % 4
    if kind == 0:
        return RoutingRule(8, 2, scores="softmax")
    if kind == 1:
        return RoutingRule(8, 2, scores="sigmoid", bias=0.3 * torch.randn(8, generator=g, dtype=torch.float64),
                           n_group=4, topk_group=2, group_top=2)
    if kind == 2:
        return RoutingRule(8, 3, scores="softmax", n_group=4, topk_group=2, group_top=1)
    return RoutingRule(6, 2, scores="logits", bias=torch.randn(6, generator=g, dtype=torch.float64))


@given(st.integers(0, 10_000), st.floats(1e-3, 1.0))
def test_a_flip_needs_a_score_change_as_large_as_the_margin(seed, size):
    rule = _random_rule(seed)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(64, rule.num_experts, generator=g, dtype=torch.float64)
    b = a + size * torch.randn(64, rule.num_experts, generator=g, dtype=torch.float64)
    flip = selection_changed(rule.select(a), rule.select(b))
    ds = rule.margin_scores(b) - rule.margin_scores(a)
    need = rule.margin(a) <= ds.max(-1).values - ds.min(-1).values + 1e-12
    assert bool((~flip | need).all())


def test_margin_space_and_description():
    assert RoutingRule(8, 2, scores="softmax").margin_space == "logits"  # order-only: measured on the logits
    bias = torch.zeros(8, dtype=torch.float64)
    r = RoutingRule(8, 2, scores="sigmoid", bias=bias, n_group=4, topk_group=2, weights="sigmoid")
    assert r.margin_space == "scores"
    assert r.describe().startswith("top-2 of sigmoid(a) + bias within the best 2 of 4 groups")
    assert RoutingRule(8, 2, n_group=4, topk_group=2, group_top=1).margin_space == "logits"  # max: order-only
    with pytest.raises(ValueError, match="n_group"):
        RoutingRule(8, 2, n_group=3, topk_group=1)
    with pytest.raises(ValueError, match="'k' parameter"):
        RoutingRule(8, 5, n_group=4, topk_group=2)  # only 4 experts allowed
