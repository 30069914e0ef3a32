"""Estimators: the one streaming reducer, the method registry, score-space, conditional and line sampling,
kernel densities and tail fits."""
