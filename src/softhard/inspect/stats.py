r"""Streaming per-layer routing statistics in bounded memory (paper §2–§4, generalised to top-k).

For one MoE layer with logits :math:`a \in \mathbb R^K` and the model's ``k``:

- top-1 margin :math:`\Delta = a_{(1)} - a_{(2)}` (2.6) and the top-k (selection) margin
  :math:`\Delta_k = a_{(k)} - a_{(k+1)}` [beyond] — the distance to a change of the *set* of selected
  experts (``= Δ`` for ``k = 1``);
- boundary-mass profiles :math:`\beta(w) = \mu(\Delta \le w)` (2.13) and :math:`\beta_k(w) = \mu(\Delta_k \le w)`
  on a fixed width grid (exact running counts over every token, reduced with the project's block
  reducer, so each value has a standard error);
- the density of :math:`\Delta` at 0 (one-sided, :math:`f_\Delta(0^+)`) with its standard error, from
  :func:`softhard.estimators.kernel.density_at_zero`. For a binary router :math:`\Delta = |g|`, so
  :math:`f_\Delta(0^+) = 2\psi(0)` and Prop. 3.5 reads :math:`\beta(w) = w\, f_\Delta(0^+) + o(w)`;
- the margin-tail fit :math:`\mu(\Delta \le t) \approx C_\Delta t^\alpha` (Assumption 4.2), from
  :func:`softhard.estimators.fits.fit_margin_tail`;
- routing entropy :math:`-\sum_k \pi_k \log \pi_k` (nats, at τ = 1), expert load (share of the model's
  token–slot assignments per expert), the share of tokens whose selection equals the top-k of the raw
  logits (``agreement``; below 1 for bias-corrected or group-limited selection), dropped tokens;
- the tokens nearest to a tie: the ``nearest`` smallest :math:`\Delta_k` with their positions;
- under a perturbation of the router's input (``hooks.perturb_hidden``), the flip rate of the selected
  set and the share of tokens with :math:`\Delta_k \le 2\lVert\delta a\rVert_\infty`, where
  :math:`\delta a` is the logit change. A flip of a top-k selection needs a selected ``i`` and an
  unselected ``j`` to swap, so :math:`\Delta_k \le a_i - a_j \le \delta a_j - \delta a_i \le 2\lVert\delta a\rVert_\infty`:
  for routers that select the top-k of their logits, ``flip_rate <= flip_bound`` token by token.

Memory per layer is ``O(W + K + R + nearest)``: the density and the tail fit run on a uniform
reservoir sample of ``R`` margins (all of them while ``n <= R``), drawn with the given seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..estimators.fits import MarginTail, fit_margin_tail
from ..estimators.kernel import density_at_zero
from ..estimators.reducer import Estimate, Moments
from ..model.gates import gate_entropy, top_two_margin, topk_margin
from .layouts import RouterSite

__all__ = ["StreamMean", "LayerStats", "selection_changed"]


class StreamMean:
    """Running mean with standard error of per-sample terms ``(m, ...)`` fed in blocks.

    It uses the same ordered block merge as :func:`softhard.estimators.reducer.mean_estimate`; the result is
    an :class:`~softhard.estimators.reducer.Estimate` with method ``"sample"`` (``nan`` with ``n = 0`` if empty).
    """

    def __init__(self):
        self._m = Moments()

    def add(self, values) -> None:
        v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
        if v.shape[0]:
            self._m.add_block(v)

    @property
    def n(self) -> int:
        return self._m.n

    def estimate(self) -> Estimate:
        if self._m.n == 0:
            return Estimate(math.nan, math.nan, 0, "sample")
        mean, se = self._m.mean, self._m.stderr()
        out = lambda a: float(a) if np.ndim(a) == 0 else np.asarray(a, dtype=np.float64)  # noqa: E731
        return Estimate(out(mean), out(se), self._m.n, "sample")


def selection_changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, whether two selections ``(N, k)`` differ as sets; shape ``(N,)`` bool."""
    return (torch.sort(a, dim=-1).values != torch.sort(b, dim=-1).values).any(dim=-1)


