"""Shared helpers of the library's tests: small networks (seed and threads: ../conftest.py)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv -> relu -> conv -> relu -> pool -> fc -> relu -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2)
        self.fc1 = nn.Linear(6 * 3 * 3, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = nn.functional.max_pool2d(x, 1)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 3))


def train_candidates(model, batches, loss_fn, steps: int = 1) -> None:
    """Run `steps` passes over `batches` in the dendrite phase, closing one epoch each."""
    opt = model.candidate_optimizer()
    for _ in range(steps):
        for x, y in batches:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        model.end_epoch()


def grow(model, batches, loss_fn, sets: int = 1, *, cascade: bool = False) -> None:
    """Install `sets` dendrite sets, then give the output (and cascade) weights random values
    so that the dendrites change the function."""
    for _ in range(sets):
        model.begin_dendrite_phase()
        train_candidates(model, batches, loss_fn)
        model.end_dendrite_phase()
        with torch.no_grad():
            for layer in model.dendrite_layers().values():
                layer.output_weight.normal_()
                if cascade:
                    layer.cascade_weight.normal_()  # only entries below the diagonal are used
