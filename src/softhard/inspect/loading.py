r"""Loading a model from a local directory safely, and the token batches it is inspected on.

Safety: nothing is downloaded (``local_files_only``); no code from the model directory runs unless
``trust_remote_code=True`` — a config that names custom code (``auto_map``) for a ``model_type`` transformers
knows loads the native class, and says so; weights are read from safetensors only: a directory holding only
pickle checkpoints (``pytorch_model.bin``, ``*.pt``) is refused without reading them. A directory with a config
and no weights gives a randomly initialised model through the Auto classes (seeded; the global RNG is
restored afterwards).

Size: weights are loaded by transformers' ``from_pretrained``, which builds the model on the meta device and
fills it from the (memory-mapped) safetensors, so the peak memory is about the model's size in ``dtype``;
``device_map="auto"`` (accelerate) spreads a model larger than one device over the devices and the CPU.

Inputs (:func:`read_texts`): a UTF-8 text file, a JSON-lines file (one ``{"text": ...}`` or string per line),
a parquet file (its ``text`` column, read batch by batch), a dataset saved by ``datasets.save_to_disk``, or one of
softhard's held-out texts by name (``softhard:prose``, ``softhard:code``, ``softhard:legal``;
:mod:`softhard.inspect.zoo.texts`).
Texts are tokenised one at a time and the stream stops at the requested number of tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .._validate import check_int
from ..estimators.reducer import resolve_seed
from .layouts import InspectError

__all__ = ["Batch", "load_model", "token_batches", "encode_text", "read_texts", "split_tokens", "vocab_size",
           "DTYPES", "resolve_device"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class Batch:
    """One forward call: keyword ``inputs`` for ``model(**inputs)`` and ``ids (B, S)``, the token ids (or
    sample indices) whose rows the router sees in row-major order."""

    inputs: dict
    ids: torch.Tensor


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def resolve_device(device: str | None) -> str | None:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or ``"auto"`` (CUDA when available); ``None`` stays ``None``."""
    if device is None:
        return None
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise InspectError(f"The 'device' parameter of inspect must be cpu, cuda[:N] or auto. Got {device!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InspectError("--device cuda: no CUDA device is available here (torch sees none); use --device cpu.")
    return device


def _auto_model(config, arch: str | None):
    """The Auto class whose mapping sends ``type(config)`` to the class named ``arch`` (or to any class)."""
    import transformers

    autos = [transformers.AutoModelForCausalLM, transformers.AutoModelForImageTextToText,
             transformers.AutoModelForSeq2SeqLM, transformers.AutoModelForTokenClassification, transformers.AutoModel]
    if getattr(config, "text_config", None) is not None:  # multimodal: the whole model, as checkpoints hold it
        autos.insert(0, autos.pop(1))
    fallback = None
    for auto in autos:
        try:
            mapped = auto._model_mapping[type(config)]
        except (KeyError, ValueError):
            continue
        mapped = mapped[0] if isinstance(mapped, (list, tuple)) else mapped
        if arch is None or mapped.__name__ == arch:
            return auto
        fallback = fallback or auto
    return fallback


def _model_class(config, trust_remote_code: bool):
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type):
            return cls
    if trust_remote_code and getattr(config, "auto_map", None):
        return transformers.AutoModelForCausalLM
    return _auto_model(config, None) or transformers.AutoModelForCausalLM


