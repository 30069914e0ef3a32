"""Bad-input fuzz of softhard's public API (issue 16): not a timed test, a measurement.

Every public name of ``softhard`` gets a valid call (small sizes); each of its parameters is then replaced,
one at a time, by bad values of the kinds that parameter can go wrong in (wrong type, NaN, ±inf, negative,
zero, empty, wrong shape, wrong dtype, wrong device, a callable that fails or returns NaN). Each case ends as:

- ``error``: a ``ValueError``/``TypeError`` in the project's template ("The 'p' parameter of f must be ...");
  ``misnamed`` when the parameter it names is not the one that was changed;
- ``foreign``: any other exception (a traceback from inside torch/numpy/python, a bare message);
- ``nan``: a result that contains NaN;
- ``silent``: a result without NaN although the value given is invalid whatever the context (NaN, text,
  empty, wrong shape, an unknown option, a negative or zero value where the parameter is declared positive);
- ``accepted``: any other result (many bad-looking values are legitimate: ``inf`` widths, int tensors);
- ``timeout``: more than ``--timeout`` seconds.

A second section sweeps the gates over float32/float64, τ ∈ [1e-300, 1e300] and logits up to the dtype's
largest value, and counts NaN and range violations (softmax in [0, 1] summing to 1, entropy in [0, log K]).

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/fuzz.py [--json fuzz.json] [--only NAME ...] [--list] [--timeout 20]

Prints the counts and every non-``error``/non-``accepted`` case (one line each); exit status 0.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy/torch load
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import softhard as sh  # noqa: E402

torch.set_num_threads(1)
F64, NAN, INF = torch.float64, math.nan, math.inf
TEMPLATE = re.compile(r"The '([^']+)' parameter of (.+?) must be")


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


@dataclass
class Fresh:
    """A base argument built anew for every call (for arguments a call may change, e.g. a trained MoE)."""

    make: Callable[[], Any]


@dataclass
class Target:
    """``name`` (as the user calls it), ``fn(**kwargs)``, valid ``base`` kwargs, ``kinds``: param -> kind.

    ``alias``: param -> other parameter names an error may fairly blame: only from a reference parameter to
    the ones checked against it (a wrong-size ``cov`` may be reported as a ``u`` that does not match it; a
    wrong-size ``u`` must be reported as ``u``).
    ``skip``: param -> mutation labels that are valid for this parameter here.
    """

    name: str
    fn: Callable
    base: dict
    kinds: dict
    alias: dict = field(default_factory=dict)
    skip: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- mutations
# each mutation: (label, value, invalid) -- invalid: wrong whatever the context (so a quiet result is "silent")

def _m_float(kind: str):
    pos, nonneg, prob, opt = "pos" in kind, "nonneg" in kind, "prob" in kind, kind.startswith("opt")
    out = [("str", "a", True), ("nan", NAN, True), ("complex", 1j, True), ("list", [1.0, 2.0], True),
           ("bool", True, True), ("inf", INF, prob), ("-inf", -INF, pos or nonneg or prob),
           ("neg", -1.0, pos or nonneg or prob), ("zero", 0.0, pos), ("huge", 1e308, prob), ("tiny", 1e-308, False),
           ("nan32", np.float32("nan"), True), ("tensor_nan", torch.tensor(NAN), True)]
    if not opt:
        out.append(("none", None, True))
    return out


def _m_int(kind: str):
    low = 0 if "nonneg" in kind else 1
    out = [("str", "3", True), ("float", 1.5, True), ("nan", NAN, True), ("bool", True, True), ("inf", INF, True),
           ("neg", -5, True), ("zero", 0, low > 0), ("list", [1, 2], True)]
    if not kind.startswith("opt"):
        out.append(("none", None, True))
    return out


def _m_seed(kind: str):
    return [("neg", -1, True), ("float", 1.5, True), ("str", "a", True), ("huge", 2 ** 70, False),
            ("array", np.array([1, 2]), True), ("bool", True, True)]


def _m_choice(kind: str):
    return [("bogus", "bogus", True), ("int", 3, True), ("empty", "", True)] + (
        [] if kind.startswith("opt") else [("none", None, True)])


def _m_bool(kind: str):
    return [("str", "yes", True), ("int2", 2, True), ("none", None, False)]


def _m_device(kind: str):
    return [("bogus", "bogus", True), ("cuda", "cuda:7", True), ("int", 3.5, True), ("meta", "meta", False)]


def _m_dtype(kind: str):
    return [("str", "float64", False), ("int", torch.int64, True), ("complex", torch.complex128, True),
            ("f16", torch.float16, False), ("numpy", np.float64, False)]


def _m_path(kind: str):
    return [("missing", "/nonexistent/softhard-fuzz", True), ("int", 3, True), ("none", None, True)]


def _m_object(kind: str, wrong: Any = None):
    out = [("none", None, not kind.startswith("opt")), ("int", 3, True), ("str", "x", True),
           ("array", np.zeros(3), True)]
    if wrong is not None:
        out.append(("wrong_d", wrong, True))
    return out


def _m_callable(kind: str):
    """``callable:lazy``: a function only stored here (checked where it is called), so a quiet result is fine."""
    now = "lazy" not in kind
    return [("int", 3, True), ("nan_fn", lambda x: torch.full((x.shape[0],), NAN, dtype=x.dtype), now),
            ("wrong_shape", lambda x: torch.zeros(x.shape[0] + 1, dtype=x.dtype), now),
            ("raises", lambda x: 1 / 0, now)]


def _m_array(kind: str, base: Any):
    """Array mutations; ``kind`` says which shape changes are invalid ("logits": any leading dims are fine;
    "free": the shape sets a size, so a different shape is another valid object)."""
    t = torch.as_tensor(np.asarray(base, dtype=np.float64))
    out = [("empty", [], True), ("str", ["a", "b"], True), ("ragged", [[1.0], [1.0, 2.0]], True),
           ("nan", torch.full_like(t, NAN), True), ("inf", torch.full_like(t, INF), "inf_ok" not in kind),
           ("int", t.round().to(torch.int64), False), ("complex", t.to(torch.complex128), True),
           ("f32", t.to(torch.float32), False), ("f16", t.to(torch.float16), False),
           ("huge", torch.full_like(t, 1e308), False), ("meta", t.to("meta"), True),
           ("numpy_obj", np.array([object()] * max(1, t.numel())), True)]
    if "grid" not in kind:
        out.append(("scalar", 1.0, True))
    if t.ndim >= 1 and "logits" not in kind:
        out.append(("extra_dim", t[None], True))
    if t.ndim >= 1:
        cut = t[..., :1] if t.shape[-1] > 1 else torch.cat([t, t], -1)
        out.append(("wrong_last", cut, "grid" not in kind and "free" not in kind))
    if "neg" in kind:
        out.append(("neg", -t.abs() - 1, True))
    if not kind.startswith("opt"):
        out.append(("none", None, True))
    return out


def mutations(kind: str, base: Any):
    k = kind.split(":")[0]
    if k.endswith("float"):
        return _m_float(kind)
    if k.endswith("int"):
        return _m_int(kind)
    table = {"seed": _m_seed, "choice": _m_choice, "opt_choice": _m_choice, "bool": _m_bool, "device": _m_device,
             "dtype": _m_dtype, "path": _m_path, "callable": _m_callable}
    if k in table:
        return table[k](kind)
    if k.endswith("array"):
        return _m_array(kind, base)
    if k.endswith("object"):
        return _m_object(kind, WRONG.get(kind.split(":")[1]) if ":" in kind else None)
    raise KeyError(kind)


# ----------------------------------------------------------------------------------------------- fixtures

def _fixtures() -> dict:
    r = sh.LinearRouter.binary(torch.tensor([1.0, 0.5], dtype=F64), 0.2)
    r3 = sh.LinearRouter(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -0.5]], dtype=F64))
    ex = sh.LinearExperts(torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=F64), torch.tensor([0.5, -0.5], dtype=F64))
    moe = sh.MoE(r, ex)
    law = sh.Gaussian(torch.tensor([0.1, -0.2], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 2.0]], dtype=F64))
    law3 = sh.Gaussian.standard(3)
    moe3 = sh.MoE(sh.LinearRouter.binary(torch.ones(3, dtype=F64)), sh.LinearExperts(torch.eye(2, 3, dtype=F64)))
    return {"router": r, "router3": r3, "experts": ex, "moe": moe, "law": law, "law3": law3, "moe3": moe3,
            "r_d3": moe3.router}


FX: dict = {}
WRONG: dict = {}


def targets() -> list[Target]:
    FX.update(_fixtures())
    WRONG.update({"law": FX["law3"], "router": FX["r_d3"], "moe": FX["moe3"], "teacher": FX["moe3"]})
    r, moe, law = FX["router"], FX["moe"], FX["law"]
    logits = [[1.0, 0.5, -0.25], [0.0, 0.0, 2.0]]
    x = torch.tensor([[0.3, -0.1], [1.0, 2.0], [-0.5, 0.7]], dtype=F64)
    T: list[Target] = []

    def add(name, fn, base, kinds, **kw):
        T.append(Target(name, fn, base, kinds, **kw))

    # gates
    for name in ("softmax_gate", "tail_sum", "concentration_bound", "gate_entropy"):
        add(name, getattr(sh, name), {"logits": logits, "tau": 0.5}, {"logits": "array:logits", "tau": "pos_float"})
    for name in ("hard_gate", "hard_winner", "top_two_margin", "pairwise_separation"):
        add(name, getattr(sh, name), {"logits": logits}, {"logits": "array:logits"})
    add("topk_margin", sh.topk_margin, {"logits": logits, "k": 1}, {"logits": "array:logits", "k": "int"})
    add("tolerance_width", sh.tolerance_width, {"tau": 0.5, "eps": 0.1}, {"tau": "pos_float", "eps": "prob_float"},
        skip={"tau": ("list",)})
    add("tolerance_width[grid]", sh.tolerance_width, {"tau": [0.5, 1.0], "eps": 0.1}, {"tau": "array:grid:neg"})
    add("binary_entropy", sh.binary_entropy, {"p": [0.2, 0.5, 1.0]}, {"p": "array:logits:grid:neg"},
        skip={"p": ("empty",)})  # any shape, the empty one included
    # laws
    mean, cov = [0.1, -0.2], [[1.0, 0.3], [0.3, 2.0]]
    add("Gaussian", sh.Gaussian, {"mean": mean, "cov": cov, "device": None, "dtype": F64},
        {"mean": "array", "cov": "opt_array", "device": "device", "dtype": "dtype"}, alias={"mean": {"cov"}})
    add("Gaussian[psd]", sh.Gaussian, {"mean": mean, "cov": cov}, {"cov": "opt_array"})
    add("Gaussian.standard", sh.Gaussian.standard, {"d": 2}, {"d": "int"})
    add("GaussianMixture", sh.GaussianMixture, {"weights": [0.3, 0.7], "means": [[0.0, 1.0], [1.0, 0.0]],
                                               "covs": [cov, cov], "device": None, "dtype": F64},
        {"weights": "array:neg", "means": "array", "covs": "opt_array", "device": "device", "dtype": "dtype"},
        alias={"weights": {"means"}, "means": {"covs"}})
    add("Uniform", sh.Uniform, {"low": [0.0, -1.0], "high": [1.0, 2.0], "device": None, "dtype": F64},
        {"low": "array", "high": "array", "device": "device", "dtype": "dtype"}, alias={"low": {"high"}})
    add("Empirical", sh.Empirical, {"samples": x, "device": None, "dtype": F64},
        {"samples": "array:free", "device": "device", "dtype": "dtype"})
    add("Gaussian.sample", lambda n, generator: law.sample(n, generator), {"n": 5, "generator": None},
        {"n": "nonneg_int", "generator": "opt_object"})
    add("Gaussian.log_prob", lambda x: law.log_prob(x), {"x": x}, {"x": "array"})
    # routers, experts, MoE, teachers
    W = [[1.0, 0.0], [0.0, 1.0]]
    add("LinearRouter", sh.LinearRouter, {"weight": W, "bias": [0.0, 0.1]},
        {"weight": "array:free", "bias": "opt_array"}, alias={"weight": {"bias"}})
    add("LinearRouter.binary", sh.LinearRouter.binary, {"v": [1.0, 0.5], "b": 0.0}, {"v": "array:free", "b": "float"})
    add("LinearExperts", sh.LinearExperts, {"weight": W, "bias": [0.0, 0.1]},
        {"weight": "array:free", "bias": "opt_array"}, alias={"weight": {"bias"}})
    add("ConstantExperts", sh.ConstantExperts, {"values": [1.0, -1.0], "d": 2},
        {"values": "array:free", "d": "opt_int"})
    add("MLPRouter", sh.MLPRouter, {"d": 2, "num_experts": 3, "hidden": (4,), "seed": 0, "activation": "tanh"},
        {"d": "int", "num_experts": "int", "hidden": "int", "seed": "seed", "activation": "choice"},
        skip={"hidden": ("list",)})
    add("MLPExperts", sh.MLPExperts, {"d": 2, "num_experts": 3, "hidden": 4, "seed": 0},
        {"d": "int", "num_experts": "int", "hidden": "int", "seed": "seed"})
    add("as_router", sh.as_router, {"router": lambda z: torch.stack([z[:, 0], -z[:, 0]], 1), "d": 2},
        {"router": "callable", "d": "opt_int"})
    add("as_experts", sh.as_experts, {"experts": lambda z: torch.stack([z[:, 0], -z[:, 0]], 1), "d": 2},
        {"experts": "callable", "d": "opt_int"})
    for name in ("score_difference", "score_gradient"):
        add(name, getattr(sh, name), {"router": FX["router3"], "x": x, "pair": (0, 2)},
            {"router": "object:router", "x": "array", "pair": "array"}, alias={"router": {"x"}})
    add("MoE", sh.MoE, {"router": r, "experts": FX["experts"], "d": None},
        {"router": "object:router", "experts": "object", "d": "opt_int"}, alias={"router": {"experts"}})
    add("MoE.soft", lambda x, tau: moe.soft(x, tau), {"x": x, "tau": 0.5}, {"x": "array", "tau": "pos_float"},
        skip={"tau": ("list",)})
    add("MoE.soft[grid]", lambda x, tau: moe.soft(x, tau), {"x": x, "tau": [0.5, 1.0]}, {"tau": "array:grid:neg"})
    add("MoE.hard", lambda x: moe.hard(x), {"x": x}, {"x": "array"})
    add("MoE.loss", lambda x, y, tau: moe.loss(x, y, tau), {"x": x, "y": [0.0, 1.0, 2.0], "tau": 0.5},
        {"x": "array", "y": "array", "tau": "opt_pos_float"}, alias={"x": {"y"}}, skip={"tau": ("list",)})
    add("FunctionTeacher", sh.FunctionTeacher, {"fn": lambda z: z[:, 0], "noise_std": 0.1},
        {"fn": "callable:lazy", "noise_std": "nonneg_float"})
    add("HardTeacher", sh.HardTeacher, {"moe": moe, "noise_std": 0.1}, {"moe": "object", "noise_std": "nonneg_float"})
    add("as_teacher", sh.as_teacher, {"teacher": lambda z: z[:, 0], "moe": moe},
        {"teacher": "callable:lazy", "moe": "opt_object"}, alias={"moe": {"teacher"}})
    # closed forms
    add("orthant_probability", sh.orthant_probability, {"mean": [0.0, 0.1], "cov": [[1.0, 0.2], [0.2, 1.0]],
                                                        "low": [0.0, 0.0], "abseps": 1e-6},
        {"mean": "array", "cov": "array", "low": "array:inf_ok", "abseps": "pos_float"},
        alias={"mean": {"cov", "low"}})
    add("boundary_mass_exact", sh.boundary_mass_exact, {"router": r, "law": law, "widths": [0.1, 0.5],
                                                        "kind": "top2", "abseps": 1e-6},
        {"router": "object:router", "law": "object:law", "widths": "array:grid:neg:inf_ok", "kind": "choice",
         "abseps": "pos_float"}, alias={"router": {"law"}})
    other = sh.LinearRouter.binary(torch.tensor([0.5, 1.0], dtype=F64), -0.1)
    add("flip_probability_exact", sh.flip_probability_exact, {"router": r, "other": other, "law": law},
        {"router": "object:router", "other": "object:router", "law": "object:law"},
        alias={"router": {"law", "other"}})
    add("interface_constant_exact", sh.interface_constant_exact, {"router": r, "law": law, "abseps": 1e-6},
        {"router": "object:router", "law": "object:law", "abseps": "pos_float"}, alias={"router": {"law"}})
    for name in ("risk_exact", "risk_gap_exact"):
        add(name, getattr(sh, name), {"moe": moe, "law": law, "taus": [0.1, 0.5], "teacher": None},
            {"moe": "object:moe", "law": "object:law", "taus": "array:grid:neg", "teacher": "opt_object:teacher"},
            alias={"moe": {"law", "teacher"}})
    add("gap_slope_exact", sh.gap_slope_exact, {"moe": moe, "law": law, "teacher": None},
        {"moe": "object:moe", "law": "object:law", "teacher": "opt_object:teacher"}, alias={"moe": {"law", "teacher"}})
    # estimators
    add("Estimate", sh.Estimate, {"value": [0.1, 0.2], "stderr": [0.01, 0.02], "n": 100, "method": "mc", "seed": 0},
        {"value": "array", "stderr": "array:neg", "n": "int", "method": "choice", "seed": "seed"},
        alias={"value": {"stderr"}})
    add("draw", sh.draw, {"law": law, "n": 8, "seed": 0, "device": None},
        {"law": "object", "n": "nonneg_int", "seed": "seed", "device": "device"})
    add("mean_estimate", sh.mean_estimate, {"values": [1.0, 2.0, 4.0]}, {"values": "array"})
    add("monte_carlo", sh.monte_carlo, {"terms": lambda z: z[:, :1] ** 2, "law": law, "n": 256, "seed": 0,
                                        "method": "mc", "scrambles": 4, "chunk": None, "device": None,
                                        "target_rel_error": None, "min_n": 64, "workers": 1},
        {"terms": "callable", "law": "object", "n": "opt_int", "seed": "seed", "method": "choice", "scrambles": "int",
         "chunk": "opt_int", "device": "device", "target_rel_error": "opt_pos_float", "min_n": "int",
         "workers": "int"})
    add("score_space", sh.score_space, {"model": moe, "law": law, "teacher": None},
        {"model": "object:moe", "law": "object:law", "teacher": "opt_object:teacher"},
        alias={"model": {"law", "teacher"}})
    vals = np.random.default_rng(0).normal(size=200)
    add("density_at_zero", sh.density_at_zero, {"values": vals, "bandwidth": None, "one_sided": False},
        {"values": "array:grid", "bandwidth": "opt_pos_float", "one_sided": "bool"})
    add("kernel_bandwidth", sh.kernel_bandwidth, {"values": vals, "n": None, "one_sided": False},
        {"values": "array:grid", "n": "opt_int", "one_sided": "bool"})
    add("fit_margin_tail", sh.fit_margin_tail, {"margins": np.abs(vals), "t_max": None, "tail_fraction": 0.2,
                                                "zeros": "raise"},
        {"margins": "array:grid:neg", "t_max": "opt_pos_float", "tail_fraction": "prob_pos_float",
         "zeros": "choice"})
    # quantities (small n)
    n = 2048
    rl = {"router": "object:router", "law": "object:law"}
    ral = {"router": {"law"}}
    add("ambiguity_mass", sh.ambiguity_mass, {"router": r, "law": law, "taus": [0.1, 0.5], "eps": 0.1, "n": n,
                                              "seed": 0},
        {**rl, "taus": "array:grid:neg", "eps": "prob_pos_float", "n": "opt_int", "seed": "seed"}, alias=ral)
    add("boundary_mass", sh.boundary_mass, {"router": r, "law": law, "widths": [0.1, 0.5], "kind": "top2", "n": n,
                                            "seed": 0, "k": 1, "method": "mc"},
        {**rl, "widths": "array:grid:neg:inf_ok", "kind": "choice", "n": "opt_int", "seed": "seed", "k": "int",
         "method": "choice"}, alias=ral)
    add("boundary_mass[exact]", sh.boundary_mass, {"router": r, "law": law, "widths": [0.1, 0.5], "method": "exact"},
        {**rl, "widths": "array:grid:neg:inf_ok"}, alias=ral)
    add("margin_tail", sh.margin_tail, {"router": r, "law": law, "n": n, "seed": 0, "t_max": None,
                                        "tail_fraction": 0.2, "kind": "top2", "zeros": "raise"},
        {**rl, "n": "int", "seed": "seed", "t_max": "opt_pos_float", "tail_fraction": "prob_pos_float",
         "kind": "choice", "zeros": "choice"}, alias=ral)
    for name in ("coarea_constant", "interface_constant", "entropy_slope"):
        base = {"router": r, "law": law, "method": "auto", "n": n, "seed": 0, "bandwidth": None}
        kinds = {**rl, "method": "choice", "n": "int", "seed": "seed", "bandwidth": "opt_pos_float"}
        if name == "coarea_constant":
            base["pair"], kinds["pair"] = (0, 1), "array"
        add(name, getattr(sh, name), base, kinds, alias=ral)
        add(name + "[sampled]", getattr(sh, name), {**base, "method": "kernel"},
            {"n": "opt_int", "bandwidth": "opt_pos_float"}, alias=ral)
    add("coarea_sum", sh.coarea_sum, {"router": r, "law": law, "method": "auto", "n": n, "seed": 0},
        {**rl, "method": "choice", "n": "opt_int", "seed": "seed"}, alias=ral)
    add("interface_diagnostic", sh.interface_diagnostic, {"router": r, "law": law, "n": 4096, "seed": 0,
                                                          "tail_fraction": 0.05, "near_fraction": 0.01, "bins": 20,
                                                          "grad_tol": 0.05, "alpha_tol": 0.2},
        {**rl, "n": "int", "seed": "seed", "tail_fraction": "prob_pos_float", "near_fraction": "prob_pos_float",
         "bins": "int", "grad_tol": "pos_float", "alpha_tol": "pos_float"},
        alias={**ral, "tail_fraction": {"near_fraction"}})  # near_fraction <= tail_fraction
    add("gate_entropy_mean", sh.gate_entropy_mean, {"router": r, "law": law, "taus": [0.1, 0.5], "n": n, "seed": 0},
        {**rl, "taus": "array:grid:neg", "n": "opt_int", "seed": "seed"}, alias=ral)
    ml = {"moe": "object:moe", "law": "object:law", "teacher": "opt_object:teacher"}
    mal = {"moe": {"law", "teacher"}}
    add("gap_slope", sh.gap_slope, {"moe": moe, "law": law, "teacher": None, "n": n, "seed": 0, "method": "auto",
                                    "bandwidth": None},
        {**ml, "n": "opt_int", "seed": "seed", "method": "choice", "bandwidth": "opt_pos_float"}, alias=mal)
    for method in ("mc", "auto"):
        add(f"risk_gap[{method}]", sh.risk_gap, {"moe": moe, "law": law, "taus": [0.1, 0.5], "teacher": None, "n": n,
                                                 "seed": 0, "method": method},
            {**ml, "taus": "array:grid:neg", "n": "opt_int", "seed": "seed", "method": "choice"}, alias=mal)
        add(f"risk_gap[{method}, fn teacher]", sh.risk_gap, {"moe": moe, "law": law, "taus": [0.1, 0.5],
                                                             "teacher": lambda z: z[:, 0], "n": n, "method": method},
            {"teacher": "callable"}, alias=mal)  # used at once: a bad function must be reported
    for name in ("cauchy_schwarz_bound", "local_gap_certificate"):
        add(name, getattr(sh, name), {"moe": moe, "law": law, "taus": [0.1, 0.5], "teacher": None, "n": n, "seed": 0},
            {**ml, "taus": "array:grid:neg", "n": "opt_int", "seed": "seed"}, alias=mal)
    add("gap_certificate", sh.gap_certificate, {"moe": moe, "law": law, "taus": [0.1, 0.5], "B_Y": 100.0, "B_h": 100.0,
                                                "teacher": None, "n": n, "seed": 0},
        {**ml, "taus": "array:grid:neg", "B_Y": "nonneg_float", "B_h": "nonneg_float", "n": "opt_int", "seed": "seed"},
        alias=mal)
    add("theorem45_constant", sh.theorem45_constant, {"C_delta": 1.0, "alpha": 1.0, "B_Y": 1.0, "B_h": 1.0, "K": 2},
        {"C_delta": "nonneg_float", "alpha": "pos_float", "B_Y": "nonneg_float", "B_h": "nonneg_float", "K": "int"})
    # dynamics: problems, students, recovery
    prob = sh.binary_problem()
    student = prob.student(seed=1)
    xs = sh.draw(prob.law, 256, 0)
    add("binary_problem", sh.binary_problem, {"noise_std": 0.0}, {"noise_std": "nonneg_float"})
    add("voronoi3_problem", sh.voronoi3_problem, {"noise_std": 0.0}, {"noise_std": "nonneg_float"})
    add("get_problem", sh.get_problem, {"name": "binary"}, {"name": "choice"})
    add("make_student", sh.make_student, {"d": 2, "num_experts": 2, "router": "unit", "experts": "linear",
                                          "hidden": 4, "scale": 1.0, "init_scale": 1.0, "seed": 0},
        {"d": "int", "num_experts": "int", "router": "choice", "experts": "choice", "hidden": "int",
         "scale": "pos_float", "init_scale": "nonneg_float", "seed": "seed"})
    add("UnitLinearRouter", sh.UnitLinearRouter, {"weight": W, "bias": [0.0, 0.1], "scale": 1.0},
        {"weight": "array:free", "bias": "opt_array", "scale": "pos_float"}, alias={"weight": {"bias"}})
    add("PartitionTeacher", sh.PartitionTeacher, {"moe": prob.teacher.moe, "noise_std": 0.1},
        {"moe": "object", "noise_std": "nonneg_float"})
    add("recovery", sh.recovery, {"student": student, "teacher": prob.teacher, "law": prob.law, "n": 1024,
                                  "seed": 0, "method": "mc"},
        {"student": "object:moe", "teacher": "object:teacher", "law": "opt_object:law", "n": "int", "seed": "seed",
         "method": "choice"}, alias={"student": {"teacher", "law"}})
    add("risk_decomposition", sh.risk_decomposition, {"student": student, "teacher": prob.teacher, "law": prob.law,
                                                      "tau": 0.1, "eps": 0.1, "n": 1024, "seed": 0},
        {"student": "object:moe", "teacher": "object:teacher", "law": "opt_object:law", "tau": "pos_float",
         "eps": "prob_pos_float", "n": "int", "seed": "seed"},
        alias={"student": {"teacher", "law"}})
    add("hard_risk", sh.hard_risk, {"moe": student, "teacher": prob.teacher, "law": prob.law, "method": "mc",
                                    "n": 1024, "seed": 0},
        {"moe": "object:moe", "teacher": "opt_object:teacher", "law": "object:law", "method": "choice", "n": "int",
         "seed": "seed"}, alias={"moe": {"teacher", "law"}})
    add("profiled_hard_risk", sh.profiled_hard_risk, {"router": student.router, "teacher": prob.teacher,
                                                      "law": prob.law, "method": "exact"},
        {"router": "object:router", "teacher": "object:teacher", "law": "object:law", "method": "choice"},
        alias={"router": {"teacher", "law"}})
    add("shape_gradient", sh.shape_gradient, {"router": student.router, "teacher": prob.teacher, "law": prob.law,
                                              "method": "exact", "n": 1024, "seed": 0, "bandwidth": 0.05},
        {"router": "object:router", "teacher": "object:teacher", "law": "object:law", "method": "choice",
         "n": "int", "seed": "seed", "bandwidth": "pos_float"},
        alias={"router": {"teacher", "law"}})
    Wr = student.router.weight.detach()
    add("shape_derivative", sh.shape_derivative, {"router": student.router, "teacher": prob.teacher,
                                                  "law": prob.law, "direction": (torch.ones_like(Wr),
                                                                                 torch.zeros(Wr.shape[0]))},
        {"router": "object:router", "teacher": "object:teacher", "law": "object:law", "direction": "object"},
        alias={"router": {"teacher", "law", "direction"}})
    # landscape
    lk = {"moe": "object:moe", "teacher": "object:teacher", "sample": "array", "tau": "pos_float"}
    la = {"moe": {"teacher", "sample", "starts"}}
    add("ParamSpace", sh.ParamSpace, {"moe": student}, {"moe": "object"})
    add("hessian", sh.hessian, {"moe": student, "teacher": prob.teacher, "sample": xs, "tau": 0.2,
                                "max_bytes": 1 << 26}, {**lk, "max_bytes": "int"}, alias=la)
    add("critical_points", sh.critical_points, {"moe": student, "teacher": prob.teacher, "sample": xs, "tau": 0.2,
                                                "starts": [student], "max_iter": 5, "newton_iter": 2},
        {**lk, "starts": "object", "max_iter": "int", "newton_iter": "nonneg_int", "method": "choice",
         "tol": "pos_float", "eig_rtol": "nonneg_float", "equivalence_tol": "prob_float", "group_tol": "nonneg_float"},
        alias=la)
    add("minima_path", sh.minima_path, {"moe": student, "teacher": prob.teacher, "sample": xs, "taus": [0.2, 0.1],
                                        "max_iter": 5, "newton_iter": 2},
        {"moe": "object:moe", "teacher": "object:teacher", "sample": "array", "taus": "array:grid:neg",
         "max_iter": "int", "tol": "pos_float"}, alias=la)
    add("random_family", sh.random_family, {"moe": student, "size": 3, "radius": 0.3, "seed": 0},
        {"moe": "object", "size": "int", "radius": "nonneg_float", "seed": "seed"})
    fam = sh.random_family(student, 2, 0.3, seed=1)
    add("uniform_gap", sh.uniform_gap, {"moe": student, "teacher": prob.teacher, "law": prob.law, "family": fam,
                                        "taus": [0.05, 0.1, 0.2], "n": 1024, "seed": 0},
        {"moe": "object:moe", "teacher": "opt_object:teacher", "law": "object:law", "family": "array",
         "taus": "array:grid:neg", "n": "int", "seed": "seed", "method": "choice"},
        alias={"moe": {"teacher", "law", "family"}})
    # symmetry
    d = 2
    tg = dict(cov=[[1.0, 0.2], [0.2, 1.0]], u=[1.0, 0.0], beta0=[0.1, 0.2], contrast=[1.0, -0.5], w1=[0.5, 0.1],
              w2=[-0.3, 0.2])
    add("TwoExpertGaussian", sh.TwoExpertGaussian, tg, {k: "array" for k in tg}, alias={"cov": set(tg) - {"cov"}})
    tm = sh.TwoExpertGaussian(**tg)
    M = sh.reduced_operator(tg["cov"], tg["u"], tg["contrast"], 0.2)
    add("alignment", sh.alignment, {"theta": [[1.0, 0.5]], "u": [1.0, 0.0]},
        {"theta": "array:logits", "u": "array"}, alias={"theta": {"u"}})
    add("alignment_ratio", sh.alignment_ratio, {"theta": [[1.0, 0.5]], "direction": [1.0, 0.0]},
        {"theta": "array:logits", "direction": "array"}, alias={"theta": {"direction"}})
    add("alignment_rate", sh.alignment_rate, {"M": M, "eta": 0.1}, {"M": "array", "eta": "pos_float"})
    add("linear_iteration", sh.linear_iteration, {"M": M, "theta0": [0.1, 0.0], "eta": 0.1, "steps": 3},
        {"M": "array", "theta0": "array", "eta": "pos_float", "steps": "nonneg_int"},
        alias={"M": {"theta0"}})
    add("operator_spectrum", sh.operator_spectrum, {"M": M, "u": [1.0, 0.0]}, {"M": "array", "u": "array"},
        alias={"M": {"u"}})
    add("reduced_operator", sh.reduced_operator, {"cov": tg["cov"], "u": tg["u"], "contrast": tg["contrast"], "tau": 0.2,
                                                  "response": "sign"},
        {"cov": "array", "u": "array", "contrast": "array", "tau": "pos_float", "response": "choice"},
        alias={"cov": {"u"}})
    add("reduced_operator_mc", sh.reduced_operator_mc, {"cov": tg["cov"], "u": tg["u"], "contrast": tg["contrast"],
                                                        "tau": 0.2, "n": 1024, "seed": 0},
        {"cov": "array", "u": "array", "contrast": "array", "tau": "pos_float", "n": "int", "seed": "seed"},
        alias={"cov": {"u"}})
    add("TwoExpertGaussian.risk", lambda theta, tau, n: tm.risk(theta, tau, n), {"theta": [0.1, 0.2], "tau": 0.2,
                                                                                "n": 1024},
        {"theta": "array", "tau": "pos_float", "n": "int"})
    add("TwoExpertGaussian.exact", lambda theta, tau: tm.exact(theta, tau), {"theta": [0.1, 0.2], "tau": 0.2},
        {"theta": "array", "tau": "pos_float"})
    xt = sh.draw(sh.Gaussian(torch.zeros(d, dtype=F64), torch.tensor(tg["cov"])), 64, 0)
    add("train_router", sh.train_router, {"model": tm, "x": xt, "theta0": [0.01, 0.0], "taus": [0.2], "eta": 0.1,
                                          "steps": 3},
        {"model": "object", "x": "array", "theta0": "array", "taus": "array:grid:neg", "eta": "pos_float",
         "steps": "nonneg_int"}, alias={"model": {"x", "theta0"}})
    # training
    add("TauSchedule", sh.TauSchedule, {"kind": "geometric", "tau": 0.3, "factor": 0.9, "tau_min": 0.05},
        {"kind": "choice", "tau": "pos_float", "factor": "prob_pos_float", "tau_min": "pos_float"},
        alias={"tau": {"tau_min"}, "tau_min": {"tau"}})
    add("train", sh.train, {"moe": Fresh(lambda: prob.student(seed=2)), "teacher": prob.teacher, "law": prob.law,
                            "schedule": 0.2, "method": "gd", "steps": 2, "lr": 0.1, "n": 512, "batch": 128,
                            "seed": 0},
        {"moe": "object:moe", "teacher": "object:teacher", "law": "object:law", "schedule": "pos_float",
         "method": "choice", "steps": "nonneg_int", "lr": "opt_pos_float", "n": "int", "batch": "int",
         "seed": "seed"}, alias={"moe": {"teacher", "law"}, "teacher": {"moe"}, "law": {"moe"}, "batch": {"n"},
                                 "n": {"batch"}})
    # sweeps
    spec = {"experiment": "table2", "fixed": {"samples": 4096}, "axes": {"offsets": [1.0]}}
    for key, kind in (("samples", "int"),):
        add(f"load_spec[fixed.{key}]", lambda samples: sh.load_spec({**spec, "fixed": {"samples": samples}}),
            {"samples": 4096}, {"samples": kind})
    add("load_spec[axes.tau]", lambda tau: sh.load_spec({"experiment": "table2", "fixed": {"samples": 4096},
                                                         "axes": {"tau": tau}}),
        {"tau": [0.1, 0.2]}, {"tau": "array:grid:neg"}, alias={"tau": {"axes.tau"}})
    add("load_spec", sh.load_spec, {"source": spec}, {"source": "path"})
    add("read_results", sh.read_results, {"out": Fresh(_sweep_dir)}, {"out": "path"})
    return T


def _sweep_dir() -> str:
    """An empty sweep output directory (a spec without cells)."""
    out = Path(tempfile.mkdtemp(prefix="softhard-fuzz-"))
    (out / "sweep.json").write_text(json.dumps({"spec": {}, "cells": []}), encoding="utf-8")
    return str(out)


# ---------------------------------------------------------------------------------------------- running

def has_nan(obj, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if isinstance(obj, torch.Tensor):
        return bool(obj.is_floating_point() or obj.is_complex()) and obj.device.type != "meta" and bool(
            torch.isnan(obj).any())
    if isinstance(obj, np.ndarray):
        return obj.dtype.kind in "fc" and bool(np.isnan(obj).any())
    if isinstance(obj, (float, np.floating)):
        return math.isnan(obj)
    if isinstance(obj, (list, tuple)):
        return any(has_nan(v, depth + 1) for v in obj[:50])
    if isinstance(obj, dict):
        return any(has_nan(v, depth + 1) for v in list(obj.values())[:50])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return any(has_nan(getattr(obj, f.name), depth + 1) for f in dataclasses.fields(obj))
    if hasattr(obj, "_asdict"):
        return has_nan(obj._asdict(), depth + 1)
    if hasattr(obj, "rows") and isinstance(getattr(obj, "rows"), list):
        return has_nan(obj.rows, depth + 1)
    return False


def _resolve(kw: dict) -> dict:
    return {k: (v.make() if isinstance(v, Fresh) else v) for k, v in kw.items()}


def _root(name: str) -> str:
    return re.split(r"[.\[]", name, maxsplit=1)[0]


def _called(target: Target, where: str) -> bool:
    """Does the error name the function the user called (its class for a method, the sweep for load_spec)?"""
    root = _root(target.name)
    return where.split(".")[0] == root or (root == "load_spec" and where in ("softhard sweep", "table2"))


def classify(target: Target, param: str, label: str, value, invalid: bool, timeout: float) -> dict:
    kw = _resolve({**target.base, param: value})
    case = {"target": target.name, "param": param, "mutation": label}
    signal.setitimer(signal.ITIMER_REAL, timeout)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = target.fn(**kw)
    except Timeout:
        return {**case, "outcome": "timeout"}
    except Exception as e:  # noqa: BLE001 - classifying is the point
        signal.setitimer(signal.ITIMER_REAL, 0)
        msg = str(e).replace("\n", " ")
        m = TEMPLATE.search(msg)
        tb = traceback.extract_tb(e.__traceback__)
        origin = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        if isinstance(e, (ValueError, TypeError)) and m:
            named = re.split(r"[\[.]", m.group(1))[0]
            ok_names = {param} | target.alias.get(param, set())
            if m.group(1) not in ok_names and named not in ok_names:
                return {**case, "outcome": "misnamed", "named": m.group(1), "message": msg[:200]}
            return {**case, "outcome": "error", "where": m.group(2), "misplaced": not _called(target, m.group(2))}
        if type(e).__name__ == "SpecError" and "\n" not in msg:  # the sweep spec's one line, naming the file
            return {**case, "outcome": "error", "where": "load_spec", "misplaced": False}
        return {**case, "outcome": "foreign", "exception": type(e).__name__, "origin": origin, "message": msg[:200]}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    dt = time.perf_counter() - t0
    if has_nan(out):
        return {**case, "outcome": "nan", "seconds": round(dt, 3)}
    return {**case, "outcome": "silent" if invalid else "accepted", "seconds": round(dt, 3)}


def run_targets(only: list[str] | None, timeout: float) -> list[dict]:
    cases = []
    for t in targets():
        if only and t.name not in only and _root(t.name) not in only:
            continue
        try:  # the base call must work, else its mutations say nothing
            t.fn(**_resolve(t.base))
        except Exception as e:  # noqa: BLE001
            cases.append({"target": t.name, "param": "-", "mutation": "base", "outcome": "foreign",
                          "exception": type(e).__name__, "message": str(e)[:200]})
            continue
        for param, kind in t.kinds.items():
            for label, value, invalid in mutations(kind, t.base.get(param)):
                if label in t.skip.get(param, ()):
                    continue
                cases.append(classify(t, param, label, value, invalid, timeout))
    return cases


# ---------------------------------------------------------------------------------------------- gates

def gate_cases() -> list[dict]:
    """Gates over float32/float64, τ from 1e-300 to 1e300, logits up to the dtype's largest value."""
    taus = [10.0 ** e for e in range(-300, 301, 20)] + [1e-45, 1e-38, 3e38, 1e39]
    out = []
    for dtype in (torch.float32, torch.float64):
        big = float(torch.finfo(dtype).max)
        rows = [[1.0, 0.0], [0.0, 0.0], [big, -big], [big, big * 0.5], [-big, -big], [1e-300, -1e-300],
                [1.0, 0.5, -0.25], [big, 0.0, -big], [0.0, 0.0, 0.0, 1e-30], [1e30, -1e30, 0.0, 1e29]]
        for row in rows:
            a = torch.tensor([row], dtype=dtype)
            K = a.shape[-1]
            for tau in taus:
                for name in ("softmax_gate", "tail_sum", "concentration_bound", "gate_entropy"):
                    case = {"target": name, "dtype": str(dtype), "logits": row, "tau": tau}
                    try:
                        v = getattr(sh, name)(a, tau)
                    except Exception as e:  # noqa: BLE001
                        out.append({**case, "outcome": "error", "message": f"{type(e).__name__}: {e}"[:200]})
                        continue
                    bad = None
                    if bool(torch.isnan(v).any()):
                        bad = "nan"
                    elif v.dtype != dtype:
                        bad = f"dtype {v.dtype}"
                    elif name == "softmax_gate" and (bool(((v < 0) | (v > 1)).any()) or abs(
                            float(v.double().sum()) - 1) > 4 * K * float(torch.finfo(dtype).eps)):
                        bad = "range"
                    elif name == "gate_entropy" and not -1e-6 <= float(v) <= math.log(K) * (1 + 1e-6):
                        bad = "range"
                    elif name in ("tail_sum", "concentration_bound") and not 0 <= float(v) <= K - 1:
                        bad = "range"
                    out.append({**case, "outcome": bad or "ok", "value": v.tolist()})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write every case here")
    p.add_argument("--only", nargs="*", default=None, help="target names (e.g. Gaussian risk_gap)")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per case")
    p.add_argument("--no-gates", action="store_true", help="skip the gate sweep")
    args = p.parse_args(argv)
    signal.signal(signal.SIGALRM, _alarm)
    if args.list:
        print("\n".join(t.name for t in targets()))
        return 0
    t0 = time.perf_counter()
    cases = run_targets(args.only, args.timeout)
    gates = [] if args.no_gates or args.only else gate_cases()
    counts = Counter(c["outcome"] for c in cases)
    gcounts = Counter(c["outcome"] for c in gates)
    for c in cases:
        if c["outcome"] not in ("error", "accepted"):
            extra = c.get("named") or c.get("exception", "")
            print(f"{c['outcome']:9s} {c['target']}({c['param']}={c['mutation']}) {extra} "
                  f"{c.get('origin', '')} {c.get('message', '')}"[:300])
    for c in gates:
        if c["outcome"] != "ok":
            print(f"gate-{c['outcome']:5s} {c['target']}({c['dtype']}, logits={c['logits']}, tau={c['tau']:g}) "
                  f"{c.get('message', c.get('value'))}"[:300])
    misplaced = Counter(f"{c['target']} -> {c['where']}" for c in cases if c.get("misplaced"))
    for k, v in sorted(misplaced.items()):
        print(f"misplaced {k} ({v} cases)")
    print(f"\nsofthard {sh.__version__} from {Path(sh.__file__).parent}")
    print(f"bad-input cases: {len(cases)} over {len({c['target'] for c in cases})} targets; "
          + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("error", "accepted", "nan", "foreign", "misnamed",
                                                              "silent", "timeout"))
          + f"; errors naming another function than the one called: {sum(misplaced.values())}")
    if gates:
        print(f"gate cases: {len(gates)}; " + ", ".join(f"{k} {v}" for k, v in sorted(gcounts.items())))
    gate_range = sum(v for k, v in gcounts.items() if k not in ("ok", "nan"))
    print(f"SUMMARY cases={len(cases) + len(gates)} nan={counts.get('nan', 0) + gcounts.get('nan', 0)} "
          f"foreign={counts.get('foreign', 0)} misnamed={counts.get('misnamed', 0)} silent={counts.get('silent', 0)} "
          f"timeout={counts.get('timeout', 0)} gate_range={gate_range} ({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"cases": cases, "gates": gates}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
