"""Build a tiny random model of every MoE family of the installed transformers, check that softhard routes it as the
model does, and write the family table into docs/inspect.md (between the ``families:begin``/``families:end``
markers), so that the table cannot drift from the code.

Usage: ``python scripts/inspect_families.py [--check]`` (``--check``: exit 1 if the table in the docs differs).
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

from doc_block import update

DOC = Path(__file__).resolve().parents[1] / "docs" / "inspect.md"
BEGIN, END = "<!-- families:begin (scripts/inspect_families.py) -->", "<!-- families:end -->"
HEADER = ("| family | model class built | status | MoE layers | agreement | checked against | weights agree | "
          "routing rule (as identified) | note |\n"
          "|---|---|---|---|---|---|---|---|---|")


def table() -> str:
    import transformers

    from softhard.inspect.families import check_family, moe_families, table_line, table_summary

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fam in moe_families():
            rows.append(check_family(fam, tmp))
            print(table_line(rows[-1]), file=sys.stderr)
    return "\n".join([BEGIN, table_summary(rows), "", HEADER, *map(table_line, rows), END])


def main() -> int:
    return update(DOC, BEGIN, END, table(), "--check" in sys.argv, "the family table")


if __name__ == "__main__":
    sys.exit(main())
