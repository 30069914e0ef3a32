"""Every MoE family of the pinned transformers: a tiny random model of each, saved and loaded back, routes exactly as
softhard's routing rule says (agreement 1 against the selection the model hands its experts), and re-routes at a
temperature with its own selection held fixed (bit for bit at τ = 1)."""


import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pathlib import Path  # noqa: E402

from softhard.inspect.families import check_family, handed_selection, moe_families, table_line  # noqa: E402
from softhard.inspect.sensitivity import final_output  # noqa: E402

# the MoE families of transformers 5.23.0 (pinned in constraints.txt), as moe_families() enumerates them
FAMILIES = [
    "afmoe", "aria", "axk1", "axk2", "bailing_hybrid", "beam", "cohere2_moe", "dbrx", "deepseek_ocr2", "deepseek_v2",
    "deepseek_v3", "deepseek_v32", "deepseek_v4", "diffusion_gemma", "doge", "dots1", "dots3_note", "ernie4_5_moe",
    "ernie4_5_vl_moe", "exaone_moe", "flex_olmo", "flint", "gemma4", "glm4_moe", "glm4_moe_lite", "glm4v_moe",
    "glm5_next", "glm_moe_dsa", "gpt_oss", "granite_docling", "granitemoe", "granitemoe_swa", "granitemoehybrid",
    "granitemoeshared", "hunyuan_v1_moe", "hy_v3", "hy_v4", "inkling", "inkling2", "jamba", "jetmoe", "kimi_k25",
    "kimi_linear", "kolibri1", "laguna", "lfm2_moe", "llama4", "longcat_flash", "mellum", "mimo_v2_flash", "minimax",
    "minimax_m2", "minimax_m3_vl", "mistral4", "mistral_large4", "mixtral", "muse_spark", "nemotron3_5_transcribe",
    "nemotron_h", "nemotron_h_omni", "nllb_moe", "olmoe", "openai_privacy_filter", "phimoe", "qwen2_moe",
    "qwen3_5_moe", "qwen3_moe", "qwen3_next", "qwen3_omni_moe", "qwen3_vl_moe", "qwen4_exp", "solar_open", "step3p7",
    "switch_transformers", "unlimited_ocr", "vitpose_backbone", "zaya",
]
NOT_TOKEN_ROUTED = {"vitpose_backbone", "granite_docling"}
TEMPER_FREE = {"phimoe"}  # sparsemixer masks all but near-ties: its weights often do not depend on τ
TABLE_SAMPLE = {"mixtral", "deepseek_v3", "doge", "llama4", "vitpose_backbone", "nllb_moe"}  # checked against docs
# checked as the table is made, one token per forward (the rule identified over as many forwards as it takes); the
# first four were misread from a single token before (issue 20), NLLB and AXK2 compute other than their router says
ONE_TOKEN = TABLE_SAMPLE | {"afmoe", "minimax_m2", "hy_v3", "axk2", "qwen3_next"}
DOC = Path(__file__).resolve().parents[1] / "docs" / "inspect.md"


pytestmark = pytest.mark.usefixtures("quiet_transformers")


def test_the_families_are_those_of_the_installed_transformers():
    assert transformers.__version__ == "5.23.0"
    assert [f.name for f in moe_families()] == FAMILIES
    assert f"has **{len(FAMILIES)} MoE families**" in DOC.read_text(encoding="utf-8")


def _run(model, batch, ctx=None):
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # block-diffusion models draw their masks from the global RNG
        if ctx is None:
            return final_output(model(**batch.inputs))
        with ctx:
            return final_output(model(**batch.inputs))


