"""Every private API of PyTorch, Lightning and transformers that perforate touches, in one place.

No other module of the library reads or writes a private (``_name``) attribute of those
libraries: it calls a function (or names a class alias) of this module instead.
``tests/test_private_api.py`` checks, for every entry of `APIS`, that the private name is in
the installed library, and that no other module touches one; so a library upgrade that drops
or renames one fails there first, naming it. Each entry says the private name, the first
release known to have it, and what breaks without it.

The Lightning and transformers entries import their library inside the function (they are
optional extras).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Variable
from torch.nn.parallel import DistributedDataParallel
from torch.utils import _foreach_utils

_T = TypeVar("_T")


@dataclass(frozen=True)
class PrivateApi:
    """One private name perforate uses (an entry of `APIS`)."""

    name: str
    """The private name, as its library spells it (``torch._C._current_graph_task_id``)."""
    library: str
    """``torch``, ``lightning`` or ``transformers`` (the import that must succeed)."""
    since: tuple[int, ...]
    """The first release of `library` known to have it."""
    present: Callable[[], bool]
    """Whether the installed `library` has it (imports the library)."""
    used_as: str
    """The name of this module that the rest of the library uses for it."""


APIS: dict[str, PrivateApi] = {}
"""``{name: PrivateApi}``: every private name of this module."""


def _private(name: str, library: str, since: tuple[int, ...], present: Callable[[], bool],
             used_as: str | None = None) -> Callable[[_T], _T]:
    """Register `name` in `APIS` (a decorator of the function that wraps it; `used_as` names
    a constant instead)."""

    def register(obj: _T) -> _T:
        APIS[name] = PrivateApi(name, library, since, present,
                                used_as or obj.__name__)  # type: ignore[attr-defined]
        return obj

    return register


def _has(module: str, path: str) -> Callable[[], bool]:
    """A `PrivateApi.present` check: ``module`` imports and has the dotted attribute `path`."""

    def present() -> bool:
        obj: Any = import_module(module)
        for part in path.split("."):
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True

    return present


# ------------------------------------------------------------------------------- autograd
@_private("torch._C._current_graph_task_id", "torch", (2, 0),
          _has("torch", "_C._current_graph_task_id"))
def current_graph_task_id() -> int:
    """``torch._C._current_graph_task_id()`` (torch 2.0): the running backward's id, -1
    outside one; without it the distributed dendrite phase cannot sum once per backward."""
    return torch._C._current_graph_task_id()


@_private("torch.autograd.Variable._execution_engine.queue_callback", "torch", (1, 0),
          _has("torch.autograd", "Variable._execution_engine.queue_callback"))
def queue_engine_callback(fn: Callable[[], None]) -> None:
    """``Variable._execution_engine.queue_callback`` (torch 1.0): run `fn` at the end of the
    running backward; without it the distributed candidates' sums have no place to run."""
    Variable._execution_engine.queue_callback(fn)


@_private("Tensor._base", "torch", (1, 0), lambda: torch.zeros(2)[:1]._base is not None)
def is_view(t: Tensor) -> bool:
    """``Tensor._base`` (torch 1.0): whether `t` views another tensor's storage; read instead
    of ``Tensor._is_view()``, which breaks a ``torch.compile`` graph (candidates' buffers)."""
    return t._base is not None


@_private("torch._dynamo.is_compiling", "torch", (2, 0),
          _has("torch._dynamo", "is_compiling"))
def is_compiling() -> bool:
    """``torch.compiler.is_compiling()`` (public, torch 2.3), else ``torch._dynamo.
    is_compiling()`` (torch 2.0): whether TorchDynamo traces; without it a compiled dendrite
    forward would take the eager term's graph break."""
    public = getattr(torch.compiler, "is_compiling", None)
    if public is not None:
        return bool(public())
    from torch._dynamo import is_compiling as private

    return bool(private())


@_private("torch._C._are_functorch_transforms_active", "torch", (2, 0),
          _has("torch", "_C._are_functorch_transforms_active"))
