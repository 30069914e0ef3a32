r"""Routing rules as data: what a router ranks, how it selects, what weights the chosen experts.

A :class:`RoutingRule` describes one MoE layer's routing decision from the router logits
:math:`a \in \mathbb R^K` (2.2):

- *scores* :math:`\phi(a)` (``"logits"``, ``"softmax"``, ``"sigmoid"`` or a transformers activation name such
  as ``"sqrtsoftplus"``) plus an optional *selection bias* :math:`b` (DeepSeek-V3's
  ``e_score_correction_bias``): the ranked scores are :math:`s = \phi(a) + b`;
- *selection*: top-k of :math:`s`; group-limited top-k (the experts split into ``n_group`` contiguous groups,
  a group scores the sum of its ``group_top`` best scores — 2 for DeepSeek-V3, 1 (the max) for DeepSeek-V2's
  ``group_limited_greedy`` — and only the best ``topk_group`` groups compete); hash routing (a fixed table
  ``token id -> experts``); a *fixed* set of experts for every token (``fixed_experts``: NLLB-MoE as
  transformers 5.23 computes it, whose block one-hot encodes again the top-1 mask it hands its experts, so that
  experts 0 and 1 compute every token and the router only sets their weights); the groups left out are masked
  with :math:`-\infty` or, as AXK2 does, with ``group_fill = 0`` (so an expert of an excluded group can still be
  chosen when the allowed scores are below 0); with ``capacity`` the model may drop tokens after choosing
  (Switch, NLLB);
  ``zero_experts`` of the ``K`` candidates are identity/skip experts (LongCat, ZAYA);
- *weights*: :math:`w_i = c_i\,u_i(a)` on the selected set :math:`S`, with :math:`u = \psi(a)` (``softmax`` over
  all experts, ``sigmoid``, ...) optionally normalised over :math:`S`, and per-expert constants :math:`c_i`
  (``routed_scaling_factor``, Gemma 4's ``per_expert_scale``); ``"sparsemixer"`` for PhiMoE.

The **decision margin** (``docs/routing_rules.md``) is the smallest perturbation of the ranked scores that
changes the selected set, measured by the span :math:`\operatorname{osc}(\delta) = \max_i\delta_i-\min_i\delta_i`
(twice the smallest :math:`\lVert\delta\rVert_\infty`, since every rule here is unchanged when one constant is
added to all scores):

.. math:: m(s) = \inf\{\operatorname{osc}(\delta) : S(s+\delta) \ne S(s)\}.

For top-k it is :math:`s_{(k)} - s_{(k+1)}` (the paper's Δ (2.6) for ``k = 1`` on the logits); for
group-limited top-k see :func:`group_topk_margin`. Rules that only compare the *order* of the scores (no bias,
no sums of scores) select the same set from the logits themselves (each :math:`\phi` here is increasing), and
their margin is measured on the logits, where the router temperature acts (``margin_space = "logits"``);
otherwise on :math:`s` (``"scores"``). Hash routing has no score-driven decision: :math:`m = +\infty`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import check_int, fail

__all__ = ["RoutingRule", "topk_gap", "group_topk_margin", "score_function", "SCORES"]

SCORES = ("logits", "softmax", "sigmoid")


def score_function(name: str):
    r"""The score map :math:`\phi` called ``name``: ``logits`` (identity), ``softmax`` (over the last axis),
    ``sigmoid``, or any elementwise activation of transformers' ``ACT2FN`` (e.g. ``"sqrtsoftplus"``)."""
    if name == "logits":
        return lambda a: a
    if name == "softmax":
        return lambda a: torch.softmax(a, dim=-1)
    if name == "sigmoid":
        return torch.sigmoid
    try:
        from transformers.activations import ACT2FN

        return ACT2FN[name]
    except (ImportError, KeyError):
        fail("scores", "RoutingRule", f"one of {SCORES} or a transformers activation name", name)


def topk_gap(s: torch.Tensor, k: int) -> torch.Tensor:
    r"""Top-k decision margin :math:`s_{(k)} - s_{(k+1)}` of scores ``s (N, K)``, shape ``(N,)``; ``+inf`` when
    ``k >= K`` (nothing can enter)."""
    if k >= s.shape[-1]:
        return torch.full(s.shape[:-1], math.inf, dtype=s.dtype, device=s.device)
    top = torch.topk(s, k + 1, dim=-1).values
    return top[..., k - 1] - top[..., k]


