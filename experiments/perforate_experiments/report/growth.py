"""Growth that keeps no set: how often a run's final model is its first cycle, and why.

A run "kept no set" when its best cycle is cycle 0 (``final_cycle == 0``; rows without
architectures, e.g. the official package's, use ``final_dendrites == 0``): the first growth
did not beat the first cycle's best validation score, training stopped, and the final model is
the network the run started with. For the restart control the same measure counts runs that
kept no restart. Variants that never grow (``plain``, the width controls) are left out.

Per experiment, variant and options (the width ``h``) it gives the runs, the runs that kept no
set, the rate and why (`no_set_cause`: the run never grew, its post-growth cycle was cut by the
epoch cap, or that cycle was judged and lost), and for the first post-growth cycle (cycle 1) of
the runs that kept no set and of those that kept one: its neuron epochs, the epoch of its best
validation score (1-based within the cycle), the gap between that best and the previous best
(points; > 0: it beat it), the score after its first epoch against the previous best (the drop
a growth costs), the slope of the validation score over the cycle's last ``neuron_patience``
epochs (points per epoch; > 0: still rising when the cycle was judged) and, on the same seeds,
whether the restart control's cycle 1 improved. Where a variant and the restart control start
from the same cycle 0 (same seed, same cycle-0 best), it gives their mean validation difference
at each epoch after the growth: how long the new set takes to act at all. Variants named
``X-retry`` / ``X-graceN`` are compared with ``X`` seed by seed (no-set counts, final test:
mean difference in points, paired t-test); a retry arm's rows also give its single-try run
(`single_try`, variant ``X-retry/1try``), the exact baseline of the same code.

Usage: ``python -m perforate_experiments.report.growth results/experiments
[more dirs] --json results/growth_failures.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .rows import (
    CONTROL,
    PLAIN_VARIANTS,
    Row,
    control_of,
    is_plain,
    load_rows,
    options_id,
    variant_sort_key,
)
from .stats import mean_std, paired

#: Variants that never grow: no growth to keep.
NO_GROWTH = tuple(v for v in PLAIN_VARIANTS if v != CONTROL)
#: A variant ``<base>-<suffix>`` with one of these suffixes is paired with ``<base>``.
ALTERNATIVE = re.compile(r"^(?P<base>.+)-(?P<alt>retry|grace\d+)$")
#: Suffix of the rows derived from a retry arm's rows with `single_try`.
SINGLE = "/1try"
#: Epochs after the growth shown in the early-effect comparison with the restart control.
EARLY_EPOCHS = 10
#: The fields of the first post-growth cycle summarised per group.
FIELDS = ("epochs", "best_epoch", "gap", "first_epoch_gap", "tail_slope")


def kept_none(row: Row) -> bool | None:
    """True if the run's final model is its first cycle (None: the row cannot say)."""
    if row.get("final_cycle") is not None:
        return int(row["final_cycle"]) == 0
    if row.get("final_dendrites") is not None:
        return int(row["final_dendrites"]) == 0
    return None


def grows(row: Row) -> bool:
    """True unless the row is a variant without dendrites (a restart control at any budget, a
    width control, the plain network) or ran with ``add_dendrites=False``."""
    return not is_plain(str(row.get("variant"))) and \
        (row.get("tracker") or {}).get("add_dendrites", True)


def _sign(row: Row) -> float:
    """+1 when higher validation scores are better (the tracker's ``mode``), else -1."""
    return -1.0 if (row.get("tracker") or {}).get("mode") == "min" else 1.0


def cycle_vals(row: Row) -> list[list[float]] | None:
    """The validation scores of each neuron cycle, from the history's neuron-phase epochs cut
    by the architectures' epoch counts; None when they do not add up (the best of each piece
    must be its cycle's ``best_val``, or better by at most the tracker's
    ``improvement_threshold``: a smaller gain does not move the recorded best)."""
    archs = row.get("architectures") or []
    vals = [float(h["val"]) for h in row.get("history") or []
            if h.get("phase", "neuron") == "neuron" and h.get("val") is not None]
    out, start = [], 0
    sign = _sign(row)
    threshold = float((row.get("tracker") or {}).get("improvement_threshold") or 0.0)
    for arch in archs:
        n = int(arch.get("epochs") or 0)
        piece = vals[start:start + n]
        if n == 0 or len(piece) != n or arch.get("best_val") is None:
            return None
        excess = max(sign * v for v in piece) - sign * float(arch["best_val"])
        if not -1e-9 <= excess <= threshold + 1e-9:
            return None
        out.append(piece)
        start += n
    return out


