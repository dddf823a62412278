"""What the candidate reductions cost a deep network: ms per dendrite-phase step of an MLP with
`--layers` perforated Linear layers on 2 gloo processes, with the reductions and without them
(each rank alone). A deep, small network is where the number of collectives per step, not
their size, sets the cost. Prints a table and writes ``bench/results/ddp_depth.json``.

    python bench/ddp_depth.py [--layers 12] [--width 64] [--batch 32] [--steps 50]
                              [--repeats 7] [--pin compute|all|none]
                              [--out FILE]

To compare two source trees, run it with ``PYTHONPATH=<tree>/src`` for each.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_scaling import PINNING, free_port, join_group, slowest
from torch import nn

import perforate as pf
from perforate.engine.allocator import keep_cpu_memory
from perforate.parallel.distributed import DistributedSync

WORLD = 2


def _worker(rank: int, port: int, args: argparse.Namespace, synced: bool, out: str) -> None:
    torch.set_num_threads(1)
    keep_cpu_memory()
    join_group(rank, WORLD, port, args.pin)
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for i in range(args.layers):
        blocks += [nn.Linear(args.width if i else 32, args.width), nn.Tanh()]
    model = pf.perforate(nn.Sequential(*blocks, nn.Linear(args.width, 10)),
                         pf.PerforationConfig.paper(seed=0, candidates=4))
    model.set_distributed(DistributedSync() if synced else None)
    model.begin_dendrite_phase()
    opt = model.candidate_optimizer()
    g = torch.Generator().manual_seed(rank)
    local = args.batch // WORLD
    x, y = torch.randn(local, 32, generator=g), torch.randint(0, 10, (local,), generator=g)
    times = []
    for _ in range(args.repeats):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        times.append((time.perf_counter() - start) / args.steps)
    every = slowest(times, WORLD)  # a step ends when every rank's does
    if rank == 0:
        Path(out).write_text(json.dumps(every))
    dist.barrier()
    del model, opt
    gc.collect()  # nothing that holds the group may outlive it (an abort at exit)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pin", choices=PINNING, default="compute",
                        help="which threads to pin to one core per rank (see ddp_scaling)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                              "ddp_depth.json"))
    args = parser.parse_args()
    ms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for synced in (True, False):
            out = str(Path(tmp) / f"{synced}.json")
            mp.spawn(_worker, args=(free_port(), args, synced, out), nprocs=WORLD, join=True)
            ms["synced" if synced else "alone"] = 1e3 * statistics.median(
                json.loads(Path(out).read_text()))
    cost = ms["synced"] / ms["alone"] - 1
    print(f"{args.layers} perforated Linear layers of {args.width}, global batch {args.batch}, "
          f"{WORLD} gloo ranks, 1 thread each; median ms per dendrite-phase step")
    print(f"{'with reductions':>16} {'each rank alone':>16} {'cost':>8}")
    print(f"{ms['synced']:16.1f} {ms['alone']:16.1f} {cost:+8.0%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "layers": args.layers, "width": args.width, "batch": args.batch, "steps": args.steps,
        "repeats": args.repeats, "pin": args.pin, "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "ms_per_step": ms, "reduce_overhead": cost}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
