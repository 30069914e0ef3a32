r"""The zoo: small language MoEs trained here on real routing rules, two training seeds each.

=====================  ==========================  =====================================================================
name                   transformers class          routing rule
=====================  ==========================  =====================================================================
``softhard:tiny-lm``   ``MixtralForCausalLM``      top-2 of softmax(a) over 8 experts; weights softmax(a)[S] normalised
``softhard:deepseek-   ``DeepseekV3ForCausalLM``   DeepSeek-V3: sigmoid scores s = σ(a); top-4 of s + b within the best
lm``                                               2 of 4 groups (group score: sum of its top 2 of s + b), 16 routed
                                                   experts; weights s[S] / Σ s[S] × 2.5; one shared expert; b updated
                                                   during training (below)
``softhard:qwen-lm``   ``Qwen3MoeForCausalLM``     Qwen3: top-8 of softmax(a) over 32 experts; weights normalised
                                                   (``norm_topk_prob=True``)
=====================  ==========================  =====================================================================

``softhard:NAME@SEED`` is the same recipe trained from another seed (``@0`` is the plain name); the zoo's seeds are
0 and 1 (:data:`SEEDS`). Every model trains with :func:`softhard.inspect.zoo.train.train_lm` on the standard
library's docstrings, byte-level, 4 layers of width 128, 600 steps of 32 windows of 128 bytes, in at most a few
minutes on one thread, and is cached (``$SOFTHARD_CACHE``). :func:`zoo_lm` returns one, :func:`list_zoo` lists them,
:func:`zoo_table` tabulates what they learned (``training.json``).

**DeepSeek-V3's load balancing** (DeepSeek-AI, *DeepSeek-V3 Technical Report*, arXiv:2412.19437, §2.1.2, and
Wang et al., *Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts*, arXiv:2408.15664, Algorithm 1):
each routed expert i carries a bias b_i added to its score for the selection only (``e_score_correction_bias``;
the weights use s without it). At the end of each training step, with c_i the number of the step's token–slot
assignments that went to expert i (all tokens of the batch) and c̄ their mean over experts,

.. math:: b_i \leftarrow b_i + \gamma\, \operatorname{sign}(\bar c - c_i),

so an overloaded expert's bias drops by γ and an underloaded one's rises by γ; γ = 0.001 (the report's bias update
speed for most of pre-training). The report complements it with a sequence-wise balance loss of tiny weight α,

.. math:: \mathcal L_{\rm Bal} = \alpha \sum_{i=1}^{N_r} f_i P_i,\quad
          f_i = \frac{N_r}{K_r T} \sum_{t=1}^{T} \mathbb 1[i \in S_t],\quad
          P_i = \frac1T \sum_{t=1}^{T} \frac{s_{i,t}}{\sum_j s_{j,t}},

over the T tokens of each sequence (N_r routed experts, K_r selected per token, S_t the selected set), averaged
over the batch and summed over MoE layers; α = 0.0001 as in the report. (torchtitan's variant also subtracts the
mean of the update; the report's rule, used here, does not.)

**Qwen3's** balancing is its auxiliary loss (transformers' ``load_balancing_loss_func``, Switch form) with
Qwen3's coefficient 0.001; tiny-lm's is the same with 0.01.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch

from ..._validate import check_float, check_int, fail
from .train import Arch, AuxLossBalance, Balance, TrainedLM, cache_root, cached_lm, config_key, train_lm

__all__ = ["DeepSeekLMConfig", "QwenLMConfig", "DEEPSEEK", "DEEPSEEK_SMALL", "QWEN", "QWEN_SMALL", "ZOO", "SEEDS",
           "DEFAULTS", "SMALLS", "BiasBalance", "parse_zoo_name", "zoo_arch", "zoo_config", "zoo_lm", "train_zoo_lm",
           "list_zoo", "zoo_table", "PREFIX"]

PREFIX = "softhard:"
ZOO = ("tiny-lm", "deepseek-lm", "qwen-lm")
SEEDS = (0, 1)  # the training seeds of the zoo


@dataclass(frozen=True)
class DeepSeekLMConfig:
    """A tiny DeepSeek-V3 (``DeepseekV3ForCausalLM``): MLA attention, every layer MoE with ``experts`` routed experts
    in ``groups`` groups of which the best ``topk_groups`` are searched for the ``top_k``, ``shared_experts`` shared
    expert(s), routed scaling factor ``routed_scale``, normalised top-k weights; balancing by the bias update of speed
    ``bias_update_speed`` and the sequence-wise loss of weight ``aux_loss`` (module docstring). All of it enters the
    cache key."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    experts: int = 16
    top_k: int = 4
    groups: int = 4
    topk_groups: int = 2
    expert_intermediate: int = 64
    shared_experts: int = 1
    routed_scale: float = 2.5
    q_lora_rank: int = 64
    kv_lora_rank: int = 32
    rope_dim: int = 16
    nope_dim: int = 16
    v_dim: int = 32
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 600
    lr: float = 3e-3
    warmup: int = 40
    weight_decay: float = 0.01
    bias_update_speed: float = 1e-3
    aux_loss: float = 1e-4
    heldout_bytes: int = 65536
    seed: int = 0


