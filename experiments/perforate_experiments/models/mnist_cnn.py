"""The CNN of the PyTorch MNIST example, with a width multiplier."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def scaled(size: int, width: float) -> int:
    """``round(size * width)``, at least 1."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return max(1, round(size * width))


class MnistCNN(nn.Module):
    """conv 3x3 (1->32) - ReLU - conv 3x3 (32->64) - ReLU - maxpool 2 - dropout .25 - flatten -
    fc (9216->128) - ReLU - dropout .5 - fc (128->classes), as in pytorch/examples/mnist.

    Returns logits (no log-softmax). `width` scales the channels and the hidden units
    (32, 64, 128 at width 1). Expects [N, in_channels, 28, 28] inputs.
    """

    def __init__(
        self, num_classes: int = 10, width: float = 1.0, in_channels: int = 1, image_size: int = 28
    ) -> None:
        super().__init__()
        c1, c2, hidden = scaled(32, width), scaled(64, width), scaled(128, width)
        side = (image_size - 4) // 2
        self.conv1 = nn.Conv2d(in_channels, c1, 3, 1)
        self.conv2 = nn.Conv2d(c1, c2, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(c2 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.dropout1(torch.max_pool2d(x, 2))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(self.dropout2(x))
