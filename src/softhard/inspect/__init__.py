"""Inspect real MoE models layer by layer: router margins, boundary mass and soft-vs-hard sensitivity.

See ``docs/inspect.md`` and ``docs/routing_rules.md``. Modules: :mod:`.rules` (routing rules as data, decision
margins), :mod:`.layouts` (finding routers, reading them, identifying their rules, re-routing at a temperature:
``site.temper(tau)``, ``site.densify()``), :mod:`.families` (the MoE families of transformers, tiny models),
:mod:`.hooks` (capture), :mod:`.stats` (streaming per-layer statistics), :mod:`.sensitivity`,
:mod:`.monitor` (training-time monitor), :mod:`.digits` (a small MoE trained on scikit-learn's digits),
:mod:`.loading` (safe loading, token batches), :mod:`.runner` (:func:`inspect_model`, the files),
:mod:`.tinylm` (``softhard:tiny-lm``, a language MoE trained and cached here), :mod:`.zoo` (the zoo of language MoEs
trained here — tiny-lm, DeepSeek-V3-style, Qwen3-style — and the held-out prose, code and legal text they are judged
on), :mod:`.hardening` (the model's loss as routing is made harder, beside its first-order prediction), :mod:`.price`
(a router change priced: flips predicted beside measured) and :mod:`.io` (other tools' router dumps;
``softhard compare-routing``; the
monitor's writers and transformers' ``Trainer`` callback).
transformers is imported only when a model directory is loaded.
"""

from .digits import DigitsMoE, TopKMoE, train_digits_moe
from .hardening import Hardening, harden, label_loss, lm_loss, write_hardening
from .hooks import RouterCapture, perturb_hidden
from .layouts import LAYOUTS, InspectError, RouterSite, Routed, find_routers, identify_rule
from .loading import Batch, load_model
from .io import compare_routing, read_dump
from .monitor import RoutingMonitor
from .price import predicted_flip_rate, price_flips
from .rules import RoutingRule, group_topk_margin, topk_gap
from .runner import Inspection, inspect_model, inspect_path, inspect_paths, write_inspection
from .sensitivity import Sensitivity, relative_change
from .stats import LayerStats, StreamMean
from .tinylm import TinyLM, TinyLMConfig, tiny_lm
from .zoo import heldout_text, list_zoo, zoo_lm, zoo_table

__all__ = ["DigitsMoE", "TopKMoE", "train_digits_moe", "RouterCapture", "perturb_hidden", "LAYOUTS", "InspectError",
           "RouterSite", "Routed", "find_routers", "identify_rule", "RoutingRule", "group_topk_margin", "topk_gap",
           "Batch", "load_model", "RoutingMonitor", "Inspection", "inspect_model", "inspect_path", "inspect_paths",
           "write_inspection", "Sensitivity", "relative_change", "LayerStats", "StreamMean", "Hardening", "harden",
           "label_loss", "lm_loss", "write_hardening", "TinyLM", "TinyLMConfig", "tiny_lm",
           "heldout_text", "list_zoo", "zoo_lm", "zoo_table", "predicted_flip_rate", "price_flips", "compare_routing",
           "read_dump"]
