"""Building blocks for reproducing the Perforated Backpropagation paper's experiments.

Importing this package (or `perforate_experiments.data` / `perforate_experiments.models`) needs
only torch and numpy. Loaders that need RDKit, scikit-learn or SciPy import them when called and
raise an ImportError naming the extra: ``pip install 'perforate[experiments]'``.
"""

from __future__ import annotations

EXTRA_HINT = "pip install 'perforate[experiments]'"


def require(module: str, purpose: str) -> object:
    """Import `module` lazily, or raise an ImportError that names the `experiments` extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{purpose} needs the optional dependency {module.split('.')[0]!r}; "
            f"install it with: {EXTRA_HINT}"
        ) from exc


__all__ = ["EXTRA_HINT", "require"]
