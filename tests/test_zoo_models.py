"""The zoo (softhard.inspect.zoo.models): DeepSeek-V3's balancing checked by hand, seeded training and the cache,
what the test-sized models learned, their routing rules as softhard reads them, names and bad input."""

import dataclasses
import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from softhard.inspect import find_routers  # noqa: E402
from softhard.inspect.hooks import RouterCapture  # noqa: E402
from softhard.inspect.zoo import models  # noqa: E402
from softhard.inspect.zoo.train import heldout_ids, router_modules  # noqa: E402

QUICK = dataclasses.replace(models.DEEPSEEK_SMALL, steps=6, heldout_bytes=1024)  # seconds: determinism, cache


def _balance(config):
    model = transformers.DeepseekV3ForCausalLM(models._deepseek_config(config))
    return model, models.BiasBalance(model, config)


def test_bias_update_is_deepseek_v3s_rule_by_hand(quiet_transformers):
    cfg = dataclasses.replace(QUICK, layers=1, experts=4, groups=2, topk_groups=2, top_k=2, bias_update_speed=0.01)
    model, bal = _balance(cfg)
    router = router_modules(model)[0][1]
    # counts per expert 3, 2, 1, 0 (mean 1.5): overloaded 0 and 1 drop by γ, underloaded 2 and 3 rise by γ
    bal.indices = [torch.tensor([[0, 1], [0, 2], [0, 1]])]
    bal.after_step()
    assert router.e_score_correction_bias.tolist() == pytest.approx([-0.01, -0.01, 0.01, 0.01])
    bal.indices = [torch.tensor([[0, 1], [2, 3]])]  # balanced: no change
    bal.after_step()
    assert router.e_score_correction_bias.tolist() == pytest.approx([-0.01, -0.01, 0.01, 0.01])
    assert bal.record()["train_load_max_ratio"] == pytest.approx([(4 * 3 / 6 + 4 * 1 / 4) / 2])
    bal.close()


def test_sequence_wise_balance_loss_by_hand(quiet_transformers):
    cfg = dataclasses.replace(QUICK, layers=1, experts=4, groups=2, topk_groups=2, top_k=2, seq_len=3, aux_loss=0.5)
    _, bal = _balance(cfg)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2 * 3, 4))  # two sequences of three tokens
    idx = np.array([[0, 1], [0, 2], [1, 3], [2, 3], [2, 0], [2, 1]])
    bal.logits, bal.indices = [torch.tensor(logits, dtype=torch.float32)], [torch.tensor(idx)]
    want = 0.0
    for b in range(2):  # L = α Σ_i f_i P_i per sequence, averaged over sequences
        s = 1 / (1 + np.exp(-logits[3 * b:3 * b + 3]))
        p = (s / s.sum(1, keepdims=True)).mean(0)
        f = np.bincount(idx[3 * b:3 * b + 3].ravel(), minlength=4) * 4 / (2 * 3)
        want += (f * p).sum() / 2
    assert float(bal.loss(None)) == pytest.approx(0.5 * want, rel=1e-6)
    bal.close()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_training_is_seeded_and_the_cache_round_trips(tmp_path, monkeypatch, quiet_transformers):
    lm = models.zoo_lm("softhard:deepseek-lm", QUICK, cache_dir=tmp_path)
    assert lm.path.name.startswith("deepseek-lm-") and lm.name == "softhard:deepseek-lm"
    fresh, info = models.train_zoo_lm("deepseek-lm", QUICK)
    ids = heldout_ids(lm, 256).reshape(4, 64)
    assert torch.equal(_logits(fresh, ids), _logits(lm.model, ids))  # deterministic, and saved bit for bit
    biases = [r.e_score_correction_bias for _, r in router_modules(lm.model)]
    assert all(b.abs().max() > 0 for b in biases)  # the bias moved during training and was saved with the model
    assert all(torch.equal(a, r.e_score_correction_bias) for a, (_, r) in zip(biases, router_modules(fresh)))
    assert info["heldout_loss"] == lm.info["heldout_loss"]
    other, _ = models.train_zoo_lm("deepseek-lm", dataclasses.replace(QUICK, seed=1))
    assert not torch.equal(_logits(other, ids), _logits(fresh, ids))
    monkeypatch.setattr(models, "train_lm", lambda *a, **k: pytest.fail("the cached model was retrained"))
    again = models.zoo_lm("softhard:deepseek-lm", QUICK, cache_dir=tmp_path)
    assert torch.equal(_logits(again.model, ids), _logits(lm.model, ids))


