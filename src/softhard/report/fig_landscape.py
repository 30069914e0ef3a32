"""Landscape figures (``softhard landscape``), rendered from the written tables alone (PNG, PDF, SVG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results.io import read_table
from .figures import legend_outside, log_axis, pyplot, savefig

__all__ = ["figure_landscape"]

_COLORS = {"minimum": "C0", "strict saddle": "C3", "degenerate": "C7"}



def _col(t, c):
    return np.asarray(t.column(c), dtype=float)


def figure_landscape(out: Path) -> list[Path]:
    """``landscape_recovery.png`` (recovery error and misrouted mass of the minimiser against τ; uniform
    soft–hard gap against τ with its fitted exponent) and ``landscape_spectra.png`` (Hessian spectra of the
    critical points, one column per point, coloured by kind)."""
    plt = pyplot()
    out = Path(out)
    minima, gamma = read_table(out / "landscape_minima.json"), read_table(out / "landscape_gamma.json")
    spectra, main = read_table(out / "landscape_spectra.json"), read_table(out / "landscape.json")
    name = main.meta.get("problem", "")

    fig, ax = plt.subplots(1, 2, figsize=(11.0, 4.2))
    tau = _col(minima, "tau")
    ax[0].plot(tau, _col(minima, "expert_error"), "o-",
               label=f"expert error, slope {main.meta.get('recovery_slope', float('nan')):.2f}")
    ax[0].plot(tau, _col(minima, "misrouted_mass"), "s--", label="misrouted mass")
    ax[0].set(xscale="log", yscale="log", xlabel=r"temperature $\tau$", ylabel="error against the teacher",
              title=rf"(a) {name}: minimiser of $L_\tau$ against the teacher")
    log_axis(ax[0].xaxis, tau)
    ax[0].legend(loc="upper left", fontsize=8, frameon=False)
    gt, sup, se = _col(gamma, "tau"), _col(gamma, "sup_gap"), _col(gamma, "sup_gap_stderr")
    alpha = gamma.meta.get("alpha", float("nan"))
    ax[1].errorbar(gt, sup, yerr=se, fmt="o", label=rf"$\sup_F |L_\tau - L_0|$, fitted $\alpha = {alpha:.3f}$")
    ax[1].plot(gt, sup[0] * (gt / gt[0]) ** alpha, "-", alpha=0.6, label=r"fit $\propto \tau^\alpha$")
    ax[1].plot(gt, sup[0] * gt / gt[0] / 2, ":", color="k", label="slope 1 (Cor. 4.4), shifted down")
    ax[1].set(xscale="log", yscale="log", xlabel=r"temperature $\tau$", ylabel=r"$\sup_F |L_\tau - L_0|$",
              title="(b) uniform gap over a compact family")
    log_axis(ax[1].xaxis, gt)
    ax[1].legend(loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout()
    paths = [savefig(fig, out / "landscape_recovery.png")]

    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(main.rows) + 3.5), 4.2))
    labels = []
    for i, row in enumerate(main.rows):
        eig = [r["eigenvalue"] for r in spectra.rows if r["tau"] == row["tau"] and r["point"] == row["point"]]
        ax.scatter(np.full(len(eig), i), eig, s=14, color=_COLORS.get(row["kind"], "k"),
                   marker="o" if row["teacher_equivalent"] else "x")
        labels.append(f"$\\tau$ = {row['tau']:g}\npoint {row['point']}")
    for kind, c in _COLORS.items():
        ax.scatter([], [], color=c, label=kind)
    ax.scatter([], [], color="k", marker="x", label="not teacher-equivalent")
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set(ylabel="Hessian eigenvalue (symmetries removed)", title=rf"{name}: critical points of $L_\tau$")
    legend_outside(ax)
    fig.tight_layout()
    paths.append(savefig(fig, out / "landscape_spectra.png"))
    return paths
