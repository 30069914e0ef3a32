r"""Figures 1 and 2 (§7.1, §7.2), rendered from the written tables alone.

Figure 1: (a) :math:`\beta(2\tau)` and :math:`L_\tau - L_0` against τ on log–log axes, Monte Carlo with
error bars, the exact curves, the first-order line :math:`G_1\tau`, the paper's printed values (crosses) and a
slope-1 reference; (b) the gap against the mass; (c), (d) when ``table1_limit`` exists, the τ → 0 limits
:math:`(L_\tau - L_0)/\tau \to G_1` and :math:`\beta(w)/2w \to \psi(0)` from the conditional estimator and
the exact values, each on its own scale. Figure 2: the gap and the flip rate against the mass across offsets,
with the paper's printed values. ``figure1_multi``: the K-expert version of (a), with its exact gap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results.io import read_table
from .figures import log_axis, pyplot, savefig

__all__ = ["figure1", "figure1_multi", "figure2"]

MASS, GAP = r"$\beta(2\tau)$", r"$L_\tau - L_0$"


def _col(t, c):
    return np.asarray(t.column(c), dtype=float)


def _slope(slopes: dict, c: str) -> str:
    s, se = slopes.get(c, float("nan")), slopes.get(f"{c}_stderr", float("nan"))
    return f"slope {s:.3f} ± {se:.3f}" if np.isfinite(s) else "no slope"


def _paper(ax, x, y, label="paper (as printed)") -> None:
    """The paper's printed values: black crosses (drawn only where the table has them)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.any():
        ax.plot(x[ok], y[ok], "x", color="k", ms=7, mew=1.4, label=label, zorder=5)


def _col_or_nan(t, c):
    return _col(t, c) if c in t.columns else np.full(len(t.rows), np.nan)


def _label_points(ax, xs, ys, labels) -> None:
    """Label each point below-right, the rightmost ones below-left, so that no label runs over the axes."""
    right = np.nanmax(xs)
    for x, y, lab in zip(xs, ys, labels):
        left = x > right - 0.18 * (right - np.nanmin(xs))
        ax.annotate(lab, (x, y), fontsize=8, xytext=(-8 if left else 7, -12), textcoords="offset points",
                    ha="right" if left else "left")


def figure1(out: Path) -> list[Path]:
    """``figure1.{png,pdf,svg}``: panels (a)–(d) of the module docstring."""
    plt = pyplot()
    out = Path(out)
    t = read_table(out / "table1.json")
    tau, m, g = _col(t, "tau"), _col(t, "boundary_mass"), _col(t, "risk_gap")
    ms, gs = _col(t, "boundary_mass_stderr"), _col(t, "risk_gap_stderr")
    slopes = t.meta.get("slopes", {})
    limit = out / "table1_limit.json"
    fig, axes = plt.subplots(2, 2, figsize=(11.0, 9.6) if limit.exists() else (11.0, 5.0), squeeze=False)
    if not limit.exists():
        axes = axes[:1]
    ax = axes.ravel()

    a = ax[0]
    a.errorbar(tau, m, yerr=ms, fmt="o", color="C0", ms=5, label=f"{MASS} (MC), {_slope(slopes, 'boundary_mass')}")
    a.plot(tau, _col(t, "boundary_mass_exact"), "-", color="C0", alpha=0.6, label=f"{MASS} exact (3.11)")
    a.errorbar(tau, g, yerr=gs, fmt="s", color="C1", ms=5, label=f"{GAP} (MC), {_slope(slopes, 'risk_gap')}")
    a.plot(tau, _col(t, "risk_gap_exact"), "-", color="C1", alpha=0.6, label=f"{GAP} exact")
    a.plot(tau, _col(t, "risk_gap_first_order"), ":", color="C1", label=r"$G_1\tau$ (first order)")
    _paper(a, tau, _col_or_nan(t, "boundary_mass_paper"))
    _paper(a, tau, _col_or_nan(t, "risk_gap_paper"), label="_nolegend_")
    ref = np.array([tau.min(), tau.max()])
    a.plot(ref, g.min() / 4 * ref / ref[0], "--", color="0.5", lw=1, label="slope 1 (reference)")
    a.set(xscale="log", yscale="log", xlabel=r"temperature $\tau$", ylabel=f"{MASS}, {GAP}",
          title="(a) mass and gap against τ")
    log_axis(a.xaxis, tau)
    a.legend(loc="lower right", fontsize=8, frameon=False)

    b = ax[1]
    b.errorbar(m, g, xerr=ms, yerr=gs, fmt="o", color="C2", ms=5, label="Monte Carlo")
    b.plot(_col(t, "boundary_mass_exact"), _col(t, "risk_gap_exact"), "-", color="C2", alpha=0.6, label="exact")
    _paper(b, _col_or_nan(t, "boundary_mass_paper"), _col_or_nan(t, "risk_gap_paper"))
    _label_points(b, m, g, [rf"$\tau = {tv:g}$" for tv in tau])
    b.set(xlabel=f"boundary mass {MASS}", ylabel=f"risk gap {GAP}", title="(b) gap against mass")
    b.margins(x=0.08, y=0.08)
    b.legend(loc="upper left", fontsize=8, frameon=False)

    if limit.exists():
        lt = read_table(limit)
        lx = _col(lt, "tau")
        for c_ax, col, limit_key, symbol, colour, letter in (
                (ax[2], "gap_over_tau", "G1", (r"$(L_\tau - L_0)/\tau$", r"$G_1$"), "C1", "c"),
                (ax[3], "mass_over_2w", "psi0", (r"$\beta(w)/2w$", r"$\psi(0)$"), "C0", "d")):
            c_ax.errorbar(lx, _col(lt, col), yerr=_col(lt, f"{col}_stderr"), fmt="o", color=colour, ms=5,
                          label=f"{symbol[0]} (conditional estimator)")
            c_ax.plot(lx, _col(lt, f"{col}_exact"), "-", color=colour, alpha=0.6, label=f"{symbol[0]} exact")
            value = lt.meta.get(limit_key, np.nan)
            c_ax.axhline(value, ls=":", color="k", lw=1, label=f"limit {symbol[1]} = {value:.5f}")
            c_ax.set(xscale="log", xlabel=r"temperature $\tau$ ($w = 2\tau$)", ylabel=symbol[0],
                     title=f"({letter}) {symbol[0]} " + r"as $\tau \to 0$ (beyond the paper)")
            log_axis(c_ax.xaxis, lx)
            c_ax.margins(y=0.25)
            c_ax.legend(loc="lower left", fontsize=8, frameon=False)
    fig.tight_layout()
    return [savefig(fig, out / "figure1.png")]


