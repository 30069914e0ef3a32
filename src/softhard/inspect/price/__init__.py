"""Pricing a router change before making it: predicted beside measured (issue 20).

:mod:`.flips` — the share of tokens whose selected experts change under bf16/fp16/fp8 router compute, int8/int4
weight-only quantization (of the router or the whole model, through optimum-quanto) and Gaussian noise, predicted
from the margins and an error model of the scores (``docs/flips.md``).

Hardening and cutting top-k (``docs/hardening.md``): :mod:`.paths` — the tempering paths of every routing rule;
:mod:`.curve` — margin bins, contrast profiles, cross-fitting folds; :mod:`.topk` — the loss of k → k − 1 → … → 1
per layer and a per-layer k for an expert-FLOP budget; :mod:`.families` — every family of the pinned
transformers priced on its tiny model.
"""

from .flips import PRICED, FlipPrice, predicted_flip_rate, price_flips, write_flips
from .paths import PATHS, choose_path, limit_margin, power_weights, weight_margin

__all__ = ["PRICED", "FlipPrice", "predicted_flip_rate", "price_flips", "write_flips",
           "PATHS", "choose_path", "limit_margin", "power_weights", "weight_margin"]
