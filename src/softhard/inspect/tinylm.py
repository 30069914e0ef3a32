r"""``softhard:tiny-lm``: a small Mixtral-style language MoE trained here, on text that ships with Python.

No weights can be downloaded, so softhard trains its own language MoE the first time it is asked for
(a few minutes on one CPU core) and caches it as a normal Hugging Face model directory. It is the first model of
the zoo (:mod:`softhard.inspect.zoo`), and shares its training loop, cache and evaluation
(:mod:`softhard.inspect.zoo.train`):

- **text**: the docstrings of the Python standard library (modules, classes and functions of every
  ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``, test suites left out), English prose with
  code examples. Files are taken in sorted order; every 10th file is held out (not trained on).
- **tokenizer**: bytes. Token ids are the UTF-8 bytes of the text (vocabulary 256), written as a
  ``tokenizers`` byte-level tokenizer with no merges, so ``AutoTokenizer`` reads it back
  (:func:`softhard.inspect.zoo.corpus.byte_tokenizer`).
- **model**: :class:`transformers.MixtralForCausalLM` (``TinyLMConfig``: 4 layers of width 128, 8 experts
  of which the top 2 are mixed by the softmax of their router logits, ~3.4 M parameters), trained by
  AdamW on next-byte cross-entropy plus Mixtral's load-balancing loss, on random windows of the training
  text; warm-up then cosine learning rate, gradient clipping at 1. Weights are float32, as language models
  ship (the project's float64 default is for its own numerics; losses are evaluated in float64).
- **cache**: ``$SOFTHARD_CACHE`` or ``~/.cache/softhard``, in ``tiny-lm-<key>`` where the key hashes the
  training configuration (seed included) and the corpus fingerprint; the directory holds
  ``config.json``, ``model.safetensors``, the tokenizer, ``heldout.txt`` and ``training.json`` (the loss
  curve, held-out loss and baselines on the held-out docstrings and on the held-out prose, code and legal text,
  the expert load, time). It is written to a temporary folder and renamed, so a
  crashed run leaves no half model.

Determinism: parameters are initialised under ``torch.random.fork_rng`` seeded with ``seed``, windows
are drawn from a generator seeded with ``seed``, training runs single-threaded (and restores the thread
count), so a configuration trains to the same bits on one machine (tested).

What it learned is recorded in ``training.json`` and checked by the tests: the held-out next-byte loss
against the unigram and bigram baselines (byte frequencies of the training text, add-one smoothed),
in nats per byte; perplexity is its exponential.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import check_int, fail
from .zoo.corpus import byte_tokenizer, corpus_fingerprint, stdlib_corpus
from .zoo.train import Arch, AuxLossBalance, TrainedLM, cache_root, cached_lm, config_key, heldout_ids, train_lm

__all__ = ["TinyLMConfig", "TinyLM", "DEFAULT", "SMALL", "stdlib_corpus", "corpus_fingerprint", "byte_tokenizer",
           "train_tiny_lm", "tiny_lm", "cache_root", "heldout_ids", "ARCH"]

_FORMAT = 1  # bump when the training recipe changes, so that old caches are not reused


@dataclass(frozen=True)
class TinyLMConfig:
    """Architecture and training recipe of the tiny language MoE (all of it enters the cache key)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    experts: int = 8
    top_k: int = 2
    intermediate: int = 256
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 600
    lr: float = 3e-3
    warmup: int = 40
    weight_decay: float = 0.01
    aux_loss: float = 0.01
    heldout_bytes: int = 65536  # held-out bytes on which the loss and baselines are measured
    seed: int = 0

    def key(self, fingerprint: str) -> str:
        return config_key(self, fingerprint, _FORMAT)


DEFAULT = TinyLMConfig()
# about ten seconds on one core: what the tests train (CI has an empty cache); it beats the bigram baseline
SMALL = TinyLMConfig(hidden=32, layers=2, heads=2, experts=4, intermediate=64, seq_len=64, batch_size=16, steps=400,
                     warmup=10, aux_loss=0.05, heldout_bytes=16384)

TinyLM = TrainedLM  # a trained tiny LM: model (eval mode), byte tokenizer, cache directory, training.json


def _model_config(cfg: TinyLMConfig):
    import transformers

    return transformers.MixtralConfig(
        vocab_size=256, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads, num_local_experts=cfg.experts,
        num_experts_per_tok=cfg.top_k, max_position_embeddings=cfg.seq_len, tie_word_embeddings=True,
        router_aux_loss_coef=cfg.aux_loss, output_router_logits=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=None)


ARCH = Arch("tiny-lm", "MixtralForCausalLM", _model_config, AuxLossBalance,
            "top-{top_k} of softmax(a) over {experts} experts; weights softmax(a)[S] normalised", _FORMAT)


def _check(config, where: str) -> None:
    if not isinstance(config, TinyLMConfig):
        fail("config", where, "a TinyLMConfig", type(config).__name__, TypeError)
    for name in ("hidden", "layers", "heads", "experts", "intermediate", "seq_len", "batch_size", "steps", "warmup"):
        check_int(getattr(config, name), name, where)
    check_int(config.top_k, "top_k", where, 1, config.experts)
    check_int(config.seed, "seed", where, 0)


def train_tiny_lm(config: TinyLMConfig = DEFAULT, *, progress: bool = False) -> tuple[torch.nn.Module, dict]:
    """Train the tiny LM of ``config`` (module docstring; :func:`softhard.inspect.zoo.train.train_lm`); returns
    ``(model in eval mode, info)``, ``info`` as written to ``training.json`` plus ``"heldout_text"``."""
    _check(config, "train_tiny_lm")
    return train_lm(ARCH, config, progress=progress)


def tiny_lm(config: TinyLMConfig = DEFAULT, *, cache_dir=None, progress: bool = False) -> TinyLM:
    """The tiny LM of ``config``: loaded from the cache, or trained, saved and loaded (module docstring).

    The returned model is always the one read back from ``model.safetensors`` (``from_pretrained``), so
    a first run and a cached run give the same model.
    """
    _check(config, "tiny_lm")
    name = "softhard:tiny-lm" + (f"@{config.seed}" if config.seed else "")
    return cached_lm(ARCH, config, lambda: train_tiny_lm(config, progress=progress), cache_dir=cache_dir, name=name)
