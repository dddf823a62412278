"""An edge-conditioned message-passing network over molecular graphs, in plain PyTorch.

Every learnable layer is an nn.Linear, so the dendrite library can wrap all of them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.tox21 import ATOM_FEATURE_DIM, BOND_FEATURE_DIM, NUM_TOX21_TASKS, GraphBatch
from .mnist_cnn import scaled


class MPNN(nn.Module):
    """Message passing with GRU-style node updates, then sum + mean pooling and an MLP head.

    Per round r: ``m_e = ReLU(M_r [h_src, e])`` for each directed edge, ``a_v = sum of m_e``
    over edges into v (index_add_), and a GRU update built from nn.Linear layers:
    ``z, g = sigmoid(G_r [a, h])``, ``n = tanh(U_r [a, g * h])``, ``h = (1 - z) * n + z * h``.
    Readout: ``[sum_v h_v, mean_v h_v]`` per molecule -> Linear-ReLU-Dropout-Linear -> logits.
    `width` scales the hidden size (default 128).
    """

    def __init__(
        self,
        atom_dim: int = ATOM_FEATURE_DIM,
        bond_dim: int = BOND_FEATURE_DIM,
        num_tasks: int = NUM_TOX21_TASKS,
        hidden: int = 128,
        num_rounds: int = 3,
        dropout: float = 0.1,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        h = scaled(hidden, width)
        self.hidden = h
        self.embed = nn.Linear(atom_dim, h)
        self.message = nn.ModuleList(nn.Linear(h + bond_dim, h) for _ in range(num_rounds))
        self.gates = nn.ModuleList(nn.Linear(2 * h, 2 * h) for _ in range(num_rounds))
        self.candidate = nn.ModuleList(nn.Linear(2 * h, h) for _ in range(num_rounds))
        self.head = nn.Sequential(
            nn.Linear(2 * h, h), nn.ReLU(), nn.Dropout(dropout), nn.Linear(h, num_tasks)
        )

    def forward(
        self,
        x: Tensor | GraphBatch,
        edge_index: Tensor | None = None,
        edge_attr: Tensor | None = None,
        batch: Tensor | None = None,
        num_graphs: int | None = None,
    ) -> Tensor:
        """Logits [num_graphs, num_tasks]; pass a `GraphBatch` or its tensors.

        Give `num_graphs` to avoid a device sync (it defaults to ``batch.max() + 1``).
        """
        if isinstance(x, GraphBatch):
            x, edge_index, edge_attr, batch, num_graphs = (
                x.x, x.edge_index, x.edge_attr, x.batch, x.num_graphs,
            )  # fmt: skip
        if edge_index is None or edge_attr is None or batch is None:
            raise ValueError("MPNN needs edge_index, edge_attr and batch (or a GraphBatch)")
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        h = torch.relu(self.embed(x))
        src, dst = edge_index[0], edge_index[1]
        edge_attr = edge_attr.to(h.dtype)
        for message, gates, candidate in zip(self.message, self.gates, self.candidate, strict=True):
            m = torch.relu(message(torch.cat([h[src], edge_attr], dim=-1)))
            agg = torch.zeros_like(h).index_add_(0, dst, m)
            z, g = torch.sigmoid(gates(torch.cat([agg, h], dim=-1))).chunk(2, dim=-1)
            n = torch.tanh(candidate(torch.cat([agg, g * h], dim=-1)))
            h = (1 - z) * n + z * h
        pooled_sum = h.new_zeros(num_graphs, h.shape[1]).index_add_(0, batch, h)
        counts = h.new_zeros(num_graphs).index_add_(0, batch, h.new_ones(len(batch)))
        pooled_mean = pooled_sum / counts.clamp_min(1).unsqueeze(1)
        return self.head(torch.cat([pooled_sum, pooled_mean], dim=-1))
