"""Cost of dendrites on recurrent layers against PyTorch's fused LSTM / GRU kernel.

Seconds per forward + backward of one batch through the recurrent layer alone (loss: mean of
the squared output sequence), for: the plain fused layer; the wrapper with no dendrite (it
calls the fused kernel); the unrolled Python loop with no dendrite (what every pass with
dendrites or candidates runs); the wrapper with D = 1 (unrolled); and a dendrite-phase batch
with K candidates (D = 0: a recording pass without autograd, the candidates, the autograd pass
with the error tap, the backward and the candidate optimizer step).

Prints a table and writes ``bench/results/rnn_cost.json``.

    python bench/rnn_cost.py [--batch 32] [--steps 32] [--input 32] [--hidden 64] [--layers 2]
                             [--repeats 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import perforate as pf


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(steps: list[Callable[[], None]], repeats: int, device: torch.device) -> list[float]:
    """Median seconds of each step after two warm-up calls; the steps take turns in a new
    random order each round, so that neither the machine's load nor the cache left by the
    previous step favours one of them."""
    for step in steps:
        step()
        step()
    times: list[list[float]] = [[] for _ in steps]
    order = random.Random(0)
    for _ in range(repeats):
        turns = list(zip(steps, times, strict=True))
        order.shuffle(turns)
        for step, acc in turns:
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            acc.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def make_layer(kind: str, args: argparse.Namespace) -> nn.Module:
    cls = nn.LSTM if kind == "LSTM" else nn.GRU
    torch.manual_seed(0)
    return cls(args.input, args.hidden, num_layers=args.layers, batch_first=True)


def time_kind(kind: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    x = torch.randn(args.batch, args.steps, args.input, device=device, requires_grad=True)

    def fwd_bwd(fn: Callable[[torch.Tensor], tuple], after: Callable[[], None] | None = None
                ) -> Callable[[], None]:
        def step() -> None:
            x.grad = None
            fn(x)[0].square().mean().backward()
            if after is not None:
                after()
        return step

    plain = make_layer(kind, args).to(device)
    rows = [(f"fused kernel (nn.{kind})", 0, None, fwd_bwd(plain))]

    def wrapped(dendrites: int) -> pf.PerforatedModel:
        model = pf.perforate(nn.Sequential(make_layer(kind, args)),
                             pf.PerforationConfig.paper(candidates=args.candidates, seed=0))
        layer = model.dendrite_layers()["0"]
        layer.resize(dendrites)
        with torch.no_grad():
            layer.dendrite_weight.normal_(0, 0.05).mul_(layer.input_mask)
            layer.output_weight.normal_(0, 0.01)
        return model.to(device)

    w0 = wrapped(0)
    layer0 = w0.dendrite_layers()["0"]
    rows.append(("wrapper, D = 0 (fused path)", 0, None, fwd_bwd(layer0)))
    rows.append(("unrolled loop, D = 0", 0, None, fwd_bwd(layer0.forward_unrolled)))
    rows.append(("wrapper, D = 1 (unrolled)", 1, None,
                 fwd_bwd(wrapped(1).dendrite_layers()["0"])))
    dp = wrapped(0)
    dp.begin_dendrite_phase()
    opt = dp.candidate_optimizer()
    rows.append((f"dendrite phase, D = 0, K = {args.candidates}", 0, args.candidates,
                 fwd_bwd(dp.dendrite_layers()["0"], opt.step)))

    times = seconds([step for *_, step in rows], args.repeats, device)
    return [{"layer": kind, "path": name, "D": d, "K": k, "seconds": t, "ratio": t / times[0]}
            for (name, d, k, _), t in zip(rows, times, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=32, help="sequence length T")
    parser.add_argument("--input", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20, help="timed batches (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                              "rnn_cost.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = time_kind("LSTM", args, device) + time_kind("GRU", args, device)

    print(f"{args.layers}-layer LSTM / GRU, input {args.input}, hidden {args.hidden}, batch "
          f"{args.batch}, T = {args.steps}, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'layer':5} {'path':34} {'s / fwd+bwd':>12} {'vs fused':>9}")
    for r in rows:
        print(f"{r['layer']:5} {r['path']:34} {r['seconds']:12.5f} {r['ratio']:9.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "rnn_cost", **{k: v for k, v in vars(args).items() if k != "out"},
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows},
        indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
