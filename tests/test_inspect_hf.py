"""Inspection of tiny random transformers MoE models built from configs, saved and loaded from disk."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from softhard.inspect import (  # noqa: E402
    InspectError,
    RouterCapture,
    Sensitivity,
    find_routers,
    inspect_model,
    load_model,
    perturb_hidden,
)
from softhard.inspect.hooks import capture_block_outputs  # noqa: E402
from softhard.inspect.loading import token_batches  # noqa: E402
from softhard.model.gates import top_two_margin, topk_margin  # noqa: E402

VOCAB = 64
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64)
_DS = dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
           first_k_dense_replace=0, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=4,
           v_head_dim=8, n_group=1, topk_group=1)
# name -> (config class, model class, config keywords, expected layout)
SPECS = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2), "softmax-topk"),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2,
                  moe_intermediate_size=32, shared_expert_intermediate_size=32), "softmax-topk"),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2, eos_token_id=1,
              pad_token_id=0), "softmax-topk"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2,
                  moe_intermediate_size=32, head_dim=8, norm_topk_prob=True), "softmax-topk"),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2),
                   "softmax-of-topk"),
    "phimoe": ("PhimoeConfig", "PhimoeForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2), "sparsemixer"),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM", _DS, "deepseek-v2"),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", _DS, "deepseek-v3"),
    "switch": ("SwitchTransformersConfig", "SwitchTransformersForConditionalGeneration", None, "switch-top1"),
}
DONE_WHEN = ("mixtral", "qwen2_moe", "olmoe")  # the must-pass trio


def tiny_config(name: str):
    cfg_cls, _, kw, _ = SPECS[name]
    if name == "switch":
        return transformers.SwitchTransformersConfig(
            vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            num_experts=4, expert_capacity=6, num_sparse_encoder_layers=1, num_sparse_decoder_layers=1)
    return getattr(transformers, cfg_cls)(**_COMMON, **kw)


def tiny_model(name: str, path=None, seed: int = 0):
    """A random tiny model of family ``name`` (eval mode); saved to ``path`` and re-loaded from it if given."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = getattr(transformers, SPECS[name][1])(tiny_config(name)).eval()
    if path is None:
        return model
    model.save_pretrained(path)
    return load_model(path)[0]


def random_batches(model, n_tokens=24, seq_len=6, batch_size=2, seed=0):
    ids = torch.randint(0, VOCAB, (n_tokens,), generator=torch.Generator().manual_seed(seed))
    return token_batches(model, ids, seq_len, batch_size)


def _router_logits(model, out):
    """The router logits the model itself records, one (N, K) tensor per MoE layer in module order."""
    if getattr(out, "encoder_router_logits", None) is not None:
        parts = list(out.encoder_router_logits) + list(out.decoder_router_logits)
    else:
        parts = list(out.router_logits)
    K = 4
    return [p.reshape(-1, K) for p in parts if isinstance(p, torch.Tensor)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: tiny_model(name, root / name) for name in SPECS}


