"""CPU cost of Protocol L (``perforate experiment lm``): seconds per epoch of every network and
arm, and the whole protocol's cost extrapolated from them.

Measures, on one thread, CPU seconds (``time.process_time``: not inflated by other processes
on a shared machine) of a training epoch (`FULL` ``windows`` windows, timed on ``--windows``
and scaled), of one epoch's evaluation (``n_eval`` + ``n_eval_test`` windows) and of the final
full test pass, at D = 0 for every network of the sweep, and at D = 1 for each PB arm on the
PB networks (the default and the m-input and rank-r arms: a neuron epoch; the paper's:
a neuron epoch with a frozen set and a dendrite epoch with K = 4 candidates).

The extrapolation needs how many epochs runs take at each D: ``--rows DIR`` reads pilot rows
(``DIR/<variant>/seed-S__net-N.json``, full schedule). A pilot network's runs take its pilot's
epochs (plain: the restart row's first cycle, the same run); every other run takes
``max_epochs``, an upper bound (runs stop earlier when a cycle does not improve), the PB arms
split between D = 0 and D >= 1 as the pilot of their family was; the paper's arm adds a
dendrite phase at its cap per set. Without rows every run takes ``max_epochs`` at D = 0.
``--cost FILE`` reuses the measurements of an earlier ``--out``.

    python bench/lm_cost.py [--windows 256] [--rows DIR] [--cost FILE] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

import perforate as pf
from perforate.config import PAPER
from perforate_experiments.registry import get_experiment
from perforate_experiments.specs.lm import BATCH_SIZE, CONTEXT, FULL, build_net, lm_loss, parse_net

#: Windows of the full test split (2.6 MB corpus, 5 %, cut every 64 bytes).
TEST_WINDOWS = 2013


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 256, (n, CONTEXT + 1), generator=g)
    return [(w[s:s + BATCH_SIZE, :-1], w[s:s + BATCH_SIZE, 1:])
            for s in range(0, n, BATCH_SIZE)]


def cpu_train(tracker: pf.Tracker, data: list[Any]) -> float:
    model = tracker.perforated
    model.train()
    net, opt = tracker.model, tracker.optimizer
    start = time.process_time()
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        lm_loss(net(x), y).backward()
        opt.step()
        tracker.batch_step()
    return time.process_time() - start


@torch.no_grad()
def cpu_eval(model: torch.nn.Module, data: list[Any]) -> float:
    model.eval()
    start = time.process_time()
    for x, _ in data:
        model(x)
    return time.process_time() - start


def measure(net: str, config: dict[str, Any] | None, windows: int) -> dict[str, float]:
    """CPU seconds per full epoch (train, eval) at D = 0, or at D = 1 with `config` (and a
    dendrite epoch for Cascade-Correlation)."""
    family, width = parse_net(net)
    torch.manual_seed(0)
    model = pf.perforate(build_net(family, width), pf.PerforationConfig(seed=0, **(config or {})))
    tracker = pf.Tracker(model, lambda p: torch.optim.Adam(p, 2e-3),
                         schedule=pf.Schedule(mode="min", neuron_patience=1, max_dendrite_epochs=1))
    train, evals = batches(windows), batches(max(BATCH_SIZE, windows // 4), seed=1)
    scale_train = FULL["windows"] / windows
    scale_eval = (FULL["n_eval"] + FULL["n_eval_test"]) / (len(evals) * BATCH_SIZE)
    out: dict[str, float] = {"params0": model.count_parameters()}
    cpu_train(tracker, train[:2])  # warm-up
    if config is None:
        out["train"] = cpu_train(tracker, train) * scale_train
        out["eval"] = cpu_eval(model, evals) * scale_eval
        out["test_full"] = out["eval"] * TEST_WINDOWS / (FULL["n_eval"] + FULL["n_eval_test"])
        return out
    tracker.step(1.0)
    tracker.step(2.0)  # worse: grow
    if model.phase == "dendrite":
        out["dendrite"] = cpu_train(tracker, train) * scale_train
        tracker.step()  # max_dendrite_epochs=1: install
    out["train"] = cpu_train(tracker, train) * scale_train
    out["eval"] = cpu_eval(model, evals) * scale_eval
    out["params1"] = model.count_parameters()
    return out


def epochs_from_rows(rows_dir: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(net, kind) -> mean epochs over the pilot's rows of that network: "restart" (every
    cycle at D = 0), "plain" (a restart row's first cycle: the same run as the plain network's
    one cycle) and "pb" (epochs at D = 0, at D >= 1 with their mean D, and the sets grown)."""
    acc: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for path in sorted(rows_dir.glob("*/*.json")):
        row = json.loads(path.read_text())
        net, hist = row["options"]["net"], row["history"]
        if row["variant"] == "restart":
            acc[(net, "restart")].append({"d0": len(hist)})
            acc[(net, "plain")].append({"d0": row["architectures"][0]["epochs"]})
            continue
        grown = [h for h in hist if h["phase"] == "neuron" and h["dendrites"]]
        acc[(net, "pb")].append({
            "d0": sum(1 for h in hist if h["phase"] == "neuron" and not h["dendrites"]),
            "d1": len(grown), "mean_d": (sum(h["dendrites"] for h in grown) / len(grown)
                                         if grown else 0.0),
            "sets": len(row["dendrite_phases"])})
    return {k: {f: sum(r[f] for r in v) / len(v) for f in v[0]} for k, v in acc.items()}