def functorch_transforms_active() -> bool:
    """``torch._C._are_functorch_transforms_active()`` (torch 2.0): whether a ``torch.func``
    transform runs (True where torch cannot tell: the form that works everywhere)."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if active is None else bool(active())


# ------------------------------------------------------------------------------- nn modules
NormBase = nn.modules.batchnorm._NormBase
"""``nn.modules.batchnorm._NormBase`` (torch 1.6): the batch/instance norms' base, whose
running statistics a dendrite epoch freezes; without it those norms would drift."""
_private("torch.nn.modules.batchnorm._NormBase", "torch", (1, 6),
         _has("torch.nn.modules.batchnorm", "_NormBase"), "NormBase")(NormBase)

ConvNd = nn.modules.conv._ConvNd
"""``nn.modules.conv._ConvNd`` (torch 1.0): the convolutions' base (a conv geometry's
layer type)."""
_private("torch.nn.modules.conv._ConvNd", "torch", (1, 0),
         _has("torch.nn.modules.conv", "_ConvNd"), "ConvNd")(ConvNd)


@_private("torch.nn.Conv*d._conv_forward", "torch", (1, 8),
          lambda: all(hasattr(c, "_conv_forward") for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d)))
def conv_forward(conv: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``ConvNd._conv_forward(x, weight, bias)`` (torch 1.8): `conv`'s convolution (padding
    mode included) with other weights; without it the dendrite sets' stacked conv fails."""
    return conv._conv_forward(x, weight, bias)


MHA_PACKED = "_qkv_same_embed_dim"
"""``nn.MultiheadAttention._qkv_same_embed_dim`` (torch 1.0): its projections are packed in
``in_proj_weight``; the attention wrapper mirrors it (``nn.TransformerEncoderLayer`` reads it)."""
_private("torch.nn.MultiheadAttention._qkv_same_embed_dim", "torch", (1, 0),
         lambda: hasattr(nn.MultiheadAttention(4, 1), MHA_PACKED), "MHA_PACKED")(MHA_PACKED)


def mha_packed(mha: nn.MultiheadAttention) -> bool:
    """`MHA_PACKED` of `mha`: whether its q/k/v weights are rows of ``in_proj_weight``."""
    return bool(getattr(mha, MHA_PACKED))


@_private("torch.nn.functional._canonical_mask", "torch", (2, 0),
          _has("torch.nn.functional", "_canonical_mask"))
def canonical_mask(mask: Tensor | None, mask_name: str, other_type: torch.dtype | None,
                   other_name: str, target_type: torch.dtype, check_other: bool = True
                   ) -> Tensor | None:
    """``F._canonical_mask`` (torch 2.0): `nn.MultiheadAttention`'s mask conversion (bool to
    float -inf); without it the attention wrapper cannot take masks the way the module does.
    (TorchScript compiles it: the exported attention calls it.)"""
    return F._canonical_mask(mask=mask, mask_name=mask_name, other_type=other_type,
                             other_name=other_name, target_type=target_type,
                             check_other=check_other)


@_private("torch.nn.functional._none_or_dtype", "torch", (2, 0),
          _has("torch.nn.functional", "_none_or_dtype"))
def none_or_dtype(t: Tensor | None) -> torch.dtype | None:
    """``F._none_or_dtype`` (torch 2.0): the mask dtype `canonical_mask` compares with."""
    return F._none_or_dtype(t)


FUSED_TRANSFORMER_SWITCHES: tuple[tuple[type[nn.Module], str, Any], ...] = (
    (nn.TransformerEncoderLayer, "activation_relu_or_gelu", 0),
    (nn.TransformerEncoder, "use_nested_tensor", False),
)
"""``(module type, attribute, value that turns the fused path off)``: the internal switches
of ``torch._transformer_encoder_layer_fwd`` (torch 1.12) and of the nested-tensor path (torch
1.13), public names but not documented API; without them the fused inference path of a
Transformer would skip its dendrites (`perforate.engine.layers.fastpath`)."""
_private("TransformerEncoderLayer.activation_relu_or_gelu / TransformerEncoder."
         "use_nested_tensor", "torch", (1, 13),
         lambda: hasattr(nn.TransformerEncoderLayer(4, 1, 8), "activation_relu_or_gelu")
         and hasattr(nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 1, 8), 1,
                                           enable_nested_tensor=False), "use_nested_tensor"),
         "FUSED_TRANSFORMER_SWITCHES")(FUSED_TRANSFORMER_SWITCHES)


