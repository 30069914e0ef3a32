r"""``softhard:tiny-lm``: a small Mixtral-style language MoE trained here, on text that ships with Python.

No weights can be downloaded, so softhard trains its own language MoE the first time it is asked for
(a few minutes on one CPU core) and caches it as a normal Hugging Face model directory:

- **text**: the docstrings of the Python standard library (modules, classes and functions of every
  ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``, test suites left out), English prose with
  code examples. Files are taken in sorted order; every 10th file is held out (not trained on).
- **tokenizer**: bytes. Token ids are the UTF-8 bytes of the text (vocabulary 256), written as a
  ``tokenizers`` byte-level tokenizer with no merges, so ``AutoTokenizer`` reads it back.
- **model**: :class:`transformers.MixtralForCausalLM` (``TinyLMConfig``: 4 layers of width 128, 8 experts
  of which the top 2 are mixed by the softmax of their router logits, ~3.4 M parameters), trained by
  AdamW on next-byte cross-entropy plus Mixtral's load-balancing loss, on random windows of the training
  text; warm-up then cosine learning rate, gradient clipping at 1. Weights are float32, as language models
  ship (the project's float64 default is for its own numerics; losses are evaluated in float64).
- **cache**: ``$SOFTHARD_CACHE`` or ``~/.cache/softhard``, in ``tiny-lm-<key>`` where the key hashes the
  training configuration (seed included) and the corpus fingerprint; the directory holds
  ``config.json``, ``model.safetensors``, the tokenizer, ``heldout.txt`` and ``training.json`` (the loss
  curve, held-out loss and baselines, time). It is written to a temporary folder and renamed, so a
  crashed run leaves no half model.

Determinism: parameters are initialised under ``torch.random.fork_rng`` seeded with ``seed``, windows
are drawn from a generator seeded with ``seed``, training runs single-threaded (and restores the thread
count), so a configuration trains to the same bits on one machine (tested).

What it learned is recorded in ``training.json`` and checked by the tests: the held-out next-byte loss
against the unigram and bigram baselines (byte frequencies of the training text, add-one smoothed),
in nats per byte; perplexity is its exponential.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._validate import check_int, fail
from .zoo.corpus import byte_ids, corpus_fingerprint, stdlib_corpus

__all__ = ["TinyLMConfig", "TinyLM", "DEFAULT", "SMALL", "stdlib_corpus", "corpus_fingerprint", "byte_tokenizer",
           "train_tiny_lm", "tiny_lm", "cache_root", "heldout_ids"]

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
        body = json.dumps({"config": dataclasses.asdict(self), "corpus": fingerprint, "format": _FORMAT},
                          sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


DEFAULT = TinyLMConfig()
# about ten seconds on one core: what the tests train (CI has an empty cache); it beats the bigram baseline
SMALL = TinyLMConfig(hidden=32, layers=2, heads=2, experts=4, intermediate=64, seq_len=64, batch_size=16, steps=400,
                     warmup=10, aux_loss=0.05, heldout_bytes=16384)


@dataclass
class TinyLM:
    """A trained tiny LM: the model (eval mode), its byte tokenizer, the directory it is cached in, and
    ``info`` (the content of ``training.json``)."""

    model: torch.nn.Module
    tokenizer: object
    path: Path
    info: dict


def _byte_chars() -> dict[int, str]:
    """The byte → character map of byte-level tokenizers: printable Latin-1 bytes stand for themselves,
    the other 68 are shifted to code points 256, 257, ... (``tokenizers``' ByteLevel alphabet)."""
    keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def byte_tokenizer():
    """A ``transformers`` fast tokenizer whose token ids are the UTF-8 bytes of the text (vocabulary 256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: b for b, c in _byte_chars().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def heldout_ids(lm: TinyLM, n: int | None = None) -> torch.Tensor:
    """The first ``n`` (default all) token ids ``(n,)`` of the held-out text of ``lm``."""
    ids = byte_ids((lm.path / "heldout.txt").read_text(encoding="utf-8"))
    return ids if n is None else ids[:n]


def _model_config(cfg: TinyLMConfig):
    import transformers

    return transformers.MixtralConfig(
        vocab_size=256, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads, num_local_experts=cfg.experts,
        num_experts_per_tok=cfg.top_k, max_position_embeddings=cfg.seq_len, tie_word_embeddings=True,
        router_aux_loss_coef=cfg.aux_loss, output_router_logits=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=None)


def _baselines(train: torch.Tensor, held: torch.Tensor) -> dict:
    """Held-out cross-entropy (nats per byte) of add-one smoothed unigram and bigram byte models."""
    uni = torch.bincount(train, minlength=256).to(torch.float64) + 1
    uni_loss = float(-(uni / uni.sum()).log()[held[1:]].mean())
    big = torch.ones(256, 256, dtype=torch.float64)
    big.view(-1).index_add_(0, train[:-1] * 256 + train[1:], torch.ones(train.numel() - 1, dtype=torch.float64))
    big_loss = float(-(big / big.sum(1, keepdim=True)).log()[held[:-1], held[1:]].mean())
    return {"unigram_loss": uni_loss, "bigram_loss": big_loss}


@torch.no_grad()
def _heldout_loss(model, ids: torch.Tensor, seq_len: int) -> tuple[float, float, int]:
    """Mean next-token cross-entropy (nats) on consecutive windows of ``ids``, its standard error over
    windows, and the number of predicted tokens."""
    n = ids.numel() // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    per = []
    for i in range(0, n, 32):
        logits = model(input_ids=x[i:i + 32]).logits.to(torch.float64)
        lp = torch.log_softmax(logits[:, :-1], dim=-1)
        per.append(-lp.gather(-1, x[i:i + 32, 1:, None])[..., 0].mean(-1))
    per = torch.cat(per)
    return float(per.mean()), float(per.std() / math.sqrt(n)) if n > 1 else math.nan, n * (seq_len - 1)


def train_tiny_lm(config: TinyLMConfig = DEFAULT, *, progress: bool = False) -> tuple[torch.nn.Module, dict]:
    """Train the tiny LM of ``config`` (module docstring); returns ``(model in eval mode, info)``, ``info`` as
    written to ``training.json`` plus ``"heldout_text"``."""
    import transformers

    where = "train_tiny_lm"
    if not isinstance(config, TinyLMConfig):
        fail("config", where, "a TinyLMConfig", type(config).__name__, TypeError)
    for name in ("hidden", "layers", "heads", "experts", "intermediate", "seq_len", "batch_size", "steps", "warmup"):
        check_int(getattr(config, name), name, where)
    check_int(config.top_k, "top_k", where, 1, config.experts)
    t0 = time.perf_counter()
    train_text, held_text = stdlib_corpus()
    train, held = byte_ids(train_text), byte_ids(held_text)[: config.heldout_bytes]
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = transformers.MixtralForCausalLM(_model_config(config))
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))

    def lr_at(step):
        if step < config.warmup:
            return (step + 1) / config.warmup
        frac = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    it = range(config.steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        it = bar = tqdm(it, desc="training softhard:tiny-lm (once; cached)", unit="step", leave=False)
    curve, running = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic reductions, and polite on a shared machine (restored below)
    model.train()
    try:
        for step in it:
            start = torch.randint(0, train.numel() - config.seq_len - 1, (config.batch_size,), generator=gen)
            x = train[start[:, None] + torch.arange(config.seq_len + 1)]
            out = model(input_ids=x[:, :-1], output_router_logits=True)
            lm_loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 256), x[:, 1:].reshape(-1))
            loss = lm_loss + config.aux_loss * out.aux_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running.append(lm_loss.item())
            if (step + 1) % 10 == 0 or step + 1 == config.steps:
                curve.append([step + 1, float(np.mean(running))])
                running = []
                if bar is not None:
                    bar.set_postfix(loss=f"{curve[-1][1]:.3f}")
        model.eval()
        loss, se, n = _heldout_loss(model, held, config.seq_len)
    finally:
        torch.set_num_threads(threads)
    info = {
        "config": dataclasses.asdict(config), "corpus": "Python standard library docstrings",
        "corpus_fingerprint": corpus_fingerprint(), "train_bytes": int(train.numel()),
        "heldout_bytes_total": len(held_text.encode()),
        "params": int(sum(p.numel() for p in model.parameters())), "train_seconds": time.perf_counter() - t0,
        "loss_curve": curve, "train_loss_final": curve[-1][1], "heldout_loss": loss, "heldout_loss_stderr": se,
        "heldout_tokens": n, "heldout_perplexity": math.exp(loss), **_baselines(train, held),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    info["unigram_perplexity"] = math.exp(info["unigram_loss"])
    return model, info | {"heldout_text": held_text}


@contextlib.contextmanager
def _quiet_transformers():
    """No transformers progress bars (shard writing, weight loading) within the block."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def cache_root(cache_dir=None) -> Path:
    """``cache_dir``, else ``$SOFTHARD_CACHE``, else ``~/.cache/softhard``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SOFTHARD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "softhard"


def tiny_lm(config: TinyLMConfig = DEFAULT, *, cache_dir=None, progress: bool = False) -> TinyLM:
    """The tiny LM of ``config``: loaded from the cache, or trained, saved and loaded (module docstring).

    The returned model is always the one read back from ``model.safetensors`` (``from_pretrained``), so
    a first run and a cached run give the same model.
    """
    import transformers

    from .layouts import InspectError

    if not isinstance(config, TinyLMConfig):
        fail("config", "tiny_lm", "a TinyLMConfig", type(config).__name__, TypeError)
    root = cache_root(cache_dir)
    path = root / f"tiny-lm-{config.key(corpus_fingerprint())}"
    if not (path / "training.json").is_file():
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tiny-lm-"))
        except OSError as e:
            raise InspectError(f"the cache directory {root} cannot be written ({e.strerror or e}); set "
                               f"SOFTHARD_CACHE to a writable folder.") from None
        try:
            model, info = train_tiny_lm(config, progress=progress)
            with _quiet_transformers():
                model.save_pretrained(tmp, safe_serialization=True)
            byte_tokenizer().save_pretrained(tmp)
            (tmp / "heldout.txt").write_text(info.pop("heldout_text"), encoding="utf-8")
            (tmp / "training.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
            umask = os.umask(0)
            os.umask(umask)
            for f in tmp.iterdir():  # mkdtemp and some writers make owner-only files; a cache is for everyone
                os.chmod(f, 0o666 & ~umask)
            os.chmod(tmp, 0o777 & ~umask)
            try:
                os.replace(tmp, path)
            except OSError:  # another process finished first: keep its copy
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_transformers():
        model = transformers.MixtralForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True)
    model.eval()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return TinyLM(model, tok, path, json.loads((path / "training.json").read_text(encoding="utf-8")))
