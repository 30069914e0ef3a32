r"""The sweep store: append-only part files, each carrying the sha256 of its own bytes in its name.

A part is one batch of records (dicts of scalars), written as Parquet or CSV to a temporary name and renamed
(:func:`softhard.results.io.atomic_write`) to

.. code-block:: text

    part-<time ns>-<pid>-<k>-<sha256 of the bytes>.<parquet|csv>

so that the checksum appears together with the file, in one atomic rename. :func:`read_parts` recomputes
it; a part whose bytes no longer match (truncated, overwritten, bit rot), or that does not decode, is
*damaged*: it is reported on stderr (one line naming the file), moved to ``damaged/`` beside the parts, and
its records are left out, so that a resumed sweep computes those cells again. Parts written before
checksums (no digest in the name) are decoded strictly: a CSV must end with a newline and every row must
have as many fields as the header.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .io import atomic_write

__all__ = ["DamagedPart", "Damaged", "write_part", "read_part", "read_parts", "part_paths", "FORMATS"]

FORMATS = ("parquet", "csv")
_NAME = re.compile(r"^part-\d+-\d+-\d+(?:-(?P<sha>[0-9a-f]{64}))?\.(?P<fmt>parquet|csv)$")
_TEXT_COLUMNS = ("cell_id", "status", "error")  # read back as text in CSV parts
_COUNTER = itertools.count()


class DamagedPart(ValueError):
    """A part file whose bytes do not match its checksum or do not decode; the message says how."""


@dataclass(frozen=True)
class Damaged:
    """A damaged part: where it was, where it was moved (``None`` if it could not be moved), and why."""

    path: Path
    moved_to: Path | None
    reason: str


def write_part(store: str | os.PathLike, records: list[dict], fmt: str) -> Path:
    """Write ``records`` as one part in ``store`` (atomically, checksum in the name); returns its path."""
    data = _encode(records, fmt)
    digest = hashlib.sha256(data).hexdigest()
    name = f"part-{time.time_ns():020d}-{os.getpid()}-{next(_COUNTER)}-{digest}.{fmt}"
    return atomic_write(Path(store) / name, data)


def part_paths(store: str | os.PathLike) -> list[Path]:
    """The part files of ``store`` in write order (temporaries and other files are not parts)."""
    return sorted(p for p in Path(store).glob("part-*") if _NAME.match(p.name))


def read_part(path: str | os.PathLike) -> list[dict]:
    """The records of one part; raises :class:`DamagedPart` when its checksum or its format is broken."""
    path = Path(path)
    m = _NAME.match(path.name)
    if m is None:
        raise DamagedPart(f"not a part file name: {path.name}")
    data = path.read_bytes()
    if m["sha"] is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != m["sha"]:
            raise DamagedPart(f"checksum mismatch ({len(data)} bytes, sha256 {got[:12]}… instead of {m['sha'][:12]}…)")
    return _decode(data, m["fmt"])


def read_parts(store: str | os.PathLike, report: bool = True) -> tuple[list[list[dict]], list[Damaged]]:
    """``(records of every readable part, in write order; the damaged parts)``.

    Each damaged part is moved to ``store/damaged/`` and, with ``report``, named in one line on stderr.
    """
    good, damaged = [], []
    for path in part_paths(store):
        try:
            good.append(read_part(path))
        except FileNotFoundError:  # moved aside meanwhile by another reader
            continue
        except (DamagedPart, OSError) as e:
            moved = _set_aside(path)
            damaged.append(Damaged(path, moved, str(e)))
            if report:
                where = f"moved to {moved}" if moved is not None else "could not be moved"
                print(f"softhard: damaged sweep part {path} ({e}); {where}; its cells will be computed again",
                      file=sys.stderr)
    return good, damaged


def _set_aside(path: Path) -> Path | None:
    dest_dir = path.parent / "damaged"
    try:
        dest_dir.mkdir(exist_ok=True)
        dest = dest_dir / path.name
        k = 1
        while dest.exists():
            dest, k = dest_dir / f"{path.name}.{k}", k + 1
        os.replace(path, dest)
        return dest
    except OSError:
        return None


# ------------------------------------------------------------------------------------------ formats


def _encode(records: list[dict], fmt: str) -> bytes:
    columns = list(dict.fromkeys(k for r in records for k in r))
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()} for r in records)
        return buf.getvalue().encode("utf-8")
    if fmt != "parquet":
        raise ValueError(f"unknown part format {fmt!r}; one of {FORMATS}")
    pa, pq = _pyarrow()
    data = {}
    for c in columns:  # a column mixing kinds (numbers, strings, booleans) is stored as text
        values = [r.get(c) for r in records]
        kinds = {bool if isinstance(v, bool) else (float if isinstance(v, (int, float)) else type(v))
                 for v in values if v is not None}
        data[c] = [None if v is None else str(v) for v in values] if len(kinds) > 1 else values
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(data), sink)
    return sink.getvalue().to_pybytes()


def _decode(data: bytes, fmt: str) -> list[dict]:
    if fmt == "parquet":
        pa, pq = _pyarrow()
        try:
            return pq.read_table(pa.BufferReader(data)).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DamagedPart(f"not a readable Parquet file: {type(e).__name__}: {e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DamagedPart(f"not UTF-8 text: {e}") from None
    if not text.endswith("\n"):
        raise DamagedPart("the file ends inside a row (no final newline)")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DamagedPart(f"not readable CSV: {e}") from None
    if not rows:
        raise DamagedPart("no header row")
    header, out = rows[0], []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DamagedPart(f"line {i} has {len(row)} fields, the header {len(header)}")
        out.append({k: (v if k in _TEXT_COLUMNS else _parse_csv(v)) for k, v in zip(header, row)})
    return out


def _parse_csv(v: str):
    if v == "":
        return None
    if v in ("True", "False"):
        return v == "True"
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is part of softhard[sweep]
        raise ImportError("the Parquet store needs pyarrow: pip install 'softhard[sweep]' "
                          "(or format = \"csv\")") from None
    return pa, pq
