"""Routing data where people already have it (issue 21): readers of other tools' router dumps (:mod:`.dumps`) and
the comparison of two runs over the same tokens (:mod:`.compare`, ``softhard compare-routing``)."""

from .compare import compare_dumps, compare_routing
from .dumps import RouterDump, read_dump

__all__ = ["compare_dumps", "compare_routing", "RouterDump", "read_dump"]
