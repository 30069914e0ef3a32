r"""Hardening a real model end to end: its own loss as the routing temperature τ → 0, beside two predictions
assembled from each layer's margins and the loss contrasts of a sample of its router rows.

Derivations and what the numbers mean: ``docs/hardening.md``. In short:

- **Temperature.** Every MoE layer keeps the model's own selection :math:`S` (its top-k) and weights it along
  a *tempering path* (:mod:`softhard.inspect.price.paths`): the rule's own weight map at :math:`a/\tau`
  (``"logits"``: softmax rules) or the weights themselves tempered with their sum held, :math:`w_i(\tau)
  \propto w_i^{1/\tau}` (``"weights"``: sigmoid, sqrtsoftplus, sparsemixer, biased softmax, unidentified
  weights). At τ = 1 this is the model as shipped, bit for bit; as τ → 0 it tends to **hard routing**, the
  layer's routed mass on one selected expert (the paper's :math:`L_0`, (2.10)).
- **Margin.** The limit is decided by the path's top-two margin Δ: of the logits over :math:`S`
  (:func:`limit_margin`) or of the log-weights (:func:`~softhard.inspect.price.paths.weight_margin`).
- **Curves.** Per token :math:`t` (each predicted position, or each image), the loss :math:`l_t` of the
  model at τ in every layer ("all"), and of the model with layer ℓ at τ and every other layer hard
  ("layer ℓ"); differences are paired per token against the hard model (:math:`\tau = 0`).
- **Predictions**, both *cross-fitted* (the contrasts estimated on one half of the sequences, applied to the
  margins of the other half, and the other way round) and judged with *paired* standard errors (delete-one
  jackknife over sequences, :func:`softhard.estimators.jackknife.jackknife`):

  - first order, :math:`L_\tau - L_0 \approx \tau\sum_\ell G_1^\ell`, with

    .. math:: G_1^{\ell} = \frac{N_{rows}}{N_{pos}} f_{\Delta}(0^+)\;
              \mathbb E\Big[\int_0^\infty \big(\varphi_s(u) - \varphi_s(\infty)\big)\,du \;\Big|\; \Delta_s = 0^+\Big]

    (:math:`\varphi_s(u)`: the summed loss of row s's sequence when row s alone is routed in layer ℓ at the
    scaled margin u, everything else hard), estimated by the boundary kernel at the bandwidths
    :math:`h, h/2, h/4` (the first that agrees with every smaller one is used; their spread enters the error
    bar);
  - the whole curve, :math:`L_\tau - L_0 \approx \frac{1}{N_{pos}}\sum_{rows} \hat\psi(\Delta_r, \Delta_r/\tau)`
    with :math:`\hat\psi(t, u)` the mean contrast profile :math:`E[\varphi(u) - \varphi(\infty) \mid \Delta = t]`
    of the contrasted rows in margin bins (:mod:`softhard.inspect.price.curve`): the contrast kept as a
    function of the margin, valid from τ = 1 down.
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
from ..estimators.jackknife import jackknife
from ..estimators.kernel import density_at_zero, kernel, kernel_bandwidth
from ..estimators.reducer import mean_estimate, resolve_seed
from .hooks import read_routers
from .layouts import InspectError, RouterSite, find_routers
from .loading import Batch
from .price.curve import (BANDWIDTHS, BIN_EDGES, crossfit_stats, margin_bins, profile_basis, sample_rows,
                          segment_sums, sequence_folds)
from .price.losses import label_loss, lm_loss, task_loss
from .price.paths import PATHS, choose_path, limit_margin, power_weights, weight_margin

__all__ = ["Hardening", "harden", "harden_inspected", "lm_loss", "label_loss", "tie_quadrature", "routing",
           "LayerTemperature", "limit_margin", "refusal", "check_hardenable", "write_hardening", "DEFAULT_TAUS",
           "hardening_paths", "task_loss"]

DEFAULT_TAUS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
U_HARD = 100.0  # hard rows: every scaled margin Δ/τ is 100, the others' weights are below e^-100
ACTIVE_U = 5.0  # a row is "near a tie at τ" when Δ <= 5τ (the runner-up keeps a weight >= e^-5 / (1 + e^-5))
MIN_EFFECTIVE = 30  # fewer effective sequences than this: the mean rests on a handful of heavy-tailed terms
TIE_SHARE = 0.05  # more exactly tied rows than this in a layer: said in the verdict
AGREE_SE = 2.0  # "the prediction holds at τ": |measured − predicted| <= 2 paired standard errors
FIRST_ORDER_TARGET = ((0.02, 0.1), (0.8, 1.25))  # issue 20: τ range, band of measured / predicted
CURVE_TARGET = ((0.2, 1.0), (0.75, 1.33))


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
    row), or else hard rows except ``rows`` (indices into the router's rows of each call) routed at the scaled
    margins ``u`` (temperature :math:`\Delta/u` for that row, Δ the path's limit margin: for two selected
    experts the heavier one's share is :math:`\sigma(u)`); ``record`` collects the margins Δ of each call (hard
    layers only)."""

    tau: float | None = None
    rows: torch.Tensor | None = None
    u: torch.Tensor | None = None
    record: list | None = None


