"""The hardening curve of ``softhard inspect --harden``, rendered from ``hardening.json`` alone.

``hardening.png``, two panels: (left) ``|L_τ − L_0|`` against τ on log axes, measured (all layers: ± one
standard error; each layer alone: small markers) beside the first-order prediction ``G₁τ`` (line, with its
standard-error band, and per layer dashed), and a slope-1 reference; filled markers are positive
differences, open ones negative; grey: fewer than ``min_effective`` effective sequences carry the
measurement (a handful of heavy-tailed terms; its standard error is not to be trusted). (right) ``(L_τ − L_0)/τ`` against τ with ``G₁`` ± its standard error: the
measurement should settle on the band as τ → 0.

:func:`hardening_section` gives the HTML of the report section (table, per-layer constants, figure).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from .figures import pyplot, savefig

__all__ = ["figure_hardening", "hardening_section"]


def _f(v) -> float:
    try:
        return float(v)  # non-finite values are stored as strings "nan", "inf"
    except (TypeError, ValueError):
        return float("nan")


def figure_hardening(out) -> list[Path]:
    """Draw ``out/hardening.png`` from ``out/hardening.json``; returns ``[path]``."""
    out = Path(out)
    d = json.loads((out / "hardening.json").read_text(encoding="utf-8"))
    rows, meta = d["rows"], d["meta"]
    layers = [lay["layer"] for lay in
              json.loads((out / "hardening_layers.json").read_text(encoding="utf-8"))["rows"]]
    tau = np.array([_f(r["tau"]) for r in rows])
    gap = np.array([_f(r["gap"]) for r in rows])
    se = np.array([_f(r["gap_stderr"]) for r in rows])
    g1, g1_se = _f(meta["G1"]), _f(meta["G1_stderr"])
    few = np.array([_f(r.get("effective_sequences")) < _f(meta.get("min_effective", 0)) for r in rows])
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.5))
    grid = np.geomspace(tau.min(), tau.max(), 100)
    for sign, fill in ((1, "C0"), (-1, "none")):
        sel = (np.sign(gap) == sign) & ~few
        if sel.any():
            ax[0].errorbar(tau[sel], np.abs(gap[sel]), yerr=se[sel], fmt="o", color="C0", mfc=fill,
                           label=f"measured, all layers ({'+' if sign > 0 else '−'})")
    if few.any():
        ax[0].errorbar(tau[few], np.abs(gap[few]), yerr=se[few], fmt="o", color="0.6", mfc="none",
                       label=f"measured, < {int(_f(meta['min_effective']))} effective sequences")
    if np.isfinite(g1) and g1 != 0:
        ax[0].plot(grid, abs(g1) * grid, "-", color="k", label=f"predicted |G₁|τ, G₁ = {g1:.3g} ± {g1_se:.1g}")
        ax[0].fill_between(grid, np.maximum(abs(g1) - g1_se, abs(g1) / 10) * grid, (abs(g1) + g1_se) * grid,
                           color="k", alpha=0.12)
    for c, i in enumerate(layers):
        y = np.array([_f(r.get(f"layer{i}_gap")) for r in rows])
        p = _f(rows[0].get(f"layer{i}_predicted")) / tau[0]
        color = f"C{c + 1}"
        ax[0].plot(tau, np.abs(y), ".", color=color, label=f"layer {i} alone")
        if np.isfinite(p) and p != 0:
            ax[0].plot(grid, abs(p) * grid, "--", color=color, lw=0.8)
    pos = np.abs(gap[np.isfinite(gap) & (gap != 0)])
    if pos.size:
        ref = np.exp(np.mean(np.log(pos))) / np.exp(np.mean(np.log(tau[np.isfinite(gap) & (gap != 0)])))
        ax[0].plot(grid, ref * grid, ":", color="0.5", label="slope 1")
    ax[0].set(xscale="log", yscale="log", xlabel="router temperature τ", ylabel="|L_τ − L_0| (nats per token)",
              title="loss of softer routing relative to hard top-1")
    ax[0].legend(fontsize=7)
    ax[1].errorbar(tau[~few], (gap / tau)[~few], yerr=(se / tau)[~few], fmt="o", color="C0",
                   label="measured (L_τ − L_0)/τ")
    if few.any():
        ax[1].errorbar(tau[few], (gap / tau)[few], yerr=(se / tau)[few], fmt="o", color="0.6", mfc="none",
                       label="measured, too few effective sequences")
    if np.isfinite(g1):
        ax[1].axhline(g1, color="k", label="G₁ (first-order prediction)")
        ax[1].axhspan(g1 - g1_se, g1 + g1_se, color="k", alpha=0.12)
    ax[1].set(xscale="log", xlabel="router temperature τ", ylabel="(L_τ − L_0)/τ", title="convergence to G₁")
    ax[1].legend(fontsize=8)
    fig.suptitle(f"hardening {meta.get('model', meta.get('model_class', ''))}: {meta['tokens']} tokens", fontsize=10)
    return [savefig(fig, out / "hardening.png")]


def _pm(row: dict, key: str) -> str:
    v, s = _f(row.get(key)), _f(row.get(f"{key}_stderr"))
    return f"{v:.4g}" if not np.isfinite(s) else f"{v:.4g} ± {s:.2g}"


def hardening_section(out, table) -> list[str]:
    """HTML parts of the report's hardening section (empty when ``out/hardening.json`` is absent); ``table``
    renders ``(header, rows)`` as an HTML table."""
    out = Path(out)
    if not (out / "hardening.json").is_file():
        return []
    d = json.loads((out / "hardening.json").read_text(encoding="utf-8"))
    lays = json.loads((out / "hardening_layers.json").read_text(encoding="utf-8"))["rows"]
    rows, meta = d["rows"], d["meta"]
    ids = [lay["layer"] for lay in lays]
    head = ["τ", "rows near a tie", "effective sequences", "L_τ − L_0 (measured)", "G₁τ (predicted)",
            "measured / predicted", "margin-profile prediction", "L_τ − L_1"] + \
        [f"layer {i}: measured | predicted" for i in ids] + ["all − Σ layers"]
    body = [[r["tau"], r.get("near_tie_rows"), f"{_f(r.get('effective_sequences')):.0f}", _pm(r, "gap"),
             _pm(r, "predicted"), f"{_f(r['ratio']):.3g}", _pm(r, "predicted_profile"), _pm(r, "change_vs_shipped")]
            + [f"{_pm(r, f'layer{i}_gap')} | {_f(r[f'layer{i}_predicted']):.3g}" for i in ids]
            + [_pm(r, "interaction")] for r in rows]
    parts = [
        "<h2>Hardening: the model's loss as routing is made harder</h2>",
        "<p>Every MoE layer keeps its own top-k selection and weights it by its rule at logits/τ; τ = 1 is the "
        "model as shipped, τ → 0 hard top-1 routing (L<sub>0</sub>). Measured: the mean per-token loss change, "
        "paired per token (± standard error over tokens). Predicted: the first-order law L<sub>τ</sub> − "
        "L<sub>0</sub> = G<sub>1</sub>τ with G<sub>1</sub> = Σ<sub>ℓ</sub> (density of the margin at 0) × "
        "(mean tie contrast), from each layer's near-tie tokens; 'layer ℓ' runs that layer at τ and the others "
        "hard. Rows near a tie: router rows with Δ ≤ 5τ. Effective sequences: (Σ|s|)²/Σs² over the sequences' "
        f"summed loss changes s; below {meta.get('min_effective', '?')} the mean rests on a handful of heavy-tailed "
        "terms and its standard error is not to be trusted (docs/hardening.md).</p>",
        f"<p>Shipped loss {_f(meta['shipped_loss']):.4f}, hard loss {_f(meta['hard_loss']):.4f} "
        f"(L<sub>0</sub> − L<sub>1</sub> = {_pm(meta, 'hard_minus_shipped')}); G<sub>1</sub> = "
        f"{_pm(meta, 'G1')}. <b>{html.escape(str(meta.get('verdict', '')))}</b>.</p>",
        table(head, body),
        "<h3>Per-layer first-order constants</h3>",
        table(["layer", "module", "bandwidth h", "tokens within h", "contrasted", "f_Δ(0⁺)", "mean tie contrast",
               "G₁ of the layer"],
              [[lay["layer"], lay["module"], lay["bandwidth"], lay["near_tie"], lay["contrasted"],
                _pm(lay, "density0"), lay["mean_contrast"], _pm(lay, "G1")] for lay in lays]),
    ]
    png = out / "hardening.png"
    if png.is_file():
        b64 = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<img alt="hardening curve" src="data:image/png;base64,{b64}">')
    return parts
