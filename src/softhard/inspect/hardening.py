r"""Hardening a real model end to end: its own loss as the routing temperature τ → 0, beside the prediction
:math:`L_\tau - L_0 \approx G_1\tau` assembled from each layer's margin density at 0 and tie contrast.

Derivations and what the numbers mean: ``docs/hardening.md``. In short:

- **Temperature.** Every MoE layer keeps the model's own selection :math:`S` (its top-k) and weights its
  selected experts with its routing rule's weight map at :math:`a/\tau` — ``site.temper(tau)`` of
  :mod:`.layouts` (softmax of the selected logits at τ for Mixtral-style routers). At τ = 1 this is the model
  as shipped, bit for bit; as τ → 0 it tends to **hard top-1 routing** :math:`f_0 = h_{(1)}`, the paper's
  :math:`L_0` (2.10), for the rules :func:`refusal` accepts (softmax weights, k >= 2).
- **Margin.** The limit is decided by the top-two margin of the logits among the experts the weight map
  compares, :func:`limit_margin`: :math:`\Delta_S = a_{(1)} - a_{(2)}` over :math:`S` when the weights are
  renormalised over :math:`S`, over all experts otherwise (the two agree for top-k of the logits, k >= 2, and
  are the paper's top-two margin Δ (2.6)). It is *not* the rule's decision margin
  (:meth:`~softhard.inspect.rules.RoutingRule.margin`, the distance to a change of :math:`S`): the selection
  is held, so only the top-1 decision inside the limit matters.
- **Curves.** Per token :math:`t` (each predicted position, or each image), the loss :math:`l_t` of the
  model at τ in every layer ("all"), and of the model with layer ℓ at τ and every other layer hard
  ("layer ℓ"); differences are paired per token against the hard model (:math:`\tau = 0`) and against
  τ = 1 and reduced by :func:`softhard.estimators.reducer.mean_estimate` (mean ± standard error over tokens).
- **Prediction** (first order in τ, the coarea argument of ``docs/first_order_gap.md`` with the task
  loss): for layer ℓ, with :math:`\varphi_s(u)` the summed loss of token s's sequence when token s alone
  is routed in layer ℓ at the temperature :math:`\tau_s = \Delta_s/u` and everything else is hard,

  .. math:: G_1^{\ell} = \frac{N_{rows}}{N_{pos}} f_{\Delta}(0^+)\;
            \mathbb E\Big[\int_0^\infty \big(\varphi_s(u) - \varphi_s(\infty)\big)\,du \;\Big|\; \Delta_s = 0^+\Big],
            \qquad L_\tau - L_0 = \tau \sum_\ell G_1^{\ell} + o(\tau),

  estimated by the boundary kernel of :mod:`softhard.estimators.kernel` over the rows near a tie,
  :math:`\hat G_1^\ell = \frac1{N_{pos}}\sum_s h^{-1}k(\Delta_s/h)\,c_s`, with the tie contrast
  :math:`c_s = \int_0^\infty (\varphi_s(u) - \varphi_s(\infty))\,du` by Gauss–Legendre quadrature in
  :math:`p = \sigma(u) \in [1/2, 1]`. For squared loss this is exactly ``gap_slope``'s kernel term.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .._validate import check_grid, check_int, fail
from ..estimators.kernel import density_at_zero, kernel, kernel_bandwidth
from ..estimators.reducer import Estimate, mean_estimate, resolve_seed
from ..model.gates import top_two
from .digits import DIGITS
from .hooks import read_routers
from .layouts import InspectError, RouterSite, find_routers
from .loading import Batch
from .rules import RoutingRule
from .sensitivity import final_output

__all__ = ["Hardening", "harden", "harden_inspected", "lm_loss", "label_loss", "tie_quadrature", "routing",
           "LayerTemperature", "limit_margin", "refusal", "check_hardenable", "write_hardening", "DEFAULT_TAUS"]

DEFAULT_TAUS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
U_HARD = 100.0  # hard rows: every scaled margin Δ/τ is 100 (limit_margin), the others' weights are below e^-100
ACTIVE_U = 5.0  # a row is "near a tie at τ" when Δ <= 5τ (the runner-up keeps a weight >= e^-5 / (1 + e^-5))
MIN_EFFECTIVE = 30  # fewer effective sequences than this: the mean rests on a handful of heavy-tailed terms


# ----------------------------------------------------------------------------------------------
# losses: (batch, model output) -> per-token losses (B, P), float64


def lm_loss(batch: Batch, out) -> torch.Tensor:
    r"""Next-token cross-entropy (nats) of a causal LM, ``(B, S - 1)``: :math:`-\log p(x_{t+1} \mid x_{\le t})`."""
    logits = final_output(out).to(torch.float64)
    ids = batch.inputs["input_ids"]
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    return -lp.gather(-1, ids[:, 1:, None].to(lp.device))[..., 0]


def label_loss(labels: torch.Tensor) -> Callable:
    """Cross-entropy of a classifier against ``labels[ids]`` (``ids (B, 1)``: sample indices), ``(B, 1)``."""
    labels = torch.as_tensor(labels)

    def loss(batch: Batch, out) -> torch.Tensor:
        logits = final_output(out).to(torch.float64)
        y = labels[batch.ids[:, 0]].to(logits.device)
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")[:, None]

    return loss


# ----------------------------------------------------------------------------------------------
# routing at a temperature, hard, or one row at a scaled margin u


def tie_quadrature(nodes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    r"""Nodes :math:`u_q` and weights :math:`\omega_q`, :math:`\int_0^\infty F(u)\,du \approx \sum_q \omega_q F(u_q)`.

    Gauss–Legendre in :math:`p = \sigma(u)` on :math:`[1/2, 1]` (``du = dp / (p(1 - p))``): for the tie
    contrasts, :math:`F(u) = \varphi(u) - \varphi(\infty)` vanishes like :math:`1 - p` at :math:`p = 1`, so
    :math:`F/(p(1 - p))` is smooth on the closed interval. Exact references:
    :math:`\int_0^\infty \sigma(-u)\,du = \ln 2`, :math:`\int_0^\infty \sigma(-u)^2\,du = \ln 2 - 1/2`.
    """
    x, w = np.polynomial.legendre.leggauss(check_int(nodes, "nodes", "tie_quadrature", 1))
    p, wp = 0.75 + 0.25 * x, 0.25 * w
    return np.log(p / (1 - p)), wp / (p * (1 - p))


@dataclass
class LayerTemperature:
    r"""How one layer routes under :func:`routing` (not to be confused with its
    :class:`~softhard.inspect.rules.RoutingRule`, what the model does): ``tau`` (one temperature for every
    row: weights from :math:`a/\tau`), or else hard top-1 rows except ``rows`` (indices into the router's rows
    of each call) routed at the scaled margins ``u`` (temperature :math:`\Delta/u` for that row, Δ the
    :func:`limit_margin`: for a softmax over two selected experts the winner's weight is :math:`\sigma(u)`);
    ``record`` collects the margins Δ of each call (hard layers only)."""

    tau: float | None = None
    rows: torch.Tensor | None = None
    u: torch.Tensor | None = None
    record: list | None = None


def limit_margin(rule: RoutingRule, logits: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    r"""The margin that decides the τ → 0 limit of a layer with its selection held, float64 ``(N,)``.

    .. math:: \Delta = a_{(1)} - a_{(2)} \text{ over } C, \qquad
              C = S \text{ (weights renormalised over } S\text{)}, \quad C = \{1, \dots, K\} \text{ (otherwise)},

    the top-two margin (2.6) (:func:`softhard.model.gates.top_two`) of the logits ``(N, K)`` among the experts
    the weight map compares; ``selected (N, k)`` is the model's selection (``-1`` = dropped). Fewer than two
    competitors: ``+inf``. For top-k of the logits with k >= 2 both choices of C give the same Δ.
    """
    a = logits.to(torch.float64)
    if rule.normalize:
        sel = selected.to(a.device)
        a = torch.where(sel >= 0, a.gather(1, sel.clamp(min=0)), torch.full(sel.shape, -math.inf, dtype=a.dtype,
                                                                             device=a.device))
        if a.shape[1] < 2:
            return torch.full(a.shape[:1], math.inf, dtype=a.dtype, device=a.device)
    d = top_two(a)[0]
    return torch.where(torch.isnan(d), torch.full_like(d, math.inf), d)  # no competitor left: -inf - (-inf)


def _temperatures(site: RouterSite, lt: LayerTemperature):
    """What ``site.temper`` takes for ``lt``: the float τ, or a callable of per-row temperatures."""
    if lt.tau is not None:
        return lt.tau  # τ = 1: the same bits (the ratio u(a/1)/u(a) is exactly 1)
    rule = site.rule

    def tau(logits, selected):
        d = limit_margin(rule, logits, selected)
        if lt.record is not None:
            lt.record.append(d.cpu().numpy())
        ok = (d > 0) & torch.isfinite(d)  # exact ties and single competitors: as shipped
        t = torch.where(ok, d / U_HARD, torch.ones_like(d))
        if lt.rows is not None:
            rows = lt.rows.to(d.device)
            t[rows] = torch.where(ok[rows], d[rows] / lt.u.to(d), t[rows])
        return t

    return tau


def refusal(site: RouterSite) -> str | None:
    """Why the selection-held temperature of ``site`` (read at least once) does not tend to hard top-1 routing,
    or cannot be applied row by row; ``None`` when it does. Decided by the layer's routing rule (``site.rule``):
    k >= 2, and softmax weights — renormalised over the selection, or over all experts when the selection is by
    the order of the logits (then the largest logit is selected) — or weights the block computes from logits it
    selects on by their order (a router returning logits alone: its block is taken to weight by a softmax)."""
    rule = site.rule
    if rule is None:
        return "was not called on these inputs"
    if rule.k < 2:
        return "routes to one expert (k = 1), so a temperature with the selection held changes nothing"
    if rule.weights is None:
        return "has weights softhard could not identify, so their τ → 0 limit is unknown"
    if rule.weights not in ("softmax", "block"):
        what = "PhiMoE's sparsemixer" if rule.weights == "sparsemixer" else f"{rule.weights}(a/τ)"
        return f"has weights {what}, whose τ → 0 limit is not hard top-1 routing"
    if not rule.normalize and rule.margin_space != "logits":
        return (f"has softmax weights not renormalised over its selection, and the selection ({rule.describe()}) "
                f"may leave out the largest logit, so τ → 0 need not be hard top-1 routing")
    if site.temper(lambda logits, selected: torch.ones(logits.shape[0], dtype=torch.float64)) is None:
        return f"returns the {site.layout.name} format, which cannot be re-routed row by row"
    return None


def check_hardenable(sites: list[RouterSite], where: str = "harden") -> None:
    """Raise :class:`InspectError` (one line) for the first layer :func:`refusal` refuses."""
    for s in sites:
        why = refusal(s)
        if why is not None:
            raise InspectError(f"{where}: layer {s.index} ({s.name}) {why}; hardening needs softmax weights over "
                               f"k >= 2 selected experts.")


@contextlib.contextmanager
def routing(sites: list[RouterSite], rules: dict[int, LayerTemperature]):
    """Within the block, layer ``site.index`` routes by ``rules[site.index]`` (layers without one as shipped).

    Each layer runs ``site.temper`` (:mod:`.layouts`): the model's own selection, weights from its routing
    rule at :math:`a/\\tau`, with τ per row for hard rows and tie contrasts. The sites must have been read
    (:func:`softhard.inspect.hooks.read_routers`).
    """
    for rule in rules.values():
        if rule.u is not None and not bool((torch.as_tensor(rule.u) > 0).all()):
            fail("u", "routing", "positive scaled margins (u > 0)", rule.u)
    with contextlib.ExitStack() as stack:
        for s in sites:
            if s.index in rules:
                ctx = s.temper(_temperatures(s, rules[s.index]))
                if ctx is None:
                    raise InspectError(f"harden: layer {s.index} ({s.name}) cannot be re-routed at a temperature "
                                       f"({s.rule.describe()}).")
                stack.enter_context(ctx)
        yield


def _forward_losses(model, batch: Batch, loss: Callable) -> torch.Tensor:
    with torch.no_grad():
        return loss(batch, model(**batch.inputs)).to(torch.float64).cpu()


# ----------------------------------------------------------------------------------------------
# the result


@dataclass
class Hardening:
    """The hardening curve (:func:`harden`).

    ``rows``: one per τ (the columns of ``hardening.csv``); ``layers``: one per MoE layer (margin density at
    0, bandwidth, near-tie tokens, mean tie contrast, :math:`G_1^\\ell`); ``meta``: losses of the shipped and
    hard models, settings, seed, and the sanity checks.
    """

    rows: list[dict]
    layers: list[dict]
    meta: dict = field(default_factory=dict)


def _est(terms) -> Estimate:
    return mean_estimate(np.asarray(terms, dtype=np.float64))


def _est_units(terms: np.ndarray, units: np.ndarray) -> tuple[Estimate, float]:
    r"""The mean of per-token ``terms`` with the standard error of per-unit (sequence) sums — the terms of one
    sequence are dependent (a routing change moves the losses of every later position) — and the effective
    number of units carrying it, :math:`n_{eff} = (\sum_j |s_j|)^2 / \sum_j s_j^2` over the unit sums :math:`s_j`
    (0 when every sum is 0)."""
    sums = np.bincount(units, weights=terms)
    sq = float((sums ** 2).sum())
    return mean_estimate(sums * (sums.size / terms.size)), float(np.abs(sums).sum() ** 2 / sq) if sq > 0 else 0.0


def harden(model, batches: list[Batch], loss: Callable, *, taus=DEFAULT_TAUS, layers=None, router_path=None,
           top_k: int | None = None, nodes: int = 6, max_tie_tokens: int = 512, replica_tokens: int = 8192,
           seed=0, progress: bool = False) -> Hardening:
    r"""The model's own loss as its routing is made harder, measured and predicted (module docstring).

    .. math:: \Delta L(\tau) = L_\tau - L_0 \;\approx\; \tau \sum_\ell \hat G_1^{\ell},
              \qquad \hat G_1^\ell = \frac1{N_{pos}}\sum_{s} \frac{k(\Delta_s/h)}{h}\, c_s

    (the [beyond] first-order constant of ``paper.md`` §3 for a real model; ``docs/hardening.md``).

    Args:
        model: an ``nn.Module`` in eval mode, called as ``model(**batch.inputs)``.
        batches: the evaluation batches; ``ids (B, S)`` must map the router rows to tokens (row-major).
        loss: ``(batch, output) -> (B, P)`` per-token losses (:func:`lm_loss`, :func:`label_loss`).
        taus: temperatures ``(T,)`` in (0, 1] for the curve (1 is the model as shipped).
        layers, router_path, top_k: see :func:`softhard.inspect.find_routers`; the routers are read on the
            first batch (their routing rules identified), those it does not call are left out
            (``meta["routers_not_called"]``), and :func:`check_hardenable` refuses the others with one line.
        nodes: quadrature nodes of the tie contrasts (:func:`tie_quadrature`).
        max_tie_tokens: at most this many near-tie tokens per layer get a contrast (a seeded Bernoulli
            sample, each term divided by its inclusion probability, so the estimate stays unbiased).
        replica_tokens: tokens per forward call when re-running sequences for the contrasts.
        seed: seeds the sampling of near-tie tokens.

    Returns:
        :class:`Hardening`.
    """
    where = "harden"
    seed = resolve_seed(seed, where)
    try:
        taus = sorted({float(t) for t in check_grid(taus, "taus", where, 0.0, True).tolist()}, reverse=True)
        nodes = check_int(nodes, "nodes", where)
        max_tie_tokens = check_int(max_tie_tokens, "max_tie_tokens", where)
        replica_tokens = check_int(replica_tokens, "replica_tokens", where)
    except (TypeError, ValueError) as e:
        raise InspectError(str(e)) from None
    if not taus or taus[0] > 1:
        raise InspectError(f"The 'taus' parameter of {where} must be temperatures in (0, 1]. Got {taus}.")
    if not batches:
        raise InspectError("no tokens to harden (the batch list is empty).")
    sites = find_routers(model, router_path=router_path, layers=layers, top_k=top_k)
    read_routers(model, sites, batches[0].inputs)  # identifies each layer's routing rule
    not_called = [s.name for s in sites if s.rule is None]
    sites = [s for s in sites if s.rule is not None]
    if not sites:
        raise InspectError(f"{where}: no MoE layer was called on these inputs.")
    check_hardenable(sites)
    idx = [s.index for s in sites]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batches) * (2 + len(taus) * (1 + len(sites))), desc="hardening: curves", unit="fwd",
                   leave=False)

    def run(batch, rules):
        with routing(sites, rules):
            out = _forward_losses(model, batch, loss)
        if bar is not None:
            bar.update(1)
        return out

    shipped, hard = [], []
    curve_all = {t: [] for t in taus}
    curve_layer = {(i, t): [] for i in idx for t in taus}
    margins = {i: [] for i in idx}  # per batch, the limit margin Δ of every router row, in the hard model
    try:
        for batch in batches:
            shipped.append(run(batch, {}))
            rec = {i: LayerTemperature(record=[]) for i in idx}
            hard.append(run(batch, rec))
            for i in idx:
                d = np.concatenate(rec[i].record) if rec[i].record else np.empty(0)
                if d.size != batch.ids.numel():
                    raise InspectError(f"{where}: layer {i} routed {d.size} rows for {batch.ids.numel()} tokens; "
                                       f"hardening needs one router row per token.")
                margins[i].append(d)
            for t in taus:
                curve_all[t].append(run(batch, {i: LayerTemperature(tau=t) for i in idx}))
                for i in idx:
                    rules = {j: LayerTemperature(tau=t) if j == i else LayerTemperature() for j in idx}
                    curve_layer[(i, t)].append(run(batch, rules))
    finally:
        if bar is not None:
            bar.close()
    flat = lambda xs: torch.cat([x.reshape(-1) for x in xs]).numpy()  # noqa: E731
    l_ship, l_hard = flat(shipped), flat(hard)
    unit_of = np.concatenate([np.repeat(np.arange(x.shape[0]), x.shape[1]) + off for x, off in
                              zip(hard, np.cumsum([0] + [x.shape[0] for x in hard[:-1]]))])
    n_pos = l_hard.size
    n_rows = sum(b.ids.numel() for b in batches)
    # the tie contrasts and G_1 per layer
    u, omega = tie_quadrature(nodes)
    layer_rows, g_terms, prof = [], {}, {}
    for i in idx:
        lay, g_terms[i], prof[i] = _layer_constant(model, batches, loss, sites, i, np.concatenate(margins[i]), u,
                                                   omega, n_pos, max_tie_tokens, replica_tokens, taus, seed,
                                                   progress)
        layer_rows.append(lay)
    if any(t is None for t in g_terms.values()):  # a layer without a margin density at 0 (too few tokens)
        g_all = Estimate(math.nan, math.nan, n_rows, "kernel")
    else:
        g_all = _est(sum(g_terms.values()))
    d_layers = [np.concatenate(margins[i]) for i in idx]
    rows = []
    for j, t in enumerate(taus):
        la = flat(curve_all[t])
        row = {"tau": t, "near_tie_rows": int(sum((d <= ACTIVE_U * t).sum() for d in d_layers))}
        m = _est(la - l_hard)
        row.update(gap=m.value, gap_stderr=m.stderr, predicted=g_all.value * t, predicted_stderr=g_all.stderr * t)
        seq, row["effective_sequences"] = _est_units(la - l_hard, unit_of)
        row["gap_stderr_seq"] = seq.stderr
        row["ratio"] = m.value / row["predicted"] if row["predicted"] != 0 else math.nan
        pr = _est(sum(prof[i][1][j] for i in idx)) if math.isfinite(g_all.value) else g_all
        row["predicted_profile"] = float(sum(prof[i][0][j] for i in idx))
        row["predicted_profile_stderr"] = math.sqrt(pr.stderr ** 2 + sum(prof[i][2][j] for i in idx))
        s = _est(la - l_ship)
        row.update(change_vs_shipped=s.value, change_vs_shipped_stderr=s.stderr)
        inter = la - l_hard
        for i, lay in zip(idx, layer_rows):
            li = flat(curve_layer[(i, t)])
            e = _est(li - l_hard)
            row[f"layer{i}_gap"], row[f"layer{i}_gap_stderr"] = e.value, e.stderr
            row[f"layer{i}_predicted"] = lay["G1"] * t
            inter = inter - (li - l_hard)
        e = _est(inter)
        row["interaction"], row["interaction_stderr"] = e.value, e.stderr
        rows.append(row)
    hs = _est(l_hard - l_ship)
    meta = {
        "model_class": type(model).__name__, "layers": idx, "routers_not_called": not_called, "tokens": n_pos,
        "router_rows": n_rows,
        "batches": len(batches), "taus": taus, "seed": seed, "nodes": nodes, "max_tie_tokens": max_tie_tokens,
        "min_effective": MIN_EFFECTIVE,
        "shipped_loss": float(l_ship.mean()), "hard_loss": float(l_hard.mean()),
        "hard_minus_shipped": hs.value, "hard_minus_shipped_stderr": hs.stderr,
        "G1": g_all.value, "G1_stderr": g_all.stderr,
        "tau1_max_abs_change": float(np.abs(flat(curve_all[1.0]) - l_ship).max()) if 1.0 in curve_all else None,
        "exact_ties": int(sum(int((np.concatenate(margins[i]) == 0).sum()) for i in idx)),
        "definition": "selection held (the model's top-k); weights = the routing rule's weight map at logits/tau; "
                      "tau -> 0 is hard top-1; margin = top-two margin of the logits the weights compare (over the "
                      "selection when renormalised there); per-layer curves: that layer at tau, every other layer "
                      "hard",
    }
    meta["verdict"] = _verdict(rows, meta)
    return Hardening(rows, layer_rows, meta)


def _layer_constant(model, batches, loss, sites, i, d_all, u, omega, n_pos, cap, replica_tokens, taus, seed,
                    progress):
    """``(row, terms, profile)`` of layer ``i``: its G_1 (row), the per-router-row terms of G_1 ``(N_rows,)``, and
    the margin-profile prediction ``(value (T,), per-row terms (T, N_rows), covariance part (T,))``."""
    n_rows = d_all.size
    finite = np.isfinite(d_all)
    site = next(s for s in sites if s.index == i)
    name = site.name
    try:
        if int(finite.sum()) < 2:
            raise ValueError("fewer than two margins")
        h = kernel_bandwidth(d_all[finite], one_sided=True)
        f0 = density_at_zero(d_all[finite], bandwidth=h, one_sided=True)
    except ValueError:  # fewer than two margins, all equal, or fewer than two within h: no density at 0
        nan = np.full(len(taus), np.nan)
        row = {"layer": i, "module": name, "rule": site.rule.describe(), "router_rows": n_rows,
               "bandwidth": math.nan, "near_tie": 0,
               "contrasted": 0, "density0": math.nan, "density0_stderr": math.nan, "mean_contrast": math.nan,
               "G1": math.nan, "G1_stderr": math.nan}
        return row, None, (nan, np.zeros((len(taus), n_rows)), nan)
    near = finite & (d_all <= h)
    m = int(near.sum())
    pi = min(1.0, cap / m) if m else 1.0
    rng = np.random.default_rng(np.random.SeedSequence([seed, i, 17]))
    take = near & (rng.random(n_rows) < pi)
    diffs = np.zeros((n_rows, len(u)))  # φ_s(u_q) − φ_s(∞) of the contrasted rows
    offsets = np.cumsum([0] + [b.ids.numel() for b in batches])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(take.sum()), desc=f"hardening: tie contrasts, layer {i}", unit="token", leave=False)
    for b, batch in enumerate(batches):
        rows = np.nonzero(take[offsets[b]:offsets[b + 1]])[0]
        if rows.size:
            diffs[offsets[b] + rows] = _node_differences(model, batch, loss, sites, i, rows, u, replica_tokens)
            if bar is not None:
                bar.update(rows.size)
    if bar is not None:
        bar.close()
    contrast = diffs @ omega
    k = kernel(torch.as_tensor(np.where(finite, d_all, 0.0)), h, True).numpy() * finite
    terms = (n_rows / n_pos) * k * contrast * take / pi
    g = _est(terms)
    wsum = float((k * take / pi).sum())
    row = {"layer": i, "module": name, "rule": site.rule.describe(), "router_rows": n_rows,
           "bandwidth": h, "near_tie": m, "contrasted": int(take.sum()), "density0": f0.value,
           "density0_stderr": f0.stderr, "mean_contrast": float((k * contrast * take / pi).sum() / wsum)
           if wsum else math.nan, "G1": g.value, "G1_stderr": g.stderr}
    return row, terms, _profile(diffs[take], k[take], d_all, u, taus, n_pos)


def _profile(diffs: np.ndarray, weights: np.ndarray, d_all: np.ndarray, u: np.ndarray, taus, n_pos: int):
    r"""The margin-profile prediction :math:`P_\ell(\tau) = \frac1{N_{pos}}\sum_{rows}\bar\psi(\Delta/\tau)`, with
    :math:`\bar\psi(u)` the estimate of :math:`E[\varphi(u) - \varphi(\infty) \mid \Delta = 0^+]` by the boundary
    kernel ``weights`` (``(M,)``) over the contrasted near-tie tokens (``diffs (M, Q)``), interpolated between the
    nodes as :math:`(1 - p)\,q(p)`, ``q`` the polynomial through :math:`\bar\psi(u_q)/(1 - p_q)` at
    :math:`p = \sigma(u)` (``docs/hardening.md``). As τ → 0 it tends to :math:`G_1^\ell\tau`; the difference
    at larger τ is the shape of the margin distribution away from 0.

    Returns ``(values (T,), row terms (T, N_rows), variance of the weighted mean, linearised (T,))``."""
    T, n_rows = len(taus), d_all.size
    wsum = float(weights.sum()) if weights.size else 0.0
    if diffs.shape[0] < 2 or not wsum > 0:
        return np.full(T, np.nan), np.zeros((T, n_rows)), np.full(T, np.nan)
    pq = 1.0 / (1.0 + np.exp(-u))
    psi = weights @ diffs / wsum
    dev = (diffs - psi) * weights[:, None]
    cov = dev.T @ dev / wsum ** 2
    finite = np.isfinite(d_all)
    A, row_terms = np.empty((T, len(u))), np.zeros((T, n_rows))
    for j, t in enumerate(taus):
        p = 1.0 / (1.0 + np.exp(-d_all[finite] / t))
        basis = np.stack([np.prod([(p - pq[r]) / (pq[q] - pq[r]) for r in range(len(u)) if r != q], axis=0)
                          for q in range(len(u))]) * (1 - p) / (1 - pq)[:, None]  # (Q, rows)
        row_terms[j, finite] = (n_rows / n_pos) * (psi @ basis)
        A[j] = basis.sum(1) / n_pos
    return A @ psi, row_terms, np.einsum("tq,qr,tr->t", A, cov, A)


def _select(inputs: dict, unit: torch.Tensor, B: int) -> dict:
    return {k: v[unit] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == B else v for k, v in inputs.items()}


def _node_differences(model, batch: Batch, loss, sites, i, rows: np.ndarray, u: np.ndarray,
                      replica_tokens: int) -> np.ndarray:
    r""":math:`\varphi_s(u_q) - \varphi_s(\infty)`, shape ``(len(rows), Q)``, for the router rows ``rows`` of
    ``batch`` in layer ``i``: each token's sequence is re-run ``Q + 1`` times, with the token routed in layer
    ``i`` at the scaled margin ``u_q`` (and once hard), everything else hard; φ is the sequence's summed loss."""
    B, S = batch.ids.shape[0], batch.ids.numel() // batch.ids.shape[0]
    Q = len(u)
    unit = np.repeat(rows // S, Q + 1)  # replica r: token rows[r // (Q + 1)], node r % (Q + 1) (Q = hard)
    pos = np.repeat(rows % S, Q + 1)
    node = np.tile(np.arange(Q + 1), rows.size)
    per = max(1, replica_tokens // S)
    phi = np.empty(unit.size)
    idx = [s.index for s in sites]
    for a in range(0, unit.size, per):
        sl = slice(a, a + per)
        R = unit[sl].size
        un = torch.as_tensor(unit[sl])
        rb = Batch(_select(batch.inputs, un, B), batch.ids[un])
        target = node[sl] < Q
        rule = LayerTemperature(rows=torch.as_tensor(np.arange(R)[target] * S + pos[sl][target]),
                                u=torch.as_tensor(u[node[sl][target]]))
        with routing(sites, {j: rule if j == i else LayerTemperature() for j in idx}):
            phi[sl] = _forward_losses(model, rb, loss).sum(-1).numpy()
    phi = phi.reshape(rows.size, Q + 1)
    return phi[:, :Q] - phi[:, Q:]


def _verdict(rows: list[dict], meta: dict) -> str:
    """One line comparing the measurement with the first-order prediction at the smallest τ where both are
    resolved (|value| > 2 standard errors) and carried by at least ``MIN_EFFECTIVE`` effective sequences, or
    saying that none is."""
    if not math.isfinite(meta["G1"]):
        return ("no prediction: a layer has too few router rows (or all margins equal) for a density at 0; "
                "use more tokens")
    for r in sorted(rows, key=lambda r: r["tau"]):
        se = math.hypot(r["gap_stderr"], r["predicted_stderr"])
        if abs(r["gap"]) > 2 * r["gap_stderr"] and abs(r["predicted"]) > 2 * r["predicted_stderr"] and \
                r["effective_sequences"] >= MIN_EFFECTIVE:
            off = r["gap"] / r["predicted"] - 1
            z = (r["gap"] - r["predicted"]) / se if se > 0 else math.inf
            return (f"at tau={r['tau']:g} ({r['near_tie_rows']} router rows near a tie, "
                    f"{r['effective_sequences']:.0f} effective sequences) the measured L_tau - L_0 = "
                    f"{r['gap']:.4g} ± {r['gap_stderr']:.2g} and the first-order prediction G1*tau = "
                    f"{r['predicted']:.4g} ± {r['predicted_stderr']:.2g} differ by {off:+.0%} ({z:+.1f} standard "
                    f"errors)")
    return (f"no tau resolves both the measurement and the prediction (|value| > 2 standard errors, carried by >= "
            f"{MIN_EFFECTIVE} effective sequences): use more tokens")


def harden_inspected(model_name: str, net, batches: list[Batch], out, *, taus=None, layers=None, router_path=None,
                     top_k: int | None = None, seed=0, progress: bool = False) -> tuple[dict, list[Path]]:
    """:func:`harden` for ``softhard inspect --harden``: the task loss of the model (``softhard:digits``: the
    labels; a causal LM: the next token), the files of :func:`write_hardening`; returns ``(summary, paths)``."""
    if model_name == DIGITS:
        from .digits import digits_data

        loss = label_loss(digits_data(seed)[1])
    elif getattr(getattr(net, "config", None), "is_encoder_decoder", False) or "input_ids" not in batches[0].inputs:
        raise InspectError(f"--harden measures the next-token loss of a causal language model; {model_name} "
                           f"({type(net).__name__}) is not one.")
    else:
        loss = lm_loss
    h = harden(net, batches, loss, taus=DEFAULT_TAUS if taus is None else taus, layers=layers,
               router_path=router_path, top_k=top_k, seed=seed, progress=progress)
    h.meta["model"] = str(model_name)
    keys = ("shipped_loss", "hard_loss", "hard_minus_shipped", "hard_minus_shipped_stderr", "G1", "G1_stderr",
            "verdict")
    return {k: h.meta[k] for k in keys}, write_hardening(h, out)


def write_hardening(h: Hardening, out) -> list[Path]:
    """Write ``hardening.{csv,json,tex}`` (one row per τ), ``hardening_layers.{csv,json,tex}`` and
    ``hardening.png`` (with its PDF and SVG) into ``out``; returns the paths."""
    from ..report.fig_hardening import figure_hardening
    from ..results.io import write_table
    from ..results.table import Table

    cols = list(dict.fromkeys(k for r in h.rows for k in r))
    table = Table("hardening", cols, h.rows, h.meta)
    lcols = list(dict.fromkeys(k for r in h.layers for k in r))
    table.extras["hardening_layers"] = Table("hardening_layers", lcols, h.layers, {"seed": h.meta["seed"]})
    return write_table(table, out) + figure_hardening(out)
