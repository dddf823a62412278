"""The PyTorch MNIST-example CNN and its data, importable without perforate (the anchor
benchmark runs it in a venv that has only perforatedai)."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

FASHION = Path("/usr/share/datasets/fashion-mnist")


class MnistNet(nn.Module):
    """The PyTorch MNIST example network (conv 32, conv 64, maxpool, fc 9216→128, fc→10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.dropout1(torch.max_pool2d(x, 2)).flatten(1)
        x = self.dropout2(torch.relu(self.fc1(x)))
        return self.fc2(x)


def load_data(samples: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    images = FASHION / "train-images-idx3-ubyte.gz"
    if images.exists():
        with gzip.open(images) as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:samples]
        with gzip.open(FASHION / "train-labels-idx1-ubyte.gz") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)[:samples]
        x = (torch.from_numpy(x.astype(np.float32)) / 255 - 0.2860) / 0.3530
        return x, torch.from_numpy(y.astype(np.int64)), "fashion-mnist"
    g = torch.Generator().manual_seed(0)
    return (torch.randn(samples, 1, 28, 28, generator=g),
            torch.randint(0, 10, (samples,), generator=g), "random")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              batch: int, device: torch.device) -> float:
    """Seconds for one pass over (x, y) with the user's loop (data already on the device)."""
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[i:i + batch]), y[i:i + batch]).backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start
