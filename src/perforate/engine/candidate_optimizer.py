"""The candidates' optimizer: a `CascadeCorrelation.optimizer` name to its ``torch.optim``
class, its keywords checked when a config is made, and the fastest step PyTorch has for the
candidates' parameters."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .. import private_api
from ..errors import ConfigError


def candidate_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` class of a `CascadeCorrelation.optimizer` name."""
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
            "rmsprop": torch.optim.RMSprop}[name]


def check_optimizer_kwargs(name: str, lr: float, kwargs: dict[str, Any]) -> None:
    """Build the candidate optimizer on a dummy parameter, so that a bad keyword fails when
    the config is made, not at the first growth. ``fused=True`` is left out of the trial: it
    depends on the device of the parameters (`fast_step`)."""
    cls = candidate_optimizer_class(name)
    taken = [k for k in kwargs if k in ("params", "lr")]
    if taken:
        raise ConfigError(f"cascade.optimizer_kwargs: {taken[0]!r} is set by the library "
                          "(the candidates' parameters; cascade.lr)")
    accepted = inspect.signature(cls).parameters
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ConfigError(f"cascade.optimizer_kwargs: {cls.__name__} takes no "
                          f"{', '.join(map(repr, unknown))}")
    if kwargs.get("fused") and kwargs.get("foreach"):
        raise ConfigError("cascade.optimizer_kwargs: 'fused' and 'foreach' cannot both be "
                          "True")
    trial = {k: v for k, v in kwargs.items() if not (k == "fused" and v)}
    try:
        cls([torch.zeros(1, requires_grad=True)], lr=lr, **trial)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cascade.optimizer_kwargs {dict(kwargs)!r} are not valid for "
                          f"{cls.__name__}: {exc}") from exc


def make_optimizer(name: str, lr: float, kwargs: dict[str, Any],
                   params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The candidate optimizer `name` over `params`, with the fastest step (`fast_step`) unless
    `kwargs` choose one."""
    cls = candidate_optimizer_class(name)
    kwargs = dict(kwargs)
    if not {"foreach", "fused"} & kwargs.keys():
        kwargs.update(fast_step(cls, params))
    return cls(params, lr=lr, **kwargs)


def fast_step(cls: type[torch.optim.Optimizer], params: list[nn.Parameter]) -> dict[str, bool]:
    """The fastest step PyTorch has for `params`, as optimizer kwargs: its fused kernel where
    `cls` has one for their device (Adam, AdamW and SGD; on a CPU since torch 2.4), else, on
    a CPU, its multi-tensor step (bitwise the per-tensor loop PyTorch defaults to there).

    A candidate optimizer steps a few large tensors (K copies of each layer's weights): on the
    MNIST CNN's 4.8 M candidate parameters an Adam step takes 29.0 ms per tensor, 13.0 ms
    multi-tensor and 4.4 ms fused on one CPU thread (``bench/optimizer_step.py``). The fused
    step rounds differently from the loop, within float32 rounding."""
    supported = private_api.fused_kernel_devices()
    devices = {p.device.type for p in params}
    if ("fused" in inspect.signature(cls).parameters and devices <= set(supported)
            and all(p.is_floating_point() for p in params)):
        return {"fused": True}
    return {"foreach": True} if devices == {"cpu"} else {}
