"""Flips predicted beside measured (``softhard inspect --perturb``), rendered from ``flips.json`` alone.

``flips.png``, two panels: (left) predicted against measured flip rate, one marker per (layer, perturbation),
± one standard error both ways, on log axes, with the diagonal and the ×0.5–2 band of the per-layer target;
(right) predicted/measured per layer and perturbation with its paired standard error, the ×0.7–1.3 band of
the averaged target shaded; grey markers: fewer than 0.5 % of tokens flip (outside the targets' range).

:func:`flips_section` gives the HTML of the report section (verdicts, table, figure).

``softhard compare-routing`` (from ``compare_routing.json`` alone): ``compare_routing.png`` — per layer the
mismatch rate measured beside predicted (± se), the genuine share, and the near-tie share of the mismatches —
and its ``report.html``.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from .figures import pyplot, savefig

__all__ = ["figure_flips", "flips_section", "compare_routing_figure", "compare_routing_cells",
           "render_compare_routing_report", "write_compare_routing_report"]


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
    else:
        ax[0].text(0.5, 0.5, "no flips measured and predicted\n(too few tokens)", ha="center", va="center",
                   transform=ax[0].transAxes)
    ax[0].axvline(meta.get("targets", {}).get("min_measured", 0.005), color="0.5", ls=":", lw=0.8)
    ax[0].set_xlabel("measured flip rate")
    ax[0].set_ylabel("predicted flip rate")
    ax[0].legend(fontsize=7, loc="upper left")
    ax[1].axhspan(0.7, 1.3, color="0.9", zorder=0)
    ax[1].axhline(1.0, color="k", lw=0.8)
    ax[1].set_yscale("log")  # the band and the line are positive, whatever the rows hold
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


def _est(v: float, se: float, fmt: str = ".4f") -> str:
    """``v ± se``; an exact 0 as ``0``; ``± not estimable`` where the error needs two sequences."""
    if v == 0 and se == 0:
        return "0"
    if not np.isfinite(se):
        return f"{v:{fmt}} (± not estimable: one sequence)"
    return f"{v:{fmt}} ± {se:.2g}"


def compare_routing_cells(row: dict) -> dict[str, str]:
    """One row of ``compare_routing.csv`` as words, never ``nan``: ``mismatch``, ``near_ties``, ``genuine``,
    ``predicted``, ``ratio`` and ``noise_scale``.

    With no mismatch in the ``N`` tokens the rate is bounded, not estimated: below :math:`3/N` at 95 % (the
    rule of three, :math:`1 - (1 - 3/N)^N \approx 1 - e^{-3} = 0.95`, for independent tokens; :math:`3/U` over
    ``U`` sequences if whole sequences flip together), and the near-tie share and predicted/measured are not
    defined. Quantities that need scores on a side with expert ids only (and no ``--score-noise``) read
    "not computed"."""
    n = int(row["tokens"])
    m, m_se = _f(row.get("mismatch")), _f(row.get("mismatch_stderr"))
    units = int(row.get("sequences") or 0)
    cells = {}
    if m == 0:
        seq = f"; < {3 / units:.2g} if whole sequences flip together" if units > 3 else ""
        cells["mismatch"] = f"no mismatches in {n} tokens: rate < {3 / n:.2g} at 95 % (3/N{seq})"
    else:
        cells["mismatch"] = _est(m, m_se)
    nocalc = "not computed (no score noise: see the note)"
    for key, name, per_mismatch, fmt in (("near_tie_share", "near_ties", True, ".3g"),
                                         ("genuine", "genuine", False, ".4f"),
                                         ("predicted_mismatch", "predicted", False, ".4f"),
                                         ("ratio", "ratio", True, ".3g")):
        v = _f(row.get(key))
        if per_mismatch and m == 0:  # a share of (or a ratio to) the mismatches
            cells[name] = "not defined: no mismatches"
        elif np.isfinite(v):
            cells[name] = _est(v, _f(row.get(f"{key}_stderr")), fmt)
        else:
            cells[name] = nocalc
    s = _f(row.get("noise_scale"))
    cells["noise_scale"] = f"{s:.3g}" if np.isfinite(s) else "not measured"
    return cells


def compare_routing_figure(out) -> Path:
    """Draw ``out/compare_routing.png`` from ``out/compare_routing.json``; returns its path."""
    out = Path(out)
    d = json.loads((out / "compare_routing.json").read_text(encoding="utf-8"))
    rows = d["rows"]
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(rows))
    labels = [str(r["layer"]) for r in rows]
    for off, key, lab in ((-0.2, "mismatch", "measured mismatch"), (0.0, "predicted_mismatch", "predicted"),
                          (0.2, "genuine", "genuine (beyond the measured noise)")):
        v = np.array([_f(r[key]) for r in rows])
        e = np.array([_f(r[f"{key}_stderr"]) for r in rows])
        ax[0].bar(x + off, np.nan_to_num(v), 0.2, yerr=np.nan_to_num(e), label=lab, capsize=2)
    ax[0].set_xticks(x, labels)
    ax[0].set_xlabel("layer")
    ax[0].set_ylabel("share of tokens")
    ax[0].legend(fontsize=7)
    v = np.array([_f(r["near_tie_share"]) for r in rows])
    e = np.array([_f(r["near_tie_share_stderr"]) for r in rows])
    ax[1].errorbar(x, v, yerr=e, fmt="o")
    ax[1].axhline(0.9, color="0.5", ls=":", lw=0.8)
    ax[1].set_ylim(0, 1.05)
    ax[1].set_xticks(x, labels)
    ax[1].set_xlabel("layer")
    ax[1].set_ylabel("mismatches at near-tie tokens (share)")
    fig.suptitle(f"{Path(d['meta']['a']).name} vs {Path(d['meta']['b']).name}", fontsize=10)
    fig.tight_layout()
    return savefig(fig, out / "compare_routing.png")


def render_compare_routing_report(out) -> str:
    """The page of ``softhard compare-routing`` as a string."""
    out = Path(out)
    d = json.loads((out / "compare_routing.json").read_text(encoding="utf-8"))
    rows, meta = d["rows"], d["meta"]
    esc = html.escape

    def tab(head, body):
        h = "".join(f"<th>{esc(str(c))}</th>" for c in head)
        b = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in body)
        return f"<table><tr>{h}</tr>{b}</table>"

    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>softhard compare-routing</title>"
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}.note{color:#a50}</style></head><body>",
             f"<h1>Routing compared: {esc(meta['a'])} ({esc(meta['format_a'])}) against {esc(meta['b'])} "
             f"({esc(meta['format_b'])})</h1>",
             "<p>Per layer, on the same tokens: the share whose selected experts differ (mismatch); of those, the "
             "share whose decision margin was at most the score noise measured between the two runs on that token "
             "(max − min of the change of its scores: a selection made from these scores cannot change "
             "otherwise) — "
             "near ties; the share of all tokens mismatched beyond that noise (genuine); and the mismatch predicted "
             "from the reference side's gaps and the fitted noise scale (cross-fitted on halves of the sequences; "
             "docs/compare_routing.md). ± per-sequence standard errors.</p>"]
    for note in meta.get("notes") or []:
        parts.append(f'<p class="note">Note: {esc(str(note))}</p>')
    parts.append(tab(["layer", "tokens", "mismatch", "near-tie share", "genuine", "predicted", "predicted / measured",
                      "noise scale", "grid"],
                     [[r["layer"], r["tokens"]] + [c[k] for k in ("mismatch", "near_ties", "genuine", "predicted",
                                                                   "ratio", "noise_scale")] + [r.get("grid", "")]
                      for r, c in ((r, compare_routing_cells(r)) for r in rows)]))
    png = out / "compare_routing.png"
    if png.is_file():
        parts.append(f'<img alt="compare" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">')
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_compare_routing_report(out) -> Path:
    """Write ``out/report.html`` of ``softhard compare-routing``; returns its path."""
    from ..results.io import atomic_write

    return atomic_write(Path(out) / "report.html", render_compare_routing_report(out))
