"""The paper's printed values for Tables 1–3 (arXiv 2605.02124 v2, §7), as printed — the one copy in softhard.

Data only: ``softhard reproduce`` joins them to our tables by column name (:mod:`softhard.runs.compare`)
and writes ``<column>_paper`` beside each of our columns. The numbers are kept as the printed strings, so
that the printed precision is known; each is copied as printed, never recomputed from another printed
value (Table 1's (L_τ − L_0)/τ at τ = 0.2 is printed 0.5994, although 0.11989/0.2 = 0.59945). Never tune a
design to them; the one design constant chosen to match a column (Table 2's flip perturbation, which the
paper does not print) says so in its table's metadata and on the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PaperTable", "PAPER", "SOURCE"]

SOURCE = ("R. Rastegar, Soft-to-Hard Routing in Sparse Mixture-of-Experts Models, arXiv 2605.02124 v2 (2026), "
          "§7")


@dataclass(frozen=True)
class PaperTable:
    """One printed table: ``rows`` maps the key value (as printed) to the printed values of ``columns``.

    ``compare`` is ``"digits"`` (the same design: compare the numbers) or ``"shape"`` (the paper's design
    constants are not printed: compare trends and relations, not digits). ``unprinted`` names, per column,
    the design constant the paper does not print and on which the column depends. ``headings`` says, per
    column, how we read a heading the paper's text does not give (shown beside the column).
    """

    section: str
    title: str
    key: str
    columns: tuple[str, ...]
    rows: dict[str, tuple[str, ...]]
    compare: str = "digits"
    unprinted: dict[str, str] = field(default_factory=dict)
    headings: dict[str, str] = field(default_factory=dict)


PAPER: dict[str, PaperTable] = {
    "table1": PaperTable(
        "§7.1", "Boundary-layer scaling", "tau", ("boundary_mass", "risk_gap", "gap_over_tau"),
        {"0.02": ("0.0317", "0.01161", "0.5805"),
         "0.05": ("0.0797", "0.02969", "0.5938"),
         "0.1": ("0.1587", "0.05994", "0.5994"),
         "0.2": ("0.3116", "0.11989", "0.5994"),
         "0.45": ("0.6327", "0.26180", "0.5818"),
         "0.6": ("0.7700", "0.33880", "0.5647")}),
    "table2": PaperTable(
        "§7.2", "Controlled boundary geometry", "offset", ("boundary_mass", "risk_gap", "flip_rate"),
        {"0.00": ("0.1590", "0.06063", "0.0252"),
         "0.50": ("0.1405", "0.05407", "0.0226"),
         "1.00": ("0.0966", "0.03691", "0.0154"),
         "1.50": ("0.0523", "0.01996", "0.0084"),
         "2.00": ("0.0220", "0.00846", "0.0035"),
         "2.25": ("0.0130", "0.00489", "0.0020")},
        unprinted={"flip_rate": "the router perturbation of the stress test"}),
    "table3": PaperTable(
        "§7.3", "Reduced symmetry breaking", "tau",
        ("final_risk", "final_alignment", "router_norm", "boundary_mass", "gate_entropy"),
        {"0.05": ("1.2601", "1.000", "1.430", "0.056", "0.046"),
         "0.10": ("1.2748", "1.000", "1.997", "0.080", "0.065"),
         "0.20": ("1.2960", "1.000", "2.780", "0.114", "0.093"),
         "0.40": ("1.3268", "1.000", "3.840", "0.163", "0.133")},
        compare="shape",
        unprinted={c: "Σ, β₀, c, the student contrast, η, the number of steps and θ₀" for c in
                   ("final_risk", "final_alignment", "router_norm", "boundary_mass", "gate_entropy")},
        headings={"router_norm": "the printed table's heading of this column did not survive in the paper's text; "
                                 "|θ_T|, the norm of the trained router (§7.3 lists the router norm |θ| among "
                                 "the reported quantities), is our reading of it"}),
}
