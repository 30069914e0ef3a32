r"""Our tables beside the paper's printed values (:mod:`softhard.experiments.paper`), joined by column name.

For every printed column ``c`` that our table has, :func:`join_paper` adds ``c_paper`` (the printed value)
and ``c_paper_z``, the difference in units of our standard error,

.. math:: z = \frac{\hat c - c_{\mathrm{paper}}}{\mathrm{se}(\hat c)},

(empty where a row has no printed value or ``c`` has no standard error), at the end of the table, and a
one-line reading of each column's differences to ``meta["paper"]`` (``reading``, the ``rule`` it applied,
and its ``evidence``). A reading is computed from the numbers, never written in advance. The rules, in the
order they are tried (:data:`RULES`):

- **shape** (a ``"shape"`` table: its design constants are not printed): the trends across the rows of ours
  and the paper's, and known relations (mean gate entropy / boundary mass against its first-order value π²/12);
- **within our noise**: every :math:`|z| \le 3`;
- **chosen to match**: the column depends on a design constant the paper does not print, and ours was chosen
  to reproduce this column (``meta["perturbation"]["chosen_to_match_paper"]``): agreement by construction,
  not evidence; what is evidence is ours against the exact value of our design;
- **an unprinted design constant**: the same, with a constant not chosen to match;
- for a column with exact values that ours agree with (every ``|ours − exact| ≤ 3`` of our standard errors),
  the paper's own differences from the exact values :math:`d_i = p_i - e_i` are weighed against the sample
  size the paper must have used. Its boundary-mass column is binomial, so its differences from the exact
  masses bound that size from below: with rounding to the printed digits (uniform, variance
  :math:`u_i^2/12`), :math:`S(n) = \sum_i d_i^2 / (\beta_i(1-\beta_i)/n + u_i^2/12)` is :math:`\chi^2_k`
  distributed at the true ``n``, and a value in the lowest 1 % (differences too small for ``n``) rules that ``n``
  out: :math:`n_{\min}` is the smallest ``n`` with :math:`P(\chi^2_k \le S(n)) \ge 0.01`. At :math:`n_{\min}`
  the paper's standard error of column ``c`` is at most :math:`\sqrt{s_i^2/n_{\min} + u_i^2/12}`, with
  :math:`s_i` our per-draw standard deviation (our standard error times :math:`\sqrt{n}`), so
  :math:`z^{\mathrm{paper}}_i = d_i / \text{that}` is a lower bound on the size of each difference in the
  paper's own noise.

  **systematic, unexplained**: the relative differences :math:`d_i/e_i` move monotonically with the key over at
  least four rows (a trend, not noise), or some :math:`|z^{\mathrm{paper}}_i| > 3`;
  **Monte Carlo noise in the paper**: neither;
- **a deliberate change**: listed by the diagnostic itself in ``meta["deviations"]`` and quoted;
- otherwise the difference is flagged as unexplained.
"""

from __future__ import annotations

import math

import numpy as np

from ..experiments.paper import PAPER, SOURCE, PaperTable
from ..results.labels import text_label
from ..results.table import Table

__all__ = ["join_paper", "implied_samples", "Z_NOISE", "RULES"]

