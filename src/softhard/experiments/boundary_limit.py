r"""Table 1 as τ → 0 [beyond]: gap/τ → :math:`G_1` and :math:`\beta(w)/2w \to \psi(0)` (``table1_limit``).

The §7.1 design (:func:`softhard.experiments.boundary_scaling.design`) at temperatures down to 1e-4. Plain
Monte Carlo cannot see these limits: at τ = 1e-3 the slab :math:`|g| \le 2\tau` holds one draw in 300 and a
shared sample puts every point on one side of the curve. So the sampled columns use the **conditional**
estimator (:mod:`softhard.estimators.conditional`: the inputs are integrated exactly across the interface
and sampled along it; ``samples`` is its budget, it stops once the relative standard error of every column
is below ``target_rel_error``), beside the exact values — (3.11) for the mass, 1-d quadrature for the gap — and the limits

.. math:: \lim_{\tau\to0} \frac{L_\tau - L_0}{\tau} = G_1 = (2\ln2-1)\,\psi(0)\,E[D^2\mid g=0], \qquad
          \lim_{w\to0} \frac{\beta(w)}{2w} = \psi(0) = \varphi(0)

(paper.md §3 [beyond], Prop. 3.5), with :math:`w = 2\tau`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._validate import check_float
from ..closed.boundary import boundary_mass_exact, pair_density_at_zero
from ..closed.risk import risk_gap_exact
from ..quantities import gap as _gap
from ..quantities.mass import boundary_mass
from ..results.table import Table
from .boundary_scaling import check_design, design

__all__ = ["Config", "check", "run"]


@dataclass(frozen=True)
class Config:
    """Temperatures and design values; ``samples`` (the conditional estimator's budget) and ``seed`` fix the
    sampled columns."""

    taus: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
    d: int = 2
    contrast_gradient: float = 2.0
    width_factor: float = 2.0
    samples: int = 1 << 20  # the budget of the conditional estimator
    seed: int = 71
    target_rel_error: float = 1e-3


def check(config: Config) -> None:
    """Raise ``ValueError``/``TypeError`` (the project's template) for a config that cannot run."""
    check_design(config, "table1_limit")
    check_float(config.target_rel_error, "target_rel_error", "table1_limit", 0.0, 1.0)


def run(config: Config = Config(), progress: bool = False) -> Table:
    """Compute ``table1_limit`` for ``config``: one row per τ (columns in the module docstring)."""
    check(config)
    moe, law = design(config.d, 0.0, config.contrast_gradient)
    taus = [float(t) for t in config.taus]
    widths = [config.width_factor * t for t in taus]
    g1 = float(_gap.gap_slope(moe, law, method="exact"))
    psi0 = float(pair_density_at_zero(moe.router, law))
    budget = {"n": config.samples, "seed": config.seed, "method": "conditional",
              "target_rel_error": config.target_rel_error}
    gap = _gap.risk_gap(moe, law, taus, **budget)
    mass = boundary_mass(moe.router, law, widths, **budget)
    gap_exact = risk_gap_exact(moe, law, taus)
    mass_exact = boundary_mass_exact(moe.router, law, widths)
    rows = []
    for i, (t, w) in enumerate(zip(taus, widths)):
        g, gs, m, ms = (float(gap.value[i]), float(gap.stderr[i]), float(mass.value[i]), float(mass.stderr[i]))
        rows.append({"tau": t, "gap_over_tau": g / t, "gap_over_tau_stderr": gs / t,
                     "gap_over_tau_exact": float(gap_exact[i]) / t, "G1": g1,
                     "mass_over_2w": m / (2 * w), "mass_over_2w_stderr": ms / (2 * w),
                     "mass_over_2w_exact": float(mass_exact[i]) / (2 * w), "psi0": psi0,
                     "risk_gap": g, "risk_gap_stderr": gs, "risk_gap_exact": float(gap_exact[i]),
                     "boundary_mass": m, "boundary_mass_stderr": ms, "boundary_mass_exact": float(mass_exact[i])})
    cols = ["tau", "gap_over_tau", "gap_over_tau_stderr", "gap_over_tau_exact", "G1", "mass_over_2w",
            "mass_over_2w_stderr", "mass_over_2w_exact", "psi0", "risk_gap", "risk_gap_stderr", "risk_gap_exact",
            "boundary_mass", "boundary_mass_stderr", "boundary_mass_exact"]
    meta = {"design": {"law": f"N(0, I_{config.d})", "router": "g(x) = x_1 (u = e_1)",
                       "experts": f"h_1,2(x) = ±{config.contrast_gradient / 2:g}·x_2 (tangent contrast)",
                       "teacher": "the hard-routed model itself (L_0 = 0)",
                       "boundary_mass": f"β(w), w = {config.width_factor:g}·τ"},
            "method": {"risk_gap": gap.method, "boundary_mass": mass.method,
                       "samples_used": {"risk_gap": int(gap.n), "boundary_mass": int(mass.n)},
                       "target_rel_error": config.target_rel_error},
            "note": "gap/τ → G_1 and β(w)/(2w) → ψ(0) as τ → 0 (w = 2τ); sampled columns: the conditional "
                    "estimator",
            "G1": g1, "psi0": psi0}
    meta["tex_columns"] = ["tau", "gap_over_tau", "gap_over_tau_exact", "mass_over_2w", "mass_over_2w_exact"]
    return Table("table1_limit", cols, rows, meta)
