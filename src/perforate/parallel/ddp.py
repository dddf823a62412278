"""DistributedDataParallel around a model whose parameters change: rewrap it after each
restructure with the old wrapper's settings, its unused parameters left out, and the old
wrapper's hooks detached; FSDP refused."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import private_api

Wrap = Callable[[nn.Module], nn.Module]


def is_ddp(model: nn.Module) -> bool:
    return isinstance(model, DistributedDataParallel)


def check_not_sharded(model: nn.Module) -> None:
    """FSDP shards parameters, so dendrite layers cannot resize them: a clear error."""
    names = {cls.__name__ for cls in type(model).__mro__}
    if names & {"FullyShardedDataParallel", "FSDPModule"}:
        raise TypeError("perforate does not support FSDP (it shards the parameters that an "
                        "install resizes); use DistributedDataParallel, see "
                        "docs/distributed.md")


def wrap_like(ddp: DistributedDataParallel) -> Wrap:
    """A `Wrap` that builds a new DDP with the settings of `ddp` (devices, buffers, group)."""
    kwargs = {"device_ids": ddp.device_ids, "output_device": ddp.output_device,
              "process_group": ddp.process_group,
              "find_unused_parameters": ddp.find_unused_parameters,
              "gradient_as_bucket_view": ddp.gradient_as_bucket_view,
              "bucket_cap_mb": ddp.bucket_bytes_cap / (1024 * 1024)}
    if not ddp.broadcast_buffers:
        kwargs["broadcast_buffers"] = False

    def wrap(module: nn.Module) -> nn.Module:
        return DistributedDataParallel(module, **kwargs)

    return wrap


def unused_parameters(module: nn.Module) -> list[str]:
    """Names of the parameters no forward uses, so no backward gives them a gradient: empty
    ones (dendrite parameters before the first set) and the cascade weights of a layer with
    one set (``C[j, i]`` is used for ``i < j`` only)."""
    names = [n for n, p in module.named_parameters() if p.numel() == 0]
    for name, m in module.named_modules():
        cascade = getattr(m, "cascade_weight", None)
        if isinstance(cascade, nn.Parameter) and 0 < cascade.shape[0] < 2:
            names.append(f"{name}.cascade_weight" if name else "cascade_weight")
    return names


def rewrap(module: nn.Module, wrap: Wrap) -> nn.Module:
    """``wrap(module)`` with the `unused_parameters` left out of DDP, so that no rank waits
    for their gradients ("Expected to have finished reduction") and no
    ``find_unused_parameters`` (an extra graph traversal per step) is needed."""
    private_api.ddp_ignore(module, unused_parameters(module))
    return wrap(module)


def retire(wrapper: nn.Module) -> None:
    """Detach an old DDP wrapper's gradient hooks from the parameters it shares with the
    new one (a reference kept elsewhere would otherwise still reduce into it)."""
    if is_ddp(wrapper):
        private_api.ddp_remove_hooks(wrapper)  # type: ignore[arg-type]
