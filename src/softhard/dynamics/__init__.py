"""Dynamics (paper §4.4–§6): teachers, the shape derivative, landscapes, symmetry breaking, training."""
