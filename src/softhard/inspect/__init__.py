"""Inspect real MoE models layer by layer: router margins, boundary mass and soft-vs-hard sensitivity.

See ``docs/inspect.md`` and ``docs/routing_rules.md``. Modules: :mod:`.rules` (routing rules as data, decision
margins), :mod:`.layouts` (finding routers, reading them, identifying their rules, re-routing at a temperature:
``site.temper(tau)``, ``site.densify()``), :mod:`.families` (the MoE families of transformers, tiny models),
:mod:`.hooks` (capture), :mod:`.stats` (streaming per-layer statistics), :mod:`.sensitivity`,
:mod:`.monitor` (training-time monitor), :mod:`.digits` (a small MoE trained on scikit-learn's digits),
:mod:`.loading` (safe loading, token batches) and :mod:`.runner` (:func:`inspect_model`, the files).
transformers is imported only when a model directory is loaded.
"""

from .digits import DigitsMoE, TopKMoE, train_digits_moe
from .hooks import RouterCapture, perturb_hidden
from .layouts import LAYOUTS, InspectError, RouterSite, Routed, find_routers, identify_rule
from .loading import Batch, load_model
from .monitor import RoutingMonitor
from .rules import RoutingRule, group_topk_margin, topk_gap
from .runner import Inspection, inspect_model, inspect_path, inspect_paths, write_inspection
from .sensitivity import Sensitivity, relative_change
from .stats import LayerStats, StreamMean

__all__ = ["DigitsMoE", "TopKMoE", "train_digits_moe", "RouterCapture", "perturb_hidden", "LAYOUTS", "InspectError",
           "RouterSite", "Routed", "find_routers", "identify_rule", "RoutingRule", "group_topk_margin", "topk_gap",
           "Batch", "load_model", "RoutingMonitor", "Inspection", "inspect_model", "inspect_path", "inspect_paths",
           "write_inspection", "Sensitivity", "relative_change", "LayerStats", "StreamMean"]
