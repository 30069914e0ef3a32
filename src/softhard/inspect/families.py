r"""The MoE families of the installed transformers, a tiny random model of each, and a routing check.

A *family* is a model package ``transformers.models.<name>`` that defines mixture-of-experts modules (a class
named ``…Router``, ``…TopKGating``, ``…Experts``, ``…SparseMoe…``, ``…MoE``/``…Moe``) or whose configuration
(or its ``text_config``) declares experts (``num_experts``, ``num_local_experts``, ``n_routed_experts``,
``moe_num_experts``). :func:`moe_families` lists them from the installed package; :func:`tiny_config` shrinks a
family's default configuration to a model of a few hundred thousand parameters (hidden size 32, two layers, 8
experts, group-limited families with 4 groups); :func:`check_family` builds it, saves it, loads it back through
:func:`~softhard.inspect.loading.load_model`, sets every selection bias to random values, runs it on random
tokens and compares softhard's selection (the identified :class:`~softhard.inspect.rules.RoutingRule` applied to
the captured logits) with the experts the model itself hands to its experts module (or returns from its router
when the experts take no index). ``scripts/inspect_families.py`` writes the resulting table into
``docs/inspect.md``.
"""

from __future__ import annotations

import contextlib
import functools
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["Family", "moe_families", "family", "tiny_config", "build_tiny", "check_family", "table_line",
           "table_summary", "NOT_TOKEN_MOE"]

_EXPERT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_MOE_CLASS = re.compile(r"^class (\w*(?:Router|TopKGating|Experts|SparseMoe\w*|MoE|Moe|NaiveMoe|CDMoE))\(", re.M)
_EXPERT_FIELD = re.compile(r"^\s+(?:%s)\s*:" % "|".join(("num_experts", "num_local_experts", "n_routed_experts",
                                                             "moe_num_experts")), re.M)
_SUBCONFIG_KEYS = ("text_config", "thinker_config", "llm_config", "language_config")

# families whose "experts" are not chosen per token by a router: one line saying what they are instead
NOT_TOKEN_MOE = {
    "vitpose_backbone": "not a routed MoE: the expert MLP of each sample is picked by its dataset index",
    "granite_docling": "not a mixture of experts: a per-image density router chooses a connector path",
}

# facts about a family worth a line in the table
_NOTES = {
    "dbrx": "transformers 5.23's DbrxAttention reads attn_config.rope_theta and clip_qkv, which the default "
            "DbrxAttentionConfig lacks: the tiny config sets them (real checkpoints carry them)",
    "nllb_moe": "transformers 5.23's NllbMoeExperts one-hot encodes again the top-1 mask its block hands it, so "
                "experts 0 and 1 compute every token, weighted by the router's top-2 and top-1 probabilities",
    "phimoe": "selection: top-2 of the logits in eval mode; weights by the model's sparsemixer",
    "doge": "product-key experts: the K = n² scores are sums x_i + y_j of two sub-key logits",
    "deepseek_v4": "the tiny model's layers are hash layers (token id -> experts): margin infinite, β = 0",
    "switch_transformers": "encoder-decoder; tokens beyond an expert's capacity are dropped (counted)",
    "axk2": "the tiny config sets n_group=4, topk_group=2 (the grouped routing of the larger A.X-K2 releases); the "
            "groups left out are masked with 0.0, not -inf, as the model does",
}

