"""Figure 3 (§7.3) and the symmetry-breaking phase diagram [beyond], rendered from the written tables alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..results.io import read_table
from .figures import pyplot, savefig

__all__ = ["figure3"]

_PHASES = (("table3_phase_contrast", "student_contrast", "student contrast ε (δ = εc)"),
           ("table3_phase_anisotropy", "anisotropy", "anisotropy a of Σ"))



def _col(t, c) -> np.ndarray:
    return np.asarray([math.nan if v is None else v for v in t.column(c)], dtype=float)


def _num(v) -> float:
    return math.nan if v is None else float(v)


def figure3(out: Path) -> list[Path]:
    """``figure3.png`` (alignment deficit, log axis, and objective against step, one curve per τ) and, when the
    phase tables exist, ``figure3_phase.png``."""
    out = Path(out)
    plt = pyplot()
    t = read_table(out / "table3_trajectory.json")
    tau, step = _col(t, "tau"), _col(t, "step")
    deficit, risk = _col(t, "alignment_deficit"), _col(t, "risk")
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for i, tv in enumerate(np.unique(tau)):
        k = tau == tv
        ax[0].plot(step[k] + 1, np.maximum(deficit[k], 1e-16), color=f"C{i}", label=f"τ = {tv:g}")
        ax[1].plot(step[k] + 1, risk[k], color=f"C{i}", label=f"τ = {tv:g}")
    ax[0].set(yscale="log", ylabel=r"$1 - |\cos(\theta_t, u)|$", title="(a) alignment deficit")
    ax[1].set(ylabel=r"training objective $L_\tau(\theta_t)$", title="(b) objective on the training sample")
    for a in ax:
        a.set(xscale="log", xlabel="step + 1")
        a.legend(fontsize=9, frameon=False)
    fig.tight_layout()
    paths = [savefig(fig, out / "figure3.png")]
    if all((out / f"{name}.json").exists() for name, _, _ in _PHASES):
        paths.append(_phase_figure(out, plt))
    return paths


def _phase_figure(out: Path, plt) -> Path:
    fig, ax = plt.subplots(2, 2, figsize=(13, 9.5))
    ax = ax.ravel()
    for j, (name, key, label) in enumerate(_PHASES):
        p = read_table(out / f"{name}.json")
        taus, vals = sorted(set(_col(p, "tau"))), sorted(set(_col(p, key)))
        grid = np.full((len(taus), len(vals)), np.nan)
        labels = {}
        # the reduced model (6.7) has no student contrast ε: its steps are shown at fixed ε only (anisotropy grid)
        both = key == "anisotropy"
        for row in p.rows:
            i, k = taus.index(float(row["tau"])), vals.index(float(row[key]))
            meas, pred = _num(row["steps_to_align"]), _num(row["steps_predicted"])
            grid[i, k] = meas
            shown = (meas, pred) if both else (meas,)
            labels[i, k] = "\n".join("×–"[m] if math.isnan(v) else f"{v:.0f}" for m, v in enumerate(shown))
        im = ax[j].imshow(np.log10(grid), origin="lower", aspect="auto", cmap="viridis")
        for (i, k), text in labels.items():
            dark = math.isnan(grid[i, k]) or im.norm(math.log10(grid[i, k])) > 0.6
            ax[j].text(k, i, text, ha="center", va="center", fontsize=7, color="k" if dark else "w")
        ax[j].set_xticks(range(len(vals)), [f"{v:g}" for v in vals])
        ax[j].set_yticks(range(len(taus)), [f"{v:g}" for v in taus])
        ax[j].set(xlabel=label, ylabel="τ", title=("(b) steps to align: measured (top) / reduced model (6.7)"
                                                  if both else "(a) steps to align, measured (the reduced model "
                                                               "has no ε)"))
        fig.colorbar(im, ax=ax[j], label="log₁₀ measured steps (blank cell, ×: not aligned within the run)")
        if both:  # ρ (6.11) does not depend on ε, the measured rate does: compare them at one ε only
            rm, rp, a_col, t_col = (_col(p, "rate_measured"), _col(p, "rate_predicted"), _col(p, key),
                                    _col(p, "tau"))
            ok = np.isfinite(rm) & (rm > 0) & np.isfinite(rp)
            markers = "osD^v<>p*h"
            for i, tv in enumerate(taus):  # colour: τ; marker: anisotropy a
                for m, av in enumerate(vals):
                    k = ok & (t_col == tv) & (a_col == av)
                    if k.any():
                        ax[2].scatter(rp[k], rm[k], s=30, color=f"C{i}", marker=markers[m % len(markers)],
                                      edgecolor="k", linewidth=0.4)
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], ls="", marker="o", color=f"C{i}", label=f"τ = {tv:g}")
                       for i, tv in enumerate(taus)]
            handles += [Line2D([], [], ls="", marker=markers[m % len(markers)], color="0.6", markeredgecolor="k",
                               label=f"a = {av:g}") for m, av in enumerate(vals)]
            eps = _num(p.rows[0]["student_contrast"])
        if key == "student_contrast":
            eps, scaled, tau = _col(p, key), _col(p, "steps_scaled"), _col(p, "tau")
            for i, tv in enumerate(taus):
                k = (tau == tv) & np.isfinite(scaled)
                ax[3].plot(eps[k], scaled[k], "o-", color=f"C{i}", label=f"τ = {tv:g}")
    lo = min(ax[2].get_xlim()[0], ax[2].get_ylim()[0])
    hi = max(ax[2].get_xlim()[1], ax[2].get_ylim()[1])
    line = ax[2].plot([lo, hi], [lo, hi], "k:", lw=1, label="measured = predicted")[0]
    ax[2].set(xscale="log", yscale="log", xlabel="predicted rate ρ (6.11)",
              ylabel=r"measured rate $\log(\tan\angle_1/\tan\angle_T)/(T - 1)$",
              title=f"(c) alignment rate after the first step, ε = {eps:g}: below ρ")
    ax[2].legend(handles=[line, *handles], fontsize=8, ncol=2, frameon=True, framealpha=0.9, loc="upper left")
    ax[3].set(xscale="log", yscale="log", xlabel="student contrast ε", ylabel="steps to align × ηε/τ²",
              title="(d) scaling of router-only descent (first order in ε)")
    ax[3].legend(fontsize=8, frameon=False)
    fig.text(0.01, 0.005, "Heat-map cells: measured steps (× = not aligned within the run) / steps of the linearised "
                          "iteration (6.7) (– = never reaches the threshold). Beyond the paper.", fontsize=9)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return savefig(fig, out / "figure3_phase.png")
