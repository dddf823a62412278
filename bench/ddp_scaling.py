"""Epochs per second of a neuron and a dendrite epoch of the MNIST-example CNN under DDP on
CPU processes (gloo), and what the dendrite phase's all-reduces cost at each world size.

Strong scaling: the global epoch (``--samples``, global batch ``--batch``) is split across
the ranks. Rows per world size: the neuron epoch (DDP), the dendrite epoch with the candidate
reductions of `perforate.parallel.distributed`, and the same dendrite epoch without them (each rank
alone: the reductions' cost is the difference; at one rank, in a process group of one, what
the synced path computes besides, with nobody to wait for). One thread per rank; an epoch's
time is the slowest rank's, the best of ``--repeats`` run in alternation. The reductions'
cost is given twice: from the two best times, and as the median over repeats of each
repeat's ratio (the epochs of a repeat run back to back, so a drift of the machine's speed
cancels). Two controls, "lockstep" and "lockstep2": the epoch without reductions in which
the ranks meet once (twice) per step and exchange nothing: the floor of any synchronous
training on the machine, and of any that meets as often as the candidates' reductions must.
Prints a table and writes ``bench/results/ddp_scaling.json``.

    python bench/ddp_scaling.py [--ranks 1 2 4] [--samples 1024] [--batch 64] [--repeats 5]
                                [--pin compute|all|none] [--keep-memory] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import statistics
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
from perforate.engine.allocator import keep_cpu_memory
from perforate.parallel.ddp import rewrap
from perforate.parallel.distributed import DistributedSync


def _epoch(module: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           batch: int, meet: int = 0) -> float:
    """Seconds for one epoch; ``meet``: how many times per step the ranks meet (an
    all-reduce of one number) and exchange nothing else: after the backward (1), and also
    as it starts (2)."""
    token = torch.zeros(1)

    def meeting(grad: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(token)
        return grad

    start = time.perf_counter()
    for i in range(0, len(x), batch):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(module(x[i:i + batch]), y[i:i + batch])
        if meet > 1:
            loss.register_hook(meeting)
        loss.backward()
        if meet:
            dist.all_reduce(token)
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
    """Pin the calling thread, and the threads it starts later, to one core per rank while
    there are enough: less migration noise."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores:
        os.sched_setaffinity(0, {cores[rank % len(cores)]})


PINNING = ("compute", "all", "none")
"""``--pin``: "compute" pins each rank's main thread once its process group is up, so the
threads gloo started with it (its network loop and workers) run on any core; "all" pins
before, so they share the rank's one core with its compute (a collective then often waits a
scheduler tick, ~3 ms on the development VM); "none" pins nothing."""


def join_group(rank: int, world: int, port: int, pinning: str) -> None:
    """Start this rank's gloo process group (of one, for one rank), pinned as `PINNING`
    says."""
    if pinning == "all":
        pin(rank)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    if pinning == "compute":
        pin(rank)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    if args.keep_memory:
        keep_cpu_memory()
    join_group(rank, world, port, args.pin)
    x, y, _ = load_data(args.samples)
    x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    local = args.batch // world
    model = _model()
    train = rewrap(model, DDP) if world > 1 else model
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    runs = {"neuron": lambda: _epoch(train, opt, x, y, local)}
    # The dendrite epoch with and without the reductions, in alternation (A B A B), so that
    # a drift in the machine's speed reaches both alike.
    # The lockstep controls: no reductions, but the ranks meet once per step, as any
    # synchronous training must, or twice, as the candidates' reductions must (statistics
    # before their gradient, gradient before the step): what that alone costs on this
    # machine (the faster rank waits for the slower; both run their memory-bound steps at
    # once).
    for name, synced, meet in (("dendrite", True, 0), ("dendrite_no_reduce", False, 0),
                               ("dendrite_lockstep", False, 1),
                               ("dendrite_lockstep2", False, 2)):
        if meet and world == 1:
            continue
        m = _model()
        m.set_distributed(DistributedSync() if synced else None)
        m.begin_dendrite_phase()
        runs[name] = lambda m=m, meet=meet: _epoch(m, m.candidate_optimizer(), x, y, local,
                                                   meet)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            dist.barrier()
            times[name].append(run())
    every = {name: slowest(ts, world) for name, ts in times.items()}
    if rank == 0:
        Path(out).write_text(json.dumps(every))
    dist.barrier()
    runs.clear()
    train = model  # no DDP wrapper may outlive the process group (an abort at exit)
    gc.collect()
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
    parser.add_argument("--pin", choices=PINNING, default="compute",
                        help="which threads to pin to one core per rank (see PINNING)")
    parser.add_argument("--keep-memory", action="store_true",
                        help="keep_cpu_memory() in every rank (glibc keeps freed memory)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.ranks:
            out = str(Path(tmp) / f"w{world}.json")
            mp.spawn(_worker, args=(world, free_port(), args, out), nprocs=world, join=True)
            every = json.loads(Path(out).read_text())
            row = {"ranks": world,
                   **{f"{k}_epochs_per_s": 1 / min(v) for k, v in every.items()}}
            if "dendrite_no_reduce" in every:
                alone = every["dendrite_no_reduce"]
                row["reduce_overhead"] = min(every["dendrite"]) / min(alone) - 1
                for key, name in (("reduce_overhead", "dendrite"),
                                  ("lockstep_overhead", "dendrite_lockstep"),
                                  ("lockstep2_overhead", "dendrite_lockstep2")):
                    if name not in every:  # no control at one rank
                        continue
                    paired = [a / b - 1 for a, b in zip(every[name], alone, strict=True)]
                    row[f"{key}_paired"] = statistics.median(paired)
                    row[f"{key}_each"] = paired
            rows.append(row)
    print(f"{'ranks':>5} {'neuron ep/s':>12} {'dendrite ep/s':>14} {'no-reduce ep/s':>15} "
          f"{'reduce cost':>12} {'paired':>8} {'lockstep':>9} {'lockstep2':>10}")

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:+.1%}"

    for r in rows:
        nr = r.get("dendrite_no_reduce_epochs_per_s")
        print(f"{r['ranks']:>5} {r['neuron_epochs_per_s']:>12.3f} "
              f"{r['dendrite_epochs_per_s']:>14.3f} "
              f"{'-' if nr is None else f'{nr:.3f}':>15} "
              f"{pct(r.get('reduce_overhead')):>12} "
              f"{pct(r.get('reduce_overhead_paired')):>8} "
              f"{pct(r.get('lockstep_overhead_paired')):>9} "
              f"{pct(r.get('lockstep2_overhead_paired')):>10}")
    result = {"samples": args.samples, "batch": args.batch, "repeats": args.repeats,
              "keep_cpu_memory": args.keep_memory, "pin": args.pin,
              "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "rows": rows}
    path = Path(args.out)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
