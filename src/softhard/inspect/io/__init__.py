"""Routing data where people already have it (issue 21): readers of other tools' router dumps (:mod:`.dumps`),
the comparison of two runs over the same tokens (:mod:`.compare`, ``softhard compare-routing``), and the
training-time writers (:mod:`.writers`: TensorBoard, Weights & Biases, any ``add_scalar``), per-layer metrics
(:mod:`.metrics`) and transformers' ``Trainer`` callback (:mod:`.callbacks`, imported on first use of
``RoutingCallback``: it needs transformers)."""

from .compare import compare_dumps, compare_routing
from .dumps import RouterDump, read_dump
from .metrics import load_summary
from .writers import MissingExtra, ScalarLog, WandbWriter, check_writers, moe_tag, tensorboard_writer

__all__ = ["compare_dumps", "compare_routing", "RouterDump", "read_dump", "RoutingCallback", "load_summary",
           "MissingExtra", "ScalarLog", "WandbWriter", "check_writers", "moe_tag", "tensorboard_writer"]


def __getattr__(name: str):
    if name == "RoutingCallback":
        from .callbacks import RoutingCallback

        return RoutingCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
