"""Figures 1 and 2 (§7.1, §7.2), rendered from the written tables alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results.io import read_table
from .figures import pyplot, savefig

__all__ = ["figure1", "figure1_multi", "figure2"]



def _plain_log_ticks(axis, ticks):
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    axis.set_major_locator(FixedLocator(ticks))
    axis.set_ticklabels([f"{v:g}" for v in ticks])
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _col(t, c):
    return np.asarray(t.column(c), dtype=float)


def figure1(out: Path) -> list[Path]:
    """``figure1.png``: log–log mass and gap vs τ with fitted slopes, gap vs mass; plus the τ → 0 limits."""
    plt = pyplot()
    t = read_table(out / "table1.csv")
    tau, m, g = _col(t, "tau"), _col(t, "boundary_mass"), _col(t, "risk_gap")
    ms, gs = _col(t, "boundary_mass_stderr"), _col(t, "risk_gap_stderr")
    slopes = t.meta.get("slopes", {})
    limit = out / "table1_limit.csv"
    ncols = 3 if limit.exists() else 2
    fig, ax = plt.subplots(1, ncols, figsize=(4.6 * ncols, 4))
    ax[0].errorbar(tau, m, yerr=ms, fmt="o", label=f"β(2τ), slope {slopes.get('boundary_mass', float('nan')):.3f}")
    ax[0].errorbar(tau, g, yerr=gs, fmt="s", label=f"L_τ − L_0, slope {slopes.get('risk_gap', float('nan')):.3f}")
    ax[0].plot(tau, _col(t, "boundary_mass_exact"), "-", color="C0", alpha=0.6, label="exact")
    ax[0].plot(tau, _col(t, "risk_gap_exact"), "-", color="C1", alpha=0.6)
    ax[0].plot(tau, _col(t, "risk_gap_first_order"), ":", color="C1", label="G₁τ (first order)")
    ax[0].set(xscale="log", yscale="log", xlabel="τ", title="Boundary mass and risk gap")
    _plain_log_ticks(ax[0].xaxis, tau)
    ax[0].legend(fontsize=8)
    ax[1].errorbar(m, g, xerr=ms, yerr=gs, fmt="o-")
    ax[1].set(xlabel="boundary mass β(2τ)", ylabel="risk gap L_τ − L_0", title="Gap against mass")
    if limit.exists():
        lt = read_table(limit)
        lx = _col(lt, "tau")
        ax[2].errorbar(lx, _col(lt, "gap_over_tau"), yerr=_col(lt, "gap_over_tau_stderr"), fmt="o", label="gap/τ (MC)")
        ax[2].plot(lx, _col(lt, "gap_over_tau_exact"), "-", label="gap/τ (exact)")
        ax[2].axhline(lt.meta.get("G1", np.nan), ls=":", color="C1", label="G₁")
        ax[2].errorbar(lx, _col(lt, "mass_over_2w"), yerr=_col(lt, "mass_over_2w_stderr"), fmt="s",
                       label="β(w)/(2w) (MC)")
        ax[2].plot(lx, _col(lt, "mass_over_2w_exact"), "-", label="β(w)/(2w) (exact)")
        ax[2].axhline(lt.meta.get("psi0", np.nan), ls="--", color="C4", label="ψ(0)")
        ax[2].set(xscale="log", xlabel="τ", title="τ → 0 limits")
        ax[2].legend(fontsize=7)
    fig.tight_layout()
    return [savefig(fig, out / "figure1.png")]


def figure1_multi(out: Path) -> list[Path]:
    """``figure1_multi.png``: the K-expert version of figure 1 (mass exact via orthants, gap)."""
    plt = pyplot()
    t = read_table(out / "table1_multi.csv")
    tau = _col(t, "tau")
    fig, ax = plt.subplots(figsize=(4.8, 4))
    ax.errorbar(tau, _col(t, "boundary_mass"), yerr=_col(t, "boundary_mass_stderr"), fmt="o", label="β(2τ) (MC)")
    ax.plot(tau, _col(t, "boundary_mass_exact"), "-", color="C0", alpha=0.6, label="β(2τ) (exact, orthants)")
    ax.errorbar(tau, _col(t, "risk_gap"), yerr=_col(t, "risk_gap_stderr"), fmt="s", label="L_τ − L_0 (MC)")
    ax.set(xscale="log", yscale="log", xlabel="τ", title=f"K = {t.meta.get('design', {}).get('K', '?')} linear router")
    _plain_log_ticks(ax.xaxis, tau)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return [savefig(fig, out / "figure1_multi.png")]


def figure2(out: Path) -> list[Path]:
    """``figure2.png``: gap against mass across offsets, and flip rate against mass."""
    plt = pyplot()
    t = read_table(out / "table2.csv")
    m, ms = _col(t, "boundary_mass"), _col(t, "boundary_mass_stderr")
    fig, ax = plt.subplots(1, 2, figsize=(9.2, 4))
    ax[0].errorbar(m, _col(t, "risk_gap"), xerr=ms, yerr=_col(t, "risk_gap_stderr"), fmt="o-", label="Monte Carlo")
    ax[0].plot(_col(t, "boundary_mass_exact"), _col(t, "risk_gap_exact"), "x--", label="exact")
    for o, x, y in zip(_col(t, "offset"), m, _col(t, "risk_gap")):
        ax[0].annotate(f"o={o:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax[0].set(xlabel="boundary mass β(2τ)", ylabel="risk gap L_τ − L_0", title=f"Offsets, τ = {t.meta.get('design', {}).get('tau', '')}")
    ax[0].legend(fontsize=8)
    ax[1].errorbar(m, _col(t, "flip_rate"), xerr=ms, yerr=_col(t, "flip_rate_stderr"), fmt="o-", label="Monte Carlo")
    ax[1].plot(_col(t, "boundary_mass_exact"), _col(t, "flip_rate_exact"), "x--", label="exact")
    p = t.meta.get("perturbation", {})
    ax[1].set(xlabel="boundary mass β(2τ)", ylabel="flip rate",
              title=f"Flips: rotation {p.get('angle_rad', '?')} rad, shift {p.get('score_shift', '?')}")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    return [savefig(fig, out / "figure2.png")]
