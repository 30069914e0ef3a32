r"""Tempering paths: how a layer's routing is made harder with its selection held, for every routing rule.

A *tempering path* is a family of weights :math:`w(\tau)` on the layer's own selected set :math:`S` with
:math:`w(1)` the weights as shipped and :math:`w(\tau)` tending, as :math:`\tau \to 0`, to **hard routing**: the
layer's whole routed mass on one selected expert. Two paths cover every token-routed rule with ``k >= 2``
(derivation: ``docs/hardening.md`` §1):

- ``"logits"`` — the rule's own weight map at :math:`a/\tau` (``site.temper``): for softmax weights
  renormalised over :math:`S`, :math:`w_i(\tau) = c\,\mathrm{softmax}_S(a/\tau)_i`; for a softmax over all
  experts with the selection by the order of the logits (so the largest logit is selected), :math:`w_i(\tau) =
  c\,\mathrm{softmax}(a/\tau)_i`, whose limit puts weight :math:`c` on the largest logit. Its limit margin is
  the top-two logit margin (:func:`limit_margin`);
- ``"weights"`` — the *weights themselves* tempered, their sum held (``site.reweight``):

  .. math:: w_i(\tau) = M\,\frac{w_i^{1/\tau}}{\sum_{j\in S} w_j^{1/\tau}}, \qquad M = \sum_{j\in S} w_j,

  i.e. the paper's softmax gate (2.3) with the log-weights :math:`g_i = \log w_i` as logits, times the layer's
  routed mass :math:`M`. At τ = 1 it is the shipped weights (exactly: the row is returned untouched); as
  τ → 0 it puts all of :math:`M` on the heaviest selected expert. Its limit margin is the top-two margin of the
  log-weights, :math:`\Delta_w = \log w_{(1)} - \log w_{(2)}` over :math:`S` (:func:`weight_margin`); for
  ``k = 2`` the heavier expert's share is exactly :math:`\sigma(\Delta_w/\tau)`, the paper's binary gate. It
  needs only the weights the router returns, so it covers sigmoid weights (DeepSeek-V3 and the other
  ``scoring_func="sigmoid"`` families, Llama 4), ``sqrtsoftplus``, PhiMoE's sparsemixer, softmax weights over a
  biased selection, and weights softhard could not identify. For softmax weights renormalised over :math:`S`
  it *is* the logits path (:math:`\log w_i = a_i - \mathrm{const}`).

:func:`choose_path` picks the logits path where it has a hard limit and the weights path otherwise, or says
why neither exists (``k = 1``: the layer is already hard; a format whose weights cannot be set row by row).
"""

from __future__ import annotations

import math

import torch

from ...model.gates import top_two

__all__ = ["PATHS", "limit_margin", "weight_margin", "power_weights", "choose_path", "path_margin"]

PATHS = ("auto", "logits", "weights")


