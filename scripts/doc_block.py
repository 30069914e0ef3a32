"""One generated block of a docs page, between its BEGIN and END markers: written, or checked (``--check``).

Shared by the scripts that write tables into ``docs/`` (``inspect_families.py``, ``price_families.py``,
``price_zoo.py``, ``paper_objects.py``).
"""

from __future__ import annotations

import re
from pathlib import Path


def update(doc: Path, begin: str, end: str, block: str, check: bool, what: str) -> int:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) in place of the page's block (appended
    when the page has none). ``check``: write nothing; exit status 0 when the page already holds ``block``, 1
    otherwise. Returns the exit status."""
    text = doc.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    found = pattern.search(text)
    if check:
        return 0 if found and found.group(0) == block else 1
    text = pattern.sub(lambda m: block, text) if found else text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")
    print(f"wrote {what} into {doc}")
    return 0
