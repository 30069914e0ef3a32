"""Every MoE family of the pinned transformers: a tiny random model of each, saved and loaded back, routes exactly as
softhard's routing rule says (agreement 1 against the selection the model hands its experts), and re-routes at a
temperature with its own selection held fixed (bit for bit at τ = 1)."""


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
TABLE_SAMPLE = {"mixtral", "deepseek_v3", "doge", "llama4", "vitpose_backbone"}  # rows checked against the docs
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
    row, model, sites, batch = check_family(name, tmp_path, keep=True)
    if name in TABLE_SAMPLE:  # the table in docs/inspect.md is what scripts/inspect_families.py writes today
        assert table_line(row) in DOC.read_text(encoding="utf-8").splitlines()
    if name in NOT_TOKEN_ROUTED:
        assert row["status"] == "no-moe"
        return
    assert row["status"] == "supported", row["note"]
    assert row["agreement"] == 1.0 and row["layers"] >= 1
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
