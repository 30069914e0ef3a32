"""Figures of ``softhard inspect``, rendered from the written files alone.

``layerNN.png`` (one per MoE layer, from ``summary.json``), three panels: the histogram near 0 of the decision
margin m (the layer's routing rule) and of the raw-logit margin a(k) − a(k+1) as densities, over the range
[0, cut] with the cut marked and the share of tokens beyond it written (the histogram does not end inside the
data unannounced), with the kernel estimate of the density of m at 0; the boundary-mass curves β(w) of both
margins (log–log, ±1 standard error band) with the line ``w · f_m(0⁺)``; the relative change of the block output
and of the final output at each temperature τ against β(2τ).

``compare.png`` (from ``compare_summary.json``): per MoE layer, how β(w) at the tie widths, the density of m at 0
(±1 standard error) and the expert-load entropy move across checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .figures import pyplot, savefig

__all__ = ["render_inspection", "layer_figure", "compare_figure"]


def _f(v) -> float:
    try:
        return float(v)  # "nan" is stored as a string
    except (TypeError, ValueError):
        return float("nan")


def layer_figure(lay: dict, path: Path) -> Path:
    """Draw the three panels of one layer (a ``summary.json`` entry) into ``path``."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    k = lay["top_k"]
    title = (f"layer {lay['layer']} ({lay['module']}), K={lay['experts']}, k={k}, n={lay['tokens']}\n"
             f"rule: {lay.get('rule', '')}")
    space = lay.get("margin_space", "logits")
    curves = (("hist", "beta", f"decision margin m ({space})", "C0"),
              ("hist_logit", "beta_logit", f"logit margin a({k}) − a({k + 1})", "C1"))
    same = space == "logits" and lay.get("selection") == "topk"
    for hkey, _, label, color in curves:
        if same and hkey == "hist_logit":
            continue  # identical to m for top-k of the logits
        h = lay.get(hkey) or {}
        e, dens = np.asarray(h.get("edges", []), dtype=float), np.asarray(h.get("density", []), dtype=float)
        if e.size < 2:
            continue
        ax[0].stairs(dens, e, label=label, color=color, alpha=0.8)
        cut, beyond = _f(h.get("cut")), _f(h.get("beyond"))
        if np.isfinite(cut) and beyond > 0:
            ax[0].axvline(cut, color=color, ls="--", lw=0.8)
            ax[0].annotate(f"cut: {beyond:.0%} beyond", (cut, 0.95), xycoords=("data", "axes fraction"), fontsize=7,
                           ha="right", va="top", color=color, rotation=90)
    d0, d0_se = _f(lay["density0"]["value"]), _f(lay["density0"]["stderr"])
    if np.isfinite(d0):
        ax[0].errorbar([0], [d0], yerr=[d0_se], fmt="o", color="C0", label="density of m at 0 (kernel)")
    if lay.get("selection") == "hash":
        ax[0].text(0.5, 0.5, "hash routing: no score change\nalters the selection (m = ∞)", ha="center",
                   transform=ax[0].transAxes)
    ax[0].set(xlabel="margin", ylabel="density (share per unit)", title="margins near 0")
    if ax[0].get_legend_handles_labels()[0]:
        ax[0].legend(fontsize=7)

    w = np.asarray(lay["widths"])
    for _, bkey, label, color in curves:
        if same and bkey == "beta_logit":
            continue
        v = np.asarray(lay[bkey]["value"], dtype=float)
        s = np.asarray(lay[bkey]["stderr"], dtype=float)
        pos = v > 0
        if pos.any():
            ax[1].plot(w[pos], v[pos], "-", color=color, label=f"β(w) of the {label.split(' (')[0]}")
            ax[1].fill_between(w[pos], np.maximum(v[pos] - s[pos], v[pos] / 3), v[pos] + s[pos], color=color,
                               alpha=0.2)
    if np.isfinite(d0) and d0 > 0:
        ax[1].plot(w, np.minimum(1.0, w * d0), ":", color="k", label="w · f_m(0⁺)")
    ax[1].set(xscale="log", yscale="log", xlabel="width w", ylabel="boundary mass",
              title="β(w) = share with margin ≤ w")
    if ax[1].get_legend_handles_labels()[0]:
        ax[1].legend(fontsize=7)

    rows = [r for r in lay["sensitivity"] if r["tau"] != "dense" and r.get("available", True)]
    if rows:
        m = np.array([_f(r["beta_2tau"]["value"]) for r in rows])
        for part, marker, color in (("block", "o", "C2"), ("final", "s", "C3")):
            y = np.array([_f(r[part]["value"]) for r in rows])
            s = np.array([_f(r[part]["stderr"]) for r in rows])
            ax[2].errorbar(m, y, yerr=s, fmt=marker, color=color, label=f"{part} output")
            for mi, yi, r in zip(m, y, rows):
                ax[2].annotate(f"τ={r['tau']:g}", (mi, yi), fontsize=7, textcoords="offset points", xytext=(3, 3))
        dense = [r for r in lay["sensitivity"] if r["tau"] == "dense"]
        if dense and dense[0]["block"]["n"]:
            ax[2].axhline(_f(dense[0]["block"]["value"]), color="C2", ls="--", lw=0.8, label="block, dense")
    xlab = "β(2τ)" if space == "logits" else "β(2τ) of the logit margin (τ divides the logits)"
    ax[2].set(xlabel=xlab, ylabel="relative change vs shipped", title="sensitivity to τ")
    if ax[2].get_legend_handles_labels()[0]:
        ax[2].legend(fontsize=8)
    else:
        ax[2].text(0.5, 0.5, "not run for this layer", ha="center", transform=ax[2].transAxes)
    fig.suptitle(title, fontsize=9, y=1.06)
    return savefig(fig, path)