@pytest.mark.parametrize("name", FAMILIES)
def test_softhard_routes_as_the_model_does(name, tmp_path):
    shape = {} if name in ONE_TOKEN else {"seq_len": 24, "batch_size": 2}  # the others: one batch of 48 tokens
    row, model, sites, batch = check_family(name, tmp_path, keep=True, **shape)
    if name in TABLE_SAMPLE:  # the table in docs/inspect.md is what scripts/inspect_families.py writes today
        assert table_line(row) in DOC.read_text(encoding="utf-8").splitlines()
    if name in NOT_TOKEN_ROUTED:
        assert row["status"] == "no-moe"
        return
    assert row["status"] == "supported", row["note"]
    assert row["agreement"] == 1.0 and row["layers"] >= 1
    assert row["weight_agreement"] in (1.0,) or row["weight_agreement"] != row["weight_agreement"]  # 1 or nan
    base = _run(model, batch)
    for s in sites:
        if s.rule is None:  # e.g. Ernie-VL's vision experts on text input
            continue
        ctx = s.temper(1.0)
        if ctx is None:
            assert s.rule.weights is None  # only unidentified weights leave no temperature runs
            continue
        assert torch.equal(_run(model, batch, ctx), base)  # τ = 1 repeats the model's own operations
        before, after = {}, {}
        with handed_selection([s], before):
            _run(model, batch)
        with handed_selection([s], after):
            hot = _run(model, batch, s.temper(0.5))
        assert all(torch.equal(a, b) for a, b in zip(before.get(s.index, []), after.get(s.index, [])))
        if name not in TEMPER_FREE:
            assert not torch.equal(hot, base)
        # per-row temperatures (the hardening's): the same bits as one float, where the format takes them
        rows = s.temper(lambda a, sel: torch.full(a.shape[:1], 0.5, dtype=torch.float64))
        if rows is None:
            assert s.layout.name == "switch-top1" or s.rule.weights == "sparsemixer"
        else:
            assert torch.equal(_run(model, batch, rows), _run(model, batch, s.temper(0.5)))
    for s in sites:  # the weights set row by row (the prices' reweight): the weights handed back are the model
        if s.rule is None:
            continue
        same = s.reweight(lambda a, sel, w: w)
        if same is None:
            assert s.layout.name in ("switch-top1", "product-key") or (
                s.layout.name == "logits" and s.rule.margin_space != "logits")
            continue
        assert torch.equal(_run(model, batch, same), base)
        if s.rule.k >= 2 and name not in TEMPER_FREE:  # halving every weight changes the output
            assert not torch.equal(_run(model, batch, s.reweight(lambda a, sel, w: w * 0.5)), base) or \
                s.layout.name == "logits"  # a block renormalising a softmax of log-weights: w/2 is w


def test_deepseek_v3_with_a_trained_bias_and_groups(tmp_path):
    """The selection is top-k of sigmoid(a) + bias within the best groups: the raw logits' top-k disagrees with the
    model on many tokens, softhard's rule on none."""
    row, model, sites, batch = check_family("deepseek_v3", tmp_path, keep=True, tokens=256)
    rule = sites[0].rule
    assert rule.grouped and rule.n_group == 4 and rule.topk_group == 2 and rule.bias is not None
    assert float(rule.bias.abs().max()) > 0 and row["agreement"] == 1.0
    seen = {}
    with handed_selection(sites, seen), torch.no_grad():
        from softhard.inspect import RouterCapture

        logits = []
        with RouterCapture(sites, lambda s, r, a: logits.append(r.logits)):
            model(**batch.inputs)
    own = torch.sort(seen[sites[0].index][0], -1).values
    raw = torch.sort(torch.topk(logits[0], rule.k, -1).indices, -1).values
    assert (raw != own).any(-1).float().mean() > 0.1
    assert torch.equal(rule.select(logits[0]), own)


