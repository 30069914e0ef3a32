"""The paper's symbols and rounding to the standard error (hand-computed cases)."""

import pytest

from softhard.results.labels import cell_parts, latex_cell, latex_label, plot_label, round_to_error, text_label


@pytest.mark.parametrize("value, se, expected", [
    (0.6725, 0.1, ("0.67", "0.10")),          # the "0.6725 ± 0.1"
    (0.03162, 0.000213, ("0.03162", "0.00021")),  # and "0.03162 ± 0.0002"
    (0.12345, 0.0999, ("0.12", "0.10")),      # the error rounds up to the next decade
    (1234.5, 56.0, ("1234", "56")),
    (123456.0, 5600.0, ("123500", "5600")),   # to the hundreds, like the error
    (0.5, None, ("0.5", None)), (0.99996, None, ("0.99996", None)), (0.5, 0.0, ("0.5", None)),
])
def test_round_to_error(value, se, expected):
    assert round_to_error(value, se) == expected


def test_cells_and_labels():
    row = {"risk_gap": 0.012423, "risk_gap_stderr": 0.000141, "risk_gap_exact": 0.0123271, "K": 4}
    assert cell_parts(row, "risk_gap") == ("0.01242", "0.00014")
    assert cell_parts(row, "risk_gap_exact") == ("0.012327", None)  # one place more than the estimate
    assert latex_cell(row, "risk_gap") == r"$0.01242 \pm 0.00014$" and latex_cell(row, "K") == "$4$"
    assert latex_cell({"x": 6.164e-5}, "x") == r"$6.164\times 10^{-5}$"
    assert latex_label("risk_gap_exact") == r"$L_\tau - L_0$ (exact)" and latex_label("new_col") == r"new\_col"
    assert text_label("boundary_mass") == "β(2τ)" and plot_label("new_col") == "new col"


def test_column_cells_one_format_per_column():
    """Issue 23: no 18-digit values (an error below rounding is no error), one format down a column (a column
    spanning values below 0.001 in powers of ten, each with its own exponent), exact values one digit past the
    estimate beside them in every row; hand-computed."""
    from softhard.results.labels import column_cells

    rows = [{"m": 0.398703044235112436, "m_stderr": 1.5e-17, "m_exact": 0.3987030442},
            {"m": 0.3989, "m_stderr": 1.2e-17, "m_exact": 0.398942}]
    assert [c.text() for c in column_cells(rows, "m")] == ["0.398703", "0.398900"]
    rows = [{"g": 0.061453, "g_stderr": 4.4e-5, "g_exact": 0.0613937},
            {"g": 6.1703e-5, "g_stderr": 4.4e-8, "g_exact": 6.16437e-5}]
    assert [c.text() for c in column_cells(rows, "g")] == ["(6.1453 ± 0.0044)e-02", "(6.1703 ± 0.0044)e-05"]
    assert [c.text() for c in column_cells(rows, "g_exact")] == ["6.13937e-02", "6.16437e-05"]
    assert column_cells(rows, "g")[1].html() == "(6.1703 ± 0.0044) × 10<sup>−5</sup>"
    assert column_cells(rows, "g")[1].latex() == r"$6.1703(44)\times 10^{-5}$"
    rows = [{"b": 0.03162, "b_stderr": 0.00017, "b_exact": 0.031907}, {"b": 0.7702, "b_stderr": 0.00041,
                                                                        "b_exact": 0.769861}]
    assert [c.text() for c in column_cells(rows, "b_exact")] == ["0.031907", "0.769861"]  # 6 decimals in both
    assert [c.text() for c in column_cells([{"a": 0.999974}, {"a": 0.9995}], "a")] == ["0.99997", "0.99950"]
    assert [c.text() for c in column_cells([{"tau": 0.0001}, {"tau": 0.1}], "tau")] == ["0.0001", "0.1"]


def test_html_math_subscripts_only_single_letters():
    from softhard.results.labels import html_label, html_math

    assert html_label("risk_gap") == "L<sub>τ</sub> − L<sub>0</sub>"
    assert html_math("h_1,2(x) = ±1·x_2, G_1τ, θ_T") == ("h<sub>1,2</sub>(x) = ±1·x<sub>2</sub>, G<sub>1</sub>τ, "
                                                        "θ<sub>T</sub>")
    assert html_math("align_threshold, docs/sym_x.md, <b>") == "align_threshold, docs/sym_x.md, &lt;b&gt;"