def group_topk_margin(s: torch.Tensor, k: int, n_group: int, topk_group: int, group_top: int = 2) -> torch.Tensor:
    r"""Decision margin of group-limited top-k on scores ``s (N, K)`` [beyond], shape ``(N,)``.

    The ``K`` experts form ``G = n_group`` contiguous groups of ``M = K/G``; group :math:`j` scores
    :math:`g_j = ` the sum of its ``r = group_top`` largest scores; the best ``t = topk_group`` groups :math:`A`
    are allowed and :math:`S` = the top-k of the allowed experts. With :math:`C` the groups holding a selected
    expert and :math:`U = A\setminus C`, the smallest :math:`\lVert\delta\rVert_\infty` changing :math:`S` is
    (``docs/routing_rules.md``: each :math:`g_j` is :math:`r`-Lipschitz and moves by :math:`\pm r\varepsilon`
    under a uniform shift of its group)

    .. math:: \varepsilon^* = \min\Big(\tfrac{s^A_{(k)} - s^A_{(k+1)}}{2},\;
              \tfrac{\min_{c\in C} g_c - g_{(t+1)}}{2r},\;
              \min_{o\notin A}\max\big(\tfrac{\min_{u\in U} g_u - g_o}{2r},\,
              \tfrac{s^A_{(k)} - \max_{j\in o}s_j}{2},\,0\big)\Big)

    (within-group swap; a group holding a selected expert pushed out; an outside group entering in place of an
    allowed group without selected experts and bringing an expert that beats the k-th). The margin is
    :math:`2\varepsilon^*`, which for ``G = 1`` is :func:`topk_gap`.
    """
    N, K = s.shape
    G, t, r = n_group, topk_group, group_top
    M = K // G
    inf = torch.tensor(math.inf, dtype=s.dtype, device=s.device)
    gs = s.view(N, G, M)
    g = gs.topk(r, dim=-1).values.sum(-1)  # (N, G)
    g_sorted, g_order = torch.sort(g, dim=-1, descending=True)
    allowed = torch.zeros(N, G, dtype=torch.bool, device=s.device).scatter(1, g_order[:, :t], True)
    s_allowed = s.masked_fill(~allowed.repeat_interleave(M, dim=1), -math.inf)
    n_allowed = t * M
    top = torch.topk(s_allowed, min(k + 1, n_allowed), dim=-1)
    sk = top.values[:, k - 1]
    eps = (sk - top.values[:, k]) / 2 if k < n_allowed else torch.full_like(sk, math.inf)
    if t < G:
        carrier = torch.zeros(N, K, dtype=torch.bool, device=s.device).scatter(1, top.indices[:, :k], True)
        carrier = carrier.view(N, G, M).any(-1)  # (N, G)
        g_out = g_sorted[:, t]  # the best group outside A
        eps = torch.minimum(eps, (torch.where(carrier, g, inf).min(-1).values - g_out) / (2 * r))
        idle = allowed & ~carrier
        g_u = torch.where(idle, g, inf).min(-1).values  # the weakest allowed group without a selected expert
        enter = torch.maximum((g_u[:, None] - g) / (2 * r), (sk[:, None] - gs.max(-1).values) / 2).clamp_min(0)
        enter = torch.where(allowed | ~idle.any(-1, keepdim=True), inf, enter)
        eps = torch.minimum(eps, enter.min(-1).values)
    return 2 * eps


