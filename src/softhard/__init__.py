"""softhard: the soft-to-hard limit of mixture-of-experts routing (arXiv 2605.02124).

The public API is re-exported here; nothing else lives in this module.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .estimate import Estimate, draw, mean_estimate, monte_carlo
from .experts import ConstantExperts, LinearExperts, MLPExperts, as_experts
from .gates import (binary_entropy, concentration_bound, gate_entropy, hard_gate, hard_winner, pairwise_separation,
                    softmax_gate, tail_sum, tolerance_width, top_two_margin, topk_margin)
from .laws import Empirical, Gaussian, GaussianMixture, Law, Uniform
from .mass import ambiguity_mass, boundary_mass
from .moe import FunctionTeacher, HardTeacher, MoE, Teacher, as_teacher
from .routers import LinearRouter, MLPRouter, as_router, score_difference, score_gradient

try:
    __version__ = _version("softhard")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
