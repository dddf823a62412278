"""CPU tanh: PyTorch's kernel against the form the dendrites use, ``2 sigmoid(2x) - 1``
(`perforate.engine.activations.tanh_of_half_`), float32, one thread, median of timed blocks.

Prints a table and writes ``bench/results/tanh_form.json``.

    python bench/tanh_form.py [--threads 1] [--out bench/results/tanh_form.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

from perforate.engine.activations import tanh_of_half_

SHAPES = ((256, 4096), (64, 128, 14, 14))


def median_ms(stmt: str, x: torch.Tensor) -> float:
    timer = Timer(stmt, globals={"torch": torch, "x": x, "tanh_of_half_": tanh_of_half_})
    return timer.blocked_autorange(min_run_time=2).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/tanh_form.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'shape':<20} {'torch.tanh ms':>14} {'form ms':>9} {'speed-up':>9}")
    for shape in SHAPES:
        x = torch.randn(*shape)
        kernel, form = median_ms("torch.tanh(x)", x), median_ms("tanh_of_half_(x.mul(2))", x)
        rows.append({"shape": list(shape), "tanh_ms": kernel, "form_ms": form,
                     "speedup": kernel / form})
        print(f"{shape!s:<20} {kernel:>14.3f} {form:>9.3f} {kernel / form:>8.2f}x")
    capability = torch.backends.cpu.get_cpu_capability()
    out = {"benchmark": "tanh_form", "threads": args.threads, "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "capability": capability,
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
