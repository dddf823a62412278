"""Seconds per training step, eager against ``torch.compile(model)``, on a small MLP: a
dendrite-phase step of `PerforationConfig.paper()` (the candidates train through the user's
backward) and a neuron-phase step of the default (one trained dendrite set, `DendriteTerm`).
Steps alternate between the two, timed in process CPU time; the ratio is the median of the
pairs'. Also counts the graph breaks of the compiled forward (``torch._dynamo.explain``).
Prints a table and writes ``bench/results/compile_step.json``.

    python bench/compile_step.py [--steps 30] [--batch 128] [--width 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch._dynamo
from torch import nn

import perforate as pf


def build(config: pf.PerforationConfig, width: int, x: torch.Tensor, y: torch.Tensor
          ) -> tuple[pf.PerforatedModel, Callable[[], torch.optim.Optimizer]]:
    """The model in the phase to time, and its optimizer (the candidates' or the network's)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(x.shape[1], width), nn.Tanh(), nn.Linear(width, width),
                        nn.Tanh(), nn.Linear(width, 10))
    model = pf.perforate(net, config)
    if model.trains_candidates:
        model.begin_dendrite_phase()
        return model, model.candidate_optimizer
    model.grow()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, lambda: opt


def step(forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
         x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one training step (process CPU time: less swayed by other processes on a
    shared machine than the wall clock)."""
    t = time.process_time()
    opt.zero_grad()
    nn.functional.cross_entropy(forward(x), y).backward()
    opt.step()
    return time.process_time() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed step pairs per row")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                              "compile_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 64, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    rows = []
    for phase, config in (("dendrite phase, paper()", pf.PerforationConfig.paper(seed=0)),
                          ("neuron phase, default, D = 1", pf.PerforationConfig(seed=0))):
        model, opt = build(config, args.width, x, y)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(x)
        compiled_model = torch.compile(model)
        t = time.perf_counter()
        for _ in range(3):  # warm-up; the compiled model compiles here
            step(model, opt(), x, y)
            step(compiled_model, opt(), x, y)
        warm_up = time.perf_counter() - t
        eager, compiled = [], []
        for i in range(args.steps):  # alternating, so that both see the same load
            order = ((eager, model), (compiled, compiled_model))
            for times, forward in order if i % 2 == 0 else order[::-1]:
                times.append(step(forward, opt(), x, y))
        ratios = [c / e for e, c in zip(eager, compiled, strict=True)]
        row = {"phase": phase, "eager_s": statistics.median(eager),
               "compiled_s": statistics.median(compiled),
               "compiled_over_eager_median_of_pairs": statistics.median(ratios),
               "warm_up_s": warm_up, "graph_breaks": explained.graph_break_count,
               "graphs": explained.graph_count}
        rows.append(row)
        print(f"{phase:30} eager {row['eager_s'] * 1e3:7.2f} ms  compiled "
              f"{row['compiled_s'] * 1e3:7.2f} ms  ({statistics.median(ratios):.2f}x; "
              f"{row['graph_breaks']} graph breaks in the forward)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "compile_step", "torch": torch.__version__,
                               "machine": platform.machine(), "threads": args.threads,
                               "batch": args.batch, "width": args.width, "steps": args.steps,
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
