"""Inspection of tiny random transformers MoE models built from configs, saved and loaded from disk."""


import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from softhard.inspect import (InspectError, RouterCapture, Sensitivity, find_routers, inspect_model,  # noqa: E402
                              load_model, perturb_hidden)
from softhard.inspect.families import build_tiny, handed_selection  # noqa: E402
from softhard.inspect.hooks import capture_block_outputs  # noqa: E402
from softhard.inspect.loading import token_batches, vocab_size  # noqa: E402

_COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64)
NAMES = ["mixtral", "qwen2_moe", "olmoe", "deepseek_v3", "switch_transformers", "llama4", "gemma4", "nllb_moe"]


pytestmark = pytest.mark.usefixtures("quiet_transformers")


def tiny_model(name: str, path=None, seed: int = 0):
    """A tiny random model of the family ``name`` (``softhard.inspect.families``), saved to ``path`` and loaded
    back through ``load_model`` when ``path`` is given."""
    model = build_tiny(name, seed)
    if path is None:
        return model
    model.save_pretrained(path)
    return load_model(path)[0]


def random_batches(model, n_tokens=32, seq_len=8, batch_size=2, seed=0):
    ids = torch.randint(0, vocab_size(model), (n_tokens,), generator=torch.Generator().manual_seed(seed))
    return token_batches(model, ids, seq_len, batch_size)


