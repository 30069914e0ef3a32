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