@dataclass(frozen=True)
class QwenLMConfig:
    """A tiny Qwen3-MoE (``Qwen3MoeForCausalLM``): every layer MoE, softmax top-``top_k`` of ``experts`` with
    normalised top-k weights, Qwen3's auxiliary balancing loss of weight ``aux_loss``. All of it enters the cache
    key."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    head_dim: int = 32
    experts: int = 32
    top_k: int = 8
    expert_intermediate: int = 64
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 600
    lr: float = 3e-3
    warmup: int = 40
    weight_decay: float = 0.01
    aux_loss: float = 1e-3
    heldout_bytes: int = 65536
    seed: int = 0


DEEPSEEK = DeepSeekLMConfig()
QWEN = QwenLMConfig()
# seconds on one core: what the tests train (CI has an empty cache); both beat the bigram baseline
DEEPSEEK_SMALL = DeepSeekLMConfig(hidden=32, layers=2, heads=2, experts=8, top_k=2, groups=4, topk_groups=2,
                                  expert_intermediate=32, q_lora_rank=16, kv_lora_rank=16, rope_dim=8, nope_dim=8,
                                  v_dim=16, seq_len=64, batch_size=16, steps=400, warmup=10, bias_update_speed=1e-2,
                                  heldout_bytes=16384)
QWEN_SMALL = QwenLMConfig(hidden=32, layers=2, heads=2, head_dim=16, experts=32, top_k=8, expert_intermediate=16,
                          seq_len=64, batch_size=16, steps=400, warmup=10, aux_loss=1e-2, heldout_bytes=16384)


class BiasBalance(Balance):
    """DeepSeek-V3's balancing (module docstring): the sequence-wise loss ``aux_loss · Σ_layers mean_seq Σ_i f_i
    P_i`` and, after each step, ``b_i += γ sign(c̄ − c_i)`` on every router's ``e_score_correction_bias``."""

    def __init__(self, model, config):
        super().__init__(model, config)
        self.gamma, self.alpha = config.bias_update_speed, config.aux_loss
        self.seq_len, self.k = config.seq_len, config.top_k

    def loss(self, out):
        if self.alpha == 0:
            return 0.0
        total = 0.0
        for logits, idx in zip(self.logits, self.indices):
            n, num = logits.shape
            b = n // self.seq_len
            s = torch.sigmoid(logits.float()).reshape(b, self.seq_len, num)
            p = (s / s.sum(-1, keepdim=True)).mean(1)  # P_i per sequence (b, N_r)
            c = torch.zeros(b, num, dtype=p.dtype).scatter_add_(1, idx.reshape(b, -1),
                                                                 torch.ones(b, idx.numel() // b, dtype=p.dtype))
            f = c * num / (self.k * self.seq_len)  # f_i per sequence, no gradient
            total = total + (f * p).sum(-1).mean()
        return self.alpha * total

    @torch.no_grad()
    def after_step(self):
        super().after_step()
        for (_, router), idx in zip(self.routers, self.indices):
            c = torch.bincount(idx.reshape(-1), minlength=router.num_experts).to(router.e_score_correction_bias.dtype)
            router.e_score_correction_bias.add_(self.gamma * torch.sign(c.mean() - c))

    def record(self):
        bias = [r.e_score_correction_bias.detach().to(torch.float64) for _, r in self.routers]
        return super().record() | {"bias_min": [float(b.min()) for b in bias],
                                   "bias_max": [float(b.max()) for b in bias]}


def _deepseek_config(cfg: DeepSeekLMConfig):
    import transformers

    return transformers.DeepseekV3Config(
        vocab_size=256, hidden_size=cfg.hidden, intermediate_size=cfg.expert_intermediate * (cfg.top_k + 1),
        moe_intermediate_size=cfg.expert_intermediate, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads, n_shared_experts=cfg.shared_experts, n_routed_experts=cfg.experts,
        routed_scaling_factor=cfg.routed_scale, kv_lora_rank=cfg.kv_lora_rank, q_lora_rank=cfg.q_lora_rank,
        qk_rope_head_dim=cfg.rope_dim, v_head_dim=cfg.v_dim, qk_nope_head_dim=cfg.nope_dim, n_group=cfg.groups,
        topk_group=cfg.topk_groups, num_experts_per_tok=cfg.top_k, first_k_dense_replace=0, norm_topk_prob=True,
        max_position_embeddings=cfg.seq_len, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
        pad_token_id=None)


def _qwen_config(cfg: QwenLMConfig):
    import transformers

    return transformers.Qwen3MoeConfig(
        vocab_size=256, hidden_size=cfg.hidden, intermediate_size=cfg.expert_intermediate * cfg.top_k,
        moe_intermediate_size=cfg.expert_intermediate, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads, head_dim=cfg.head_dim, num_experts=cfg.experts, num_experts_per_tok=cfg.top_k,
        norm_topk_prob=True, router_aux_loss_coef=cfg.aux_loss, output_router_logits=False, decoder_sparse_step=1,
        max_position_embeddings=cfg.seq_len, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
        pad_token_id=None)


_ARCHS = {
    "deepseek-lm": (Arch("deepseek-lm", "DeepseekV3ForCausalLM", _deepseek_config, BiasBalance,
                         "top-{top_k} of sigmoid(a) + bias within the best {topk_groups} of {groups} groups (group "
                         "score: sum of the top 2); weights sigmoid(a)[S] normalised × {routed_scale:g}; "
                         "{shared_experts} shared expert", 1), DeepSeekLMConfig),
    "qwen-lm": (Arch("qwen-lm", "Qwen3MoeForCausalLM", _qwen_config, AuxLossBalance,
                     "top-{top_k} of softmax(a) over {experts} experts; weights softmax(a)[S] normalised", 1),
                QwenLMConfig),
}
DEFAULTS = {"deepseek-lm": DEEPSEEK, "qwen-lm": QWEN}  # tiny-lm's is softhard.inspect.tinylm.DEFAULT
SMALLS = {"deepseek-lm": DEEPSEEK_SMALL, "qwen-lm": QWEN_SMALL}


def zoo_arch(name: str) -> tuple[Arch, type]:
    """``(Arch, config class)`` of the zoo model ``name`` (``"tiny-lm"``, ``"deepseek-lm"``, ``"qwen-lm"``)."""
    if name == "tiny-lm":
        from .. import tinylm

        return tinylm.ARCH, tinylm.TinyLMConfig
    if name not in _ARCHS:
        fail("name", "zoo_arch", f"one of {', '.join(ZOO)}", name)
    return _ARCHS[name]


def parse_zoo_name(model) -> tuple[str, int] | None:
    """``("deepseek-lm", 1)`` for ``"softhard:deepseek-lm@1"``, ``(name, 0)`` without ``@``; ``None`` when ``model``
    does not name a zoo model. Raises ``ValueError`` for a zoo name with a bad seed."""
    m = re.fullmatch(r"softhard:([a-z-]+?)(?:@(.*))?", str(model))
    if m is None or m.group(1) not in ZOO:
        return None
    if m.group(2) is None:
        return m.group(1), 0
    if not re.fullmatch(r"\d+", m.group(2)):
        fail("model", "inspect", f"{PREFIX}{m.group(1)} or {PREFIX}{m.group(1)}@SEED with SEED an int >= 0", model)
    return m.group(1), int(m.group(2))


def zoo_config(name: str, seed: int = 0, *, small: bool = False):
    """The configuration of zoo model ``name`` trained from ``seed``: the full size (:data:`DEFAULTS`;
    ``softhard.inspect.tinylm.DEFAULT`` for tiny-lm) or the seconds-sized one of the tests (``small``)."""
    arch, cls = zoo_arch(name)
    seed = check_int(seed, "seed", "zoo_config", 0)
    if name == "tiny-lm":
        from .. import tinylm

        base = tinylm.SMALL if small else tinylm.DEFAULT
    else:
        base = (SMALLS if small else DEFAULTS)[name]
    return dataclasses.replace(base, seed=seed)


def _check(config, cls, where: str) -> None:
    if not isinstance(config, cls):
        fail("config", where, f"a {cls.__name__}", type(config).__name__, TypeError)
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if f.name == "seed":
            check_int(v, "seed", where, 0)
        elif f.type in ("int", int):
            check_int(v, f.name, where)
        else:
            check_float(v, f.name, where, 0.0, float("inf"), low_open=False)
    check_int(config.top_k, "top_k", where, 1, config.experts)
    if isinstance(config, DeepSeekLMConfig):
        if config.experts % config.groups:
            fail("groups", where, f"a divisor of experts = {config.experts}", config.groups)
        per = config.experts // config.groups
        check_int(config.topk_groups, "topk_groups", where, 1, config.groups)
        if per < 2 or config.topk_groups * per < config.top_k:
            fail("top_k", where, f"at most topk_groups × experts per group = {config.topk_groups * per} with at "
                                 f"least 2 experts per group", config.top_k)


def train_zoo_lm(name: str, config=None, *, progress: bool = False) -> tuple[torch.nn.Module, dict]:
    """Train zoo model ``name`` with ``config`` (default :func:`zoo_config`) without the cache; returns ``(model in
    eval mode, info)`` as :func:`softhard.inspect.zoo.train.train_lm`."""
    arch, cls = zoo_arch(name)
    config = zoo_config(name) if config is None else config
    _check(config, cls, "train_zoo_lm")
    return train_lm(arch, config, progress=progress)


def zoo_lm(model: str, config=None, *, cache_dir=None, progress: bool = False, small: bool = False) -> TrainedLM:
    """Zoo model ``model`` (``"softhard:deepseek-lm"``, ``"softhard:qwen-lm@1"``, ``"tiny-lm"``, ...) from the cache,
    or trained, saved and read back. ``config`` replaces the configuration of the name (its seed included);
    ``small`` takes the seconds-sized configuration of the tests.

    Raises:
        ValueError: not a zoo name, a bad seed or configuration; :class:`~softhard.inspect.InspectError` when the
            cache cannot be written.
    """
    parsed = parse_zoo_name(model if str(model).startswith(PREFIX) else PREFIX + str(model))
    if parsed is None:
        fail("model", "zoo_lm", f"one of {', '.join(PREFIX + z for z in ZOO)} (optionally @SEED)", model)
    name, seed = parsed
    arch, cls = zoo_arch(name)
    config = zoo_config(name, seed, small=small) if config is None else config
    _check(config, cls, "zoo_lm")
    label = PREFIX + name + (f"@{config.seed}" if config.seed else "")
    if name == "tiny-lm":  # through tinylm, whose trainer the tests replace
        from .. import tinylm

        lm = tinylm.tiny_lm(config, cache_dir=cache_dir, progress=progress)
        lm.name = label
        return lm
    return cached_lm(arch, config, lambda: train_lm(arch, config, progress=progress), cache_dir=cache_dir,
                     name=label)


def _params(arch: Arch, config) -> int:
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, arch.model_class)(arch.build(config))
    return int(sum(p.numel() for p in model.parameters()))


def list_zoo(*, small: bool = False, cache_dir=None) -> list[dict]:
    """The zoo, one entry per model and seed (:data:`ZOO` × :data:`SEEDS`): ``{"name", "model_class", "rule",
    "layers", "experts", "top_k", "params", "seed", "cache" (its directory), "cached" (trained already)}``."""
    from .corpus import corpus_fingerprint

    out = []
    for name in ZOO:
        arch, _ = zoo_arch(name)
        for seed in SEEDS:
            cfg = zoo_config(name, seed, small=small)
            path = cache_root(cache_dir) / f"{arch.name}-{config_key(cfg, corpus_fingerprint(), arch.format)}"
            out.append({"name": PREFIX + name + (f"@{seed}" if seed else ""), "model_class": arch.model_class,
                        "rule": arch.rule.format(**dataclasses.asdict(cfg)), "layers": cfg.layers,
                        "experts": cfg.experts, "top_k": cfg.top_k, "params": _params(arch, cfg), "seed": seed,
                        "cache": str(path), "cached": (path / "training.json").is_file()})
    return out


def zoo_table(*, small: bool = False, cache_dir=None, train: bool = False, progress: bool = False) -> list[dict]:
    """What each zoo model learned, from its ``training.json``: one row per model and seed with ``params``,
    ``experts``, ``top_k``, ``rule``, ``train_seconds`` (wall) and ``train_cpu_seconds``, the held-out docstring loss,
    and per held-out text kind the loss ± standard error beside the bigram baseline (nats per byte). Models not in
    the cache are trained when ``train`` is true and left out otherwise."""
    rows = []
    for entry in list_zoo(small=small, cache_dir=cache_dir):
        if not entry["cached"] and not train:
            continue
        lm = zoo_lm(entry["name"], cache_dir=cache_dir, progress=progress, small=small)
        info = lm.info
        row = {k: entry[k] for k in ("name", "model_class", "params", "experts", "top_k", "rule")}
        row |= {"train_seconds": info["train_seconds"], "train_cpu_seconds": info.get("train_cpu_seconds"),
                "docstrings_loss": info["heldout_loss"], "docstrings_loss_stderr": info["heldout_loss_stderr"],
                "docstrings_bigram": info["bigram_loss"]}
        kinds = info.get("heldout_kinds") or {}
        if not kinds:  # a cache trained before the held-out kinds were recorded
            from .train import heldout_losses

            kinds = heldout_losses(lm.model, info["config"]["seq_len"], info["config"]["heldout_bytes"])
        for kind, v in kinds.items():
            row |= {f"{kind}_loss": v["loss"], f"{kind}_loss_stderr": v["loss_stderr"],
                    f"{kind}_bigram": v["bigram_loss"]}
        row["load_max_ratio"] = max(info.get("heldout_load_max_ratio") or [float("nan")])
        rows.append(row)
    return rows
