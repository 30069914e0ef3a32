r"""Streaming per-layer routing statistics in bounded memory (paper §2–§4, generalised to real routing rules).

For one MoE layer with logits :math:`a \in \mathbb R^K`, routing rule :math:`R` (:mod:`.rules`) and the
model's ``k``:

- the **decision margin** :math:`m = m_R(a)`: the smallest change of the ranked scores (span of the
  perturbation) that changes the selected set (``docs/routing_rules.md``); for top-k of the logits it is
  :math:`a_{(k)} - a_{(k+1)}`, the paper's Δ (2.6) when ``k = 1``; for bias-corrected or group-limited
  selection it is measured on the biased scores; ``+inf`` for hash routing;
- the raw-logit margin :math:`\Delta_k = a_{(k)} - a_{(k+1)}` as a second column;
- boundary-mass profiles :math:`\beta(w) = \mu(m \le w)` (2.13) and :math:`\beta_{logit}(w) = \mu(\Delta_k \le w)`
  on a fixed width grid (exact running counts over every token, reduced with the project's block reducer, so
  each value has a standard error);
- the density of :math:`m` at 0 (one-sided, :math:`f_m(0^+)`) with its standard error, from
  :func:`softhard.estimators.kernel.density_at_zero`. For a binary router :math:`m = |g|`, so :math:`f_m(0^+) = 2\psi(0)`
  and Prop. 3.5 reads :math:`\beta(w) = w\, f_m(0^+) + o(w)`;
- the margin-tail fit :math:`\mu(m \le t) \approx C t^\alpha` (Assumption 4.2), from
  :func:`softhard.estimators.fits.fit_margin_tail`;
- routing entropy :math:`-\sum_k \pi_k \log \pi_k` of :math:`\pi = \mathrm{softmax}(a)` (nats), expert load
  (share of the model's token–slot assignments per expert), ``agreement`` (share of tokens whose selection by
  the rule equals the model's own; ``nan`` when the router returns logits only), dropped tokens;
- the tokens nearest to a tie: the ``nearest`` smallest :math:`m` with their positions;
- under a perturbation of the router's input (``hooks.perturb_hidden``), the flip rate of the rule's selected
  set and the share of tokens with :math:`m \le \operatorname{osc}(\delta s)`, :math:`\delta s` the change of
  the scores the margin is measured on: by the definition of :math:`m`, a flip needs
  :math:`\operatorname{osc}(\delta s) \ge m`, so ``flip_rate <= flip_bound`` token by token, for every rule.

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
from ..model.gates import gate_entropy
from .layouts import Routed, RouterSite
from .rules import topk_gap

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
        site: the layer (its rule is identified at its first call, before the first update).
        widths: width grid ``(W,)`` for β (sorted, ``>= 0``).
        reservoir: size ``R`` of the uniform sample of margins kept for density, tail fit and histograms.
        nearest: how many near-tie tokens to keep.
        seed: integer seed of the reservoir sampling.
        keep_tokens: also keep every token's ``(index, m, Δ_k)`` and selection (:meth:`tokens`; memory grows
            with the tokens).
    """

    def __init__(self, site: RouterSite, widths: np.ndarray, *, reservoir: int = 1 << 16, nearest: int = 20,
                 seed: int = 0, keep_tokens: bool = False):
        self.site = site
        self.widths = np.asarray(widths, dtype=np.float64)
        self.beta, self.beta_logit = StreamMean(), StreamMean()
        self.entropy, self.agreement, self.dropped = StreamMean(), StreamMean(), StreamMean()
        self.flip, self.flip_bound = StreamMean(), StreamMean()
        self.load = None
        self.n = 0
        self._R = reservoir
        self._buf, self._fill = np.empty((reservoir, 2)), 0  # the reservoir is self._buf[:self._fill]
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, site.index, 11]))
        self._nearest = nearest
        self._near = np.empty((0, 2))  # (margin, global token index)
        self._tokens = [] if keep_tokens else None

    def margins(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, Δ_k)`` of logits ``(N, K)``, each ``(N,)`` float64: the rule's decision margin and the raw-logit
        top-k margin."""
        rule = self.site.rule
        a = logits.to(torch.float64)
        return rule.margin(logits), topk_gap(a, min(rule.k, a.shape[-1] - 1))

    def update(self, routed: Routed, token_index: np.ndarray) -> None:
        """Add one router call (:class:`~softhard.inspect.layouts.Routed`) and the global token index of each row
        ``(N,)`` (``-1`` where unknown)."""
        rule = self.site.rule
        logits = routed.logits
        m, dk = self.margins(logits)
        w = torch.as_tensor(self.widths, dtype=torch.float64, device=m.device)
        self.beta.add((m[:, None] <= w).to(torch.float64))
        self.beta_logit.add((dk[:, None] <= w).to(torch.float64))
        self.entropy.add(gate_entropy(logits.to(torch.float64), 1.0))
        sel = routed.selected.to(logits.device)
        ok = (sel >= 0).all(dim=-1)
        self.dropped.add((~ok).to(torch.float64))
        if routed.observed:
            mine = rule.select(logits, routed.token_ids).to(sel.device)
            self.agreement.add((~selection_changed(mine, sel) & ok | ~ok & _kept_agree(mine, sel)).to(torch.float64))
        if self.load is None:
            self.load = np.zeros(rule.num_experts, dtype=np.int64)
        self.load += np.bincount(sel[sel >= 0].cpu().numpy(), minlength=rule.num_experts)[:rule.num_experts]
        mm = np.stack([m.cpu().numpy(), dk.cpu().numpy()], axis=1)
        self._reservoir_add(mm)
        self._nearest_add(mm[:, 0], np.asarray(token_index))
        self.n += mm.shape[0]
        if self._tokens is not None:
            scores = rule.margin_scores(logits).to(torch.float32).cpu().numpy()
            self._tokens.append((np.asarray(token_index), mm, sel.cpu().numpy(), scores))

    def tokens(self) -> dict:
        r"""Every token seen (with ``keep_tokens``): ``index (n,)``, ``margin (n,)``, ``logit_margin (n,)``,
        ``selected (n, k)``, ``scores (n, K)`` (float32: the vector the margin is measured on — the logits, or the
        biased scores :math:`\phi(a) + b`) and ``rule (4,)``: ``k, n_group, topk_group, group_top`` of the
        selection on those scores (what ``softhard compare-routing`` needs to re-select and re-measure)."""
        if not self._tokens:
            return {}
        idx, mm, sel, scores = (np.concatenate(x) for x in zip(*self._tokens))
        r = self.site.rule
        return {"index": idx, "margin": mm[:, 0], "logit_margin": mm[:, 1], "selected": sel, "scores": scores,
                "rule": np.array([r.k, r.n_group, r.topk_group, r.group_top], dtype=np.int64)}

    def update_flips(self, routed: Routed, perturbed: Routed) -> None:
        """Add the rule's selections and scores before and after perturbing the router's input."""
        rule = self.site.rule
        a, ap = routed.logits, perturbed.logits.to(routed.logits.device)
        self.flip.add(selection_changed(rule.select(a, routed.token_ids),
                                        rule.select(ap, routed.token_ids)).to(torch.float64))
        ds = rule.margin_scores(ap) - rule.margin_scores(a)
        self.flip_bound.add((rule.margin(a) <= ds.max(-1).values - ds.min(-1).values).to(torch.float64))

    @property
    def sample(self) -> np.ndarray:
        """The reservoir: a uniform sample of the ``(m, Δ_k)`` seen so far, shape ``(min(n, R), 2)``."""
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
        m, dk = res[:, 0], res[:, 1]
        K = self.site.rule.num_experts if self.site.rule is not None else self.site.num_experts
        load = self.load if self.load is not None else np.zeros(K, dtype=np.int64)
        def q(v, p):  # no interpolation between infinite margins (hash routing)
            if not v.size:
                return math.nan
            return float(np.quantile(v, p) if np.isfinite(v).all() else np.quantile(v, p, method="inverted_cdf"))

        return {
            "n": self.n, "widths": self.widths, "beta": self.beta.estimate(), "beta_logit": self.beta_logit.estimate(),
            "entropy": self.entropy.estimate(), "agreement": self.agreement.estimate(),
            "dropped": self.dropped.estimate(), "flip_rate": self.flip.estimate(),
            "flip_bound": self.flip_bound.estimate(), "load": load / max(1, load.sum()),
            "reservoir": res.shape[0],
            "quantiles": {p: (q(m, p), q(dk, p)) for p in (0.01, 0.1, 0.5)},
            "density0": _density(m), "density0_logit": _density(dk),
            "tail": _tail(m),
            "hist": _histogram(m), "hist_logit": _histogram(dk),
            "nearest": [(float(v), int(i)) for v, i in self._near],
        }


def _kept_agree(mine: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """For rows where the model dropped slots (capacity): whether every kept expert is one the rule selects."""
    hit = (sel[:, :, None] == mine[:, None, :]).any(-1) | (sel < 0)
    return hit.all(-1)


def _density(m: np.ndarray) -> Estimate:
    """Density at 0⁺ of a margin sample; exactly 0 when no margin is finite (hash routing)."""
    finite = m[np.isfinite(m)]
    if m.size and not finite.size:
        return Estimate(0.0, 0.0, int(m.size), "exact", info={"note": "no finite margin: the selection does not "
                                                                      "depend on the scores"})
    if finite.size < m.size:
        return Estimate(math.nan, math.nan, int(m.size), "kernel", info={"error": "some margins are infinite"})
    return _or_nan(density_at_zero, finite, one_sided=True)


def _tail(m: np.ndarray) -> MarginTail:
    if not np.isfinite(m).all() or m.size < 2:
        return MarginTail(math.nan, math.nan, math.nan, math.nan, math.nan, int(m.size), 0)
    return _or_nan(fit_margin_tail, m, zeros="drop")


def _or_nan(fn, margins: np.ndarray, **kw):
    """``fn(margins, **kw)``, or a NaN result carrying the reason when the sample cannot support it (too few
    or too concentrated margins)."""
    try:
        return fn(margins, **kw)
    except ValueError as e:
        if fn is fit_margin_tail:
            return MarginTail(math.nan, math.nan, math.nan, math.nan, math.nan, int(margins.size), 0)
        return Estimate(math.nan, math.nan, int(margins.size), "kernel", info={"error": str(e)})


def _histogram(m: np.ndarray, bins: int = 40, upper: float = 0.9) -> dict:
    """Histogram of margins near 0 as a density (counts / (n · bin width)) on ``[0, cut]``, ``cut`` the
    ``upper`` quantile of the finite margins; ``beyond`` is the share of margins above the cut (drawn as a marked
    cut, not as a drop of the density)."""
    finite = m[np.isfinite(m)]
    hi = float(np.quantile(finite, upper)) if finite.size else 0.0
    hi = hi if hi > 0 else 1.0
    counts, edges = np.histogram(finite, bins=bins, range=(0.0, hi))
    n = max(1, m.size)
    return {"edges": edges, "density": counts / (n * (edges[1] - edges[0])), "cut": hi,
            "beyond": float((m > hi).sum() / n)}
