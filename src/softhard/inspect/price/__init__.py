"""Prices of a router change, predicted beside measured: hardening (tempering paths for every rule) and cutting
top-k (``docs/hardening.md``). :mod:`.paths`: the tempering paths; :mod:`.curve`: margin bins, contrast profiles,
cross-fitting folds; :mod:`.topk`: the loss of k → k − 1 → … → 1 per layer and a per-layer k for an expert-FLOP
budget."""

from .paths import PATHS, choose_path, limit_margin, power_weights, weight_margin

__all__ = ["PATHS", "choose_path", "limit_margin", "power_weights", "weight_margin"]
