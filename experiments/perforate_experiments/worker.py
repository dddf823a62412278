"""One run in its own process: ``python -m perforate_experiments.worker NAME VARIANT SEED``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from .registry import get_experiment
from .runner import failure_path, read_result, result_path, write_json_atomic
from .train import git_commit, hardware, run_one


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perforate-worker")
    parser.add_argument("experiment")
    parser.add_argument("variant")
    parser.add_argument("seed", type=int)
    parser.add_argument("--out", default="runs")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine 2 threads were up "
                        "to 50x slower; run two sweeps side by side instead)")
    args = parser.parse_args(argv)
    # Process-wide CPU settings of an experiment run: subnormal floats (saturated gates) made
    # some epochs up to 20x slower; flushing them to zero does not change the results' scale.
    torch.set_flush_denormal(True)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = {k: _value(v) for k, _, v in (o.partition("=") for o in args.option)}
    out = Path(args.out)
    exp = get_experiment(args.experiment)

    def lookup(variant: str, seed: int) -> dict:
        path = result_path(out, exp.name, variant, seed, options, args.quick)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run variant {variant!r} first")
        return read_result(path)

    path = result_path(out, exp.name, args.variant, args.seed, options, args.quick)
    try:
        row = run_one(exp, args.variant, args.seed, quick=args.quick, options=options,
                      lookup=lookup, device=args.device)
    except Exception as exc:
        # Keep the failure on disk for the report (a diverged run is a result too); the
        # runner does not skip it, so a resumed sweep tries again.
        write_json_atomic(failure_path(path), {
            "experiment": exp.name, "variant": args.variant, "seed": args.seed,
            "quick": args.quick, "options": options, "error": f"{type(exc).__name__}: {exc}",
            "git_commit": git_commit(), "hardware": hardware()})
        raise
    write_json_atomic(path, row)
    failure_path(path).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