@pytest.mark.parametrize("name", list(SPECS))
def test_capture_equals_model_logits_and_selection(saved, name):
    model = saved[name]
    sites = find_routers(model)
    assert [s.layout.name for s in sites] == [SPECS[name][3]] * 2
    batch = random_batches(model)[0]
    got, chosen = [], []

    def sink(site, logits, selected, args):
        got.append(logits)
        chosen.append(selected)

    # what the experts module is handed by the block: the model's own selection
    handed = []
    pre = [s.block.experts.register_forward_pre_hook(lambda m, a: handed.append(a[1])) for s in sites]
    try:
        with RouterCapture(sites, sink), torch.no_grad():
            out = model(**batch.inputs, output_router_logits=True)
    finally:
        for h in pre:
            h.remove()
    ref = _router_logits(model, out)
    assert len(got) == len(ref) == 2
    for g, r in zip(got, ref):
        assert g.dtype == torch.float64 and torch.equal(g, r.to(torch.float64))
    for c, h in zip(chosen, handed):
        if name == "switch":  # one-hot dispatch (N, 1, K); dropped tokens are all-zero rows
            h = h.reshape(-1, 4)
            h = torch.where(h.sum(-1) > 0, h.argmax(-1), -1)[:, None]
        assert torch.equal(c, h.reshape(c.shape))
    if name in ("mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "granitemoe"):  # top-k of the logits
        for g, c in zip(got, chosen):
            top = torch.topk(g, c.shape[1], dim=-1).indices
            assert torch.equal(torch.sort(top, -1).values, torch.sort(c, -1).values)


@pytest.mark.parametrize("name", DONE_WHEN)
def test_hooks_leave_outputs_unchanged(saved, name):
    model = saved[name]
    batch = random_batches(model)[0]
    with torch.no_grad():
        plain = model(**batch.inputs).logits
    sites = find_routers(model)

    def sink(site, logits, selected, args):  # the heaviest sink: a perturbed re-routing as in inspect_model
        site.route(perturb_hidden(args[0], "noise", 0.1, torch.Generator().manual_seed(1)), args)

    store = {}
    with RouterCapture(sites, sink), capture_block_outputs(sites, store), torch.no_grad():
        hooked = model(**batch.inputs).logits
    assert torch.equal(plain, hooked) and len(store) == 2
    inspect_model(model, random_batches(model), taus=(0.5,), perturbation="noise", noise=0.1)
    with torch.no_grad():
        after = model(**batch.inputs).logits  # every hook is removed afterwards
    assert torch.equal(plain, after)


@pytest.mark.parametrize("name", list(SPECS))
def test_sensitivity_at_tau_one_is_exactly_zero(saved, name):
    model = saved[name]
    batches = random_batches(model)
    sites = find_routers(model)
    sens = Sensitivity(sites, [0.25, 1.0], dense=True)
    for b in batches:
        store = {}
        with capture_block_outputs(sites, store), torch.no_grad():
            out = model(**b.inputs)
        sens.update(model, b.inputs, store, out.logits)
    for s in sites:
        rows = {r["tau"]: r for r in sens.result(s.index)}
        assert rows[1.0]["block"].value == 0.0 and rows[1.0]["final"].value == 0.0
        assert rows[1.0]["block"].n > 0
        assert rows["dense"]["block"].value > 1e-3  # dense routing does change the block
        if name != "phimoe":  # sparsemixer masks all but near-ties: weights often do not depend on τ
            assert rows[0.25]["block"].value > 1e-4


def test_margins_and_statistics_match_direct_computation(saved):
    model = saved["mixtral"]
    batches = random_batches(model, n_tokens=36, seq_len=6, batch_size=3)
    ins = inspect_model(model, batches, taus=(), dense=False, perturbation=None, nearest=5, tie_widths=(0.01,))
    with torch.no_grad():
        logits = [torch.cat(x) for x in zip(*[_router_logits(model, model(**b.inputs, output_router_logits=True))
                                              for b in batches])]
    ids = torch.cat([b.ids.reshape(-1) for b in batches])
    for lay, row, a in zip(ins.layers, ins.rows, logits):
        a = a.to(torch.float64).numpy()
        s = np.sort(a, axis=1)[:, ::-1]
        d1, d2 = s[:, 0] - s[:, 1], s[:, 1] - s[:, 2]  # top-1 margin and top-k margin (k = 2)
        w = np.asarray(lay["widths"])
        np.testing.assert_allclose(lay["beta"]["value"], (d1[:, None] <= w).mean(0), rtol=0, atol=1e-15)
        np.testing.assert_allclose(lay["beta_k"]["value"], (d2[:, None] <= w).mean(0), rtol=0, atol=1e-15)
        assert row["tie_w0.01"] == pytest.approx((d2 <= 0.01).mean(), abs=1e-15)
        assert row["delta_q50"] == pytest.approx(np.quantile(d1, 0.5), abs=1e-12)
        assert row["tokens"] == 36 and row["agreement"] == 1.0
        np.testing.assert_allclose(torch.as_tensor(top_two_margin(torch.as_tensor(a))).numpy(), d1, atol=1e-12)
        np.testing.assert_allclose(topk_margin(torch.as_tensor(a), 2).numpy(), d2, atol=1e-12)
        order = np.argsort(d2, kind="stable")[:5]
        near = lay["nearest"]
        assert [t["margin"] for t in near] == pytest.approx(d2[order].tolist(), abs=1e-15)
        assert [t["token_id"] for t in near] == ids[order].tolist()
        assert [(t["sequence"], t["position"]) for t in near] == [divmod(int(i), 6) for i in order]
        load = np.bincount(np.argsort(-a, axis=1)[:, :2].reshape(-1), minlength=4) / 72
        np.testing.assert_allclose(lay["load"], load, atol=1e-15)


def test_flip_rate_is_bounded_by_near_tie_mass(saved):
    ins = inspect_model(saved["qwen2_moe"], random_batches(saved["qwen2_moe"], n_tokens=48), taus=(), dense=False,
                        perturbation="noise", noise=0.05, seed=3)
    for row in ins.rows:
        assert row["flip_rate"] <= row["flip_bound"] <= 1.0
    flips = [row["flip_rate"] for row in ins.rows]
    assert max(flips) > 0  # noise of 5 % does flip some top-2 sets of a random router


def test_layer_selection_router_path_and_errors(saved):
    model = saved["mixtral"]
    assert [s.name for s in find_routers(model, layers="1")] == ["model.layers.1.mlp.gate"]
    by_path = find_routers(model, router_path="model.layers.*.mlp.gate")
    assert [s.layout.name for s in by_path] == ["softmax-topk"] * 2
    with pytest.raises(InspectError, match="layers"):
        find_routers(model, layers="0,5")
    with pytest.raises(InspectError, match="router_path"):
        find_routers(model, router_path="nothing.*")


def test_unknown_layout_names_the_class_and_router_path_escape_hatch():
    cfg = transformers.FlexOlmoConfig(**_COMMON, num_experts=4, num_experts_per_tok=2, eos_token_id=1, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.FlexOlmoForCausalLM(cfg).eval()
    with pytest.raises(InspectError, match="Unknown MoE router layout for model class FlexOlmoForCausalLM"):
        find_routers(model)
    sites = find_routers(model, router_path="model.layers.*.mlp.gate")
    assert [s.layout.name for s in sites] == ["generic"] * 2
    b = random_batches(model)[0]
    got = []
    with RouterCapture(sites, lambda s, a, c, args: got.append((a, c))), torch.no_grad():
        out = model(**b.inputs, output_router_logits=True)
    for (a, c), r in zip(got, out.router_logits):
        assert torch.equal(a, r.to(torch.float64))
        assert torch.equal(torch.sort(c, -1).values, torch.sort(torch.topk(r, 2, -1).indices, -1).values)
    assert sites[0].layout.temper(sites[0], 0.5) is None  # tuple output: weight rule unknown


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
