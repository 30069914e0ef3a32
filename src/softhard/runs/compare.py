r"""Our tables beside the paper's printed values (:mod:`softhard.experiments.paper`), joined by column name.

For every printed column ``c`` that our table has, :func:`join_paper` adds ``c_paper`` (the printed value)
and ``c_paper_z``, the difference in units of our standard error,

.. math:: z = \frac{\hat c - c_{\mathrm{paper}}}{\mathrm{se}(\hat c)},

(empty where a row has no printed value or ``c`` has no standard error), at the end of the table, and a
one-line reading of each column's differences to ``meta["paper"]``. A reading is computed from the numbers,
never written in advance:

- for a ``"shape"`` table (its design constants are not printed): the trends across the rows of ours and
  the paper's, and known relations (mean gate entropy / boundary mass against its first-order value π²/12);
- **within our noise**: every :math:`|z| \le 3`;
- **an unprinted design constant**: the column depends on a constant the paper does not print (Table 2's
  flip perturbation), ours stated beside it;
- **Monte Carlo noise in the paper**: the differences are larger, but ours agree with the exact column
  (within 3 standard errors) and the paper's do not;
- **a deliberate change**: listed by the diagnostic itself in ``meta["deviations"]`` and quoted;
- otherwise the difference is flagged as unexplained.
"""

from __future__ import annotations

import math

from ..experiments.paper import PAPER, SOURCE, PaperTable
from ..results.labels import text_label
from ..results.table import Table

__all__ = ["join_paper", "Z_NOISE"]

Z_NOISE = 3.0  # |z| up to this is read as our Monte Carlo noise
ENTROPY_OVER_MASS = math.pi ** 2 / 12  # first order: E[H(π_1)] ≈ τ(π²/3)ψ(0), β(2τ) ≈ 4τψ(0)


def _decimals(printed: str) -> int:
    return len(printed.split(".")[1]) if "." in printed else 0


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _match(paper: PaperTable, key_value) -> tuple[str, ...] | None:
    if not _finite(key_value):
        return None
    for printed, values in paper.rows.items():
        if abs(float(printed) - key_value) <= 1e-9 * max(1.0, abs(key_value)):
            return values
    return None


def join_paper(table: Table) -> Table:
    """Add the ``*_paper`` and ``*_paper_z`` columns and ``meta["paper"]`` to ``table`` (in place; returned).

    A table without printed values, or without the printed key column, is returned unchanged (the latter
    with a note in ``meta["paper"]``). Re-joining replaces the earlier join.
    """
    paper = PAPER.get(table.name)
    if paper is None:
        return table
    table.columns = [c for c in table.columns if not c.endswith(("_paper", "_paper_z"))]
    info = {"source": f"{SOURCE}, Table {table.name[5:]}", "section": paper.section, "title": paper.title,
            "key": paper.key, "compare": paper.compare, "z": "(ours − paper) / our standard error", "columns": {}}
    table.meta["paper"] = info
    if paper.key not in table.columns:
        info["note"] = f"our table has no column {paper.key!r}: nothing joined"
        return table
    printed = [_match(paper, r[paper.key]) for r in table.rows]
    for j, c in enumerate(paper.columns):
        if c not in table.columns:
            info["columns"][c] = {"reading": f"not in our table (the paper prints {text_label(c)})"}
            continue
        for row, values in zip(table.rows, printed):
            p = float(values[j]) if values else None
            se = row.get(f"{c}_stderr")
            row[f"{c}_paper"] = p
            row[f"{c}_paper_z"] = ((row[c] - p) / se if p is not None and _finite(row[c]) and _finite(se) and se > 0
                                   else None)
        table.columns += [f"{c}_paper", f"{c}_paper_z"]
        decimals = max((_decimals(v[j]) for v in printed if v), default=0)
        info["columns"][c] = {"decimals": decimals, "reading": _reading(table, paper, c, decimals)}
    return table


def _trend(values: list[float], resolution: float) -> str:
    if max(values) - min(values) < resolution:
        return "flat"
    steps = [b - a for a, b in zip(values, values[1:])]
    if all(s > 0 for s in steps):
        return "rises"
    if all(s < 0 for s in steps):
        return "falls"
    return "is not monotone"


def _range(values: list[float], fmt: str = ".3g") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}–{hi:{fmt}}"