# size fields shrunk in every (sub)configuration, when the configuration has them
_SIZES = {
    "hidden_size": 32, "d_model": 32, "intermediate_size": 64, "ffn_dim": 64, "d_ff": 64, "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
    "moe_shared_expert_intermediate_size": 32, "shared_intermediate_size": 32, "expert_ffn_hidden_size": 32,
    "ffn_hidden_size": 64, "moe_hidden_size": 32, "shared_experts_intermediate_size": 32,
    "num_hidden_layers": 2, "num_layers": 2, "encoder_layers": 2, "decoder_layers": 2, "num_decoder_layers": 2,
    "num_attention_heads": 4, "num_heads": 4, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 8, "d_kv": 8, "kv_channels": 8, "vocab_size": 128,
    "max_position_embeddings": 256, "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 4, "v_head_dim": 8, "qk_head_dim": 8,
    "num_experts": 8, "num_local_experts": 8, "n_routed_experts": 8, "moe_num_experts": 8,
    "num_experts_per_tok": 2, "moe_topk": 2, "top_k_experts": 2, "moe_k": 2, "moe_top_k": 2,
    "first_k_dense_replace": 0, "n_shared_experts": 1, "num_shared_experts": 1, "moe_num_shared_experts": 1,
    "out_hidden_size": 32, "depth": 1, "expert_capacity": 64,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
    "linear_num_heads": 2, "linear_head_dim": 8,
    "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_head_dim": 16, "mamba_d_state": 8, "ssm_state_size": 8,
    "n_groups": 1, "mamba_n_groups": 1, "mamba_expand": 2, "mamba_dt_rank": 4, "time_step_rank": 4,
    "index_n_heads": 2, "index_head_dim": 8, "index_topk": 16, "num_nextn_predict_layers": 0,
    "zero_expert_num": 2, "router_hidden_size": 16, "text_hidden_size": 32, "audio_hidden_size": 32,
    "adapter_in_dim": 32, "adapter_input_size": 32, "adapter_out_dim": 32, "projector_hidden_size": 32,
    "vocab_size_per_layer_input": 128, "hidden_size_per_layer_input": 8, "projector_input_dim": 32,
    "projector_output_dim": 32, "vision_output_dim": 32, "intermediate_size_mlp": 64,
}
# fields filled even when the default is None (the model reads them unconditionally)
_FILL_NONE = ("num_experts_per_tok", "head_dim", "num_experts", "n_routed_experts", "top_k_experts",
              "moe_intermediate_size", "num_key_value_heads", "n_shared_experts")
