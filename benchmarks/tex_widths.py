"""Measure the width of every LaTeX fragment (``NAME.tex``) of a results directory by compiling it (issue 23).

Each fragment is set in an ``article`` (10 pt, letter paper) with ``booktabs``, once in one-column and once in
two-column layout, and its natural width is compared with ``\\textwidth`` (one-column: 345 pt) and
``\\columnwidth`` (two-column: 229.5 pt). Needs ``pdflatex`` (``apt-get install texlive-latex-base
texlive-latex-recommended``); not a test, a measurement.

Usage::

    python benchmarks/tex_widths.py RESULTS_DIR [--json widths.json]

Prints one line per fragment: its width in pt and the margin left in each layout; exit status 1 when a fragment
is wider than the one-column text width (or does not compile).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOC = r"""\documentclass[10pt%s]{article}
\usepackage[T1]{fontenc}
\usepackage{booktabs}
\begin{document}
\newsavebox\frag
\sbox\frag{\input{%s}}
\typeout{SOFTHARD-WIDTH=\the\wd\frag;TEXTWIDTH=\the\textwidth;COLUMNWIDTH=\the\columnwidth}
\usebox\frag
\end{document}
"""


def measure(fragment: Path, twocolumn: bool) -> dict:
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(fragment, Path(d) / "frag.tex")
        (Path(d) / "doc.tex").write_text(DOC % (",twocolumn" if twocolumn else "", "frag"), encoding="utf-8")
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=d,
                           capture_output=True, text=True, timeout=120)
        m = re.search(r"SOFTHARD-WIDTH=([0-9.]+)pt;TEXTWIDTH=([0-9.]+)pt;COLUMNWIDTH=([0-9.]+)pt", r.stdout)
        if r.returncode != 0 or m is None:
            tail = [ln for ln in r.stdout.splitlines() if ln.startswith("!")][:1]
            return {"error": tail[0] if tail else f"pdflatex exit {r.returncode}"}
        width, text, column = (float(x) for x in m.groups())
        return {"width_pt": width, "textwidth_pt": text, "columnwidth_pt": column}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if shutil.which("pdflatex") is None:
        print("pdflatex not found: apt-get install texlive-latex-base texlive-latex-recommended")
        return 1
    rows, bad = [], 0
    for frag in sorted(args.results.glob("*.tex")):
        one, two = measure(frag, False), measure(frag, True)
        if "error" in one:
            print(f"{frag.name:24s} does not compile: {one['error']}")
            bad += 1
            continue
        w = one["width_pt"]
        fits = w <= one["textwidth_pt"]
        bad += not fits
        print(f"{frag.name:24s} {w:6.1f} pt   one-column text {one['textwidth_pt']:.1f} pt: "
              f"{'fits' if fits else 'TOO WIDE'} ({one['textwidth_pt'] - w:+.1f})   two-column column "
              f"{two['columnwidth_pt']:.1f} pt: {two['columnwidth_pt'] - w:+.1f}")
        rows.append({"fragment": frag.name, **one, "columnwidth_twocolumn_pt": two.get("columnwidth_pt")})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
