r"""Sensitivity of a model to its routing temperature, layer by layer (issue 7 §3a).

For MoE layer ℓ and a temperature τ, the block is run with the model's own selection of experts and
weights computed from :math:`a/\tau` (softmax of ``logits/τ`` for softmax routers; see
:mod:`softhard.inspect.layouts`), every other layer as shipped; "dense" runs block ℓ with every expert
active (fully soft routing at τ = 1). Reported per token :math:`i` and averaged with a standard error:

.. math:: r^{block}_i = \frac{\lVert o^{\tau}_i - o_i\rVert_2}{\lVert o_i\rVert_2}, \qquad
          r^{final}_i = \frac{\lVert z^{\tau}_i - z_i\rVert_2}{\lVert z_i\rVert_2}

with :math:`o` the block output (``(N, d)``) and :math:`z` the model's final output (``(N, V)`` logits)
as shipped. Tokens with :math:`o_i = 0` (dropped by a capacity limit) are left out. Because the
re-routing at τ = 1 repeats the model's own operations, both are exactly 0 at τ = 1. The paper sets the
boundary mass at temperature τ as β(2τ) (§7), the abscissa against which these are plotted.
"""

from __future__ import annotations

import torch

from .._validate import check_grid
from .hooks import capture_block_outputs
from .layouts import RouterSite
from .stats import StreamMean

__all__ = ["Sensitivity", "relative_change", "final_output"]


def final_output(out) -> torch.Tensor:
    """The model's final output tensor: ``.logits`` of a transformers output, else the first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    for v in (out.values() if isinstance(out, dict) else out):
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"final_output: the model returned no tensor ({type(out).__name__})")


def relative_change(new: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    r"""Per-row :math:`\lVert new_i - ref_i\rVert / \lVert ref_i\rVert` over the last axis, float64, rows with
    :math:`ref_i \ne 0` only; inputs ``(..., d)`` of one shape, output ``(M,)``."""
    a = new.detach().reshape(-1, new.shape[-1]).to(torch.float64)
    b = ref.detach().reshape(-1, ref.shape[-1]).to(torch.float64)
    den = b.norm(dim=-1)
    keep = den > 0
    return (a - b).norm(dim=-1)[keep] / den[keep]


class Sensitivity:
    """Streams :math:`r^{block}` and :math:`r^{final}` for each layer of ``sites`` and each τ (plus dense).

    Args:
        sites: the MoE layers.
        taus: temperatures ``(T,)``, each ``> 0`` (may be empty).
        dense: also run each block fully dense (where the layout supports it).
    """

    def __init__(self, sites: list[RouterSite], taus, dense: bool = True):
        self.sites = sites
        self.taus = [float(t) for t in check_grid(taus, "taus", "Sensitivity", low=0.0, low_open=True)] if len(
            taus) else []
        self.labels = self.taus + (["dense"] if dense else [])
        self.block = {(s.index, lab): StreamMean() for s in sites for lab in self.labels}
        self.final = {(s.index, lab): StreamMean() for s in sites for lab in self.labels}

    def _context(self, site: RouterSite, label):
        return site.densify() if label == "dense" else site.temper(label)

    @torch.no_grad()
    def update(self, model, inputs: dict, base_blocks: dict, base_final: torch.Tensor) -> None:
        """Run the variants on one batch; ``base_blocks[index]`` and ``base_final`` are the shipped outputs.
        Sites not read yet are read first (one extra forward)."""
        if any(s.rule is None for s in self.sites):
            from .hooks import read_routers

            read_routers(model, self.sites, inputs)
        for site in self.sites:
            if site.rule is None:  # not called on these inputs
                continue
            for label in self.labels:
                ctx = self._context(site, label)
                if ctx is None:
                    continue
                store = {}
                with ctx, capture_block_outputs([site], store):
                    out = model(**inputs)
                self.block[(site.index, label)].add(relative_change(store[site.index], base_blocks[site.index]))
                self.final[(site.index, label)].add(relative_change(final_output(out), base_final))

    def result(self, index: int) -> list[dict]:
        """Rows ``{"tau": τ or "dense", "block": Estimate, "final": Estimate}`` of layer ``index``."""
        return [{"tau": lab, "block": self.block[(index, lab)].estimate(), "final": self.final[(index, lab)].estimate()}
                for lab in self.labels]

