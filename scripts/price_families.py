"""Harden the tiny random model of every MoE family of the installed transformers
(:func:`softhard.inspect.price.families.price_family`) and write the table of the families priced and refused,
with the reason, into docs/hardening.md (between the ``prices:begin``/``prices:end`` markers), so that the
table cannot drift from the code.

Usage: ``python scripts/price_families.py [--check] [FAMILY ...]`` (``--check``: exit 1 if the table in the docs
differs; families named: print their lines only).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

from doc_block import update

DOC = Path(__file__).resolve().parents[1] / "docs" / "hardening.md"
BEGIN, END = "<!-- prices:begin (scripts/price_families.py) -->", "<!-- prices:end -->"
HEADER = ("| family | status | path | layers hardened | L_0 − L_1 (tiny model) | G₁ | routing rule | note |\n"
          "|---|---|---|---|---|---|---|---|")


def rows(names=None) -> list[dict]:
    import transformers

    from softhard.inspect.families import moe_families
    from softhard.inspect.price.families import price_family, price_table_line

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fam in names or moe_families():
            t = time.perf_counter()
            out.append(price_family(fam))
            print(price_table_line(out[-1]), f"({time.perf_counter() - t:.1f} s)", file=sys.stderr, flush=True)
    return out


def table(rs: list[dict]) -> str:
    import transformers

    from softhard.inspect.price.families import price_table_line

    n = len(rs)
    priced = sum(r["status"] == "priced" for r in rs)
    none = sum(r["status"] == "no-moe" for r in rs)
    head = (f"transformers {transformers.__version__} has **{n} MoE families**; hardening prices **{priced}** of them "
            f"on their tiny random models; {none} are not token-routed MoEs; {n - priced - none} are refused, each "
            f"with the reason.")
    return "\n".join([BEGIN, head, "", HEADER, *map(price_table_line, rs), END])


def main() -> int:
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    rs = rows(names or None)
    if names:
        return 0
    return update(DOC, BEGIN, END, table(rs), "--check" in sys.argv, "the price table")


if __name__ == "__main__":
    sys.exit(main())