_GROUPS = {"n_group": 4, "topk_group": 2}
# per-family keyword overrides (after the generic shrinking)
_PYRAMID = {"num_hidden_layers": 4, "hidden_sizes": [8, 8, 16, 32], "depths": [1, 1, 1, 1]}
_OVERRIDES: dict[str, dict] = {
    "switch_transformers": {"num_sparse_encoder_layers": 1, "num_sparse_decoder_layers": 1},
    "beam": {"mlp_layer_types": ["dense", "sparse"]},
    "axk2": {"n_group": 4, "topk_group": 2},
    "deepseek_ocr2": {"text_config": {"mlp_layer_types": ["dense", "sparse"]}},
    "gemma4": {"text_config": {"enable_moe_block": True, "num_experts": 8, "top_k_experts": 2,
                               "moe_intermediate_size": 32}},
    "diffusion_gemma": {"text_config": {"enable_moe_block": True, "num_experts": 8, "top_k_experts": 2,
                                        "moe_intermediate_size": 32}},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 0},
    "muse_spark": {"vision_config": _PYRAMID, "audio_config": _PYRAMID},
    "flint": {"mlp_only_layers": []},
    "doge": {"is_moe": True, "num_experts": 16, "num_experts_per_tok": 2},
    "nllb_moe": {"encoder_sparse_step": 1, "decoder_sparse_step": 1},
    "step3p7": {"text_config": {"mlp_layer_types": ["dense", "sparse"], "sliding_window": 16}},
    "dots3_note": {"vision_config": {"per_layer_config": {}, "mlp_layer_types": ["dense", "dense"]},
                   "text_config": {"num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 16,
                                   "qk_nope_head_dim": 4}},
    "glm5_next": {"text_config": {"layer_types": ["linear_attention", "indexed_attention"],
                                  "mlp_layer_types": ["dense", "sparse"]}},
    "granitemoehybrid": {"layer_types": ["mamba", "attention"]},
    "ernie4_5_vl_moe": {"text_config": {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0,
                                                           "mrope_section": [1, 1, 2]}}},
    "nemotron_h_omni": {"vision_config": {"video_temporal_patch_size": 2}},
    "qwen4_exp": {"text_config": {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 8,
                                  "indexer_budget": 8, "indexer_compress_ratio": 2}},
    "zaya": {"num_experts_per_tok": 1},
    "bailing_hybrid": {"layer_group_size": 2},
    "glm4v_moe": {"text_config": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": [1, 1, 0], "partial_rotary_factor": 0.5}}},
    "dbrx": {"attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0}, "n_heads": 4, "n_layers": 2,
             "max_seq_len": 256, "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 8, "moe_top_k": 2}},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 1, "expert_layer_offset": 0},
}


@dataclass
class Family:
    """One MoE family: its package name, the model types it registers, the model type and class built."""

    name: str
    model_types: list[str]
    main: str | None
    model_class: str | None
    multimodal: bool = False
    notes: list[str] = field(default_factory=list)


def _models_dir() -> Path:
    import transformers.models

    return Path(transformers.models.__file__).parent


def _declares_experts(cfg) -> bool:
    for c in [cfg] + [getattr(cfg, k, None) for k in _SUBCONFIG_KEYS]:
        for f in _EXPERT_FIELDS:
            try:
                v = getattr(c, f, None) if c is not None else None
            except Exception:  # noqa: BLE001 - per-layer configs refuse ambiguous global reads
                v = 2
            if isinstance(v, int) and v > 1 or isinstance(v, (list, tuple)) and v:
                return True
    return False


def _model_class_name(model_type: str) -> tuple[str | None, bool]:
    from transformers.models.auto import modeling_auto as ma

    for mapping, mm in ((ma.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, True),
                        (ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, False),
                        (ma.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, False),
                        (ma.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, False),
                        (ma.MODEL_MAPPING_NAMES, False)):
        name = mapping.get(model_type)
        if name:
            return (name[0] if isinstance(name, (list, tuple)) else name), mm
    return None, False


def moe_families() -> list[Family]:
    """Every MoE family of the installed transformers (module docstring), sorted by name."""
    return list(_moe_families())


def family(name: str) -> Family:
    """The :class:`Family` called ``name`` (a package name under ``transformers.models``)."""
    for f in _moe_families():
        if f.name == name:
            return f
    raise ValueError(f"The 'family' parameter of family must be one of the MoE families of transformers. "
                     f"Got {name!r}.")


@functools.lru_cache(maxsize=1)
def _moe_families() -> tuple[Family, ...]:
    import transformers
    from transformers.models.auto import configuration_auto as ca

    by_dir: dict[str, list[str]] = {}
    for mt in ca.CONFIG_MAPPING_NAMES:
        by_dir.setdefault(ca.model_type_to_module_name(mt), []).append(mt)
    base = _models_dir()
    out = []
    for d in sorted(by_dir):
        pkg = base / d
        if not pkg.is_dir():
            continue
        moe = any(_MOE_CLASS.search(f.read_text(encoding="utf-8")) for f in pkg.glob("modeling_*.py"))
        if not moe:  # a wrapper whose language model is another package's MoE (its default text_config says so)
            src = "".join(f.read_text(encoding="utf-8") for f in pkg.glob("configuration_*.py"))
            moe = bool(_EXPERT_FIELD.search(src))
            for mt in by_dir[d] if not moe and "text_config" in src else ():
                try:
                    cfg = getattr(transformers, ca.CONFIG_MAPPING_NAMES[mt])()
                except Exception:  # noqa: BLE001 - a config that cannot be built with defaults
                    continue
                if _declares_experts(cfg):
                    moe = True
                    break
        if not moe:
            continue
        types = by_dir[d]
        ranked = []
        for mt in types:
            cls, mm = _model_class_name(mt)
            if cls is not None:
                ranked.append((mt not in (d, d.replace("_", "-")), mm is False, len(mt), mt, cls, mm))
        main = min(ranked) if ranked else None
        out.append(Family(d, types, main[3] if main else None, main[4] if main else None, bool(main and main[5])))
    return tuple(out)


def _get(obj, name):
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - per-layer configs refuse ambiguous global reads
        return None


def _fields(cfg_cls) -> set[str] | None:
    f = getattr(cfg_cls, "__dataclass_fields__", None)
    return set(f) if f else None


def _concrete(cfg_cls, default, name):
    """The concrete class of sub-config ``name`` (an ``AutoConfig`` entry resolves to the default's class)."""
    if isinstance(cfg_cls, type) and cfg_cls.__name__ != "AutoConfig":
        return cfg_cls
    sub = _get(default, name)
    return type(sub) if sub is not None and hasattr(sub, "to_dict") else None


def _shrink_kwargs(cfg_cls, overrides: dict | None = None, depth: int = 0) -> dict:
    """Keyword arguments making ``cfg_cls`` tiny (the size fields it has, recursively for its sub-configs)."""
    try:
        default = cfg_cls()
    except Exception:  # noqa: BLE001
        default = None
    names = _fields(cfg_cls)
    kw = {}
    for k, v in _SIZES.items():
        if names is not None and k not in names:
            continue
        dv = _get(default, k)
        if isinstance(dv, int) and not isinstance(dv, bool) and dv != 0 or dv is None and k in _FILL_NONE:
            kw[k] = v
        elif isinstance(dv, list) and dv and all(isinstance(x, int) for x in dv) and k in _EXPERT_FIELDS:
            kw[k] = v
    if "num_key_value_heads" in kw and _get(default, "num_key_value_heads") == _get(default, "num_attention_heads"):
        kw["num_key_value_heads"] = kw.get("num_attention_heads", 4)  # multi-head attention stays multi-head
    if _get(default, "kv_lora_rank") is not None:  # multi-head latent attention: head_dim follows the rope dim
        if "head_dim" in kw:
            kw["head_dim"] = kw.get("qk_rope_head_dim", 4)
        if "num_key_value_heads" in kw:
            kw["num_key_value_heads"] = kw.get("num_attention_heads", 4)
    for k, v in _GROUPS.items():
        dv = _get(default, k)
        if isinstance(dv, int) and dv > 1 or (k == "topk_group" and isinstance(dv, int) and "n_group" in kw):
            kw[k] = v
    if "n_group" in kw and "topk_group" not in kw:
        kw["n_group"] = 1
    plc = _get(default, "per_layer_config") if names is not None and "per_layer_config" in names else None
    if isinstance(plc, dict) and plc and all(str(i).isdigit() for i in plc):  # per-layer overrides of dropped layers
        n_layers = kw.get("num_hidden_layers", 2)
        kw["per_layer_config"] = {i: v for i, v in plc.items() if int(i) < n_layers}
    vocab = kw.get("vocab_size")
    if vocab is not None:
        for k in sorted(n for n in (names or ()) if n.endswith("token_id") or n.endswith("token_index")):
            dv = _get(default, k)
            if isinstance(dv, int) and dv >= vocab:
                kw[k] = {"pad_token_id": 0, "bos_token_id": 1}.get(k, 2)
            elif isinstance(dv, list) and any(isinstance(x, int) and x >= vocab for x in dv):
                kw[k] = 2
    if depth < 3:
        for name, declared in (getattr(cfg_cls, "sub_configs", None) or {}).items():
            sub = _concrete(declared, default, name)
            if sub is not None:
                kw[name] = _shrink_kwargs(sub, None, depth + 1)
                if sub is not declared and getattr(sub, "model_type", None):
                    kw[name]["model_type"] = sub.model_type
    for k, v in (overrides or {}).items():
        kw[k] = {**kw[k], **v} if isinstance(v, dict) and isinstance(kw.get(k), dict) else v
    return kw


def tiny_config(fam: Family | str, overrides: dict | None = None):
    """The family's default configuration with the size fields shrunk (module docstring), then ``overrides``."""
    import transformers
    from transformers.models.auto import configuration_auto as ca

    fam = fam if isinstance(fam, Family) else family(fam)
    cls = getattr(transformers, ca.CONFIG_MAPPING_NAMES[fam.main])
    return cls(**_shrink_kwargs(cls, {**_OVERRIDES.get(fam.name, {}), **(overrides or {})}))


def build_tiny(fam: Family | str, seed: int = 0, bias_scale: float = 0.05, overrides: dict | None = None):
    """A tiny random model of the family (eval mode): router weights ``N(0, 1/d)`` (logits of order 1, as in
    trained routers), every selection bias drawn ``N(0, bias_scale²)``."""
    import transformers

    fam = fam if isinstance(fam, Family) else family(fam)
    cfg = tiny_config(fam, overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, fam.model_class)(cfg).eval()
        with torch.no_grad():
            from .layouts import InspectError, find_routers

            try:  # trained routers have logits of order 1; the default initialisation gives ~0.1
                sites = find_routers(model)
            except InspectError:
                sites = []
            for s in sites:
                for p in s.router.parameters():
                    if p.ndim == 2 and p.is_floating_point():
                        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) / p.shape[1] ** 0.5)
                for b in s.router.buffers(recurse=False):  # a hash table token id -> experts: distinct experts
                    if b.ndim == 2 and not b.is_floating_point() and b.shape[1] <= s.num_experts:
                        rows = torch.stack([torch.randperm(s.num_experts, generator=g)[:b.shape[1]]
                                            for _ in range(b.shape[0])])
                        b.copy_(rows.to(b.dtype))
            for name, t in list(model.named_parameters()) + list(model.named_buffers()):
                if name.rsplit(".", 1)[-1] in ("e_score_correction_bias", "expert_bias") and t.is_floating_point():
                    t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) * bias_scale)
    return model


