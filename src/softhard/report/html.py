"""``report.html`` of ``softhard inspect``: one self-contained page (PNGs embedded as base64, no links out).

Rendered from the files in the output directory alone: ``summary.json``, ``layers.csv`` and the
``layerNN.png`` figures (``compare_summary.json`` and ``compare.png`` for several checkpoints). Every statistic
is introduced by one sentence and its formula; Monte Carlo numbers are shown as ``value ± standard error``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

from ..results.io import atomic_write
from .fig_flips import flips_section
from .fig_hardening import hardening_section

__all__ = ["write_report", "render_report", "write_compare_report", "render_compare_report"]

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 6px;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%}.wide{overflow-x:auto}
code{background:#f3f3f3;padding:0 3px}p.note{color:#555;font-size:13px}"""

# (statistic, one sentence, formula): the legend of the page
_DEFINITIONS = [
    ("decision margin m", "The smallest change of the scores the router ranks (biased scores for bias-corrected or "
     "group-limited rules, the logits otherwise) that changes the set of selected experts, measured as the span "
     "max δ − min δ of the change (docs/routing_rules.md).",
     "m = s₍ₖ₎ − s₍ₖ₊₁₎ for top-k; m = inf{max δ − min δ : S(s+δ) ≠ S(s)} in general"),
    ("logit margin", "The gap between the k-th and (k+1)-th raw router logit, shown beside m.", "Δₖ = a₍ₖ₎ − a₍ₖ₊₁₎"),
    ("β(w), tie_w", "The share of tokens within w of a change of their selected set (paper (2.13)).",
     "β(w) = μ(m ≤ w)"),
    ("density at 0", "How fast β grows from 0: the density of m at 0⁺ (one-sided kernel estimate); for a binary "
     "router it is 2ψ(0) of Prop. 3.5.", "f_m(0⁺) = lim_{w→0} β(w)/w"),
    ("tail C, α", "A power-law fit of the lower tail of m (Assumption 4.2).", "μ(m ≤ t) ≈ C t^α"),
    ("entropy", "The mean entropy of the softmax of the logits, in nats.", "−Σᵢ πᵢ log πᵢ, π = softmax(a)"),
    ("load", "The share of the model's token–slot assignments each expert receives; the table shows K × the "
     "largest share (1 = balanced).", "K · maxᵢ loadᵢ"),
    ("agreement", "The share of tokens whose selection by softhard's routing rule equals the model's own (1 when "
     "the rule is read right; blank when the router returns logits only).", "μ(S_rule = S_model)"),
    ("flip rate, bound", "Under a small perturbation of the router's input, the share of tokens whose selected set "
     "changes, and the share whose margin is below the span of the score change — a flip needs it, so the rate "
     "never exceeds the bound.", "flip ⇒ m ≤ max δs − min δs"),
    ("sensitivity", "The relative change of the block output and of the model's output when one block routes with "
     "its own selection but weights from a/τ (0 at τ = 1), beside β(2τ) (§7).", "‖o_τ − o‖ / ‖o‖"),
]


def _num(v):
    try:
        if isinstance(v, bool):
            return None
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt(v) -> str:
    f = _num(v)
    if f is None:
        return html.escape(str(v))
    if math.isnan(f):
        return ""
    return f"{int(f)}" if f.is_integer() and abs(f) < 1e6 else f"{f:.4g}"


def _pm(row: dict, key: str) -> str:
    """``value ± stderr`` of a CSV row (the ``_stderr`` column beside ``key``)."""
    v, s = _num(row.get(key)), _num(row.get(f"{key}_stderr"))
    if v is None or math.isnan(v):
        return ""
    return _fmt(v) if s is None or math.isnan(s) or s == 0 else f"{_fmt(v)} ± {s:.2g}"


