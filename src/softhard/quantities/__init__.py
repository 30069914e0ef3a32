"""The quantities users call, each a thin public function over :mod:`softhard.closed` and
:mod:`softhard.estimators`: boundary mass, coarea constants, risk gap and G₁, bounds."""
