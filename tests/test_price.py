"""Prices of a router change (``softhard.inspect.price``): the tempering paths by hand, the delete-one jackknife
against its closed forms, cutting top-k against hand-written forwards and a brute-force allocation, and the
predictions against their measurements (paired errors, 5 standard errors) on the digits MoE.

Tolerances: statistical comparisons use 5 standard errors; identities hold to rounding.
"""

import itertools
import math

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from softhard.estimators.jackknife import jackknife  # noqa: E402
from softhard.inspect import RoutingRule, find_routers  # noqa: E402
from softhard.inspect.hardening import LayerTemperature as LT  # noqa: E402
from softhard.inspect.hardening import harden, label_loss, routing  # noqa: E402
from softhard.inspect.hooks import read_routers  # noqa: E402
from softhard.inspect.loading import Batch  # noqa: E402
from softhard.inspect.price.curve import profile_basis, sequence_folds  # noqa: E402
from softhard.inspect.price.paths import choose_path, power_weights, weight_margin  # noqa: E402
from softhard.inspect.price.topk import allocate, cut_margin, cut_weights, cutting, price_topk  # noqa: E402


@pytest.fixture(scope="module")
def digits(digits_moe):
    return digits_moe


def _batches(res, size=600):
    idx = torch.arange(res.x.shape[0])
    return [Batch({"x": res.x[i:i + size]}, idx[i:i + size, None]) for i in range(0, res.x.shape[0], size)]


def _read_sites(model, x):
    sites = find_routers(model)
    read_routers(model, sites, {"x": x})
    return sites


# ----------------------------------------------------------------------------------------------
# the delete-one jackknife


def test_jackknife_of_a_mean_is_the_usual_standard_error():
    x = np.random.default_rng(0).standard_normal((50, 2)) + [1.0, -3.0]
    e = jackknife(x, lambda t: t / 50.0)  # the unit count fixed: f(S) = S / n
    # with one unit left out the mean of the others is (S - x_j) / (n - 1): the jackknife of that is s / sqrt(n)
    e2 = jackknife(x, lambda t: t / np.where(np.isclose(t[:, :1], x.sum(0)[0]), 50.0, 49.0))
    assert e.value == pytest.approx(x.sum(0) / 50)
    assert np.allclose(e2.stderr, x.std(0, ddof=1) / math.sqrt(50), rtol=1e-12)
    assert e.dof == 49 and e.method == "jackknife"


def test_jackknife_of_a_ratio_matches_the_delta_method():
    rng = np.random.default_rng(1)
    n = 4000
    a, b = rng.gamma(2.0, 1.0, n), rng.gamma(3.0, 1.0, n)
    e = jackknife(np.stack([a, b], 1), lambda t: t[:, 0] / t[:, 1])
    r = a.sum() / b.sum()  # delta method for a ratio of sums, written out independently
    delta = math.sqrt(((a - r * b) ** 2).sum() / (n - 1) * n) / b.sum()
    assert e.value == pytest.approx(r) and e.stderr == pytest.approx(delta, rel=0.02)
    with pytest.raises(ValueError, match="'stats' parameter of jackknife"):
        jackknife(np.ones((1, 2)), lambda t: t)


# ----------------------------------------------------------------------------------------------
# tempering paths


