"""``report.html`` of ``softhard inspect``: one self-contained page (PNGs embedded as base64, no links out).

Rendered from the files in the output directory alone: ``summary.json``, ``layers.csv`` and the
``layerNN.png`` figures.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from .fig_hardening import hardening_section
from .io import atomic_write

__all__ = ["write_report", "render_report"]

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 6px;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%}.wide{overflow-x:auto}
code{background:#f3f3f3;padding:0 3px}"""

# the columns of layers.csv shown in the page (all of them are in the CSV)
_SHOWN = ("layer", "module", "layout", "experts", "top_k", "tokens", "delta_q10", "delta_q50", "topk_margin_q10",
          "density0", "density0_stderr", "tail_C", "tail_alpha", "entropy", "load_max_ratio", "agreement",
          "flip_rate", "flip_bound")


def _cell(v) -> str:
    try:
        if isinstance(v, bool):
            raise TypeError
        f = float(v)
    except (TypeError, ValueError):
        return f'<td class="l">{html.escape(str(v))}</td>'
    return f"<td>{f:.4g}</td>" if not float(f).is_integer() or abs(f) >= 1e6 else f"<td>{int(f)}</td>"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>'


def render_report(out) -> str:
    """The page as a string (see the module docstring)."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    with (out / "layers.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    meta = summary["meta"]
    shown = [c for c in _SHOWN if rows and c in rows[0]]
    sens_cols = [c for c in (rows[0] if rows else {}) if c.startswith(("beta_2tau", "sens_")) and
                 not c.endswith("_stderr")]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>softhard inspect: "
             f"{html.escape(str(meta.get('model', meta.get('model_class'))))}</title><style>{_STYLE}</style></head><body>",
             f"<h1>Routing margins and soft–hard sensitivity: {html.escape(str(meta.get('model', '')))}</h1>",
             _table(["setting", "value"], [[k, json.dumps(v) if isinstance(v, (list, dict)) else v]
                                           for k, v in meta.items()]),
             "<h2>Layers</h2>", _table(shown, [[r[c] for c in shown] for r in rows]),
             "<h2>Sensitivity (relative change against the model as shipped)</h2>",
             _table(["layer"] + sens_cols, [[r["layer"]] + [r[c] for c in sens_cols] for r in rows])]
    if "hardening" in meta:  # issue 12 item 4: this run measured the hardening curve
        parts += hardening_section(out, _table)
    for lay in summary["layers"]:
        png = out / f"layer{lay['layer']:02d}.png"
        parts.append(f"<h2>Layer {lay['layer']}: <code>{html.escape(lay['module'])}</code> ({lay['layout']})</h2>")
        if png.is_file():
            b64 = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f'<img alt="layer {lay["layer"]}" src="data:image/png;base64,{b64}">')
        parts.append("<h3>Expert load (share of the model's assignments)</h3>")
        parts.append(_table([f"expert {i}" for i in range(len(lay["load"]))], [lay["load"]]))
        parts.append(f"<h3>Tokens nearest to a tie (margin a({lay['top_k']}) − a({lay['top_k'] + 1}))</h3>")
        parts.append(_table(["margin", "sequence", "position", "token id", "text"],
                            [[t["margin"], t["sequence"], t["position"], t["token_id"], t["text"]]
                             for t in lay["nearest"]]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(out) -> Path:
    """Write ``out/report.html`` atomically; returns its path."""
    return atomic_write(Path(out) / "report.html", render_report(out))