def check_family(fam: Family | str, workdir=None, seed: int = 0, tokens: int = 48, overrides: dict | None = None,
                 keep: bool = False, seq_len: int = 1, batch_size: int = 1):
    """Build, save, reload, run and check one family. Returns ``{"family", "status", "rule", "layers",
    "agreement", "weight_agreement", "truth", "note", "model_class"}`` where status is ``supported``,
    ``unsupported``, ``not built`` or ``no-moe``; with ``keep`` also ``(model, sites, batch)`` (``None`` when not
    built; ``batch`` all the tokens as two sequences).

    The ``tokens`` random tokens run as batches of ``batch_size`` sequences of ``seq_len`` (default one token per
    forward, the hardest case for identifying a rule): the rules are identified as ``softhard inspect`` does (as
    many forwards as it takes, :func:`softhard.inspect.layouts.identify_rule`), then every batch runs again and
    softhard's selection is compared, token by token, with the experts that really computed the token
    (``truth = "experts"``: :func:`softhard.inspect.hooks.experts_truth`), or with the router's returned selection
    where the experts cannot be watched (``truth = "router output"``); ``weight_agreement`` is the share of tokens
    whose returned weights equal the identified weight map."""
    from .hooks import RouterCapture
    from .layouts import InspectError, find_routers, settle
    from .loading import load_model, token_batches, vocab_size
    from .stats import weights_agree

    fam = fam if isinstance(fam, Family) else family(fam)
    row = {"family": fam.name, "model_class": fam.model_class, "status": "unsupported", "rule": "", "layers": 0,
           "agreement": float("nan"), "weight_agreement": float("nan"), "truth": "", "note": ""}
    kept = (None, None, None)

    def done():
        return (row, *kept) if keep else row

    if fam.name in NOT_TOKEN_MOE:
        row.update(status="no-moe", note=NOT_TOKEN_MOE[fam.name])
        return done()
    if fam.model_class is None:
        row["note"] = "no model class with a language-model head or a base model is registered"
        return done()
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    path = Path(workdir or tmp.name) / fam.name
    try:
        try:
            model = build_tiny(fam, seed, overrides=overrides)
            model.save_pretrained(path)
            model, _ = load_model(path)
        except Exception as e:  # noqa: BLE001 - recorded in the table
            row.update(status="not built", note=f"tiny model not built: {type(e).__name__}: {_line(e)}")
            return done()
        try:
            sites = find_routers(model)
        except InspectError as e:
            row["note"] = _line(e)
            row["status"] = "no-moe" if "has no MoE layers" in str(e) else "unsupported"
            return done()
        ids = torch.randint(0, vocab_size(model), (tokens,), generator=torch.Generator().manual_seed(seed))
        batches = token_batches(model, ids, seq_len, batch_size)
        got = {}
        try:
            with torch.no_grad():
                with RouterCapture(sites, lambda site, routed, args: None):  # identification, as inspect does
                    for b in batches:
                        if not any(s.rule is None or not s.identified for s in sites):
                            break
                        model(**b.inputs)
                settle(sites)
                with RouterCapture(sites, lambda site, routed, args: got.setdefault(site.index, []).append(routed)):
                    for b in batches:
                        model(**b.inputs)
        except Exception as e:  # noqa: BLE001
            row["note"] = f"{type(e).__name__}: {_line(e)}"
            return done()
        kept = (model, sites, token_batches(model, ids, max(1, tokens // 2), 2)[0])  # all tokens, for re-runs
        agree = n = w_agree = w_n = 0
        sources = set()
        for s, routed in ((s, r) for s in sites for r in got.get(s.index, [])):
            with torch.no_grad():
                mine = s.rule.select(routed.logits, routed.token_ids).cpu()
                if routed.truth is not None:
                    t = routed.truth.cpu()
                    mem = torch.zeros_like(t).scatter(1, mine.clamp_min(0), True)
                    ok = (mem == t).all(-1) | (bool(s.rule.capacity) & (t <= mem).all(-1))
                    sources.add("experts")
                elif routed.observed:
                    own = torch.sort(routed.selected.cpu(), -1).values
                    ok = (mine == own).all(-1) | (own < 0).any(-1)
                    sources.add("router output")
                else:
                    continue
                agree += int(ok.sum())
                n += ok.numel()
                sel = routed.selected
                kept_rows = (sel >= 0).all(-1)
                if routed.weights is not None and s.rule.weights not in (None, "block", "sparsemixer") and bool(
                        kept_rows.any()):
                    wa = weights_agree(s.rule, routed.logits[kept_rows], sel[kept_rows], routed.weights[kept_rows])
                    w_agree += int(wa.sum())
                    w_n += wa.numel()
        called = [s for s in sites if s.rule is not None]
        row.update(layers=len(called), rule=called[0].rule.describe() if called else "",
                   agreement=agree / n if n else float("nan"), weight_agreement=w_agree / w_n if w_n else float("nan"),
                   truth=" and ".join(sorted(sources)))
        if not called:
            row["note"] = "no router was called on text input"
        elif n == 0:
            row.update(status="supported", note="selection not observable (the router returns logits only)")
        elif agree == n and (w_n == 0 or w_agree == w_n):
            row["status"] = "supported"
        elif agree < n:
            row["note"] = f"softhard's selection differs from the experts' on {n - agree} of {n} tokens"
        else:
            row["note"] = f"the returned weights differ from the identified weight map on {w_n - w_agree} of {w_n} tokens"
        amb = [f"layer {s.index}: {s.rule_note}" for s in called if s.rule_note]
        if amb:
            row["note"] = "; ".join(x for x in (row["note"], "ambiguous rule: " + "; ".join(amb)) if x)
        if row["status"] == "supported" and called and not called[0].rule.weights:
            row["note"] = "weights not identified: no temperature re-routing"
        if row["status"] == "supported" and fam.name in _NOTES:
            row["note"] = "; ".join(x for x in (row["note"], _NOTES[fam.name]) if x)
        return done()
    finally:
        if tmp is not None:
            tmp.cleanup()


@contextlib.contextmanager
def handed_selection(sites, store: dict):
    """Within the block, ``store[site.index]`` collects the integer selection ``(N, k)`` each MoE block hands its
    experts module (Doge: its expert embedding) — the model's own choice, independent of softhard's reading."""
    handles = []
    for s in sites:
        ex = getattr(s.block, "experts", None)
        if not isinstance(ex, torch.nn.Module):  # Doge: the selection indexes an expert embedding
            ex = next((m for m in s.router.children() if isinstance(m, torch.nn.Embedding)
                       and m.num_embeddings == s.num_experts), None)
            ex = None if ex is None else _EmbeddingArgs(ex)
        if ex is not None:
            handles.append(ex.register_forward_pre_hook(_grab(store, s)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


class _EmbeddingArgs:
    """Registers a pre-hook on an embedding whose first argument is the selection (Doge's expert tables)."""

    def __init__(self, module):
        self.module = module

    def register_forward_pre_hook(self, fn):
        return self.module.register_forward_pre_hook(lambda m, args: fn(m, (None, *args)))


def _grab(store, site):
    """A pre-hook on the experts module keeping the integer ``(N, k)`` selection it is handed."""

    def hook(module, args):
        for v in args[1:]:
            if isinstance(v, torch.Tensor) and v.dtype in (torch.int64, torch.int32) and v.ndim == 2:
                store.setdefault(site.index, []).append(v.detach().long())
                break
        return None

    return hook


def _line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]


def table_line(row: dict) -> str:
    """One markdown row of the family table (``docs/inspect.md``) from a :func:`check_family` result."""
    status = {"supported": "supported", "no-moe": "no routed MoE", "not built": "not checked",
              "unsupported": "unsupported"}[row["status"]]
    agree = row["agreement"]
    agree = "" if agree != agree else f"{agree:.3g}"
    wagree = row.get("weight_agreement", float("nan"))
    wagree = "" if wagree != wagree else f"{wagree:.3g}"
    cells = [f"`{row['family']}`", f"`{row['model_class']}`" if row["model_class"] else "", status,
             str(row["layers"] or ""), agree, row.get("truth", ""), wagree, row["rule"].replace("|", "/"),
             row["note"].replace("|", "/")]
    return "| " + " | ".join(cells) + " |"


def table_summary(rows: list[dict]) -> str:
    """The sentence above the table: how many families, how many supported."""
    import transformers

    n = len(rows)
    ok = sum(r["status"] == "supported" for r in rows)
    none = sum(r["status"] == "no-moe" for r in rows)
    return (f"transformers {transformers.__version__} has **{n} MoE families**; softhard supports **{ok}** of them "
            f"(its selection equals what the experts compute on every token of a tiny saved model, one token per "
            f"forward); {none} are not token-routed MoEs; {n - ok - none} are not supported.")