def test_weights_path_by_hand():
    w = torch.tensor([[0.5, 0.2, 0.3], [0.7, 0.0, 0.1], [0.4, 0.4, 0.2]], dtype=torch.float64)
    sel = torch.tensor([[0, 1, 2], [3, 4, -1], [1, 2, 5]])
    assert torch.equal(power_weights(w, sel, 1.0), w)  # τ = 1: the same numbers
    d = weight_margin(w, sel)
    assert d[0].item() == pytest.approx(math.log(0.5 / 0.3)) and d[1].item() == math.inf and d[2].item() == 0.0
    tau = 0.25
    got = power_weights(w, sel, tau)
    p = np.array([0.5, 0.2, 0.3]) ** 4
    assert got[0].numpy() == pytest.approx(p / p.sum() * 1.0)  # sum held (1.0)
    assert torch.equal(got[1], w[1])  # one positive weight: nothing to temper
    hard = power_weights(w, sel, 1e-6)
    assert hard[0].tolist() == pytest.approx([1.0, 0.0, 0.0]) and hard.sum(-1).tolist() == pytest.approx(
        w.sum(-1).tolist())
    # k = 2: the heavier expert's share is σ(Δ_w / τ), the paper's binary gate
    w2 = torch.tensor([[0.3, 0.1]], dtype=torch.float64) * 2.5  # sigmoid weights, not summing to 1
    share = power_weights(w2, torch.tensor([[0, 1]]), 0.3)[0, 0] / w2.sum()
    assert share.item() == pytest.approx(1 / (1 + math.exp(-math.log(3.0) / 0.3)), rel=1e-12)
    per_row = power_weights(w, sel, torch.tensor([1.0, 0.5, tau], dtype=torch.float64))
    assert torch.equal(per_row[0], w[0]) and torch.allclose(per_row[2], power_weights(w, sel, tau)[2])


def test_weights_path_equals_the_logits_path_for_renormalised_softmax(digits):
    model, x = digits.model, digits.x[:400]
    sites = _read_sites(model, x)
    assert all(choose_path(s)[0] == "logits" for s in sites)
    rows, u = torch.tensor([3, 7, 100]), torch.tensor([0.5, 2.0, 0.01])
    with torch.no_grad():
        for rules in ({0: LT(tau=0.3), 1: LT()}, {0: LT(), 1: LT(rows=rows, u=u)}):
            with routing(sites, rules, {0: "logits", 1: "logits"}):
                a = model(x)
            with routing(sites, rules, {0: "weights", 1: "weights"}):
                b = model(x)
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        with routing(sites, {0: LT(tau=1.0), 1: LT(tau=1.0)}, {0: "weights", 1: "weights"}):
            assert torch.equal(model(x), model(x).detach())


def test_choose_path_by_rule(digits):
    site = _read_sites(digits.model, digits.x[:8])[0]
    assert choose_path(site) == ("logits", None)
    site.rule = RoutingRule(num_experts=4, k=1)
    path, why = choose_path(site)
    assert path is None and "already hard routing" in why and "costs exactly 0" in why
    # a logits-only format whose selection is biased: the block's weights cannot be set, nor tempered at a/τ
    site.rule = RoutingRule(num_experts=4, k=2, scores="sigmoid", bias=torch.zeros(4), weights="block",
                            normalize=False)
    path, why = choose_path(site)
    assert path is None and "need not tend to hard routing" in why and "weights be set" in why
    assert choose_path(site, "logits")[0] is None


# ----------------------------------------------------------------------------------------------
# cutting top-k


def test_cut_weights_by_hand():
    a = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 2.0]], dtype=torch.float64)
    sel = torch.tensor([[0, 1, 2], [1, 3, 2]])
    soft = RoutingRule(num_experts=4, k=3, weights="softmax", normalize=True)
    w = torch.softmax(a.gather(1, sel), -1)
    got = cut_weights(soft, a, sel, w, 2)
    want = torch.zeros_like(w)
    want[:, :2] = torch.softmax(a.gather(1, sel)[:, :2], -1)  # the model at top-2: softmax of its top-2 logits
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    assert torch.equal(cut_weights(soft, a, sel, w, 3), w)
    plain = RoutingRule(num_experts=4, k=3, weights="sigmoid", normalize=False)
    ws = torch.sigmoid(a.gather(1, sel))
    torch.testing.assert_close(cut_weights(plain, a, sel, ws, 1), ws * torch.tensor([[1.0, 0, 0]] * 2))
    # ranked by the selection scores s = φ(a) + b, not by the logits
    biased = RoutingRule(num_experts=4, k=3, scores="sigmoid", bias=torch.tensor([0.0, 0.0, 5.0, 0.0]),
                         weights="sigmoid", normalize=True, weight_scale=torch.full((4,), 2.5, dtype=torch.float64))
    wb = 2.5 * ws / ws.sum(-1, keepdim=True)
    got = cut_weights(biased, a, sel, wb, 1)  # expert 2 (bias 5) ranks first in both rows
    assert got[0].tolist() == pytest.approx([0.0, 0.0, 2.5]) and got[1].tolist() == pytest.approx([0.0, 0.0, 2.5])
    delta, eps = cut_margin(soft, a, sel, w, 2)
    assert eps.tolist() == pytest.approx(w[:, 2].tolist())
    assert delta.tolist() == pytest.approx(torch.log((1 - w[:, 2]) / w[:, 2]).tolist())


