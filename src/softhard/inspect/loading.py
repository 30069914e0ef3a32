r"""Loading a model from a local directory safely, and the token batches it is inspected on.

Safety: nothing is downloaded (``local_files_only``); no code from the model directory runs unless
``trust_remote_code=True``; weights are read from safetensors when present, else through
weights-only ``torch.load``. A directory with a config and no weights gives a randomly initialised
model (seeded; the global RNG is restored afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .._validate import check_int
from ..estimators.reducer import resolve_seed
from .layouts import InspectError

__all__ = ["Batch", "load_model", "token_batches", "encode_text", "split_tokens"]


@dataclass
class Batch:
    """One forward call: keyword ``inputs`` for ``model(**inputs)`` and ``ids (B, S)``, the token ids (or
    sample indices) whose rows the router sees in row-major order."""

    inputs: dict
    ids: torch.Tensor


def _model_class(config, trust_remote_code: bool):
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type):
            return cls
    if trust_remote_code and getattr(config, "auto_map", None):
        return transformers.AutoModelForCausalLM
    if getattr(config, "is_encoder_decoder", False):
        return transformers.AutoModelForSeq2SeqLM
    return transformers.AutoModelForCausalLM


def load_model(path, *, trust_remote_code: bool = False, seed=0, dtype: torch.dtype | None = None):
    """Load ``(model, tokenizer or None)`` from a local directory holding ``config.json`` (and weights).

    Args:
        path: the directory.
        trust_remote_code: allow the directory's own Python code (off by default).
        seed: seed of the random initialisation when the directory has no weights.
        dtype: load the weights in this dtype (default: float32 for random weights, as saved otherwise).

    Raises:
        InspectError: not a directory with a config, a config transformers cannot read, unreadable weights.
    """
    import transformers

    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise InspectError(f"{path} is not a model directory: it has no config.json.")
    try:
        config = transformers.AutoConfig.from_pretrained(p, trust_remote_code=trust_remote_code,
                                                         local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InspectError(f"cannot read the config in {path} with transformers {transformers.__version__} "
                           f"(custom code needs --trust-remote-code): {first}") from None
    cls = _model_class(config, trust_remote_code)
    safetensors = any(p.glob("*.safetensors"))
    has_weights = safetensors or any(p.glob("*.bin"))
    try:
        if has_weights:
            model = cls.from_pretrained(p, config=config, trust_remote_code=trust_remote_code, local_files_only=True,
                                        use_safetensors=True if safetensors else None, weights_only=True,
                                        **({"dtype": dtype} if dtype is not None else {}))
        else:
            with torch.random.fork_rng():
                torch.manual_seed(resolve_seed(seed, "load_model"))
                model = cls.from_config(config, trust_remote_code=trust_remote_code, dtype=dtype or torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InspectError(f"cannot load the model in {path}: {first}") from None
    model.eval()
    tokenizer = None
    if any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(p, local_files_only=True,
                                                                   trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError):
            tokenizer = None
    return model, tokenizer


def encode_text(path, tokenizer, vocab_size: int) -> torch.Tensor:
    """Token ids ``(n,)`` of a UTF-8 text file. Raises :class:`InspectError` with one line when the file
    cannot be read or decoded, the model has no tokenizer, or the tokenizer cannot encode the text (no
    tokens, only unknown tokens, or ids outside the model's vocabulary)."""
    p = Path(path)
    if tokenizer is None:
        raise InspectError("the model directory has no tokenizer: use --random-ids instead of --text.")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InspectError(f"cannot read the text file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InspectError(f"the tokenizer cannot encode {path}: it is not UTF-8 text ({e.reason} at byte "
                           f"{e.start}).") from None
    ids = torch.as_tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    unk = getattr(tokenizer, "unk_token_id", None)
    if ids.numel() == 0 or (unk is not None and bool((ids == unk).all())):
        raise InspectError(f"the tokenizer cannot encode {path}: it gives "
                           f"{'no tokens' if ids.numel() == 0 else 'only unknown tokens'}.")
    if int(ids.max()) >= vocab_size:
        raise InspectError(f"the tokenizer cannot encode {path} for this model: token id {int(ids.max())} is "
                           f"outside the model's vocabulary of {vocab_size}.")
    return ids


def split_tokens(ids: torch.Tensor, seq_len: int, batch_size: int) -> list[torch.Tensor]:
    """Cut a 1-d id stream into sequences of ``seq_len`` (the last may be shorter) and group consecutive
    sequences of equal length into batches ``(B, S)`` of at most ``batch_size``."""
    seq_len = check_int(seq_len, "seq_len", "inspect")
    batch_size = check_int(batch_size, "batch_size", "inspect")
    seqs = list(torch.split(ids, seq_len))
    out, i = [], 0
    while i < len(seqs):
        j = i
        while j < len(seqs) and j - i < batch_size and seqs[j].numel() == seqs[i].numel():
            j += 1
        out.append(torch.stack(seqs[i:j]))
        i = j
    return out


def token_batches(model, ids: torch.Tensor, seq_len: int = 64, batch_size: int = 8) -> list[Batch]:
    """Batches of ``ids`` for a transformers model; an encoder–decoder model gets the same ids on both sides."""
    enc_dec = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    return [Batch({"input_ids": b, **({"decoder_input_ids": b} if enc_dec else {})}, b)
            for b in split_tokens(ids, seq_len, batch_size)]
