"""A multi-time attention classifier (mTAND-Enc of Shukla & Marlin, ICLR 2021).

"Multi-Time Attention Networks for Irregularly Sampled Time Series": learned time embeddings
``[w0 t + b0, sin(W t + b)]`` of reference points (queries) and observation times (keys);
per-variable attention that only sees the times where that variable was observed; a GRU over
the R reference points; an MLP classifier on the GRU's last state. As in the official code the
attended input is ``[values, mask]`` (2V channels), each channel masked by its variable's mask.
All projections are nn.Linear; the recurrent part is nn.GRU, or `LinearGRU` (nn.Linear gates)
with ``linear_gru=True`` so that dendrites can wrap it too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..data.physionet import NUM_PHYSIONET_VARIABLES
from .mnist_cnn import scaled


class TimeEmbedding(nn.Module):
    """Learned time embedding: one linear and ``dim - 1`` periodic (sine) components."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"time embedding needs dim >= 2, got {dim}")
        self.linear = nn.Linear(1, 1)
        self.periodic = nn.Linear(1, dim - 1)

    def forward(self, t: Tensor) -> Tensor:
        """[...] times -> [..., dim] embeddings."""
        t = t.unsqueeze(-1)
        return torch.cat([self.linear(t), torch.sin(self.periodic(t))], dim=-1)


class MultiTimeAttention(nn.Module):
    """Multi-head attention of query times over key times, normalised per input channel.

    For head h, reference point r and channel d the weights are a softmax of
    ``<Q q_r, K k_t> / sqrt(d_k)`` over the times t where ``mask[t, d]`` is set, computed as
    ``(E @ (mask * x)) / (E @ mask)`` with ``E = exp(scores - max)``: no [B, H, R, T, D] tensor is
    built. A channel with no observation gives 0. (Exact unless every observed score of a
    channel lies ~87 below the batch row's maximum, where float32 exp underflows.)
    """

    def __init__(self, input_dim: int, embed_dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.d_k = num_heads, embed_dim // num_heads
        self.query_proj = nn.Linear(embed_dim, embed_dim)
        self.key_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(input_dim * num_heads, out_dim)

    def weights_and_values(self, query: Tensor, key: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        """Attended values [B, H, R, D] (before the output projection)."""
        b, t, _ = key.shape
        q = self.query_proj(query).view(-1, query.shape[-2], self.num_heads, self.d_k)
        k = self.key_proj(key).view(b, t, self.num_heads, self.d_k)
        scores = torch.einsum("brhk,bthk->bhrt", q.expand(b, -1, -1, -1), k)
        scores = scores / math.sqrt(self.d_k)
        mask = mask.to(x.dtype)
        valid = (mask.sum(-1) > 0)[:, None, None, :]  # [B, 1, 1, T]
        scores = scores.masked_fill(~valid, float("-inf"))
        shift = scores.amax(dim=-1, keepdim=True)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift)).detach()
        e = torch.exp(scores - shift)  # 0 at invalid times
        num = torch.einsum("bhrt,btd->bhrd", e, mask * x)
        den = torch.einsum("bhrt,btd->bhrd", e, mask)
        return num / den.clamp_min(torch.finfo(den.dtype).tiny)

    def forward(self, query: Tensor, key: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        """query [R, E] or [B, R, E], key [B, T, E], x and mask [B, T, D] -> [B, R, out_dim]."""
        att = self.weights_and_values(query, key, x, mask)  # [B, H, R, D]
        b, h, r, d = att.shape
        return self.out_proj(att.permute(0, 2, 1, 3).reshape(b, r, h * d))


class LinearGRU(nn.Module):
    """A single-layer, batch-first GRU made of two nn.Linear layers (same maths as nn.GRU)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 3 * hidden_size)
        self.hh = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [B, L, I] -> (outputs [B, L, H], last state [1, B, H]), like nn.GRU."""
        b, length, _ = x.shape
        gx = self.ih(x)  # all time steps at once
        h = x.new_zeros(b, self.hidden_size) if h is None else h.reshape(b, self.hidden_size)
        outs = []
        for i in range(length):
            xr, xz, xn = gx[:, i].chunk(3, dim=-1)
            hr, hz, hn = self.hh(h).chunk(3, dim=-1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            outs.append(h)
        return torch.stack(outs, dim=1), h.unsqueeze(0)


class MTANClassifier(nn.Module):
    """mTAND-Enc classifier for irregularly sampled multivariate series -> one logit.

    Defaults at ``width=1`` follow the official PhysioNet classification settings: 128
    reference points on a fixed grid in [0, 1], 128-dim time embeddings, 1 head, 256 hidden
    units, a 300-300 classifier. `width` scales hidden, embedding and classifier sizes.
    `static_dim > 0` concatenates static features to the GRU state before the classifier.
    """

    def __init__(
        self,
        num_variables: int = NUM_PHYSIONET_VARIABLES,
        *,
        width: float = 1.0,
        hidden: int = 256,
        embed_time: int = 128,
        num_heads: int = 1,
        num_ref_points: int = 128,
        classifier_hidden: int = 300,
        static_dim: int = 0,
        learn_ref_points: bool = False,
        linear_gru: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        h = scaled(hidden, width)
        e = max(2, scaled(embed_time // num_heads, width)) * num_heads
        c = scaled(classifier_hidden, width)
        self.num_variables, self.static_dim = num_variables, static_dim
        ref = torch.linspace(0.0, 1.0, num_ref_points)
        if learn_ref_points:
            self.ref_points = nn.Parameter(ref)
        else:
            self.register_buffer("ref_points", ref)
        self.time_embedding = TimeEmbedding(e)
        self.attention = MultiTimeAttention(2 * num_variables, e, num_heads, h)
        self.gru: nn.Module = LinearGRU(h, h) if linear_gru else nn.GRU(h, h, batch_first=True)
        self.classifier = nn.Sequential(
            nn.Linear(h + static_dim, c),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(c, c),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(c, 1),
        )

    def encode(self, times: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        """Representations at the reference points, [B, R, hidden]."""
        mask = mask.to(values.dtype)
        x = torch.cat([values * mask, mask], dim=-1)
        m2 = torch.cat([mask, mask], dim=-1)
        key = self.time_embedding(times)
        query = self.time_embedding(self.ref_points).unsqueeze(0)
        return self.attention(query, key, x, m2)

    def forward(
        self, times: Tensor, values: Tensor, mask: Tensor, static: Tensor | None = None
    ) -> Tensor:
        """times [B, T] in [0, 1], values and mask [B, T, V] (padding: mask 0) -> logits [B]."""
        _, last = self.gru(self.encode(times, values, mask))
        state = last[-1]
        if self.static_dim:
            if static is None:
                raise ValueError("this MTANClassifier was built with static_dim > 0: pass static")
            state = torch.cat([state, static.to(state.dtype)], dim=-1)
        return self.classifier(state).squeeze(-1)
