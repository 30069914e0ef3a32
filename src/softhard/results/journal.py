"""The journal of a publication (:mod:`softhard.results.outputs`), read without the machinery that writes it: a
reader of an output directory (:func:`softhard.results.io.read_table`, ``softhard render``) asks :func:`interrupted`
whether a command was killed inside its rename loop, leaving a mix of the old and the new set."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__all__ = ["interrupted", "JOURNAL", "STAGE_NAME"]

JOURNAL = ".publish.json"  # in a stage: the files to move and to delete; written last, it is the commit point
STAGE_NAME = re.compile(r"^\.staging-[0-9a-z-]+$")


def interrupted(out: str | os.PathLike) -> list[tuple[str, int, int]]:
    """The publications cut in ``out`` (a command killed inside its rename loop): per journaled stage, its
    name, the files of the new set already moved and the files in all. A reader seeing one knows that ``OUT``
    holds a mix of the old and the new set until the next softhard command on it completes the publication."""
    out, found = Path(out), []
    if not out.is_dir():
        return found
    for entry in sorted(out.iterdir()):
        if entry.is_dir() and STAGE_NAME.match(entry.name):
            try:
                journal = json.loads((entry / JOURNAL).read_text(encoding="utf-8"))
                names = [n for n in journal["move"] if isinstance(n, str)]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            left = sum((entry / n).exists() for n in names)
            found.append((entry.name, len(names) - left, len(names)))
    return found
