"""One way to rebuild a `PerforatedModel` from saved state, used by `perforate.load`
(a ``save_pretrained`` directory), `perforate.resume` (a tracker checkpoint) and
``perforate export`` (either)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..config import PerforationConfig
from ..engine.layers import WrapperRegistry
from ..engine.model import PerforatedModel, perforate
from ..errors import ConfigError, LoadError, TargetError
from .storage import check_structure

#: Weights of the dendrites, reported after the network's own (those explain a mismatch better).
_DENDRITE_KEYS = ("output_weight", "dendrite_weight", "dendrite_bias", "cascade_weight",
                  "dendrite_alive", "dendrite_mask", "dendrite_projection")


def _config(config: PerforationConfig | Mapping[str, Any]) -> PerforationConfig:
    if isinstance(config, PerforationConfig):
        return config
    try:
        return PerforationConfig.from_dict(dict(config))
    except (ConfigError, ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"the saved config is not valid: {exc}") from exc


def check_weights(expected: Mapping[str, Tensor], saved: Mapping[str, Tensor]) -> None:
    """Raise `LoadError` naming the first key missing, extra or of another shape."""
    for key, value in sorted(expected.items(), key=lambda kv: kv[0].endswith(_DENDRITE_KEYS)):
        if key not in saved:
            raise LoadError(f"saved weights lack {key!r}: the network differs from the saved one")
        if tuple(saved[key].shape) != tuple(value.shape):
            raise LoadError(f"{key!r}: saved shape {tuple(saved[key].shape)}, this network has "
                            f"{tuple(value.shape)}")
    for key in saved:
        if key not in expected:
            raise LoadError(f"saved weights hold {key!r}, which this network does not have")


def with_alive(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`weights` with ``dendrite_alive`` (all 1) added where a layer's is missing: weights
    saved before dead dendrites were masked load as they were."""
    out = dict(weights)
    for key, bias in weights.items():
        if key.endswith("dendrite_bias"):
            out.setdefault(key[: -len("dendrite_bias")] + "dendrite_alive", torch.ones_like(bias))
    return out


def rebuild(net: nn.Module, config: PerforationConfig | Mapping[str, Any], *,
            structure: Mapping[str, int] | None = None,
            weights: Mapping[str, Tensor] | None = None, registry: WrapperRegistry | None = None,
            device: str | torch.device | None = None) -> PerforatedModel:
    """Perforate a fresh `net` with the saved `config` (a config or its dict); with
    `structure` ({layer: dendrite sets}) allocate the dendrite sets, with `weights` (keys of
    ``model.net.state_dict()``, no candidate pools) load them exactly; move to `device`.

    Raises `LoadError` naming the first layer or key where `net` differs from the saved model.
    """
    try:
        model = perforate(net, _config(config), registry=registry)
    except TargetError as exc:
        raise LoadError(f"the network does not fit the saved model: {exc}") from exc
    if structure is not None:
        check_structure(model, dict(structure))
        model.resize_dendrites(dict(structure))
    if weights is not None:
        weights = with_alive(weights)
        check_weights(model.net.state_dict(), weights)
        model.net.load_state_dict(dict(weights), strict=True)
    if device is not None:
        model.to(device)
    return model
