"""PB vs the restart control on the digits demo, both forced through 3 cycles.

algorithm.md's prototype protocol forces every run through 3 cycles; this replays that on the
demo's setup (64-32-10 MLP, Adam 1e-3, decisions on -loss) and prints test accuracy after each
cycle, paired by seed. Usage: ``python scripts/digits_forced_cycles.py --seeds 0-5 --out F.json``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import torch

from perforate import demo
from perforate_experiments.runner import parse_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-5")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--out", default="digits_forced_cycles.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = demo.demo_setup("digits", quick=False)
    setup = dataclasses.replace(base, schedule=dataclasses.replace(
        base.schedule, min_dendrites=args.cycles, max_dendrites=args.cycles))
    data = demo.load_data("digits", quick=False)
    scores: dict[str, dict[int, list[float]]] = {"pb": {}, "restart": {}}
    for seed in parse_seeds(args.seeds):
        for arm in scores:
            tracker = demo.run_variant(setup, data, seed=seed, add_dendrites=arm == "pb",
                                       out_dir=None, progress=False)
            scores[arm][seed] = [100 * a["test_accuracy_at_best_val"]
                                 for a in tracker.summary()["architectures"]]
    print("cycle | PB test % | restart test % | PB - restart (points)")
    rows = []
    for c in range(args.cycles + 1):
        pb = [s[c] for s in scores["pb"].values()]
        rs = [s[c] for s in scores["restart"].values()]
        diff = [a - b for a, b in zip(pb, rs, strict=True)]
        rows.append({"cycle": c, "pb": statistics.fmean(pb), "restart": statistics.fmean(rs),
                     "diff_mean": statistics.fmean(diff),
                     "diff_std": statistics.stdev(diff) if len(diff) > 1 else None})
        print(f"{c} | {rows[-1]['pb']:.2f} | {rows[-1]['restart']:.2f} | "
              f"{rows[-1]['diff_mean']:+.2f} ± {rows[-1]['diff_std'] or 0:.2f}")
    with open(args.out, "w") as f:
        json.dump({"per_seed": scores, "per_cycle": rows}, f, indent=1)


if __name__ == "__main__":
    main()