def run_epochs(epochs: dict[tuple[str, str], dict[str, float]], net: str,
               kind: str) -> dict[str, float]:
    """Epochs of a run: the pilot's for its own network; otherwise `FULL` ``max_epochs``
    (an upper bound: runs stop earlier when a cycle does not improve), split between D = 0
    and D >= 1 as in the pilot of the same family for the PB arms."""
    cap = FULL["max_epochs"]
    if (net, kind) in epochs:
        return epochs[(net, kind)]
    if kind != "pb":
        return {"d0": cap}
    family = parse_net(net)[0]
    same = [v for (n, k), v in epochs.items() if k == "pb" and parse_net(n)[0] == family]
    if not same:
        return {"d0": cap, "d1": 0, "mean_d": 0, "sets": 0}
    e = same[0]
    grown = e["d1"] / (e["d0"] + e["d1"])
    return {"d0": cap * (1 - grown), "d1": cap * grown, "mean_d": e["mean_d"],
            "sets": e["sets"]}


def run_seconds(cost: dict[str, dict[str, Any]], epochs: dict[tuple[str, str], dict[str, float]],
                variant: str, net: str) -> tuple[float, float]:
    """Modelled CPU seconds of one run (its epochs times their measured costs, and the final
    full test pass) and its number of epochs."""
    base = cost[net]["plain"]
    per0 = base["train"] + base["eval"]
    if variant in ("plain", "restart"):
        n = run_epochs(epochs, net, variant)["d0"]
        return n * per0 + base["test_full"], n
    e = run_epochs(epochs, net, "pb")
    grown = cost[net][variant]
    extra = grown["train"] + grown["eval"] - per0  # one set's extra cost
    # the paper's arm: every set's dendrite phase taken at its cap
    phases = e["sets"] * FULL["max_dendrite_epochs"] if "dendrite" in grown else 0
    seconds = e["d0"] * per0 + e["d1"] * (per0 + e["mean_d"] * extra) \
        + phases * grown.get("dendrite", 0.0) + base["test_full"]
    return seconds, e["d0"] + e["d1"] + phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=256)
    parser.add_argument("--rows", type=Path, help="pilot rows (full schedule) for epoch counts")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--process-seconds", type=float, default=3.0,
                        help="CPU seconds to start a run's process (imports; measured 2.9)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/lm_cost.json"))
    parser.add_argument("--cost", type=Path, help="reuse the measurements of an earlier --out "
                        "(only extrapolate)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    exp = get_experiment("lm")
    arms = {v: exp.option_grid(v) for v in exp.variants}
    configs = {"pb": {}, "pb-m": exp.overrides["pb-m"]["config"],
               "pb-rank": exp.overrides["pb-rank"]["config"], "pb-cc": PAPER}
    d0_nets = sorted({o["net"] for grid in arms.values() for o in grid},
                     key=lambda n: (parse_net(n)[0], parse_net(n)[1]))
    cost: dict[str, dict[str, Any]] = {}
    if args.cost is not None:
        cost = json.loads(args.cost.read_text())["cost"]
    for net in (n for n in d0_nets if n not in cost):
        cost[net] = {"plain": measure(net, None, args.windows)}
        print(f"{net:8s} D=0 {json.dumps({k: round(v, 2) for k, v in cost[net]['plain'].items()})}",
              flush=True)
    for variant, config in configs.items():
        for options in arms[variant]:
            net = options["net"]
            if variant in cost[net]:
                continue
            cost[net][variant] = measure(net, config, args.windows)
            print(f"{net:8s} {variant:7s} D=1 "
                  f"{json.dumps({k: round(v, 2) for k, v in cost[net][variant].items()})}",
                  flush=True)
    epochs = epochs_from_rows(args.rows) if args.rows else {}
    total: dict[str, float] = defaultdict(float)
    n_epochs = n_runs = 0.0
    for variant, grid in arms.items():
        for options in grid:
            net = options["net"]
            seconds, n = run_seconds(cost, epochs, variant, net)
            total[f"{variant} {parse_net(net)[0]}"] += seconds * args.seeds
            n_epochs, n_runs = n_epochs + n * args.seeds, n_runs + args.seeds
    # The model counts the training and evaluation passes only. A run also pays fit's
    # bookkeeping each epoch (the training outputs kept and scored, the sets concatenated, the
    # tracker's snapshots: about the same at every width) and starting its process: the
    # per-epoch part is fitted on the pilot's rows (CPU seconds measured from set-up on).
    measured = predicted = pilot_epochs = 0.0
    for path in sorted(args.rows.glob("*/*.json")) if args.rows else []:
        row = json.loads(path.read_text())
        seconds, n = run_seconds(cost, epochs, row["variant"], row["options"]["net"])
        measured, predicted = measured + row["post"]["cpu_seconds"], predicted + seconds
        pilot_epochs += n
    per_epoch = max(0.0, (measured - predicted) / pilot_epochs) if pilot_epochs else 0.0
    extra = n_epochs * per_epoch + n_runs * args.process_seconds
    print("\nestimated CPU-hours for", args.seeds, "seeds (epochs per run:",
          {" ".join(k): v for k, v in epochs.items()} if epochs
          else f"{FULL['max_epochs']} at D = 0", ")")
    for key, seconds in sorted(total.items()):
        print(f"  {key:14s} {seconds / 3600:6.2f}")
    print(f"  {'passes':14s} {sum(total.values()) / 3600:6.2f}  ({n_runs:.0f} runs, "
          f"{n_epochs:.0f} epochs)")
    print(f"  {'bookkeeping':14s} {extra / 3600:6.2f}  ({per_epoch:.2f} s per epoch from the "
          f"pilot: {measured:.0f} s measured / {predicted:.0f} s modelled; "
          f"{args.process_seconds:.1f} s per process)")
    print(f"  {'total':14s} {(sum(total.values()) + extra) / 3600:6.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"windows": args.windows, "cost": cost,
                                    "epochs": {" ".join(k): v for k, v in epochs.items()},
                                    "cpu_hours": {k: v / 3600 for k, v in total.items()},
                                    "bookkeeping_per_epoch": per_epoch,
                                    "total_cpu_hours": (sum(total.values()) + extra) / 3600,
                                    "threads": 1}, indent=1))


if __name__ == "__main__":
    main()
