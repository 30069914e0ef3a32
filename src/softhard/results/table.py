"""Tidy tables (the one result type of the diagnostics, the landscape and the sweeps) and the log–log fit
used to read slopes off them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._validate import fail

__all__ = ["Table", "loglog_fit"]


@dataclass
class Table:
    """A tidy table: ``rows`` (one dict per row, same keys in ``columns`` order) plus metadata.

    ``meta`` holds everything needed to re-read and re-render the table: the config, seed, sample
    size, package version, timing and any design values (e.g. the perturbation used for a flip rate).
    Extra tables (e.g. a τ sweep beside table1) go to ``extras`` under their own names.
    """

    name: str
    columns: list[str]
    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, "Table"] = field(default_factory=dict)

    def column(self, key: str) -> list:
        return [r[key] for r in self.rows]


def loglog_fit(x, y, stderr=None) -> dict[str, float]:
    r"""Least-squares fit of :math:`\log y = a + s \log x`; returns ``{"slope", "slope_stderr", "intercept"}``.

    With ``stderr`` (of ``y``), points are weighted by :math:`(y/\mathrm{se})^2` (delta method on
    :math:`\log y`). Needs at least 3 positive points (``ValueError`` otherwise).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = (x > 0) & (y > 0)
    if keep.sum() < 3:
        fail("y", "loglog_fit", "at least 3 positive points", y)
    lx, ly = np.log(x[keep]), np.log(y[keep])
    w = np.ones_like(lx) if stderr is None else (y[keep] / np.maximum(np.asarray(stderr, float)[keep], 1e-300)) ** 2
    A = np.stack([np.ones_like(lx), lx], axis=1)
    Aw = A * w[:, None]
    cov = np.linalg.inv(A.T @ Aw)
    coef = cov @ (Aw.T @ ly)
    resid = ly - A @ coef
    dof = max(1, len(lx) - 2)
    scale = float(resid @ (w * resid)) / dof
    return {"slope": float(coef[1]), "slope_stderr": float(np.sqrt(cov[1, 1] * max(scale, 1e-300))),
            "intercept": float(coef[0])}
