"""Figure registry: table name -> renderer ``(tables_dir: Path) -> list[Path]`` (lazy imports).

A renderer reads only files written under the directory (``NAME.json``/``NAME.csv``) and writes
PNGs there atomically (``report.io.atomic_write`` of the PNG bytes).
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["FIGURES", "render_figure"]

# table name -> "module:function"
FIGURES: dict[str, str] = {
    "table1": "softhard.report.fig_boundary:figure1",
    "table1_multi": "softhard.report.fig_boundary:figure1_multi",
    "table2": "softhard.report.fig_boundary:figure2",
    "table3": "softhard.report.fig_symmetry:figure3",
}


def render_figure(name: str, out: Path) -> list[Path]:
    """Render the figure(s) of table ``name`` from the files in ``out``."""
    mod, fn = FIGURES[name].split(":")
    return getattr(importlib.import_module(mod), fn)(Path(out))


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (the report modules' only entry to it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def savefig(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import io

    from ..results.io import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    pyplot().close(fig)
    return atomic_write(path, buf.getvalue())
