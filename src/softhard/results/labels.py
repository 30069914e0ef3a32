r"""The paper's symbols for result columns, and numbers rounded to their standard error.

One vocabulary for every output: LaTeX headers (``$\beta(2\tau)$``), matplotlib mathtext axis labels
(the same strings) and plain-text labels for HTML and the terminal (``β(2τ)``). A column without a
symbol falls back to its name with underscores as spaces. Suffixes ``_exact``, ``_first_order``,
``_paper``, ``_stderr`` qualify the base column's symbol.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

__all__ = ["SYMBOLS", "KEYS", "REFERENCE", "Cell", "latex_label", "plot_label", "text_label", "html_label",
           "html_math", "round_to_error", "cell_parts", "latex_cell", "column_cells"]

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


# columns that index the rows (shown as given, never rounded to an error)
KEYS = frozenset({"tau", "offset", "K", "taus", "offsets", "anisotropy", "student_contrast", "step", "layer"})
# exact constants shown beside an estimate of the same limit: one more digit than that estimate, like `_exact`
REFERENCE = {"G1": "gap_over_tau", "psi0": "mass_over_2w"}
_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def html_math(text) -> str:
    r"""Plain text with the paper's notation, escaped for HTML, with subscripts as ``<sub>``: ``L_τ − L_0`` →
    ``L<sub>τ</sub> − L<sub>0</sub>``, ``h_1,2`` → ``h<sub>1,2</sub>``, ``I_{d}`` → ``I<sub>d</sub>``. Only a single
    letter takes a subscript, so ``snake_case`` words and file names are left alone."""
    out = html.escape(str(text))
    out = re.sub(r"(?<![A-Za-z0-9_.\-/])([A-Za-zα-ωΑ-Ω])_(\{[^}]+\}|[0-9]+(?:,[0-9]+)?|[A-Za-zα-ωΑ-Ω]+)"
                 r"(?![A-Za-z0-9_])",
                 lambda m: f"{m.group(1)}<sub>{m.group(2).strip('{}')}</sub>", out)
    return out


def html_label(column: str) -> str:
    """HTML label of ``column`` (:func:`text_label` with subscripts)."""
    return html_math(text_label(column))


@dataclass(frozen=True)
class Cell:
    """A formatted number: ``value`` (the mantissa when ``exponent`` is set), its ``error`` in the same units (or
    ``None``), and a power of ten shared by both (``None``: plain decimal)."""

    value: str
    error: str | None = None
    exponent: int | None = None

    def text(self) -> str:
        body = self.value if self.error is None else f"{self.value} ± {self.error}"
        if self.exponent is None:
            return body
        return (f"({body})" if self.error is not None else body) + f"e{self.exponent:+03d}"

    def html(self) -> str:
        body = self.value if self.error is None else f"{self.value} ± {self.error}"
        if self.exponent is None:
            return body
        power = f"10<sup>{str(self.exponent).replace('-', '−')}</sup>"
        return (f"({body})" if self.error is not None else body) + f" × {power}"

    def latex(self, concise: bool = True) -> str:
        r"""``$0.03162(17)$`` (``concise``: the error in units of the last digit) or ``$0.03162 \pm 0.00017$``; a
        power of ten as ``\times 10^{-5}``."""
        if self.error is None:
            body = self.value
        elif concise:
            places = len(self.value.split(".")[1]) if "." in self.value else 0
            body = f"{self.value}({round(float(self.error) * 10 ** places)})"
        else:
            body = rf"{self.value} \pm {self.error}"
        if self.exponent is None:
            return f"${body}$"
        if self.error is not None and not concise:
            body = f"({body})"
        return rf"${body}\times 10^{{{self.exponent}}}$"


def _usable_se(value, se) -> float | None:
    """A standard error worth printing: finite, positive and not below rounding (``1e-12 |value|``)."""
    if not isinstance(se, (int, float)) or isinstance(se, bool) or not math.isfinite(se) or se <= 0:
        return None
    return se if se > 1e-12 * abs(value) else None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _sig_digits(text: str) -> int:
    digits = text.replace("-", "").replace(".", "").lstrip("0")
    return max(1, len(digits))


def column_cells(rows: list[dict], column: str) -> list[Cell | None]:
    """One format for a whole column (``None`` for a cell with no number):

    - an index column (:data:`KEYS`) and ints as given;
    - values with a standard error (``column_stderr``): the error to two significant digits, the value to the same
      decimal place (:func:`round_to_error`);
    - an ``_exact``/``_first_order`` column, or a constant of :data:`REFERENCE`, beside an estimate: one digit
      more than that estimate (the most any row needs), else six significant digits, as for an estimate whose
      error vanished below rounding; other values without an error: four significant digits (more where a value
      would otherwise read as a whole number it is not);
    - fixed-point with the same number of decimals down the column when every value is in [0.001, 10⁶) (errors
      aside); otherwise the whole column in powers of ten, each cell with its own exponent.
    """
    vals = [r.get(column) for r in rows]
    if column in KEYS or all(isinstance(v, int) and not isinstance(v, bool) or v is None for v in vals):
        return [None if not _finite(v) else Cell(f"{v:g}" if isinstance(v, float) else str(v)) for v in vals]
    ses = [(_usable_se(v, r.get(f"{column}_stderr")) if _finite(v) else None) for v, r in zip(vals, rows)]
    base = REFERENCE.get(column) or next((column[: -len(x)] for x in ("_exact", "_first_order")
                                          if column.endswith(x)), None)
    finite = [abs(v) for v in vals if _finite(v) and v != 0]
    sci = bool(finite) and (min(finite) < 1e-3 or max(finite) >= 1e6)

    def ref_digits(r) -> int | None:
        """Significant digits (sci) or decimals (fixed) of the estimate this column sits beside, plus one."""
        if base is None or not _finite(r.get(base)):
            return None
        est, se = r[base], _usable_se(r[base], r.get(f"{base}_stderr"))
        if se is None:
            return None
        if sci and est != 0:
            e = math.floor(math.log10(abs(est)))
            v, _ = round_to_error(est / 10 ** e, se / 10 ** e)
            return _sig_digits(v) + 1
        v, _ = round_to_error(est, se)
        return (len(v.split(".")[1]) if "." in v else 0) + 1

    cells: list[Cell | None] = []
    plain = [(i, v) for i, (v, se) in enumerate(zip(vals, ses)) if _finite(v) and se is None]
    # exact values (a closed form, or an estimate whose error vanished below rounding) get six digits, others four
    vanished = any(_finite(r.get(f"{c}_stderr")) and _usable_se(r.get(c, 0.0) or 0.0, r.get(f"{c}_stderr")) is None
                   for r in rows for c in (column, base) if c)
    default = 6 if base is not None or vanished else 4
    need = [ref_digits(rows[i]) for i, _ in plain]
    if sci:
        sig = min(8, max([n for n in need if n] or [default]))
    else:
        own = [max(0, default - 1 - math.floor(math.log10(abs(v)))) if v else 0 for _, v in plain]
        dec = min(8, max([n if n is not None else o for n, o in zip(need, own)] or [0]))
        while dec < 8 and any(not float(v).is_integer() and float(f"{v:.{dec}f}").is_integer() for _, v in plain):
            dec += 1  # 0.99997 is not "1.000"
    for v, se in zip(vals, ses):
        if not _finite(v):
            cells.append(None)
        elif sci:
            e = math.floor(math.log10(abs(v))) if v else 0
            if se is not None:
                m, err = round_to_error(v / 10 ** e, se / 10 ** e)
                cells.append(Cell(m, err, e))
            else:
                cells.append(Cell(f"{v / 10 ** e:.{sig - 1}f}", None, e))
        elif se is not None:
            cells.append(Cell(*round_to_error(v, se)))
        else:
            cells.append(Cell(f"{v:.{dec}f}"))
    return cells