class LayerStats:
    """Streaming statistics of one MoE layer (see the module docstring).

    Args:
        site: the layer (gives ``K`` and ``k``).
        widths: width grid ``(W,)`` for β and β_k (sorted, ``>= 0``).
        reservoir: size ``R`` of the uniform sample of margins kept for density, tail fit and histograms.
        nearest: how many near-tie tokens to keep.
        seed: integer seed of the reservoir sampling.
    """

    def __init__(self, site: RouterSite, widths: np.ndarray, *, reservoir: int = 1 << 16, nearest: int = 20,
                 seed: int = 0):
        self.site = site
        self.widths = np.asarray(widths, dtype=np.float64)
        self.k_sel = min(site.top_k, site.num_experts - 1)
        self.beta, self.beta_k = StreamMean(), StreamMean()
        self.entropy, self.agreement, self.dropped = StreamMean(), StreamMean(), StreamMean()
        self.flip, self.flip_bound = StreamMean(), StreamMean()
        self.load = np.zeros(site.num_experts, dtype=np.int64)
        self.n = 0
        self._R = reservoir
        self._buf, self._fill = np.empty((reservoir, 2)), 0  # the reservoir is self._buf[:self._fill]
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, site.index, 11]))
        self._nearest = nearest
        self._near = np.empty((0, 2))  # (margin, global token index)

    def margins(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Δ, Δ_k)`` of logits ``(N, K)``, each ``(N,)``."""
        return top_two_margin(logits), topk_margin(logits, self.k_sel)

    def update(self, logits: torch.Tensor, selected: torch.Tensor, token_index: np.ndarray) -> None:
        """Add one router call: logits ``(N, K)`` float64, the model's selection ``(N, k)``, and the global
        token index of each row ``(N,)`` (``-1`` where unknown)."""
        d1, dk = self.margins(logits)
        w = torch.as_tensor(self.widths, dtype=logits.dtype, device=logits.device)
        self.beta.add((d1[:, None] <= w).to(torch.float64))
        self.beta_k.add((dk[:, None] <= w).to(torch.float64))
        self.entropy.add(gate_entropy(logits, 1.0))
        sel = selected.to(logits.device)
        ok = (sel >= 0).all(dim=-1)
        self.dropped.add((~ok).to(torch.float64))
        top = torch.topk(logits, sel.shape[-1], dim=-1).indices
        self.agreement.add((~selection_changed(top, sel) & ok).to(torch.float64))
        self.load += np.bincount(sel[sel >= 0].cpu().numpy(), minlength=self.site.num_experts)[:self.site.num_experts]
        m = np.stack([d1.cpu().numpy(), dk.cpu().numpy()], axis=1)
        self._reservoir_add(m)
        self._nearest_add(m[:, 1], np.asarray(token_index))
        self.n += m.shape[0]

    def update_flips(self, logits: torch.Tensor, selected: torch.Tensor, logits_p: torch.Tensor,
                     selected_p: torch.Tensor) -> None:
        """Add the selections and logits after perturbing the router's input (each ``(N, ·)``)."""
        dk = topk_margin(logits, self.k_sel)
        self.flip.add(selection_changed(selected, selected_p.to(selected.device)).to(torch.float64))
        shift = (logits_p.to(logits) - logits).abs().max(dim=-1).values
        self.flip_bound.add((dk <= 2 * shift).to(torch.float64))

    @property
    def sample(self) -> np.ndarray:
        """The reservoir: a uniform sample of the ``(Δ, Δ_k)`` seen so far, shape ``(min(n, R), 2)``."""
        return self._buf[:self._fill]

    def _reservoir_add(self, m: np.ndarray) -> None:
        fill = max(0, min(self._R - self._fill, m.shape[0]))
        self._buf[self._fill:self._fill + fill] = m[:fill]
        self._fill += fill
        rest = m[fill:]
        if rest.shape[0]:
            seen = self.n + fill + np.arange(rest.shape[0])  # 0-based index of each item in the stream
            j = self._rng.integers(0, seen + 1)
            keep = np.nonzero(j < self._R)[0]
            # sequential semantics: the last item written to a slot wins
            slots, first_rev = np.unique(j[keep][::-1], return_index=True)
            self._buf[slots] = rest[keep[::-1][first_rev]]

    def _nearest_add(self, margin: np.ndarray, index: np.ndarray) -> None:
        both = np.concatenate([self._near, np.stack([margin, index], axis=1)])
        order = np.argsort(both[:, 0], kind="stable")[: self._nearest]
        self._near = both[order]

    def result(self) -> dict:
        """Everything accumulated: Estimates, arrays and the reservoir-based fits (see the module docstring)."""
        res = self.sample
        d1, dk = res[:, 0], res[:, 1]
        out = {
            "n": self.n, "widths": self.widths, "beta": self.beta.estimate(), "beta_k": self.beta_k.estimate(),
            "entropy": self.entropy.estimate(), "agreement": self.agreement.estimate(),
            "dropped": self.dropped.estimate(), "flip_rate": self.flip.estimate(),
            "flip_bound": self.flip_bound.estimate(), "load": self.load / max(1, self.load.sum()),
            "reservoir": res.shape[0],
            "quantiles": {q: (float(np.quantile(d1, q)), float(np.quantile(dk, q))) for q in (0.01, 0.1, 0.5)},
            "density0": _or_nan(density_at_zero, d1, one_sided=True),
            "density0_k": _or_nan(density_at_zero, dk, one_sided=True),
            "tail": _or_nan(fit_margin_tail, d1, zeros="drop"),
            "hist": _histogram(d1), "hist_k": _histogram(dk),
            "nearest": [(float(v), int(i)) for v, i in self._near],
        }
        return out


def _or_nan(fn, margins: np.ndarray, **kw):
    """``fn(margins, **kw)``, or a NaN result carrying the reason when the sample cannot support it (too few
    or too concentrated margins)."""
    try:
        return fn(margins, **kw)
    except ValueError as e:
        if fn is fit_margin_tail:
            return MarginTail(math.nan, math.nan, math.nan, math.nan, math.nan, int(margins.size), 0)
        return Estimate(math.nan, math.nan, int(margins.size), "kernel", info={"error": str(e)})


def _histogram(m: np.ndarray, bins: int = 40) -> dict:
    """Histogram of margins on ``[0, median]`` as a density (counts / (n · bin width))."""
    hi = float(np.quantile(m, 0.5)) if m.size else 0.0
    hi = hi if hi > 0 else 1.0
    counts, edges = np.histogram(m, bins=bins, range=(0.0, hi))
    return {"edges": edges, "density": counts / (max(1, m.size) * (edges[1] - edges[0]))}
