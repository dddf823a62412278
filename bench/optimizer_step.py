"""Seconds per candidate-optimizer step: PyTorch's per-tensor loop, its multi-tensor step and
its fused kernel, on the candidate parameters of the MNIST-example CNN's dendrite phase (the
model's own, drawn by `begin_dendrite_phase`), with random gradients. What
`perforate.engine.candidate_optimizer.fast_step` chooses between. Prints a table and writes
``bench/results/optimizer_step.json``.

    python bench/optimizer_step.py [--candidates 4] [--steps 30] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from mnist_net import MnistNet

import perforate as pf

KINDS = {"per-tensor loop": {"foreach": False}, "multi-tensor (foreach)": {"foreach": True},
         "fused": {"fused": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per kind (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                              "optimizer_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, kwargs in KINDS.items():
        torch.manual_seed(0)
        cascade = pf.CascadeCorrelation(candidates=args.candidates, optimizer=args.optimizer,
                                        optimizer_kwargs=kwargs)
        model = pf.perforate(MnistNet(), pf.PerforationConfig.paper(seed=0, cascade=cascade))
        model.begin_dendrite_phase()
        opt = model.candidate_optimizer()
        params = [p for g in opt.param_groups for p in g["params"]]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        for _ in range(3):  # state allocated, caches warm
            opt.step()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - start)
        rows.append({"kind": name, "ms_per_step": 1000 * statistics.median(times),
                     "parameters": sum(p.numel() for p in params)})
    print(f"{args.optimizer} step on {rows[0]['parameters']:,} candidate parameters "
          f"(K = {args.candidates}), {args.threads} thread(s)")
    for r in rows:
        print(f"{r['kind']:24} {r['ms_per_step']:8.2f} ms")
    path = Path(args.out)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"optimizer": args.optimizer, "candidates": args.candidates,
                                "threads": args.threads, "steps": args.steps,
                                "cpu": platform.processor() or platform.machine(),
                                "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
