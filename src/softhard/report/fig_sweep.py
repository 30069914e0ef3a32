r"""Standard plots of a sweep, drawn from its results store alone (``softhard sweep-report DIR``).

One figure per result column ``sweep_<column>.{png,pdf,svg}``: the column against one numeric axis (``x``),
one line per value of another axis (``facet``, by colour) and per combination of the remaining axes (by
marker), all in one panel when there are at most 12 lines (else one panel per ``facet`` value); log axes
where the grid is geometric; and ``sweep_gap_vs_mass`` (risk gap against boundary mass) when both exist. Where a
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
from ..results.labels import plot_label
from .figures import pyplot, savefig

__all__ = ["plotted_columns", "sweep_series", "sweep_figures"]

_SKIP = ("cell_id", "seed")


def _numeric(values) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _label(name: str, value) -> str:
    return f"{plot_label(name)} = {value:.4g}" if _numeric([value]) else f"{plot_label(name)} = {value}"


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


def _geometric(values) -> bool:
    """Positive values spaced by one constant factor (a geomspace grid), or spanning two decades or more."""
    v = sorted(float(x) for x in values)
    if len(v) < 3 or v[0] <= 0:
        return False
    ratios = [b / a for a, b in zip(v, v[1:])]
    return v[-1] / v[0] >= 100 or (min(ratios) > 1.2 and max(ratios) / min(ratios) < 1.05)


def _log_y(ax, arrays) -> None:
    y = np.concatenate([np.asarray(a, dtype=float) for a in arrays]) if arrays else np.array([])
    y = y[np.isfinite(y)]
    if y.size and (y > 0).all() and y.max() / y.min() >= 30:
        ax.set_yscale("log")


def _colors(plt, n: int):
    cmap = plt.get_cmap("viridis")
    return [cmap(0.9 * i / max(1, n - 1)) for i in range(n)]


def _draw(plt, out: Path, table, series: dict, facet, x: str, column: str, log_x: bool, xcol: str | None = None):
    """One figure: every line of every facet value in one panel when there are at most 12 lines (colour: the
    facet value; marker: the other axes), else one panel per facet value."""
    from .figures import legend_outside, log_axis

    panels = list(series)
    n_lines = sum(len(v) for v in series.values())
    overlay = n_lines <= 12
    groups = [panels] if overlay else [[fv] for fv in panels]
    ncols = 1 if overlay else min(len(panels), 3)
    nrows = math.ceil(len(groups) / ncols)
    fig, axs = plt.subplots(nrows, ncols, figsize=(6.4 if overlay else 4.0 * ncols, 4.2 if overlay else 3.2 * nrows),
                            squeeze=False, sharey=not overlay, layout="constrained")
    colors = _colors(plt, len(panels))
    markers = "osD^vP*X"
    ys = []
    for ax, group in zip(axs.flat, groups):
        xs_all = []
        for fv in group:
            c = colors[panels.index(fv)]
            for j, (line, (xs, mean, se, exact)) in enumerate(series[fv].items()):
                parts = ([_label(facet, fv)] if facet is not None and overlay else []) + [_label(a, v) for a, v in line]
                ax.errorbar(xs, mean, yerr=None if np.isnan(se).all() else se, marker=markers[j % len(markers)], ms=4,
                            capsize=2, color=c if overlay else f"C{j % 10}", label=", ".join(parts) or column)
                if exact is not None:
                    ax.plot(xs, exact, "--", color=c if overlay else f"C{j % 10}", lw=1)
                xs_all += list(xs)
                ys.append(mean)
        if not overlay and facet is not None:
            ax.set_title(_label(facet, group[0]), fontsize=9)
        ax.set_xlabel(plot_label(xcol or x))
        xv = np.asarray(xs_all, dtype=float)
        if xcol is not None:  # a measured x: logarithmic when it spans a factor 30, like y
            log_x = bool(xv.size) and bool((xv > 0).all()) and xv.max() / xv.min() >= 30
        if log_x and all(v > 0 for v in xs_all):
            ax.set_xscale("log")
            log_axis(ax.xaxis, xs_all)
    for ax in axs.flat[len(groups):]:
        ax.set_visible(False)
    for ax in axs[:, 0]:
        ax.set_ylabel(plot_label(column))
    for ax in axs.flat[:len(groups)]:
        _log_y(ax, ys)
    has_exact = any(s[3] is not None for lines in series.values() for s in lines.values())
    if overlay and (n_lines > 1 or has_exact):
        legend_outside(axs[0, 0], title="dashed: exact" if has_exact else None, title_fontsize=7)
    elif not overlay and (len(series[panels[0]]) > 1 or has_exact):
        axs[0, 0].legend(fontsize=7, title="dashed: exact" if has_exact else None, title_fontsize=7)
    what = f"{plot_label(column)} against {plot_label(xcol or x)}"
    fig.suptitle(f"{table.meta['spec']['experiment']}: {what}", fontsize=10)
    return fig


def _gap_vs_mass(table, x: str, facet) -> dict:
    """The series of the risk gap against the boundary mass (the mass's means as x), per line; no exact curve."""
    gap, mass = sweep_series(table, "risk_gap", x, facet), sweep_series(table, "boundary_mass", x, facet)
    return {fv: {line: (mass[fv][line][1], g, gse, None) for line, (_, g, gse, _) in lines.items()}
            for fv, lines in gap.items()}


def sweep_figures(out: str | Path, x: str | None = None, facet: str | None = None) -> list[Path]:
    """Write ``OUT/sweep_<column>.{png,pdf,svg}`` for every plotted column of the sweep stored in ``out``, and
    ``sweep_gap_vs_mass`` when it has both ``risk_gap`` and ``boundary_mass``; returns the PNG paths.

    One panel holds every line when there are at most 12 (colour: the ``facet`` value; marker: the other
    axes), else one panel per ``facet`` value. The x axis is logarithmic when the spec says ``log = true`` or
    its values form a geometric grid; the y axis when the values are positive and span a factor 30 or more.
    """
    from ..runs.sweep import read_results

    out = Path(out)
    table = read_results(out)
    if not table.rows:
        fail("out", "sweep_figures", "a sweep directory with stored rows", str(out))
    x, facet, _ = _choose(table, x, facet)
    axes = table.meta["spec"]["axes"]
    log_x = x in table.meta["spec"].get("log_axes", []) or _geometric(axes[x])

    plt = pyplot()
    paths = []
    columns = plotted_columns(table)
    for column in columns:
        fig = _draw(plt, out, table, sweep_series(table, column, x, facet), facet, x, column, log_x)
        paths.append(savefig(fig, out / f"sweep_{column}.png"))
    if {"risk_gap", "boundary_mass"} <= set(columns):
        fig = _draw(plt, out, table, _gap_vs_mass(table, x, facet), facet, x, "risk_gap", False,
                    xcol="boundary_mass")
        paths.append(savefig(fig, out / "sweep_gap_vs_mass.png"))
    return paths
