"""The experiments `perforate experiment NAME` can run."""

from __future__ import annotations

from .base import Experiment


def experiments() -> dict[str, Experiment]:
    """{name: Experiment}, imported lazily (each spec pulls its own data code)."""
    from .specs import ablation, fashion_mnist, frontier, frontier_1d

    found = [fashion_mnist.EXPERIMENT, ablation.EXPERIMENT, frontier.EXPERIMENT,
             frontier_1d.EXPERIMENT]
    for module in ("tox21", "physionet", "timing", "lm"):
        try:
            spec = __import__(f"{__package__}.specs.{module}", fromlist=["EXPERIMENT"])
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.specs.{module}":
                raise
            continue
        found.append(spec.EXPERIMENT)
    return {e.name: e for e in found}


def get_experiment(name: str) -> Experiment:
    known = experiments()
    if name not in known:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(known)}")
    return known[name]