def test_cut_model_is_hard_top1_by_hand(digits):
    model, x = digits.model, digits.x[:300]
    sites = _read_sites(model, x)
    with torch.no_grad():
        with cutting(sites, {0: 1, 1: 1}):
            cut = model(x)
        with routing(sites, {0: LT(), 1: LT()}):
            hard = model(x)  # hard top-1 of the logits (tested by hand in test_hardening)
        with cutting(sites, {0: 2, 1: 2}):
            assert torch.equal(model(x), model(x))
    torch.testing.assert_close(cut, hard, rtol=1e-12, atol=1e-12)


def test_allocate_is_the_brute_force_optimum():
    rng = np.random.default_rng(3)
    costs = {i: {4: 0.0, **{k: float(rng.exponential(1.0 / k)) for k in (1, 2, 3)}} for i in range(4)}
    for budget in range(4, 17):
        best = min((sum(costs[i][k] for i, k in enumerate(ks)), ks)
                   for ks in itertools.product((1, 2, 3, 4), repeat=4) if sum(ks) == budget)
        got = allocate(costs, budget)
        assert sum(got.values()) == budget
        assert sum(costs[i][k] for i, k in got.items()) == pytest.approx(best[0], abs=1e-12)
    assert allocate(costs, 3) is None and allocate(costs, 17) is None


def test_topk_price_on_digits(digits):
    p = price_topk(digits.model, _batches(digits), label_loss(digits.y), sample_tokens=600, seed=0)
    assert [(r["layer"], r["k"], r["k_cut"]) for r in p.rows] == [(0, 2, 1), (1, 2, 1)]
    assert p.rows[0]["measured"] > 3 * p.rows[0]["measured_stderr_seq"]  # dropping an expert of layer 0 costs
    for r in p.rows:
        assert abs(r["measured"] - r["predicted"]) <= 5 * r["diff_stderr"]
        assert r["contrasted"] > 0 and math.isfinite(r["predicted_stderr"])
    # the hard model of the hardening is the cut model at k = 1: the same loss change
    b = p.budgets[0]
    assert b["budget"] == 2 and b["allocation"] == "1,1" and b["chosen_minus_uniform"] == 0.0


def test_linear_contrast_is_the_derivative_along_the_cut(digits):
    """``predicted_linear`` (every row's gradient term, one backward pass through the router hooks) against an
    independent reference: a central finite difference of a hand-written forward, every row of one layer moved
    along the cut, ``w + ε (w' − w)``, ``w`` the softmax of the top-2 logits, ``w'`` hard top-1."""
    model, x, y = digits.model, digits.x[:300], digits.y[:300]
    idx = torch.arange(300)
    p = price_topk(model, [Batch({"x": x[:150]}, idx[:150, None]), Batch({"x": x[150:]}, idx[150:, None])],
                   label_loss(digits.y), sample_tokens=8, seed=0)

    def total(layer, eps):
        h = torch.tanh(model.embed(x))
        for i, b in enumerate(model.blocks):
            a = b.gate(h)
            top = torch.topk(a, 2, dim=-1)
            w = torch.zeros_like(a).scatter(1, top.indices, torch.softmax(top.values, -1))
            if i == layer:
                w = w + eps * (torch.nn.functional.one_hot(a.argmax(-1), a.shape[-1]).to(a) - w)
            e = torch.stack([ex(h) for ex in b.experts], dim=1)
            h = h + (w[:, :, None] * e).sum(1)
        return torch.nn.functional.cross_entropy(model.head(h), y, reduction="sum").item()

    with torch.no_grad():
        fd = [(total(i, 1e-5) - total(i, -1e-5)) / 2e-5 / 300 for i in (0, 1)]
    for r, want in zip(p.rows, fd):
        assert r["predicted_linear"] == pytest.approx(want, rel=1e-6, abs=1e-13)
    assert min(abs(v) for v in fd) > 1e-6  # nonzero derivatives (small: the router is trained), so it can fail


