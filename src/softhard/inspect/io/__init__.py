"""Routing data in and out of other tools: scalar writers (TensorBoard, Weights & Biases, any ``add_scalar``)
and transformers' ``Trainer`` callback (:mod:`.writers`, :mod:`.metrics`, :mod:`.callbacks`).

``RoutingCallback`` is imported on first use (it needs transformers).
"""

from .metrics import flip_probability_bf16, load_summary
from .writers import MissingExtra, ScalarLog, WandbWriter, check_writers, moe_tag, tensorboard_writer

__all__ = ["RoutingCallback", "flip_probability_bf16", "load_summary", "MissingExtra", "ScalarLog", "WandbWriter",
           "check_writers", "moe_tag", "tensorboard_writer"]


def __getattr__(name: str):
    if name == "RoutingCallback":
        from .callbacks import RoutingCallback

        return RoutingCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
