"""A tiny Lightning run for tests/test_integrations_lightning.py, also run as a script:

    python lightning_run.py OUT_DIR       # Trainer(strategy="ddp", devices=2) on CPU (gloo)

Lightning launches the second rank by running this script again; each rank writes
``OUT_DIR/rank{r}.pt`` (its model's state_dict, the tracker's history, what it trained with).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import perforate as pf
from perforate.integrations.lightning import PerforateCallback

torch.set_num_threads(1)

#: neuron, neuron (no better: grow), dendrite x2 (install), neuron, neuron (no better: stop).
SCHEDULE = pf.Schedule(neuron_patience=1, dendrite_patience=2, max_dendrite_epochs=2,
                       improvement_threshold=10.0)
TRACKER_OPTIONS: dict[str, Any] = {"schedule": SCHEDULE, "plot": False}
PHASES = ["neuron", "neuron", "dendrite", "dendrite", "neuron", "neuron"]


class Regressor(L.LightningModule):
    """A perforated MLP (paper preset, so there is a dendrite phase) on a smooth target."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = pf.perforate(nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 2)),
                                pf.PerforationConfig.paper(seed=0, candidates=3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        return {"optimizer": optimizer,
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}


def loaders(world: int = 1) -> tuple[DataLoader, DataLoader]:
    """Global batch 8. One process: the training order of Lightning's DistributedSampler
    (shuffled, seed 0), so that its global batches are those of `world` ranks; ranks: a plain
    loader of batch 8 / world, to which Lightning adds that sampler."""
    g = torch.Generator().manual_seed(1)
    x, xv = torch.randn(64, 5, generator=g), torch.randn(32, 5, generator=g)
    target = lambda t: torch.sin(2 * t[:, :2]) + t[:, 2:4] * t[:, 4:]  # noqa: E731
    train = TensorDataset(x, target(x))
    sampler = DistributedSampler(train, num_replicas=1, rank=0, seed=0) if world == 1 else None
    return (DataLoader(train, batch_size=8 // world, sampler=sampler),
            DataLoader(TensorDataset(xv, target(xv)), batch_size=8 // world))


class Recorder(L.Callback):
    """Per training batch: whether Lightning trains with the tracker's optimizer, how many
    parameters that optimizer holds, the phase and the dendrite sets installed; the model's
    state when the first set has been installed."""

    def __init__(self, perforate: PerforateCallback) -> None:
        self.perforate = perforate
        self.batches: list[dict[str, Any]] = []
        self.installed: dict[str, torch.Tensor] | None = None
        self.val_batches: dict[int, int] = {}  # epoch -> validation batches run

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self.val_batches[trainer.current_epoch] = \
                self.val_batches.get(trainer.current_epoch, 0) + 1

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.installed is None and self.perforate.tracker.perforated.num_dendrites:
            self.installed = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        tracker = self.perforate.tracker
        optimizer = trainer.optimizers[0]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.batches.append({
            "epoch": trainer.current_epoch, "phase": tracker.phase,
            "shared": optimizer is tracker.optimizer,
            "params": sum(p.numel() for p in params if p.requires_grad),
            "dendrites": tracker.perforated.num_dendrites,
            "schedulers": len(trainer.lr_scheduler_configs),
            "ddp": type(trainer.strategy.model).__name__})


def fit(ckpt_path: Path | None = None, **trainer_options: Any,
        ) -> tuple[Regressor, PerforateCallback, Recorder, Any]:
    module = Regressor()
    callback = PerforateCallback(monitor="val_loss", mode="min", **TRACKER_OPTIONS)
    recorder = Recorder(callback)
    options = {"accelerator": "cpu", "max_epochs": 20, "enable_progress_bar": False,
               "logger": False, "enable_checkpointing": False, "enable_model_summary": False,
               **trainer_options}
    trainer = L.Trainer(callbacks=[callback, recorder], **options)
    train, val = loaders(options.get("devices", 1))
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return module, callback, recorder, trainer


def main(out: Path) -> None:
    module, callback, recorder, trainer = fit(strategy="ddp", devices=2)
    history = [{k: v for k, v in r.items() if k != "seconds"}
               for r in callback.tracker.records.history]
    torch.save({"state": module.state_dict(), "installed": recorder.installed,
                "history": history, "batches": recorder.batches,
                "val_batches": recorder.val_batches,
                "epochs": trainer.current_epoch, "world": trainer.world_size},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
