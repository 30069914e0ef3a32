"""``report.html`` of ``softhard reproduce``/``render``: one self-contained page (figures embedded, no links out).

Sections: a summary of each paper table against the paper; per paper table (1–3) the design, our values
beside the printed ones with the difference in units of our standard error and a one-line reading per
column, every column of ours (exact and first-order included) and the figures; the extensions beyond the
paper; the configuration of every table; the versions; the files of the set. Drawn from the tables it is
given (with ``meta["paper"]`` joined) and the figure files in the directory.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path

from ..results.io import atomic_write
from ..results.labels import cell_parts, text_label

__all__ = ["render_page", "write_report"]

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}td.l,th.l{text-align:left}
td.paper{background:#fbf7e8}td.far{color:#a33;font-weight:600}img{max-width:100%;border:1px solid #eee}
.wide{overflow-x:auto}code{background:#f3f3f3;padding:0 3px}.reading li{margin:.2em 0}.note{color:#555;font-size:.92em}
details{margin:.5em 0}summary{cursor:pointer;color:#245}"""

_PAPER_ORDER = ("table1", "table2", "table3")
_FIGURES = {"table1": ["figure1"], "table1_multi": ["figure1_multi"], "table2": ["figure2"],
            "table3": ["figure3", "figure3_phase"]}
_BEYOND = {"table1_limit": "τ → 0: gap/τ → G₁ and β(w)/2w → ψ(0), the conditional estimator beside the exact "
                           "values",
           "table1_multi": "K experts: top-two boundary mass, exact through Gaussian orthant probabilities"}


def _e(x) -> str:
    return html.escape(str(x))


def _num(row: dict, c: str) -> str:
    """``row[c]`` rounded as in the LaTeX fragments (:func:`softhard.results.labels.cell_parts`)."""
    parts = cell_parts(row, c)
    if parts is None:
        v = row.get(c)
        return "" if v is None else _e(v)
    return parts[0] if parts[1] is None else f"{parts[0]} ± {parts[1]}"


def _table(header: list[str], rows: list[list[str]], classes: list[list[str]] | None = None) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        cls = classes[i] if classes else [""] * len(r)
        body.append("<tr>" + "".join(f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for v, c in zip(r, cls))
                    + "</tr>")
    return f'<div class="wide"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _comparison(t) -> str:
    info = t.meta["paper"]
    key = info["key"]
    cols = [c for c in info["columns"] if f"{c}_paper" in t.columns]
    header = [_e(text_label(key))]
    for c in cols:
        lab = _e(text_label(c))
        header += [f"{lab}<br>ours ± s.e."] + ([f"{lab}<br>exact"] if f"{c}_exact" in t.columns else []) + [
            f"{lab}<br>paper", "z"]
    rows, classes = [], []
    for r in t.rows:
        row, cls = [_num(r, key)], [""]
        for c in cols:
            row.append(_num(r, c))
            cls.append("")
            if f"{c}_exact" in t.columns:
                row.append(_num(r, f"{c}_exact"))
                cls.append("")
            p, z = r.get(f"{c}_paper"), r.get(f"{c}_paper_z")
            dec = info["columns"][c].get("decimals", 4)
            row += [f"{p:.{dec}f}" if isinstance(p, (int, float)) else "", f"{z:+.1f}" if isinstance(z, (int, float))
                    else ""]
            cls += ["paper", "far" if isinstance(z, (int, float)) and abs(z) > 3 else ""]
        rows.append(row)
        classes.append(cls)
    readings = "".join(f"<li><b>{_e(text_label(c))}</b>: {_e(v['reading'])}</li>" for c, v in info["columns"].items())
    return (_table(header, rows, classes) + f'<p class="note">z = {_e(info["z"])}; paper: {_e(info["source"])}.</p>'
            + f'<ul class="reading">{readings}</ul>')


def _all_columns(t) -> str:
    cols = [c for c in t.columns if not c.endswith(("_stderr", "_paper", "_paper_z"))]
    rows = [[_num(r, c) for c in cols] for r in t.rows]
    return _table([_e(text_label(c)) for c in cols], rows)


def _design(t) -> str:
    d = t.meta.get("design")
    if not isinstance(d, dict):
        return ""
    short = {k: v for k, v in d.items() if not isinstance(v, (list, dict)) or len(json.dumps(v)) < 120}
    rows = [[_e(k), _e(v if isinstance(v, str) else json.dumps(v))] for k, v in short.items()]
    return "<details><summary>Design</summary>" + _table(["setting", "value"], rows).replace(
        "<td>", '<td class="l">') + "</details>"


def _figures(out: Path, names: list[str]) -> str:
    parts = []
    for n in names:
        svg, png = out / f"{n}.svg", out / f"{n}.png"
        src = svg if svg.is_file() else png
        if not src.is_file():
            continue
        mime = "image/svg+xml" if src.suffix == ".svg" else "image/png"
        b64 = base64.b64encode(src.read_bytes()).decode("ascii")
        files = ", ".join(f"<code>{n}.{ext}</code>" for ext in ("png", "pdf", "svg") if (out / f"{n}.{ext}").is_file())
        parts.append(f'<figure><img alt="{n}" src="data:{mime};base64,{b64}"><figcaption class="note">{files}'
                     "</figcaption></figure>")
    return "".join(parts)


