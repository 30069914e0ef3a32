"""`softhard reproduce`/`render`: the files of one small run, exact vs Monte Carlo, the paper beside us, the
report, the LaTeX fragments, redrawing."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from softhard.cli import app
from softhard.experiments.paper import PAPER
from softhard.report.figures import FORMATS
from softhard.results.io import read_table
from softhard.runs.reproduce import render_all

SAMPLES = 1 << 15
TABLES = ("table1", "table1_limit", "table1_multi", "table2", "table3")
FIGURES = ("figure1", "figure1_multi", "figure2", "figure3")
SMALL = "[table1_limit]\ntaus = [0.01, 0.001, 0.0001]\n[table3]\nsteps = 60\nphase = false\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    (root / "small.toml").write_text(SMALL, encoding="utf-8")
    out = root / "results"
    r = CliRunner().invoke(app, ["reproduce", "--out", str(out), "--samples", str(SAMPLES),
                                 "--config", str(root / "small.toml")])
    assert r.exit_code == 0, r.output
    return out


def test_files_and_manifest(results):
    manifest = json.loads((results / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    for name in TABLES:
        for ext in ("csv", "json"):
            assert f"{name}.{ext}" in listed
    for f in listed.values():  # every file of the set, with its size and checksum
        data = (results / f["path"]).read_bytes()
        assert f["bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    on_disk = {p.name for p in results.iterdir()}
    assert on_disk == set(listed) | {"manifest.json"}  # nothing unlisted, no temporaries, no stage, no lock
    assert manifest["tables_last_run"] == list(TABLES)
    for name in ("table1", "table1_limit", "table3_trajectory"):  # the README's promise holds for extras too
        meta = json.loads((results / f"{name}.json").read_text())["meta"]
        assert meta["samples"] == SAMPLES and "softhard_version" in meta and meta["seed"] in (71, 73)
        assert {"config", "seconds", "versions"} <= set(meta) and meta["versions"]["torch"]


def test_every_figure_in_three_formats(results):
    for fig in FIGURES:
        for fmt in FORMATS:
            assert (results / f"{fig}.{fmt}").stat().st_size > 1000, (fig, fmt)
        assert (results / f"{fig}.pdf").read_bytes()[:5] == b"%PDF-"
        assert b"<svg" in (results / f"{fig}.svg").read_bytes()[:2000]


def test_long_tables_are_csv_only(results):
    assert not (results / "table3_trajectory.tex").exists()  # hundreds of rows: CSV/JSON only
    for name in ("table1", "table1_limit", "table1_multi", "table2", "table3"):
        assert (results / f"{name}.tex").exists()


def test_columns(results):
    t1, t2 = read_table(results / "table1.csv"), read_table(results / "table2.csv")
    assert t1.columns[:2] == ["tau", "boundary_mass"]
    assert {"risk_gap", "gap_over_tau", "boundary_mass_stderr", "risk_gap_stderr", "gap_over_tau_stderr",
            "boundary_mass_exact", "risk_gap_exact", "risk_gap_first_order"} <= set(t1.columns)
    assert [r["tau"] for r in t1.rows] == [0.02, 0.05, 0.1, 0.2, 0.45, 0.6]
    assert {"offset", "boundary_mass", "risk_gap", "flip_rate", "flip_rate_stderr", "flip_rate_exact"} <= set(
        t2.columns)
    assert [r["offset"] for r in t2.rows] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.25]
    assert "perturbation" in read_table(results / "table2.json").meta


@pytest.mark.parametrize("name", ["table1", "table2", "table3"])
def test_paper_columns(results, name):
    """Every printed column has `_paper` and `_paper_z` in the CSV and the JSON, and a reading."""
    paper = PAPER[name]
    csv, js = read_table(results / f"{name}.csv"), read_table(results / f"{name}.json")
    for c in paper.columns:
        assert f"{c}_paper" in csv.columns and f"{c}_paper_z" in csv.columns and f"{c}_paper" in js.columns
        assert js.meta["paper"]["columns"][c]["reading"]
    by_key = {float(k): v for k, v in paper.rows.items()}
    for row in js.rows:
        printed = by_key[row[paper.key]]
        for c, p in zip(paper.columns, printed):
            assert row[f"{c}_paper"] == float(p)
            se = row.get(f"{c}_stderr")
            if se:
                assert row[f"{c}_paper_z"] == pytest.approx((row[c] - float(p)) / se, rel=1e-12)
            else:
                assert row[f"{c}_paper_z"] is None


def test_table3_reading_compares_shapes(results):
    readings = read_table(results / "table3.json").meta["paper"]["columns"]
    assert all("compare shapes, not digits" in v["reading"] for v in readings.values())
    assert "π²/12" in readings["gate_entropy"]["reading"]


@pytest.mark.parametrize("name", ["table1", "table2", "table1_limit", "table1_multi"])
def test_exact_and_monte_carlo_agree(results, name):
    t = read_table(results / f"{name}.csv")
    checked = 0
    for row in t.rows:
        for col in t.columns:
            if f"{col}_exact" in t.columns and f"{col}_stderr" in t.columns:
                err = abs(row[col] - row[f"{col}_exact"])
                assert err <= 5 * row[f"{col}_stderr"] + 1e-12 * abs(row[f"{col}_exact"]), (name, col, row)
                checked += 1
    assert checked >= len(t.rows)


def test_loglog_slopes_near_one(results):
    slopes = read_table(results / "table1.json").meta["slopes"]
    for c in ("boundary_mass", "risk_gap"):
        assert abs(slopes[c] - 1) < max(0.1, 5 * slopes[f"{c}_stderr"])


def test_first_order_limit_without_drift(results):
    """The τ → 0 panel: the conditional estimator sits on G₁ and ψ(0) within 5 SE at every small τ."""
    lim = read_table(results / "table1_limit.json")
    g1, psi0 = lim.meta["G1"], lim.meta["psi0"]
    assert psi0 == pytest.approx(1 / np.sqrt(2 * np.pi))
    assert g1 == pytest.approx((2 * np.log(2) - 1) * 4 / np.sqrt(2 * np.pi))
    assert lim.meta["method"]["risk_gap"] == "conditional"
    for r in lim.rows:
        assert r["mass_over_2w_exact"] == pytest.approx(psi0, rel=1e-3)
        if r["tau"] <= 1e-3:  # the O(τ²) term is below 1e-5 here
            assert abs(r["gap_over_tau"] - g1) <= 5 * r["gap_over_tau_stderr"]
            assert abs(r["mass_over_2w"] - psi0) <= 5 * r["mass_over_2w_stderr"] + 1e-6


def test_latex_symbols_and_rounding(results):
    tex = (results / "table1.tex").read_text()
    body = tex.split("\\midrule\n")[1]
    header = tex.split("\\toprule\n")[1].split("\\midrule\n")[0]
    for symbol in (r"$\tau$", r"$\beta(2\tau)$", r"$L_\tau - L_0$", r"$(L_\tau - L_0)/\tau$"):
        assert symbol in header
    assert "_stderr" not in tex and r"\_" not in header
    row = read_table(results / "table1.json").rows[0]
    se = float(f"{row['boundary_mass_stderr']:.2g}")
    decimals = 1 - math.floor(math.log10(se))
    concise = f"${row['boundary_mass']:.{decimals}f}({round(se * 10 ** decimals)})$"  # value(error in last digits)
    assert concise in body.splitlines()[0]
    for m in re.finditer(r"\$([0-9.]+)\(([0-9]+)\)\$", body):  # every error: two significant digits
        assert 10 <= int(m.group(2)) <= 99


def test_report_is_self_contained_and_complete(results):
    page = (results / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    for name in ("table1", "table2", "table3"):
        assert f"id='{name}'" in page
        info = read_table(results / f"{name}.json").meta["paper"]["columns"]
        for c in PAPER[name].columns:  # a small table per printed column, its printed values as printed
            assert info[c]["rule"] in info[c]["reading"] or info[c]["rule"]  # every reading names its rule
    assert page.count("<th>paper</th>") == sum(len(PAPER[n].columns) for n in ("table1", "table2",
                                                                                            "table3"))
    assert "<td class=\"paper\">0.5994</td>" in page  # Table 1, τ = 0.2: as printed, not 0.5995
    for fig in FIGURES:
        svg = base64.b64encode((results / f"{fig}.svg").read_bytes()).decode()
        assert svg in page and f"<code>{fig}.pdf</code>" in page
    for section in ("id='rules'", "id='config'", "id='versions'", "id='files'", "id='latex'", "id='table1_limit'",
                    "id='table1_multi'"):
        assert section in page
    assert "softhard reproduce --out" in page and "computed by <code>softhard reproduce" in page


def test_report_reads_on_a_phone_and_in_one_notation(results):
    """Issue 23: a viewport; tables in boxes that scroll; subscripts as HTML, no `L_τ`/`θ_T`/`L_tau`; no number with
    more than 12 significant digits; beyond-the-paper sections marked; every reading states its rule."""
    page = (results / "report.html").read_text(encoding="utf-8")
    text = re.sub(r'src="data:[^"]*"', "", page)
    assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in page
    assert ".wide{overflow-x:auto" in page and text.count("<table>") == text.count('<div class="wide"><table>')
    visible = re.sub(r"<code>.*?</code>|<style>.*?</style>", "", text, flags=re.S)
    for plain in ("L_τ", "L_0", "θ_T", "L_tau", "π_1", "`", ">=", "null", "0.09999999"):
        assert plain not in visible, plain
    assert "L<sub>τ</sub> − L<sub>0</sub>" in page
    assert not re.search(r"\d\.\d{12,}", visible)  # no 18-digit values
    assert page.count("BEYOND THE PAPER") >= 2 and "within our Monte Carlo noise" in page
    assert "(rule: every |z| ≤ 3)" in page and "How the readings are made" in page
    assert "needs <code>\\usepackage{booktabs}</code>" in page


def test_table2_flip_reading_says_it_was_chosen_to_match(results):
    col = read_table(results / "table2.json").meta["paper"]["columns"]["flip_rate"]
    assert col["rule"] == "chosen" and "was chosen to reproduce this column" in col["reading"]
    page = (results / "report.html").read_text(encoding="utf-8")
    assert "chosen to reproduce this column, so its" in page


def test_latex_fragments_need_booktabs_and_keep_one_format(results):
    for name in ("table1", "table1_limit", "table1_multi", "table2", "table3"):
        tex = (results / f"{name}.tex").read_text()
        assert r"\usepackage{booktabs}" in tex and r"\toprule" in tex and r"\begingroup" in tex
        assert not re.search(r"\d\.\d{12,}", tex)
    lines = (results / "table1.tex").read_text().splitlines()
    assert r"\multicolumn{2}{c}{$\beta(2\tau)$}" in "\n".join(lines) and "estimate & exact" in "\n".join(lines)


def test_render_redraws_the_same_figures(results):
    names = [f"{fig}.{fmt}" for fig in FIGURES for fmt in FORMATS]
    before = {p: (results / p).read_bytes() for p in names}
    tables = {p.name: p.read_bytes() for p in results.glob("table*")}
    for p in before:
        (results / p).unlink()
    computed = json.loads((results / "table1.json").read_text())["meta"]["computed_at"]
    written = render_all(results, echo=lambda s: None, command="softhard render results")
    page = (results / "report.html").read_text(encoding="utf-8")  # issue 23: when computed kept, rendering added
    assert f"computed by <code>softhard reproduce --out {results}" in page and computed in page
    assert "This page — rendered by <code>softhard render results</code> on" in page
    assert json.loads((results / "manifest.json").read_text())["rendered_by"] == "softhard render results"
    assert {p.name for p in written} >= set(before) | {"report.html", "manifest.json"}
    for p, data in before.items():
        assert (results / p).read_bytes() == data, p
    assert {p.name: p.read_bytes() for p in results.glob("table*")} == tables  # tables are not rewritten
    listed = {f["path"] for f in json.loads((results / "manifest.json").read_text())["files"]}
    assert set(before) | set(tables) <= listed
