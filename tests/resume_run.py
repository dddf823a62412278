"""A small run for tests/test_resume.py, meant to be killed with SIGKILL and resumed.

    python resume_run.py OUT_DIR RESULT.json [--resume] [--kill-epoch E --kill-batch B]

Checkpoints every epoch. ``--kill-epoch``: SIGKILL itself in the middle of epoch E (before
batch B). PERFORATE_TEST_SLEEP=s sleeps s seconds per batch (for external kills).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import perforate as pf

torch.set_num_threads(1)


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))


def data() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(600, 8, generator=g)
    y = ((x[:, 0] * x[:, 1] > 0).long() + (x[:, 2] > 0.5).long())
    return (TensorDataset(x[:300], y[:300]), TensorDataset(x[300:450], y[300:450]),
            TensorDataset(x[450:], y[450:]))


class KillingLoader:
    """Iterates a DataLoader; SIGKILLs the process at (epoch, batch) of the tracker."""

    def __init__(self, loader: DataLoader, tracker_ref: list, epoch: int | None,
                 batch: int | None) -> None:
        self.loader, self.ref, self.epoch, self.batch = loader, tracker_ref, epoch, batch
        self.generator = loader.generator
        self.sampler = loader.sampler
        self.sleep = float(os.environ.get("PERFORATE_TEST_SLEEP", "0"))

    def __iter__(self):
        current = self.ref[0].epoch + 1
        for i, item in enumerate(self.loader):
            if current == self.epoch and i == self.batch:
                os.kill(os.getpid(), signal.SIGKILL)
            if self.sleep:
                time.sleep(self.sleep)
            yield item


def optimizer_factory(params):
    return torch.optim.Adam(params, lr=1e-2)


def scheduler_factory(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.9)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("result")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-epoch", type=int)
    ap.add_argument("--kill-batch", type=int, default=0)
    args = ap.parse_args()

    train, val, test = data()
    if args.resume:
        tracker = pf.resume(args.out, make_net(), optimizer_factory, scheduler_factory)
        model = tracker.perforated
    else:
        torch.manual_seed(0)
        model = pf.perforate(make_net(), pf.PerforationConfig.paper())
        tracker = pf.Tracker(model, optimizer_factory, scheduler_factory, out_dir=args.out,
                             checkpoint_every=1, plot=False,
                             schedule=pf.Schedule(neuron_patience=3, dendrite_patience=2,
                                                  max_dendrite_epochs=4, min_dendrites=2,
                                                  max_dendrites=2, improvement_threshold=2e-3))
    loader = DataLoader(train, batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(7))
    train_loader = KillingLoader(loader, [tracker], args.kill_epoch, args.kill_batch)
    loss_fn = nn.CrossEntropyLoss()
    pf.fit(model, train_loader, DataLoader(val, batch_size=64), loss_fn,
           test_loader=DataLoader(test, batch_size=64), tracker=tracker, progress=False,
           decision_metric=pf.metrics.neg_loss(loss_fn))
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in tracker.records.history]
    archs = [{k: v for k, v in a.items() if k != "seconds"} for a in tracker.records.architectures]
    with open(args.result, "w") as f:
        json.dump({"history": strip, "architectures": archs, "best_val": tracker.best_val,
                   "test_at_best_val": tracker.test_at_best_val,
                   "dendrites": model.num_dendrites, "weights": digest.hexdigest()}, f)


if __name__ == "__main__":
    main()
