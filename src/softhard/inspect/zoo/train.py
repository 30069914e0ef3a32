r"""The one training loop, cache and evaluation of the language MoEs trained here (``softhard:tiny-lm`` and the zoo).

No weights can be downloaded, so softhard trains its own small language MoEs the first time each is asked for and
caches it as a normal Hugging Face model directory. Every model of the zoo (:mod:`softhard.inspect.zoo.models`)
shares this recipe; only the architecture and the load balancing differ (an :class:`Arch`):

- **text**: the docstrings of the Python standard library (:mod:`softhard.inspect.zoo.corpus`; every 10th file held
  out); **tokenizer**: bytes (:func:`softhard.inspect.zoo.corpus.byte_tokenizer`, vocabulary 256).
- **training**: AdamW (β = (0.9, 0.95), weight decay) on next-byte cross-entropy plus the architecture's balancing
  term, on ``batch_size`` random windows of ``seq_len + 1`` bytes of the training text per step; linear warm-up
  then cosine learning rate down to 10 %, gradient clipping at 1; after each optimiser step the architecture's
  ``after_step`` runs (DeepSeek-V3's bias update, :mod:`.models`). Weights are float32, as language models ship;
  losses are evaluated in float64.
- **determinism**: parameters are initialised under ``torch.random.fork_rng`` seeded with ``seed``, windows are
  drawn from a generator seeded with ``seed``, training runs single-threaded (and restores the thread count), so a
  configuration trains to the same bits on one machine (tested).
- **evaluation** (``training.json``): the mean next-byte cross-entropy (nats per byte) with its standard error over
  windows of ``seq_len`` on the first ``heldout_bytes`` bytes of the held-out docstrings and of each held-out text
  kind (:mod:`softhard.inspect.zoo.texts`: prose, code, legal), beside the add-one smoothed unigram and bigram byte
  models of the training text on the same bytes; the expert load per MoE layer on the held-out docstrings
  (``K × the largest share`` of token–slot assignments) and the mean of that ratio over training steps.
- **cache**: ``$SOFTHARD_CACHE`` or ``~/.cache/softhard``, in ``<name>-<key>`` where the key hashes the
  configuration (seed included), the corpus fingerprint and the recipe's format number; the directory holds
  ``config.json``, ``model.safetensors``, the tokenizer, ``heldout.txt`` and ``training.json``. It is written to a
  temporary folder and renamed, so a crashed run leaves no half model; files are made readable by everyone.
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
from typing import Callable

import numpy as np
import torch

from .corpus import byte_ids, byte_tokenizer, corpus_fingerprint, stdlib_corpus
from .texts import TEXT_KINDS, heldout_text, text_info

__all__ = ["Arch", "TrainedLM", "config_key", "train_lm", "cached_lm", "cache_root", "heldout_losses",
           "byte_baselines", "heldout_loss", "router_modules", "heldout_ids"]


@dataclass(frozen=True)
class Arch:
    """What differs between the zoo's models: the cache ``name`` (``"tiny-lm"``), the transformers class
    (``model_class``, e.g. ``"MixtralForCausalLM"``), ``build(config) -> transformers config``, the recipe's format
    number (part of the cache key), ``rule`` (the routing rule in words) and ``balance(model, config)``, which
    returns a :class:`Balance` for one training run."""

    name: str
    model_class: str
    build: Callable
    balance: Callable
    rule: str
    format: int = 1


class Balance:
    """Load balancing during training: extra forward keywords, an extra loss, an update after each optimiser step.

    The base class records, through forward hooks on the routers (:func:`router_modules`), the experts each token is
    sent to at each step (``self.indices``: per MoE layer, ``(tokens, k)``) and the router logits
    (``self.logits``), and keeps the mean over steps of each layer's load ratio ``K × max_i share_i``.
    """

    forward_kwargs: dict = {}

    def __init__(self, model, config):
        self.routers = router_modules(model)
        self.indices: list = [None] * len(self.routers)
        self.logits: list = [None] * len(self.routers)
        self.ratio_sum = np.zeros(len(self.routers))
        self.steps = 0
        self._hooks = [r.register_forward_hook(self._hook(i)) for i, (_, r) in enumerate(self.routers)]

    def _hook(self, i):
        def hook(module, args, out):
            self.logits[i], self.indices[i] = out[0], out[2]
        return hook

    def loss(self, out) -> torch.Tensor | float:
        return 0.0

    def after_step(self) -> None:
        """Called after each optimiser step with this step's ``indices`` and ``logits``."""
        self.steps += 1
        for i, idx in enumerate(self.indices):
            num = self.routers[i][1].num_experts
            load = torch.bincount(idx.reshape(-1), minlength=num).to(torch.float64)
            self.ratio_sum[i] += float(num * load.max() / load.sum())

    def record(self) -> dict:
        """What goes into ``training.json`` (the mean load ratio over training steps, per MoE layer)."""
        return {"train_load_max_ratio": (self.ratio_sum / max(1, self.steps)).tolist()}

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