def slope(values: Sequence[float]) -> float | None:
    """Least-squares slope per step (None with fewer than 2 values)."""
    if len(values) < 2:
        return None
    return float(np.polyfit(np.arange(len(values), dtype=float), np.asarray(values), 1)[0])


def first_growth(row: Row) -> dict[str, Any] | None:
    """The first post-growth cycle of `row` (see the module docstring), in points; None when
    the run had no cycle 1 or its history does not match its architectures."""
    cycles = cycle_vals(row)
    if cycles is None or len(cycles) < 2:
        return None
    sign = _sign(row)
    archs = row["architectures"]
    prev = float(archs[0]["best_val"])
    vals = cycles[1]
    best = max(range(len(vals)), key=lambda i: (sign * vals[i], -i))
    patience = int((row.get("tracker") or {}).get("neuron_patience")
                   or (row.get("protocol") or {}).get("neuron_patience") or 5)
    tail = slope([100.0 * sign * v for v in vals[-patience:]])
    return {"cycle0_epochs": len(cycles[0]), "epochs": len(vals), "best_epoch": best + 1,
            "gap": 100.0 * sign * (vals[best] - prev),
            "first_epoch_gap": 100.0 * sign * (vals[0] - prev),
            "tail_slope": tail, "rising": tail is not None and tail > 0,
            "improved": bool(archs[1].get("improved"))}


def no_set_cause(row: Row) -> str | None:
    """Why a run kept no set (None when it kept one or cannot say): ``"never grew"`` (cycle 0
    ran to the epoch cap), ``"cut by the cap"`` (a growth came, and the run then reached
    ``max_epochs``: the cycle after it ended there, before the patience rule judged it) or
    ``"judged"`` (the patience rule ended the post-growth cycle and it had not improved)."""
    if not kept_none(row):
        return None
    if len(row.get("architectures") or []) < 2:
        return "never grew"
    cap = (row.get("tracker") or {}).get("max_epochs")
    if cap is not None and int(row.get("epochs") or 0) >= int(cap):
        return "cut by the cap"
    return "judged"


CAUSES = ("never grew", "cut by the cap", "judged")


def single_try(row: Row) -> Row | None:
    """The row the same run would have given with ``dendrite_tries=1``, from a row with more
    tries: a run is the same up to its first cycle that does not improve, where one try stops
    and keeps the best earlier cycle. None for a row without retries (or no cycles).

    Exact when both come from the same code: every stored ``X-retry`` / ``X`` pair of one
    commit in ``results/experiments/frontier`` agrees on the final cycle and test score."""
    archs = row.get("architectures") or []
    tries = (row.get("tracker") or {}).get("dendrite_tries", 1)
    if not archs or not isinstance(tries, int) or tries < 2:
        return None
    failed = next((i for i, a in enumerate(archs) if i and a.get("improved") is False), None)
    if failed is None:
        return {**row, "variant": f"{row.get('variant')}{SINGLE}"}
    best = max(i for i in range(failed) if archs[i].get("improved"))
    kept = archs[:failed + 1]
    n = sum(int(a["epochs"]) for a in kept)
    history, seen = [], 0
    for h in row.get("history") or []:
        if seen == n:
            break
        history.append(h)
        seen += h.get("phase", "neuron") == "neuron"
    return {**row, "variant": f"{row.get('variant')}{SINGLE}", "architectures": kept,
            "history": history, "final_cycle": best, "final_test": archs[best].get("test"),
            "final_dendrites": archs[best].get("dendrites"),
            "tracker": {**row["tracker"], "dendrite_tries": 1}}


def retries(row: Row) -> list[dict[str, Any]]:
    """Cycles that did not improve yet were followed by another cycle (a retry, or a forced
    growth): which cycle failed and whether the next one improved."""
    archs = row.get("architectures") or []
    return [{"failed_cycle": int(a["cycle"]), "rescued": bool(archs[i + 1].get("improved"))}
            for i, a in enumerate(archs[:-1]) if a.get("improved") is False]