@dataclass(eq=False)
class RoutingRule:
    r"""The routing decision of one MoE layer (see the module docstring).

    Attributes:
        num_experts: ``K``, the candidates ranked (zero/skip experts included).
        k: experts per token.
        scores: score map :math:`\phi` of the selection, ``s = \phi(a) + b``.
        bias: selection bias ``b (K,)`` or ``None`` (a live reference to the model's buffer).
        n_group, topk_group, group_top: group-limited selection (``n_group = 1``: plain top-k).
        hash_table: ``(V, k)`` integer table ``token id -> experts`` for hash routing, else ``None``.
        fixed_experts: the experts that compute every token whatever the scores (the selection has no decision:
            ``m = +inf``), else ``None``.
        group_fill: the score given to the experts of the groups left out (``-inf``; AXK2: ``0.0``).
        capacity: the model may drop a token after selecting (expert capacity).
        zero_experts: how many of the ``K`` candidates (the last ones) are identity/skip experts.
        weights: weight map :math:`\psi` (``"softmax"`` over all K, ``"sigmoid"``, ...), ``"sparsemixer"``, or
            ``None`` when not identified (then no temperature re-routing).
        normalize: weights renormalised over the selected set.
        weight_scale: per-expert constants :math:`c_i` ``(K,)`` (``None``: 1).
        source: where the rule was read from (one line).
    """

    num_experts: int
    k: int
    scores: str = "logits"
    bias: torch.Tensor | None = None
    n_group: int = 1
    topk_group: int = 1
    group_top: int = 2
    hash_table: torch.Tensor | None = None
    fixed_experts: tuple | None = None
    group_fill: float = -math.inf
    capacity: bool = False
    zero_experts: int = 0
    weights: str | None = "softmax"
    normalize: bool = True
    weight_scale: torch.Tensor | None = None
    source: str = ""

    def __post_init__(self):
        where = "RoutingRule"
        K = check_int(self.num_experts, "num_experts", where, 2)
        check_int(self.k, "k", where, 1, K)
        score_function(self.scores)
        if self.bias is not None and tuple(self.bias.shape) != (K,):
            fail("bias", where, f"a tensor of shape ({K},) or None", self.bias)
        G = check_int(self.n_group, "n_group", where, 1, K)
        if K % G:
            fail("n_group", where, f"a divisor of num_experts={K}", G)
        check_int(self.topk_group, "topk_group", where, 1, G)
        check_int(self.group_top, "group_top", where, 1, K // G)
        if self.grouped and self.k > self.topk_group * (K // G) and self.group_fill == -math.inf:
            fail("k", where, f"at most topk_group * experts per group = {self.topk_group * (K // G)}", self.k)
        if self.fixed_experts is not None:
            fixed = tuple(self.fixed_experts)
            if not fixed or len(set(fixed)) != len(fixed) or not all(
                    isinstance(e, int) and 0 <= e < K for e in fixed):
                fail("fixed_experts", where, f"distinct expert indices in [0, {K - 1}]", self.fixed_experts)
            self.fixed_experts = tuple(sorted(fixed))

    # -- what decides the selection ------------------------------------------------------------
    @property
    def grouped(self) -> bool:
        """Whether the group limit can matter (``1 < n_group`` and ``topk_group < n_group``)."""
        return self.n_group > 1 and self.topk_group < self.n_group

    @property
    def selection(self) -> str:
        """``"hash"``, ``"fixed"``, ``"group_topk"`` or ``"topk"``."""
        if self.hash_table is not None:
            return "hash"
        return "fixed" if self.fixed_experts is not None else "group_topk" if self.grouped else "topk"

    @property
    def margin_space(self) -> str:
        """``"logits"`` when the selection depends on the order of the scores only (no bias, no sums of scores),
        else ``"scores"`` (:math:`s = \\phi(a) + b`); ``"none"`` for hash routing."""
        if self.hash_table is not None or self.fixed_experts is not None:
            return "none"
        sums = self.grouped and (self.group_top > 1 or self.group_fill != -math.inf)
        return "scores" if self.bias is not None or sums else "logits"

    def selection_scores(self, logits: torch.Tensor) -> torch.Tensor:
        r"""The ranked scores :math:`s = \phi(a) + b` ``(N, K)``, in the model's precision (float32 for half
        precision logits), as the model computes them."""
        a = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        s = score_function(self.scores)(a)
        return s if self.bias is None else s + self.bias.to(s.device)

    def select(self, logits: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The selected experts ``(N, k)`` (sorted ascending) for logits ``(N, K)`` (and token ids ``(N,)`` for
        hash routing), computed as the model does (before any capacity drop)."""
        if self.hash_table is not None:
            if token_ids is None:
                fail("token_ids", "RoutingRule.select", "the token ids (N,) for hash routing", None)
            return torch.sort(self.hash_table.to(token_ids.device)[token_ids.reshape(-1)].long(), -1).values
        if self.fixed_experts is not None:
            return torch.tensor(self.fixed_experts, device=logits.device).expand(logits.shape[0], -1)
        s = self.selection_scores(logits)
        if self.grouped:
            s = self._group_masked(s)
        return torch.sort(torch.topk(s, self.k, dim=-1).indices, -1).values

    def _group_masked(self, s: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, K)`` with the experts of the groups left out set to ``group_fill``."""
        N, K = s.shape
        G, M = self.n_group, K // self.n_group
        g = s.view(N, G, M).topk(self.group_top, dim=-1).values.sum(-1)
        keep = torch.zeros_like(g, dtype=torch.bool).scatter(1, torch.topk(g, self.topk_group, -1).indices, True)
        return s.masked_fill(~keep.repeat_interleave(M, dim=1), self.group_fill)

    def margin_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The vector on which the decision margin is measured, float64 ``(N, K)`` (see ``margin_space``)."""
        a = logits.to(torch.float64)
        if self.margin_space != "scores":
            return a
        s = score_function(self.scores)(a)
        return s if self.bias is None else s + self.bias.to(device=a.device, dtype=torch.float64)

    def margin(self, logits: torch.Tensor) -> torch.Tensor:
        r"""Decision margin :math:`m` ``(N,)`` float64 (module docstring); ``+inf`` for hash routing."""
        s = self.margin_scores(logits)
        if self.hash_table is not None or self.fixed_experts is not None:
            return torch.full(s.shape[:-1], math.inf, dtype=torch.float64, device=s.device)
        if self.grouped:
            m = group_topk_margin(s, self.k, self.n_group, self.topk_group, self.group_top)
            if self.group_fill != -math.inf:  # an excluded expert at the fill value can enter (docs/routing_rules.md)
                m = torch.minimum(m, topk_gap(self._group_masked(s), self.k))
            return m
        return topk_gap(s, self.k)

    # -- what weights the chosen experts ---------------------------------------------------------
    def weight_shape(self, logits: torch.Tensor, idx: torch.Tensor | None, tau: float = 1.0) -> torch.Tensor:
        r"""The τ-dependent part :math:`u(a/\tau)` of the weights on ``idx (N, k)`` (all experts when ``None``),
        float64; the model's weights are :math:`c_i\,u_i(a)` (``weight_scale``). ``weights`` must be known."""
        if self.weights in (None, "sparsemixer", "block"):
            fail("weights", "RoutingRule.weight_shape", "an identified weight map", self.weights)
        a = logits.to(torch.float64) / tau
        if self.weights == "softmax" and self.normalize and idx is not None:
            # softmax(a)[S] / sum over S is the softmax of the selected logits: computed on them alone, it does not
            # underflow when the largest logit is not selected (a biased selection) and τ is small
            return torch.softmax(a.gather(1, idx.clamp(0, self.num_experts - 1)), dim=-1)
        u = score_function(self.weights)(a)
        u = u if idx is None else u.gather(1, idx.clamp(0, self.num_experts - 1))
        if self.normalize:
            u = u / u.sum(-1, keepdim=True)
        return u

    def describe(self) -> str:
        """One line, e.g. ``top-2 of sigmoid(a) + bias within the best 2 of 4 groups (group score: sum of
        the top 2); weights sigmoid(a)[S] normalised``."""
        if self.hash_table is not None:
            sel = f"hash routing: {self.k} experts fixed by the token id"
        elif self.fixed_experts is not None:
            sel = (f"experts {{{', '.join(map(str, self.fixed_experts))}}} for every token (the router's top-{self.k} "
                   f"of {'a' if self.scores == 'logits' else self.scores + '(a)'} sets only their weights)")
        else:
            phi = "a" if self.scores == "logits" else f"{self.scores}(a)"
            sel = f"top-{self.k} of {phi}{' + bias' if self.bias is not None else ''}"
            if self.grouped:
                gs = "max" if self.group_top == 1 else f"sum of the top {self.group_top}"
                sel += f" within the best {self.topk_group} of {self.n_group} groups (group score: {gs})"
                if self.group_fill != -math.inf:
                    sel += f", the others' scores set to {self.group_fill:g}"
        if self.capacity:
            sel += ", then expert capacity (tokens may be dropped)"
        if self.zero_experts:
            sel += f"; the last {self.zero_experts} of {self.num_experts} are skip experts"
        if self.weights is None:
            w = "weights not identified"
        elif self.weights == "sparsemixer":
            w = "weights: sparsemixer"
        elif self.weights == "block":
            w = "weights computed by the block from a"
        else:
            psi = "softmax(a)" if self.weights == "softmax" else f"{self.weights}(a)"
            w = f"weights {psi}[S]{' normalised' if self.normalize else ''}"
            if self.weight_scale is not None:
                c = self.weight_scale
                w += f" × {float(c[0]):.4g}" if bool((c == c[0]).all()) else " × per-expert scale"
        return f"{sel}; {w}"

