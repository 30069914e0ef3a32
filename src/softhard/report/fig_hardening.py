"""The hardening curve of ``softhard inspect --harden``, rendered from ``hardening.json`` alone.

``hardening.png``, two panels. (left) the signed change ``L_τ − L_0`` against τ (log τ, symmetric-log values, so
a sign disagreement shows): measured (all layers, ± one per-sequence standard error; each layer alone: small
markers of the layer's colour), the first-order prediction ``G₁τ`` (black line and its band) and the whole-curve
prediction (orange, ± its standard error); grey: the measurement is not resolved (|value| within 2 standard
errors) or fewer than ``min_effective`` effective sequences carry it (a handful of heavy-tailed terms). (right)
measured / predicted for both predictions with their jackknife errors, and the issue's target bands (first order
×0.8–1.25 at τ = 0.02–0.1; whole curve ×0.75–1.33 at τ = 0.2–1).

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


def _col(rows, key):
    return np.array([_f(r.get(key)) for r in rows])


def figure_hardening(out) -> list[Path]:
    """Draw ``out/hardening.png`` from ``out/hardening.json``; returns ``[path]``."""
    out = Path(out)
    d = json.loads((out / "hardening.json").read_text(encoding="utf-8"))
    rows, meta = d["rows"], d["meta"]
    layers = [lay["layer"] for lay in
              json.loads((out / "hardening_layers.json").read_text(encoding="utf-8"))["rows"]]
    tau = _col(rows, "tau")
    gap = _col(rows, "gap")
    se = _col(rows, "gap_stderr_seq")
    se = np.where(np.isfinite(se), se, _col(rows, "gap_stderr"))
    g1, g1_se = _f(meta["G1"]), _f(meta["G1_stderr"])
    pc, pc_se = _col(rows, "predicted_curve"), _col(rows, "predicted_curve_stderr")
    weak = np.array([not r.get("resolved", True) for r in rows])
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.8))
    grid = np.geomspace(tau.min(), tau.max(), 100)
    finite = np.abs(np.concatenate([gap[np.isfinite(gap)], [g1 * tau.min()] if np.isfinite(g1) else []]))
    lin = float(np.min(finite[finite > 0])) / 2 if (finite > 0).any() else 1e-6
    if np.isfinite(g1):
        ax[0].plot(grid, g1 * grid, "-", color="k", label=f"first order G₁τ, G₁ = {g1:.3g} ± {g1_se:.1g}")
        ax[0].fill_between(grid, (g1 - g1_se) * grid, (g1 + g1_se) * grid, color="k", alpha=0.12)
    if np.isfinite(pc).any():
        ax[0].errorbar(tau, pc, yerr=pc_se, fmt="s-", color="C1", ms=4, lw=1, label="whole-curve prediction")
    ax[0].errorbar(tau[~weak], gap[~weak], yerr=se[~weak], fmt="o", color="C0", label="measured, all layers")
    if weak.any():
        ax[0].errorbar(tau[weak], gap[weak], yerr=se[weak], fmt="o", color="0.6", mfc="none",
                       label=f"measured, not resolved or < {int(_f(meta.get('min_effective', 0)))} eff. sequences")
    for c, i in enumerate(layers):
        y = _col(rows, f"layer{i}_gap")
        ax[0].plot(tau, y, ".", color=f"C{c + 2}", ms=5, label=f"layer {i} alone (others hard)")
    ax[0].set_xscale("log")
    ax[0].set_yscale("symlog", linthresh=lin)
    ax[0].axhline(0, color="0.5", lw=0.6)
    ax[0].set(xlabel="router temperature τ", ylabel="L_τ − L_0 (nats per token, signed)",
              title="loss of softer routing relative to hard routing")
    ax[0].legend(fontsize=7)
    targets = meta.get("targets", {"first order": [[0.02, 0.1], [0.8, 1.25]], "whole curve": [[0.2, 1.0],
                                                                                             [0.75, 1.33]]})
    for (name, key, color), (lo_hi, band) in zip((("first order", "ratio", "k"), ("whole curve", "curve_ratio",
                                                                                     "C1")), targets.values()):
        r, rs = _col(rows, key), _col(rows, f"{key}_stderr")
        ax[1].errorbar(tau * (1.04 if key == "curve_ratio" else 1), r, yerr=rs, fmt="o" if key == "ratio" else "s",
                       color=color, mfc="none", label=f"measured / {name}")
        ax[1].fill_between(lo_hi, [band[0]] * 2, [band[1]] * 2, color=color, alpha=0.12,
                           label=f"target for the {name}")
    ax[1].axhline(1, color="0.5", lw=0.6)
    ax[1].set_xscale("log")
    ax[1].set_ylim(-0.5, 2.5)
    ax[1].set(xlabel="router temperature τ", ylabel="measured / predicted", title="agreement (cross-fitted, "
                                                                                   "jackknife errors)")
    ax[1].legend(fontsize=7)
    fig.suptitle(f"hardening {meta.get('model', meta.get('model_class', ''))}: {meta['tokens']} tokens", fontsize=10)
    return [savefig(fig, out / "hardening.png")]


def _pm(row: dict, key: str, err: str | None = None) -> str:
    v, s = _f(row.get(key)), _f(row.get(err or f"{key}_stderr"))
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
    head = ["τ", "rows near a tie", "effective sequences", "L_τ − L_0 (measured)", "G₁τ (first order)",
            "measured / first order", "whole curve (predicted)", "measured / whole curve", "L_τ − L_1"] + \
        [f"layer {i}: measured | first order | whole curve" for i in ids] + ["all − Σ layers"]
    body = [[r["tau"], r.get("near_tie_rows"), f"{_f(r.get('effective_sequences')):.0f}",
             _pm(r, "gap", "gap_stderr_seq"), _pm(r, "predicted"), _pm(r, "ratio"), _pm(r, "predicted_curve"),
             _pm(r, "curve_ratio"), _pm(r, "change_vs_shipped")]
            + [f"{_pm(r, f'layer{i}_gap')} | {_f(r.get(f'layer{i}_predicted')):.3g} | "
               f"{_f(r.get(f'layer{i}_predicted_curve')):.3g}" for i in ids]
            + [_pm(r, "interaction")] for r in rows]
    parts = [
        "<h2>Hardening: the model's loss as routing is made harder</h2>",
        "<p>Every MoE layer keeps its own top-k selection and weights it along its tempering path (the rule's "
        "weight map at logits/τ, or the weights raised to 1/τ with their sum held); τ = 1 is the model as shipped, "
        "τ → 0 hard routing (L<sub>0</sub>). Measured: the mean per-token loss change (± standard error over "
        "sequences). Predicted, cross-fitted over two halves of the sequences: the first-order law "
        "G<sub>1</sub>τ (density of the margin at 0 × mean tie contrast) and the whole curve (the contrast "
        "profile kept as a function of the margin); ratios with delete-one-sequence jackknife errors, paired with "
        "the measurement. 'layer ℓ' runs that layer at τ and the others hard. Effective sequences: (Σ|s|)²/Σs² "
        f"over the sequences' summed loss changes s; below {meta.get('min_effective', '?')} the mean rests on a "
        "handful of heavy-tailed terms (docs/hardening.md).</p>",
        f"<p>Shipped loss {_f(meta['shipped_loss']):.4f}, hard loss {_f(meta['hard_loss']):.4f} "
        f"(L<sub>0</sub> − L<sub>1</sub> = {_pm(meta, 'hard_minus_shipped')}); G<sub>1</sub> = "
        f"{_pm(meta, 'G1')}. <b>{html.escape(str(meta.get('verdict', '')))}</b>.</p>",
        table(head, body),
        "<h3>Per-layer first-order constants</h3>",
        table(["layer", "module", "path", "bandwidth h", "h used", "rows within h", "contrasted", "f_Δ(0⁺)",
               "mean tie contrast", "G₁ of the layer", "G₁ at h, h/2, h/4"],
              [[lay["layer"], lay["module"], lay.get("path", ""), lay["bandwidth"], lay.get("bandwidth_used"),
                lay["near_tie"], lay["contrasted"], _pm(lay, "density0"), lay["mean_contrast"], _pm(lay, "G1"),
                ", ".join(f"{_f(lay.get(k)):.3g}" for k in ("G1_h", "G1_h2", "G1_h4"))] for lay in lays]),
    ]
    png = out / "hardening.png"
    if png.is_file():
        b64 = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<img alt="hardening curve" src="data:image/png;base64,{b64}">')
    return parts
