r"""The training text of softhard's language models: docstrings of the Python standard library.

- **files**: every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``, test suites and installed packages
  left out (any path part ``test``, ``tests``, ``idle_test``, ``site-packages``, ``dist-packages``), sorted by
  relative path (:func:`stdlib_files`);
- **split**: file ``i`` of that order is held out when ``i % 10 == 9`` (:func:`is_heldout_file`), trained on
  otherwise;
- **text**: the docstrings (``ast.get_docstring``) of the modules, classes and functions of each file, joined by
  blank lines (:func:`stdlib_corpus`); English prose with code examples.

:func:`corpus_fingerprint` hashes the relative paths and bytes of the files (it changes with the Python version).
The tokenizer is bytes: token ids are the UTF-8 bytes of the text (vocabulary 256), written as a ``tokenizers``
byte-level tokenizer with no merges, so ``AutoTokenizer`` reads it back (:func:`byte_tokenizer`).

Every model of the zoo (:mod:`softhard.inspect.zoo.models`) trains on this text; the held-out text *kinds*
(:mod:`softhard.inspect.zoo.texts`) are never part of it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sysconfig
from pathlib import Path

import torch

__all__ = ["stdlib_files", "is_heldout_file", "corpus_fingerprint", "stdlib_corpus", "byte_ids", "byte_chars",
           "byte_tokenizer", "HELDOUT_EVERY"]

HELDOUT_EVERY = 10  # file i (sorted) is held out when i % HELDOUT_EVERY == HELDOUT_EVERY - 1


def _skip(rel: Path) -> bool:
    return any(part in ("test", "tests", "idle_test", "site-packages", "dist-packages") for part in rel.parts)


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, tuple[Path, ...]]:
    """``(root, files)``: the standard library's directory and its ``*.py`` files (test suites left out), sorted
    by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((p for p in root.rglob("*.py") if not _skip(p.relative_to(root))),
                   key=lambda p: p.relative_to(root).as_posix())
    return root, tuple(files)


def is_heldout_file(i: int) -> bool:
    """Whether file ``i`` of :func:`stdlib_files` is held out of training (every 10th)."""
    return i % HELDOUT_EVERY == HELDOUT_EVERY - 1


@functools.lru_cache(maxsize=1)
def corpus_fingerprint() -> str:
    """SHA-256 (16 hex digits) of the relative paths and bytes of the files :func:`stdlib_corpus` reads: it
    changes with the Python version, and it is cheap (no parsing)."""
    root, files = stdlib_files()
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def stdlib_corpus() -> tuple[str, str]:
    """``(train_text, heldout_text)``: the docstrings of the standard library (module docstring); every 10th file
    (sorted by relative path) is held out."""
    _, files = stdlib_files()
    train, held = [], []
    for i, p in enumerate(files):
        try:
            tree = ast.parse(p.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        docs = [d for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                              ast.AsyncFunctionDef))
                and (d := ast.get_docstring(n))]
        (held if is_heldout_file(i) else train).append("\n\n".join(docs))
    return "\n\n".join(t for t in train if t), "\n\n".join(t for t in held if t)


def byte_ids(text: str) -> torch.Tensor:
    """Token ids ``(n,)`` (int64) of ``text`` for the byte tokenizer: its UTF-8 bytes."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.long)


def byte_chars() -> dict[int, str]:
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

    vocab = {c: b for b, c in byte_chars().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)
