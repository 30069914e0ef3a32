r"""Figures 1 and 2 (§7.1, §7.2), rendered from the written tables alone.

Figure 1: (a) :math:`\beta(2\tau)` and :math:`L_\tau - L_0` against τ on log–log axes, Monte Carlo with
error bars, the exact curves, the first-order line :math:`G_1\tau` and a slope-1 reference; (b) the gap
against the mass; (c) when ``table1_limit`` exists, the τ → 0 limits :math:`(L_\tau - L_0)/\tau \to G_1`
and :math:`\beta(w)/2w \to \psi(0)` from the conditional estimator and the exact values. Figure 2: the gap
and the flip rate against the mass across offsets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results.io import read_table
from .figures import legend_outside, log_axis, pyplot, savefig

__all__ = ["figure1", "figure1_multi", "figure2"]

MASS, GAP = r"$\beta(2\tau)$", r"$L_\tau - L_0$"


def _col(t, c):
    return np.asarray(t.column(c), dtype=float)


def _slope(slopes: dict, c: str) -> str:
    s, se = slopes.get(c, float("nan")), slopes.get(f"{c}_stderr", float("nan"))
    return f"slope {s:.3f} ± {se:.3f}" if np.isfinite(s) else "no slope"


def figure1(out: Path) -> list[Path]:
    """``figure1.{png,pdf,svg}``: panels (a)–(c) of the module docstring."""
    plt = pyplot()
    out = Path(out)
    t = read_table(out / "table1.json")
    tau, m, g = _col(t, "tau"), _col(t, "boundary_mass"), _col(t, "risk_gap")
    ms, gs = _col(t, "boundary_mass_stderr"), _col(t, "risk_gap_stderr")
    slopes = t.meta.get("slopes", {})
    limit = out / "table1_limit.json"
    ncols = 3 if limit.exists() else 2
    fig, ax = plt.subplots(1, ncols, figsize=(4.6 * ncols + (1.6 if limit.exists() else 0), 4.8))

    a = ax[0]
    a.errorbar(tau, m, yerr=ms, fmt="o", color="C0", ms=5, label=f"{MASS} (MC), {_slope(slopes, 'boundary_mass')}")
    a.plot(tau, _col(t, "boundary_mass_exact"), "-", color="C0", alpha=0.6, label=f"{MASS} exact (3.11)")
    a.errorbar(tau, g, yerr=gs, fmt="s", color="C1", ms=5, label=f"{GAP} (MC), {_slope(slopes, 'risk_gap')}")
    a.plot(tau, _col(t, "risk_gap_exact"), "-", color="C1", alpha=0.6, label=f"{GAP} exact")
    a.plot(tau, _col(t, "risk_gap_first_order"), ":", color="C1", label=r"$G_1\tau$ (first order)")
    ref = np.array([tau.min(), tau.max()])
    a.plot(ref, g.min() / 4 * ref / ref[0], "--", color="0.5", lw=1, label="slope 1 (reference)")
    a.set(xscale="log", yscale="log", xlabel=r"temperature $\tau$", ylabel=f"{MASS}, {GAP}",
          title="(a) mass and gap against τ")
    log_axis(a.xaxis, tau)
    a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=7, frameon=False)

    b = ax[1]
    b.errorbar(m, g, xerr=ms, yerr=gs, fmt="o", color="C2", ms=5, label="Monte Carlo")
    b.plot(_col(t, "boundary_mass_exact"), _col(t, "risk_gap_exact"), "-", color="C2", alpha=0.6, label="exact")
    for x, y, tv in zip(m, g, tau):
        b.annotate(rf"$\tau = {tv:g}$", (x, y), fontsize=7, xytext=(6, -10), textcoords="offset points")
    b.set(xlabel=f"boundary mass {MASS}", ylabel=f"risk gap {GAP}", title="(b) gap against mass")
    b.margins(x=0.1, y=0.08)
    b.legend(loc="upper left", fontsize=7, frameon=False)

    if limit.exists():
        lt = read_table(limit)
        lx = _col(lt, "tau")
        c = ax[2]
        c.errorbar(lx, _col(lt, "gap_over_tau"), yerr=_col(lt, "gap_over_tau_stderr"), fmt="o", color="C1", ms=5,
                   label=r"$(L_\tau - L_0)/\tau$ (conditional)")
        c.plot(lx, _col(lt, "gap_over_tau_exact"), "-", color="C1", alpha=0.6, label=r"$(L_\tau - L_0)/\tau$ exact")
        c.axhline(lt.meta.get("G1", np.nan), ls=":", color="C1", label=rf"$G_1 = {lt.meta.get('G1', np.nan):.4f}$")
        c.errorbar(lx, _col(lt, "mass_over_2w"), yerr=_col(lt, "mass_over_2w_stderr"), fmt="s", color="C0", ms=5,
                   label=r"$\beta(w)/2w$ (conditional)")
        c.plot(lx, _col(lt, "mass_over_2w_exact"), "-", color="C0", alpha=0.6, label=r"$\beta(w)/2w$ exact")
        c.axhline(lt.meta.get("psi0", np.nan), ls="--", color="C0",
                  label=rf"$\psi(0) = {lt.meta.get('psi0', np.nan):.4f}$")
        c.set(xscale="log", xlabel=r"temperature $\tau$ ($w = 2\tau$)", ylabel="ratio",
              title=r"(c) limits as $\tau \to 0$")
        log_axis(c.xaxis, lx)
        c.margins(y=0.15)
        legend_outside(c)
    fig.tight_layout()
    return [savefig(fig, out / "figure1.png")]


def figure1_multi(out: Path) -> list[Path]:
    """``figure1_multi.{png,pdf,svg}``: the K-expert version of figure 1 (a) (mass exact via orthants, gap)."""
    plt = pyplot()
    out = Path(out)
    t = read_table(out / "table1_multi.json")
    tau = _col(t, "tau")
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    ax.errorbar(tau, _col(t, "boundary_mass"), yerr=_col(t, "boundary_mass_stderr"), fmt="o", color="C0", ms=5,
                label=f"{MASS} (MC)")
    ax.plot(tau, _col(t, "boundary_mass_exact"), "-", color="C0", alpha=0.6, label=f"{MASS} exact (orthants)")
    ax.errorbar(tau, _col(t, "risk_gap"), yerr=_col(t, "risk_gap_stderr"), fmt="s", color="C1", ms=5,
                label=f"{GAP} (MC)")
    ref = np.array([tau.min(), tau.max()])
    ax.plot(ref, _col(t, "risk_gap").min() / 4 * ref / ref[0], "--", color="0.5", lw=1, label="slope 1 (reference)")
    K = t.meta.get("design", {}).get("K", "?")
    ax.set(xscale="log", yscale="log", xlabel=r"temperature $\tau$", ylabel=f"{MASS}, {GAP}",
           title=f"K = {K} experts, linear router")
    log_axis(ax.xaxis, tau)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=7, frameon=False)
    fig.tight_layout()
    return [savefig(fig, out / "figure1_multi.png")]


def figure2(out: Path) -> list[Path]:
    """``figure2.{png,pdf,svg}``: gap against mass across offsets, and flip rate against mass."""
    plt = pyplot()
    out = Path(out)
    t = read_table(out / "table2.json")
    m, ms = _col(t, "boundary_mass"), _col(t, "boundary_mass_stderr")
    tau = t.meta.get("design", {}).get("tau", "")
    fig, ax = plt.subplots(1, 2, figsize=(10.0, 4.2))
    for a, col, ylabel in ((ax[0], "risk_gap", f"risk gap {GAP}"), (ax[1], "flip_rate", "flip rate")):
        y = _col(t, col)
        a.errorbar(m, y, xerr=ms, yerr=_col(t, f"{col}_stderr"), fmt="o", color="C0", ms=5, label="Monte Carlo")
        if f"{col}_exact" in t.columns:
            a.plot(_col(t, "boundary_mass_exact"), _col(t, f"{col}_exact"), "-", color="C1", alpha=0.7, label="exact")
        for o, x, yy in zip(_col(t, "offset"), m, y):
            a.annotate(rf"$o = {o:g}$", (x, yy), fontsize=7, xytext=(7, -10), textcoords="offset points")
        a.set(xlabel=f"boundary mass {MASS}", ylabel=ylabel)
        a.margins(x=0.12, y=0.12)
        a.legend(loc="lower right", fontsize=8, frameon=False)
    ax[0].set_title(rf"(a) gap against mass across offsets $o$, $\tau = {tau}$")
    p = t.meta.get("perturbation", {})
    shown = ", ".join(f"{k} {v}" for k, v in p.items() if isinstance(v, (int, float))) if isinstance(p, dict) else ""
    ax[1].set_title("(b) flip rate under one fixed perturbation" + (f"\n({shown})" if shown else ""), fontsize=10)
    fig.tight_layout()
    return [savefig(fig, out / "figure2.png")]