Z_NOISE = 3.0  # |z| up to this is read as Monte Carlo noise
CHI2_LEVEL = 0.01  # the lower-tail probability below which a sample size is ruled out
ENTROPY_OVER_MASS = math.pi ** 2 / 12  # first order: E[H(π_1)] ≈ τ(π²/3)ψ(0), β(2τ) ≈ 4τψ(0)
RULES = {
    "shape": "the paper prints no design constants for this table: the trends with the key are compared, not "
             "the digits",
    "noise": f"within our Monte Carlo noise when every |z| ≤ {Z_NOISE:g}",
    "chosen": "a design constant the paper does not print, chosen by us to reproduce this column: agreement is "
              "by construction, not evidence",
    "unprinted": "a design constant the paper does not print: the digits cannot be compared",
    "systematic": f"systematic when the paper's differences from the exact values follow a trend with the key "
                  f"(monotone over ≥ 4 rows) or exceed {Z_NOISE:g} of its own standard errors at the least sample "
                  f"size its boundary-mass column allows",
    "paper_noise": f"Monte Carlo noise in the paper when its differences from the exact values show no trend "
                   f"and are within {Z_NOISE:g} of its own standard errors at that sample size",
    "unexplained": f"unexplained when |z| > {Z_NOISE:g} and no exact value or design constant accounts for it",
}


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
            "key": paper.key, "compare": paper.compare, "z": "(ours − paper) / our standard error", "columns": {},
            "rules": RULES}
    table.meta["paper"] = info
    if paper.key not in table.columns:
        info["note"] = f"our table has no column {paper.key!r}: nothing joined"
        return table
    printed = [_match(paper, r[paper.key]) for r in table.rows]
    for j, c in enumerate(paper.columns):
        if c not in table.columns:
            info["columns"][c] = {"reading": f"not in our table (the paper prints {text_label(c)})", "rule": None}
            continue
        for row, values in zip(table.rows, printed):
            p = float(values[j]) if values else None
            se = row.get(f"{c}_stderr")
            row[f"{c}_paper"] = p
            row[f"{c}_paper_z"] = ((row[c] - p) / se if p is not None and _finite(row[c]) and _finite(se) and se > 0
                                   else None)
        table.columns += [f"{c}_paper", f"{c}_paper_z"]
        decimals = max((_decimals(v[j]) for v in printed if v), default=0)
        col = {"decimals": decimals, "printed": [v[j] if v else None for v in printed]}
        col.update(_reading(table, paper, c, decimals))
        if c in paper.headings:
            col["heading"] = paper.headings[c]
        info["columns"][c] = col
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


def _pct(v: float) -> str:
    return f"{v:+.1f} %".replace("-", "−")


def implied_samples(printed: list[float], exact: list[float], decimals: int) -> float | None:
    r"""The least sample size a printed binomial column (a boundary mass) allows, at 99 %: the smallest ``n`` with
    :math:`P(\chi^2_k \le S(n)) \ge 0.01`, :math:`S(n) = \sum_i d_i^2 / (e_i(1-e_i)/n + u^2/12)`, ``u`` the
    printed unit (module docstring). ``None`` with fewer than two usable rows."""
    from scipy.stats import chi2

    u2 = (10.0 ** -decimals) ** 2 / 12
    pts = [(p - e, e * (1 - e)) for p, e in zip(printed, exact) if _finite(p) and _finite(e) and 0 < e < 1]
    if len(pts) < 2:
        return None
    d2, v = (np.array(x) for x in zip(*[(d * d, v) for d, v in pts]))
    q = float(chi2.ppf(CHI2_LEVEL, len(pts)))  # S(n) increases with n: the least n with S(n) >= q

    def S(n: float) -> float:
        return float(np.sum(d2 / (v / n + u2)))

    lo, hi = 1.0, 1e15
    if S(hi) < q:  # even exact values rounded to the printed digits would not fit that well
        return None
    if S(lo) >= q:
        return lo
    while hi / lo > 1.001:  # bisection on log n
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if S(mid) >= q else (mid, hi)
    return hi


def _paper_noise(table: Table, paper: PaperTable, c: str, rows: list[dict], decimals: int) -> dict | None:
    """The paper's differences from the exact values of column ``c`` in its own noise (module docstring)."""
    mass = "boundary_mass"
    if mass not in paper.columns or f"{mass}_exact" not in table.columns:
        return None
    j = paper.columns.index(mass)
    printed = [_match(paper, r[paper.key]) for r in table.rows]
    m_dec = max((_decimals(v[j]) for v in printed if v), default=0)
    n_min = implied_samples([float(v[j]) if v else math.nan for v in printed],
                            [r.get(f"{mass}_exact", math.nan) for r in table.rows], m_dec)
    n_ours = table.meta.get("samples")
    if n_min is None or not isinstance(n_ours, int) or n_ours < 2:
        return None
    u2 = (10.0 ** -decimals) ** 2 / 12
    z = []
    for r in rows:
        sd = r[f"{c}_stderr"] * math.sqrt(n_ours)
        z.append((r[f"{c}_paper"] - r[f"{c}_exact"]) / math.sqrt(sd * sd / n_min + u2))
    dev = [abs(r[f"{mass}_paper"] - r[f"{mass}_exact"]) for r in table.rows
           if _finite(r.get(f"{mass}_paper")) and _finite(r.get(f"{mass}_exact"))]
    return {"n_min": n_min, "z": z, "mass_dev": max(dev) if dev else None}


