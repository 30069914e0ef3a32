"""Flips predicted beside measured (``softhard inspect --perturb``), rendered from ``flips.json`` alone.

``flips.png``, two panels: (left) predicted against measured flip rate, one marker per (layer, perturbation),
± one standard error both ways, on log axes, with the diagonal and the ×0.5–2 band of the per-layer target;
(right) predicted/measured per layer and perturbation with its paired standard error, the ×0.7–1.3 band of
the averaged target shaded; grey markers: fewer than 0.5 % of tokens flip (outside the targets' range).

:func:`flips_section` gives the HTML of the report section (verdicts, table, figure).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from .figures import pyplot, savefig

__all__ = ["figure_flips", "flips_section"]


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def figure_flips(out) -> Path:
    """Draw ``out/flips.png`` from ``out/flips.json``; returns its path."""
    out = Path(out)
    d = json.loads((out / "flips.json").read_text(encoding="utf-8"))
    rows, meta = d["rows"], d["meta"]
    kinds = list(dict.fromkeys(r["perturbation"] for r in rows))
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lo_all, hi_all = [], []
    for c, kind in enumerate(kinds):
        rs = [r for r in rows if r["perturbation"] == kind]
        col = colors[c % len(colors)]
        for r in rs:
            m, p = _f(r["measured"]), _f(r["predicted"])
            judged = bool(r.get("judged"))
            if m > 0 and p > 0:
                ax[0].errorbar(m, p, xerr=_f(r["measured_stderr"]), yerr=_f(r["predicted_stderr"]), fmt="o",
                               ms=5, color=col if judged else "0.6", mfc=col if judged else "none")
                lo_all.append(min(m, p))
                hi_all.append(max(m, p))
            ratio = _f(r["ratio"])
            if np.isfinite(ratio) and ratio > 0:
                x = r["layer"] + (c - (len(kinds) - 1) / 2) * 0.8 / max(1, len(kinds))
                ax[1].errorbar(x, ratio, yerr=_f(r["ratio_stderr"]), fmt="o", ms=5, color=col if judged else "0.6",
                               mfc=col if judged else "none", label=kind if r is rs[0] else None)
        ax[0].plot([], [], "o", color=col, label=kind)
    if lo_all:
        lo, hi = min(lo_all) / 2, max(hi_all) * 2
        t = np.array([lo, hi])
        ax[0].plot(t, t, "k-", lw=0.8)
        ax[0].fill_between(t, t / 2, t * 2, color="0.9", zorder=0, label="×0.5–2")
        ax[0].set_xlim(lo, hi)
        ax[0].set_ylim(lo, hi)
    ax[0].set_xscale("log")
    ax[0].set_yscale("log")
    ax[0].axvline(meta.get("targets", {}).get("min_measured", 0.005), color="0.5", ls=":", lw=0.8)
    ax[0].set_xlabel("measured flip rate")
    ax[0].set_ylabel("predicted flip rate")
    ax[0].legend(fontsize=7, loc="upper left")
    ax[1].axhspan(0.7, 1.3, color="0.9", zorder=0)
    ax[1].axhline(1.0, color="k", lw=0.8)
    ax[1].set_yscale("log")
    ax[1].set_xlabel("layer")
    ax[1].set_ylabel("predicted / measured (± paired se)")
    layers = sorted({r["layer"] for r in rows})
    ax[1].set_xticks(layers)
    fig.suptitle(f"flips under a changed router: {meta.get('model', '')} ({meta.get('sequences')} sequences; grey "
                 f"= under {meta.get('targets', {}).get('min_measured', 0.005):.1%} flip)", fontsize=10)
    fig.tight_layout()
    return savefig(fig, out / "flips.png")


def _pm(row: dict, key: str) -> str:
    v, s = _f(row.get(key)), _f(row.get(f"{key}_stderr"))
    return f"{v:.4g}" if not np.isfinite(s) else f"{v:.4g} ± {s:.2g}"


_WHAT = {
    "bf16": "router computed in bfloat16 (inputs, weights, output)",
    "fp16": "router computed in float16 (inputs, weights, output)",
    "fp8": "router computed in fp8 e4m3 (per-token / per-tensor scales, float32 accumulation and output)",
    "int8-router": "router weight int8 (optimum-quanto, weight-only)",
    "int4-router": "router weight int4 (optimum-quanto, weight-only)",
    "int8": "whole model int8 weight-only (optimum-quanto): error of the hidden states calibrated",
    "int4": "whole model int4 weight-only (optimum-quanto): error of the hidden states calibrated",
    "noise": "Gaussian noise on the router's input",
}


def flips_section(out, table) -> list[str]:
    """HTML parts of the report's flips section (empty when ``out/flips.json`` is absent); ``table`` renders
    ``(header, rows)`` as an HTML table."""
    out = Path(out)
    if not (out / "flips.json").is_file():
        return []
    d = json.loads((out / "flips.json").read_text(encoding="utf-8"))
    rows, meta = d["rows"], d["meta"]
    parts = ["<h2>Flips predicted beside measured</h2>",
             "<p>For each change of the router's scores, the share of tokens whose selected set changes: "
             "<b>predicted</b> from each token's gaps between the selected and unselected experts and an error model "
             "of the score differences (derived from the rounding or quantization grid; calibrated on the first "
             f"{meta.get('calibration_sequences')} sequences for whole-model quantization, which are then left "
             "out), and <b>measured</b> by recomputing the router (or running the quantized model) on the same "
             "tokens. Standard errors are per sequence; the ratio's is paired. Targets (issue 20): "
             "predicted/measured within ×0.7–1.3 averaged over layers and ×0.5–2 per layer, wherever at least "
             f"{meta.get('targets', {}).get('min_measured', 0.005):.1%} of tokens flip (docs/flips.md).</p>"]
    vrows = []
    for kind, v in meta.get("verdicts", {}).items():
        if v.get("mean_ratio") is None:
            vrows.append([kind, _WHAT.get(kind, kind), 0, "", "", v.get("note", "")])
        else:
            vrows.append([kind, _WHAT.get(kind, kind), v["layers"], f"{v['mean_ratio']:.3g}",
                          f"{v['min_ratio']:.3g} – {v['max_ratio']:.3g}", "holds" if v["holds"] else "FAILS"])
    parts.append(table(["perturbation", "change", "layers judged", "mean predicted/measured", "per-layer range",
                        "targets"], vrows))
    parts.append(table(["layer", "perturbation", "predicted", "measured", "predicted / measured", "tokens",
                        "error model"],
                       [[r["layer"], r["perturbation"], _pm(r, "predicted"), _pm(r, "measured"), _pm(r, "ratio"),
                         r["tokens"], r["error_model"]] for r in rows]))
    for note in meta.get("notes") or []:
        parts.append(f'<p class="note">{html.escape(str(note))}</p>')
    png = out / "flips.png"
    if png.is_file():
        parts.append(f'<img alt="flips" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">')
    return parts