def _row_temperatures(d: torch.Tensor, lt: LayerTemperature) -> torch.Tensor:
    """Per-row temperatures ``(N,)`` for margins ``d``: hard (Δ/100) except ``lt.rows`` (Δ/u); exact ties and
    single competitors at 1 (as shipped)."""
    if lt.record is not None:
        lt.record.append(d.cpu().numpy())
    ok = (d > 0) & torch.isfinite(d)
    t = torch.where(ok, d / U_HARD, torch.ones_like(d))
    if lt.rows is not None:
        rows = lt.rows.to(d.device)
        t[rows] = torch.where(ok[rows], d[rows] / lt.u.to(d), t[rows])
    return t


def _layer_context(site: RouterSite, lt: LayerTemperature, path: str):
    """The context manager routing ``site`` by ``lt`` along ``path`` (``None`` when the format cannot)."""
    if path == "weights":
        if lt.tau is not None:
            tau = lt.tau
            return site.reweight(lambda a, sel, w: w if tau == 1 else power_weights(w, sel, tau))
        return site.reweight(lambda a, sel, w: power_weights(w, sel, _row_temperatures(weight_margin(w, sel), lt)))
    if lt.tau is not None:
        return site.temper(lt.tau)  # τ = 1: the same bits (the ratio u(a/1)/u(a) is exactly 1)
    rule = site.rule
    return site.temper(lambda logits, selected: _row_temperatures(limit_margin(rule, logits, selected), lt))


def hardening_paths(sites: list[RouterSite], path: str = "auto") -> dict[int, str | None]:
    """The tempering path of each read site (:func:`~softhard.inspect.price.paths.choose_path`), ``None`` for a
    layer without one."""
    return {s.index: choose_path(s, path)[0] for s in sites}


def refusal(site: RouterSite, path: str = "auto") -> str | None:
    """Why ``site`` (read at least once) has no tempering path to hard routing, or ``None`` when it has one
    (:func:`~softhard.inspect.price.paths.choose_path`: the rule's weight map at a/τ where its limit is hard,
    else the weights tempered with their sum held)."""
    return choose_path(site, path)[1]


def check_hardenable(sites: list[RouterSite], where: str = "harden", path: str = "auto") -> None:
    """Raise :class:`InspectError` (one line) for the first layer :func:`refusal` refuses."""
    for s in sites:
        why = refusal(s, path)
        if why is not None:
            raise InspectError(f"{where}: layer {s.index} ({s.name}) {why}.")