def _reading(table: Table, paper: PaperTable, c: str, decimals: int) -> dict:
    """``{"reading", "rule", "evidence"}`` for column ``c`` (module docstring)."""
    rows = [r for r in table.rows if r.get(f"{c}_paper") is not None and _finite(r[c])]
    if not rows:
        return {"reading": "no row of ours has a printed value beside it", "rule": None}
    key = text_label(paper.key)
    ours, theirs = [r[c] for r in rows], [r[f"{c}_paper"] for r in rows]
    zs = [abs(r[f"{c}_paper_z"]) for r in rows if r.get(f"{c}_paper_z") is not None]
    zmax = max(zs) if zs else None
    exact = [r.get(f"{c}_exact") for r in rows]
    has_exact = all(_finite(e) for e in exact)
    deviations = [f"deliberate change: {d}" for d in table.meta.get("deviations", []) if isinstance(d, str)]
    unprinted = paper.unprinted.get(c)
    pert = table.meta.get("perturbation") if isinstance(table.meta.get("perturbation"), dict) else {}
    if pert and "chosen_to_match_paper" not in pert and "why_default" in pert:  # written before the flag existed
        from ..experiments.boundary_geometry import Config as _Geometry

        pert = {**pert, "chosen_to_match_paper": (pert.get("angle_rad"), pert.get("score_shift")) == (
            _Geometry.flip_angle, _Geometry.flip_shift)}
    evidence: dict = {}
    if paper.compare == "shape":
        res = 10.0 ** -decimals
        t_ours, t_paper = _trend(ours, res), _trend(theirs, res)
        shape = (f"{t_paper} with {key} in both" if t_ours == t_paper else
                 f"{t_paper} with {key} in the paper, {t_ours} in ours")
        parts = [f"shape: {shape} (ours {_range(ours, '.4g')}, paper {_range(theirs, '.4g')})"]
        if c == "gate_entropy" and "boundary_mass" in table.columns:
            r_ours = [r[c] / r["boundary_mass"] for r in rows if r["boundary_mass"] > 0]
            r_paper = [r[f"{c}_paper"] / r["boundary_mass_paper"] for r in rows if r.get("boundary_mass_paper")]
            if r_ours and r_paper:
                parts.append(f"entropy/mass {_range(r_ours)} (ours), {_range(r_paper)} (paper), first order "
                             f"π²/12 = {ENTROPY_OVER_MASS:.3f}")
        parts.append(f"unprinted design constants ({unprinted or 'the design'}): compare shapes, not digits")
        rule = "shape"
    elif unprinted and pert.get("chosen_to_match_paper"):
        agree = _exact_agreement(rows, c) if has_exact else None
        parts = [f"agreement by construction: the paper does not print {unprinted}; ours "
                 f"({_perturbation_words(pert)}) was chosen to reproduce this column, so its "
                 + (f"|z| ≤ {zmax:.1f}" if zmax is not None else "agreement") + " is not evidence"]
        if agree is not None:
            parts.append(f"the evidence is ours against the exact flip probability of our perturbation: within "
                         f"{agree:.1f} standard errors (rule: ≤ {Z_NOISE:g})")
        rule = "chosen"
    elif zmax is not None and zmax <= Z_NOISE:
        parts = [f"within our Monte Carlo noise: |z| ≤ {zmax:.1f} at "
                 + (f"{len(zs)} of {len(rows)} rows with a standard error" if len(zs) < len(rows) else
                    f"all {len(rows)} rows") + f" (rule: every |z| ≤ {Z_NOISE:g})"]
        if unprinted:
            parts.append(f"it depends on {unprinted}, which the paper does not print; ours: "
                         f"{_perturbation_words(pert)}")
        rule = "noise"
    elif unprinted:
        agree = _exact_agreement(rows, c) if has_exact else None
        parts = [f"an unprinted design constant: {unprinted} (not printed in the paper; ours: "
                 f"{_perturbation_words(pert)}, not chosen to match); "
                 + (f"|z| up to {zmax:.1f}" if zmax is not None else "no standard error")
                 + (f"; ours agree with the exact value of our design within {agree:.1f} standard errors"
                    if agree is not None and agree <= Z_NOISE else "")]
        rule = "unprinted"
    elif has_exact and zmax is not None and (ze := _exact_agreement(rows, c)) is not None and ze <= Z_NOISE:
        rel = [(p - e) / e * 100 for p, e in zip(theirs, exact) if e]
        trend = _trend(rel, 0.0) if len(rel) >= 4 else "is not monotone"
        noise = _paper_noise(table, paper, c, rows, decimals)
        evidence = {"paper_minus_exact_percent": rel, "trend": trend}
        systematic = trend in ("rises", "falls")
        if noise is not None:
            zp = max(abs(z) for z in noise["z"])
            evidence.update(n_min=noise["n_min"], paper_z_at_n_min=noise["z"])
            systematic = systematic or zp > Z_NOISE
            size = (f"its {text_label('boundary_mass')} column (within {noise['mass_dev']:.4f} of exact at every "
                    f"{key}) implies at least {_sci(noise['n_min'])} draws (99 % lower bound), at which the largest "
                    f"difference is {zp:.1f} of its standard errors")
        else:
            size = "no binomial column bounds its sample size"
        listed = ", ".join(_pct(v) for v in rel)
        if systematic:
            parts = [f"systematic, unexplained: the paper's values lie {_pct(min(rel))} to {_pct(max(rel))} from the "
                     f"exact ones ({listed} at {key} = {', '.join(f'{r[paper.key]:g}' for r in rows)})"
                     + (f", a trend that {trend} steadily with {key}" if trend in ("rises", "falls") else "")
                     + f"; {size}; not Monte Carlo noise",
                     f"ours agree with the exact values within {ze:.1f} standard errors (|z| against the paper up "
                     f"to {zmax:.1f})"]
            rule = "systematic"
        else:
            parts = [f"Monte Carlo noise in the paper: its values lie {_pct(min(rel))} to {_pct(max(rel))} from the "
                     f"exact ones, with no trend in {key}; {size}",
                     f"ours agree with the exact values within {ze:.1f} standard errors (|z| against the paper up "
                     f"to {zmax:.1f})"]
            rule = "paper_noise"
    else:
        parts = ["unexplained: " + (f"|z| up to {zmax:.1f}" if zmax is not None else "no standard error")
                 + (" and ours are off the exact values too" if has_exact else " and no exact value to decide")]
        rule = "unexplained"
    return {"reading": "; ".join(parts + deviations), "rule": rule, "evidence": evidence}


def _sci(n: float) -> str:
    e = math.floor(math.log10(n))
    return f"{n / 10 ** e:.1f}×10{str(e).translate(str.maketrans('0123456789-', '⁰¹²³⁴⁵⁶⁷⁸⁹⁻'))}"


def _exact_agreement(rows: list[dict], c: str) -> float | None:
    """Largest |ours − exact| / stderr over ``rows`` (None when a row has no positive standard error)."""
    if not all(_finite(r.get(f"{c}_stderr")) and r[f"{c}_stderr"] > 0 for r in rows):
        return None
    return max(abs(r[c] - r[f"{c}_exact"]) / r[f"{c}_stderr"] for r in rows)


def _perturbation_words(p: dict) -> str:
    """``rotation α = 0.08 rad, no shift`` from the perturbation metadata of Table 2."""
    if not p:
        return "not recorded"
    angle, shift = p.get("angle_rad"), p.get("score_shift")
    words = []
    if _finite(angle):
        words.append(f"a rotation of the router normal by α = {angle:g} rad")
    if _finite(shift):
        words.append("no shift" if shift == 0 else f"a score shift of {shift:g}")
    return ", ".join(words) or "not recorded"
