"""``report.html`` of ``softhard reproduce``/``render``: one self-contained page (figures embedded, no links out).

Sections, in order: when the numbers were computed and the page rendered (and what a reader found wrong with
the set, if anything); how the readings are made (their rules); a summary of each paper table against the
paper; per paper table (1–3) its design, for each printed column a small table of ours beside the printed
values (with the exact values and z where they exist) and its reading with the evidence behind it, every
column of ours, and its figure; then, marked as such, the work beyond the paper (``table1_limit``,
``table1_multi``, the symmetry-breaking phase diagram, which records a failed prediction); the LaTeX
fragments; the configuration of every table; the versions; the files of the set. Numbers are formatted one
way per column (:func:`softhard.results.labels.column_cells`); mathematics is Unicode with HTML subscripts
throughout. The page reads on a phone: a viewport, tables that scroll inside their own box, figures that
shrink to the screen. Drawn from the tables it is given (with ``meta["paper"]`` joined) and the figure files
in the directory.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from pathlib import Path

from ..results.io import atomic_write
from ..results.labels import column_cells, html_label, html_math

__all__ = ["render_page", "write_report", "phase_summary"]

_STYLE = """*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,sans-serif;margin:0 auto;padding:0 1em 3em;max-width:1150px;color:#222;
line-height:1.45;-webkit-text-size-adjust:100%}
h1{font-size:1.55em;line-height:1.25}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.4em}p,li,figcaption,summary{overflow-wrap:anywhere}
.wide{overflow-x:auto;max-width:100%;margin:.4em 0 1em;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th{background:#f3f3f3}td.l,th.l{text-align:left;white-space:normal;min-width:8em}
td.paper{background:#fbf7e8}td.far{color:#a33;font-weight:600}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
code{background:#f3f3f3;padding:0 3px;overflow-wrap:anywhere}
.reading{margin:.3em 0 1em}.note{color:#555;font-size:.92em}.rule{color:#555;font-size:.88em}
.warn{background:#fff3f0;border-left:4px solid #c33;padding:.4em .8em}
.beyond{border-left:4px solid #6b4fbb;background:#faf8ff;padding:.1em 1em .6em;margin:1.5em 0}
.badge{display:inline-block;background:#6b4fbb;color:#fff;border-radius:3px;padding:0 .45em;font-size:.8em;
font-weight:600;letter-spacing:.02em;vertical-align:middle}
details{margin:.5em 0}summary{cursor:pointer;color:#245}
@media (max-width:640px){body{padding:0 .7em 2em}h1{font-size:1.3em}h2{font-size:1.2em}table{font-size:12px}
th,td{padding:2px 5px}}"""

_PAPER_ORDER = ("table1", "table2", "table3")
_FIGURES = {"table1": ["figure1"], "table1_multi": ["figure1_multi"], "table2": ["figure2"], "table3": ["figure3"],
            "table3_phase": ["figure3_phase"]}
_CAPTIONS = {
    "figure1": "Figure 1. (a) β(2τ) and L_τ − L_0 against τ, log–log: ours with error bars, the exact curves, the "
               "first-order line G_1τ, the paper's printed values (×) and a slope-1 reference. (b) The gap against "
               "the mass. (c), (d) [beyond the paper, table1_limit] (L_τ − L_0)/τ → G_1 and β(w)/2w → ψ(0) as "
               "τ → 0, each on its own scale.",
    "figure1_multi": "The K-expert version of figure 1(a) [beyond the paper]: Monte Carlo with error bars and the "
                     "exact curves (orthant probabilities for the mass, two-dimensional quadrature for the gap).",
    "figure2": "Figure 2. (a) The gap and (b) the flip rate against the mass across offsets o, ours with error "
               "bars, the exact curves and the paper's printed values (×). The flip perturbation of (b) was chosen "
               "to reproduce the paper's flip column.",
    "figure3": "Figure 3. (a) Alignment deficit 1 − |cos(θ_t, u)| and (b) the training objective against the "
               "step, one curve per τ.",
    "figure3_phase": "The phase diagram [beyond the paper]: steps to align, measured and predicted by the "
                     "linearised model (6.7), and the measured alignment rate against ρ (6.11).",
}
_BEYOND = {"table1_limit": ("τ → 0 limits of Table 1", "The conditional estimator down to τ = 10⁻⁴ beside the "
                            "exact values: (L_τ − L_0)/τ → G_1 and β(w)/2w → ψ(0) (w = 2τ); drawn in panels (c) "
                            "and (d) of figure 1"),
           "table1_multi": ("Table 1 with K experts", "The top-two boundary mass of a K-expert linear router, "
                            "exact through Gaussian orthant probabilities, and the gap")}
# readable names of the design settings the diagnostics record (others: underscores as spaces)
_DESIGN_NAMES = {
    "law": "input law", "router": "router", "experts": "experts", "teacher": "teacher", "tau": "τ",
    "boundary_mass": "boundary mass", "boundary_mass_exact": "exact boundary mass", "K": "experts K",
    "variant": "variant", "d": "dimension d", "u": "teacher separator u", "c": "teacher contrast c",
    "c_u": "contrast along u, c·u", "anisotropy": "anisotropy a", "Sigma_formula": "Σ", "c_formula": "c",
    "student_contrast": "student contrast ε", "delta": "student contrast δ = w_1 − w_2", "init_norm": "|θ_0|",
    "init_alignment": "cos(θ_0, u)", "eta": "step size η", "steps": "steps", "training_samples":
    "training sample size", "training_sample": "training sample", "evaluation": "evaluation",
    "gate_entropy": "gate entropy", "alignment_step1": "alignment after one step", "steps_to_align":
    "steps to align", "seed": "seed", "response": "response of the reduced model", "align_threshold":
    "alignment threshold", "beta0": "β_0 (teacher's shared part)", "w1": "student expert w_1",
    "w2": "student expert w_2", "theta0": "initial router θ_0",
}


def _e(x) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[str]], classes: list[list[str]] | None = None,
           head_classes: list[str] | None = None) -> str:
    """A table in its own horizontally scrolling box (cells are HTML already)."""
    hc = head_classes or [""] * len(header)
    head = "".join(f'<th class="{c}">{h}</th>' if c else f"<th>{h}</th>" for h, c in zip(header, hc))
    body = []
    for i, r in enumerate(rows):
        cls = classes[i] if classes else [""] * len(r)
        body.append("<tr>" + "".join(f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for v, c in zip(r, cls))
                    + "</tr>")
    return f'<div class="wide"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _cells(t, column: str) -> list[str]:
    return ["" if c is None else c.html() for c in column_cells(t.rows, column)]


def _minus(text: str) -> str:
    return text.replace("-", "−")


def _z(z) -> str:
    return _minus(f"{z:+.1f}") if isinstance(z, (int, float)) and math.isfinite(z) else ""


def _comparison(t, c: str) -> str:
    """Ours beside the paper for printed column ``c``: key, ours (± s.e.), exact, paper (as printed), z."""
    info = t.meta["paper"]
    col = info["columns"][c]
    key = info["key"]
    has_se = f"{c}_stderr" in t.columns
    has_exact = f"{c}_exact" in t.columns
    # z compares digits: not shown where the paper's design constants are unknown (a "shape" table)
    has_z = info.get("compare") != "shape" and any(isinstance(r.get(f"{c}_paper_z"), (int, float)) for r in t.rows)
    header = [html_label(key), "ours ± s.e." if has_se else "ours"] + (["exact"] if has_exact else []) + [
        "paper"] + (["z"] if has_z else [])
    keys, ours = _cells(t, key), _cells(t, c)
    exact = _cells(t, f"{c}_exact") if has_exact else []
    printed = col.get("printed") or [None] * len(t.rows)
    dec = col.get("decimals", 4)
    rows, classes = [], []
    for i, r in enumerate(t.rows):
        p = printed[i] if i < len(printed) and printed[i] is not None else (
            f"{r[c + '_paper']:.{dec}f}" if isinstance(r.get(f"{c}_paper"), (int, float)) else "")
        z = r.get(f"{c}_paper_z")
        row = [keys[i], ours[i]] + ([exact[i]] if has_exact else []) + [p] + ([_z(z)] if has_z else [])
        cls = ["", ""] + ([""] if has_exact else []) + ["paper"] + (
            ["far" if isinstance(z, (int, float)) and abs(z) > 3 else ""] if has_z else [])
        rows.append(row)
        classes.append(cls)
    parts = [f"<h3>{html_label(c)}</h3>"]
    if col.get("heading"):
        parts.append(f"<p class='note'>Heading: {html_math(col['heading'])}.</p>")
    parts.append(_table(header, rows, classes))
    parts.append(f"<p class='reading'><b>Reading</b>: {html_math(col['reading'])}.</p>")
    ev = col.get("evidence") or {}
    if ev.get("paper_minus_exact_percent"):
        zp = ev.get("paper_z_at_n_min") or []
        ev_rows = [[keys[i], _minus(f"{d:+.1f} %"), _z(zp[i]) if i < len(zp) else ""]
                   for i, d in enumerate(ev["paper_minus_exact_percent"])]
        n_min = ev.get("n_min")
        head = [html_label(key), "paper − exact", "paper's z"]
        at = f" at n = {_sci_html(n_min)} draws" if n_min else ""
        parts.append("<details open><summary>The evidence: the paper's differences from the exact values</summary>"
                     + _table(head, ev_rows) + f"<p class='note'>Paper's z: the difference in the paper's own "
                     f"standard errors{at}, the least sample size its boundary-mass column allows (99 %): fewer "
                     "draws would have scattered that column further from the exact masses than it is. At more "
                     "draws each difference is more of the paper's standard errors, not fewer.</p></details>")
    return "".join(parts)


def _sci_html(n: float) -> str:
    e = math.floor(math.log10(n))
    return f"{n / 10 ** e:.1f}×10<sup>{e}</sup>"


def _all_columns(t) -> str:
    cols = [c for c in t.columns if not c.endswith(("_stderr", "_paper", "_paper_z"))]
    cells = {c: _cells(t, c) for c in cols}
    rows = [[cells[c][i] for c in cols] for i in range(len(t.rows))]
    return _table([html_label(c) for c in cols], rows)


def _value(v) -> str:
    """A design value for reading: floats to six significant digits, lists shortened, ``None`` as "none",
    backticks as code, ``>=`` as ≥."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return html_math(f"{v:.6g}".replace("-", "−"))
    if isinstance(v, list):
        flat = [x for x in v if not isinstance(x, list)]
        if len(flat) == len(v):
            shown = [f"{x:.6g}".replace("-", "−") if isinstance(x, float) else str(x) for x in v[:8]]
            return html_math("(" + ", ".join(shown) + (", …" if len(v) > 8 else "") + ")")
        return html_math(json.dumps(v))
    text = str(v).replace(">=", "≥").replace("<=", "≤").replace("null", "none")
    pieces = text.split("`")
    return "".join(html_math(p) if i % 2 == 0 else f"<code>{_e(p)}</code>" for i, p in enumerate(pieces))


def _design(t) -> str:
    d = t.meta.get("design")
    if not isinstance(d, dict):
        return ""
    rows = []
    for k, v in d.items():
        if isinstance(v, (list, dict)) and len(json.dumps(v)) > 200:
            continue  # matrices and long vectors: in the JSON
        name = _DESIGN_NAMES.get(k, k.replace("_", " "))
        rows.append([html_math(name), _value(v)])
    return ("<details><summary>Design</summary>"
            + _table(["setting", "value"], rows, [["l", "l"]] * len(rows), ["l", "l"])
            + "<p class='note'>Vectors and matrices too long to show here are in the table's JSON "
              "(<code>meta.design</code>).</p></details>")


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
        caption = html_math(_CAPTIONS.get(n, n))
        parts.append(f'<figure><img alt="{_e(n)}" src="data:{mime};base64,{b64}"><figcaption class="note">'
                     f"{caption} Files: {files}.</figcaption></figure>")
    return "".join(parts)


def _extras(out: Path, tables: dict, names: list[str]) -> str:
    parts = []
    for name in names:
        t = tables.get(name)
        if t is None:
            continue
        tex = " and .tex" if (out / f"{name}.tex").is_file() else " (too long for LaTeX: CSV/JSON only)"
        note = t.meta.get("note", "")
        cols = "" if not note else f" <details><summary>Columns</summary>{_value(note)}</details>"
        parts.append(f"<li><code>{name}.csv</code>/<code>.json</code>{tex}: {len(t.rows)} rows × {len(t.columns)} "
                     f"columns.{cols}</li>")
    return f"<p>Written beside it:</p><ul>{''.join(parts)}</ul>" if parts else ""


def phase_summary(tables: dict) -> dict | None:
    """What the symmetry-breaking phase diagram shows, from its tables: the measured alignment rate against ρ
    (6.11) (``rate_ratio_range``: ρ / measured, over the cells where both are positive) and the cells where the
    linearised iteration (6.7) never reaches the threshold within the run."""
    rows = [r for n in ("table3_phase_anisotropy", "table3_phase_contrast") if n in tables for r in tables[n].rows]
    aniso = tables.get("table3_phase_anisotropy")
    if aniso is None:
        return None
    ratios = [r["rate_predicted"] / r["rate_measured"] for r in aniso.rows
              if isinstance(r.get("rate_predicted"), (int, float)) and isinstance(r.get("rate_measured"), (int, float))
              and r["rate_measured"] > 0 and r["rate_predicted"] > 0]
    never = sum(r.get("steps_predicted") is None for r in aniso.rows)
    unaligned = sum(r.get("steps_to_align") is None for r in rows)
    below = sorted(x for x in ratios if x > 1)
    return {"cells": len(aniso.rows), "never_predicted": never, "ratio_min": below[0] if below else None,
            "ratio_max": below[-1] if below else None, "ratio_median": below[len(below) // 2] if below else None,
            "rate_cells": len(ratios), "below": len(below), "unaligned_measured": unaligned, "all_cells": len(rows)}


def _phase_section(out: Path, tables: dict) -> str:
    s = phase_summary(tables)
    if s is None:
        return ""
    words = []
    if s["ratio_min"] is not None:
        words.append(f"the measured alignment rate after the first step is below the rate ρ (6.11) that the reduced "
                     f"model predicts in {s['below']} of {s['rate_cells']} cells of the anisotropy grid, by factors "
                     f"of {s['ratio_min']:.1f} to {s['ratio_max']:.0f} (median {s['ratio_median']:.0f})")
    words.append(f"the linearised iteration (6.7) from the same θ_0 never reaches the alignment threshold within the "
                 f"run in {s['never_predicted']} of {s['cells']} cells, while the measured descent aligns in all "
                 f"but {s['unaligned_measured']} of the {s['all_cells']} cells of both grids")
    text = ("With experts fixed, the balanced router is left through the drift −∇L(0), which the reduced model "
            "(6.6)–(6.11) does not contain, so its rate and step counts do not describe router-only descent here: "
            + "; ".join(words) + " (docs/symmetry.md §4, §8). Table 3 above reports the measured transient only.")
    return ("<section class='beyond' id='table3_phase'><h2><span class='badge'>BEYOND THE PAPER</span> "
            "Symmetry breaking: phase diagram</h2>"
            + "<p>" + html_math("Router-only descent of the §7.3 design across a grid of τ × student contrast ε and "
                                "τ × anisotropy a of Σ: the steps to reach |cos(θ_t, u)| ≥ "
                                f"{tables['table3_phase_anisotropy'].meta.get('align_threshold', 0.99):g}, "
                                "measured and predicted by the reduced model.") + "</p>"
            + f"<p><b>It records a failed prediction.</b> {html_math(text)}</p>"
            + _extras(out, tables, ["table3_phase_contrast", "table3_phase_anisotropy"])
            + _figures(out, _FIGURES["table3_phase"]) + "</section>")


def _readings_rules(tables: dict) -> str:
    rules = next((t.meta["paper"].get("rules") for t in tables.values() if isinstance(t.meta.get("paper"), dict)
                  and t.meta["paper"].get("rules")), None)
    if not rules:
        return ""
    names = {"noise": "Within our noise", "systematic": "Systematic, unexplained", "paper_noise":
             "Monte Carlo noise in the paper", "chosen": "By construction", "unprinted": "Unprinted constant",
             "shape": "Shape", "unexplained": "Unexplained"}
    items = "".join(f"<li><b>{names.get(k, k)}</b>: {html_math(v)}.</li>" for k, v in rules.items())
    return ("<h2 id='rules'>How the readings are made</h2><p>z = (ours − paper) / our standard error; red: |z| &gt; 3. "
            "Each column's reading applies the first rule that fits:</p><ul class='rule'>" + items + "</ul>"
            "<p class='note'>Numbers: a Monte Carlo value is shown with its standard error to two significant "
            "digits and to the same decimal place; an exact value beside it to one place more; values without an "
            "error to four significant digits; one format down each column (powers of ten for a whole column "
            "when it spans values below 0.001). The paper's values are copied as printed.</p>")


def _provenance(tables: dict, command: str | None, now: str) -> str:
    runs: dict[tuple, list[str]] = {}
    for name, t in tables.items():
        if t.meta.get("produced_by", name) != name:
            continue
        key = (t.meta.get("computed_by"), t.meta.get("computed_at"), t.meta.get("softhard_version"))
        runs.setdefault(key, []).append(name)
    lines = []
    for (by, at, version), names in runs.items():
        what = ", ".join(f"<code>{n}</code>" for n in names)
        if by and at:
            lines.append(f"{what}: computed by <code>{_e(by)}</code> on {_e(at)}")
        else:
            lines.append(f"{what}: computed by softhard {_e(version or '?')} (time not recorded)")
    return (f"<p class='note'>Numbers — {'; '.join(lines)}.<br>This page — rendered by "
            f"<code>{_e(command or 'softhard reproduce')}</code> on {now}.</p>")


def _latex_section(out: Path, tables: dict) -> str:
    tex = sorted(p.name for p in out.glob("table*.tex"))
    if not tex:
        return ""
    widths = []
    for name in tex:
        t = tables.get(name[:-4])
        w = (t.meta.get("tex") or {}).get("width_pt") if t is not None else None
        widths.append(f"<li><code>{name}</code>" + (f": {w:.0f} pt wide" if isinstance(w, (int, float)) else "")
                      + "</li>")
    return ("<h2 id='latex'>LaTeX fragments</h2><p>Each <code>NAME.tex</code> is a <code>tabular</code> to "
            "<code>\\input</code> inside a <code>table</code> environment; it needs <code>\\usepackage{booktabs}"
            "</code> in the preamble (<code>\\toprule</code>, <code>\\midrule</code>, <code>\\bottomrule</code>). "
            "Monte Carlo values are written as value(error in the last digits): 0.03162(17) = 0.03162 ± 0.00017. "
            "Each fits the text width of a one-column article (345 pt, 10 pt type); the widths were measured by "
            "compiling them (docs/reproduce.md).</p><ul>" + "".join(widths) + "</ul>")


def _config_section(tables: dict) -> str:
    rows = []
    for name, t in tables.items():
        cfg = t.meta.get("config")
        if not isinstance(cfg, dict) or t.meta.get("produced_by", name) != name:
            continue
        text = ", ".join(f"{k} = {_value(v)}" for k, v in cfg.items())
        rows.append([f"<code>{name}</code>", _e(t.meta.get("seed", "")), _e(t.meta.get("samples", "")),
                     f"{t.meta.get('seconds', float('nan')):.1f}", text])
    table = _table(["table", "seed", "samples", "seconds", "config"], rows,
                   [["l", "", "", "", "l"]] * len(rows), ["l", "", "", "", "l"])
    return ("<h2 id='config'>Configuration</h2><p>Each table's <code>Config</code> as run (defaults = the paper's "
            "design; change one with <code>--config FILE.toml</code>, sections <code>[table1]</code>, …). "
            "Every Monte Carlo number has a standard error and depends on (seed, samples) only.</p>" + table)


def _versions(tables: dict) -> str:
    vers = next((t.meta["versions"] for t in tables.values() if isinstance(t.meta.get("versions"), dict)), None)
    if not vers:
        return ""
    rows = [[_e(k), _e(v)] for k, v in vers.items()]
    return "<h2 id='versions'>Versions</h2>" + _table(["package", "version"], rows, [["l", "l"]] * len(rows),
                                                      ["l", "l"])


def _files(out: Path) -> str:
    files = sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != "report.html")
    rows = [[f"<code>{p.name}</code>", f"{p.stat().st_size:,}"] for p in files]
    return ("<h2 id='files'>Files</h2><p>Beside this page; <code>manifest.json</code> lists each with its SHA-256. "
            "Tables: CSV (all columns, <code>*_paper</code> and <code>*_paper_z</code> included), JSON (rows and "
            "metadata), LaTeX fragments for short tables; figures: PNG, PDF, SVG.</p>"
            + _table(["file", "bytes"], rows, [["l", ""]] * len(rows), ["l", ""]))


def render_page(out: str | Path, tables: dict, command: str | None = None, notes: list[str] = ()) -> str:
    """The page (module docstring) for ``tables`` (name → Table) and the figures in ``out``; ``command`` renders
    it now; ``notes`` are what the reader found wrong with the set (shown at the top)."""
    out = Path(out)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    paper = [n for n in _PAPER_ORDER if n in tables and "paper" in tables[n].meta]
    beyond = [n for n in _BEYOND if n in tables]
    has_phase = "table3_phase_anisotropy" in tables
    toc = "<li><a href='#rules'>How the readings are made</a></li>"
    toc += "".join(f"<li><a href='#{n}'>Table {n[5:]}: {_e(tables[n].meta['paper']['title'])}</a></li>"
                   for n in paper)
    toc += "".join(f"<li><a href='#{n}'><span class='badge'>BEYOND</span> {html_math(_BEYOND[n][0])}</a></li>"
                   for n in beyond)
    if has_phase:
        toc += "<li><a href='#table3_phase'><span class='badge'>BEYOND</span> Symmetry breaking: phase diagram</a></li>"
    toc += ("<li><a href='#latex'>LaTeX fragments</a></li><li><a href='#config'>Configuration</a></li>"
            "<li><a href='#versions'>Versions</a></li><li><a href='#files'>Files</a></li>")
    summary = []
    for n in paper:
        for c, v in tables[n].meta["paper"]["columns"].items():
            summary.append(f"<li>Table {n[5:]}, <b>{html_label(c)}</b>: {html_math(v['reading'])}.</li>")
    warn = "".join(f"<p class='warn'>{html_math(x)}</p>" for x in notes)
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>softhard: reproduction of §7</title><style>{_STYLE}</style></head><body>",
             "<h1>Soft-to-Hard Routing in Sparse Mixture-of-Experts Models (arXiv 2605.02124), §7 reproduced</h1>",
             _provenance(tables, command, now), warn,
             "<p>Every table of the paper's §7 is shown beside its printed values, column by column: ours with its "
             "standard error, the exact value where one exists, the paper's value (copied as printed) and z. Each "
             "column "
             "has a reading that states its rule and the evidence. Sections marked <span class='badge'>BEYOND THE "
             "PAPER</span> are our own extensions.</p>",
             f"<h2>Contents</h2><ul>{toc}</ul>", _readings_rules(tables),
             f"<h2>Against the paper, in one list</h2><ul class='reading'>{''.join(summary)}</ul>" if summary else ""]
    for n in paper:
        t, info = tables[n], tables[n].meta["paper"]
        cols = [c for c in info["columns"] if f"{c}_paper" in t.columns]
        extras = [x for x in tables if x.startswith(n + "_") and x not in _BEYOND and not x.startswith(
            "table3_phase")]
        parts += [f"<h2 id='{n}'>Table {n[5:]}: {_e(info['title'])} ({_e(info['section'])})</h2>", _design(t),
                  "<h3>Ours beside the paper</h3>" if cols else "",
                  "".join(_comparison(t, c) for c in cols),
                  f"<p class='note'>Paper: {_e(info['source'])}. z = {_e(info['z'])}.</p>",
                  "<details><summary>Every column of ours (exact and first-order values included)</summary>",
                  _all_columns(t), "</details>", _extras(out, tables, extras), _figures(out, _FIGURES.get(n, []))]
    for n in beyond:
        t = tables[n]
        title, what = _BEYOND[n]
        parts += [f"<section class='beyond' id='{n}'><h2><span class='badge'>BEYOND THE PAPER</span> "
                  f"{html_math(title)} (<code>{n}</code>)</h2><p>{html_math(what)}.</p>", _design(t),
                  _all_columns(t), _figures(out, _FIGURES.get(n, [])), "</section>"]
    if has_phase:
        parts.append(_phase_section(out, tables))
    parts += [_latex_section(out, tables), _config_section(tables), _versions(tables), _files(out),
              "</body></html>\n"]
    return "\n".join(p for p in parts if p)


def write_report(out: str | Path, tables: dict, command: str | None = None, notes: list[str] = ()) -> Path:
    """Write ``out/report.html`` atomically; returns its path."""
    return atomic_write(Path(out) / "report.html", render_page(out, tables, command, notes))
