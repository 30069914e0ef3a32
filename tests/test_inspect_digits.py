"""The digits MoE trained by softhard, its routing semantics, inspection and the training-time monitor."""

import csv
import math

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from softhard.inspect import RoutingMonitor, Sensitivity, find_routers, inspect_model, train_digits_moe  # noqa: E402
from softhard.inspect.hooks import capture_block_outputs, read_routers  # noqa: E402
from softhard.inspect.loading import Batch  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    return train_digits_moe(0, steps=30)


def _batches(res, n=300, size=100):
    idx = torch.arange(n)
    return [Batch({"x": res.x[i:i + size]}, idx[i:i + size, None]) for i in range(0, n, size)]


def test_training_is_seeded_and_learns(trained):
    assert trained.test_accuracy > 0.85 and trained.n_train == 1437  # 10 classes: chance is 0.1
    a, b, c = (train_digits_moe(s, steps=3) for s in (0, 0, 1))
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(a.model.head.weight, c.model.head.weight)


def _manual_block(block, x, weights_fn):
    a = block.gate(x)
    h = torch.stack([e(x) for e in block.experts], dim=1)  # (N, K, d)
    return (weights_fn(a)[:, :, None] * h).sum(1)


def test_temperature_and_dense_routing_mean_what_they_say(trained):
    block = trained.model.blocks[0]
    site = read_routers(trained.model, find_routers(trained.model), {"x": trained.x[:5]})[0]
    x = torch.tanh(trained.model.embed(trained.x[:50]))
    k, tau = block.top_k, 0.3

    def at_tau(a):  # softmax of a/τ over the model's own top-k, zero elsewhere
        top = torch.topk(a, k, dim=-1)
        return torch.zeros_like(a).scatter(1, top.indices, torch.softmax(top.values / tau, -1))

    with torch.no_grad():
        with site.temper(tau):
            got = block(x)
        torch.testing.assert_close(got, _manual_block(block, x, at_tau), rtol=1e-12, atol=1e-12)
        with site.densify():
            got = block(x)
        torch.testing.assert_close(got, _manual_block(block, x, lambda a: torch.softmax(a, -1)), rtol=1e-12,
                                   atol=1e-12)
        assert block.top_k == k  # restored


def test_inspection_of_the_trained_router(trained):
    ins = inspect_model(trained.model, _batches(trained), taus=(0.5, 1.0), perturbation="noise", noise=0.01)
    assert [r["layout"] for r in ins.rows] == ["logits", "logits"]
    assert ins.layers[0]["rule"] == "top-2 of a; weights computed by the block from a"
    for row, lay in zip(ins.rows, ins.layers):
        assert row["tokens"] == 300 and row["sens_block_tau1"] == 0.0 and row["sens_final_tau1"] == 0.0
        assert row["sens_block_tau0.5"] > 0 and row["sens_block_dense"] > 0
        assert 0 <= row["flip_rate"] <= row["flip_bound"] <= 1
        beta = np.asarray(lay["beta"]["value"])
        assert np.all(np.diff(beta) >= 0) and beta[-1] == 1.0
        assert np.all(np.diff(lay["beta_logit"]["value"]) >= 0)
        assert math.isfinite(row["density0"]) and row["density0_stderr"] > 0
        assert math.isfinite(row["tail_alpha"]) and row["tail_alpha"] > 0
        assert lay["nearest"][0]["text"].startswith("id ")


def test_monitor_logs_every_n_steps_without_changing_outputs(trained, tmp_path):
    from softhard.inspect.io import ScalarLog

    model = trained.model
    x, y = trained.x[:200], trained.y[:200]
    with torch.no_grad():
        plain = model(x)
    path = tmp_path / "routing.csv"
    log = ScalarLog()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the model stays as trained
    with RoutingMonitor(model, path, every=2, writers=log, max_expert_keys=3) as mon:
        for _ in range(5):
            out = model(x)
            torch.nn.functional.cross_entropy(out, y).backward()
            opt.step()
            opt.zero_grad()
            mon.step()
        with torch.no_grad():
            assert torch.equal(model(x), plain)
    rows = list(csv.DictReader(path.open()))
    assert [(int(r["step"]), int(r["layer"])) for r in rows] == [(0, 0), (0, 1), (2, 0), (2, 1), (4, 0), (4, 1)]
    assert math.isfinite(mon.overhead) and mon.overhead > 0
    for r in rows:
        assert int(r["tokens"]) == 200
        assert (0 <= float(r["boundary_mass_w0.01"]) <= float(r["boundary_mass_w0.1"])
                <= float(r["boundary_mass_w1"]) <= 1)
        assert 0 <= float(r["margin_p1"]) <= float(r["margin_p10"]) <= float(r["margin_p50"])
        assert 1 <= float(r["load_imbalance"]) <= 4 and 0 <= float(r["load_min"]) <= 1
        assert "expert0_load" not in r  # 4 experts > max_expert_keys = 3: summaries only
        # the same values under moe/<metric>_layer_<i>, i the block index in the module path (blocks.<i>.gate)
        i = int(r["log_layer"])
        assert r["module"] == f"blocks.{i}.gate"
        for key in ("boundary_mass_w0.1", "margin_p10", "pred_flip_rate_bf16", "load_imbalance", "soft_hard_gap"):
            assert (int(r["step"]), float(r[key])) in log[f"moe/{key}_layer_{i}"]
    assert not any(k.endswith("_stderr") or "overhead" in k or "tokens" in k for k in log.scalars)
    # the logged soft-vs-hard gap is the dense sensitivity of the block on the same tokens
    sites = find_routers(model)
    sens = Sensitivity(sites, [1.0], dense=True)
    store = {}
    with capture_block_outputs(sites, store), torch.no_grad():
        out = model(x)
    sens.update(model, {"x": x}, store, out)
    for r, s in zip(rows[:2], sites):
        dense = [q for q in sens.result(s.index) if q["tau"] == "dense"][0]["block"]
        assert float(r["soft_hard_gap"]) == pytest.approx(dense.value, rel=1e-12)
