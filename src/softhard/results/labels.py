r"""The paper's symbols for result columns, and numbers rounded to their standard error.

One vocabulary for every output: LaTeX headers (``$\beta(2\tau)$``), matplotlib mathtext axis labels
(the same strings) and plain-text labels for HTML and the terminal (``β(2τ)``). A column without a
symbol falls back to its name with underscores as spaces. Suffixes ``_exact``, ``_first_order``,
``_paper``, ``_stderr`` qualify the base column's symbol.
"""

from __future__ import annotations

import math

__all__ = ["SYMBOLS", "latex_label", "plot_label", "text_label", "round_to_error", "cell_parts", "latex_cell"]

# column -> (LaTeX / mathtext, plain Unicode)
SYMBOLS: dict[str, tuple[str, str]] = {
    "tau": (r"$\tau$", "τ"),
    "offset": (r"$o$", "o"),
    "K": (r"$K$", "K"),
    "boundary_mass": (r"$\beta(2\tau)$", "β(2τ)"),
    "risk_gap": (r"$L_\tau - L_0$", "L_τ − L_0"),
    "gap_over_tau": (r"$(L_\tau - L_0)/\tau$", "(L_τ − L_0)/τ"),
    "risk_gap_first_order": (r"$G_1\tau$", "G₁τ"),
    "flip_rate": (r"flip rate", "flip rate"),
    "mass_over_2w": (r"$\beta(w)/2w$", "β(w)/2w"),
    "G1": (r"$G_1$", "G₁"),
    "psi0": (r"$\psi(0)$", "ψ(0)"),
    "final_risk": (r"$L_\tau(\theta_T)$", "L_τ(θ_T)"),
    "final_alignment": (r"$|\cos(\theta_T, u)|$", "|cos(θ_T, u)|"),
    "router_norm": (r"$|\theta_T|$", "|θ_T|"),
    "gate_entropy": (r"$\overline{H}(\pi_1)$", "mean H(π₁)"),
    "step": (r"step $t$", "step t"),
    "alignment_deficit": (r"$1 - |\cos(\theta_t, u)|$", "1 − |cos(θ_t, u)|"),
    "alignment_step1": (r"$|\cos(\theta_1, u)|$", "|cos(θ₁, u)|"),
    "steps_to_align": (r"steps to align", "steps to align"),
    "risk": (r"$L_\tau(\theta_t)$", "L_τ(θ_t)"),
    "student_contrast": (r"$\varepsilon$", "ε"),
    "taus": (r"$\tau$", "τ"),
    "offsets": (r"$o$", "o"),
    "anisotropy": (r"$a$", "a"),
}

_SUFFIXES = (("_first_order", " (first order)", " (first order)"), ("_exact", " (exact)", " (exact)"),
             ("_paper", " (paper)", " (paper)"), ("_stderr", " s.e.", " s.e."))


def _split(column: str) -> tuple[str, int]:
    if column in SYMBOLS:
        return column, -1
    for i, (suffix, _, _) in enumerate(_SUFFIXES):
        if column.endswith(suffix) and column[: -len(suffix)] in SYMBOLS:
            return column[: -len(suffix)], i
    return column, -2


def latex_label(column: str) -> str:
    """LaTeX (and matplotlib mathtext) label of ``column``, e.g. ``risk_gap_exact`` → ``$L_\\tau - L_0$ (exact)``."""
    base, i = _split(column)
    if i == -2:
        return column.replace("_", r"\_")
    return SYMBOLS[base][0] + ("" if i < 0 else _SUFFIXES[i][1])


def plot_label(column: str) -> str:
    """Matplotlib label of ``column``: the mathtext symbol, or the name with spaces for underscores."""
    base, i = _split(column)
    return column.replace("_", " ") if i == -2 else latex_label(column)


def text_label(column: str) -> str:
    """Plain Unicode label of ``column`` (HTML, terminal), e.g. ``boundary_mass`` → ``β(2τ)``."""
    base, i = _split(column)
    if i == -2:
        return column.replace("_", " ")
    return SYMBOLS[base][1] + ("" if i < 0 else _SUFFIXES[i][2])


def round_to_error(value: float, stderr: float | None) -> tuple[str, str | None]:
    """``value`` and ``stderr`` as decimal strings: the error to two significant digits, the value to the
    same decimal place (``0.67251, 0.1032`` → ``"0.67", "0.10"``). Without a usable error, up to four
    significant digits (``"0.02"``, ``"0.03191"``, ``"1.234e-05"``) and ``None``."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value), None
    if stderr is None or not isinstance(stderr, (int, float)) or not math.isfinite(stderr) or stderr <= 0:
        text = f"{value:.4g}"
        if "e" not in text and float(text) != value and float(text).is_integer():  # 0.99996 is not "1"
            text = f"{value:.6g}"
        return text, None
    se = float(f"{stderr:.2g}")
    decimals = 1 - math.floor(math.log10(se))
    if decimals >= 0:
        return f"{value:.{decimals}f}", f"{se:.{decimals}f}"
    q = 10.0 ** (-decimals)
    return f"{round(value / q) * q:.0f}", f"{round(se / q) * q:.0f}"


def cell_parts(row: dict, column: str) -> tuple[str, str | None] | None:
    """A table cell as ``(value, error)`` strings: ``column`` rounded to its ``_stderr`` (:func:`round_to_error`);
    an ``_exact`` or ``_first_order`` value beside an estimate to one more decimal place than the estimate; an
    int as it is. ``None`` for a value that is not a number."""
    value = row.get(column)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return str(value), None
    base = next((column[: -len(s)] for s in ("_exact", "_first_order") if column.endswith(s)), None)
    if base is not None and math.isfinite(value):
        est, se = row.get(base), row.get(f"{base}_stderr")
        if isinstance(est, float) and math.isfinite(est):
            v, e = round_to_error(est, se)
            if e is not None and "e" not in v:
                d = (len(v.split(".")[1]) if "." in v else 0) + 1
                if d <= 8:
                    return f"{value:.{d}f}", None
    return round_to_error(value, row.get(f"{column}_stderr"))


def latex_cell(row: dict, column: str) -> str:
    r""":func:`cell_parts` for LaTeX: ``$0.0316 \pm 0.0021$``, ``$1.234\times 10^{-5}$``, or escaped text."""
    parts = cell_parts(row, column)
    if parts is None:
        return str(row.get(column, "")).replace("_", r"\_")
    v, se = parts
    if "e" in v:
        mant, exp = v.split("e")
        v = rf"{mant}\times 10^{{{int(exp)}}}"
    return f"${v}$" if se is None else rf"${v} \pm {se}$"
