r"""Routing flips under a change of the router's scores: predicted from the margins and an error model, and
measured (issue 20 item 1; derivation in ``docs/flips.md``).

A change of precision, quantization or noise moves every router score by a small error. For a token whose
selected set :math:`S` is decided by the rule's ranked scores :math:`s` (``inspect/rules.py``), the set changes
when the error of some difference :math:`s_i - s_j` (:math:`i \in S`, :math:`j \notin S`) exceeds the gap
:math:`g_{ij} = s_i - s_j \ge m` (the decision margin). With the error of that difference modelled as
:math:`D_{ij} \sim N(0, \sigma_{ij}^2)` plus, where the scores are finally rounded to a grid of spacing
:math:`q`, a uniform :math:`U \sim \mathrm{Unif}(-q, q)` (:func:`softhard.closed.rounding.pair_flip_probability`),
the predicted flip probability of the token is

.. math:: \hat p_t = 1 - \prod_{(i, j) \in C_t} \big(1 - P(g_{ij} + D_{ij} + U_{ij} < 0)\big)

over the candidate pairs :math:`C_t` (the two lowest selected against the two highest unselected; for
group-limited rules the allowed experts, plus one group event at the rule's margin), and the layer's predicted
flip rate is the mean of :math:`\hat p_t`. For the score :math:`a = W h + b` of a linear router,

.. math:: \sigma_{ij}^2 = \sum_l (c_i W_{il} - c_j W_{jl})^2\, v^h_l + \sum_l h_l^2 (c_i^2 v^W_{il} + c_j^2 v^W_{jl})
          + \kappa\,\frac{\lVert h\rVert^2}{d}\,\lVert c_i W_i - c_j W_j\rVert^2

with :math:`c = \phi'(a)` the slope of the score map (1 on the logits), :math:`v^h, v^W` the variances of the
errors of the hidden state and the weights — :math:`\mathrm{ulp}^2/12` of the format for rounded compute
(bf16, fp16, fp8 e4m3 with per-token and per-tensor scales), :math:`\text{scale}^2/12` of the quantizer's grid
for weight-only int8/int4 — and :math:`\kappa` the relative variance of an isotropic change of the hidden
state: :math:`s^2` for Gaussian noise of relative size :math:`s`, *calibrated* per layer for whole-model
quantization (where every earlier layer moves the hidden state) by matching :math:`\mathbb E|D|` of the
boundary pair on a calibration slice of sequences that is then left out of the comparison.

Measured: the share of tokens whose selected set (by the rule) changes, the router run on the same hidden
states in the changed precision (or the quantized model run on the same tokens). Standard errors are per
sequence (tokens of one sequence are dependent); the ratio predicted/measured carries a paired (per-sequence)
standard error.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..._validate import check_float, check_int, fail
from ...closed.rounding import FORMATS, pair_flip_probability, rounding_variance, ulp
from ...estimators.jackknife import paired_ratio, sequence_mean
from ...estimators.reducer import Estimate, mean_estimate
from ..layouts import InspectError, RouterSite
from ..rules import RoutingRule, score_function
from ..stats import selection_changed

__all__ = ["PRICED", "ROUTER_COMPUTE", "WHOLE_MODEL", "parse_perturbations", "router_linear", "quantize_weight",
           "quantized_model", "perturbed_logits", "error_variances", "candidate_pairs", "pair_model",
           "with_group_event", "PairModel", "predicted_flip_rate", "sequence_mean", "paired_ratio", "FlipPrice",
           "price_flips", "write_flips",
           "TARGET_LAYER", "TARGET_MEAN", "MIN_MEASURED"]

ROUTER_COMPUTE = ("bf16", "fp16", "fp8")
WHOLE_MODEL = ("int8", "int4")
PRICED = ROUTER_COMPUTE + ("int8-router", "int4-router") + WHOLE_MODEL + ("noise",)
TARGET_LAYER = (0.5, 2.0)  # predicted/measured per layer (issue 20)
TARGET_MEAN = (0.7, 1.3)  # averaged over layers
MIN_MEASURED = 0.005  # the targets apply where at least this share of tokens flips
FP8_MAX = 448.0


def parse_perturbations(spec, where: str = "inspect") -> list[str]:
    """``"bf16,fp8,int8"`` (or a list) -> ``["bf16", "fp8", "int8"]``, each one of :data:`PRICED`; ``"none"``
    or ``""`` -> ``[]``. Raises :class:`InspectError` naming the unknown item."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else list(spec or ())) if s and s.strip()]
    if items == ["none"]:
        return []
    bad = [s for s in items if s not in PRICED]
    if bad:
        raise InspectError(f"The 'perturb' parameter of {where} must be a comma-separated list of {', '.join(PRICED)} "
                           f"(or none). Got {bad[0]!r}.")
    return list(dict.fromkeys(items))


