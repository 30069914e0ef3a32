r"""Standard plots of a sweep, drawn from its results store alone (``softhard sweep-report DIR``).

One PNG per result column ``sweep_<column>.png``: the column against one numeric axis (``x``), one
panel per value of another axis (``facet``), one line per combination of the remaining axes. Where a
point has :math:`k \ge 2` seeds it shows the mean over seeds and its standard error

.. math::

    \bar y = \frac1k \sum_{s=1}^k y_s, \qquad
    \mathrm{se}(\bar y) = \frac{1}{\sqrt k}\Big(\frac{1}{k-1}\sum_{s=1}^k (y_s - \bar y)^2\Big)^{1/2};

with one seed the row's own ``<column>_stderr`` is the error bar when present. A ``<column>_exact``
column is drawn dashed in the line's colour.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._validate import fail
from ..results.table import Table
from .figures import pyplot, savefig

__all__ = ["plotted_columns", "sweep_series", "sweep_figures"]

_SKIP = ("cell_id", "seed")


def _numeric(values) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _label(name: str, value) -> str:
    return f"{name} = {value:.4g}" if _numeric([value]) else f"{name} = {value}"


def _choose(table: Table, x: str | None, facet: str | None) -> tuple[str, str | None, list[str]]:
    axes = table.meta["spec"]["axes"]
    varying = [a for a, v in axes.items() if len(v) > 1]
    if x is None:
        x = next((a for a in varying if _numeric(axes[a])), None)
        if x is None:
            fail("x", "sweep_figures", "a numeric axis with two or more values", list(axes))
    elif x not in axes or not _numeric(axes[x]):
        fail("x", "sweep_figures", f"a numeric axis, one of {[a for a in axes if _numeric(axes[a])]}", x)
    if facet is None:
        facet = next((a for a in varying if a != x), None)
    elif facet not in axes or facet == x:
        fail("facet", "sweep_figures", f"an axis other than x, one of {[a for a in axes if a != x]}", facet)
    return x, facet, [a for a in varying if a not in (x, facet)]


def plotted_columns(table: Table) -> list[str]:
    """The plotted columns: numeric result columns, not ``*_stderr``/``*_exact``, not copies of an axis."""
    axes = table.meta["spec"]["axes"]
    copy = lambda c: any(all(r[c] == r[a] for r in table.rows) for a in axes)  # noqa: E731
    return [c for c in table.columns if c not in (*_SKIP, *axes) and not c.endswith(("_stderr", "_exact"))
            and _numeric([r[c] for r in table.rows if r[c] is not None]) and not copy(c)]


def sweep_series(table: Table, column: str, x: str | None = None, facet: str | None = None) -> dict:
    """The points of one figure: ``{facet value: {line key: (xs, mean, se, exact)}}``, arrays of shape ``(P,)``.

    ``table`` is :func:`softhard.runs.sweep.read_results`' output; ``line key`` is a tuple of
    ``(axis, value)`` pairs of the remaining axes; ``se`` is NaN where no error is known and ``exact`` is
    ``None`` without a ``<column>_exact`` column. ``x``/``facet`` default to the first numeric axis with
    two or more values and the next axis with two or more values.
    """
    x, facet, others = _choose(table, x, facet)
    groups: dict = {}
    for r in table.rows:
        if r.get(column) is None:
            continue
        line = tuple((a, r[a]) for a in others)
        point = groups.setdefault(r[facet] if facet else None, {}).setdefault(line, {}).setdefault(r[x], [])
        point.append((r[column], r.get(f"{column}_stderr"), r.get(f"{column}_exact")))
    series = {}
    for fv, lines in groups.items():
        series[fv] = {}
        for line, points in lines.items():
            xs = sorted(points)
            mean, se, exact = [], [], []
            for xv in xs:
                y = np.array([p[0] for p in points[xv]], dtype=float)
                mean.append(y.mean())
                own = points[xv][0][1]
                se.append(y.std(ddof=1) / math.sqrt(len(y)) if len(y) > 1 else (own if own is not None else math.nan))
                exact.append(points[xv][0][2])
            has_exact = all(e is not None for e in exact)
            series[fv][line] = (np.array(xs, dtype=float), np.array(mean), np.array(se, dtype=float),
                                np.array(exact, dtype=float) if has_exact else None)
    return series


def sweep_figures(out: str | Path, x: str | None = None, facet: str | None = None) -> list[Path]:
    """Write ``OUT/sweep_<column>.png`` for every plotted column of the sweep stored in ``out``; returns the paths."""
    from ..runs.sweep import read_results

    out = Path(out)
    table = read_results(out)
    if not table.rows:
        fail("out", "sweep_figures", "a sweep directory with stored rows", str(out))
    x, facet, _ = _choose(table, x, facet)
    log_x = x in table.meta["spec"].get("log_axes", [])
    import matplotlib.ticker

    plt = pyplot()

    paths = []
    for column in plotted_columns(table):
        series = sweep_series(table, column, x, facet)
        panels = list(series)
        ncols = min(len(panels), 4)
        nrows = math.ceil(len(panels) / ncols)
        fig, axs = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False, sharey=True,
                                layout="constrained")
        for ax, fv in zip(axs.flat, panels):
            for i, (line, (xs, mean, se, exact)) in enumerate(series[fv].items()):
                name = ", ".join(_label(a, v) for a, v in line) or column
                ax.errorbar(xs, mean, yerr=None if np.isnan(se).all() else se, marker="o", ms=3, capsize=2,
                            color=f"C{i % 10}", label=name)
                if exact is not None:
                    ax.plot(xs, exact, "--", color=f"C{i % 10}", lw=1)
            if facet is not None:
                ax.set_title(_label(facet, fv), fontsize=9)
            ax.set_xlabel(x)
            if log_x:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        for ax in axs.flat[len(panels):]:
            ax.set_visible(False)
        for ax in axs[:, 0]:
            ax.set_ylabel(column)
        has_exact = any(s[3] is not None for lines in series.values() for s in lines.values())
        if has_exact or len(series[panels[0]]) > 1:
            axs.flat[0].legend(fontsize=7, title="dashed: exact" if has_exact else None, title_fontsize=7)
        fig.suptitle(f"{table.meta['spec']['experiment']}: {column}", fontsize=10)
        paths.append(savefig(fig, out / f"sweep_{column}.png"))
    return paths