# ----------------------------------------------------------------------------------------------
# the whole-curve prediction and cross-fitting


def test_profile_basis_interpolates():
    u = np.array([0.1, 0.7, 2.0, 5.0])
    B = profile_basis(u, u)
    assert np.allclose(B, np.eye(4), atol=1e-12)
    x = np.array([0.3, 1.5, np.inf])
    f = lambda v: 1 / (1 + np.exp(v))  # noqa: E731 - σ(−u) = 1 − p: reproduced exactly
    assert np.allclose(f(u) @ profile_basis(x, u), [f(0.3), f(1.5), 0.0], atol=1e-12)


def test_folds_are_seeded_halves():
    a, b = sequence_folds(11, 0), sequence_folds(11, 1)
    assert a.sum() == 5 and np.array_equal(a, sequence_folds(11, 0)) and not np.array_equal(a, b)


def test_whole_curve_prediction_on_digits(digits):
    """Images do not interact, so each layer's measured curve is the sum of single-image effects (identity (1));
    the cross-fitted whole-curve prediction rebuilds it from the contrast profiles of the other half of the
    images, within 5 paired standard errors at every τ."""
    h = harden(digits.model, _batches(digits), label_loss(digits.y), taus=(1.0, 0.3, 0.1, 0.03), seed=0)
    assert h.meta["crossfit"] and sum(h.meta["folds"]) == 1797
    for r in h.rows:
        assert abs(r["gap"] - r["predicted_curve"]) <= 5 * r["curve_diff_stderr"]
        for i in h.meta["layers"]:
            assert abs(r[f"layer{i}_gap"] - r[f"layer{i}_predicted_curve"]) <= 5 * r[f"layer{i}_curve_diff_stderr"]
    assert h.rows[0]["curve_diff_stderr"] < h.rows[0]["gap_stderr_seq"] + h.rows[0]["predicted_curve_stderr"]
    for lay in h.layers:  # G1 at the three bandwidths, the one used among them, the spread in the error bar
        assert lay["G1"] in (lay["G1_h"], lay["G1_h2"], lay["G1_h4"]) and lay["G1_stderr"] >= lay["G1_h_stderr"] * 0
        assert lay["G1_stderr"] >= lay["G1_bandwidth_spread"]
    assert "first order G1*tau" in h.meta["verdict"] and "target" in h.meta["verdict"]


# ----------------------------------------------------------------------------------------------
# every family priced (a sample; scripts/price_families.py runs them all into docs/hardening.md)


@pytest.mark.parametrize("name, status, path", [
    ("llama4", "priced", "weights"),  # sigmoid(a)[S] not renormalised, masked-scores format
    ("doge", "priced", "logits"),  # product keys: per-row temperatures on the sub-key halves
    ("switch_transformers", "refused", ""),  # k = 1: already hard
])
def test_families_priced_or_refused_with_the_reason(name, status, path, quiet_transformers):
    from softhard.inspect.price.families import price_family

    row = price_family(name, tokens=256)
    assert (row["status"], row["path"]) == (status, path), row["note"]
    if status == "priced":
        assert math.isfinite(row["G1"]) and row["hard_minus_shipped"] != 0
    else:
        assert "already hard routing" in row["note"] and "costs exactly 0" in row["note"]
