"""Epochs per second of a neuron and a dendrite epoch of the MNIST-example CNN under DDP on
CPU processes (gloo), and what the dendrite phase's all-reduces cost at each world size.

Strong scaling: the global epoch (``--samples``, global batch ``--batch``) is split across
the ranks. Rows per world size: the neuron epoch (DDP), the dendrite epoch with the candidate
reductions of `perforate.distributed`, and the same dendrite epoch without them (each rank
alone: the reductions' cost is the difference). One thread per rank; an epoch's time is the
slowest rank's, the best of ``--repeats`` run in alternation. Prints a table and writes
``bench/results/ddp_scaling.json``.

    python bench/ddp_scaling.py [--ranks 1 2 4] [--samples 1024] [--batch 64] [--repeats 5]
                                [--keep-memory] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mnist_net import MnistNet, load_data
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import perforate as pf
from perforate.distributed import DistributedSync, rewrap


def _epoch(module: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(module(x[i:i + batch]), y[i:i + batch]).backward()
        opt.step()
    return time.perf_counter() - start


def _model() -> pf.PerforatedModel:
    torch.manual_seed(0)
    return pf.perforate(MnistNet(), pf.PerforationConfig.paper(seed=0, candidates=4))


def slowest(times: list[float], world: int) -> list[float]:
    """Each repeat's epoch time of the job: the slowest rank's (the epoch ends when every
    rank's does; rank 0 alone would flatter unsynchronised ranks)."""
    if world == 1:
        return times
    every: list[list[float]] = [[] for _ in range(world)]
    dist.all_gather_object(every, times)
    return [max(ts) for ts in zip(*every, strict=True)]


def pin(rank: int) -> None:
    """One core per rank while there are enough: less migration noise."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores:
        os.sched_setaffinity(0, {cores[rank % len(cores)]})


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    if args.keep_memory:
        pf.keep_cpu_memory()
    pin(rank)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    x, y, _ = load_data(args.samples)
    x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    local = args.batch // world
    model = _model()
    train = rewrap(model, DDP) if world > 1 else model
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    runs = {"neuron": lambda: _epoch(train, opt, x, y, local)}
    # The dendrite epoch with and without the reductions, in alternation (A B A B), so that
    # a drift in the machine's speed reaches both alike.
    for name, synced in (("dendrite", True), ("dendrite_no_reduce", False)):
        if name == "dendrite_no_reduce" and world == 1:
            continue
        m = _model()
        m.set_distributed(DistributedSync() if synced and world > 1 else None)
        m.begin_dendrite_phase()
        runs[name] = lambda m=m: _epoch(m, m.candidate_optimizer(), x, y, local)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            if world > 1:
                dist.barrier()
            times[name].append(run())
    best = {name: min(slowest(ts, world)) for name, ts in times.items()}
    if rank == 0:
        Path(out).write_text(json.dumps(best))
    if world > 1:
        dist.barrier()
        del train, runs
        gc.collect()  # no DDP wrapper may outlive the process group (an abort at exit)
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                              "ddp_scaling.json"))
    parser.add_argument("--keep-memory", action="store_true",
                        help="pf.keep_cpu_memory() in every rank (glibc keeps freed memory)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.ranks:
            out = str(Path(tmp) / f"w{world}.json")
            mp.spawn(_worker, args=(world, free_port(), args, out), nprocs=world, join=True)
            times = json.loads(Path(out).read_text())
            row = {"ranks": world, **{f"{k}_epochs_per_s": 1 / v for k, v in times.items()}}
            if "dendrite_no_reduce" in times:
                row["reduce_overhead"] = times["dendrite"] / times["dendrite_no_reduce"] - 1
            rows.append(row)
    print(f"{'ranks':>5} {'neuron ep/s':>12} {'dendrite ep/s':>14} {'no-reduce ep/s':>15} "
          f"{'reduce cost':>12}")
    for r in rows:
        nr = r.get("dendrite_no_reduce_epochs_per_s")
        cost = r.get("reduce_overhead")
        print(f"{r['ranks']:>5} {r['neuron_epochs_per_s']:>12.3f} "
              f"{r['dendrite_epochs_per_s']:>14.3f} "
              f"{'-' if nr is None else f'{nr:.3f}':>15} "
              f"{'-' if cost is None else f'{cost:+.1%}':>12}")
    result = {"samples": args.samples, "batch": args.batch, "repeats": args.repeats,
              "keep_cpu_memory": args.keep_memory,
              "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "rows": rows}
    path = Path(args.out)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