def _summary(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, sample std and the values of each of `FIELDS` over `items`, and the rising count."""
    out: dict[str, Any] = {"n": len(items), "rising": sum(bool(i["rising"]) for i in items)}
    for name in FIELDS:
        values = [float(i[name]) for i in items if i.get(name) is not None]
        mean, std = mean_std(values)
        out[name] = {"mean": mean, "std": std, "values": values}
    return out


def _key(row: Row) -> tuple[str, str]:
    return str(row.get("experiment")), options_id(row.get("options") or {})


def early_effect(rows: Sequence[Row], control: Sequence[Row],
                 epochs: int = EARLY_EPOCHS) -> dict[str, Any]:
    """Mean (and mean absolute) difference in validation points, variant minus the restart
    control, at each of the first `epochs` epochs after the first growth, over the seeds where
    both have a cycle 1 of that length and the same cycle 0 (same length and best)."""
    by_seed = {r.get("seed"): r for r in control}
    diffs: list[list[float]] = [[] for _ in range(epochs)]
    seeds = []
    for row in rows:
        other = by_seed.get(row.get("seed"))
        mine, theirs = cycle_vals(row), cycle_vals(other) if other else None
        if not mine or not theirs or len(mine) < 2 or len(theirs) < 2 or mine[0] != theirs[0]:
            continue
        seeds.append(row.get("seed"))
        sign = _sign(row)
        for k, (a, b) in enumerate(zip(mine[1][:epochs], theirs[1][:epochs], strict=False)):
            diffs[k].append(100.0 * sign * (a - b))
    return {"seeds": sorted(seeds),
            "mean": [float(np.mean(d)) if d else None for d in diffs],
            "mean_abs": [float(np.mean(np.abs(d))) if d else None for d in diffs],
            "n": [len(d) for d in diffs]}


def analyse_group(rows: Sequence[Row], control: Sequence[Row]) -> dict[str, Any]:
    """The numbers of one (experiment, variant, options) group; `control`: the restart
    control's rows of the same experiment and options."""
    flags = [(r, kept_none(r)) for r in rows]
    judged = [(r, f) for r, f in flags if f is not None]
    none_rows = [r for r, f in judged if f]
    kept_rows = [r for r, f in judged if not f]
    restart = {r.get("seed"): r for r in control}

    def detail(group: list[Row]) -> dict[str, Any]:
        growth = [g for g in map(first_growth, group) if g is not None]
        restart_ok = [bool(restart[r["seed"]]["architectures"][1].get("improved"))
                      for r in group if r.get("seed") in restart
                      and len(restart[r["seed"]].get("architectures") or []) > 1]
        return {"seeds": sorted(r.get("seed") for r in group), **_summary(growth),
                "restart_cycle1_improved": sum(restart_ok), "restart_compared": len(restart_ok)}

    tries = [t for r in rows for t in retries(r)]
    causes = [no_set_cause(r) for r in none_rows]
    return {
        "runs": len(judged), "kept_none": len(none_rows),
        "rate": len(none_rows) / len(judged) if judged else None,
        "causes": {cause: causes.count(cause) for cause in CAUSES},
        "no_set": detail(none_rows), "kept": detail(kept_rows),
        "failed_cycles_followed": len(tries), "rescued": sum(t["rescued"] for t in tries),
        "early_effect": early_effect(rows, control) if control and grows(rows[0]) else None,
    }


def compare(base: Sequence[Row], alt: Sequence[Row]) -> dict[str, Any]:
    """`alt` against `base` on the seeds both have: no-set counts and the paired final test."""
    seeds = {r.get("seed") for r in base} & {r.get("seed") for r in alt}
    b = [r for r in base if r.get("seed") in seeds]
    a = [r for r in alt if r.get("seed") in seeds]
    p = paired(a, b)
    return {"seeds": sorted(seeds), "base_kept_none": sum(bool(kept_none(r)) for r in b),
            "alt_kept_none": sum(bool(kept_none(r)) for r in a), "n": p.n,
            "mean_diff_points": p.mean, "std_points": p.std, "better": p.better,
            "worse": p.worse, "t_p": p.t_p}


def bases_of(variant: str, present: Iterable[str]) -> list[str]:
    """What `variant` is compared with: ``X`` for ``X-retry`` / ``X-graceN``; also, for
    ``X-retry``, its own single-try rows (``X-retry/1try``: the retry's exact effect), and for
    ``X-graceN`` without ``X``, ``X-retry/1try`` (the same runs with one try)."""
    match = ALTERNATIVE.match(variant)
    if not match:
        return []
    present = set(present)
    retry_single = f"{match['base']}-retry{SINGLE}"
    out = [match["base"]] if match["base"] in present else []
    if retry_single in present and (match["alt"] == "retry" or not out):
        out.append(retry_single)
    return out


def analyse(rows: Iterable[Row]) -> dict[str, Any]:
    """Every group (`analyse_group`) and every ``X-retry`` / ``X-graceN`` vs ``X`` comparison,
    per options and pooled over them."""
    groups: dict[tuple[str, str], dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get("variant") in NO_GROWTH or row.get("quick"):
            continue
        groups[_key(row)][str(row["variant"])].append(row)
        derived = single_try(row)
        if derived is not None:
            groups[_key(row)][str(derived["variant"])].append(derived)
    out_groups, comparisons = [], []
    pooled: dict[tuple[str, str, str], tuple[list[Row], list[Row]]] = {}
    for (experiment, opts) in sorted(groups):
        variants = groups[(experiment, opts)]
        for variant in sorted(variants, key=variant_sort_key):
            control = variants.get(control_of(variant), [])
            out_groups.append({"experiment": experiment, "variant": variant,
                               "options": json.loads(opts),
                               **analyse_group(variants[variant], control)})
            for base_name in bases_of(variant, variants):
                base = variants[base_name]
                comparisons.append({"experiment": experiment, "base": base_name,
                                    "alt": variant, "options": json.loads(opts),
                                    **compare(base, variants[variant])})
                acc = pooled.setdefault((experiment, base_name, variant), ([], []))
                seeds = {r.get("seed") for r in variants[variant]}
                acc[0].extend(r for r in base if r.get("seed") in seeds)
                acc[1].extend(variants[variant])
    for (experiment, base_name, alt_name), (base, alt) in sorted(pooled.items()):
        # pooled over options: pair by (options, seed)
        def tag(rs: list[Row]) -> list[Row]:
            return [{**r, "seed": (options_id(r.get("options") or {}), r.get("seed"))}
                    for r in rs]
        result = compare(tag(base), tag(alt))
        result["seeds"] = len(result["seeds"])
        comparisons.append({"experiment": experiment, "base": base_name, "alt": alt_name,
                            "options": "pooled", **result})
    return {"groups": out_groups, "comparisons": comparisons}


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def render(result: Mapping[str, Any]) -> str:
    """The analysis as plain-text tables."""
    lines = ["experiment   variant                  options   runs none  rate nvr/cap/jdg | "
             "no set: ep  best  gap   ep1gap slope rise rstOK | "
             "kept: ep  best  gap   ep1gap rise | retried rescued"]
    for g in result["groups"]:
        ns, kp = g["no_set"], g["kept"]
        lines.append(
            f"{g['experiment']:<12} {g['variant']:<24} {_opts(g['options']):<9} "
            f"{g['runs']:>4} {g['kept_none']:>4} {_fmt(g['rate'], '5.0%')} "
            f"{'/'.join(str(g['causes'][c]) for c in CAUSES):>11} | "
            f"{_fmt(ns['epochs']['mean'], '4.1f')} {_fmt(ns['best_epoch']['mean'], '4.1f')} "
            f"{_fmt(ns['gap']['mean'], '+5.2f')} {_fmt(ns['first_epoch_gap']['mean'], '+5.2f')} "
            f"{_fmt(ns['tail_slope']['mean'], '+5.2f')} {ns['rising']:>2}/{ns['n']:<2} "
            f"{ns['restart_cycle1_improved']}/{ns['restart_compared']} | "
            f"{_fmt(kp['epochs']['mean'], '4.1f')} {_fmt(kp['best_epoch']['mean'], '4.1f')} "
            f"{_fmt(kp['gap']['mean'], '+5.2f')} {_fmt(kp['first_epoch_gap']['mean'], '+5.2f')} "
            f"{kp['rising']:>2}/{kp['n']:<2} | {g['failed_cycles_followed']:>3} {g['rescued']:>3}")
    lines += ["", "early effect (variant - restart, val points, epochs 1.. after the first "
              "growth; mean |diff|):"]
    for g in result["groups"]:
        e = g.get("early_effect")
        if e and e["seeds"]:
            lines.append(f"{g['experiment']:<12} {g['variant']:<24} {_opts(g['options']):<9} "
                         + " ".join(_fmt(v, "4.2f") for v in e["mean_abs"]))
    lines += ["", "paired comparisons (alt - base, final test points):"]
    for c in result["comparisons"]:
        lines.append(f"{c['experiment']:<12} {c['alt']:<18} vs {c['base']:<14} "
                     f"{_opts(c['options']):<9} n={c['n']:<3} no set {c['base_kept_none']}"
                     f" -> {c['alt_kept_none']}  diff {_fmt(c['mean_diff_points'], '+.2f')}"
                     f" ± {_fmt(c['std_points'], '.2f')}  t-test p {_fmt(c['t_p'], '.3f')}")
    return "\n".join(lines)


def _opts(options: Any) -> str:
    if isinstance(options, str):
        return options
    return ",".join(f"{k}={v}" for k, v in sorted(options.items())) or "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", metavar="DIR",
                        help="results directories (DIR/<experiment>/<variant>/*.json)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers here")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    for folder in args.results:
        rows += load_rows(folder)[0]
    result = analyse(rows)
    print(render(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