def _router_logits(model, out):
    """The router logits the model itself records, one (N, K) tensor per MoE layer in module order."""
    if getattr(out, "encoder_router_logits", None) is not None:
        parts = list(out.encoder_router_logits) + list(out.decoder_router_logits)
    else:
        parts = list(out.router_logits)
    return [p for p in parts if isinstance(p, torch.Tensor)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    transformers.utils.logging.disable_progress_bar()
    return {name: tiny_model(name, root / name) for name in NAMES}


@pytest.mark.parametrize("name", ["mixtral", "deepseek_v3", "switch_transformers", "llama4", "gemma4"])
def test_captured_logits_are_the_models_own(saved, name):
    model = saved[name]
    sites = find_routers(model)
    got, handed = [], {}
    with handed_selection(sites, handed), RouterCapture(sites, lambda s, r, a: got.append(r)), torch.no_grad():
        out = model(**random_batches(model)[0].inputs, output_router_logits=True)
    ref = _router_logits(model, out)
    assert len(got) == len(ref) == len(sites) >= 1
    for r, x in zip(got, ref):
        x = x.reshape(r.logits.shape)
        if sites[0].slots.get("probs"):  # Gemma 4 records probabilities; softhard reads their log
            torch.testing.assert_close(torch.exp(r.logits), x, rtol=4e-7, atol=0)  # exp(log p): two roundings
        else:
            assert torch.equal(r.logits, x)
    for s, r in zip(sites, got):
        if handed.get(s.index) and handed[s.index][0].shape == r.selected.shape:
            assert torch.equal(torch.sort(handed[s.index][0], -1).values, torch.sort(r.selected, -1).values)


@pytest.mark.parametrize("name", ["mixtral", "deepseek_v3", "olmoe"])
def test_hooks_leave_outputs_unchanged(saved, name):
    model = saved[name]
    batch = random_batches(model)[0]
    with torch.no_grad():
        plain = model(**batch.inputs).logits
    sites = find_routers(model)

    def sink(site, routed, args):  # the heaviest sink: a perturbed re-routing as in inspect_model
        site.route(perturb_hidden(args[0], "noise", 0.1, torch.Generator().manual_seed(1)), args)

    store = {}
    with RouterCapture(sites, sink), capture_block_outputs(sites, store), torch.no_grad():
        hooked = model(**batch.inputs).logits
    assert torch.equal(plain, hooked) and len(store) == 2
    inspect_model(model, random_batches(model), taus=(0.5,), perturbation="noise", noise=0.1)
    with torch.no_grad():
        after = model(**batch.inputs).logits  # every hook is removed afterwards
    assert torch.equal(plain, after)


@pytest.mark.parametrize("name", NAMES)
def test_sensitivity_at_tau_one_is_exactly_zero(saved, name):
    model = saved[name]
    batches = random_batches(model)
    sites = find_routers(model)
    sens = None
    for b in batches:
        store = {}
        with capture_block_outputs(sites, store), RouterCapture(sites, lambda *a: None), torch.no_grad():
            out = model(**b.inputs)
        sens = sens or Sensitivity(sites, [0.25, 1.0], dense=True)
        sens.update(model, b.inputs, store, out.logits)
    for s in sites:
        rows = {r["tau"]: r for r in sens.result(s.index)}
        assert rows[1.0]["block"].value == 0.0 and rows[1.0]["final"].value == 0.0
        assert rows[1.0]["block"].n > 0
        assert rows[0.25]["block"].value > 1e-4
        if s.densify() is not None:
            assert rows["dense"]["block"].value > 1e-3  # dense routing does change the block


@pytest.mark.parametrize("name", ["mixtral", "deepseek_v3"])
def test_margins_and_statistics_match_direct_computation(saved, name):
    model = saved[name]
    batches = random_batches(model, n_tokens=36, seq_len=6, batch_size=3)
    ins = inspect_model(model, batches, taus=(), dense=False, perturbation=None, nearest=5, tie_widths=(0.01,))
    sites = find_routers(model)
    with RouterCapture(sites, lambda *a: None), torch.no_grad():  # reads each router once: identifies its rule
        model(**batches[0].inputs)
    with torch.no_grad():
        logits = [torch.cat(x) for x in zip(*[_router_logits(model, model(**b.inputs, output_router_logits=True))
                                              for b in batches])]
    ids = torch.cat([b.ids.reshape(-1) for b in batches])
    for lay, row, a, s in zip(ins.layers, ins.rows, logits, sites):
        rule = s.rule
        a = a.to(torch.float64)
        m = rule.margin(a).numpy()
        sorted_a = np.sort(a.numpy(), axis=1)[:, ::-1]
        dk = sorted_a[:, 1] - sorted_a[:, 2]  # raw-logit margin, k = 2
        w = np.asarray(lay["widths"])
        np.testing.assert_allclose(lay["beta"]["value"], (m[:, None] <= w).mean(0), rtol=0, atol=1e-15)
        np.testing.assert_allclose(lay["beta_logit"]["value"], (dk[:, None] <= w).mean(0), rtol=0, atol=1e-15)
        assert row["tie_w0.01"] == pytest.approx((m <= 0.01).mean(), abs=1e-15)
        assert row["margin_q50"] == pytest.approx(np.quantile(m, 0.5), abs=1e-12)
        assert row["tokens"] == 36 and row["agreement"] == 1.0
        if name == "mixtral":  # top-k of the logits: the decision margin is the logit margin
            np.testing.assert_allclose(m, dk, atol=1e-12)
        else:  # sigmoid scores plus a bias, group-limited: measured on s = sigmoid(a) + b
            assert row["margin_space"] == "scores" and not np.allclose(m, dk)
        order = np.argsort(m, kind="stable")[:5]
        near = lay["nearest"]
        assert [t["margin"] for t in near] == pytest.approx(m[order].tolist(), abs=1e-15)
        assert [t["token_id"] for t in near] == ids[order].tolist()
        sel = rule.select(a)
        load = np.bincount(sel.reshape(-1).numpy(), minlength=a.shape[1]) / sel.numel()
        np.testing.assert_allclose(lay["load"], load, atol=1e-15)


@pytest.mark.parametrize("name", ["qwen2_moe", "deepseek_v3"])
def test_flip_rate_is_bounded_by_near_tie_mass(saved, name):
    ins = inspect_model(saved[name], random_batches(saved[name], n_tokens=48), taus=(), dense=False,
                        perturbation="noise", noise=0.05, seed=3)
    for row in ins.rows:
        assert row["flip_rate"] <= row["flip_bound"] <= 1.0
    assert max(row["flip_rate"] for row in ins.rows) > 0  # noise of 5 % does flip some selections


def test_layer_selection_router_path_and_errors(saved):
    model = saved["mixtral"]
    assert [s.name for s in find_routers(model, layers="1")] == ["model.layers.1.mlp.gate"]
    by_path = find_routers(model, router_path="model.layers.*.mlp.gate")
    assert [s.name for s in by_path] == ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
    ins = inspect_model(model, random_batches(model), router_path="model.layers.*.mlp.gate", taus=(), dense=False)
    assert [r["layout"] for r in ins.rows] == ["triple"] * 2 and all(r["agreement"] == 1 for r in ins.rows)
    with pytest.raises(InspectError, match="layers"):
        find_routers(model, layers="0,5")
    with pytest.raises(InspectError, match="router_path"):
        find_routers(model, router_path="nothing.*")


def test_multimodal_model_inspects_its_language_model(saved):
    model = saved["llama4"]
    sites = find_routers(model)
    assert all("language_model." in s.name for s in sites) and vocab_size(model) == 128
    assert getattr(model.config, "vocab_size", None) is None  # the vocabulary lives in text_config


def test_model_without_moe_layers():
    cfg = transformers.LlamaConfig(**_COMMON)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(cfg)
    with pytest.raises(InspectError, match="has no MoE layers"):
        find_routers(model)


def test_monitor_in_training_leaves_the_models_router_outputs_alone(saved, tmp_path):
    from softhard.inspect import RoutingMonitor

    model = saved["mixtral"]
    batch = random_batches(model)[0]
    model.train()
    try:
        ref = model(**batch.inputs, output_router_logits=True, labels=batch.ids)
        with RoutingMonitor(model, tmp_path / "r.csv", every=1) as mon:
            got = model(**batch.inputs, output_router_logits=True, labels=batch.ids)
            got.loss.backward()
            rows = mon.step()
        assert all(m.training for m in model.modules())  # the eval-mode re-runs restored the training mode
    finally:
        model.zero_grad()
        model.eval()
    # the monitor re-ran each block twice (hard and dense) without feeding transformers' own recorders
    assert len(got.router_logits) == len(ref.router_logits) == 2
    assert torch.equal(got.aux_loss, ref.aux_loss) and torch.equal(got.logits, ref.logits)
    assert [r["layer"] for r in rows] == [0, 1] and all(r["soft_hard_gap"] > 0 for r in rows)
