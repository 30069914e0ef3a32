r"""§7.1 Boundary-layer scaling (Table 1, Figure 1), plus two extensions [beyond].

Design (paper §7.1): :math:`X \sim N(0, I_d)`, two experts, linear hard router :math:`g(x) = u\cdot x`
with :math:`u = e_1`, linear experts :math:`h_{1,2}(x) = \pm x_2` whose contrast :math:`D = 2x_2` is
tangent to the interface with :math:`|\nabla D| = 2`. The teacher is the hard model (:math:`L_0 = 0`);
the student is the same experts with the gate :math:`\sigma(g/\tau)`. For each τ the table reports the
boundary mass :math:`\beta(2\tau)` (2.13), the risk gap :math:`L_\tau - L_0` and gap/τ — Monte Carlo with
standard errors, the exact values (3.11) and 1-d quadrature, and the first-order prediction
:math:`G_1\tau` with :math:`G_1 = (2\ln2-1)\,\psi(0)\,E[D^2\mid g=0]` (paper.md §3 [beyond]).

Extensions are their own diagnostics: ``table1_limit`` (τ down to 1e-4 with the conditional estimator:
gap/τ → G_1 and β(2τ)/(4τ) → ψ(0), :mod:`softhard.experiments.boundary_limit`) and the K-expert version
``table1_multi`` (:mod:`softhard.experiments.boundary_multi`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._validate import check_float, check_grid, check_int
from ..closed.boundary import boundary_mass_exact, pair_density_at_zero
from ..closed.risk import risk_gap_exact
from ..estimators.reducer import Estimate
from ..model.experts import LinearExperts
from ..model.laws import Gaussian
from ..model.moe import MoE
from ..model.routers import LinearRouter
from ..quantities import gap as _gap
from ..quantities.mass import boundary_mass
from ..results.table import Table, loglog_fit

__all__ = ["Config", "check", "run", "design", "scaling_rows"]


@dataclass(frozen=True)
class Config:
    """Design values of §7.1; ``samples`` and ``seed`` fix every Monte Carlo column."""

    taus: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.45, 0.6)
    d: int = 2
    contrast_gradient: float = 2.0  # |∇D|
    width_factor: float = 2.0  # boundary mass at temperature τ is β(width_factor·τ)
    samples: int = 1 << 20
    seed: int = 71
    slope_tau_max: float = 0.2  # log–log slopes are fitted on τ <= this


def design(d: int = 2, offset: float = 0.0, contrast_gradient: float = 2.0) -> tuple[MoE, Gaussian]:
    r"""The §7.1/§7.2 model: router :math:`g(x) = x_1 - o`, experts :math:`\pm(|\nabla D|/2)\,x_2`, law N(0, I_d)."""
    if d < 2:
        raise ValueError(f"The 'd' parameter of the 7.1 design must be an int >= 2. Got {d!r}.")
    u = torch.zeros(d, dtype=torch.float64)
    u[0] = 1.0
    router = LinearRouter.binary(u, b=-offset)
    t = torch.zeros(d, dtype=torch.float64)
    t[1] = contrast_gradient / 2
    return MoE(router, LinearExperts(torch.stack([t, -t]))), Gaussian.standard(d)


def _mc_columns(prefix: str, est: Estimate, i: int) -> dict:
    return {prefix: float(np.atleast_1d(est.value)[i]), f"{prefix}_stderr": float(np.atleast_1d(est.stderr)[i])}


def scaling_rows(moe, law, taus, cfg, exact_gap: bool, desc: str, progress: bool) -> list[dict]:
    """One row per τ: β(w·τ) and L_τ − L_0 (Monte Carlo with stderr, exact where available), gap/τ.

    ``cfg`` supplies ``width_factor``, ``samples`` and ``seed``."""
    t = np.asarray(taus, dtype=np.float64)
    widths = cfg.width_factor * t
    mass = boundary_mass(moe.router, law, widths, method="mc", n=cfg.samples, seed=cfg.seed, progress=progress,
                         desc=f"{desc}: mass")
    gap = _gap.risk_gap(moe, law, t, method="mc", n=cfg.samples, seed=cfg.seed, progress=progress,
                        desc=f"{desc}: gap")
    mass_exact = boundary_mass_exact(moe.router, law, widths)
    gap_exact = risk_gap_exact(moe, law, t) if exact_gap else None
    rows = []
    for i, tau in enumerate(t):
        row = {"tau": float(tau)}
        row |= _mc_columns("boundary_mass", mass, i)
        row["boundary_mass_exact"] = float(mass_exact[i])
        row |= _mc_columns("risk_gap", gap, i)
        if exact_gap:
            row["risk_gap_exact"] = float(gap_exact[i])
        row["gap_over_tau"] = row["risk_gap"] / tau
        row["gap_over_tau_stderr"] = row["risk_gap_stderr"] / tau
        if exact_gap:
            row["gap_over_tau_exact"] = row["risk_gap_exact"] / tau
        rows.append(row)
    return rows


def check(config: Config) -> None:
    """Raise ``ValueError``/``TypeError`` (the project's template) for a config that cannot run."""
    check_design(config, "table1")
    check_float(config.slope_tau_max, "slope_tau_max", "table1", 0.0)


def check_design(config, where: str) -> None:
    """The checks shared by the §7.1 design's tables (``table1``, ``table1_limit``)."""
    check_grid(config.taus, "taus", where, low=0.0, low_open=True)
    check_int(config.d, "d", where, low=2)
    check_float(config.contrast_gradient, "contrast_gradient", where, 0.0)
    check_float(config.width_factor, "width_factor", where, 0.0)
    check_int(config.samples, "samples", where, low=2)
    check_int(config.seed, "seed", where, low=0)


def run(config: Config = Config(), progress: bool = False) -> Table:
    """Compute Table 1 for ``config``."""
    check(config)
    moe, law = design(config.d, 0.0, config.contrast_gradient)
    g1 = float(_gap.gap_slope(moe, law))
    psi0 = pair_density_at_zero(moe.router, law)
    rows = scaling_rows(moe, law, config.taus, config, True, "table1", progress)
    for r in rows:
        r["risk_gap_first_order"] = g1 * r["tau"]
    cols = ["tau", "boundary_mass", "boundary_mass_stderr", "boundary_mass_exact", "risk_gap", "risk_gap_stderr",
            "risk_gap_exact", "risk_gap_first_order", "gap_over_tau", "gap_over_tau_stderr", "gap_over_tau_exact"]
    meta = {"design": {"law": f"N(0, I_{config.d})", "router": "g(x) = x_1 (u = e_1)",
                       "experts": f"h_1,2(x) = ±{config.contrast_gradient / 2:g}·x_2 (D = h_1 − h_2 tangent, "
                                  f"|∇D| = {config.contrast_gradient:g})",
                       "teacher": "the hard-routed model itself (L_0 = 0)",
                       "boundary_mass": f"β({config.width_factor:g}·τ)"},
            "gap_slope_G1": g1, "coarea_constant_psi0": psi0}
    small = [r for r in rows if r["tau"] <= config.slope_tau_max]
    meta["slopes"] = {"tau_max": config.slope_tau_max}
    for c in ("boundary_mass", "risk_gap"):  # a slope needs 3 positive points; fewer (a one-τ sweep cell,
        pts = [r for r in small if r[c] > 0]  # a tiny sample with empty slabs) give NaN, said in the meta
        fit = loglog_fit([r["tau"] for r in pts], [r[c] for r in pts], [r[f"{c}_stderr"] for r in pts]) if len(
            pts) >= 3 else {"slope": float("nan"), "slope_stderr": float("nan")}
        meta["slopes"][c], meta["slopes"][f"{c}_stderr"] = fit["slope"], fit["slope_stderr"]
        if len(pts) < 3:
            meta["slopes"][f"{c}_note"] = f"no slope: {len(pts)} positive points with tau <= {config.slope_tau_max:g}"
    meta["tex_columns"] = ["tau", "boundary_mass", "boundary_mass_exact", "risk_gap", "risk_gap_exact", "gap_over_tau",
                           "gap_over_tau_exact"]  # fits a one-column text width (docs/reproduce.md)
    return Table("table1", cols, rows, meta)