def render_inspection(out) -> list[Path]:
    """Render ``layerNN.png`` for every layer of ``out/summary.json``; returns the paths."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return [layer_figure(lay, out / f"layer{lay['layer']:02d}.png") for lay in summary["layers"]]


def compare_figure(out) -> Path:
    """Draw ``out/compare.png`` from ``out/compare_summary.json`` (module docstring); returns its path."""
    out = Path(out)
    data = json.loads((out / "compare_summary.json").read_text(encoding="utf-8"))
    rows, labels = data["rows"], data["meta"]["checkpoints"]
    layers = sorted({r["layer"] for r in rows})
    ties = sorted({k for r in rows for k in r if k.startswith("tie_w") and not k.endswith("_stderr")})
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    x = np.arange(len(labels))
    for j, layer in enumerate(layers):
        rs = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["order"])
        color = f"C{j % 10}"
        for t, ls in zip(ties, ("-", "--", ":")):
            y = [_f(r[t]) for r in rs]
            s = [_f(r[t + "_stderr"]) for r in rs]
            ax[0].errorbar(x, y, yerr=s, ls=ls, color=color, marker="o", ms=3,
                           label=f"layer {layer}, w={t[5:]}" if len(layers) <= 6 else None)
        ax[1].errorbar(x, [_f(r["density0"]) for r in rs], yerr=[_f(r["density0_stderr"]) for r in rs],
                       color=color, marker="o", ms=3, label=f"layer {layer}" if len(layers) <= 10 else None)
        ax[2].plot(x, [_f(r["load_entropy"]) for r in rs], color=color, marker="o", ms=3)
    for a, ttl, yl in ((ax[0], "β(w) = share of tokens with m ≤ w", "β(w)"),
                       (ax[1], "density of m at 0", "f_m(0⁺)"), (ax[2], "expert load entropy / log K", "entropy")):
        a.set_xticks(x, labels, rotation=20, fontsize=7)
        a.set(title=ttl, ylabel=yl)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=6)
    fig.suptitle("checkpoints side by side", fontsize=10)
    return savefig(fig, out / "compare.png")
