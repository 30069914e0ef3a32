r"""§7.1 with K experts [beyond]: multi-expert top-two boundary mass, exact via Gaussian orthants.

Design: :math:`X \sim N(0, I_d)` (d ≥ 3), router rows :math:`(\cos 2\pi k/K, \sin 2\pi k/K, 0, …)` (a
Voronoi fan in the :math:`(x_1, x_2)` plane), experts :math:`h_k(x) = c_k x_3` with slopes :math:`c_k`
evenly spaced in :math:`\pm|\nabla D|/2` — every contrast is tangent to every interface. The teacher is
the hard model. Per τ: top-two mass :math:`\beta(2\tau)` (Monte Carlo and exact,
:func:`softhard.closed.boundary.boundary_mass_exact`) and the risk gap (Monte Carlo and exact by two-dimensional
quadrature, :func:`softhard.closed.fan.fan_risk_gap_exact`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import check_float, check_grid, check_int
from ..closed.fan import fan_risk_gap_exact
from ..model.experts import LinearExperts
from ..model.laws import Gaussian
from ..model.moe import MoE
from ..model.routers import LinearRouter
from ..results.table import Table
from .boundary_scaling import scaling_rows

__all__ = ["Config", "check", "run", "multi_design"]


@dataclass(frozen=True)
class Config:
    """Design values; ``samples`` and ``seed`` fix every Monte Carlo column."""

    K: int = 4
    taus: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.45, 0.6)
    d: int = 3
    contrast_gradient: float = 2.0
    width_factor: float = 2.0
    samples: int = 1 << 20
    seed: int = 73


def multi_design(K: int = 4, d: int = 3, contrast_gradient: float = 2.0) -> tuple[MoE, Gaussian]:
    """The K-expert model and law of this module's docstring."""
    if K < 2 or d < 3:
        raise ValueError(f"The 'K' and 'd' parameters of the K-expert design must be K >= 2 and d >= 3. "
                         f"Got K={K!r}, d={d!r}.")
    ang = 2 * math.pi * torch.arange(K, dtype=torch.float64) / K
    W = torch.zeros(K, d, dtype=torch.float64)
    W[:, 0], W[:, 1] = torch.cos(ang), torch.sin(ang)
    E = torch.zeros(K, d, dtype=torch.float64)
    E[:, 2] = torch.linspace(-contrast_gradient / 2, contrast_gradient / 2, K, dtype=torch.float64)
    return MoE(LinearRouter(W), LinearExperts(E)), Gaussian.standard(d)


def check(config: Config) -> None:
    """Raise ``ValueError``/``TypeError`` (the project's template) for a config that cannot run."""
    where = "table1_multi"
    check_int(config.K, "K", where, low=2)
    check_int(config.d, "d", where, low=3)
    check_grid(config.taus, "taus", where, low=0.0, low_open=True)
    check_float(config.contrast_gradient, "contrast_gradient", where, 0.0)
    check_float(config.width_factor, "width_factor", where, 0.0)
    check_int(config.samples, "samples", where, low=2)


def run(config: Config = Config(), progress: bool = False) -> Table:
    """Compute ``table1_multi`` for ``config``."""
    check(config)
    moe, law = multi_design(config.K, config.d, config.contrast_gradient)
    rows = scaling_rows(moe, law, config.taus, config, False, "table1_multi", progress)
    gap_exact = fan_risk_gap_exact(config.K, [r["tau"] for r in rows], config.contrast_gradient)
    for r, g in zip(rows, gap_exact):
        r["K"] = config.K
        r["risk_gap_exact"] = float(g)
        r["gap_over_tau_exact"] = float(g) / r["tau"]
    cols = ["K", "tau", "boundary_mass", "boundary_mass_stderr", "boundary_mass_exact", "risk_gap", "risk_gap_stderr",
            "risk_gap_exact", "gap_over_tau", "gap_over_tau_stderr", "gap_over_tau_exact"]
    meta = {"design": {"K": config.K, "router": "rows (cos 2πk/K, sin 2πk/K, 0, …)",
                       "experts": "h_k = c_k x_3, c_k evenly spaced in ±|∇D|/2", "law": f"N(0, I_{config.d})",
                       "boundary_mass": f"β({config.width_factor:g}·τ)",
                       "boundary_mass_exact": "Gaussian orthant probabilities (Genz)",
                       "risk_gap_exact": "two-dimensional quadrature over the router's plane "
                                         "(softhard.closed.fan)"}}
    meta["tex_columns"] = ["tau", "boundary_mass", "boundary_mass_exact", "risk_gap", "risk_gap_exact", "gap_over_tau"]
    return Table("table1_multi", cols, rows, meta)