# ------------------------------------------------------------------------------- optimizers
@_private("torch.utils._foreach_utils._get_fused_kernels_supported_devices", "torch", (2, 2),
          _has("torch.utils._foreach_utils", "_get_fused_kernels_supported_devices"))
def fused_kernel_devices() -> list[str]:
    """``_foreach_utils._get_fused_kernels_supported_devices()`` (torch 2.2): the device types
    with fused optimizer kernels; without it (older torch) none: a multi-tensor step instead."""
    supported = getattr(_foreach_utils, "_get_fused_kernels_supported_devices", None)
    return [] if supported is None else list(supported())


# ------------------------------------------------------------------------------- distributed
@_private("torch.distributed.distributed_c10d._get_default_store", "torch", (1, 8),
          _has("torch.distributed.distributed_c10d", "_get_default_store"))
def default_store() -> Any:
    """``distributed_c10d._get_default_store()`` (torch 1.8): the default group's key-value
    store; without it the ranks' end-of-epoch meeting (`perforate.parallel.epoch_meeting`)
    cannot run."""
    return dist.distributed_c10d._get_default_store()


@_private("DistributedDataParallel._set_params_and_buffers_to_ignore_for_model", "torch",
          (1, 8), _has("torch.nn.parallel", "DistributedDataParallel."
                       "_set_params_and_buffers_to_ignore_for_model"))
def ddp_ignore(module: nn.Module, names: Sequence[str]) -> None:
    """``DDP._set_params_and_buffers_to_ignore_for_model`` (torch 1.8): leave `names` out of
    the next DDP of `module`; without it ranks wait for gradients that never come."""
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(names))


@_private("DistributedDataParallel._remove_autograd_hooks", "torch", (2, 0),
          _has("torch.nn.parallel", "DistributedDataParallel._remove_autograd_hooks"))
def ddp_remove_hooks(ddp: DistributedDataParallel) -> None:
    """``DDP._remove_autograd_hooks()`` (torch 2.0): detach a replaced DDP's gradient hooks;
    without it an old wrapper still reduces the parameters it shares with the new one."""
    ddp._remove_autograd_hooks()  # type: ignore[operator]


# ------------------------------------------------------------------------------- Lightning
@_private("lightning DDPStrategy._setup_model", "lightning", (2, 0),
          _has("lightning.pytorch.strategies", "DDPStrategy._setup_model"))
def lightning_setup_model(strategy: Any) -> Callable[[nn.Module], nn.Module]:
    """``DDPStrategy._setup_model`` (Lightning 2.0): wraps a module in DDP with the strategy's
    settings; without it a restructure cannot rebuild Lightning's DDP wrapper."""
    return strategy._setup_model


@_private("lightning DDPStrategy._register_ddp_hooks", "lightning", (2, 0),
          _has("lightning.pytorch.strategies", "DDPStrategy._register_ddp_hooks"))
def lightning_register_ddp_hooks(strategy: Any) -> None:
    """``DDPStrategy._register_ddp_hooks()`` (Lightning 2.0): the strategy's communication
    hooks on its new DDP wrapper; without it a rebuilt wrapper loses them."""
    strategy._register_ddp_hooks()


# ------------------------------------------------------------------------------- transformers
@_private("transformers Trainer._load_from_checkpoint", "transformers", (4, 41),
          _has("transformers", "Trainer._load_from_checkpoint"))
def replace_trainer_checkpoint_loader(trainer: Any, load: Callable[..., None]) -> bool:
    """Replace ``Trainer._load_from_checkpoint`` (transformers 4.41, the extra's floor) on
    `trainer` by ``load(resume_from_checkpoint, model=None)``; False where the Trainer has
    none. Without it ``train(resume_from_checkpoint=...)`` loads the weights into a model
    without the checkpoint's dendrites."""
    if not hasattr(trainer, "_load_from_checkpoint"):
        return False
    trainer._load_from_checkpoint = load
    return True
