"""Does a dendrite phase still need `keep_cpu_memory`? Its cost against its floor, with
glibc's default allocator and with memory kept, on three networks.

A dendrite phase of the paper's algorithm with K candidates costs at least (2 + 2K) / 3 plain
neuron epochs (the frozen network's forward and input-gradient backward, and K candidate
forwards and weight-gradient backwards). Temporaries of K layer outputs are tens of MB; glibc
maps blocks above 32 MB afresh for every allocation (faulting in and zeroing their pages), so
each such temporary the library makes per batch costs time that `keep_cpu_memory` (process
wide, opt-in) removes. This prints, per network and allocator, the dendrite epoch's ratio to
a plain epoch (median over ``--repeats`` pairs, each timed right after a plain one: A B A B)
and that ratio over the floor; each allocator runs in a process of its own (the switch is
process wide). Writes ``bench/results/allocator.json``.

    python bench/allocator.py [--repeats 5] [--batches 12] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
K = 4
FLOOR = (2 + 2 * K) / 3


class Block(nn.Module):
    """A ResNet basic block (two 3x3 convs, BatchNorm, identity or 1x1 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.short(x))


class SmallResNet(nn.Module):
    """ResNet-18's layout at a quarter of its width, for 32x32 images (CIFAR style)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        widths, blocks, cin = (16, 32, 64, 128), [], 16
        for i, w in enumerate(widths):
            blocks += [Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class NeXtBlock(nn.Module):
    """A ConvNeXt block: depthwise 7x7 conv, LayerNorm, Linear 4C, GELU, Linear C, residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.up = nn.Linear(c, 4 * c)
        self.down = nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.down(F.gelu(self.up(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class SmallConvNeXt(nn.Module):
    """ConvNeXt's layout (patchify stem, stages of blocks, downsampling convs), small."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 2, 2)
        self.s1 = nn.Sequential(NeXtBlock(32), NeXtBlock(32))
        self.down = nn.Conv2d(32, 64, 2, 2)
        self.s2 = nn.Sequential(NeXtBlock(64), NeXtBlock(64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.s2(self.down(self.s1(self.stem(x)))).mean((2, 3)))


def networks() -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]]:
    """name -> (factory, input shape of one sample, batch size)."""
    sys.path.insert(0, str(HERE))
    from mnist_net import MnistNet

    return {"mnist_cnn": (MnistNet, (1, 28, 28), 64),
            "resnet_small": (SmallResNet, (3, 32, 32), 64),
            "convnext_small": (SmallConvNeXt, (3, 32, 32), 64)}


def measure(name: str, repeats: int, batches: int, keep: bool) -> dict[str, float | bool]:
    """In this process: (plain epoch s, dendrite epoch s, median paired ratio)."""
    import perforate as pf
    from perforate.engine.allocator import keep_cpu_memory

    kept = keep_cpu_memory() if keep else False
    make, shape, batch = networks()[name]
    torch.manual_seed(0)
    data = [(torch.randn(batch, *shape), torch.randint(0, 10, (batch,)))
            for _ in range(batches)]
    plain_net = make()
    plain_opt = torch.optim.Adam(plain_net.parameters(), lr=1e-3)
    model = pf.perforate(make(), pf.PerforationConfig.paper(candidates=K, seed=0))
    model.train()
    model.begin_dendrite_phase()
    cand_opt = model.candidate_optimizer()

    def epoch(net: nn.Module, opt: torch.optim.Optimizer) -> float:
        start = time.perf_counter()
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
        return time.perf_counter() - start

    epoch(plain_net, plain_opt), epoch(model, cand_opt)  # warm-up
    plain, dendrite, ratios = [], [], []
    for _ in range(repeats):
        plain.append(epoch(plain_net, plain_opt))
        dendrite.append(epoch(model, cand_opt))
        ratios.append(dendrite[-1] / plain[-1])
    return {"kept": kept, "plain_s": statistics.median(plain),
            "dendrite_s": statistics.median(dendrite), "ratio": statistics.median(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "allocator.json")
    parser.add_argument("--one", nargs=2, metavar=("NET", "KEEP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:  # a child process: one network, one allocator
        net, keep = args.one
        print(json.dumps(measure(net, args.repeats, args.batches, keep == "1")))
        return
    rows = []
    for net in networks():
        row: dict[str, object] = {"network": net}
        for keep in ("0", "1"):
            out = subprocess.run([sys.executable, __file__, "--one", net, keep, "--repeats",
                                  str(args.repeats), "--batches", str(args.batches),
                                  "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            row["kept" if keep == "1" else "default"] = got
        rows.append(row)
    print(f"dendrite phase (paper(), K = {K}) against a plain epoch; floor {FLOOR:.2f}; "
          f"{args.threads} thread(s), {args.batches} batches of 64, median of {args.repeats}")
    print(f"{'network':16s} {'plain s':>8s} {'default: ratio / floor':>24s} "
          f"{'kept: ratio / floor':>21s}")
    for r in rows:
        d, k = r["default"], r["kept"]
        print(f"{r['network']:16s} {d['plain_s']:8.3f} "  # type: ignore[index]
              f"{d['ratio']:11.2f} / {d['ratio'] / FLOOR:4.2f}      "  # type: ignore[index]
              f"{k['ratio']:9.2f} / {k['ratio'] / FLOOR:4.2f}")  # type: ignore[index]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "candidates": K, "floor": FLOOR, "threads": args.threads, "batches": args.batches,
        "repeats": args.repeats, "torch": torch.__version__, "machine": platform.processor()
        or platform.machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