def _extras(out: Path, tables: dict, parent: str) -> str:
    parts = []
    for name, t in tables.items():
        if name.startswith(parent + "_") and name not in _BEYOND and name not in _FIGURES:
            tex = " and .tex" if (out / f"{name}.tex").is_file() else " (too long for LaTeX: CSV/JSON only)"
            note = t.meta.get("note", "")
            parts.append(f"<li><code>{name}.csv</code>/<code>.json</code>{tex}: {len(t.rows)} rows × "
                         f"{len(t.columns)} columns. {_e(note[:300])}{'…' if len(note) > 300 else ''}</li>")
    return f"<p>Written beside it:</p><ul>{''.join(parts)}</ul>" if parts else ""


def _config_section(tables: dict) -> str:
    rows = []
    for name, t in tables.items():
        cfg = t.meta.get("config")
        if not isinstance(cfg, dict) or t.meta.get("produced_by", name) != name:
            continue
        text = ", ".join(f"{k} = {json.dumps(v)}" for k, v in cfg.items())
        rows.append([f"<code>{name}</code>", _e(t.meta.get("seed", "")), _e(t.meta.get("samples", "")),
                     f"{t.meta.get('seconds', float('nan')):.1f}", _e(text)])
    table = _table(["table", "seed", "samples", "seconds", "config"], rows).replace('<td>', '<td class="l">')
    return ("<h2 id='config'>Configuration</h2><p>Each table's <code>Config</code> as run (defaults = the paper's "
            "design; change one with <code>--config FILE.toml</code>, sections <code>[table1]</code>, …). "
            "Every Monte Carlo number has a standard error and depends on (seed, samples) only.</p>" + table)


def _versions(tables: dict) -> str:
    vers = next((t.meta["versions"] for t in tables.values() if isinstance(t.meta.get("versions"), dict)), None)
    if not vers:
        return ""
    return "<h2 id='versions'>Versions</h2>" + _table(["package", "version"], [[_e(k), _e(v)] for k, v in vers.items()])


def _files(out: Path) -> str:
    files = sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != "report.html")
    rows = [[f"<code>{p.name}</code>", f"{p.stat().st_size:,}"] for p in files]
    return ("<h2 id='files'>Files</h2><p>Beside this page; <code>manifest.json</code> lists each with its SHA-256. "
            "Tables: CSV (all columns, <code>*_paper</code> and <code>*_paper_z</code> included), JSON (rows and "
            "metadata), LaTeX fragments for short tables; figures: PNG, PDF, SVG.</p>"
            + _table(["file", "bytes"], rows).replace("<td>", '<td class="l">', 1))


def render_page(out: str | Path, tables: dict, command: str | None = None) -> str:
    """The page (module docstring) for ``tables`` (name → Table) and the figures in ``out``."""
    out = Path(out)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    paper = [n for n in _PAPER_ORDER if n in tables and "paper" in tables[n].meta]
    beyond = [n for n in _BEYOND if n in tables]
    toc = "".join(f"<li><a href='#{n}'>Table {n[5:]}: {_e(tables[n].meta['paper']['title'])}</a></li>" for n in paper)
    toc += "".join(f"<li><a href='#{n}'><code>{n}</code> (beyond the paper)</a></li>" for n in beyond)
    toc += "<li><a href='#config'>Configuration</a></li><li><a href='#versions'>Versions</a></li>"
    toc += "<li><a href='#files'>Files</a></li>"
    summary = []
    for n in paper:
        for c, v in tables[n].meta["paper"]["columns"].items():
            summary.append(f"<li>Table {n[5:]}, <b>{_e(text_label(c))}</b>: {_e(v['reading'])}</li>")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>softhard: reproduction of §7"
             f"</title><style>{_STYLE}</style></head><body>",
             "<h1>Soft-to-Hard Routing in Sparse Mixture-of-Experts Models (arXiv 2605.02124), §7 reproduced</h1>",
             f"<p class='note'>Made by <code>{_e(command or 'softhard reproduce')}</code>, {now}. Every table below "
             "is beside the paper's printed values; <i>z</i> is our value minus the paper's in units of our standard "
             "error (red: |z| &gt; 3), and each column has a one-line reading of the differences.</p>",
             f"<h2>Contents</h2><ul>{toc}</ul>",
             f"<h2>Against the paper, in one list</h2><ul class='reading'>{''.join(summary)}</ul>" if summary else ""]
    for n in paper:
        t, info = tables[n], tables[n].meta["paper"]
        parts += [f"<h2 id='{n}'>Table {n[5:]}: {_e(info['title'])} ({_e(info['section'])})</h2>", _design(t),
                  "<h3>Ours beside the paper</h3>", _comparison(t),
                  "<details open><summary>Every column of ours (exact and first-order values included)</summary>",
                  _all_columns(t), "</details>", _extras(out, tables, n), _figures(out, _FIGURES.get(n, []))]
    for n in beyond:
        t = tables[n]
        parts += [f"<h2 id='{n}'><code>{n}</code>: beyond the paper</h2><p>{_e(_BEYOND[n])}.</p>", _design(t),
                  _all_columns(t), _figures(out, _FIGURES.get(n, []))]
        if n == "table1_limit":
            parts.append("<p class='note'>Drawn in panel (c) of figure 1 (Table 1 above).</p>")
    parts += [_config_section(tables), _versions(tables), _files(out), "</body></html>\n"]
    return "\n".join(p for p in parts if p)


def write_report(out: str | Path, tables: dict, command: str | None = None) -> Path:
    """Write ``out/report.html`` atomically; returns its path."""
    return atomic_write(Path(out) / "report.html", render_page(out, tables, command))
