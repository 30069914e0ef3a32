"""The quantities users call, each a thin public function over :mod:`softhard.closed` and
:mod:`softhard.estimators`: boundary mass, coarea constants, risk gap and G₁, bounds.

Importing this package registers every quantity's methods; :data:`QUANTITIES` maps a quantity's name to its
:class:`~softhard.estimators.registry.Quantity` (methods, applicability rules, cost models).
"""

from ..estimators.registry import QUANTITIES
from . import bounds, coarea, gap, mass  # noqa: F401 - each registers its quantities

__all__ = ["QUANTITIES"]