def _cell(v) -> str:
    f = _num(v)
    cls = "" if f is not None else ' class="l"'
    return f"<td{cls}>{v if isinstance(v, str) and ' ± ' in v else _fmt(v)}</td>"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>'


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _overhead(meta: dict) -> str:
    oh = meta.get("hook_overhead")
    if oh is None:
        return (f"<p>Hook overhead: {html.escape(str(meta.get('hook_overhead_note') or 'not measured'))}.</p>")
    se = meta.get("hook_overhead_stderr") or 0.0
    return (f"<p>Hook overhead: <b>{oh:.1%} ± {se:.1%}</b> — the CPU time of the forward passes with the capture hooks "
            f"({meta['cpu_seconds_hooked_forward']:.2f} s) over that of the same passes without them "
            f"({meta['cpu_seconds_plain_forward']:.2f} s), minus 1, summed over the whole run "
            f"({meta.get('batches')} batches). It includes computing the margins and statistics and the flip-rate "
            f"re-routing, not the sensitivity runs.</p>")


def render_report(out) -> str:
    """The page as a string (see the module docstring)."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    with (out / "layers.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    meta = summary["meta"]
    lays = {lay["layer"]: lay for lay in summary["layers"]}
    name = html.escape(str(meta.get("model", meta.get("model_class"))))
    ties = [c for c in (rows[0] if rows else {}) if c.startswith("tie_w") and not c.endswith("_stderr")]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>softhard inspect: {name}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>Routing margins and soft–hard sensitivity: {name}</h1>",
             f"<p>{meta.get('layers')} MoE layers, {meta.get('tokens')} tokens ({html.escape(str(meta.get('source')))}"
             f"), seed {meta.get('seed')}.</p>"]
    for note in meta.get("notes") or []:
        parts.append(f'<p class="note">Note: {html.escape(str(note))}</p>')
    if meta.get("routers_not_called"):
        parts.append(f'<p class="note">Router modules never called on these inputs (left out): '
                     f'{html.escape(", ".join(meta["routers_not_called"]))}.</p>')
    parts.append(_overhead(meta))
    parts += ["<h2>What is measured</h2>",
              _table(["statistic", "meaning", "formula"], [list(d) for d in _DEFINITIONS]),
              "<h2>Routing rule of each layer</h2>",
              _table(["layer", "module", "rule", "margin measured on", "read from", "temperature runs"],
                     [[r["layer"], r["module"], lays.get(int(r["layer"]), {}).get("rule", r.get("rule", "")),
                       lays.get(int(r["layer"]), {}).get("margin_space", ""),
                       lays.get(int(r["layer"]), {}).get("rule_source", ""),
                       "yes" if lays.get(int(r["layer"]), {}).get("temper") else "unavailable"] for r in rows]),
              "<h2>Layers</h2>",
              _table(["layer", "tokens", "m: 10 %", "m: median", "logit margin: median", "density of m at 0",
                      *[f"β({t[5:]})" for t in ties], "tail C", "tail α", "entropy", "K · max load", "agreement"],
                     [[r["layer"], r["tokens"], r["margin_q10"], r["margin_q50"], r["logit_margin_q50"],
                       _pm(r, "density0"), *[_pm(r, t) for t in ties], _pm(r, "tail_C"), _pm(r, "tail_alpha"),
                       _pm(r, "entropy"), r["load_max_ratio"], r["agreement"]] for r in rows])]
    pert = meta.get("perturbation")
    parts.append("<h2>Flip rates</h2>")
    if pert is None:
        parts.append("<p>Not measured (--perturb none).</p>")
    else:
        what = ("the float16 round trip of the hidden states entering the router" if pert == "fp16" else
                f"Gaussian noise of relative size {meta.get('noise')} on the hidden states entering the router")
        parts.append(f"<p>Perturbation: {what}. The flip rate is the share of tokens whose selected set changes; "
                     f"the bound is the share with m ≤ max δs − min δs (δs the change of the scores m is measured "
                     f"on). A flip needs the bound's condition, so flip rate ≤ bound token by token: the flip rate "
                     f"is a boundary-mass question.</p>")
        parts.append(_table(["layer", "flip rate", "bound", "dropped (capacity)"],
                            [[r["layer"], _pm(r, "flip_rate"), _pm(r, "flip_bound"), r.get("dropped", "")]
                             for r in rows]))
    sens = [c for c in (rows[0] if rows else {}) if c.startswith("sens_") and not c.endswith("_stderr")]
    parts.append("<h2>Sensitivity (relative change against the model as shipped)</h2>")
    if sens:
        labels = list(dict.fromkeys(c.split("_", 2)[2] for c in sens))
        header = ["layer"] + [f"{part} {lab}" for lab in labels for part in ("block", "final")]
        parts.append(_table(header, [[r["layer"]] + [_pm(r, f"sens_{part}_{lab}") for lab in labels
                                                     for part in ("block", "final")] for r in rows]))
    else:
        parts.append("<p>Not run (--taus '' and no dense run).</p>")
    parts += flips_section(out, _table)  # issue 20 item 1: written when --perturb priced flips
    if "hardening" in meta:  # issue 12 item 4: this run measured the hardening curve
        parts += hardening_section(out, _table)
    for lay in summary["layers"]:
        parts.append(f"<h2>Layer {lay['layer']}: <code>{html.escape(lay['module'])}</code></h2>")
        parts.append(f"<p>{html.escape(lay.get('rule', ''))}</p>")
        parts.append(_img(out / f"layer{lay['layer']:02d}.png", f"layer {lay['layer']}"))
        parts.append("<h3>Expert load (share of the model's assignments)</h3>")
        parts.append(_table([f"expert {i}" for i in range(len(lay["load"]))], [lay["load"]]))
        parts.append("<h3>Tokens nearest to a tie (smallest decision margins)</h3>")
        parts.append(_table(["margin", "sequence", "position", "token id", "text"],
                            [[t["margin"], t["sequence"], t["position"], t["token_id"], t["text"]]
                             for t in lay["nearest"]]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(out) -> Path:
    """Write ``out/report.html`` atomically; returns its path."""
    return atomic_write(Path(out) / "report.html", render_report(out))


def render_compare_report(out) -> str:
    """The page comparing checkpoints (``compare_summary.json``, ``compare.png``)."""
    out = Path(out)
    data = json.loads((out / "compare_summary.json").read_text(encoding="utf-8"))
    meta, rows = data["meta"], data["rows"]
    ties = sorted({k for r in rows for k in r if k.startswith("tie_w") and not k.endswith("_stderr")
                   and not k.startswith("delta_")})
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>softhard inspect: checkpoints</title>"
             f"<style>{_STYLE}</style></head><body>",
             "<h1>Checkpoints side by side</h1>",
             f"<p>{len(meta['checkpoints'])} checkpoints on the same {meta['tokens']} tokens "
             f"({html.escape(str(meta['source']))}, seed {meta['seed']}); each checkpoint's own report is in its "
             f"folder ({html.escape(', '.join(meta['checkpoints']))}). β(w) is the share of tokens whose decision "
             f"margin m is at most w; the density is that of m at 0; the load entropy is the entropy of the expert "
             f"load over log K (1 = balanced). Changes are against the first checkpoint.</p>",
             _img(out / "compare.png", "checkpoints"),
             _table(["layer", "checkpoint", *[f"β({t[5:]})" for t in ties], *[f"Δβ({t[5:]})" for t in ties],
                     "density of m at 0", "Δ density", "load entropy", "Δ load entropy", "flip rate"],
                    [[r["layer"], r["checkpoint"], *[_pm(r, t) for t in ties], *[r["delta_" + t] for t in ties],
                      _pm(r, "density0"), r["delta_density0"], r["load_entropy"], r["delta_load_entropy"],
                      _pm(r, "flip_rate")] for r in rows]),
             "</body></html>\n"]
    return "\n".join(parts)


def write_compare_report(out) -> Path:
    """Write ``out/report.html`` for several checkpoints; returns its path."""
    return atomic_write(Path(out) / "report.html", render_compare_report(out))
