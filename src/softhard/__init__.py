"""softhard: the soft-to-hard limit of mixture-of-experts routing (arXiv 2605.02124).

The public API is re-exported here; nothing else lives in this module.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .bounds import (MarginTail, cauchy_schwarz_bound, fit_margin_tail, gap_certificate, local_gap_certificate,
                     margin_tail, theorem45_constant)
from .coarea import (InterfaceDiagnostic, coarea_constant, coarea_sum, density_at_zero, interface_constant,
                     interface_diagnostic, kernel_bandwidth)
from .estimate import Estimate, draw, mean_estimate, monte_carlo
from .experts import ConstantExperts, LinearExperts, MLPExperts, as_experts
from .fast import ScoreSpace, score_space
from .gap import entropy_slope, gap_slope, gate_entropy_mean, risk_gap
from .gates import (binary_entropy, concentration_bound, gate_entropy, hard_gate, hard_winner, pairwise_separation,
                    softmax_gate, tail_sum, tolerance_width, top_two_margin, topk_margin)
from .gaussian import (boundary_mass_exact, flip_probability_exact, gap_slope_exact, interface_constant_exact,
                       orthant_probability, risk_exact, risk_gap_exact)
from .inspect import InspectError, RoutingMonitor, find_routers, inspect_model, inspect_path, train_digits_moe
from .landscape import (CriticalPoint, GammaResult, Landscape, ParamSpace, critical_points, hessian, minima_path,
                        random_family, run_landscape, uniform_gap)
from .laws import Empirical, Gaussian, GaussianMixture, Law, Uniform
from .mass import ambiguity_mass, boundary_mass
from .moe import FunctionTeacher, HardTeacher, MoE, Teacher, as_teacher
from .routers import LinearRouter, MLPRouter, as_router, score_difference, score_gradient
from .shape import Profile, hard_risk, profiled_hard_risk, shape_derivative, shape_gradient
from .sweep import load_spec, read_results, run_sweep
from .symmetry import (TwoExpertGaussian, alignment, alignment_rate, alignment_ratio, linear_iteration,
                       operator_spectrum, reduced_operator, reduced_operator_mc, train_router)
from .teacher import (PartitionTeacher, Problem, UnitLinearRouter, binary_problem, get_problem, make_student,
                      recovery, risk_decomposition, voronoi3_problem)
from .train import TauSchedule, TrainingStopped, TrainResult, train

try:
    __version__ = _version("softhard")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
