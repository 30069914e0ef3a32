r"""Finding the routers of a model, reading their outputs, and re-routing a block at a temperature.

**Finding.** :func:`find_routers` looks for router modules in the model's language model (for a multimodal
model: the submodule whose ``config`` is the ``text_config``) by what the model declares — the classes its
``_can_record_outputs["router_logits"]`` recorders target (transformers' own router-logit machinery) — and,
for any other module, by name: a module called ``gate``/``router``/``gating`` beside an ``experts`` module
(the digits MoE, user models). ``--router-path PATTERN`` (``fnmatch`` on module names) overrides both.

**Reading.** The router's forward output is read by its *format*, recognised from its structure at the first
call (:data:`LAYOUTS`):

======================  ============================================================================
format                  output
======================  ============================================================================
``triple``              ``(logits, weights (N, k), indices (N, k), ...)`` — most families; a first element
                        that is a probability vector (Gemma 4) is read as ``log p`` (the logits up to a shift)
``masked-scores``       ``(scores (N, K), logits (N, K))`` with zeros off the selected set (Llama 4)
``switch-top1``         ``(one-hot dispatch, max probability, logits)``, capacity-dropped tokens all-zero
``nllb-top2``           ``(top-1 mask, combine weights (N, K), logits)``, top-2 with capacity
``jetmoe``              ``(sorted slots, token of each slot, gates, expert sizes, logits)``
``logits``              the logits tensor alone; the block selects (Dbrx, ``nn.Linear`` gates)
``product-key``         Doge's block output ``(hidden, (2, N, n) sub-key logits)``: the ``K = n²`` expert scores
                        are the sums ``x_i + y_j``; the block selects their top-k
``generic``             a module named by the user returning a tuple: the first float ``(…, K)`` tensor is
                        the logits, the first integer tensor the selection
======================  ============================================================================

At the first call the layer's :class:`~softhard.inspect.rules.RoutingRule` is *identified* from what the
router declares and does (:func:`identify_rule`): ``k`` from the selection it returns; the selection bias
from a bias argument or a ``e_score_correction_bias``/``expert_bias``/``balancing_biases`` tensor; groups
from ``num_group``/``n_group``, ``topk_group`` and ``topk_method``; hash routing from an integer
``token id -> experts`` table; the weight map from the returned weights (the per-expert ratio
``w / u(a)`` must be constant for ``u`` = softmax or sigmoid, normalised or not); the score map of a biased
selection by *probing*: the router is run once more with a random bias (restored afterwards, no hooks run) and
the candidate maps that reproduce its selection are kept. The rule's selection is then compared with the
model's own at every call (``agreement``).

**Re-routing** (the API the hardening code uses). For a site ``s`` read at least once:

- ``s.temper(tau)`` — a context manager under which the block routes with the model's **own selection** and
  weights computed from :math:`a/\tau`: the returned weights are multiplied by :math:`u(a/\tau)/u(a)` (``u``
  the identified weight map, normalisation included), so constants such as ``routed_scaling_factor`` are
  kept and at ``τ = 1`` the shipped weights are reproduced bit for bit (:math:`x/x = 1` exactly). ``None``
  when unavailable (weights not identified, capacity routers other than Switch, a user module returning a
  tuple). ``tau`` may also be a callable ``tau(logits (N, K) float64, selected (N, k)) -> (N,)`` giving each
  router row its own temperature at every call (the hardening runs rows hard, or one row at a chosen
  temperature); formats whose weights are rescaled by that ratio (``triple`` with an identified weight map,
  ``masked-scores``, ``nllb-top2``, ``jetmoe``), ``logits`` and ``product-key`` take it, the others give
  ``None``;
- ``s.reweight(fn)`` — a context manager under which the block keeps the model's **own selection** and
  weights its selected experts by ``fn(logits (N, K) float64, selected (N, k), weights (N, k) float64) ->
  (N, k) float64`` (``weights``: what the model computed; ``selected``: ``-1`` where a slot is dropped). The
  prices of a router change (:mod:`softhard.inspect.price`) are built on it: a tempering path of the weights
  themselves, and cutting ``k``. Formats that return the weights (``triple`` with a weights slot,
  ``masked-scores``, ``nllb-top2``, ``jetmoe``) take any ``fn``; ``logits`` (the block weights its top-k by a
  softmax of their logits, renormalised) takes it by handing the block ``log fn(...)`` on the selection and
  the lowest float elsewhere, so the block's softmax reproduces ``fn``'s weights up to their sum (exact for
  weights that sum to 1); ``product-key`` and ``generic`` give ``None``. Returning ``weights`` unchanged gives
  the model as shipped, bit for bit;
- ``s.densify()`` — every (non-skip) expert active with the model's weight rule at ``k = K``, or ``None``.

``s.layout.temper(s, tau)``, ``s.layout.reweight(s, fn)`` and ``s.layout.densify(s)`` are the same calls.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .._validate import fail
from .rules import RoutingRule, score_function

__all__ = ["InspectError", "Layout", "RouterSite", "Routed", "LAYOUTS", "find_routers", "parse_layers",
           "identify_rule", "settle", "language_model", "IDENTIFY_MIN_TOKENS", "IDENTIFY_MAX_TOKENS"]


class InspectError(ValueError):
    """A user-fixable problem with a model, a file or an option (one line; the CLI exits 2)."""


def _fail(param: str, where: str, rule: str, value) -> None:
    fail(param, where, rule, value, InspectError)


@dataclass(eq=False)
class Routed:
    """One router call, read: ``logits (N, K)`` in the router's dtype, the model's selection ``(N, k)`` (``-1``
    where a token is dropped), the weights ``(N, k)`` when returned, the token ids ``(N,)`` when the router
    takes them (hash routing), whether the selection was read from the model (``observed``) or computed by
    the rule (a router returning logits only), and ``truth (N, K)`` bool: the experts seen computing each token
    (filled by :class:`softhard.inspect.hooks.RouterCapture` after the block ran; ``None`` when not observable)."""

    logits: torch.Tensor
    selected: torch.Tensor
    weights: torch.Tensor | None = None
    token_ids: torch.Tensor | None = None
    observed: bool = True
    truth: torch.Tensor | None = None


@dataclass(frozen=True)
class Layout:
    """How to read (``parse(site, args, output) -> Routed``) and re-route (``temper(site, tau)``,
    ``densify(site)``, ``reweight(site, fn)``: context managers or ``None``) one router output format."""

    name: str
    parse: Callable
    temper: Callable
    densify: Callable
    reweight: Callable | None = None


@dataclass(eq=False)
class RouterSite:
    """One MoE layer: its router module and the block that calls it.

    Attributes:
        index: position among the layers found (0, 1, ...), in module order.
        name, block_name: module paths of the router and of its block (the router's parent).
        num_experts, top_k: ``K`` and the ``k`` the model routes to (final after the first call).
        layout: the output format (``"unread"`` before the first call).
        rule: the :class:`~softhard.inspect.rules.RoutingRule`, identified at the first call.
        config: the (text) config of the model, when it has one.
        user_top_k: ``k`` given by the user for a router whose block declares none.
        identified: whether the rule is settled (:func:`identify_rule`); rule_note: why a settled rule is still
            ambiguous ("" when it is not).
    """

    index: int
    name: str
    block_name: str
    router: nn.Module
    block: nn.Module
    layout: "Layout"
    num_experts: int
    top_k: int
    rule: RoutingRule | None = None
    config: object | None = None
    user_top_k: int | None = None
    slots: dict = field(default_factory=dict)
    identified: bool = False
    rule_note: str = ""

    def observe(self, routed: Routed, truth: torch.Tensor | None) -> None:
        """After the block ran on a call read while the rule was not settled: what its experts computed
        (``truth (N, K)`` bool or ``None``) joins the evidence, and the rule is revised."""
        ev = self.slots.get("evidence")
        if ev is None or self.identified:
            return
        ev.add_truth(routed, truth)
        self.rule, self.rule_note = ev.rule(self, False)
        self.identified = ev.decided
        if self.identified:
            self.slots.pop("evidence", None)

    def read(self, args, output) -> Routed:
        """Read one forward call of the router (identifying the format and the rule at the first call)."""
        if self.layout is UNREAD:
            self.layout = _detect(self, args, output)
        routed = self.layout.parse(self, args, output)
        if self.rule is None or not self.identified:
            self.rule = identify_rule(self, args, output, routed)
            self.num_experts, self.top_k = self.rule.num_experts, self.rule.k
        if not routed.observed:
            routed.selected = self.rule.select(routed.logits, routed.token_ids)
        elif self.rule.zero_experts and routed.weights is not None:  # skip slots masked to (0, weight 0)
            skip = self.rule.num_experts - self.rule.zero_experts
            routed.selected = torch.where(routed.weights.reshape(routed.selected.shape) == 0, skip, routed.selected)
        return routed

    def parse(self, args, output) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (N, K), selected (N, k))`` from one forward call of the router."""
        r = self.read(args, output)
        return r.logits, r.selected

    def route(self, hidden: torch.Tensor, args=()) -> Routed:
        """The router on other hidden states (its ``forward``, so no hooks run), read."""
        args = (hidden, *args[1:])
        return self.read(args, self.router.forward(*args))

    def temper(self, tau):
        """Context manager: the model's own selection, weights from ``a/τ`` (module docstring); or ``None``.
        ``tau``: a float, or a callable giving per-row temperatures (module docstring). The site must have been
        read (:func:`softhard.inspect.hooks.read_routers`)."""
        self._check_read("temper")
        return self.layout.temper(self, tau)

    def reweight(self, fn):
        """Context manager: the model's own selection, its weights replaced by ``fn(logits (N, K) float64,
        selected (N, k), weights (N, k) float64) -> (N, k)`` (module docstring); or ``None`` when the format
        cannot take them. The site must have been read (:func:`softhard.inspect.hooks.read_routers`)."""
        self._check_read("reweight")
        return None if self.layout.reweight is None else self.layout.reweight(self, fn)

    def densify(self):
        """Context manager: every expert active with the model's weight rule; or ``None``. The site must have
        been read (:func:`softhard.inspect.hooks.read_routers`)."""
        self._check_read("densify")
        return self.layout.densify(self)

    def _check_read(self, what):
        if self.rule is None:
            raise InspectError(f"{what}: layer {self.index} ({self.name}) has not been read yet; run one forward "
                               f"first (softhard.inspect.hooks.read_routers(model, sites, inputs)).")


# ----------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def _replace_output(module: nn.Module, fn: Callable):
    """Within the block, ``module``'s forward output is replaced by ``fn(args, output)``."""
    handle = module.register_forward_hook(lambda m, args, out: fn(args, out))
    try:
        yield
    finally:
        handle.remove()


def _token_ids(args) -> torch.Tensor | None:
    for v in args[1:]:
        if isinstance(v, torch.Tensor) and not v.is_floating_point() and v.dtype != torch.bool:
            return v.reshape(-1)
    return None


def _as_logits(site, first: torch.Tensor) -> torch.Tensor:
    """The logits ``(N, K)``; a probability output (non-negative rows summing to 1) becomes ``log p``."""
    K = first.shape[-1]
    x = first.reshape(-1, K)
    if "probs" not in site.slots:
        xf = x.float()
        site.slots["probs"] = bool(x.numel() and (xf >= 0).all() and ((xf.sum(-1) - 1).abs() < 1e-4).all())
    return torch.log(x) if site.slots["probs"] else x


def _row_tau(tau, logits: torch.Tensor, selected: torch.Tensor):
    """``tau`` as a divisor of logits ``(N, K)``: the float itself, or the per-row temperatures ``(N, 1)`` float64
    of a callable ``tau(logits float64, selected (N, k))``."""
    if not callable(tau):
        return tau
    t = torch.as_tensor(tau(logits.to(torch.float64), selected), dtype=torch.float64, device=logits.device)
    return t.reshape(-1, 1)


def _ratio(site, logits, idx, tau) -> torch.Tensor:
    """:math:`u(a/\\tau)/u(a)` on ``idx (N, k)``, exactly 1 at τ = 1 (and where ``u(a)`` is 0 or not finite);
    ``tau`` a float or a callable of per-row temperatures (:func:`_row_tau`)."""
    rule = site.rule
    tau = _row_tau(tau, logits, idx)
    num, den = rule.weight_shape(logits, idx, tau), rule.weight_shape(logits, idx, 1.0)
    r = num / den
    return torch.where(torch.isfinite(r) & (den != 0), r, torch.ones_like(r))


def _all_experts(n: int, K: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(K, device=like.device, dtype=like.dtype).expand(n, K)


def _dense_weights(site, logits: torch.Tensor) -> torch.Tensor:
    rule = site.rule
    K_real = rule.num_experts - rule.zero_experts
    w = rule.weight_shape(logits, None, 1.0)
    if rule.weight_scale is not None:
        w = w * rule.weight_scale.to(w)
    return w[:, :K_real]


# ----------------------------------------------------------------------------------------------
# triple: (logits, weights, indices, ...)


def _triple_parse(site, args, out):
    s = site.slots
    if "index" not in s:
        K = out[0].shape[-1]
        n = out[0].numel() // K
        ints = [i for i, v in enumerate(out) if isinstance(v, torch.Tensor) and not v.is_floating_point()
                and v.numel() % max(n, 1) == 0 and 0 < v.numel() <= n * K]
        if not ints:
            raise InspectError(f"layer {site.index} ({site.name}): its router output holds no selection tensor.")
        s["index"] = ints[0]
        k_numel = out[ints[0]].numel()
        fl = [i for i, v in enumerate(out) if i > 0 and isinstance(v, torch.Tensor) and v.is_floating_point()
              and v.numel() == k_numel]
        s["weights"] = fl[0] if fl else None
    logits = _as_logits(site, out[0])
    n = logits.shape[0]
    sel = out[s["index"]].reshape(n, -1).long()
    w = out[s["weights"]].reshape(n, -1) if s["weights"] is not None else None
    return Routed(logits, sel, w, _token_ids(args))


def _triple_temper(site, tau):
    rule = site.rule
    if rule is None or rule.weights in (None, "block") or site.slots.get("weights") is None:
        return None
    if rule.weights == "sparsemixer":
        return _sparsemixer_temper(site, tau)
    wi, ii = site.slots["weights"], site.slots["index"]

    def fn(args, out):
        logits = _as_logits(site, out[0]).to(torch.float64)
        w = out[wi]
        idx = out[ii].reshape(logits.shape[0], -1).long()
        new = (w.reshape(idx.shape).to(torch.float64) * _ratio(site, logits, idx, tau)).to(w.dtype).reshape(w.shape)
        return tuple(new if i == wi else v for i, v in enumerate(out))

    return _replace_output(site.router, fn)


def _triple_reweight(site, fn):
    if site.rule is None or site.slots.get("weights") is None:
        return None
    wi, ii = site.slots["weights"], site.slots["index"]

    def hook(args, out):
        logits = _as_logits(site, out[0]).to(torch.float64)
        w = out[wi]
        idx = out[ii].reshape(logits.shape[0], -1).long()
        new = fn(logits, idx, w.reshape(idx.shape).to(torch.float64)).to(w.dtype).reshape(w.shape)
        return tuple(new if i == wi else v for i, v in enumerate(out))

    return _replace_output(site.router, hook)


def _triple_dense(site):
    rule = site.rule
    if rule is not None and rule.weights == "sparsemixer":
        return _sparsemixer_dense(site)
    if rule is None or rule.weights in (None, "block") or site.slots.get("weights") is None:
        return None
    wi, ii = site.slots["weights"], site.slots["index"]

    def fn(args, out):
        logits = _as_logits(site, out[0]).to(torch.float64)
        w = _dense_weights(site, logits)
        n, K = w.shape
        new_w = w.to(out[wi].dtype).reshape(*out[wi].shape[:-1], K)
        new_i = _all_experts(n, K, out[ii]).reshape(*out[ii].shape[:-1], K)
        return tuple(new_w if i == wi else new_i if i == ii else v for i, v in enumerate(out))

    return _replace_output(site.router, fn)


def _sparsemixer_temper(site, tau):  # PhiMoE: the model's own sparsemixer on a/τ (eval mode, deterministic)
    if callable(tau):
        return None
    mixer = sys.modules[type(site.router).__module__].sparsemixer

    def fn(args, out):
        w, idx = mixer(out[0] / tau, jitter_eps=site.router.router_jitter_noise, training=False, top_k=site.top_k)
        return out[0], w, idx

    return _replace_output(site.router, fn)


def _sparsemixer_dense(site):
    def fn(args, out):
        logits = out[0]
        return logits, torch.softmax(logits, dim=-1), _all_experts(logits.shape[0], logits.shape[1], out[2])

    return _replace_output(site.router, fn)


# ----------------------------------------------------------------------------------------------
# masked scores (Llama 4): (sigmoid of the top-k logits, -inf -> 0 elsewhere, logits)


def _masked_parse(site, args, out):
    scores, logits = out
    K = logits.shape[-1]
    logits, scores = logits.reshape(-1, K), scores.reshape(-1, K)
    k = site.slots.setdefault("k", int((scores != 0).sum(-1).max()) if scores.numel() else 1)
    top = torch.topk(scores.float(), k, dim=-1)
    sel = torch.sort(torch.where(top.values != 0, top.indices, -1), -1).values
    return Routed(logits, sel, scores.gather(1, sel.clamp_min(0)), _token_ids(args))


def _masked_temper(site, tau):
    if site.rule is None or site.rule.weights in (None, "block"):
        return None

    def fn(args, out):
        scores, logits = out
        r = _masked_parse(site, args, out)
        a, sc = r.logits.to(torch.float64), scores.reshape(r.logits.shape)
        sel = r.selected.clamp_min(0)
        ratio = torch.ones_like(a).scatter(1, sel, _ratio(site, a, sel, tau))
        new = torch.where(sc != 0, sc.to(torch.float64) * ratio, 0.0).to(scores.dtype).reshape(scores.shape)
        return new, logits

    return _replace_output(site.router, fn)


def _masked_reweight(site, fn):
    if site.rule is None:
        return None

    def hook(args, out):
        scores, logits = out
        r = _masked_parse(site, args, out)
        sel = r.selected
        new = fn(r.logits.to(torch.float64), sel, r.weights.to(torch.float64))
        sc = torch.zeros(r.logits.shape, dtype=torch.float64, device=new.device)
        sc = sc.scatter(1, sel.clamp_min(0), torch.where(sel >= 0, new, 0.0))
        return sc.to(scores.dtype).reshape(scores.shape), logits

    return _replace_output(site.router, hook)


def _masked_dense(site):
    if site.rule is None or site.rule.weights in (None, "block"):
        return None

    def fn(args, out):
        scores, logits = out
        a = logits.reshape(-1, logits.shape[-1]).to(torch.float64)
        return _dense_weights(site, a).to(scores.dtype).reshape(scores.shape), logits

    return _replace_output(site.router, fn)


# ----------------------------------------------------------------------------------------------
# SwitchTransformers: (dispatch one-hot, max prob, logits), top-1 with capacity


def _switch_parse(site, args, out):
    dispatch, prob, logits = out
    K = logits.shape[-1]
    d = dispatch.reshape(-1, K)
    idx = torch.where(d.sum(-1) > 0, d.argmax(-1), -1)
    return Routed(logits.reshape(-1, K), idx[:, None], prob.reshape(-1, 1), _token_ids(args))


def _switch_temper(site, tau):
    if callable(tau):
        return None
    r = site.router

    def fn(args, out):
        dispatch, _, logits = out
        probs = torch.softmax(logits / tau, dim=-1, dtype=r.dtype).to(r.input_dtype)
        return dispatch, torch.max(probs, dim=-1).values.unsqueeze(-1), logits

    return _replace_output(r, fn)


def _switch_dense(site):
    block, r, K = site.block, site.router, site.num_experts

    def fn(args, out):
        h = args[0]
        x = h.reshape(-1, h.shape[-1])
        p = torch.softmax(r.classifier(x.to(r.dtype)), dim=-1, dtype=r.dtype).to(h.dtype)
        y = sum(p[:, k:k + 1] * block.experts[f"expert_{k}"](x) for k in range(K))
        return y.reshape(h.shape)

    return _replace_output(block, fn)


# ----------------------------------------------------------------------------------------------
# NLLB-MoE: (top-1 mask, combine weights (N, K), logits), top-2 with capacity


def _nllb_parse(site, args, out):
    _, combine, logits = out
    K = logits.shape[-1]
    c = combine.reshape(-1, K)
    top = torch.topk(c.float(), 2, dim=-1)
    sel = torch.where(top.values > 0, top.indices, -1)
    return Routed(logits.reshape(-1, K), sel, c.gather(1, sel.clamp_min(0)), _token_ids(args))


def _nllb_temper(site, tau):
    if site.rule is None or site.rule.weights in (None, "block"):
        return None

    def fn(args, out):
        mask, combine, logits = out
        r = _nllb_parse(site, args, out)
        a, c = r.logits.to(torch.float64), combine.reshape(r.logits.shape)
        sel = r.selected.clamp_min(0)
        ratio = torch.ones_like(a).scatter(1, sel, _ratio(site, a, sel, tau))
        new = torch.where(c != 0, c.to(torch.float64) * ratio, 0.0).to(combine.dtype).reshape(combine.shape)
        return mask, new, logits

    return _replace_output(site.router, fn)


def _nllb_reweight(site, fn):
    if site.rule is None:
        return None

    def hook(args, out):
        mask, combine, logits = out
        r = _nllb_parse(site, args, out)
        sel = r.selected
        new = fn(r.logits.to(torch.float64), sel, r.weights.to(torch.float64))
        c = torch.zeros(r.logits.shape, dtype=torch.float64, device=new.device)
        c = c.scatter(1, sel.clamp_min(0), torch.where(sel >= 0, new, 0.0))
        return mask, c.to(combine.dtype).reshape(combine.shape), logits

    return _replace_output(site.router, hook)


# ----------------------------------------------------------------------------------------------
# JetMoe: (sorted slots, token of each slot, gates, expert sizes, logits); top-k of the logits


def _jetmoe_parse(site, args, out):
    index_sorted, batch_index, gates, sizes, logits = out
    K = logits.shape[-1]
    logits = logits.reshape(-1, K)
    n = logits.shape[0]
    expert_of_slot = torch.repeat_interleave(torch.arange(K, device=logits.device),
                                             torch.as_tensor(sizes, device=logits.device))
    mask = torch.zeros(n, K, dtype=torch.bool, device=logits.device)
    mask[batch_index, expert_of_slot] = True
    k = int(mask.sum(-1).max()) if n else 1
    sel = torch.sort(torch.topk(mask.to(torch.int8), k, dim=-1).indices, -1).values
    w = torch.zeros(n, K, dtype=gates.dtype, device=gates.device)
    w[batch_index, expert_of_slot] = gates
    return Routed(logits, sel, w.gather(1, sel), _token_ids(args))


def _jetmoe_temper(site, tau):
    if site.rule is None or site.rule.weights in (None, "block"):
        return None

    def fn(args, out):
        index_sorted, batch_index, gates, sizes, logits = out
        r = _jetmoe_parse(site, args, out)
        a, K = r.logits.to(torch.float64), r.logits.shape[1]
        ratio = torch.ones_like(a).scatter(1, r.selected, _ratio(site, a, r.selected, tau))
        expert_of_slot = torch.repeat_interleave(torch.arange(K, device=a.device),
                                                 torch.as_tensor(sizes, device=a.device))
        slot_r = ratio[batch_index, expert_of_slot]
        return index_sorted, batch_index, (gates.to(torch.float64) * slot_r).to(gates.dtype), sizes, logits

    return _replace_output(site.router, fn)


def _jetmoe_reweight(site, fn):
    if site.rule is None:
        return None

    def hook(args, out):
        index_sorted, batch_index, gates, sizes, logits = out
        r = _jetmoe_parse(site, args, out)
        a, K = r.logits.to(torch.float64), r.logits.shape[1]
        new = fn(a, r.selected, r.weights.to(torch.float64))
        full = torch.zeros_like(a).scatter(1, r.selected, new)
        expert_of_slot = torch.repeat_interleave(torch.arange(K, device=a.device),
                                                 torch.as_tensor(sizes, device=a.device))
        return index_sorted, batch_index, full[batch_index, expert_of_slot].to(gates.dtype), sizes, logits

    return _replace_output(site.router, hook)


# ----------------------------------------------------------------------------------------------
# logits alone (the block selects), and a user module returning a tuple (``generic``)


def _logits_parse(site, args, out):
    K = out.shape[-1]
    logits = out.reshape(-1, K)
    return Routed(logits, torch.empty(logits.shape[0], 0, dtype=torch.long), None, _token_ids(args), observed=False)


def _logits_temper(site, tau):
    if not callable(tau):
        return _replace_output(site.router, lambda args, out: out / tau)

    def fn(args, out):
        a = out.reshape(-1, out.shape[-1])
        t = _row_tau(tau, a, site.rule.select(a, _token_ids(args)))
        return (a / t.to(a.dtype)).reshape(out.shape)

    return _replace_output(site.router, fn)


def _logits_reweight(site, fn):
    """The block weights its top-k by the softmax of their logits: hand it ``log w'`` on the selection and the
    lowest float elsewhere, so that it selects the same experts and weights them ``w' / sum(w')``."""
    rule = site.rule
    if rule is None or rule.margin_space != "logits":
        return None

    def hook(args, out):
        a = out.reshape(-1, out.shape[-1])
        a64 = a.to(torch.float64)
        sel = rule.select(a, _token_ids(args))
        w = torch.softmax(a64.gather(1, sel), dim=-1)
        new = fn(a64, sel, w)
        low = torch.finfo(a.dtype).min
        logw = torch.where(new > 0, torch.log(new.clamp_min(torch.finfo(torch.float64).tiny)), -math.inf)
        b = torch.full_like(a64, -math.inf).scatter(1, sel, logw)
        b = torch.where(torch.isfinite(b), b, low).to(a.dtype)
        if new.requires_grad:  # a gradient through the weights (the prices' linear contrasts): no shortcut
            return b.reshape(out.shape)
        same = (new == w).all(-1, keepdim=True)  # rows left as they were: the logits themselves, bit for bit
        return torch.where(same, a, b).reshape(out.shape)

    return _replace_output(site.router, hook)


@contextlib.contextmanager
def _set_top_k(block, k):
    old = block.top_k
    block.top_k = k
    try:
        yield
    finally:
        block.top_k = old


def _logits_dense(site):
    if not isinstance(getattr(site.block, "top_k", None), int):
        return None
    return _set_top_k(site.block, site.num_experts)


def _generic_parse(site, args, out):
    parts = [v for v in (out if isinstance(out, (tuple, list)) else ()) if isinstance(v, torch.Tensor)]
    K = site.num_experts
    logits = next((v for v in parts if v.is_floating_point() and v.shape[-1] == K), None)
    if logits is None:
        _fail("router_path", "find_routers", f"a module whose output is (or holds) the logits tensor (..., {K})",
              f"{site.name} returning {type(out).__name__}")
    logits = logits.reshape(-1, K)
    n = logits.shape[0]
    chosen = next((v for v in parts if not v.is_floating_point() and v.numel() % n == 0 and 0 < v.numel() <= n * K),
                  None)
    if chosen is not None:
        return Routed(logits, chosen.reshape(n, -1).long(), None, _token_ids(args))
    return Routed(logits, torch.empty(n, 0, dtype=torch.long), None, _token_ids(args), observed=False)


def _product_parse(site, args, out):
    """Doge's product-key router: the block returns ``(hidden, logits (2, N, n))``; expert ``(i, j)`` of the
    ``K = n²`` scores ``x_i + y_j`` (row-major), selected by top-k in the block."""
    x, y = out[1][0], out[1][1]
    logits = (x[:, :, None] + y[:, None, :]).reshape(x.shape[0], -1)
    return Routed(logits, torch.empty(logits.shape[0], 0, dtype=torch.long), None, _token_ids(args), observed=False)


def _product_temper(site, tau):
    """Doge: divide the sub-key logits by τ, so every product score ``x_i + y_j`` is divided by τ. Per-row
    temperatures divide the two sub-key halves of each product row (the block's ``view(2, N, n)``) by that
    row's τ."""
    gate = getattr(site.router, "router_gate", None)
    if gate is None:
        return None
    if not callable(tau):
        return _replace_output(gate, lambda args, out: out / tau)
    rule = site.rule

    def fn(args, out):
        n = out.shape[-1] // 2
        xy = out.reshape(2, -1, n)
        a = (xy[0][:, :, None] + xy[1][:, None, :]).reshape(xy.shape[1], -1)
        t = _row_tau(tau, a, rule.select(a))
        return (xy / t.to(out.dtype)[None]).reshape(out.shape)

    return _replace_output(gate, fn)


def _product_dense(site):
    if not isinstance(getattr(site.router, "top_k", None), int):
        return None
    return _set_top_k(site.router, site.num_experts)


def _none(site, *a):
    return None


def _unread_parse(site, args, out):  # pragma: no cover - replaced at the first call
    raise InspectError(f"layer {site.index} ({site.name}) has not been read yet")


UNREAD = Layout("unread", _unread_parse, _none, _none)
LAYOUTS: dict[str, Layout] = {
    lay.name: lay
    for lay in [
        Layout("triple", _triple_parse, _triple_temper, _triple_dense, _triple_reweight),
        Layout("masked-scores", _masked_parse, _masked_temper, _masked_dense, _masked_reweight),
        Layout("switch-top1", _switch_parse, _switch_temper, _switch_dense),
        Layout("nllb-top2", _nllb_parse, _nllb_temper, _none, _nllb_reweight),
        Layout("jetmoe", _jetmoe_parse, _jetmoe_temper, _none, _jetmoe_reweight),
        Layout("logits", _logits_parse, _logits_temper, _logits_dense, _logits_reweight),
        Layout("product-key", _product_parse, _product_temper, _product_dense),
        Layout("generic", _generic_parse, _none, _none),
    ]
}


def _describe_output(out) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        parts = [f"{'float' if v.is_floating_point() else str(v.dtype).replace('torch.', '')}{tuple(v.shape)}"
                 if isinstance(v, torch.Tensor) else type(v).__name__ for v in out]
        return f"a {type(out).__name__} ({', '.join(parts)})"
    return f"a {type(out).__name__}"


def _detect(site, args, out) -> Layout:
    """The format of a router output, from its structure (see the module docstring)."""
    tensors = isinstance(out, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in out)
    if isinstance(out, torch.Tensor) and out.is_floating_point() and out.ndim >= 2 and out.shape[-1] >= 2:
        return LAYOUTS["logits"]
    if isinstance(out, (tuple, list)) and len(out) == 5 and isinstance(out[3], (list, tuple)):
        return LAYOUTS["jetmoe"]
    if tensors and len(out) == 3 and not out[0].is_floating_point() and out[2].is_floating_point():
        if out[1].shape[-1] == 1:
            return LAYOUTS["switch-top1"]
        if out[1].shape == out[2].shape:
            return LAYOUTS["nllb-top2"]
    if (tensors and len(out) == 2 and all(v.is_floating_point() for v in out) and out[1].ndim == 3
            and out[1].shape[0] == 2 and out[0].shape != out[1].shape):
        return LAYOUTS["product-key"]
    if (tensors and len(out) == 2 and all(v.is_floating_point() for v in out) and out[0].shape == out[1].shape
            and bool((out[0] == 0).any())):
        return LAYOUTS["masked-scores"]
    if (isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor) and out[0].is_floating_point()
            and out[0].ndim >= 2 and any(isinstance(v, torch.Tensor) and not v.is_floating_point() for v in out[1:])):
        return LAYOUTS["triple"]
    if site.slots.get("user"):
        return LAYOUTS["generic"]
    raise InspectError(f"layer {site.index} ({site.name}, class {type(site.router).__name__}) returns "
                       f"{_describe_output(out)}, not a router output softhard can read (logits, weights and "
                       f"selected experts); name the module that returns the router logits with --router-path.")


# ----------------------------------------------------------------------------------------------
# identifying the routing rule (first call)

_BIAS_NAMES = ("e_score_correction_bias", "expert_bias", "balancing_biases")
_GROUP_NAMES = ("num_group", "n_group")
_K_NAMES = ("top_k", "num_experts_per_tok", "moe_topk", "top_k_experts", "moe_k", "num_selected_experts")


def _first_attr(objs, names, kind=int):
    for o in objs:
        if o is None:
            continue
        for n in names:
            v = getattr(o, n, None)
            if isinstance(v, kind) and not isinstance(v, bool):
                return v
    return None


def _find_bias(site, args, K):
    """``(tensor (K,), where)``: a bias argument of the router, or a named tensor of the router (or of a child
    of it, e.g. Ernie's ``moe_statics``); ``(None, None)`` when there is none."""
    for i, v in enumerate(args[1:], start=1):
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() == K and v.ndim <= 2:
            return v.reshape(K), ("arg", i)
    for mod in [site.router, *site.router.children()]:
        for n in _BIAS_NAMES:
            v = getattr(mod, n, None)
            if isinstance(v, torch.Tensor) and v.numel() == K:
                return v.reshape(K), ("attr", v)
    return None, None


def _find_hash_table(router, k):
    for name, buf in list(router.named_buffers(recurse=False)):
        if not buf.is_floating_point() and buf.ndim == 2 and buf.shape[1] == k and buf.shape[0] > 1:
            return buf
    return None


def _declared_scores(site) -> list[str]:
    out = []
    for o in (site.router, site.config):
        for n in ("scoring_func", "expert_selection_fn", "score_func"):
            v = getattr(o, n, None) if o is not None else None
            if isinstance(v, str):
                out.append(v)
    return out


IDENTIFY_MIN_TOKENS = 16  # a rule is settled from at least this many tokens (fewer only when the input ends)
IDENTIFY_MAX_TOKENS = 4096  # evidence kept per layer; a rule still ambiguous by then is settled with a note
_FILLS = (-math.inf, 0.0)  # what the experts of the groups left out are masked with (AXK2: 0.0)


def _weight_levels(rule_kw, a, sel, w, candidates):
    """Per candidate weight map ``(psi, normalize)``: the simplest form that fits the returned weights ``w (N, k)``
    slot by slot — level 0: ``w = u(a)``; 1: ``w = c·u(a)``, one constant; 2: ``w = c_i·u_i(a)``, one constant per
    expert; ``None``: none — with ``(level, scale (K,) or None, u on the slots)``."""
    K = a.shape[1]
    wd = w.dtype
    w = w.to(torch.float64)
    ok = (sel >= 0) & (sel < K) & (w != 0) & torch.isfinite(w)
    tol = max(1e-4, 4 * torch.finfo(wd).eps)
    out = []
    for psi, norm in ((p, n) for p in candidates for n in (True, False)):
        try:
            u = RoutingRule(**{**rule_kw, "weights": psi, "normalize": norm}).weight_shape(a, sel.clamp(0, K - 1))
        except (ValueError, TypeError):
            continue
        r = w / u
        good = ok & torch.isfinite(r) & (u > 0)
        if not bool(good.any()):
            continue
        rg = r[good]

        def spread(v):
            lo, hi = float(v.min()), float(v.max())
            return (hi - lo) / max(abs(hi), abs(lo), 1e-300)

        if float((rg - 1).abs().max()) <= tol:
            out.append(((psi, norm), 0, None, u))
        elif spread(rg) <= tol:
            out.append(((psi, norm), 1, torch.full((K,), float(rg.median()), dtype=torch.float64), u))
        else:
            scale = torch.full((K,), math.nan, dtype=torch.float64)
            fits = True
            for e in torch.unique(sel[good]).tolist():
                re = r[good & (sel == e)]
                if spread(re) > tol:
                    fits = False
                    break
                scale[e] = float(re.median())
            if fits:
                seen = scale[~torch.isnan(scale)]
                out.append(((psi, norm), 2, torch.where(torch.isnan(scale), seen.median(), scale), u))
    return out, ok, tol


def _identify_weights(rule_kw, logits, sel, w, candidates, final: bool = False):
    """``(psi, normalize, scale (K,) or None, decided, note)``: the weight map of the simplest form that fits the
    returned weights (:func:`_weight_levels`). It is *decided* when exactly one candidate fits at the lowest level
    (or the candidates that fit there give the same weights, e.g. normalised over ``k = 1``) and the data can tell
    that level from the simpler ones: two slots for one constant, two experts seen twice each for per-expert
    constants. With ``final`` the best guess is returned (first in candidate order) with a note when it is not
    decided."""
    a = logits.to(torch.float64)
    fits, ok, tol = _weight_levels(rule_kw, a, sel, w, candidates)
    if not fits:
        n = int(ok.sum())
        return None, False, None, n >= 2, "no weight map fits the returned weights"
    best = min(f[1] for f in fits)
    at = [f for f in fits if f[1] == best]
    u0 = at[0][3]
    same = all(torch.allclose(f[3], u0, rtol=tol, atol=0) and f[1] == best for f in at)
    slots = int(ok.sum())
    counts = torch.bincount(sel[ok].clamp(0, a.shape[1] - 1).reshape(-1), minlength=a.shape[1])
    enough = {0: slots >= 1, 1: slots >= 2, 2: int((counts >= 2).sum()) >= 2}[best]
    decided = enough and (len(at) == 1 or same)
    (psi, norm), level, scale, _ = at[0]
    note = ""
    if not decided:
        names = ", ".join(f"{p}{' normalised' if n else ''}" for (p, n), *_ in at)
        note = (f"weights: {len(at)} maps fit equally ({names}) on {slots} slots" if len(at) > 1 and not same else
                f"weights: too few slots ({slots}) to tell the form apart")
    if scale is not None:
        seen = scale[~torch.isnan(scale)]
        lo, hi = float(seen.min()), float(seen.max())
        if hi - lo <= tol * max(abs(hi), abs(lo)):
            c = float(seen.median())
            scale = None if abs(c - 1) <= tol else torch.full((a.shape[1],), c, dtype=torch.float64)
    return psi, norm, scale, decided, note


def _probe_call(site, args, bias_where, rule_kw, alive, logits, gen) -> list:
    """The candidates ``(scores, fill)`` of ``alive`` whose selection matches the router's own on this call under
    random selection biases (one per candidate score map, plus one shifted below every score when the groups left
    out could be masked with 0, which tells the two masks apart)."""
    K = logits.shape[1]
    probes = []
    for phi in dict.fromkeys(c[0] for c in alive):
        sc = score_function(phi)(logits.to(torch.float64))
        spread = float(sc.std()) or 1.0
        probes.append(torch.randn(K, generator=gen, dtype=torch.float64) * spread)
        if len({c[1] for c in alive}) > 1:
            probes.append(probes[-1] - (float(sc.max()) + 2 * spread + 1.0))
    for probe in probes:
        kind, where = bias_where
        with torch.no_grad():
            if kind == "arg":
                ref = args[where]
                pargs = tuple(probe.to(ref).reshape(ref.shape) if i == where else v for i, v in enumerate(args))
                out = site.router.forward(*pargs)
            else:
                saved = where.detach().clone()
                try:
                    where.copy_(probe.to(where).reshape(where.shape))
                    out = site.router.forward(*args)
                finally:
                    where.copy_(saved)
            seen = torch.sort(site.layout.parse(site, args, out).selected, -1).values
            keep = []
            for phi, fill in alive:
                r = RoutingRule(**{**rule_kw, "scores": phi, "group_fill": fill, "bias": probe.to(logits.device)})
                if torch.equal(r.select(logits, _token_ids(args)).to(seen.device), seen):
                    keep.append((phi, fill))
        alive = keep
        if len(alive) <= 1:
            break
    return alive


class _Evidence:
    """What the router calls of one layer have shown so far (:func:`identify_rule`): the declared structure (read
    once), the returned weights (up to :data:`IDENTIFY_MAX_TOKENS` tokens), the score maps and group masks still
    consistent with every probe, and what the experts were seen to compute."""

    def __init__(self, site, args, routed):
        r, block, cfg = site.router, site.block, site.config
        K = routed.logits.shape[1]
        if routed.observed:
            k = routed.selected.shape[1]
        else:
            k = _first_attr([block, r, cfg], _K_NAMES) or site.user_top_k or 1
        n_exp = _first_attr([getattr(block, "experts", None)], ("num_experts",))
        zero = K - n_exp if isinstance(n_exp, int) and 0 < n_exp < K else 0
        kw = dict(num_experts=K, k=min(k, K), zero_experts=zero,
                  capacity=site.layout.name in ("switch-top1", "nllb-top2"))
        if site.layout.name == "product-key":
            kw["zero_experts"] = 0
        source = [f"{type(r).__name__} ({site.layout.name} output)"]
        table = _find_hash_table(r, k)
        if table is not None and routed.token_ids is not None:
            kw["hash_table"] = table
            source.append("hash table")
        method = getattr(r, "topk_method", None)
        G, t = _first_attr([r], _GROUP_NAMES), _first_attr([r], ("topk_group",))
        if G and t and G > 1 and K % G == 0 and method in (None, "noaux_tc", "group_limited_greedy"):
            kw.update(n_group=G, topk_group=t, group_top=1 if method == "group_limited_greedy" else min(2, K // G))
            source.append(f"groups n_group={G}, topk_group={t}" + (f", {method}" if method else ""))
        self.kw, self.source = kw, source
        self.bias, self.bias_where = (None, None) if table is not None else _find_bias(site, args, K)
        self.declared = _declared_scores(site)
        self.read_weights = routed.weights is not None and site.layout.name not in ("logits", "product-key")
        grouped = kw.get("n_group", 1) > 1 and kw.get("topk_group", 1) < kw.get("n_group", 1)
        if self.bias is not None:
            phis = list(dict.fromkeys([*self.declared, "sigmoid", "softmax", "logits"]))
            self.alive = [(phi, fill) for phi in phis for fill in (_FILLS if grouped else _FILLS[:1])]
        else:
            self.alive = None
        self.gen = torch.Generator().manual_seed(20240611)
        self.tokens = self.kept = 0
        self.a, self.sel, self.w = [], [], []
        self.fixed, self.truth_tokens = None, 0  # experts seen computing every token, when not the router's choice
        self.truth_seen = 0  # tokens whose block has run since (truth observed or not)
        self.decided = False

    def add(self, site, args, routed) -> None:
        n = routed.logits.shape[0]
        self.tokens += n
        if self.read_weights and self.kept < IDENTIFY_MAX_TOKENS:
            take = min(n, IDENTIFY_MAX_TOKENS - self.kept)
            self.a.append(routed.logits[:take].detach().to(torch.float64).cpu())
            self.sel.append(routed.selected[:take].detach().cpu())
            self.w.append(routed.weights[:take].detach().cpu())
            self.kept += take
        if self.alive is not None and len(self.alive) > 1:
            kw = {**self.kw, "weights": None}
            self.alive = _probe_call(site, args, self.bias_where, kw, self.alive, routed.logits, self.gen)

    def add_truth(self, routed, truth: torch.Tensor | None) -> None:
        """After the block ran: ``truth (N, K)`` bool, the experts seen computing each token (``None``: not
        observable). A set that is the same for every token (up to capacity drops) and is not the router's own
        choice is a fixed selection (NLLB-MoE in transformers 5.23); two different such sets, or a union larger
        than ``k``, rule it out."""
        n = routed.logits.shape[0]
        self.truth_seen += n
        if truth is None or self.fixed == "no":
            return
        seen = truth.any(-1)
        rows = truth[seen]
        if not rows.shape[0]:
            return
        union = rows.any(0)
        sel = routed.selected.to(truth.device)
        mine = torch.zeros_like(truth).scatter(1, sel.clamp_min(0), True) & (sel >= 0).any(-1, keepdim=True)
        if not bool((mine[seen] != rows).any()):
            return  # the experts compute the router's choice: no evidence of a fixed set
        if int(union.sum()) > self.kw["k"] or float((rows == union).all(-1).float().mean()) < 0.5:
            self.fixed = "no"
            return
        cand = tuple(torch.nonzero(union).reshape(-1).tolist())
        if self.fixed is None or self.fixed == cand:
            self.fixed = cand
            self.truth_tokens += int(rows.shape[0])
        else:
            self.fixed = "no"

    def rule(self, site, final: bool) -> tuple[RoutingRule, str]:
        kw = dict(self.kw)
        notes = []
        declared = self.declared
        if self.a:
            a, sel, w = torch.cat(self.a), torch.cat(self.sel), torch.cat(self.w)
            psi, norm, scale, w_ok, note = _identify_weights(kw, a, sel, w,
                                                             list(dict.fromkeys(declared + ["softmax", "sigmoid"])))
        else:
            psi, norm, scale, w_ok, note = "block", False, None, True, ""
        if psi is None and hasattr(sys.modules.get(type(site.router).__module__), "sparsemixer"):
            psi, w_ok, note = "sparsemixer", True, ""
        if note:
            notes.append(note)
        kw.update(weights=psi, normalize=norm, weight_scale=scale)
        named = psi if psi not in (None, "block", "sparsemixer") else None
        s_ok = True
        source = list(self.source)
        if self.bias is not None:
            order = [c for c in [named, *declared, "sigmoid", "softmax", "logits"] if c]
            alive = sorted(self.alive, key=lambda c: (order.index(c[0]) if c[0] in order else len(order),
                                                      _FILLS.index(c[1])))
            s_ok = len(alive) <= 1
            if len(alive) > 1:
                notes.append(f"selection: {len(alive)} score maps fit every probe ("
                             f"{', '.join(f'{p}' + ('' if f == -math.inf else ' fill 0') for p, f in alive)})")
            kw["scores"], kw["group_fill"] = alive[0] if alive else (named or "logits", -math.inf)
            kw["bias"] = self.bias
            source.append(f"selection bias ({'argument' if self.bias_where[0] == 'arg' else 'buffer'}), scores "
                          f"{'probed' if alive else 'NOT identified by probing'}")
        else:
            kw["scores"] = named or (declared[0] if declared else "logits")
        if isinstance(self.fixed, tuple) and (self.truth_tokens >= IDENTIFY_MIN_TOKENS or final):
            kw["fixed_experts"] = self.fixed
            source.append("the experts compute a fixed set (observed)")
        decided = w_ok and s_ok and self.tokens >= IDENTIFY_MIN_TOKENS
        if site.slots.get("truth_mode"):  # the experts are watched: settle only after they were seen on enough
            decided = decided and self.truth_seen >= IDENTIFY_MIN_TOKENS
        source.append(f"identified from {self.tokens} tokens" + ("" if decided else
                                                                 f" ({'; '.join(notes) or 'too few tokens'})"))
        try:
            rule = RoutingRule(**kw, source="; ".join(source))
        except (ValueError, TypeError) as e:
            raise InspectError(f"layer {site.index} ({site.name}): cannot describe its routing: {e}") from None
        self.decided = decided or final or self.tokens >= IDENTIFY_MAX_TOKENS
        return rule, "; ".join(notes) if not decided else ""


def identify_rule(site: RouterSite, args, output, routed: Routed, *, final: bool = False) -> RoutingRule:
    """The :class:`RoutingRule` of a router from what it declares and what it has done so far (module
    docstring). Each call adds its evidence (the returned weights, the probes of the selection); the rule is
    *settled* (``site.identified``) once the evidence tells the candidates apart and at least
    :data:`IDENTIFY_MIN_TOKENS` tokens were seen (or ``final``, or :data:`IDENTIFY_MAX_TOKENS`); until then the
    best rule so far is returned. Raises :class:`InspectError` when the router output does not fit any rule."""
    ev = site.slots.get("evidence")
    if ev is None:
        ev = site.slots["evidence"] = _Evidence(site, args, routed)
    ev.add(site, args, routed)
    rule, note = ev.rule(site, final)
    site.identified = ev.decided
    site.rule_note = note
    if site.identified and not site.slots.get("truth_mode"):
        site.slots.pop("evidence", None)
    return rule


def settle(sites, *, final: bool = True) -> None:
    """Settle the rules of ``sites`` from the evidence seen so far (the input has ended): a rule still ambiguous
    is kept as the best guess and says so in ``site.rule_note``."""
    for s in sites:
        ev = s.slots.get("evidence")
        if ev is None or s.identified:
            continue
        s.rule, s.rule_note = ev.rule(s, final)
        s.identified = True
        s.slots.pop("evidence", None)


# ----------------------------------------------------------------------------------------------
# finding the routers

_GATE_NAMES = ("gate", "router", "gating")


def language_model(model: nn.Module) -> tuple[str, nn.Module, object]:
    """``(prefix, module, config)``: for a model whose config has a ``text_config`` (multimodal), its language
    model — the submodule whose ``config`` is that text config — else the model itself."""
    cfg = getattr(model, "config", None)
    text = getattr(cfg, "text_config", None) or getattr(getattr(cfg, "thinker_config", None), "text_config", None)
    if text is not None:
        best = None
        for name, m in model.named_modules():
            if name and getattr(m, "config", None) is text and (best is None or len(name) < len(best[0])):
                best = (name, m)
        if best is not None:
            return best[0] + ".", best[1], text
        return "", model, text
    return "", model, cfg


def _declared_router_classes(model: nn.Module) -> set[type]:
    out = set()
    for m in model.modules():
        rec = getattr(type(m), "_can_record_outputs", None) or {}
        spec = rec.get("router_logits") if isinstance(rec, dict) else None
        for s in (spec if isinstance(spec, (list, tuple)) else [spec]):
            target = getattr(s, "target_class", s)
            if isinstance(target, type) and issubclass(target, nn.Module):
                out.add(target)
    return out


def _num_experts(router: nn.Module) -> int | None:
    if isinstance(getattr(router, "num_experts", None), int):
        return router.num_experts
    if isinstance(router, nn.Linear):
        return router.out_features
    for name in ("weight", "classifier", "layer", "proj", "wg"):
        w = getattr(router, name, None)
        w = getattr(w, "weight", w)
        if isinstance(w, torch.Tensor) and w.ndim == 2:
            return int(w.shape[0])
    return None


def _is_named_gate(name: str, module: nn.Module, parent: nn.Module | None) -> bool:
    return (name.rsplit(".", 1)[-1] in _GATE_NAMES and parent is not None and hasattr(parent, "experts")
            and (_num_experts(module) or 0) >= 2)


def _moe_hint(model: nn.Module) -> tuple[str, bool] | None:
    """``(reason, has_experts)`` to think the model is an MoE: an ``experts`` module (then its router could not be
    found), or only a config declaring experts (then no layer was built as one); ``None`` otherwise."""
    for name, m in model.named_modules():
        if name.rsplit(".", 1)[-1] == "experts":
            return f"it has an experts module at {name!r}", True
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for attr in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"):
        if isinstance(getattr(cfg, attr, None), int) and getattr(cfg, attr) > 1:
            return f"its config declares {attr}={getattr(cfg, attr)}", False
    return None


def parse_layers(spec) -> list[int] | None:
    """``None``/``""`` (all), an int, a list of ints, or a string like ``"0,2,5-7"`` -> sorted indices."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if isinstance(spec, str):
        out = []
        try:
            for part in spec.split(","):
                lo, _, hi = part.strip().partition("-")
                out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            _fail("layers", "inspect", "a list like '0,2,5-7' of MoE layer indices", spec)
        spec = out
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in spec):
        _fail("layers", "inspect", "a list of MoE layer indices >= 0", spec)
    return sorted(set(spec))


def find_routers(model: nn.Module, *, router_path: str | None = None, layers=None,
                 top_k: int | None = None, _where: str = "find_routers") -> list[RouterSite]:
    """The MoE layers of ``model``'s language model: one :class:`RouterSite` per router module, in module order.

    Args:
        model: any ``torch.nn.Module`` (a transformers model, a softhard model, your own).
        router_path: ``fnmatch`` pattern on module names (e.g. ``"model.layers.*.mlp.gate"``) to use instead
            of the search.
        layers: indices of the MoE layers to keep (see :func:`parse_layers`); default all.
        top_k: ``k`` for a router returning logits alone whose block declares no ``top_k`` (default 1).

    Raises:
        InspectError: no MoE layer (one line saying whether the model looks like an MoE, naming the model
            class), a pattern matching nothing, a layer index out of range, or a ``top_k`` that is not an int in
            [1, K − 1] for the routers it would apply to. Errors name ``_where`` (the public function called).
    """
    where = _where
    if not isinstance(model, nn.Module):
        _fail("model", where, "a torch.nn.Module", type(model).__name__)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        _fail("top_k", where, "None or an int >= 1", top_k)
    prefix, root, cfg = language_model(model)
    mods = {prefix + n if n else prefix.rstrip("."): m for n, m in root.named_modules()}
    all_mods = dict(model.named_modules())
    declared = tuple(_declared_router_classes(model))
    found = []
    for name, m in mods.items():
        if not name:
            continue
        parent_name = name.rsplit(".", 1)[0] if "." in name else ""
        parent = all_mods.get(parent_name, model)
        if router_path is not None:
            if fnmatch.fnmatchcase(name, router_path):
                found.append((name, parent_name, m, parent, True))
        elif (declared and isinstance(m, declared)) or _is_named_gate(name, m, parent):
            found.append((name, parent_name, m, parent, False))
    # a declared class that holds another router (Ernie-VL's block of text and vision MoEs) is not one itself
    names = [f[0] for f in found]
    found = [f for f in found if not any(o.startswith(f[0] + ".") for o in names)]
    sites = []
    for name, parent_name, m, parent, user in found:
        K = _num_experts(m) or 0
        if user and K < 2:
            _fail("router_path", where, "a pattern matching router modules (with a K-output weight)",
                  f"{name} of class {type(m).__name__}")
        declared_k = _first_attr([m, parent], _K_NAMES)
        if top_k is not None and K >= 2 and top_k >= K:
            _fail("top_k", where, f"an int in [1, {K - 1}] (the router {name} has K = {K} experts; k = K selects "
                  "them all, with no decision to measure)", top_k)
        k = declared_k or top_k or 1
        site = RouterSite(len(sites), name, parent_name, m, parent, UNREAD, K, k, config=cfg, user_top_k=top_k)
        site.slots["user"] = user
        sites.append(site)
    cls = type(model).__name__
    if not sites:
        if router_path is not None:
            _fail("router_path", where, f"a pattern matching module names of {cls}", router_path)
        hint = _moe_hint(root)
        if hint is not None and hint[1]:
            raise InspectError(f"Unknown MoE router layout for model class {cls} ({hint[0]}): no module is declared "
                               f"as its router and none is named gate/router beside experts. Pass --router-path "
                               f"PATTERN (module names, e.g. 'model.layers.*.mlp.gate') to name the router modules.")
        if hint is not None:
            raise InspectError(f"Model class {cls} has no MoE layers: {hint[0]}, but no layer of this model was built "
                               f"as a mixture of experts (see its config's dense/sparse layer settings).")
        raise InspectError(f"Model class {cls} has no MoE layers (no router module found).")
    keep = parse_layers(layers)
    if keep is not None:
        if keep[-1] >= len(sites):
            _fail("layers", where, f"MoE layer indices in [0, {len(sites) - 1}]", keep)
        sites = [s for s in sites if s.index in keep]
    return sites
