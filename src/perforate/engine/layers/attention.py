"""Dendrites for `nn.MultiheadAttention`: its query, key, value and output projections.

Which neurons get dendrites: each of the ``3 * embed_dim`` in-projection outputs (``q_proj``,
``k_proj``, ``v_proj``: ``embed_dim`` neurons each) and each of the ``embed_dim`` out-projection
outputs (``out_proj``). A dendrite of a query neuron sees that position's query vector (of a key
neuron the key vector, ``kdim`` wide; of a value neuron the value vector, ``vdim`` wide); a
dendrite of an output neuron sees that position's concatenated head outputs. ``bias_k`` /
``bias_v`` (``add_bias_kv``) and ``add_zero_attn`` are appended after the projections, as
PyTorch does, and get no dendrites.

Each projection is a `Linear` dendrite layer over a parameter-free view of the attention's own
weights (``in_proj_weight`` rows, ``q/k/v_proj_weight``, ``out_proj``), so the attention keeps
its parameters, state-dict keys and ``_reset_parameters``. While no projection has dendrites or
candidates the wrapper calls the original module (exactly PyTorch's result, fast path
included); otherwise it runs the projections itself and then PyTorch's attention steps
(`attend`, which mirrors ``F.multi_head_attention_forward`` after its in-projection).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import private_api
from ...config import PerforationConfig
from .base import DendriteLayer
from .composite import CompositeLayer
from .linear import Linear

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


class AttentionProjection(nn.Module):
    """A Linear-like view of one projection of a `nn.MultiheadAttention` (no parameters of its
    own: ``weight`` and ``bias`` are read from the attention at each use)."""

    def __init__(self, attention: nn.MultiheadAttention, which: str) -> None:
        super().__init__()
        object.__setattr__(self, "_attention", attention)  # not a submodule: no duplicate keys
        self.which = which
        self.index = _PROJECTIONS.index(which)
        e = attention.embed_dim
        self.in_features = (e, attention.kdim, attention.vdim, e)[self.index]
        self.out_features = e

    @property
    def weight(self) -> Tensor:
        mha, i, e = self._attention, self.index, self.out_features
        if i == 3:
            return mha.out_proj.weight
        if private_api.mha_packed(mha):
            return mha.in_proj_weight[i * e:(i + 1) * e]
        return (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)[i]

    @property
    def bias(self) -> Tensor | None:
        mha, i, e = self._attention, self.index, self.out_features
        if i == 3:
            return mha.out_proj.bias
        return None if mha.in_proj_bias is None else mha.in_proj_bias[i * e:(i + 1) * e]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def as_linear(self) -> nn.Linear:
        """A plain `nn.Linear` holding a copy of this projection's weights."""
        w, b = self.weight, self.bias
        out = nn.Linear(self.in_features, self.out_features, bias=b is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(w)
            if b is not None:
                out.bias.copy_(b)
        return out

    def extra_repr(self) -> str:
        return f"{self.which} of the attention, in_features={self.in_features}, " \
               f"out_features={self.out_features}"


def attend(q: Tensor, k: Tensor, v: Tensor, num_heads: int, bias_k: Tensor | None,
           bias_v: Tensor | None, add_zero_attn: bool, dropout_p: float,
           key_padding_mask: Tensor | None, attn_mask: Tensor | None, need_weights: bool,
           average_attn_weights: bool, is_causal: bool) -> tuple[Tensor, Tensor | None]:
    """Multi-head attention of projected ``q [L, B, E]``, ``k, v [S, B, E]`` with float masks:
    ``F.multi_head_attention_forward``'s steps between its in- and out-projection. Returns the
    head outputs ``[L, B, E]`` (before the out-projection) and the attention weights."""
    tgt_len, bsz, embed_dim = q.shape
    head_dim = embed_dim // num_heads
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # SDPA takes the causal hint itself
    elif key_padding_mask is not None:
        is_causal = False  # the merged mask is no longer causal
    if attn_mask is not None:
        src_len = k.shape[0]
        shapes = {2: [tgt_len, src_len], 3: [bsz * num_heads, tgt_len, src_len]}
        if attn_mask.dim() not in shapes:
            raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if list(attn_mask.shape) != shapes[attn_mask.dim()]:
            raise RuntimeError(f"The shape of the {attn_mask.dim()}D attn_mask is "
                               f"{list(attn_mask.shape)}, but should be {shapes[attn_mask.dim()]}.")
        if attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)
    if bias_k is not None and bias_v is not None:
        k = torch.cat([k, bias_k.repeat(1, bsz, 1)])
        v = torch.cat([v, bias_v.repeat(1, bsz, 1)])
        if attn_mask is not None:
            attn_mask = F.pad(attn_mask, (0, 1))
        if key_padding_mask is not None:
            key_padding_mask = F.pad(key_padding_mask, (0, 1))
    q = q.reshape(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.reshape(k.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    v = v.reshape(v.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    if add_zero_attn:
        zeros = torch.zeros((bsz * num_heads, 1, head_dim), dtype=k.dtype, device=k.device)
        k = torch.cat([k, zeros], dim=1)
        v = torch.cat([v, zeros], dim=1)
        if attn_mask is not None:
            attn_mask = F.pad(attn_mask, (0, 1))
        if key_padding_mask is not None:
            key_padding_mask = F.pad(key_padding_mask, (0, 1))
    src_len = k.size(1)
    if key_padding_mask is not None:
        key_padding_mask = (key_padding_mask.view(bsz, 1, 1, src_len)
                            .expand(-1, num_heads, -1, -1).reshape(bsz * num_heads, 1, src_len))
        attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
    if need_weights:
        q_scaled = q * math.sqrt(1.0 / float(head_dim))
        if attn_mask is not None:
            weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
        else:
            weights = torch.bmm(q_scaled, k.transpose(-2, -1))
        weights = F.softmax(weights, dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len, bsz, embed_dim)
        weights = weights.view(bsz, num_heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights
    if attn_mask is not None:
        if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(0)
        else:
            attn_mask = attn_mask.view(bsz, num_heads, -1, src_len)
    out = F.scaled_dot_product_attention(q.view(bsz, num_heads, tgt_len, head_dim),
                                         k.view(bsz, num_heads, src_len, head_dim),
                                         v.view(bsz, num_heads, src_len, head_dim),
                                         attn_mask, dropout_p, is_causal)
    return out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, embed_dim), None


class _ProjectedAttention:
    """The attention forward over the module's ``q_proj``/``k_proj``/``v_proj``/``out_proj``
    (shared by the wrapper and its TorchScript-able export)."""

    def projected_attention(self, query: Tensor, key: Tensor, value: Tensor,
                            key_padding_mask: Tensor | None, need_weights: bool,
                            attn_mask: Tensor | None, average_attn_weights: bool,
                            is_causal: bool) -> tuple[Tensor, Tensor | None]:
        is_batched = query.dim() == 3
        key_padding_mask = private_api.canonical_mask(
            mask=key_padding_mask, mask_name="key_padding_mask",
            other_type=private_api.none_or_dtype(attn_mask), other_name="attn_mask",
            target_type=query.dtype)
        attn_mask = private_api.canonical_mask(mask=attn_mask, mask_name="attn_mask",
                                               other_type=None, other_name="",
                                               target_type=query.dtype, check_other=False)
        if not is_batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(1, 0), key.transpose(1, 0), value.transpose(1, 0)
        dropout_p = self.dropout if self.training else 0.0
        out, weights = attend(self.q_proj(query), self.k_proj(key), self.v_proj(value),
                              self.num_heads, self.bias_k, self.bias_v, self.add_zero_attn,
                              dropout_p, key_padding_mask, attn_mask, need_weights,
                              average_attn_weights, is_causal)
        out = self.out_proj(out)
        if not is_batched:
            out = out.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(0)
        elif self.batch_first:
            out = out.transpose(1, 0)
        return out, weights


def _attention_view(name: str) -> property:
    def get(self: MultiheadAttention) -> Any:
        return getattr(self.base_layer, name)

    return property(get, doc=f"The attention's ``{name}`` (read-only view).")


class MultiheadAttention(_ProjectedAttention, CompositeLayer):
    """`nn.MultiheadAttention` with dendrites on its q/k/v and output projections.

    Children ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` are `Linear` dendrite layers; the
    attention's attributes (``embed_dim``, ``num_heads``, ``batch_first``, ``in_proj_weight``,
    ...) are read-only views of ``base_layer``'s, so code that inspects it (e.g.
    ``nn.TransformerEncoderLayer``) works.
    """

    def __init__(self, base_layer: nn.MultiheadAttention, config: PerforationConfig) -> None:
        super().__init__(base_layer, config)
        for name in _PROJECTIONS:
            self.add_module(name, Linear(AttentionProjection(base_layer, name), config))

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if not self.has_dendrites():
            return self.base_layer(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        return self.projected_attention(query, key, value, key_padding_mask, need_weights,
                                        attn_mask, average_attn_weights, is_causal)

    def projection_positions(self, query: Tensor, key: Tensor, value: Tensor, *args: Any,
                             **kwargs: Any) -> dict[str, int]:
        """{projection: sample positions} of a call with these arguments (`forward`'s): the
        query's for ``q_proj`` and ``out_proj``, the key's and the value's for the others (a
        projection's output positions are its input's)."""
        q, k, v = (self.q_proj.output_positions(t) for t in (query, key, value))
        return {"q_proj": q, "k_proj": k, "v_proj": v, "out_proj": q}

    def merge_masks(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None,
                    query: Tensor) -> tuple[Tensor | None, int | None]:
        return self.base_layer.merge_masks(attn_mask, key_padding_mask, query)

    def export(self, export_layer: Callable[[DendriteLayer], nn.Module]) -> nn.Module:
        if not any(p.num_dendrites for p in self.projections().values()):
            import copy

            return copy.deepcopy(self.base_layer)
        projections = {name: export_layer(layer) if layer.num_dendrites
                       else layer.base_layer.as_linear()
                       for name, layer in self.projections().items()}
        return MultiheadAttentionExport(self.base_layer, projections)


for _name in ("embed_dim", "kdim", "vdim", "num_heads", "head_dim", "batch_first", "dropout",
              "add_zero_attn", private_api.MHA_PACKED, "in_proj_weight", "in_proj_bias",
              "q_proj_weight", "k_proj_weight", "v_proj_weight", "bias_k", "bias_v"):
    setattr(MultiheadAttention, _name, _attention_view(_name))


class MultiheadAttentionExport(_ProjectedAttention, nn.MultiheadAttention):
    """Exported attention with dendrites (TorchScript-able): the projections are exported
    dendrite layers; the attention's own parameters are kept so that code that inspects it
    (``nn.TransformerEncoderLayer``) still compiles."""

    def __init__(self, base: nn.MultiheadAttention, projections: dict[str, nn.Module]) -> None:
        w = base.out_proj.weight
        super().__init__(base.embed_dim, base.num_heads, dropout=base.dropout,
                         bias=base.in_proj_bias is not None, add_bias_kv=base.bias_k is not None,
                         add_zero_attn=base.add_zero_attn, kdim=base.kdim, vdim=base.vdim,
                         batch_first=base.batch_first, device=w.device, dtype=w.dtype)
        self.load_state_dict(base.state_dict())
        for name, module in projections.items():
            setattr(self, name, module)
        self.train(base.training)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        return self.projected_attention(query, key, value, key_padding_mask, need_weights,
                                        attn_mask, average_attn_weights, is_causal)