@pytest.mark.parametrize("fixture", ["deepseek_lm_small", "qwen_lm_small"])
def test_small_models_beat_the_bigram_baseline_on_every_held_out_text(fixture, request):
    info = request.getfixturevalue(fixture).info
    assert info["heldout_loss"] + 5 * info["heldout_loss_stderr"] < info["bigram_loss"] < info["unigram_loss"]
    assert set(info["heldout_kinds"]) == {"prose", "code", "legal"}
    for kind, v in info["heldout_kinds"].items():
        assert v["loss"] + 2 * v["loss_stderr"] < v["bigram_loss"], kind
        assert v["tokens"] == (16384 // 64) * 63
    assert info["loss_curve"][-1][1] < info["loss_curve"][0][1] - 1.0
    assert len(info["heldout_load_max_ratio"]) == info["config"]["layers"]
    assert all(1 <= r <= info["config"]["experts"] for r in info["heldout_load_max_ratio"])


@pytest.mark.parametrize("fixture, rule", [
    ("deepseek_lm_small", "top-2 of sigmoid(a) + bias within the best 2 of 4 groups (group score: sum of the top 2); "
                          "weights sigmoid(a)[S] normalised × 2.5"),
    ("qwen_lm_small", "top-8 of softmax(a); weights softmax(a)[S] normalised")])
def test_softhard_reads_the_trained_rules(fixture, rule, request):
    lm = request.getfixturevalue(fixture)
    sites = find_routers(lm.model)
    assert len(sites) == lm.info["config"]["layers"]
    ids = heldout_ids(lm, 512).reshape(8, 64)
    agree = []

    def sink(site, routed, args):  # the rule's selection against the experts the model hands its experts
        mine = torch.sort(site.rule.select(routed.logits, routed.token_ids), -1).values
        agree.append(torch.equal(mine, torch.sort(routed.selected, -1).values))

    with RouterCapture(sites, sink), torch.no_grad():
        lm.model(input_ids=ids)
    assert agree == [True] * len(sites)
    assert [site.rule.describe() for site in sites] == [rule] * len(sites)


def test_names_seeds_and_the_list():
    assert models.parse_zoo_name("softhard:qwen-lm@1") == ("qwen-lm", 1)
    assert models.parse_zoo_name("softhard:deepseek-lm") == ("deepseek-lm", 0)
    assert models.parse_zoo_name("softhard:digits") is None and models.parse_zoo_name("/some/dir") is None
    with pytest.raises(ValueError, match=r"'model' parameter of inspect must be softhard:qwen-lm or "):
        models.parse_zoo_name("softhard:qwen-lm@x")
    with pytest.raises(ValueError, match=r"'model' parameter of zoo_lm must be one of softhard:tiny-lm"):
        models.zoo_lm("softhard:llama-lm")
    assert models.zoo_config("qwen-lm", 1).seed == 1 and models.zoo_config("qwen-lm", 1).experts == 32
    entries = models.list_zoo()
    assert [e["name"] for e in entries] == ["softhard:tiny-lm", "softhard:tiny-lm@1", "softhard:deepseek-lm",
                                            "softhard:deepseek-lm@1", "softhard:qwen-lm", "softhard:qwen-lm@1"]
    by = {e["name"]: e for e in entries}
    assert by["softhard:qwen-lm"]["experts"] >= 32 and by["softhard:qwen-lm"]["top_k"] == 8
    assert by["softhard:deepseek-lm"]["model_class"] == "DeepseekV3ForCausalLM"
    # parameters counted on the meta device, checked against the architecture by hand (Qwen3: no biases)
    q = models.QWEN
    per_layer = (2 * q.hidden  # two RMSNorms
                 + q.hidden * q.heads * q.head_dim * 2 + 2 * q.hidden * q.heads * q.head_dim + 2 * q.head_dim  # attn
                 + q.experts * q.hidden  # router
                 + q.experts * 3 * q.hidden * q.expert_intermediate)  # experts
    assert by["softhard:qwen-lm"]["params"] == 256 * q.hidden + q.hidden + q.layers * per_layer


def test_bad_configurations_name_the_parameter():
    with pytest.raises(ValueError, match=r"'groups' parameter of zoo_lm must be a divisor of experts = 16"):
        models.zoo_lm("softhard:deepseek-lm", dataclasses.replace(models.DEEPSEEK, groups=3))
    with pytest.raises(ValueError, match=r"'top_k' parameter of train_zoo_lm must be at most topk_groups"):
        models.train_zoo_lm("deepseek-lm", dataclasses.replace(models.DEEPSEEK, top_k=9))
    with pytest.raises(TypeError, match=r"'config' parameter of zoo_lm must be a QwenLMConfig"):
        models.zoo_lm("softhard:qwen-lm", models.DEEPSEEK)
    with pytest.raises(ValueError, match=r"'steps' parameter of zoo_lm"):
        models.zoo_lm("softhard:qwen-lm", dataclasses.replace(models.QWEN, steps=0))


def test_cli_inspects_a_zoo_model_by_name(deepseek_lm_small, zoo_cache, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from softhard.cli import app

    monkeypatch.setitem(models.DEFAULTS, "deepseek-lm", models.DEEPSEEK_SMALL)
    monkeypatch.setenv("SOFTHARD_CACHE", str(zoo_cache))
    monkeypatch.setattr(models, "train_lm", lambda *a, **k: pytest.fail("the cached model was retrained"))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["inspect", "softhard:deepseek-lm", "--out", str(out), "--tokens", "512", "--taus",
                                 "1", "--no-dense", "--no-overhead", "--no-progress", "--text", "softhard:prose"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["cache"] == str(deepseek_lm_small.path) and summary["meta"]["training_seed"] == 0
    assert summary["meta"]["source"] == "text" and len(summary["layers"]) == 2
    assert [layer["agreement"]["value"] for layer in summary["layers"]] == [1.0, 1.0]
    assert all(layer["rule"].startswith("top-2 of sigmoid(a) + bias within the best 2 of 4 groups")
               for layer in summary["layers"])
    r = CliRunner().invoke(app, ["inspect", "softhard:deepseek-lm", "--out", str(tmp_path / "o2"), "--layers", "5",
                                 "--no-progress"])
    assert r.exit_code == 2 and "'layers' parameter of inspect must be MoE layer indices in [0, 1]" in r.output