class AuxLossBalance(Balance):
    """The model's own auxiliary load-balancing loss (Switch/Mixtral form, ``output_router_logits=True``), weighted
    by ``config.aux_loss``."""

    forward_kwargs = {"output_router_logits": True}

    def __init__(self, model, config):
        super().__init__(model, config)
        self.coef = config.aux_loss

    def loss(self, out):
        return self.coef * out.aux_loss


def router_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """The routers of a zoo model: the ``gate`` modules that return ``(logits, weights, expert indices)`` (the
    ``*TopKRouter`` classes of transformers), in the model's order."""
    found = [(n, m) for n, m in model.named_modules() if type(m).__name__.lower().endswith("topkrouter")]
    if not found:
        raise TypeError(f"no top-k router in {type(model).__name__}")
    return found


@dataclass
class TrainedLM:
    """A trained language MoE of the zoo: the model (eval mode), its byte tokenizer, the directory it is cached in,
    ``info`` (the content of ``training.json``) and its ``name`` (``softhard:NAME[@seed]``)."""

    model: torch.nn.Module
    tokenizer: object
    path: Path
    info: dict
    name: str = ""


def config_key(config, fingerprint: str, fmt: int) -> str:
    """16 hex digits of SHA-256 over the configuration (all fields, seed included), the corpus fingerprint and the
    recipe's format number: the cache directory's key."""
    body = json.dumps({"config": dataclasses.asdict(config), "corpus": fingerprint, "format": fmt}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def byte_baselines(train: torch.Tensor, held: torch.Tensor) -> dict:
    """Held-out cross-entropy (nats per byte) of add-one smoothed unigram and bigram byte models of ``train``
    ``(n,)`` on ``held`` ``(m,)``: ``{"unigram_loss", "bigram_loss"}``."""
    uni = torch.bincount(train, minlength=256).to(torch.float64) + 1
    uni_loss = float(-(uni / uni.sum()).log()[held[1:]].mean())
    big = torch.ones(256, 256, dtype=torch.float64)
    big.view(-1).index_add_(0, train[:-1] * 256 + train[1:], torch.ones(train.numel() - 1, dtype=torch.float64))
    big_loss = float(-(big / big.sum(1, keepdim=True)).log()[held[:-1], held[1:]].mean())
    return {"unigram_loss": uni_loss, "bigram_loss": big_loss}


@torch.no_grad()
def heldout_loss(model, ids: torch.Tensor, seq_len: int) -> tuple[float, float, int]:
    """Mean next-token cross-entropy (nats) on consecutive windows of ``seq_len`` of ``ids`` ``(n,)``, its standard
    error over windows, and the number of predicted tokens."""
    n = ids.numel() // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    per = []
    for i in range(0, n, 32):
        logits = model(input_ids=x[i:i + 32]).logits.to(torch.float64)
        lp = torch.log_softmax(logits[:, :-1], dim=-1)
        per.append(-lp.gather(-1, x[i:i + 32, 1:, None])[..., 0].mean(-1))
    per = torch.cat(per)
    return float(per.mean()), float(per.std() / math.sqrt(n)) if n > 1 else math.nan, n * (seq_len - 1)


@torch.no_grad()
def _heldout_load(model, ids: torch.Tensor, seq_len: int) -> list[float]:
    """Per MoE layer, ``K × the largest share`` of the token–slot assignments on ``ids`` (1 = perfectly even)."""
    routers = router_modules(model)
    counts = [torch.zeros(r.num_experts, dtype=torch.float64) for _, r in routers]

    def hook(i):
        def f(module, args, out):
            counts[i].index_add_(0, out[2].reshape(-1), torch.ones(out[2].numel(), dtype=torch.float64))
        return f

    hooks = [r.register_forward_hook(hook(i)) for i, (_, r) in enumerate(routers)]
    try:
        n = ids.numel() // seq_len
        x = ids[: n * seq_len].reshape(n, seq_len)
        for i in range(0, n, 32):
            model(input_ids=x[i:i + 32])
    finally:
        for h in hooks:
            h.remove()
    return [float(c.numel() * c.max() / c.sum()) for c in counts]


def heldout_losses(model, seq_len: int, nbytes: int, train: torch.Tensor | None = None) -> dict:
    """Per held-out text kind (prose, code, legal): the model's next-byte loss on its first ``nbytes`` bytes with
    standard error and token count, beside the unigram and bigram baselines of the training text, and the text's
    fingerprint: ``{kind: {"loss", "loss_stderr", "tokens", "unigram_loss", "bigram_loss", "fingerprint",
    "source"}}``."""
    if train is None:
        train = byte_ids(stdlib_corpus()[0])
    out = {}
    for kind in TEXT_KINDS:
        ids = byte_ids(heldout_text(kind, nbytes))
        loss, se, n = heldout_loss(model, ids, seq_len)
        info = text_info(kind, nbytes)
        out[kind] = {"loss": loss, "loss_stderr": se, "tokens": n, **byte_baselines(train, ids),
                     "fingerprint": info["fingerprint"], "source": info["source"]}
    return out


def train_lm(arch: Arch, config, *, progress: bool = False) -> tuple[torch.nn.Module, dict]:
    """Train the model of ``arch`` and ``config`` (module docstring); returns ``(model in eval mode, info)``, ``info``
    as written to ``training.json`` plus ``"heldout_text"``. ``config`` carries ``hidden``, ``layers``, ``seq_len``,
    ``batch_size``, ``steps``, ``lr``, ``warmup``, ``weight_decay``, ``heldout_bytes`` and ``seed``, and what
    ``arch.build`` and ``arch.balance`` read."""
    import transformers

    t0, c0 = time.perf_counter(), time.process_time()
    train_text, held_text = stdlib_corpus()
    train, held = byte_ids(train_text), byte_ids(held_text)[: config.heldout_bytes]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = getattr(transformers, arch.model_class)(arch.build(config))
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

        it = bar = tqdm(it, desc=f"training softhard:{arch.name} (once; cached)", unit="step", leave=False)
    curve, running = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic reductions, and polite on a shared machine (restored below)
    model.train()
    balance = arch.balance(model, config)
    try:
        for step in it:
            start = torch.randint(0, train.numel() - config.seq_len - 1, (config.batch_size,), generator=gen)
            x = train[start[:, None] + torch.arange(config.seq_len + 1)]
            out = model(input_ids=x[:, :-1], **balance.forward_kwargs)
            lm_loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 256), x[:, 1:].reshape(-1))
            loss = lm_loss + balance.loss(out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            balance.after_step()
            running.append(lm_loss.item())
            if (step + 1) % 10 == 0 or step + 1 == config.steps:
                curve.append([step + 1, float(np.mean(running))])
                running = []
                if bar is not None:
                    bar.set_postfix(loss=f"{curve[-1][1]:.3f}")
        balance.close()  # no hooks while evaluating
        train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        model.eval()
        loss, se, n = heldout_loss(model, held, config.seq_len)
        kinds = heldout_losses(model, config.seq_len, config.heldout_bytes, train)
        loads = _heldout_load(model, held, config.seq_len)
    finally:
        balance.close()
        torch.set_num_threads(threads)
    info = {
        "config": dataclasses.asdict(config), "model_class": arch.model_class, "rule": arch.rule,
        "corpus": "Python standard library docstrings", "corpus_fingerprint": corpus_fingerprint(),
        "train_bytes": int(train.numel()), "heldout_bytes_total": len(held_text.encode()),
        "params": int(sum(p.numel() for p in model.parameters())), "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu, "loss_curve": curve, "train_loss_final": curve[-1][1],
        "heldout_loss": loss, "heldout_loss_stderr": se, "heldout_tokens": n, "heldout_perplexity": math.exp(loss),
        **byte_baselines(train, held), "heldout_kinds": kinds, "heldout_load_max_ratio": loads,
        **balance.record(), "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
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


def cached_lm(arch: Arch, config, train: Callable, *, cache_dir=None, name: str = "") -> TrainedLM:
    """The model of ``arch`` and ``config`` from the cache, or trained by ``train()`` (which returns ``(model,
    info)`` as :func:`train_lm`), saved and read back (module docstring). The returned model is always the one read
    back from ``model.safetensors``, so a first run and a cached run give the same model."""
    import transformers

    from ..layouts import InspectError

    root = cache_root(cache_dir)
    path = root / f"{arch.name}-{config_key(config, corpus_fingerprint(), arch.format)}"
    if not (path / "training.json").is_file():
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{arch.name}-"))
        except OSError as e:
            raise InspectError(f"the cache directory {root} cannot be written ({e.strerror or e}); set "
                               f"SOFTHARD_CACHE to a writable folder.") from None
        try:
            model, info = train()
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
        model = getattr(transformers, arch.model_class).from_pretrained(path, local_files_only=True,
                                                                        use_safetensors=True)
    model.eval()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return TrainedLM(model, tok, path, json.loads((path / "training.json").read_text(encoding="utf-8")), name)


def heldout_ids(lm: TrainedLM, n: int | None = None) -> torch.Tensor:
    """The first ``n`` (default all) token ids ``(n,)`` of the held-out docstrings of ``lm``."""
    ids = byte_ids((lm.path / "heldout.txt").read_text(encoding="utf-8"))
    return ids if n is None else ids[:n]