def _valid(weights: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    return (selected.to(weights.device) >= 0) & (weights > 0) & torch.isfinite(weights)


def limit_margin(rule, logits: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    r"""The margin that decides the τ → 0 limit of the logits path, float64 ``(N,)``.

    .. math:: \Delta = a_{(1)} - a_{(2)} \text{ over } C, \qquad
              C = S \text{ (weights renormalised over } S\text{)}, \quad C = \{1, \dots, K\} \text{ (otherwise)},

    the top-two margin (2.6) (:func:`softhard.model.gates.top_two`) of the logits ``(N, K)`` among the experts
    the weight map compares (``rule``: the layer's :class:`~softhard.inspect.rules.RoutingRule`); ``selected
    (N, k)`` is the model's selection (``-1`` = dropped). Fewer than two competitors: ``+inf``. For top-k of the
    logits with k >= 2 both choices of C give the same Δ.
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


def weight_margin(weights: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    r"""Top-two margin of the log-weights over the selection, float64 ``(N,)``:
    :math:`\Delta_w = \log w_{(1)} - \log w_{(2)}` among the slots with ``selected >= 0`` and ``w > 0``
    (``weights (N, k)``, ``selected (N, k)``); ``+inf`` with fewer than two such slots."""
    w = weights.to(torch.float64)
    g = torch.where(_valid(w, selected), torch.log(w.clamp_min(torch.finfo(torch.float64).tiny)), -math.inf)
    if g.shape[1] < 2:
        return torch.full(g.shape[:1], math.inf, dtype=torch.float64, device=g.device)
    top = torch.topk(g, 2, dim=-1).values
    d = top[:, 0] - top[:, 1]
    return torch.where(torch.isnan(d) | torch.isinf(top[:, 1]), torch.full_like(d, math.inf), d)


def power_weights(weights: torch.Tensor, selected: torch.Tensor, tau) -> torch.Tensor:
    r"""The weights path at τ, float64 ``(N, k)``:
    :math:`w_i(\tau) = M\,w_i^{1/\tau}/\sum_j w_j^{1/\tau}` over the valid slots (``selected >= 0``,
    ``w > 0``), :math:`M` their sum; other slots unchanged. ``tau``: a float or per-row temperatures ``(N,)``;
    a row at τ = 1 (or with fewer than two valid slots) is returned exactly as given."""
    w = weights.to(torch.float64)
    ok = _valid(w, selected)
    t = torch.as_tensor(tau, dtype=torch.float64, device=w.device)
    t = t.reshape(-1, 1) if t.ndim else t.expand(w.shape[0]).reshape(-1, 1)
    z = torch.where(ok, torch.log(w.clamp_min(torch.finfo(torch.float64).tiny)) / t, -math.inf)
    mass = torch.where(ok, w, 0.0).sum(-1, keepdim=True)
    new = torch.where(ok, mass * torch.softmax(z, dim=-1), w)
    keep = (t == 1) | (ok.sum(-1, keepdim=True) < 2)
    return torch.where(keep, w, new)


def path_margin(path: str, rule, logits: torch.Tensor, selected: torch.Tensor,
                weights: torch.Tensor | None) -> torch.Tensor:
    """The limit margin of ``path`` for one router call, float64 ``(N,)``: the logit margin
    (:func:`limit_margin`) on the logits path, :func:`weight_margin` on the weights
    path."""
    if path == "weights":
        return weight_margin(weights, selected)
    return limit_margin(rule, logits, selected)


def _logits_path_refusal(site) -> str | None:
    rule = site.rule
    if rule.weights is None:
        return "its weight map was not identified"
    if rule.weights not in ("softmax", "block"):
        what = "PhiMoE's sparsemixer" if rule.weights == "sparsemixer" else f"{rule.weights}(a/τ)"
        lim = {"sigmoid": " (σ(a/τ) tends to the indicator of a > 0)"}.get(rule.weights, "")
        return f"its weights {what} do not tend to hard top-1 routing as τ → 0{lim}"
    if not rule.normalize and rule.margin_space != "logits":
        return (f"its softmax weights are not renormalised over a selection ({rule.describe()}) that may leave "
                f"out the largest logit, so softmax(a/τ) need not tend to hard routing on the selection")
    if site.temper(lambda logits, selected: torch.ones(logits.shape[0], dtype=torch.float64)) is None:
        return f"its {site.layout.name} format cannot take a temperature per router row"
    return None


def choose_path(site, path: str = "auto") -> tuple[str | None, str | None]:
    """``(path, None)``: the tempering path of a read ``site`` (``"logits"`` where the rule's own weight map has
    a hard limit, else ``"weights"``), or ``(None, why)`` — one clause saying why no path exists (``k = 1``:
    already hard; a format whose weights cannot be set row by row). ``path`` forces ``"logits"`` or
    ``"weights"``."""
    rule = site.rule
    if rule is None:
        return None, "was not called on these inputs"
    if rule.k < 2:
        return None, ("routes to one expert (k = 1): it is already hard routing — with its selection held every "
                      "tempering path leaves it as it is, so hardening it costs exactly 0")
    no_logits = _logits_path_refusal(site)
    no_weights = None if site.reweight(lambda a, s, w: w) is not None else (
        f"its {site.layout.name} format does not let its weights be set row by row")
    if path == "logits" or (path == "auto" and no_logits is None):
        return (None, no_logits) if no_logits else ("logits", None)
    if no_weights is None:
        return "weights", None
    return None, f"{no_logits}, and {no_weights}" if path == "auto" else no_weights