@contextlib.contextmanager
def routing(sites: list[RouterSite], rules: dict[int, LayerTemperature], paths: dict[int, str] | None = None):
    """Within the block, layer ``site.index`` routes by ``rules[site.index]`` (layers without one as shipped),
    along ``paths[site.index]`` (default: :func:`hardening_paths`).

    Each layer keeps the model's own selection; its weights follow the tempering path at τ, with τ per row for
    hard rows and tie contrasts. The sites must have been read (:func:`softhard.inspect.hooks.read_routers`).
    """
    for rule in rules.values():
        if rule.u is not None and not bool((torch.as_tensor(rule.u) > 0).all()):
            fail("u", "routing", "positive scaled margins (u > 0)", rule.u)
    paths = hardening_paths([s for s in sites if s.index in rules]) if paths is None else paths
    with contextlib.ExitStack() as stack:
        for s in sites:
            if s.index in rules:
                path = paths.get(s.index) or "logits"
                ctx = _layer_context(s, rules[s.index], path)
                if ctx is None:
                    raise InspectError(f"harden: layer {s.index} ({s.name}) cannot be re-routed along the {path} "
                                       f"path ({s.rule.describe()}).")
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

    ``rows``: one per τ (the columns of ``hardening.csv``); ``layers``: one per MoE layer (path, margin density
    at 0, bandwidths, contrasted rows, :math:`G_1^\\ell` at each bandwidth); ``meta``: losses of the shipped and
    hard models, settings, seed, the verdict and the sanity checks.
    """

    rows: list[dict]
    layers: list[dict]
    meta: dict = field(default_factory=dict)


def _est(terms):
    return mean_estimate(np.asarray(terms, dtype=np.float64))


def _effective(sums: np.ndarray) -> float:
    r""":math:`n_{eff} = (\sum_j |s_j|)^2 / \sum_j s_j^2` over the per-sequence sums (0 when all are 0)."""
    sq = float((sums ** 2).sum())
    return float(np.abs(sums).sum() ** 2 / sq) if sq > 0 else 0.0


def harden(model, batches: list[Batch], loss: Callable, *, taus=DEFAULT_TAUS, layers=None, router_path=None,
           top_k: int | None = None, nodes: int = 6, max_tie_tokens: int = 512, curve_tokens: int = 128,
           replica_tokens: int = 8192, path: str = "auto", seed=0, progress: bool = False) -> Hardening:
    r"""The model's own loss as its routing is made harder, measured and predicted (module docstring).

    .. math:: \Delta L(\tau) = L_\tau - L_0 \;\approx\; \tau \sum_\ell G_1^{\ell}
              \;\approx\; \frac1{N_{pos}}\sum_{rows}\hat\psi(\Delta_r, \Delta_r/\tau)

    (the [beyond] first-order constant of ``paper.md`` §3 for a real model, and the whole curve;
    ``docs/hardening.md``). Both predictions are cross-fitted over two halves of the sequences and compared
    with the measurement by a paired (delete-one-sequence jackknife) standard error.

    Args:
        model: an ``nn.Module`` in eval mode, called as ``model(**batch.inputs)``.
        batches: the evaluation batches; ``ids (B, S)`` must map the router rows to tokens (row-major); each of
            the ``B`` rows of a batch is one sequence (the unit of the standard errors and of the folds).
        loss: ``(batch, output) -> (B, P)`` per-token losses (:func:`lm_loss`, :func:`label_loss`).
        taus: temperatures ``(T,)`` in (0, 1] for the curve (1 is the model as shipped).
        layers, router_path, top_k: see :func:`softhard.inspect.find_routers`; the routers are read on the
            first batch (their routing rules identified), those it does not call are left out
            (``meta["routers_not_called"]``), layers with ``k = 1`` are already hard and stay as shipped
            (``meta["already_hard"]``), and :func:`check_hardenable` refuses the others with one line.
        nodes: quadrature nodes of the tie contrasts (:func:`tie_quadrature`).
        max_tie_tokens: at most this many rows with a margin within the bandwidth h get a contrast, per layer
            (a seeded Bernoulli sample, each term divided by its inclusion probability).
        curve_tokens: rows per margin bin beyond h that get a contrast, per layer (the whole curve).
        replica_tokens: tokens per forward call when re-running sequences for the contrasts.
        path: ``"auto"`` (the rule's weight map at a/τ where it tends to hard routing, else the weights
            tempered with their sum held), ``"logits"`` or ``"weights"`` (:mod:`softhard.inspect.price.paths`).
        seed: seeds the sampling of contrasted rows and the cross-fitting folds.

    Returns:
        :class:`Hardening`.
    """
    where = "harden"
    seed = resolve_seed(seed, where)
    try:
        taus = sorted({float(t) for t in check_grid(taus, "taus", where, 0.0, True).tolist()}, reverse=True)
        nodes = check_int(nodes, "nodes", where)
        max_tie_tokens = check_int(max_tie_tokens, "max_tie_tokens", where)
        curve_tokens = check_int(curve_tokens, "curve_tokens", where, 0)
        replica_tokens = check_int(replica_tokens, "replica_tokens", where)
    except (TypeError, ValueError) as e:
        raise InspectError(str(e)) from None
    if not taus or taus[0] > 1:
        raise InspectError(f"The 'taus' parameter of {where} must be temperatures in (0, 1]. Got {taus}.")
    if path not in PATHS:
        raise InspectError(f"The 'path' parameter of {where} must be one of {PATHS}. Got {path!r}.")
    if not batches:
        raise InspectError("no tokens to harden (the batch list is empty).")
    sites = find_routers(model, router_path=router_path, layers=layers, top_k=top_k)
    read_routers(model, sites, batches[0].inputs)  # identifies each layer's routing rule
    not_called = [s.name for s in sites if s.rule is None]
    sites = [s for s in sites if s.rule is not None]
    if not sites:
        raise InspectError(f"{where}: no MoE layer was called on these inputs.")
    already = [s for s in sites if s.rule.k < 2]
    sites = [s for s in sites if s.rule.k >= 2]
    if not sites:
        raise InspectError(f"{where}: every MoE layer routes to one expert (k = 1): the model is already hard routing "
                           f"— with its selection held every tempering path leaves it as it is, so hardening it "
                           f"costs exactly 0.")
    check_hardenable(sites, where, path)
    paths = hardening_paths(sites, path)
    idx = [s.index for s in sites]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batches) * (2 + len(taus) * (1 + len(sites))), desc="hardening: curves", unit="fwd",
                   leave=False)

    def run(batch, rules):
        with routing(sites, rules, paths):
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
    # sequences: the rows of a batch; their positions (loss terms) and router rows are contiguous
    n_per = [x.shape[0] for x in hard]
    pos_starts = np.concatenate([[0], np.cumsum(np.repeat([x.shape[1] for x in hard], n_per))[:-1]]).astype(int)
    row_len = [b.ids.numel() // b.ids.shape[0] for b in batches]
    row_starts = np.concatenate([[0], np.cumsum(np.repeat(row_len, n_per))[:-1]]).astype(int)
    n_pos, n_rows = l_hard.size, sum(b.ids.numel() for b in batches)
    u, omega = tie_quadrature(nodes)
    lays = {i: _layer_contrasts(model, batches, loss, sites, paths, i, np.concatenate(margins[i]), u,
                                max_tie_tokens, curve_tokens, replica_tokens, seed, progress) for i in idx}
    curves = {"all": {t: flat(curve_all[t]) for t in taus},
              "layer": {(i, t): flat(curve_layer[(i, t)]) for i in idx for t in taus}}
    rows, layer_rows, summary = _estimate(taus, l_ship, l_hard, curves, idx, lays, sites, paths, u, omega,
                                          row_starts, pos_starts, n_pos, seed)
    hs = _est(l_hard - l_ship)
    meta = {
        "model_class": type(model).__name__, "layers": idx, "routers_not_called": not_called,
        "already_hard": [s.name for s in already], "paths": {str(i): paths[i] for i in idx}, "tokens": n_pos,
        "router_rows": n_rows, "sequences": len(pos_starts), "batches": len(batches), "taus": taus, "seed": seed,
        "nodes": nodes, "max_tie_tokens": max_tie_tokens, "curve_tokens": curve_tokens, "path": path,
        "min_effective": MIN_EFFECTIVE, "agree_se": AGREE_SE,
        "shipped_loss": float(l_ship.mean()), "hard_loss": float(l_hard.mean()),
        "hard_minus_shipped": hs.value, "hard_minus_shipped_stderr": hs.stderr, **summary,
        "tau1_max_abs_change": float(np.abs(curves["all"][1.0] - l_ship).max()) if 1.0 in taus else None,
        "exact_ties": int(sum(int((np.concatenate(margins[i]) == 0).sum()) for i in idx)),
        "definition": "selection held (the model's top-k); weights along the layer's tempering path: 'logits' = the "
                      "rule's weight map at logits/tau, 'weights' = w^(1/tau) renormalised to the layer's routed "
                      "mass; tau -> 0 is hard routing (all of the mass on one selected expert); margin = the "
                      "path's top-two margin; per-layer curves: that layer at tau, every other layer hard; "
                      "predictions cross-fitted over two halves of the sequences, errors by a delete-one-sequence "
                      "jackknife",
    }
    meta["targets"] = {"first order": [list(t) for t in FIRST_ORDER_TARGET],
                       "whole curve": [list(t) for t in CURVE_TARGET]}
    meta["target_check"] = {"first order": _target(rows, "ratio", FIRST_ORDER_TARGET),
                            "whole curve": _target(rows, "curve_ratio", CURVE_TARGET)}
    meta["holds_at"] = {"first order": _spans(rows, "first_order_holds"), "whole curve": _spans(rows, "curve_holds")}
    meta["verdict"] = _verdict(rows, meta)
    tied = [(lay["layer"], lay["exact_ties"] / lay["router_rows"]) for lay in layer_rows
            if lay["router_rows"] and lay["exact_ties"] > TIE_SHARE * lay["router_rows"]]
    if tied:  # rows whose selected experts weigh exactly the same have no hard limit along the path
        meta["verdict"] += "; " + ", ".join(f"layer {i}: {sh:.0%}" for i, sh in tied) + (
            " of the router rows give their top two experts exactly equal weight: no tempering path separates them, "
            "so they stay as shipped (hard model included)")
    return Hardening(rows, layer_rows, meta)


def _layer_contrasts(model, batches, loss, sites, paths, i, d, u, cap, curve_tokens, replica_tokens, seed,
                     progress) -> dict:
    """The margins ``d (N_rows,)`` of layer ``i``, its bandwidth ``h``, the sample of rows that get a contrast
    (``take``, ``prob``) and their node differences ``diffs (N_rows, Q)`` (0 elsewhere); ``h = nan`` when the
    layer has too few margins for a density at 0."""
    finite = np.isfinite(d)
    out = {"d": d, "h": math.nan, "take": np.zeros(d.size, bool), "prob": np.zeros(d.size),
           "diffs": np.zeros((d.size, len(u))), "density0": None}
    try:
        if int(finite.sum()) < 2:
            raise ValueError("fewer than two margins")
        h = kernel_bandwidth(d[finite], one_sided=True, local=False)  # the rule docs/hardening.md measured
        out["density0"] = density_at_zero(d[finite], bandwidth=h, one_sided=True)
    except ValueError:  # fewer than two margins, all equal, or fewer than two within h: no density at 0
        return out
    rng = np.random.default_rng(np.random.SeedSequence([seed, i, 17]))
    take, prob = sample_rows(d, h, cap, curve_tokens, rng)
    out.update(h=h, take=take, prob=prob)
    offsets = np.cumsum([0] + [b.ids.numel() for b in batches])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(take.sum()), desc=f"hardening: contrasts, layer {i}", unit="token", leave=False)
    for b, batch in enumerate(batches):
        rows = np.nonzero(take[offsets[b]:offsets[b + 1]])[0]
        if rows.size:
            out["diffs"][offsets[b] + rows] = _node_differences(model, batch, loss, sites, i, rows, u,
                                                                replica_tokens, paths)
            if bar is not None:
                bar.update(rows.size)
    if bar is not None:
        bar.close()
    return out


class _Columns:
    """Named column blocks of a per-sequence statistics matrix."""

    def __init__(self):
        self.parts, self.slices, self.width = [], {}, 0

    def add(self, name: str, block: np.ndarray):
        block = block.reshape(block.shape[0], -1)
        self.slices[name] = slice(self.width, self.width + block.shape[1])
        self.width += block.shape[1]
        self.parts.append(block)

    def matrix(self) -> np.ndarray:
        return np.concatenate(self.parts, axis=1)


def _safe_div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def _jack(S: np.ndarray, fn) -> tuple[np.ndarray, np.ndarray]:
    """``(values, stderrs)`` of :func:`jackknife` (1-d arrays); NaN errors with fewer than two sequences."""
    if S.shape[0] < 2:
        v = np.atleast_1d(np.asarray(fn(S.sum(0)[None]), dtype=np.float64)[0])
        return v, np.full(v.shape, np.nan)
    e = jackknife(S, fn)
    return np.atleast_1d(e.value), np.atleast_1d(e.stderr)


def _estimate(taus, l_ship, l_hard, curves, idx, lays, sites, paths, u, omega, row_starts, pos_starts, n_pos, seed):
    """The table rows (one per τ), the layer rows and the summary of :func:`harden` from its measurements and
    contrasts: per-sequence sums, cross-fitted predictions, delete-one-sequence jackknife errors."""
    T, Q, NB, NBIN = len(taus), len(u), len(BANDWIDTHS), len(BIN_EDGES) + 1
    tau = np.asarray(taus)
    n_seq = len(pos_starts)
    cols = _Columns()
    cols.add("npos", segment_sums(np.ones(n_pos), pos_starts))
    meas_all = np.stack([curves["all"][t] - l_hard for t in taus], 1)
    cols.add("meas_all", segment_sums(meas_all, pos_starts))
    inter = meas_all.copy()
    ok = {}
    for i in idx:
        ml = np.stack([curves["layer"][(i, t)] - l_hard for t in taus], 1)
        inter -= ml
        cols.add(f"meas{i}", segment_sums(ml, pos_starts))
        L = lays[i]
        ok[i] = math.isfinite(L["h"])
        if not ok[i]:
            continue
        d, h = L["d"], L["h"]
        finite = np.isfinite(d)
        dz = torch.as_tensor(np.where(finite, d, 0.0))
        K = np.stack([kernel(dz, m * h, True).numpy() * finite for m in BANDWIDTHS], 1)
        w = np.where(L["take"], 1.0 / np.where(L["prob"] > 0, L["prob"], 1.0), 0.0)
        c = L["diffs"] @ omega
        cols.add(f"K1{i}", segment_sums(K, row_starts))
        cols.add(f"KC{i}", segment_sums(K * (c * w)[:, None], row_starts))
        bins = margin_bins(d, h)
        onehot = np.zeros((d.size, NBIN))
        onehot[bins >= 0, bins[bins >= 0]] = 1.0
        cols.add(f"cnt{i}", segment_sums(onehot, row_starts))
        num = onehot[:, :, None] * (L["diffs"] * w[:, None])[:, None, :]
        cols.add(f"num{i}", segment_sums(num.reshape(d.size, -1), row_starts))
        bas = np.empty((n_seq, T, NBIN, Q))
        for j, t in enumerate(taus):
            B = profile_basis(d / t, u).T  # (N_rows, Q); an infinite margin gives 0
            bas[:, j] = segment_sums((onehot[:, :, None] * B[:, None, :]).reshape(d.size, -1),
                                     row_starts).reshape(n_seq, NBIN, Q)
        cols.add(f"bas{i}", bas)
    cols.add("inter", segment_sums(inter, pos_starts))
    X = cols.matrix()
    fold = sequence_folds(n_seq, seed)
    S = crossfit_stats(X, fold)
    width, sl = cols.width, cols.slices
    crossfit = n_seq >= 4 and bool((fold == 0).any() and (fold == 1).any())

    def parts(tot):
        A, B = tot[:, :width], tot[:, width:]
        return A, B, (lambda name: (A[:, sl[name]], B[:, sl[name]]))

    def g1(get, npos, i):  # full-sample and cross-fitted G1 at each bandwidth, (m, NB) each
        (k1a, k1b), (kca, kcb) = get(f"K1{i}"), get(f"KC{i}")
        full = (kca + kcb) / npos[:, None]
        cf = (k1a * _safe_div(kcb, k1b) + k1b * _safe_div(kca, k1a)) / npos[:, None]
        return full, cf

    def curve(get, npos, i):  # cross-fitted whole-curve prediction of layer i, (m, T)
        (ca, cb), (na, nb_), (ba, bb) = get(f"cnt{i}"), get(f"num{i}"), get(f"bas{i}")
        m = ca.shape[0]
        na, nb_ = na.reshape(m, NBIN, Q), nb_.reshape(m, NBIN, Q)
        ba, bb = ba.reshape(m, T, NBIN, Q), bb.reshape(m, T, NBIN, Q)
        pooled = _safe_div(na + nb_, (ca + cb)[:, :, None])
        psi_a = np.where(ca[:, :, None] > 0, _safe_div(na, ca[:, :, None]), pooled)
        psi_b = np.where(cb[:, :, None] > 0, _safe_div(nb_, cb[:, :, None]), pooled)
        psi_a, psi_b = np.nan_to_num(psi_a), np.nan_to_num(psi_b)  # a bin without rows in either fold: no rows
        return (np.einsum("mtbq,mbq->mt", ba, psi_b) + np.einsum("mtbq,mbq->mt", bb, psi_a)) / npos[:, None]

    # 1. G1 of each layer at each bandwidth, and the differences between bandwidths (Lepski's choice)
    pairs = [(a, b) for a in range(NB) for b in range(a + 1, NB)]

    def fn1(tot):
        A, B, get = parts(tot)
        npos = A[:, sl["npos"]][:, 0] + B[:, sl["npos"]][:, 0]
        out = []
        for i in idx:
            if ok[i]:
                full, _ = g1(get, npos, i)
                out += [full] + [full[:, [a]] - full[:, [b]] for a, b in pairs]
        return np.concatenate(out, 1) if out else np.zeros((tot.shape[0], 1))

    v1, s1 = _jack(S, fn1)
    chosen, spread, off = {}, {}, 0
    for i in idx:
        if not ok[i]:
            chosen[i], spread[i] = None, math.nan
            continue
        g, gse = v1[off:off + NB], s1[off:off + NB]
        dv = {p: (v1[off + NB + n], s1[off + NB + n]) for n, p in enumerate(pairs)}
        off += NB + len(pairs)
        b_star = NB - 1
        for a in range(NB):  # the widest bandwidth that agrees with every narrower one
            if all(abs(dv[(a, b)][0]) <= 2 * dv[(a, b)][1] for b in range(a + 1, NB)):
                b_star = a
                break
        chosen[i] = b_star
        nb = b_star + 1 if b_star + 1 < NB else b_star - 1  # the next narrower bandwidth (wider at the narrowest)
        spread[i] = float(abs(g[b_star] - g[nb])) if NB > 1 else 0.0
        lays[i]["G1_bandwidths"] = [(float(g[b]), float(gse[b])) for b in range(NB)]

    # 2. the predictions at the chosen bandwidths, beside the measurements, paired
    okl = [i for i in idx if ok[i]]

    def fn2(tot):
        A, B, get = parts(tot)
        m = tot.shape[0]
        npos = A[:, sl["npos"]][:, 0] + B[:, sl["npos"]][:, 0]
        meas = lambda name: (A[:, sl[name]] + B[:, sl[name]]) / npos[:, None]  # noqa: E731
        ma = meas("meas_all")
        first, curv = np.zeros((m, T)), np.zeros((m, T))
        per = []
        for i in idx:
            mi = meas(f"meas{i}")
            if ok[i]:
                full, cf = g1(get, npos, i)
                fi = (cf[:, chosen[i]] if crossfit else full[:, chosen[i]])[:, None] * tau[None]
                ci = curve(get, npos, i) if crossfit else np.full((m, T), np.nan)
                gi = np.stack([full[:, chosen[i]], cf[:, chosen[i]]], 1)
            else:
                fi = ci = np.full((m, T), np.nan)
                gi = np.full((m, 2), np.nan)
            first, curv = first + fi, curv + ci
            per += [mi, fi, ci, mi - fi, mi - ci, _safe_div(mi, fi), _safe_div(mi, ci), gi]
        g_all = sum(g1(get, npos, i)[0][:, chosen[i]] for i in okl) if okl and len(okl) == len(idx) else \
            np.full(m, np.nan)
        head = [ma, first, curv, ma - first, ma - curv, _safe_div(ma, first), _safe_div(ma, curv), meas("inter"),
                g_all[:, None]]
        return np.concatenate(head + per, 1)

    v2, s2 = _jack(S, fn2)
    blocks = [T] * 8 + [1]
    per_layer = [T] * 7 + [2]
    cuts = np.cumsum([0] + blocks + per_layer * len(idx))
    block = lambda k: (v2[cuts[k]:cuts[k + 1]], s2[cuts[k]:cuts[k + 1]])  # noqa: E731
    meas_v, meas_s = block(0)
    first_v, first_s = block(1)
    curve_v, curve_s = block(2)
    dfirst_s, dcurve_s = block(3)[1], block(4)[1]
    rfirst_v, rfirst_s = block(5)
    rcurve_v, rcurve_s = block(6)
    inter_s = block(7)[1]
    g_all_v, g_all_s = block(8)
    bw_all = sum(spread[i] for i in idx) if all(ok.values()) else math.nan
    seq_sums = segment_sums(meas_all, pos_starts)
    rows = []
    for j, t in enumerate(taus):
        la = curves["all"][t]
        bw = t * bw_all
        row = {"tau": t, "near_tie_rows": int(sum((lays[i]["d"] <= ACTIVE_U * t).sum() for i in idx))}
        m = _est(la - l_hard)
        row.update(gap=m.value, gap_stderr=m.stderr, gap_stderr_seq=float(meas_s[j]),
                   effective_sequences=_effective(seq_sums[:, j]))
        row.update(predicted=float(first_v[j]), predicted_stderr=float(math.hypot(first_s[j], bw)),
                   ratio=float(rfirst_v[j]),
                   ratio_stderr=float(math.hypot(rfirst_s[j], abs(rfirst_v[j]) * bw / abs(first_v[j])))
                   if first_v[j] else math.nan,
                   diff_stderr=float(math.hypot(dfirst_s[j], bw)))
        row.update(predicted_curve=float(curve_v[j]), predicted_curve_stderr=float(curve_s[j]),
                   curve_ratio=float(rcurve_v[j]), curve_ratio_stderr=float(rcurve_s[j]),
                   curve_diff_stderr=float(dcurve_s[j]))
        resolved = abs(m.value) > 2 * row["gap_stderr_seq"] and row["effective_sequences"] >= MIN_EFFECTIVE
        row["resolved"] = bool(resolved)
        row["first_order_consistent"] = bool(abs(m.value - row["predicted"]) <= AGREE_SE * row["diff_stderr"])
        row["curve_consistent"] = bool(abs(m.value - row["predicted_curve"]) <= AGREE_SE * row["curve_diff_stderr"])
        (fa, fb), (ca, cb) = FIRST_ORDER_TARGET[1], CURVE_TARGET[1]
        row["first_order_holds"] = bool(resolved and row["first_order_consistent"] and fa <= row["ratio"] <= fb)
        row["curve_holds"] = bool(resolved and row["curve_consistent"] and ca <= row["curve_ratio"] <= cb)
        s = _est(la - l_ship)
        row.update(change_vs_shipped=s.value, change_vs_shipped_stderr=s.stderr)
        for n, i in enumerate(idx):
            k0 = 9 + 8 * n
            li = curves["layer"][(i, t)]
            e = _est(li - l_hard)
            row[f"layer{i}_gap"], row[f"layer{i}_gap_stderr"] = e.value, e.stderr
            row[f"layer{i}_gap_stderr_seq"] = float(block(k0)[1][j])
            bwi = t * spread[i]
            row[f"layer{i}_predicted"] = float(block(k0 + 1)[0][j])
            row[f"layer{i}_predicted_stderr"] = float(math.hypot(block(k0 + 1)[1][j], bwi))
            row[f"layer{i}_predicted_curve"] = float(block(k0 + 2)[0][j])
            row[f"layer{i}_predicted_curve_stderr"] = float(block(k0 + 2)[1][j])
            row[f"layer{i}_diff_stderr"] = float(math.hypot(block(k0 + 3)[1][j], bwi))
            row[f"layer{i}_curve_diff_stderr"] = float(block(k0 + 4)[1][j])
            row[f"layer{i}_ratio"] = float(block(k0 + 5)[0][j])
            row[f"layer{i}_curve_ratio"] = float(block(k0 + 6)[0][j])
        e = _est(inter[:, j])
        row["interaction"], row["interaction_stderr"] = e.value, e.stderr
        row["interaction_stderr_seq"] = float(inter_s[j])
        rows.append(row)
    layer_rows = []
    for n, i in enumerate(idx):
        L, site = lays[i], next(s for s in sites if s.index == i)
        g = block(9 + 8 * n + 7)
        row = {"layer": i, "module": site.name, "rule": site.rule.describe(), "path": paths[i],
               "router_rows": int(L["d"].size), "exact_ties": int((L["d"] == 0).sum()), "bandwidth": L["h"]}
        if ok[i]:
            h_used = BANDWIDTHS[chosen[i]] * L["h"]
            d = L["d"]
            near = np.isfinite(d) & (d <= L["h"])
            f0 = density_at_zero(d[np.isfinite(d)], bandwidth=h_used, one_sided=True) if int(
                (np.isfinite(d) & (d <= h_used)).sum()) >= 2 else None
            kk = kernel(torch.as_tensor(np.where(np.isfinite(d), d, 0.0)), h_used, True).numpy() * np.isfinite(d)
            w = np.where(L["take"], 1.0 / np.where(L["prob"] > 0, L["prob"], 1.0), 0.0)
            wsum = float((kk * w).sum())
            row.update(bandwidth_used=h_used, near_tie=int(near.sum()), contrasted=int(L["take"].sum()),
                       contrasted_near=int((L["take"] & near).sum()),
                       density0=f0.value if f0 is not None else math.nan,
                       density0_stderr=f0.stderr if f0 is not None else math.nan,
                       mean_contrast=float((kk * w * (L["diffs"] @ omega)).sum() / wsum) if wsum else math.nan,
                       G1=float(g[0][0]), G1_stderr=float(math.hypot(g[1][0], spread[i])),
                       G1_bandwidth_spread=spread[i], G1_crossfit=float(g[0][1]))
            for m_, (gv, gs) in zip(BANDWIDTHS, L["G1_bandwidths"]):
                tag = "h" if m_ == 1 else f"h{int(round(1 / m_))}"
                row[f"G1_{tag}"], row[f"G1_{tag}_stderr"] = gv, gs
        else:
            row.update(bandwidth_used=math.nan, near_tie=0, contrasted=0, contrasted_near=0, density0=math.nan,
                       density0_stderr=math.nan, mean_contrast=math.nan, G1=math.nan, G1_stderr=math.nan,
                       G1_bandwidth_spread=math.nan, G1_crossfit=math.nan)
        layer_rows.append(row)
    summary = {"G1": float(g_all_v[0]), "G1_stderr": float(math.hypot(g_all_s[0], bw_all)),
               "G1_bandwidth_spread": bw_all, "crossfit": crossfit,
               "folds": [int((fold == 0).sum()), int((fold == 1).sum())]}
    return rows, layer_rows, summary


def _select(inputs: dict, unit: torch.Tensor, B: int) -> dict:
    return {k: v[unit] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == B else v for k, v in inputs.items()}


def _node_differences(model, batch: Batch, loss, sites, i, rows: np.ndarray, u: np.ndarray,
                      replica_tokens: int, paths: dict | None = None) -> np.ndarray:
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
        with routing(sites, {j: rule if j == i else LayerTemperature() for j in idx}, paths):
            phi[sl] = _forward_losses(model, rb, loss).sum(-1).numpy()
    phi = phi.reshape(rows.size, Q + 1)
    return phi[:, :Q] - phi[:, Q:]


def _ranges(taus: list[float]) -> str:
    """``"0.01–0.05"`` for τ values that are consecutive on the grid, else a comma list."""
    return "–".join(f"{t:g}" for t in (min(taus), max(taus))) if len(taus) > 1 else f"{taus[0]:g}"


def _spans(rows: list[dict], flag: str) -> list[list[float]]:
    """The runs of consecutive τ (ascending, on the table's grid) where ``row[flag]`` is true."""
    runs, cur = [], []
    for r in sorted(rows, key=lambda r: r["tau"]):
        if r[flag]:
            cur.append(r["tau"])
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def _target(rows: list[dict], key: str, target) -> dict:
    """The ratios ``key`` at the τ of the target's range, whether the measurement is resolved there, and whether
    the target is met: every such τ resolved and its ratio inside the band."""
    (lo, hi), (a, b) = target
    sel = [r for r in sorted(rows, key=lambda r: r["tau"]) if lo - 1e-12 <= r["tau"] <= hi + 1e-12]
    ok = [r["resolved"] and math.isfinite(r[key]) and a <= r[key] <= b for r in sel]
    return {"taus": [r["tau"] for r in sel], "ratios": [r[key] for r in sel],
            "stderrs": [r[f"{key}_stderr"] for r in sel], "resolved": [r["resolved"] for r in sel],
            "band": [a, b], "range": [lo, hi], "met": bool(sel) and all(ok)}


def _verdict(rows: list[dict], meta: dict) -> str:
    """One line: over which range of τ each prediction holds (measured / predicted inside its accuracy band —
    ×0.8–1.25 for the first order, ×0.75–1.33 for the whole curve — and within ``AGREE_SE`` paired standard errors
    of the measurement, which is resolved and carried by at least ``MIN_EFFECTIVE`` effective sequences), the
    ratios there, and the issue's targets (those bands at τ = 0.02–0.1 and τ = 0.2–1)."""
    if not math.isfinite(meta["G1"]):
        return ("no prediction: a layer has too few router rows (or all margins equal) for a density at 0; "
                "use more tokens")
    if not meta.get("crossfit", True):
        return "no cross-fitted prediction: fewer than 4 sequences to split into two folds; use more tokens"
    parts = []
    if not any(r["resolved"] for r in rows):
        parts.append(f"no tau resolves the measurement (|value| > 2 standard errors, carried by >= {MIN_EFFECTIVE} "
                     f"effective sequences): use more tokens")
    for name, flag, key, target in (("first order G1*tau", "first_order_holds", "ratio", FIRST_ORDER_TARGET),
                                    ("whole curve", "curve_holds", "curve_ratio", CURVE_TARGET)):
        runs = _spans(rows, flag)
        if runs:
            best = max(runs, key=len)
            rs = [r[key] for r in rows if r["tau"] in best]
            held = f"holds at tau = {_ranges(best)} (measured/predicted {min(rs):.2f}–{max(rs):.2f})"
        else:
            held = "holds at no resolved tau"
        tg = _target(rows, key, target)
        got = ", ".join(f"{r:.2f} ± {e:.2f}" + ("" if ok else " (not resolved)")
                        for r, e, ok in zip(tg["ratios"], tg["stderrs"], tg["resolved"])) or "no tau of the grid"
        parts.append(f"{name} {held}; at tau = {tg['range'][0]:g}–{tg['range'][1]:g} the ratio is {got} "
                     f"(target {tg['band'][0]:g}–{tg['band'][1]:g}: {'met' if tg['met'] else 'missed'})")
    return "; ".join(parts)


def harden_inspected(model_name: str, net, batches: list[Batch], out, *, taus=None, layers=None, router_path=None,
                     top_k: int | None = None, seed=0, max_tie_tokens: int = 512, path: str = "auto",
                     progress: bool = False) -> tuple[dict, list[Path]]:
    """:func:`harden` for ``softhard inspect --harden``: the task loss of the model (``softhard:digits``: the
    labels; a causal LM: the next token), the files of :func:`write_hardening`; returns ``(summary, paths)``."""
    loss = task_loss(model_name, net, batches, seed, "--harden")
    h = harden(net, batches, loss, taus=DEFAULT_TAUS if taus is None else taus, layers=layers,
               router_path=router_path, top_k=top_k, seed=seed, max_tie_tokens=max_tie_tokens, path=path,
               progress=progress)
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
