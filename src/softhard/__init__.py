"""softhard: the soft-to-hard limit of mixture-of-experts routing (arXiv 2605.02124).

The public API is re-exported here, lazily: ``import softhard`` loads no submodule (so the command line
and ``import softhard`` stay fast); the first access to a name imports its module. Layers, from the bottom:
``model`` (gates, laws, routers, experts, MoE) → ``closed`` (closed forms) and ``estimators`` (the one
reducer and the samplers) → ``quantities`` (what users call) → ``dynamics``, ``experiments``, ``inspect``
→ ``results``/``report``/``runs`` → ``cli``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "model.gates": ["binary_entropy", "concentration_bound", "gate_entropy", "hard_gate", "hard_winner",
                    "pairwise_separation", "softmax_gate", "tail_sum", "tolerance_width", "top_two_margin",
                    "topk_margin"],
    "model.laws": ["Empirical", "Gaussian", "GaussianMixture", "Law", "Uniform"],
    "model.routers": ["LinearRouter", "MLPRouter", "UnitLinearRouter", "as_router", "score_difference",
                      "score_gradient"],
    "model.experts": ["ConstantExperts", "LinearExperts", "MLPExperts", "as_experts"],
    "model.moe": ["FunctionTeacher", "HardTeacher", "MoE", "Teacher", "as_teacher"],
    "closed.normal": ["orthant_probability"],
    "closed.boundary": ["boundary_mass_exact", "flip_probability_exact", "interface_constant_exact"],
    "closed.risk": ["gap_slope_exact", "gate_entropy_exact", "risk_exact", "risk_gap_exact"],
    "estimators.reducer": ["Estimate", "TargetNotReached", "draw", "mean_estimate", "monte_carlo"],
    "quantities": ["QUANTITIES"],
    "estimators.score_space": ["ScoreSpace", "score_space"],
    "estimators.kernel": ["density_at_zero", "kernel_bandwidth"],
    "estimators.fits": ["MarginTail", "fit_margin_tail"],
    "quantities.mass": ["ambiguity_mass", "boundary_mass", "margin_tail"],
    "quantities.coarea": ["InterfaceDiagnostic", "coarea_constant", "coarea_sum", "entropy_slope", "interface_constant",
                          "interface_diagnostic", "level_set_profile"],
    "quantities.gap": ["gap_slope", "gate_entropy_mean", "risk_gap"],
    "quantities.bounds": ["cauchy_schwarz_bound", "corollary44_bound", "gap_certificate", "lemma57_constant",
                          "local_gap_certificate", "margin_slope_constant", "theorem45_constant"],
    "dynamics.teacher": ["Matching", "Misrouting", "PartitionTeacher", "Problem", "admissible_matching",
                         "binary_problem", "get_problem", "make_student", "misrouting_bound", "recovery",
                         "risk_decomposition", "voronoi3_problem"],
    "dynamics.shape": ["Profile", "SecondVariation", "hard_derivatives", "hard_risk", "profiled_hard_risk",
                       "shape_derivative", "shape_gradient", "shape_hessian", "shape_hessian_matrix"],
    "dynamics.params": ["Objective", "ParamSpace"],
    "dynamics.gamma": ["ArgminPath", "GammaResult", "argmin_path", "random_family", "uniform_gap"],
    "dynamics.landscape": ["CriticalPoint", "Landscape", "Transfer", "critical_points", "hessian", "minima_path",
                           "profiled_min_eigenvalue", "run_landscape", "transfer_modulus"],
    "dynamics.symmetry": ["TwoExpertGaussian", "alignment", "alignment_rate", "alignment_ratio", "linear_iteration",
                          "operator_spectrum", "reduced_operator", "reduced_operator_mc", "train_router"],
    "dynamics.train": ["TauSchedule", "TrainResult", "TrainingStopped", "train"],
    "inspect": ["InspectError", "RoutingMonitor", "find_routers", "inspect_model", "inspect_path", "train_digits_moe"],
    "inspect.io.callbacks": ["RoutingCallback"],
    "runs.sweep": ["load_spec", "read_results", "run_sweep"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("softhard")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0"
    elif name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'softhard' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
