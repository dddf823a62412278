"""Controller cost: wall time of `Tracker.step` without out_dir (target: <= 5 ms per step).

    .venv/bin/python bench/tracker_step.py

Measures neuron-phase steps (every other epoch a new best, so half of them copy the weights
into the cycle snapshot) and dendrite-phase steps (which include ``model.end_epoch()``), on
the demo's 64-32-10 MLP and on a 1M-parameter MLP. Training itself is not timed.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import perforate as pf


def bench(net: nn.Module, n_in: int, label: str, epochs: int = 200) -> dict:
    model = pf.perforate(net)
    tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, lr=0.01),
                         schedule=pf.Schedule(neuron_patience=epochs + 1,
                                              max_dendrite_epochs=epochs + 1,
                                              dendrite_patience=epochs + 1))
    neuron = []
    for e in range(epochs):
        t = time.perf_counter()
        tracker.step(float(e // 2))  # a new best every other epoch
        neuron.append(time.perf_counter() - t)
    # switch to the dendrite phase (not timed), then time dendrite steps
    tracker.schedule.neuron_patience = 1
    tracker.step(-1.0)
    assert tracker.phase == "dendrite"
    x = torch.randn(64, n_in)
    y = torch.randint(0, 10, (64,))
    dendrite, engine = [], []
    end_epoch = model.end_epoch

    def timed_end_epoch():
        t0 = time.perf_counter()
        out = end_epoch()
        engine.append(time.perf_counter() - t0)
        return out

    model.end_epoch = timed_end_epoch
    for _ in range(epochs // 4):
        tracker.optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        tracker.optimizer.step()
        t = time.perf_counter()
        tracker.step()
        dendrite.append(time.perf_counter() - t)

    def fmt(v: list[float]) -> str:
        return (f"mean {1e3 * statistics.fmean(v):.3f} ms, median "
                f"{1e3 * statistics.median(v):.3f} ms, max {1e3 * max(v):.3f} ms")

    print(f"{label:<28} params {model.count_parameters():>9,}  neuron step: {fmt(neuron)}")
    print(f"{'':<28} {'':>16}  dendrite step: {fmt(dendrite)}")
    own = [d - e for d, e in zip(dendrite, engine, strict=True)]
    print(f"{'':<28} {'':>16}    of which model.end_epoch(): {fmt(engine)}")
    print(f"{'':<28} {'':>16}    controller only: {fmt(own)}")

    def stats(v: list[float]) -> dict:
        return {"mean_ms": 1e3 * statistics.fmean(v), "median_ms": 1e3 * statistics.median(v),
                "max_ms": 1e3 * max(v)}

    return {"model": label, "params": model.count_parameters(), "neuron_step": stats(neuron),
            "dendrite_step": stats(dendrite), "end_epoch": stats(engine),
            "controller_only_dendrite": stats(own), "target_ms": 5.0}


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = [
        bench(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), 64, "64-32-10 MLP"),
        bench(nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(),
                            nn.Linear(512, 10)), 512, "512-1024-512-10 MLP"),
    ]
    out = Path(__file__).parent / "results" / "tracker_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "tracker_step", "torch": torch.__version__,
                               "threads": 1, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
