"""Keep PyTorch's fused Transformer inference path away from dendrites.

In eval mode, ``nn.TransformerEncoderLayer.forward`` may run one fused kernel
(``torch._transformer_encoder_layer_fwd``) that reads ``linear1.weight``,
``self_attn.in_proj_weight``, ... directly, and ``nn.TransformerEncoder`` may turn a padded batch
into a nested tensor for it: both would skip the dendrites. For every such module that contains
a dendrite wrapper, `disable_fused_transformer` turns that path off through the module's own
switches (`perforate.private_api.FUSED_TRANSFORMER_SWITCHES`), which PyTorch checks whatever
the grad mode and which TorchScript keeps:

- ``TransformerEncoderLayer.activation_relu_or_gelu = 0`` (the fast path requires relu / gelu;
  the standard path calls ``self.activation`` and does not read the flag);
- ``TransformerEncoder.use_nested_tensor = False``.

The standard path computes the same function (to float rounding), at PyTorch's non-fused speed.
One visible difference: the nested-tensor path returns zeros at padded positions, the standard
path returns values there (which the padding mask makes meaningless either way).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ...private_api import FUSED_TRANSFORMER_SWITCHES

logger = logging.getLogger(__name__)


def disable_fused_transformer(net: nn.Module, wrapper_types: tuple[type[nn.Module], ...]
                              ) -> dict[str, dict[str, Any]]:
    """Switch the fused path off in each Transformer module of `net` that contains a module of
    `wrapper_types`; return ``{module name: {attribute: original value}}`` for `restore`."""
    saved: dict[str, dict[str, Any]] = {}
    for name, module in net.named_modules():
        for cls, attr, off in FUSED_TRANSFORMER_SWITCHES:
            if not isinstance(module, cls) or not hasattr(module, attr):
                continue
            if not any(isinstance(m, wrapper_types) for m in module.modules()):
                continue
            saved.setdefault(name, {})[attr] = getattr(module, attr)
            setattr(module, attr, off)
    if saved:
        logger.info("PyTorch's fused Transformer inference path is off in %s (it would skip "
                    "the dendrites)", ", ".join(n or "the network" for n in saved))
    return saved


def restore(net: nn.Module, saved: dict[str, dict[str, Any]]) -> None:
    """Undo `disable_fused_transformer`."""
    for name, attrs in saved.items():
        module = net.get_submodule(name) if name else net
        for attr, value in attrs.items():
            setattr(module, attr, value)