def _reading(table: Table, paper: PaperTable, c: str, decimals: int) -> str:
    rows = [r for r in table.rows if r.get(f"{c}_paper") is not None and _finite(r[c])]
    if not rows:
        return "no row of ours has a printed value beside it"
    key = text_label(paper.key)
    ours, theirs = [r[c] for r in rows], [r[f"{c}_paper"] for r in rows]
    zs = [abs(r[f"{c}_paper_z"]) for r in rows if r.get(f"{c}_paper_z") is not None]
    zmax = max(zs) if zs else None
    exact = [r.get(f"{c}_exact") for r in rows]
    has_exact = all(_finite(e) for e in exact)
    deviations = "; ".join(f"deliberate change: {d}" for d in table.meta.get("deviations", []) if isinstance(d, str))
    unprinted = paper.unprinted.get(c)
    parts = []
    if paper.compare == "shape":
        res = 10.0 ** -decimals
        t_ours, t_paper = _trend(ours, res), _trend(theirs, res)
        shape = (f"{t_paper} with {key} in both" if t_ours == t_paper else
                 f"{t_paper} with {key} in the paper, {t_ours} in ours")
        parts.append(f"shape: {shape} (ours {_range(ours, '.4g')}, paper {_range(theirs, '.4g')})")
        if c == "gate_entropy" and "boundary_mass" in table.columns:
            r_ours = [r[c] / r["boundary_mass"] for r in rows if r["boundary_mass"] > 0]
            r_paper = [r[f"{c}_paper"] / r["boundary_mass_paper"] for r in rows if r.get("boundary_mass_paper")]
            if r_ours and r_paper:
                parts.append(f"entropy/mass {_range(r_ours)} (ours), {_range(r_paper)} (paper), first order "
                             f"π²/12 = {ENTROPY_OVER_MASS:.3f}")
        parts.append(f"unprinted design constants ({unprinted or 'the design'}): compare shapes, not digits")
    elif zmax is not None and zmax <= Z_NOISE:
        parts.append(f"within our Monte Carlo noise (|z| ≤ {zmax:.1f}, {len(zs)} of {len(rows)} rows with a "
                     "standard error)" if len(zs) < len(rows) else
                     f"within our Monte Carlo noise (|z| ≤ {zmax:.1f}, {len(rows)} rows)")
        if unprinted:
            parts.append(f"it depends on {unprinted}, which the paper does not print{_ours_choice(table)}")
    elif unprinted:
        agree = _exact_agreement(rows, c) if has_exact else None
        parts.append(f"an unprinted design constant: {unprinted} (not printed in the paper){_ours_choice(table)}; "
                     + (f"|z| up to {zmax:.1f}" if zmax is not None else "no standard error")
                     + (f"; ours agree with the exact value of our design within {agree:.1f} standard errors"
                        if agree is not None and agree <= Z_NOISE else ""))
    elif has_exact and zmax is not None and (ze := _exact_agreement(rows, c)) is not None and ze <= Z_NOISE:
        rel = [(p - e) / e * 100 for p, e in zip(theirs, exact) if e]
        lo, hi = f"{min(rel):+.1f}%", f"{max(rel):+.1f}%"
        parts.append(f"Monte Carlo noise in the paper: its values lie {lo if lo == hi else f'{lo} to {hi}'} from "
                     f"the exact ones, ours within {ze:.1f} standard errors of them (|z| up to {zmax:.1f})")
    else:
        parts.append("unexplained: " + (f"|z| up to {zmax:.1f}" if zmax is not None else "no standard error")
                     + (" and ours are off the exact values too" if has_exact else " and no exact value to decide"))
    if deviations:
        parts.append(deviations)
    return "; ".join(parts)


def _exact_agreement(rows: list[dict], c: str) -> float | None:
    """Largest |ours − exact| / stderr over ``rows`` (None when a row has no positive standard error)."""
    if not all(_finite(r.get(f"{c}_stderr")) and r[f"{c}_stderr"] > 0 for r in rows):
        return None
    return max(abs(r[c] - r[f"{c}_exact"]) / r[f"{c}_stderr"] for r in rows)


def _ours_choice(table: Table) -> str:
    p = table.meta.get("perturbation")
    if isinstance(p, dict) and p:
        shown = [f"{k} = {v:g}" for k, v in p.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return f" (ours: {', '.join(shown)})" if shown else ""
    return ""
