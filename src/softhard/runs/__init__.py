"""Orchestration: reproduce the paper's diagnostics; sweeps over any diagnostic."""