def test_deepseek_v2_group_limited_greedy_with_more_experts_than_groups(tmp_path):
    """DeepSeek-V2's group_limited_greedy: groups scored by their best expert, top_k = 3 > topk_group = 2."""
    row, model, sites, _ = check_family("deepseek_v2", tmp_path, keep=True, tokens=256, overrides={
        "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2, "num_experts_per_tok": 3})
    rule = sites[0].rule
    assert (rule.k, rule.n_group, rule.topk_group, rule.group_top) == (3, 4, 2, 1)
    assert row["status"] == "supported" and row["agreement"] == 1.0


@pytest.mark.parametrize("name, scale", [("afmoe", ""), ("minimax_m2", ""), ("hy_v3", " × 2.826")])
def test_biased_rules_from_one_token_per_forward(name, scale, tmp_path):
    """With one token per forward the weights of a single call fit every candidate map with a per-expert scale, and
    the probes cannot tell the score maps apart: the rule is identified over as many calls as it takes."""
    row, model, sites, _ = check_family(name, tmp_path, keep=True)
    assert row["rule"] == f"top-2 of sigmoid(a) + bias; weights sigmoid(a)[S] normalised{scale}"
    assert row["truth"] == "experts" and row["agreement"] == 1.0 and row["weight_agreement"] == 1.0
    assert all(s.identified and not s.rule_note for s in sites)
    assert "identified from 16 tokens" in sites[0].rule.source  # one per forward: 16 forwards, the minimum


def test_nllb_moe_as_transformers_computes_it(tmp_path):
    """transformers 5.23's NllbMoeExperts one-hot encodes the top-1 mask it is handed again: experts 0 and 1 compute
    every token. Checked from outside: with experts 2..7 replaced by modules that fail when called, the forward runs
    and its output is unchanged."""
    row, model, sites, batch = check_family("nllb_moe", tmp_path, keep=True)
    assert all(s.rule.fixed_experts == (0, 1) for s in sites) and row["agreement"] == 1.0
    base = _run(model, batch)

    class Refuse(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("an expert other than 0 and 1 was called")

    for s in sites:
        for e in range(2, s.num_experts):
            s.block.experts[f"expert_{e}"] = Refuse()
    assert torch.equal(_run(model, batch), base)
    # what the router itself says (its top-2) is what softhard reported before: it differs from the experts' set
    got = []
    from softhard.inspect import RouterCapture

    with RouterCapture(sites[:1], lambda s, r, a: got.append(r)), torch.no_grad():
        model(**batch.inputs)
    router_top2 = torch.sort(got[0].selected, -1).values
    assert float((router_top2 != torch.tensor([0, 1])).any(-1).float().mean()) > 0.9


def test_axk2_masks_the_groups_left_out_with_zero(tmp_path):
    """AXK2 fills the scores of excluded groups with 0.0: with every selection bias at -3 (all allowed scores
    below 0), the experts it hands its experts module come from the excluded groups, which a -inf mask (DeepSeek-V3)
    never picks. softhard's rule selects as the model does; the -inf variant, computed here in plain torch, does
    not."""
    row, model, sites, batch = check_family("axk2", tmp_path, keep=True)
    rule = sites[0].rule
    assert rule.group_fill == 0.0 and rule.grouped and row["agreement"] == 1.0
    router = sites[0].router
    with torch.no_grad():
        router.e_score_correction_bias.fill_(-3.0)
    seen, logits = {}, []
    from softhard.inspect import RouterCapture

    with handed_selection(sites, seen), RouterCapture(sites, lambda s, r, a: logits.append(r.logits)), \
            torch.no_grad():
        model(**batch.inputs)
    own = torch.sort(seen[sites[0].index][0], -1).values
    a = logits[0].double()
    s = torch.sigmoid(a) - 3.0  # the -inf variant by hand: best 2 of 4 groups (sum of the top 2), top-2 within them
    g = s.view(-1, 4, s.shape[1] // 4).topk(2, -1).values.sum(-1)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter(1, g.topk(2, -1).indices, True)
    neg_inf = torch.sort(s.masked_fill(~keep.repeat_interleave(s.shape[1] // 4, 1), -math.inf).topk(2, -1).indices,
                         -1).values
    assert (neg_inf != own).any(-1).float().mean() > 0.5
    assert torch.equal(rule.select(logits[0]), own)


def test_hybrid_default_configs_run_without_a_cache(tmp_path):
    """A hybrid config whose (shrunk) default has linear-attention layers only fails to build its default KV cache;
    inspection runs without one (use_cache=False)."""
    row, model, sites, batch = check_family("qwen3_next", tmp_path, keep=True)
    cfg = model.config
    assert set(cfg.layer_types) == {"linear_attention"} and batch.inputs["use_cache"] is False
    with pytest.raises(ValueError, match="get_seq_length"):
        model(**{k: v for k, v in batch.inputs.items() if k != "use_cache"})
    assert row["status"] == "supported" and row["agreement"] == 1.0
