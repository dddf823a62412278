"""Registry of dendrite activations g: a name maps to a factory of a scriptable nn.Module."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softsign": nn.Softsign,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """Instantiate the activation registered as `name` (see `ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown dendrite activation {name!r}; "
                         f"known: {', '.join(sorted(ACTIVATIONS))}") from None


def _identity_(t: Tensor) -> Tensor:
    return t


#: In-place versions: for perforated dendrite outputs (no gradient) and candidate activations
#: (their backward reads the result only).
INPLACE: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "relu": torch.relu_,
    "identity": _identity_,
}
