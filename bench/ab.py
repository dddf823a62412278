"""Time epoch phases of two perforate source trees in alternation (A B A B ...), medians.

On a shared or loaded machine, load drifts over minutes; alternating the two trees epoch by
epoch gives both the same load, so their ratio holds where their absolute times do not.
Each tree runs in its own long-lived worker process (PYTHONPATH=<tree>), on the network and
data of `epoch_cost.py`; the parent asks each in turn to time one epoch.

    python bench/ab.py --a /tmp/old/src --b src [--phases neuron:0,neuron:3,dendrite:4]
                       (phases: neuron = frozen sets, default, trained = perforated, dendrite)
        [--rounds 5] [--samples 1024] [--threads 1] [--out bench/results/ab.json]

Make an old tree with ``git archive <commit> src | tar -x -C /tmp/old``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker() -> None:
    """Read ``phase D K`` lines; print the seconds of one timed epoch for each."""
    import torch

    sys.path.insert(0, str(HERE))
    from epoch_cost import DEFAULT, load_data, time_phase

    configs = {"neuron": {}, "dendrite": {}, "default": DEFAULT,  # the default: trained sets
               "trained": {**DEFAULT, "perforated": True}}  # trained, perforated

    args = argparse.Namespace(batch=int(os.environ["AB_BATCH"]), repeats=1)
    x, y, _ = load_data(int(os.environ["AB_SAMPLES"]))
    device = torch.device("cpu")
    print("ready", flush=True)
    for line in sys.stdin:
        phase, d, k = line.split()
        k_ = int(k) if phase == "dendrite" else None
        seconds = time_phase(int(d), k_, x, y, args, device, **configs[phase])
        print(seconds, flush=True)


def start(src: str, args: argparse.Namespace) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src), OMP_NUM_THREADS=str(args.threads),
               AB_BATCH=str(args.batch), AB_SAMPLES=str(args.samples))
    proc = subprocess.Popen([sys.executable, __file__, "--worker"], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the worker for {src} did not start")
    return proc


def ask(proc: subprocess.Popen, phase: str, d: int, k: int) -> float:
    proc.stdin.write(f"{phase} {d} {k}\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--a", help="source tree A (the baseline): a folder holding perforate/")
    parser.add_argument("--b", help="source tree B")
    parser.add_argument("--phases", default="neuron:0,neuron:3,dendrite:4",
                        help="neuron:D (D frozen sets), default:D (the default's trained "
                        "sets), trained:D (trained, perforated), dendrite:K (K candidates)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results" / "ab.json"))
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    if not (args.a and args.b):
        parser.error("--a and --b are required")
    phases = []
    for item in args.phases.split(","):
        phase, n = item.split(":")
        phases.append((phase, n))
    procs = {"A": start(args.a, args), "B": start(args.b, args)}
    times: dict[str, dict[str, list[float]]] = {f"{p}:{n}": {"A": [], "B": []}
                                                for p, n in phases}
    try:
        for r in range(args.rounds):
            for phase, n in phases:
                d, k = (0, int(n)) if phase == "dendrite" else (int(n), 0)
                order = ("A", "B") if r % 2 == 0 else ("B", "A")
                for side in order:
                    times[f"{phase}:{n}"][side].append(ask(procs[side], phase, d, k))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    rows = []
    print(f"{'phase':14} {'A s/epoch':>10} {'B s/epoch':>10} {'B/A':>6}  (median of {args.rounds}, "
          f"{args.samples} images, {args.threads} thread(s))")
    for name, t in times.items():
        a, b = statistics.median(t["A"]), statistics.median(t["B"])
        ratios = [tb / ta for ta, tb in zip(t["A"], t["B"], strict=True)]
        rows.append({"phase": name, "a_seconds": a, "b_seconds": b,
                     "b_over_a_median_of_pairs": statistics.median(ratios), "a": t["A"],
                     "b": t["B"]})
        print(f"{name:14} {a:10.3f} {b:10.3f} {statistics.median(ratios):6.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "ab", "a": args.a, "b": args.b,
                               "samples": args.samples, "batch": args.batch,
                               "threads": args.threads, "rounds": args.rounds,
                               "loadavg_at_end": os.getloadavg(), "phases": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
