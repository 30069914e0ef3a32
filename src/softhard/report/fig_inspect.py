"""Per-layer figures of ``softhard inspect``, rendered from ``summary.json`` alone.

``layerNN.png`` (one per MoE layer), three panels: the histogram of the margins Δ and
``a_(k) − a_(k+1)`` near 0 (density) with the kernel estimate of the density at 0; the boundary-mass
curves β(w) and β_k(w) (log–log, ±1 standard error band) with the line ``w · f_Δ(0⁺)``; the relative
change of the block output and of the final output at each temperature τ against β(2τ).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .figures import pyplot, savefig

__all__ = ["render_inspection", "layer_figure"]



def layer_figure(lay: dict, path: Path) -> Path:
    """Draw the three panels of one layer (a ``summary.json`` entry) into ``path``."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    k = lay["top_k"]
    title = f"layer {lay['layer']} ({lay['module']}), K={lay['experts']}, k={k}, n={lay['tokens']}"
    for key, label, color in (("hist", "Δ = a(1) − a(2)", "C0"), ("hist_k", f"a({k}) − a({k + 1})", "C1")):
        if key == "hist_k" and k == 1:
            continue
        e, dens = np.asarray(lay[key]["edges"]), np.asarray(lay[key]["density"])
        ax[0].stairs(dens, e, label=label, color=color, alpha=0.8)
    d0, d0_se = float(lay["density0"]["value"]), float(lay["density0"]["stderr"])  # "nan" is stored as a string
    ax[0].errorbar([0], [d0], yerr=[d0_se], fmt="o", color="C0", label="density at 0 (kernel)")
    ax[0].set(xlabel="margin", ylabel="density", title="margins near 0")
    ax[0].legend(fontsize=8)

    w = np.asarray(lay["widths"])
    for key, label, color in (("beta", "β(w) = P(Δ ≤ w)", "C0"), ("beta_k", f"β_k(w), k={k}", "C1")):
        if key == "beta_k" and k == 1:
            continue
        v, s = np.asarray(lay[key]["value"], dtype=float), np.asarray(lay[key]["stderr"], dtype=float)
        pos = v > 0
        ax[1].plot(w[pos], v[pos], "-", color=color, label=label)
        ax[1].fill_between(w[pos], np.maximum(v[pos] - s[pos], v[pos] / 3), v[pos] + s[pos], color=color, alpha=0.2)
    if np.isfinite(d0) and d0 > 0:
        ax[1].plot(w, np.minimum(1.0, w * d0), ":", color="k", label="w · f_Δ(0⁺)")
    ax[1].set(xscale="log", yscale="log", xlabel="width w", ylabel="boundary mass", title="β(w)")
    ax[1].legend(fontsize=8)

    rows = [r for r in lay["sensitivity"] if r["tau"] != "dense"]
    if rows:
        m = np.array([r["beta_2tau"]["value"] for r in rows], dtype=float)
        for part, marker, color in (("block", "o", "C2"), ("final", "s", "C3")):
            y = np.array([r[part]["value"] for r in rows], dtype=float)
            s = np.array([r[part]["stderr"] for r in rows], dtype=float)
            ax[2].errorbar(m, y, yerr=s, fmt=marker, color=color, label=f"{part} output")
            for mi, yi, r in zip(m, y, rows):
                ax[2].annotate(f"τ={r['tau']:g}", (mi, yi), fontsize=7, textcoords="offset points", xytext=(3, 3))
        dense = [r for r in lay["sensitivity"] if r["tau"] == "dense"]
        if dense and dense[0]["block"]["n"]:
            ax[2].axhline(float(dense[0]["block"]["value"]), color="C2", ls="--", lw=0.8, label="block, dense")
    ax[2].set(xlabel="β(2τ)", ylabel="relative change vs shipped", title="sensitivity to τ")
    if ax[2].get_legend_handles_labels()[0]:
        ax[2].legend(fontsize=8)
    else:
        ax[2].text(0.5, 0.5, "not run for this layer", ha="center", transform=ax[2].transAxes)
    fig.suptitle(title, fontsize=10)
    return savefig(fig, path)


def render_inspection(out) -> list[Path]:
    """Render ``layerNN.png`` for every layer of ``out/summary.json``; returns the paths."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return [layer_figure(lay, out / f"layer{lay['layer']:02d}.png") for lay in summary["layers"]]
