"""A multi-task MLP over Morgan fingerprints (2048 -> 512 -> 256 -> 12)."""

from __future__ import annotations

from torch import Tensor, nn

from .mnist_cnn import scaled


class FingerprintMLP(nn.Module):
    """Linear-ReLU-Dropout twice, then a linear layer to one logit per task.

    `width` scales the hidden sizes (512, 256 at width 1).
    """

    def __init__(
        self,
        in_features: int = 2048,
        num_tasks: int = 12,
        hidden: tuple[int, int] = (512, 256),
        dropout: float = 0.2,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        h1, h2 = scaled(hidden[0], width), scaled(hidden[1], width)
        self.net = nn.Sequential(
            nn.Linear(in_features, h1),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(h2, num_tasks),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
