"""Figure registry and the shared plotting helpers (the report modules' only entry to matplotlib).

:data:`FIGURES` maps a table name to its renderer ``(tables_dir: Path) -> list[Path]`` (imported lazily);
:data:`FIGURE_INPUTS` lists the tables a renderer reads when it reads more than its own. A renderer reads
only files written under the directory (``NAME.json``/``NAME.csv``) and writes each figure with
:func:`savefig`: PNG (for the page), PDF and SVG (for a paper) beside each other, atomically and
byte-for-byte reproducible.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

__all__ = ["FIGURES", "FIGURE_INPUTS", "FORMATS", "render_figure", "pyplot", "savefig", "figure_files",
           "log_axis", "legend_outside"]

# table name -> "module:function"
FIGURES: dict[str, str] = {
    "table1": "softhard.report.fig_boundary:figure1",
    "table1_multi": "softhard.report.fig_boundary:figure1_multi",
    "table2": "softhard.report.fig_boundary:figure2",
    "table3": "softhard.report.fig_symmetry:figure3",
}
# renderers that also read other tables (redrawn when any of them is recomputed)
FIGURE_INPUTS: dict[str, tuple[str, ...]] = {"table1": ("table1", "table1_limit")}

FORMATS = ("png", "pdf", "svg")


def render_figure(name: str, out: Path) -> list[Path]:
    """Render the figure(s) of table ``name`` from the files in ``out``; returns the PNG paths."""
    mod, fn = FIGURES[name].split(":")
    return getattr(importlib.import_module(mod), fn)(Path(out))


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, with reproducible vector output."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "softhard"  # stable ids inside the SVG
    import matplotlib.pyplot as plt

    return plt


def figure_files(png: Path) -> list[Path]:
    """The files :func:`savefig` writes for ``png``: the PNG, PDF and SVG."""
    return [Path(png).with_suffix(f".{fmt}") for fmt in FORMATS]


def savefig(fig, path: Path) -> Path:
    """Save ``fig`` as ``path`` (PNG) and, beside it, as PDF and SVG, atomically; close it; return the PNG path.

    No dates are written into the PDF or SVG, so redrawing the same tables gives the same bytes.
    """
    import io

    from ..results.io import atomic_write

    path = Path(path)
    meta = {"png": {}, "pdf": {"CreationDate": None, "ModDate": None}, "svg": {"Date": None}}
    for target in figure_files(path):
        fmt = target.suffix[1:]
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=130, bbox_inches="tight", metadata=meta[fmt])
        atomic_write(target, buf.getvalue())
    pyplot().close(fig)
    return path


def log_axis(axis, values) -> None:
    """A log axis labelled readably whatever its range: decades (``10^k``) over two decades or more; below,
    plain labels at the data values when they are few and spaced by a factor 1.5 or more, else at 1-2-5 steps."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

    v = sorted({float(x) for x in values if x is not None and math.isfinite(float(x)) and float(x) > 0})
    if not v:
        return
    decades = math.log10(v[-1] / v[0])
    fmt = FuncFormatter(lambda x, _: f"{x:.3g}")
    if 1 < len(v) <= 8 and decades < 2 and min(b / a for a, b in zip(v, v[1:])) >= 1.5:
        axis.set_major_locator(FixedLocator(v))
        axis.set_major_formatter(fmt)
        axis.set_minor_locator(NullLocator())
    elif decades < 2:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(fmt)
        axis.set_minor_locator(LogLocator(subs="auto"))
    else:
        axis.set_major_locator(LogLocator())
        axis.set_minor_locator(LogLocator(subs="auto"))
    axis.set_minor_formatter(NullFormatter())


def legend_outside(ax, **kw) -> None:
    """A legend to the right of the axes, so that it never covers data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False, **kw)
