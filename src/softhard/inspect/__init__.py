"""Inspect real MoE models layer by layer: router margins, boundary mass and soft-vs-hard sensitivity.

See ``docs/inspect.md``. Modules: :mod:`.layouts` (registry of router layouts, :func:`find_routers`),
:mod:`.hooks` (capture), :mod:`.stats` (streaming per-layer statistics), :mod:`.sensitivity`,
:mod:`.monitor` (training-time monitor), :mod:`.digits` (a small MoE trained on scikit-learn's digits),
:mod:`.loading` (safe loading, token batches), :mod:`.runner` (:func:`inspect_model`, the files),
:mod:`.tinylm` (``softhard:tiny-lm``, a language MoE trained and cached here) and :mod:`.hardening` (the model's
loss as routing is made harder, beside its first-order prediction).
transformers is imported only when a model directory is loaded.
"""

from .digits import DigitsMoE, TopKMoE, train_digits_moe
from .hardening import Hardening, harden, label_loss, lm_loss, write_hardening
from .hooks import RouterCapture, perturb_hidden
from .layouts import LAYOUTS, InspectError, RouterSite, find_routers
from .loading import Batch, load_model
from .monitor import RoutingMonitor
from .runner import Inspection, inspect_model, inspect_path, write_inspection
from .sensitivity import Sensitivity, relative_change
from .stats import LayerStats, StreamMean
from .tinylm import TinyLM, TinyLMConfig, tiny_lm

__all__ = ["DigitsMoE", "TopKMoE", "train_digits_moe", "RouterCapture", "perturb_hidden", "LAYOUTS", "InspectError",
           "RouterSite", "find_routers", "Batch", "load_model", "RoutingMonitor", "Inspection", "inspect_model",
           "inspect_path", "write_inspection", "Sensitivity", "relative_change", "LayerStats", "StreamMean",
           "Hardening", "harden", "label_loss", "lm_loss", "write_hardening", "TinyLM", "TinyLMConfig", "tiny_lm"]