# ----------------------------------------------------------------------------------------------
# the router as a linear map, and the changed computations


def router_linear(site: RouterSite, hidden: torch.Tensor, logits: torch.Tensor):
    """``(W (K, d), b (K,) or None)``: the router's weight (and bias) when its logits are ``hidden @ W.T + b``
    on this call, else ``None`` (the router does more than a linear map; no derived error model)."""
    K, d = logits.shape[-1], hidden.shape[-1]
    W = b = None
    for name, p in site.router.named_parameters():
        if p.is_floating_point() and tuple(p.shape) == (K, d) and W is None:
            W = p.detach()
        elif p.is_floating_point() and tuple(p.shape) == (K,) and name.split(".")[-1] == "bias":
            b = p.detach()
    if W is None:
        return None
    h = hidden.reshape(-1, d)
    if h.shape[0] != logits.shape[0]:
        return None
    with torch.no_grad():
        lin = F.linear(h.to(W.dtype), W, b)
    a = logits.to(lin.dtype)
    tol = 1e-4 * (1.0 + float(a.abs().max())) if lin.dtype in (torch.float32, torch.float64) else 2e-2 * (
        1.0 + float(a.abs().max()))
    return (W, b) if float((lin - a).abs().max()) <= tol else None


def quantize_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Weight-only quantization of ``w (..., out, in)`` by optimum-quanto (``qint8``: per output channel;
    ``qint4``: groups of 128 inputs where they divide, per channel otherwise, with a zero point), rows = the
    flattened leading axes. Returns ``(dequantized (same shape), per-element error variance scale²/12)``."""
    from optimum.quanto import freeze, qint4, qint8, quantize

    if bits not in (4, 8):
        fail("bits", "quantize_weight", "4 or 8", bits)
    shape = w.shape
    m = w.detach().reshape(-1, shape[-1]).to(torch.float32)
    lin = torch.nn.Linear(m.shape[1], m.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(m)
    holder = torch.nn.Sequential(lin)
    quantize(holder, weights=qint8 if bits == 8 else qint4)
    freeze(holder)
    qw = holder[0].weight
    deq = qw.dequantize().detach().to(w.dtype).reshape(shape)
    scale = qw._scale.detach().to(torch.float64)
    out, inn = m.shape
    if scale.numel() == out:
        per = scale.reshape(out, 1).expand(out, inn)
    else:  # groups of g consecutive inputs of a row
        g = out * inn // scale.numel()
        per = scale.reshape(out, inn // g).repeat_interleave(g, dim=1)
    return deq, (per * per / 12).reshape(shape)


def _shared_with_embedding(model: torch.nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}


def quantized_model(model: torch.nn.Module, bits: int) -> torch.nn.Module:
    """A copy of ``model`` whose weights — every floating parameter with two or more axes (linear layers,
    routers, expert tensors ``(E, out, in)``) except embeddings and weights tied to them — are replaced by their
    optimum-quanto int8/int4 weight-only quantization (dequantized: weight-only kernels compute in the
    activations' precision). Norms, biases and embeddings stay in float."""
    q = copy.deepcopy(model)
    skip = _shared_with_embedding(q)
    with torch.no_grad():
        for p in q.parameters():
            if p.is_floating_point() and p.ndim >= 2 and id(p) not in skip:
                p.copy_(quantize_weight(p.data, bits)[0])
    return q.eval()


def _fp8_scaled(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).to(torch.float8_e4m3fn).to(torch.float32) * scale


def _fp8_scales(h: torch.Tensor, W: torch.Tensor):
    sh = (h.abs().amax(-1, keepdim=True).to(torch.float32) / FP8_MAX).clamp_min(1e-30)
    sw = (W.abs().amax().to(torch.float32) / FP8_MAX).clamp_min(1e-30)
    return sh, sw


@torch.no_grad()
def perturbed_logits(kind: str, hidden: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, *,
                     qweight: torch.Tensor | None = None, noise: float = 1e-3,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The router's logits ``(N, K)`` from ``hidden (N, d)`` after the change ``kind``:

    - ``bf16``/``fp16``: ``F.linear`` on inputs, weights and bias cast to the format (torch's kernel, output in
      the format);
    - ``fp8``: e4m3 inputs (per-token scale ``amax/448``) and weights (per-tensor scale), products accumulated and
      returned in float32 (``torch._scaled_mm`` semantics, emulated);
    - ``int8-router``/``int4-router``: the dequantized weight ``qweight`` in the hidden states' precision;
    - ``noise``: :math:`h + s\,\lVert h\rVert/\sqrt d\, z` (:func:`softhard.inspect.hooks.perturb_hidden`).
    """
    h = hidden
    if kind in ("bf16", "fp16"):
        dt = torch.bfloat16 if kind == "bf16" else torch.float16
        return F.linear(h.to(dt), W.to(dt), None if b is None else b.to(dt))
    if kind == "fp8":
        sh, sw = _fp8_scales(h, W)
        return F.linear(_fp8_scaled(h.to(torch.float32), sh), _fp8_scaled(W.to(torch.float32), sw),
                        None if b is None else b.to(torch.float32))
    if kind in ("int8-router", "int4-router"):
        return F.linear(h, qweight.to(h.dtype), b)
    if kind == "noise":
        from ..hooks import perturb_hidden

        return F.linear(perturb_hidden(h, "noise", noise, generator).to(W.dtype), W, b)
    fail("kind", "perturbed_logits", f"one of {PRICED[:-2] + ('noise',)} (whole-model kinds run the model)", kind)


def error_variances(kind: str, hidden: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None, *,
                    weight_var: torch.Tensor | None = None, noise: float = 0.0):
    r"""The error model of ``kind`` at ``hidden (N, d)``: ``(v_h (N, d), v_W (K, d), v_b (K,), kappa (N,), fmt)``
    — variances of the hidden-state, weight and bias errors, the isotropic relative variance
    :math:`\kappa` (:math:`s^2` for noise) and the output format whose grid rounds the logits (``None``: none).
    Whole-model kinds get the router's quantization part only (their hidden-state part is calibrated)."""
    N, d = hidden.shape
    K = W.shape[0]
    h = hidden.to(torch.float64)
    zero_h, zero_W = torch.zeros(N, d, dtype=torch.float64), torch.zeros(K, d, dtype=torch.float64)
    zero_b = torch.zeros(K, dtype=torch.float64)
    kappa = torch.zeros(N, dtype=torch.float64)
    if kind in ("bf16", "fp16"):
        vb = zero_b if b is None else rounding_variance(b.to(torch.float64), kind)
        return rounding_variance(h, kind), rounding_variance(W.to(torch.float64), kind), vb, kappa, kind
    if kind == "fp8":
        sh, sw = _fp8_scales(hidden, W)
        sh, sw = sh.to(torch.float64), sw.to(torch.float64)
        vh = rounding_variance(h / sh, "fp8") * sh ** 2
        vW = rounding_variance(W.to(torch.float64) / sw, "fp8") * sw ** 2
        return vh, vW, zero_b, kappa, None
    if kind in ("int8-router", "int4-router", "int8", "int4"):
        if weight_var is None:
            fail("weight_var", "error_variances", "the quantizer's per-element variance (K, d)", None)
        return zero_h, weight_var.to(torch.float64), zero_b, kappa, None
    if kind == "noise":
        return zero_h, zero_W, zero_b, kappa + float(noise) ** 2, None
    fail("kind", "error_variances", f"one of {PRICED}", kind)


# ----------------------------------------------------------------------------------------------
# candidate pairs and their error variances


def _slopes(rule: RoutingRule, logits: torch.Tensor) -> torch.Tensor:
    """:math:`c = \\phi'(a)` ``(N, K)`` of the margin space (1 on the logits; softmax: its diagonal)."""
    a = logits.to(torch.float64)
    if rule.margin_space != "scores" or rule.scores == "logits":
        return torch.ones_like(a)
    if rule.scores == "softmax":
        return torch.softmax(a, -1)  # the coupling through the normaliser is left out (docs/flips.md)
    if rule.scores == "sigmoid":
        s = torch.sigmoid(a)
        return s * (1 - s)
    x = a.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        score_function(rule.scores)(x).sum().backward()
    return x.grad.detach()


def _allowed(rule: RoutingRule, s: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` bool: the experts that compete for the top-k (all, or the best groups)."""
    N, K = s.shape
    if not rule.grouped:
        return torch.ones(N, K, dtype=torch.bool)
    G, M = rule.n_group, K // rule.n_group
    g = s.view(N, G, M).topk(rule.group_top, dim=-1).values.sum(-1)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter(1, torch.topk(g, rule.topk_group, -1).indices, True)
    return keep.repeat_interleave(M, dim=1)


def candidate_pairs(rule: RoutingRule, logits: torch.Tensor, width: int = 2):
    r"""The pairs whose order decides the selection: ``(i (N, P), j (N, P), gap (N, P))`` with :math:`i` among the
    ``width`` lowest selected and :math:`j` among the ``width`` highest unselected allowed experts (ranked by the
    margin-space scores), :math:`g_{ij} = s_i - s_j \ge 0`; ``P = 0`` for hash routing or ``k = K``."""
    s = rule.margin_scores(logits)
    N, K = s.shape
    k = rule.k
    allowed = _allowed(rule, s)
    n_allowed = int(allowed[0].sum()) if N else K
    if rule.hash_table is not None or k >= n_allowed:
        e = torch.empty(N, 0, dtype=torch.long)
        return e, e, torch.empty(N, 0, dtype=torch.float64)
    sa = s.masked_fill(~allowed, -math.inf)
    order = torch.topk(sa, min(k + width, n_allowed), dim=-1)
    lo = order.indices[:, max(0, k - width):k]  # lowest selected (the last ones of the top-k)
    hi = order.indices[:, k:k + width]  # highest unselected
    i = lo[:, :, None].expand(-1, -1, hi.shape[1]).reshape(N, -1)
    j = hi[:, None, :].expand(-1, lo.shape[1], -1).reshape(N, -1)
    gap = s.gather(1, i) - s.gather(1, j)
    return i, j, gap


@torch.no_grad()
def _pair_terms(hidden, W, i, j, c, vh, vW, vb, chunk: int = 256):
    """Per pair: (Σ_l (c_i W_il − c_j W_jl)² v_h,l + Σ_l h_l² (c_i² vW_il + c_j² vW_jl)
    + c_i² vb_i + c_j² vb_j,
    ‖c_i W_i − c_j W_j‖²), both ``(N, P)`` float64."""
    N, P = i.shape
    h = hidden.to(torch.float64)
    Wd = W.to(torch.float64)
    hv = (h * h) @ vW.T  # (N, K)
    ci, cj = c.gather(1, i), c.gather(1, j)
    fixed = ci ** 2 * (hv.gather(1, i) + vb[i]) + cj ** 2 * (hv.gather(1, j) + vb[j])
    shared = torch.zeros(N, P, dtype=torch.float64)
    norm2 = torch.zeros(N, P, dtype=torch.float64)
    any_vh = bool((vh != 0).any())
    for a in range(0, N, chunk):
        z = slice(a, a + chunk)
        diff = ci[z, :, None] * Wd[i[z]] - cj[z, :, None] * Wd[j[z]]  # (n, P, d)
        sq = diff * diff
        norm2[z] = sq.sum(-1)
        if any_vh:
            shared[z] = (sq * vh[z, None, :]).sum(-1)
    return fixed + shared, norm2


@dataclass
class PairModel:
    """Per token and candidate pair: ``gap``, ``var`` (the derived error variance), ``iso``
    (:math:`\\lVert h\\rVert^2/d\\,\\lVert c_iW_i - c_jW_j\\rVert^2`, the variance per unit of :math:`\\kappa`),
    ``q`` (the output grid; 0 for none) — all ``(N, P)`` float64."""

    gap: torch.Tensor
    var: torch.Tensor
    iso: torch.Tensor
    q: torch.Tensor

    def probability(self, kappa) -> torch.Tensor:
        """:math:`\\hat p_t` ``(N,)`` with isotropic relative variance ``kappa`` (float or ``(N,)``)."""
        if self.gap.shape[1] == 0:
            return torch.zeros(self.gap.shape[0], dtype=torch.float64)
        k = torch.as_tensor(kappa, dtype=torch.float64)
        k = k[:, None] if k.ndim == 1 else k
        sigma = torch.sqrt(torch.clamp(self.var + k * self.iso, min=0.0))
        p = pair_flip_probability(self.gap, sigma, self.q)
        return 1 - torch.prod(1 - p, dim=-1)

    def boundary_sigma(self, kappa) -> torch.Tensor:
        """σ of the boundary pair (the first, smallest-gap pair) ``(N,)``."""
        k = torch.as_tensor(kappa, dtype=torch.float64)
        return torch.sqrt(torch.clamp(self.var[:, 0] + k * self.iso[:, 0], min=0.0))


def pair_model(rule: RoutingRule, hidden: torch.Tensor, logits: torch.Tensor, W: torch.Tensor, vh, vW, vb,
               fmt: str | None, width: int = 2) -> PairModel:
    """The :class:`PairModel` of one router call (module docstring): candidate pairs, their derived error
    variances and isotropic unit variances, the output grid of ``fmt`` (on the logits: a common grid; on biased
    scores: added as independent rounding noise), and for group-limited rules one group event at the rule's
    margin with the boundary pair's variance."""
    i, j, gap = candidate_pairs(rule, logits, width)
    N = gap.shape[0]
    if gap.shape[1] == 0:
        z = torch.zeros(N, 0, dtype=torch.float64)
        return PairModel(z, z, z, z)
    c = _slopes(rule, logits)
    var, norm2 = _pair_terms(hidden, W, i, j, c, vh, vW, vb)
    h2 = (hidden.to(torch.float64) ** 2).sum(-1, keepdim=True) / hidden.shape[-1]
    iso = h2 * norm2
    q = torch.zeros_like(gap)
    if fmt is not None:
        a = logits.to(torch.float64)
        if rule.margin_space == "logits":
            q = ulp(torch.maximum(a.gather(1, i).abs(), a.gather(1, j).abs()), fmt)
        else:
            var = var + (c.gather(1, i) ** 2 * rounding_variance(a.gather(1, i), fmt)
                         + c.gather(1, j) ** 2 * rounding_variance(a.gather(1, j), fmt))
    order = torch.argsort(gap, dim=1, stable=True)  # the boundary pair (k-th, (k+1)-th) first
    gap, var, iso, q = (x.gather(1, order) for x in (gap, var, iso, q))
    return with_group_event(rule, logits, PairModel(gap, var, iso, q))


def with_group_event(rule: RoutingRule, logits: torch.Tensor, pm: PairModel) -> PairModel:
    """For a group-limited rule, ``pm`` with one more event per token: the rule's own margin (a group leaving or
    entering) where it is smaller than the boundary pair's gap, priced with the boundary pair's error; ``pm``
    itself for other rules. ``pm``'s pairs must be sorted by gap (the boundary pair first)."""
    if not rule.grouped or pm.gap.shape[1] == 0:
        return pm
    m = rule.margin(logits)[:, None]
    g_ev = torch.where(m < pm.gap[:, :1], m, torch.full_like(m, math.inf))
    gap = torch.cat([pm.gap, g_ev], 1)
    var, iso, q = (torch.cat([x, x[:, :1]], 1) for x in (pm.var, pm.iso, pm.q))
    return PairModel(gap, var, iso, q)


def predicted_flip_rate(hidden: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor | None = None, *,
                        k: int | None = None, rule: RoutingRule | None = None, bias: torch.Tensor | None = None,
                        precision: str = "bf16", units=None) -> Estimate:
    r"""Predicted share of tokens whose top-k set changes when the router ``a = h W^T + b`` is computed in
    ``precision`` (``"bf16"``, ``"fp16"``, ``"fp8"``) instead of the captured precision (module docstring;
    ``docs/flips.md`` §2). A plain function of one captured router call, cheap enough for a training loop
    (:math:`O(N P d)` with ``P = 4`` pairs): the issue-21 monitor's per-layer "predicted flip rate under bf16".

    Args:
        hidden: router inputs ``(N, d)``; weight: ``W (K, d)``; logits: ``a (N, K)`` (default ``h W^T + b``).
        k: experts per token (plain top-k of the logits) — or ``rule``, the layer's
            :class:`~softhard.inspect.rules.RoutingRule`.
        bias: the router's bias ``(K,)`` or ``None``.
        precision: the changed compute format.
        units: ``(N,)`` integer sequence ids for a per-sequence standard error (default: per token).

    Returns:
        An :class:`~softhard.estimators.reducer.Estimate` of the mean of :math:`\hat p_t` over the ``N`` tokens.
    """
    where = "predicted_flip_rate"
    if precision not in ROUTER_COMPUTE:
        fail("precision", where, f"one of {ROUTER_COMPUTE}", precision)
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 2:
        fail("hidden", where, "a tensor of shape (N, d)", hidden, TypeError if not isinstance(hidden, torch.Tensor)
             else ValueError)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != hidden.shape[1]:
        fail("weight", where, f"a tensor of shape (K, {hidden.shape[1]})", weight)
    K = weight.shape[0]
    with torch.no_grad():
        a = F.linear(hidden.to(weight.dtype), weight, bias) if logits is None else logits.detach()
    if tuple(a.shape) != (hidden.shape[0], K):
        fail("logits", where, f"a tensor of shape ({hidden.shape[0]}, {K})", a)
    if rule is None:
        if k is None:
            fail("k", where, "the experts per token (or a rule)", k)
        rule = RoutingRule(num_experts=K, k=check_int(k, "k", where, 1, K), scores="logits")
    vh, vW, vb, _, fmt = error_variances(precision, hidden.detach(), weight.detach(), bias)
    p = pair_model(rule, hidden.detach(), a, weight.detach(), vh, vW, vb, fmt).probability(0.0)
    if units is None:
        return mean_estimate(p.numpy())
    return sequence_mean(p.numpy(), np.asarray(units))


# ----------------------------------------------------------------------------------------------
# the run over a model


@dataclass
class _Cell:
    """Per (layer, perturbation): per-token arrays, appended batch by batch."""

    models: list = field(default_factory=list)
    flips: list = field(default_factory=list)
    units: list = field(default_factory=list)
    kappa: list = field(default_factory=list)
    dev: list = field(default_factory=list)  # |D| of the boundary pair (calibration)

    def cat(self):
        pm = PairModel(*(torch.cat([getattr(m, f) for m in self.models]) for f in ("gap", "var", "iso", "q"))) \
            if self.models else None
        return (pm, np.concatenate(self.flips) if self.flips else np.zeros(0),
                np.concatenate(self.units) if self.units else np.zeros(0, np.int64),
                torch.cat(self.kappa) if self.kappa else torch.zeros(0, dtype=torch.float64),
                np.concatenate(self.dev) if self.dev else np.zeros(0))


def _pad_cat(models: list[PairModel]) -> list[PairModel]:
    """Give every batch's pair model the same number of pairs (inf gaps pad)."""
    P = max((m.gap.shape[1] for m in models), default=0)
    out = []
    for m in models:
        extra = P - m.gap.shape[1]
        if extra:
            N = m.gap.shape[0]
            inf = torch.full((N, extra), math.inf, dtype=torch.float64)
            z = torch.zeros(N, extra, dtype=torch.float64)
            m = PairModel(torch.cat([m.gap, inf], 1), torch.cat([m.var, z], 1), torch.cat([m.iso, z], 1),
                          torch.cat([m.q, z], 1))
        out.append(m)
    return out


def _solve_kappa(var: torch.Tensor, iso: torch.Tensor, dev: np.ndarray) -> float:
    r"""The :math:`\kappa \ge 0` with :math:`\sqrt{2/\pi}\,\overline{\sqrt{v + \kappa\,\iota}} = \overline{|D|}`
    (bisection on a log scale); 0 when the derived part alone already reaches it."""
    keep = torch.isfinite(var) & torch.isfinite(iso) & torch.from_numpy(np.isfinite(dev))
    v, i, target = var[keep], iso[keep], float(np.mean(dev[keep.numpy()])) if bool(keep.any()) else 0.0
    c = math.sqrt(2 / math.pi)
    f = lambda k: float(c * torch.sqrt(v + k * i).mean()) - target  # noqa: E731
    if not bool(keep.any()) or f(0.0) >= 0 or float(i.max()) <= 0:
        return 0.0
    lo, hi = 0.0, 1e-12
    while f(hi) < 0 and hi < 1e6:
        lo, hi = hi, hi * 4
    for _ in range(80):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return hi


class FlipPrice:
    """Predicted and measured flips of every (layer, perturbation), fed one router call at a time.

    Args:
        sites: the MoE layers (rules identified).
        perturbations: kinds from :data:`PRICED`.
        noise: relative size of the Gaussian noise (``"noise"``).
        seed: seeds the noise.
        width: candidate pairs per side (:func:`candidate_pairs`).
    """

    def __init__(self, sites: list[RouterSite], perturbations, *, noise: float = 1e-3, seed: int = 0,
                 width: int = 2):
        self.sites = sites
        self.kinds = parse_perturbations(perturbations, "FlipPrice")
        self.noise = check_float(noise, "noise", "FlipPrice", 0.0, math.inf)
        self.seed, self.width = seed, width
        self.cells = {(s.index, kind): _Cell() for s in sites for kind in self.kinds}
        self.notes: dict[int, str] = {}
        self._qweights: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _qweight(self, site, W, bits):
        key = (site.index, bits)
        if key not in self._qweights:
            self._qweights[key] = quantize_weight(W, bits)
        return self._qweights[key]

    @torch.no_grad()
    def update(self, site: RouterSite, hidden: torch.Tensor, logits: torch.Tensor, units: np.ndarray, batch: int,
               changed: dict | None = None) -> None:
        """One router call: ``hidden (N, d)`` entering it, its ``logits (N, K)``, the sequence of each row
        ``units (N,)``, the batch number (noise seed), and ``changed[kind]``: the logits ``(N, K)`` of the same
        rows in the whole-model-quantized run."""
        from ..hooks import block_generator

        rule = site.rule
        h = hidden.reshape(-1, hidden.shape[-1])
        lin = router_linear(site, h, logits)
        if lin is None:
            self.notes.setdefault(site.index, f"layer {site.index}: the router is not a plain linear map of its "
                                              f"input; no flips priced")
            return
        W, b = lin
        sel = rule.select(logits)
        for kind in self.kinds:
            wv = qW = None
            if kind in ("int8-router", "int4-router", "int8", "int4"):
                bits = 8 if kind.startswith("int8") else 4
                qW, wv = self._qweight(site, W, bits)
            if kind in WHOLE_MODEL:
                new = (changed or {}).get(kind)
                if new is None:
                    continue
            else:
                g = block_generator(self.seed, site.index, batch, 7) if kind == "noise" else None
                new = perturbed_logits(kind, h, W, b, qweight=qW, noise=self.noise,
                                       generator=g)
            vh, vW, vb, kappa, fmt = error_variances(kind, h, W, b, weight_var=wv, noise=self.noise)
            pm = pair_model(rule, h, logits, W, vh, vW, vb, fmt, self.width)
            cell = self.cells[(site.index, kind)]
            cell.models.append(pm)
            cell.flips.append(selection_changed(sel, rule.select(new.to(logits.device))).numpy().astype(np.float64))
            cell.units.append(np.asarray(units))
            cell.kappa.append(kappa)
            if kind in WHOLE_MODEL:
                i, j, _ = candidate_pairs(rule, logits, 1)
                s0, s1 = rule.margin_scores(logits), rule.margin_scores(new)
                if i.shape[1]:
                    d = ((s1.gather(1, i) - s1.gather(1, j)) - (s0.gather(1, i) - s0.gather(1, j)))[:, 0]
                    cell.dev.append(d.abs().numpy())
                else:
                    cell.dev.append(np.full(h.shape[0], np.nan))

    def rows(self, calibration_units: int = 0) -> tuple[list[dict], dict]:
        """One row per (layer, perturbation) (the columns of ``flips.csv``) and per-perturbation verdicts.
        Whole-model kinds calibrate :math:`\\kappa` on the first ``calibration_units`` sequences and are compared
        on the others."""
        rows = []
        for s in self.sites:
            for kind in self.kinds:
                cell = self.cells[(s.index, kind)]
                if not cell.models:
                    continue
                cell.models = _pad_cat(cell.models)
                pm, flips, units, kappa, dev = cell.cat()
                judged = np.ones(flips.size, dtype=bool)
                kappa_fit = None
                if kind in WHOLE_MODEL:
                    cal = units < calibration_units
                    if not cal.any() or cal.all():
                        raise InspectError(f"calibrating {kind}: {calibration_units} calibration sequences leave "
                                           f"{int((~cal).sum())} tokens to judge; use more tokens.")
                    tcal = torch.from_numpy(cal)
                    kappa_fit = _solve_kappa(pm.var[tcal, 0], pm.iso[tcal, 0], dev[cal])
                    kappa = torch.full_like(kappa, kappa_fit)
                    judged = ~cal
                p = pm.probability(kappa).numpy()
                tj = judged
                pred = sequence_mean(p[tj], units[tj])
                meas = sequence_mean(flips[tj], units[tj])
                ratio, ratio_se = paired_ratio(p[tj], flips[tj], units[tj])
                rows.append({
                    "layer": s.index, "module": s.name, "perturbation": kind,
                    "predicted": pred.value, "predicted_stderr": pred.stderr,
                    "measured": meas.value, "measured_stderr": meas.stderr,
                    "ratio": ratio, "ratio_stderr": ratio_se, "tokens": int(tj.sum()),
                    "sequences": int(np.unique(units[tj]).size),
                    "error_model": "calibrated" if kind in WHOLE_MODEL else "derived",
                    "kappa": kappa_fit if kappa_fit is not None else (self.noise ** 2 if kind == "noise" else 0.0),
                    "calibration_tokens": int((~judged).sum()),
                    "judged": bool(meas.value >= MIN_MEASURED),
                    "within_layer_target": bool(TARGET_LAYER[0] <= ratio <= TARGET_LAYER[1]) if meas.value >=
                    MIN_MEASURED and math.isfinite(ratio) else None,
                })
        return rows, verdicts(rows)


def verdicts(rows: list[dict]) -> dict:
    """Per perturbation: the mean of predicted/measured over the layers where at least :data:`MIN_MEASURED`
    flip, the per-layer range, and whether the issue's targets hold (mean within ×0.7–1.3, each layer within
    ×0.5–2); ``None`` where no layer flips enough."""
    out = {}
    for kind in dict.fromkeys(r["perturbation"] for r in rows):
        rs = [r for r in rows if r["perturbation"] == kind and r["judged"] and math.isfinite(r["ratio"])]
        if not rs:
            out[kind] = {"layers": 0, "mean_ratio": None, "holds": None,
                         "note": f"no layer with at least {MIN_MEASURED:.1%} of tokens flipping"}
            continue
        ratios = [r["ratio"] for r in rs]
        mean = float(np.mean(ratios))
        holds = TARGET_MEAN[0] <= mean <= TARGET_MEAN[1] and all(TARGET_LAYER[0] <= x <= TARGET_LAYER[1]
                                                                  for x in ratios)
        out[kind] = {"layers": len(rs), "mean_ratio": mean, "min_ratio": float(min(ratios)),
                     "max_ratio": float(max(ratios)), "holds": bool(holds)}
    return out


def price_flips(model, batches, sites: list[RouterSite], perturbations, *, noise: float = 1e-3, seed: int = 0,
                calibration: float = 0.125, progress: bool = False) -> tuple[list[dict], dict]:
    r"""Predicted beside measured flips of every layer of ``sites`` under each of ``perturbations`` on
    ``batches`` (module docstring). Whole-model kinds (``int8``, ``int4``) run a quantized copy of ``model`` on
    the same batches; their isotropic error is calibrated on the first ``calibration`` share of the sequences
    (at least 2), which are left out of their rows. Returns ``(rows, meta)``."""
    from ..hooks import RouterCapture

    calibration = check_float(calibration, "calibration", "price_flips", 0.0, 1.0)
    price = FlipPrice(sites, perturbations, noise=noise, seed=seed)
    whole = [k for k in price.kinds if k in WHOLE_MODEL]
    copies = {k: quantized_model(model, 8 if k == "int8" else 4) for k in whole}
    by_name = {s.name: s for s in sites}
    n_seq = sum(int(b.ids.shape[0]) for b in batches)
    cal_units = max(2, int(round(calibration * n_seq))) if whole else 0
    seq0 = 0
    it = batches
    bar = None
    if progress:
        from tqdm.auto import tqdm

        it = bar = tqdm(batches, desc="pricing flips", unit="batch", leave=False)
    try:
        for b, batch in enumerate(it):
            base: dict = {}

            def sink(site, routed, args, store=base):
                store[site.index] = (args[0].detach(), routed.logits)

            with RouterCapture(sites, sink), torch.no_grad():
                model(**batch.inputs)
            changed: dict = {}
            for kind, qm in copies.items():
                got: dict = {}
                handles = []
                for name, s in by_name.items():
                    mod = qm.get_submodule(name)

                    def hook(m, args, out, s=s):
                        got[s.index] = s.read(args, out).logits.detach()

                    handles.append(mod.register_forward_hook(hook))
                try:
                    with torch.no_grad():
                        qm(**batch.inputs)
                finally:
                    for hd in handles:
                        hd.remove()
                changed[kind] = got
            B, S = batch.ids.shape[0], batch.ids.shape[-1] if batch.ids.ndim > 1 else 1
            for s in sites:
                if s.index not in base:
                    continue
                hidden, logits = base[s.index]
                h = hidden.reshape(-1, hidden.shape[-1])
                n = h.shape[0]
                units = seq0 + (np.arange(n) // S if n == B * S else np.zeros(n, np.int64))
                price.update(s, h, logits, units, b, {k: changed[k].get(s.index) for k in changed})
            seq0 += B
    finally:
        if bar is not None:
            bar.close()
    rows, verdict = price.rows(cal_units)
    meta = {"perturbations": price.kinds, "noise": noise, "seed": seed, "calibration_sequences": cal_units,
            "sequences": seq0, "notes": list(price.notes.values()), "verdicts": verdict,
            "quantizer": "optimum-quanto (weight-only qint8 per channel / qint4 groups of 128, dequantized)",
            "targets": {"per_layer": TARGET_LAYER, "mean": TARGET_MEAN, "min_measured": MIN_MEASURED}}
    return rows, meta


def write_flips(rows: list[dict], meta: dict, out) -> list:
    """``flips.csv`` (+ ``.json``) and ``flips.png`` into ``out``."""
    from pathlib import Path

    from ...report.fig_flips import figure_flips
    from ...results.io import write_table
    from ...results.table import Table

    cols = ["layer", "perturbation", "predicted", "predicted_stderr", "measured", "measured_stderr", "ratio",
            "ratio_stderr", "tokens", "sequences", "error_model", "kappa", "calibration_tokens", "judged",
            "within_layer_target", "module"]
    paths = write_table(Table("flips", cols, [{c: r.get(c) for c in cols} for r in rows], meta), Path(out),
                        tex=False)
    paths.append(figure_flips(out))
    return paths
