"""Side by side with `perforatedai` 3.2.9 (PyPI, open): speed and footprint in one run.

On the PyTorch MNIST-example CNN with random data, batch 64, each library with its defaults:
seconds per neuron-phase epoch at D = 0..3 dendrite sets (forced additions), the per-epoch
tracker call (theirs `add_validation_score`, ours `Tracker.step`, each with its default file
writing), peak RSS, checkpoint size at D = 3, and our dendrite-phase epoch (a phase they do
not have). Each library runs in its own long-lived worker process (perforatedai in
``bench/.venv-anchor``, in a fresh working directory, since it writes ``./<save_name>/`` and
reads its settings back from there); the parent asks them in alternation, A B A B, and takes
medians. Prints two tables and writes ``bench/results/vs_perforatedai.json``.

    make bench-anchor          # creates bench/.venv-anchor, then runs this script
    python bench/vs_perforatedai.py [--samples 1024] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHOR_PYTHON = HERE / ".venv-anchor" / "bin" / "python"
PREFIX = "@@ "  # marks the workers' answers; anything else they print goes to the log


# ------------------------------------------------------------------------------- workers
def random_data(samples: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    return (torch.randn(samples, 1, 28, 28, generator=g),
            torch.randint(0, 10, (samples,), generator=g))


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def state_dict_bytes(model: Any) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


class Ours:
    """perforate: D sets installed directly (random weights), Adadelta as in `epoch_cost`;
    the library's defaults (`PerforationConfig()`: sets trained with the network, like
    theirs), and the paper's configuration for the dendrite-phase epoch the defaults lack."""

    name = "perforate"

    def __init__(self, samples: int, batch: int) -> None:
        import torch
        from epoch_cost import DEFAULT, model_with

        import perforate as pf

        self.pf, self.torch, self.model_with = pf, torch, model_with
        self.defaults = DEFAULT  # the fields by which PerforationConfig() differs from paper()
        self.x, self.y = random_data(samples)
        self.batch, self.d, self.calls = batch, 0, 0
        self.tmp = Path(tempfile.mkdtemp(prefix="perforate-bench-"))
        self._build()
        self.phase_models: dict[str, tuple[Any, Any]] = {}

    def _build(self) -> None:
        torch = self.torch
        self.model = self.model_with(self.d, torch.device("cpu"), **self.defaults)
        self.model.train()
        self.opt = torch.optim.Adadelta(self.model.parameters(), lr=1.0)
        self.controller = self.pf.Tracker(self.model, lambda p: torch.optim.Adadelta(p, lr=1.0),
                                          schedule=self.pf.Schedule(neuron_patience=10**6))

    def grow(self) -> dict:
        self.d += 1
        self._build()
        return {"dendrites": self.d, "params": self.model.count_parameters()}

    def epoch(self) -> float:
        from mnist_net import run_epoch

        return run_epoch(self.model, self.opt, self.x, self.y, self.batch,
                         self.torch.device("cpu"))

    def tracker(self) -> float:
        self.calls += 1
        start = time.perf_counter()
        self.controller.step(float(self.calls // 2))  # a new best every other epoch
        return time.perf_counter() - start

    def checkpoint(self) -> dict:
        folder = self.model.save_pretrained(self.tmp / f"d{self.d}")
        return {"save_pretrained_bytes": dir_bytes(Path(folder)),
                "state_dict_bytes": state_dict_bytes(self.model)}

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def phase_epoch(self, phase: str) -> float:
        """One epoch of a D = 0 model in the neuron or the dendrite phase (K = 4, the
        paper's configuration: the defaults have no dendrite phase)."""
        from mnist_net import run_epoch

        torch, cpu = self.torch, self.torch.device("cpu")
        if phase not in self.phase_models:
            model = self.model_with(0, cpu)
            model.train()
            if phase == "dendrite":
                model.begin_dendrite_phase()
                opt = model.candidate_optimizer()
            else:
                opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
            run_epoch(model, opt, self.x[:3 * self.batch], self.y[:3 * self.batch], self.batch,
                      cpu)  # warm up
            self.phase_models[phase] = (model, opt)
        model, opt = self.phase_models[phase]
        seconds = run_epoch(model, opt, self.x, self.y, self.batch, cpu)
        if phase == "dendrite":
            model.end_epoch()
        return seconds


class Theirs:
    """perforatedai 3.2.9: its documented workflow; sets added by forced switches."""

    name = "perforatedai"

    def __init__(self, samples: int, batch: int) -> None:
        import torch
        from mnist_net import MnistNet
        from perforatedai import globals_perforatedai as GPA
        from perforatedai import utils_perforatedai as UPA

        GPA.pc.set_configuration_confirmed(True)  # else a prompt, or a RuntimeError
        GPA.pc.set_testing_dendrite_capacity(False)  # else a test mode adds a set every epoch
        GPA.pc.set_n_epochs_to_switch(10**6)  # only the forced switches below add sets
        self.GPA, self.torch = GPA, torch
        self.x, self.y = random_data(samples)
        self.batch, self.d, self.calls = batch, 0, 0
        torch.manual_seed(0)
        self.model = UPA.perforate_model(MnistNet(), save_name="bench", maximizing_score=True)
        GPA.pai_tracker.set_optimizer(torch.optim.Adadelta)
        self._optimizer()

    def _optimizer(self) -> None:
        self.model.train()
        self.opt, _ = self.GPA.pai_tracker.setup_optimizer(
            self.model, {"params": self.model.parameters(), "lr": 1.0}, {})

    def _score(self) -> float:
        self.calls += 1
        return 1e-3 * (self.calls // 2)  # a new best every other epoch

    def grow(self) -> dict:
        model, restructured, _ = self.GPA.pai_tracker.add_validation_score(
            self._score(), self.model, force_switch=True)
        if not restructured:
            raise RuntimeError("perforatedai did not add a dendrite set on a forced switch")
        self.model, self.d = model, self.d + 1
        self._optimizer()
        return {"dendrites": self.d,
                "params": sum(p.numel() for p in self.model.parameters())}

    def epoch(self) -> float:
        from mnist_net import run_epoch

        return run_epoch(self.model, self.opt, self.x, self.y, self.batch,
                         self.torch.device("cpu"))

    def tracker(self) -> float:
        score = self._score()
        start = time.perf_counter()
        model, restructured, _ = self.GPA.pai_tracker.add_validation_score(score, self.model)
        seconds = time.perf_counter() - start
        if restructured:
            raise RuntimeError("perforatedai restructured the model on a timed tracker call")
        self.model = model
        return seconds

    def checkpoint(self) -> dict:
        folder = Path("bench")
        files = {f.name: f.stat().st_size for f in folder.glob("*.pt")}
        return {"state_dict_bytes": state_dict_bytes(self.model),
                "latest_pt_bytes": files.get("latest.pt"),
                "best_model_pt_bytes": files.get("best_model.pt"),
                "save_folder_bytes": dir_bytes(folder)}

    def cleanup(self) -> None:
        """Delete the package's save folder (in this worker's own run directory)."""
        shutil.rmtree(Path.cwd() / "bench", ignore_errors=True)


def worker(which: str, samples: int, batch: int) -> None:
    """Answer JSON commands from stdin on the original stdout; library chatter goes to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.path.insert(0, str(HERE))
    import torch

    lib = (Ours if which == "ours" else Theirs)(samples, batch)
    out.write(PREFIX + json.dumps({"ready": True, "torch": torch.__version__,
                                   "threads": torch.get_num_threads()}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "rss":
            answer: Any = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        elif op == "phase_epoch":
            answer = lib.phase_epoch(cmd["phase"])
        else:
            answer = getattr(lib, op)()
        sys.stdout.flush()
        out.write(PREFIX + json.dumps(answer) + "\n")
    lib.cleanup()


# -------------------------------------------------------------------------------- parent
class Worker:
    def __init__(self, which: str, python: str, args: argparse.Namespace, cwd: Path,
                 log: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                   PYTHONPATH=str(ROOT / "src") if which == "ours" else "")
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", which, "--samples",
             str(args.samples), "--batch", str(args.batch)],
            cwd=cwd, env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log)
        self.info = self._read()

    def _read(self) -> Any:
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])
        raise RuntimeError(f"a benchmark worker died; see {self.log.name}")

    def ask(self, op: str, **kw: Any) -> Any:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.log.close()


def alternate(workers: dict[str, Worker], rounds: int, op: str, **kw: Any) -> dict:
    """`rounds` answers of each worker to `op`, in the order A B, B A, A B, ..."""
    names = list(workers)
    got: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            got[n].append(workers[n].ask(op, **kw))
    return got


def med(v: list[float]) -> float:
    return statistics.median(v)


def paired(a: list[float], b: list[float]) -> float:
    """Median of the ratios a[i] / b[i] of the alternated pairs: steadier than the ratio of
    medians when the machine's load drifts."""
    return med([x / y for x, y in zip(a, b, strict=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=1024, help="random images per epoch")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per library and D")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--anchor-python", default=str(ANCHOR_PYTHON))
    parser.add_argument("--out", default=str(HERE / "results" / "vs_perforatedai.json"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.samples, args.batch)
        return
    if not Path(args.anchor_python).exists():
        parser.error(f"{args.anchor_python} not found: run `make bench-anchor`")

    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()
    run_dir = Path(tempfile.mkdtemp(prefix="vs-perforatedai-"))
    (run_dir / "theirs").mkdir()
    workers = {"perforate": Worker("ours", sys.executable, args, ROOT, run_dir / "ours.log"),
               "perforatedai": Worker("theirs", args.anchor_python, args, run_dir / "theirs",
                                      run_dir / "theirs.log")}
    result: dict[str, Any] = {"neuron_epochs": [], "tracker_calls": []}
    try:
        for d in range(4):
            if d:
                grown = {n: w.ask("grow") for n, w in workers.items()}
                if any(g["dendrites"] != d for g in grown.values()):
                    raise RuntimeError(f"expected {d} dendrite sets, got {grown}")
            params = {n: g["params"] for n, g in grown.items()} if d else {}
            alternate(workers, 1, "epoch")  # warm up
            t = alternate(workers, args.rounds, "epoch")
            result["neuron_epochs"].append({
                "D": d, "params": params, "seconds": t,
                "median": {n: med(v) for n, v in t.items()},
                "paired_ratio": paired(t["perforate"], t["perforatedai"])})
            c = alternate(workers, args.rounds, "tracker")
            result["tracker_calls"].append({"D": d, "seconds": c,
                                            "median": {n: med(v) for n, v in c.items()}})
        result["checkpoint_d3"] = {n: w.ask("checkpoint") for n, w in workers.items()}
        result["peak_rss_bytes"] = {n: w.ask("rss") for n, w in workers.items()}
        ours = {"perforate": workers["perforate"]}
        plain, dendrite = [], []
        for _ in range(args.rounds):
            plain += alternate(ours, 1, "phase_epoch", phase="neuron")["perforate"]
            dendrite += alternate(ours, 1, "phase_epoch", phase="dendrite")["perforate"]
        result["our_dendrite_epoch"] = {"K": 4, "plain_seconds": plain,
                                        "dendrite_seconds": dendrite,
                                        "ratio": med(dendrite) / med(plain),
                                        "paired_ratio": paired(dendrite, plain)}
    finally:
        for w in workers.values():
            w.close()

    result.update({
        "benchmark": "vs_perforatedai", "date": started.isoformat(timespec="seconds"),
        "network": "PyTorch MNIST-example CNN", "data": "random", "samples": args.samples,
        "batch": args.batch, "rounds": args.rounds, "threads": args.threads,
        "versions": {n: w.info for n, w in workers.items()},
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "loadavg": {"start": load_start, "end": os.getloadavg()}, "logs": str(run_dir)})
    report(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


def report(r: dict) -> None:
    print(f"MNIST-example CNN, {r['samples']} random images/epoch, batch {r['batch']}, "
          f"{r['threads']} thread(s), median of {r['rounds']} (alternated)")
    print(f"{'D':>2} {'perforate s':>12} {'perforatedai s':>15} {'ours/theirs':>12} "
          f"{'(paired)':>9} {'tracker ours ms':>16} {'tracker theirs ms':>18}")
    for e, c in zip(r["neuron_epochs"], r["tracker_calls"], strict=True):
        m, cm = e["median"], c["median"]
        print(f"{e['D']:>2} {m['perforate']:12.3f} {m['perforatedai']:15.3f} "
              f"{m['perforate'] / m['perforatedai']:12.2f} {e['paired_ratio']:9.2f} "
              f"{1e3 * cm['perforate']:16.2f} {1e3 * cm['perforatedai']:18.1f}")
    rss = r["peak_rss_bytes"]
    print(f"peak RSS: perforate {rss['perforate'] / 2**20:.0f} MiB, perforatedai "
          f"{rss['perforatedai'] / 2**20:.0f} MiB")
    ck = r["checkpoint_d3"]
    print(f"checkpoint at D=3: perforate save_pretrained "
          f"{ck['perforate']['save_pretrained_bytes'] / 1e6:.1f} MB (state_dict "
          f"{ck['perforate']['state_dict_bytes'] / 1e6:.1f} MB); perforatedai latest.pt "
          f"{(ck['perforatedai']['latest_pt_bytes'] or 0) / 1e6:.1f} MB (state_dict "
          f"{ck['perforatedai']['state_dict_bytes'] / 1e6:.1f} MB)")
    print(f"perforatedai wrote {ck['perforatedai']['save_folder_bytes'] / 1e6:.0f} MB to its "
          "save folder over the run (checkpoints at every switch and best score, graphs)")
    de = r["our_dendrite_epoch"]
    print(f"our dendrite-phase epoch (K={de['K']}): {med(de['dendrite_seconds']):.3f} s = "
          f"{de['ratio']:.2f}x our plain epoch ({med(de['plain_seconds']):.3f} s; paired "
          f"{de['paired_ratio']:.2f}x)")


if __name__ == "__main__":
    main()
