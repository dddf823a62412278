"""Byte-level language models of Protocol L: a small pre-LN causal transformer and an LSTM.

Both map bytes ``[B, T]`` (int64, T <= context) to next-byte logits ``[B, T, 256]``. No
dropout (the models are small and trained briefly: they underfit, and a run stays
deterministic). The output layer is an untied ``nn.Linear`` (``head``), so it gets dendrites
like every other Linear; embeddings and layer norms do not (the library wraps neither).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

VOCAB = 256


def heads_for(d_model: int) -> int:
    """Attention heads of width `d_model`: d/16 (one head of 16 dimensions per 16), at least 1
    (the frontier's narrowest widths)."""
    return max(1, d_model // 16)


class CausalTransformerLM(nn.Module):
    """Decoder-only transformer: byte embedding + learned positions, `layers` pre-LN blocks
    (``nn.TransformerEncoderLayer(norm_first=True)`` with a causal mask, d/16 heads, MLP 4·d,
    GELU), a final LayerNorm and the output Linear ``head``."""

    def __init__(self, d_model: int, *, layers: int = 2, context: int = 64,
                 vocab: int = VOCAB) -> None:
        super().__init__()
        if d_model < 1 or layers < 1 or context < 1:
            raise ValueError("d_model, layers and context must be >= 1")
        self.context = context
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads_for(d_model), 4 * d_model, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("causal_mask",
                             nn.Transformer.generate_square_subsequent_mask(context),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        if t > self.context:
            raise ValueError(f"sequence of {t} bytes is longer than the context {self.context}")
        h = self.embed(x) + self.pos(torch.arange(t, device=x.device))
        mask = self.causal_mask[:t, :t]
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h))


class LSTMLM(nn.Module):
    """Byte embedding (width `hidden`), a 1-layer ``nn.LSTM`` and the output Linear ``head``."""

    def __init__(self, hidden: int, *, vocab: int = VOCAB) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError("hidden must be >= 1")
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out)