def figure1_multi(out: Path) -> list[Path]:
    """``figure1_multi.{png,pdf,svg}``: the K-expert version of figure 1 (a) (mass exact via orthants, gap exact by
    two-dimensional quadrature)."""
    plt = pyplot()
    out = Path(out)
    t = read_table(out / "table1_multi.json")
    tau = _col(t, "tau")
    fig, ax = plt.subplots(figsize=(7.6, 5.6))
    ax.errorbar(tau, _col(t, "boundary_mass"), yerr=_col(t, "boundary_mass_stderr"), fmt="o", color="C0", ms=5,
                label=f"{MASS} (MC)")
    ax.plot(tau, _col(t, "boundary_mass_exact"), "-", color="C0", alpha=0.6, label=f"{MASS} exact (orthants)")
    ax.errorbar(tau, _col(t, "risk_gap"), yerr=_col(t, "risk_gap_stderr"), fmt="s", color="C1", ms=5,
                label=f"{GAP} (MC)")
    if "risk_gap_exact" in t.columns:
        ax.plot(tau, _col(t, "risk_gap_exact"), "-", color="C1", alpha=0.6, label=f"{GAP} exact (quadrature)")
    ref = np.array([tau.min(), tau.max()])
    ax.plot(ref, _col(t, "risk_gap").min() / 4 * ref / ref[0], "--", color="0.5", lw=1, label="slope 1 (reference)")
    K = t.meta.get("design", {}).get("K", "?")
    ax.set(xscale="log", yscale="log", xlabel=r"temperature $\tau$", ylabel=f"{MASS}, {GAP}",
           title=f"K = {K} experts, linear router (beyond the paper)")
    log_axis(ax.xaxis, tau)
    ax.legend(loc="lower right", fontsize=9, frameon=False)
    fig.tight_layout()
    return [savefig(fig, out / "figure1_multi.png")]


def _perturbation_title(p) -> str:
    if not isinstance(p, dict):
        return ""
    angle, shift = p.get("angle_rad"), p.get("score_shift")
    words = []
    if isinstance(angle, (int, float)):
        words.append(rf"rotation $\alpha = {angle:g}$ rad")
    if isinstance(shift, (int, float)):
        words.append("no shift" if shift == 0 else f"score shift {shift:g}")
    chosen = p.get("chosen_to_match_paper")
    return ", ".join(words) + ("; chosen to match the paper's column" if chosen else "")


def figure2(out: Path) -> list[Path]:
    """``figure2.{png,pdf,svg}``: gap against mass across offsets, and flip rate against mass."""
    plt = pyplot()
    out = Path(out)
    t = read_table(out / "table2.json")
    m, ms = _col(t, "boundary_mass"), _col(t, "boundary_mass_stderr")
    tau = t.meta.get("design", {}).get("tau", "")
    fig, ax = plt.subplots(1, 2, figsize=(11.0, 4.8))
    for a, col, ylabel in ((ax[0], "risk_gap", f"risk gap {GAP}"), (ax[1], "flip_rate", "flip rate")):
        y = _col(t, col)
        a.errorbar(m, y, xerr=ms, yerr=_col(t, f"{col}_stderr"), fmt="o", color="C0", ms=5, label="Monte Carlo")
        if f"{col}_exact" in t.columns:
            a.plot(_col(t, "boundary_mass_exact"), _col(t, f"{col}_exact"), "-", color="C1", alpha=0.7, label="exact")
        _paper(a, _col_or_nan(t, "boundary_mass_paper"), _col_or_nan(t, f"{col}_paper"))
        _label_points(a, m, y, [rf"$o = {o:g}$" for o in _col(t, "offset")])
        a.set(xlabel=f"boundary mass {MASS}", ylabel=ylabel)
        a.margins(x=0.1, y=0.12)
        a.legend(loc="upper left", fontsize=8, frameon=False)
    ax[0].set_title(rf"(a) gap against mass across offsets $o$, $\tau = {tau}$", fontsize=11)
    shown = _perturbation_title(t.meta.get("perturbation", {}))
    ax[1].set_title("(b) flip rate under one fixed perturbation" + (f"\n({shown})" if shown else ""), fontsize=11)
    fig.tight_layout()
    return [savefig(fig, out / "figure2.png")]
