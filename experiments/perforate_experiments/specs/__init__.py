"""Experiment specifications: one module per experiment, each exporting ``EXPERIMENT``."""