def load_model(path, *, trust_remote_code: bool = False, seed=0, dtype: torch.dtype | None = None,
               device: str | None = None, device_map: str | None = None, notes: list | None = None):
    """Load ``(model, tokenizer or None)`` from a local directory holding ``config.json`` (and weights).

    Args:
        path: the directory.
        trust_remote_code: allow the directory's own Python code (off by default).
        seed: seed of the random initialisation when the directory has no weights.
        dtype: load the weights in this dtype (default: float32 for random weights, as saved otherwise).
        device: ``"cpu"``, ``"cuda[:N]"`` or ``"auto"``; device_map: ``"auto"`` (accelerate) to spread the model
            over the devices and the CPU.
        notes: a list that receives one-line remarks (e.g. a native class loaded in place of custom code).

    Raises:
        InspectError: not a directory with a config, a config transformers cannot read, custom code without
            ``trust_remote_code``, pickle-only weights, unreadable weights.
    """
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    notes = [] if notes is None else notes
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise InspectError(f"{path} is not a model directory: it has no config.json.")
    try:
        raw = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InspectError(f"cannot read {p / 'config.json'}: {_first_line(e)}") from None
    mt = raw.get("model_type") if isinstance(raw, dict) else None
    native = mt in CONFIG_MAPPING_NAMES
    if isinstance(raw, dict) and raw.get("auto_map") and not trust_remote_code:
        if not native:
            raise InspectError(f"{path}: model_type {mt!r} is not part of transformers {transformers.__version__}; "
                               f"its code is in the model directory (auto_map), which runs only with "
                               f"--trust-remote-code.")
        notes.append(f"config.json names custom code (auto_map), but model_type {mt!r} is native to transformers "
                     f"{transformers.__version__}: the native class is loaded (--trust-remote-code would run the "
                     f"directory's code instead)")
    try:
        config = transformers.AutoConfig.from_pretrained(p, trust_remote_code=trust_remote_code,
                                                         local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a bad config
        raise InspectError(f"cannot read the config in {path} with transformers {transformers.__version__} "
                           f"(custom code needs --trust-remote-code): {_first_line(e)}") from None
    if not trust_remote_code and getattr(config, "auto_map", None) and native:
        config.auto_map = {}
    cls = _model_class(config, trust_remote_code)
    safetensors = sorted(p.glob("*.safetensors"))
    pickles = sorted(f for f in p.iterdir() if f.suffix in _PICKLES and f.is_file())
    if not safetensors and pickles:
        f = pickles[0]
        raise InspectError(
            f"{f} is a pickle checkpoint, and softhard does not load pickles (reading one can run code). Convert it "
            f"to safetensors once, with code you trust on a file you trust: python -c \"import torch; from "
            f"safetensors.torch import save_file; save_file(torch.load('{f.name}', weights_only=True), "
            f"'model.safetensors')\" in {p}, or save_pretrained(...) the model (safetensors is its default).")
    device = resolve_device(device)
    if device_map is not None and device_map != "auto":
        raise InspectError(f"The 'device_map' parameter of inspect must be 'auto' or None. Got {device_map!r}.")
    if device_map == "auto":
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise InspectError("--device-map auto needs the accelerate package (pip install accelerate).") from None
    try:
        if safetensors:
            kw = {"dtype": dtype} if dtype is not None else {}
            placement = device_map or device
            if placement is not None:
                kw["device_map"] = placement
            model = cls.from_pretrained(p, config=config, trust_remote_code=trust_remote_code, local_files_only=True,
                                        use_safetensors=True, **kw)
        else:
            notes.append(f"no weights in {path}: random weights from --seed {seed}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(resolve_seed(seed, "load_model"))
                arch = cls.__name__
                auto = _auto_model(config, arch)
                if auto is not None:
                    model = auto.from_config(config, trust_remote_code=trust_remote_code, dtype=dtype or torch.float32)
                else:
                    model = cls._from_config(config, dtype=dtype or torch.float32)
            if device is not None:
                model = model.to(device)
    except InspectError:
        raise
    except Exception as e:  # noqa: BLE001 - a model that cannot be built or read: one line
        raise InspectError(f"cannot load the model in {path}: {type(e).__name__}: {_first_line(e)}") from None
    model.eval()
    tokenizer = None
    if any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(p, local_files_only=True,
                                                                   trust_remote_code=trust_remote_code)
        except Exception:  # noqa: BLE001 - an unreadable tokenizer: inspect with random ids instead
            tokenizer = None
            notes.append("the tokenizer in the directory could not be read")
    return model, tokenizer


def vocab_size(model) -> int:
    """The vocabulary of a transformers model: ``config.vocab_size``, else that of its text config (multimodal)."""
    cfg = getattr(model, "config", None)
    for c in (cfg, getattr(cfg, "text_config", None), getattr(getattr(cfg, "thinker_config", None), "text_config",
                                                               None), getattr(cfg, "decoder", None)):
        v = getattr(c, "vocab_size", None) if c is not None else None
        if isinstance(v, int) and v > 0:
            return v
    return 0


def read_texts(path) -> Iterator[str]:
    """The texts of ``path``, one at a time: a UTF-8 text file (one text), a ``.jsonl`` file (a ``text`` field or a
    string per line), a ``.parquet`` file (its ``text`` column, or its first string column), or a directory saved
    by ``datasets`` (``save_to_disk``; needs the ``datasets`` package), or a held-out text by name
    (``softhard:prose``, ``softhard:code``, ``softhard:legal``: :func:`softhard.inspect.zoo.texts.heldout_text`).
    Raises :class:`InspectError`."""
    from .zoo.texts import TEXT_PREFIX, heldout_text

    if str(path).startswith(TEXT_PREFIX) and not Path(path).exists():
        try:
            text = heldout_text(str(path))
        except ValueError as e:
            raise InspectError(str(e).replace("parameter of heldout_text", "parameter of inspect")) from None
        yield text
        return
    p = Path(path)
    if p.is_dir():
        if not any((p / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            raise InspectError(f"{path} is a directory but not a dataset saved with datasets.save_to_disk.")
        try:
            import datasets
        except ImportError:
            raise InspectError(f"{path} is a saved dataset; reading it needs the datasets package "
                               f"(pip install datasets).") from None
        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001
            raise InspectError(f"cannot read the dataset {path}: {_first_line(e)}") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[next(iter(ds))]
        col = _text_column(list(ds.column_names), {k: str(v) for k, v in ds.features.items()}, path)
        for row in ds:
            yield str(row[col])
        return
    if not p.is_file():
        raise InspectError(f"cannot read the text file {path}: no such file.")
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            f = pq.ParquetFile(p)
            names = f.schema_arrow.names
            col = _text_column(names, {n: str(f.schema_arrow.field(n).type) for n in names}, path)
            for batch in f.iter_batches(columns=[col], batch_size=256):
                for v in batch.column(0).to_pylist():
                    if v is not None:
                        yield str(v)
        except ImportError:
            raise InspectError(f"{path} is a parquet file; reading it needs pyarrow.") from None
        except OSError as e:
            raise InspectError(f"cannot read the parquet file {path}: {_first_line(e)}") from None
        return
    try:
        fh = p.open(encoding="utf-8")
    except OSError as e:
        raise InspectError(f"cannot read the text file {path}: {e.strerror or e}") from None
    with fh:
        try:
            if p.suffix in (".jsonl", ".json"):
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        v = json.loads(line)
                    except ValueError:
                        raise InspectError(f"{path}, line {i}: not JSON (expected one {{\"text\": ...}} or one "
                                           f"string per line).") from None
                    v = v.get("text") if isinstance(v, dict) else v
                    if not isinstance(v, str):
                        raise InspectError(f"{path}, line {i}: no \"text\" string field.")
                    yield v
            else:
                yield fh.read()
        except UnicodeDecodeError as e:
            raise InspectError(f"the tokenizer cannot encode {path}: it is not UTF-8 text ({e.reason} at byte "
                               f"{e.start}).") from None


def _text_column(names: list[str], types: dict, path) -> str:
    if "text" in names:
        return "text"
    for n in names:
        if types.get(n, "") in ("string", "large_string", "Value(dtype='string')", "Value('string')"):
            return n
    raise InspectError(f"{path} has no 'text' column (columns: {', '.join(names)}).")


def encode_text(path, tokenizer, vocab_size: int, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids ``(n,)`` of the texts of ``path`` (see :func:`read_texts`), at most ``max_tokens``. Raises
    :class:`InspectError` with one line when the file cannot be read or decoded, the model has no tokenizer, or
    the tokenizer cannot encode the text (no tokens, only unknown tokens, or ids outside the vocabulary)."""
    if tokenizer is None:
        raise InspectError("the model directory has no tokenizer: use --random-ids instead of --text.")
    parts, n = [], 0
    for text in read_texts(path):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        parts.append(torch.as_tensor(ids, dtype=torch.long))
        n += len(ids)
        if max_tokens is not None and n >= max_tokens:
            break
    ids = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    ids = ids[:max_tokens] if max_tokens is not None else ids
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


def token_batches(model, ids: torch.Tensor, seq_len: int = 64, batch_size: int = 8,
                  device: str | torch.device | None = None) -> list[Batch]:
    """Batches of ``ids`` for a transformers model (inputs on ``device``, default the model's first parameter's);
    an encoder–decoder model gets the same ids on both sides."""
    enc_dec = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None and first.device.type != "meta" else "cpu"
    out = []
    for b in split_tokens(ids, seq_len, batch_size):
        x = b.to(device)
        out.append(Batch({"input_ids": x, **({"decoder_input_ids": x} if enc_dec else {})}, b))
    return out
