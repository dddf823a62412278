"""``perforate report DIR``: one Markdown results page (plus PNGs) from a sweep's result rows.

Reads every ``DIR/<experiment>[-quick]/<variant>/seed-<S>[__k-v...].json`` row written by
:func:`perforate_experiments.train.run_one` (``*-quick`` folders only with
``include_quick=True``) and writes, per experiment and options combination, a table of every
variant with paired comparisons against the **restart control on the same seeds** (algorithm.md,
"Controls every accuracy claim needs"), a plain verdict on PB vs the restart and width
controls, and the figures of the paper it reproduces (Figure 7 boxes for the ablation,
parameters vs AUC for PhysioNet, per-seed first vs final for the others).

The page is deterministic: the same rows give the same bytes (no timestamps; fixed variant
order; fixed number formats). Scores are shown as percentages with 2 decimals and paired
differences in percentage points.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perforate.atomic import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

#: Display order of variants (unknown ones follow, sorted by name).
VARIANT_ORDER = ("pb", "pb-paper", "pb-head", "pb-backbone", "cc-no-perf", "gd", "restart",
                 "width")
#: Experiments the page always lists (a missing one is "not run yet"); others follow, sorted.
KNOWN_EXPERIMENTS = ("fashion-mnist", "ablation", "tox21", "physionet", "timing")
DESCRIPTIONS = {
    "fashion-mnist": "the paper's EMNIST network (PyTorch MNIST-example CNN) on Fashion-MNIST",
    "ablation": "the paper's Figure 7 ablation: which parts of PB matter",
    "tox21": "molecular property prediction on Tox21 (the paper's drug-discovery experiment)",
    "physionet": "compression study on PhysioNet 2012 mortality (the paper's Figures 10-11)",
    "timing": "training and inference cost of dendrites",
}
#: What the paper reports for each experiment, shown beside our numbers.
PAPER = {
    "fashion-mnist": "EMNIST-Balanced, the same network: the paper reports a lower test error "
                     "after dendrite cycles than after the first cycle (Figure 6), with no "
                     "restart or width control.",
    "ablation": "Figure 7: error reduction of PB, PB only head, PB only backbone, CC without "
                "perforation and GD dendrites; PB is best, GD dendrites worst.",
    "tox21": "TrimNet 0.789 → 0.822 test ROC-AUC on average (13.6% closer to 1.0).",
    "physionet": "Net 0.125 + 3 dendrites beats Net 1 by 2.7% AUC at under 1/10 of its size "
                 "(Figures 10-11).",
    "timing": "Table 2: seconds per epoch and per cycle, total training time and inference "
              "speed with dendrites.",
}
CONTROL = "restart"
PB = "pb"
#: Variants that are no PB model (no PB points in the parameters-vs-score figure).
PLAIN_VARIANTS = ("restart", "width")
#: Significance level of the "beat" verdict (paired t-test, two-sided).
ALPHA = 0.05
NA = "n/a"

Row = dict[str, Any]


# --------------------------------------------------------------------------- loading rows


def load_rows(results_dir: str | Path, include_quick: bool = False) -> tuple[list[Row], int]:
    """Every result row under `results_dir`, and how many rows of ``*-quick`` folders were
    skipped. Unreadable files are logged and skipped."""
    root = Path(results_dir)
    rows: list[Row] = []
    skipped = 0
    if not root.is_dir():
        logger.warning("no results directory %s", root)
        return rows, 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        quick_folder = folder.name.endswith("-quick")
        files = sorted(folder.glob("*/*.json"))
        if quick_folder and not include_quick:
            skipped += len(files)
            continue
        rows += [row for row in map(_read_record, files) if row is not None]
    return rows, skipped


def _read_record(path: Path) -> Row | None:
    """A result row or failure record at ``EXPERIMENT[-quick]/VARIANT/FILE``, with the fields
    its path implies filled in; None (logged) when it cannot be read."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("skipping unreadable %s: %s", path, exc)
        return None
    if not isinstance(record, dict):
        logger.warning("skipping %s: not a JSON object", path)
        return None
    folder = path.parent.parent.name
    record.setdefault("experiment", folder.removesuffix("-quick"))
    record.setdefault("variant", path.parent.name)
    record["quick"] = bool(record.get("quick", folder.endswith("-quick")))
    record.setdefault("options", {})
    return record


def load_failures(results_dir: str | Path, include_quick: bool = False) -> list[Row]:
    """The error records of runs that failed (``*.failed`` beside the rows; see
    `runner.failure_path`), so the page can say which runs are missing and why."""
    paths = sorted(Path(results_dir).glob("*/*/*.failed"))
    records = (_read_record(p) for p in paths
               if include_quick or not p.parent.parent.name.endswith("-quick"))
    return [r for r in records if r is not None]


def _failures_section(failures: Sequence[Row]) -> list[str]:
    if not failures:
        return []
    body = [[f"`{f.get('variant')}`", f.get("seed"), options_label(f.get("options") or {}),
             str(f.get("error", "not recorded"))] for f in failures]
    return ["### Failed runs", "",
            f"{_plural(len(failures), 'run')} of this experiment failed and have no result "
            "row; their seeds are missing from the statistics above (a resumed sweep retries "
            "them).", "", *md_table(["variant", "seed", "options", "error"], body), ""]


# --------------------------------------------------------------------------- ordering, keys


def variant_sort_key(variant: str) -> tuple[int, str]:
    """Position of `variant` in :data:`VARIANT_ORDER` (unknown variants last, by name)."""
    if variant in VARIANT_ORDER:
        return VARIANT_ORDER.index(variant), ""
    return len(VARIANT_ORDER), variant


def _value_sort_key(value: Any) -> tuple[int, float, str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 0, float(value), ""
    return 1, 0.0, json.dumps(value, sort_keys=True, default=str)


def options_sort_key(options: Mapping[str, Any]) -> tuple[Any, ...]:
    """Options combinations sort by key, then numerically where the values are numbers."""
    return tuple((k, _value_sort_key(options[k])) for k in sorted(options))


def options_id(options: Mapping[str, Any]) -> str:
    return json.dumps(dict(options), sort_keys=True, default=str)


def options_label(options: Mapping[str, Any]) -> str:
    """``"model = mpnn, width = 0.125"`` (``"no options"`` for the empty combination)."""
    if not options:
        return "no options"
    return ", ".join(f"{k} = {options[k]}" for k in sorted(options))


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-." else "-" for c in text.lower())
    return "-".join(part for part in keep.split("-") if part) or "all"


def seed_ranges(seeds: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the ``--seeds`` syntax)."""
    out: list[str] = []
    ordered = sorted(set(seeds))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


# --------------------------------------------------------------------------- statistics


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; None with fewer than 2 values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def error_reduction(first: Any, final: Any) -> float | None:
    """``(err_first - err_final) / err_first`` with ``err = 1 - score``; None if a score is
    missing or outside [0, 1]; 0.0 if the first error is 0."""
    from perforate.metrics import error_reduction as reduction

    if not _finite([first]) or not _finite([final]):
        return None
    try:
        return reduction(float(first), float(final))
    except ValueError:
        return None


@dataclass(frozen=True)
class Paired:
    """Paired comparison of a variant's final test with a control's, seed by seed."""

    n: int
    """Seeds where both have a final test score."""
    mean: float | None
    """Mean of (variant - control) in percentage points."""
    std: float | None
    better: int
    worse: int
    sign_p: float | None
    """Two-sided sign test (ties dropped); None with fewer than 2 pairs."""
    t_p: float | None
    """Two-sided paired t-test; None with fewer than 2 pairs or identical differences."""


def paired(rows: Sequence[Row], control_rows: Sequence[Row]) -> Paired:
    """Pair `rows` with `control_rows` by seed and compare their ``final_test``."""
    from scipy import stats

    control = {r["seed"]: r["final_test"] for r in control_rows if _finite([r.get("final_test")])}
    pairs = sorted((r["seed"], float(r["final_test"]), float(control[r["seed"]]))
                   for r in rows if r.get("seed") in control and _finite([r.get("final_test")]))
    diffs = [100.0 * (a - b) for _, a, b in pairs]
    better = sum(d > 0 for d in diffs)
    worse = sum(d < 0 for d in diffs)
    mean, std = mean_std(diffs)
    sign_p = t_p = None
    if len(pairs) >= 2:
        if better + worse > 0:
            sign_p = float(stats.binomtest(better, better + worse, 0.5).pvalue)
        if max(diffs) - min(diffs) > 1e-9 * max(1.0, abs(mean or 0.0)):
            # identical differences: the t statistic is undefined (scipy: nan or noise)
            t = stats.ttest_rel([a for _, a, _ in pairs], [b for _, _, b in pairs])
            t_p = float(t.pvalue) if math.isfinite(t.pvalue) else None
    return Paired(len(pairs), mean, std, better, worse, sign_p, t_p)


def quartiles(values: Sequence[float]) -> tuple[float, float, float, float, float]:
    """min, Q1, median, Q3, max (numpy's linear interpolation)."""
    import numpy as np

    lo, q1, med, q3, hi = (float(v) for v in np.percentile(values, [0, 25, 50, 75, 100]))
    return lo, q1, med, q3, hi


# --------------------------------------------------------------------------- formatting


def fmt_p(p: float | None) -> str:
    """p-values: 3 decimals, scientific below 0.001, "n/a" when not computable."""
    if p is None:
        return NA
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_mean_std(mean: float | None, std: float | None, *, signed: bool = False,
                 scale: float = 1.0) -> str:
    """``"95.25 ± 0.31"`` (``± n/a`` with one value, ``n/a`` with none)."""
    if mean is None:
        return NA
    m = f"{mean * scale:+.2f}" if signed else f"{mean * scale:.2f}"
    return f"{m} ± {NA}" if std is None else f"{m} ± {std * scale:.2f}"


def fmt_pct(values: Sequence[float], signed: bool = False) -> str:
    """Scores in [0, 1] as percent mean ± std."""
    return fmt_mean_std(*mean_std(values), signed=signed, scale=100.0)


def fmt_number(value: Any) -> str:
    """A generic number: thousands separators from 1000, 2 decimals from 1, else 4 digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if isinstance(value, int) or (abs(value) >= 1000 and float(value).is_integer()):
        return f"{value:,.0f}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if abs(value) >= 1 or value == 0:
        return f"{value:.2f}"
    return f"{value:.4g}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], body: Sequence[Sequence[Any]],
             align: Sequence[str] | None = None) -> list[str]:
    """A Markdown table (first column left-aligned, the others right-aligned by default)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]
    return lines


def render_value(value: Any, indent: int = 0) -> list[str]:
    """A nested dict/list as a Markdown bullet list (keys sorted)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            v = value[key]
            if isinstance(v, (Mapping, list, tuple)) and v and not _is_flat_list(v):
                lines.append(f"{pad}- `{key}`:")
                lines += render_value(v, indent + 1)
            else:
                lines.append(f"{pad}- `{key}`: {_scalar(v)}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if isinstance(v, (Mapping, list, tuple)) and v and not _is_flat_list(v):
                lines.append(f"{pad}- [{i}]:")
                lines += render_value(v, indent + 1)
            else:
                lines.append(f"{pad}- {_scalar(v)}")
    else:
        lines.append(f"{pad}- {_scalar(value)}")
    return lines


def _is_flat_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(
        not isinstance(v, (Mapping, list, tuple)) for v in value)


def _scalar(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> ``{"a / b / [0]": leaf}`` in insertion order."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for key, v in value.items():
            out.update(flatten(v, f"{prefix} / {key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix} / [{i}]" if prefix else f"[{i}]"))
    else:
        out[prefix or "value"] = value
    return out


# --------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the report's figures need matplotlib: "
                          "pip install 'perforate[experiments]'") from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110,
                                             metadata={"Software": None}))
    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return (n + cols - 1) // cols, cols


def plot_error_reduction_boxes(combos: Sequence[tuple[str, dict[str, list[Row]]]],
                               path: Path) -> Path:
    """Figure 7 style: one min/Q1/median/Q3/max box of error reduction per variant."""
    plt = _pyplot()
    nr, nc = _grid(len(combos))
    fig, axes = plt.subplots(nr, nc, figsize=(7.0 * nc, 4.5 * nr), squeeze=False)
    for ax, (label, by_variant) in zip(axes.flat, combos, strict=False):
        names, data = [], []
        for variant, rows in by_variant.items():
            red = _finite(error_reduction(r.get("first_test"), r.get("final_test"))
                          for r in rows)
            if red:
                names.append(variant)
                data.append([100.0 * v for v in red])
        if data:
            ax.boxplot(data, whis=(0, 100), widths=0.6, medianprops={"color": "black"})
            ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_ylabel("error reduction, first → final cycle (%)")
        ax.set_title(label if len(combos) > 1 else "whiskers: min and max; box: Q1-Q3")
    for ax in list(axes.flat)[len(combos):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_params_vs_score(by_combo: Sequence[tuple[dict[str, Any], dict[str, list[Row]]]],
                         metric: str, path: Path) -> Path:
    """Figures 10-11 style: score vs parameters (log x); plain widths as lines with error bars,
    PB points per width and dendrite count (every trained architecture)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))

    def line(points: list[tuple[list[float], list[float]]], **kw: Any) -> None:
        pts = sorted((mean_std(x)[0], *mean_std(y)) for x, y in points if x and y)
        if pts:
            ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts],
                        yerr=[100 * (p[2] or 0.0) for p in pts], capsize=3, **kw)

    restart = [(_finite(r.get("final_params") for r in v[CONTROL]),
                _finite(r.get("final_test") for r in v[CONTROL]))
               for _, v in by_combo if CONTROL in v]
    line(restart, color="black", marker="o", label="plain, restart control (final)")
    first = [(_finite(r.get("first_params") for rows in v.values() for r in rows),
              _finite(r.get("first_test") for rows in v.values() for r in rows))
             for _, v in by_combo]
    line(first, color="grey", marker=".", ls="--", label="plain, first cycle (all variants)")
    width = [(_finite(r.get("final_params") for r in v["width"]),
              _finite(r.get("final_test") for r in v["width"]))
             for _, v in by_combo if "width" in v]
    line(width, color="tab:green", marker="s", ls=":", label="width control")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pb_variants = sorted({v for _, combo in by_combo for v in combo if v not in PLAIN_VARIANTS},
                         key=variant_sort_key)
    for i, variant in enumerate(pb_variants):
        color = colors[i % len(colors)]
        labelled = False
        for _, combo in by_combo:
            per_d: dict[int, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
            for row in combo.get(variant, []):
                for arch in row.get("architectures") or []:
                    if _finite([arch.get("params")]) and _finite([arch.get("test")]):
                        per_d[int(arch.get("dendrites") or 0)][0].append(float(arch["params"]))
                        per_d[int(arch.get("dendrites") or 0)][1].append(float(arch["test"]))
            pts = [(d, mean_std(xs)[0], *mean_std(ys)) for d, (xs, ys) in sorted(per_d.items())]
            if not pts:
                continue
            ax.errorbar([p[1] for p in pts], [100 * p[2] for p in pts],
                        yerr=[100 * (p[3] or 0.0) for p in pts], color=color, marker="^",
                        capsize=3, lw=0.8, label=None if labelled else f"{variant} (per cycle)")
            labelled = True
            for d, x, y, _ in pts:
                ax.annotate(f"d{d}", (x, 100 * y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title("mean ± std over seeds; dN = dendrite sets")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_first_vs_final(combos: Sequence[tuple[str, dict[str, list[Row]]]], metric: str,
                        path: Path) -> Path:
    """Per seed: first-cycle and final test of the restart control and of PB (one line each)."""
    plt = _pyplot()
    nr, nc = _grid(len(combos))
    fig, axes = plt.subplots(nr, nc, figsize=(5.0 * nc, 4.2 * nr), squeeze=False)
    for ax, (label, by_variant) in zip(axes.flat, combos, strict=False):
        for offset, variant, color in ((0, CONTROL, "tab:grey"), (2, PB, "tab:blue")):
            rows = sorted(by_variant.get(variant, []), key=lambda r: r["seed"])
            xs = [offset, offset + 1]
            firsts, finals = [], []
            for r in rows:
                if _finite([r.get("first_test")]) and _finite([r.get("final_test")]):
                    firsts.append(100 * r["first_test"])
                    finals.append(100 * r["final_test"])
                    ax.plot(xs, [firsts[-1], finals[-1]], color=color, alpha=0.45, lw=1,
                            marker="o", ms=3)
            if firsts:
                ax.plot(xs, [sum(firsts) / len(firsts), sum(finals) / len(finals)],
                        color=color, lw=3,
                        label=f"{variant} (mean of {_plural(len(firsts), 'seed')})")
        ax.set_xticks([0, 1, 2, 3], ["restart\nfirst", "restart\nfinal", "PB\nfirst",
                                     "PB\nfinal"])
        ax.set_ylabel(f"test {metric} (%)")
        ax.set_title(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(combos):]:
        ax.set_visible(False)
    return _save(fig, path)


# --------------------------------------------------------------------------- page sections


@dataclass
class Group:
    """The rows of one experiment (quick runs are their own group)."""

    experiment: str
    quick: bool
    rows: list[Row]

    @property
    def title(self) -> str:
        return f"{self.experiment} (quick)" if self.quick else self.experiment

    @property
    def slug(self) -> str:
        return _slug(self.experiment + ("-quick" if self.quick else ""))

    def combos(self) -> list[tuple[dict[str, Any], dict[str, list[Row]]]]:
        """[(options, {variant: rows sorted by seed})] in the page's order."""
        by: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
        opts: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            key = options_id(row.get("options") or {})
            opts[key] = dict(row.get("options") or {})
            by[key][row["variant"]].append(row)
        out = []
        for key in sorted(by, key=lambda k: options_sort_key(opts[k])):
            variants = {v: sorted(by[key][v], key=lambda r: r.get("seed", 0))
                        for v in sorted(by[key], key=variant_sort_key)}
            out.append((opts[key], variants))
        return out

    def metric(self) -> str:
        names = sorted({str(r.get("metric")) for r in self.rows if r.get("metric")})
        return " / ".join(names) or "score"


def _unique(rows: Iterable[Row], key: str) -> list[tuple[Any, list[Row]]]:
    """Distinct values of ``row[key]`` (by JSON) with their rows, in JSON order."""
    seen: dict[str, tuple[Any, list[Row]]] = {}
    for row in rows:
        value = row.get(key)
        ident = json.dumps(value, sort_keys=True, default=str)
        seen.setdefault(ident, (value, []))[1].append(row)
    return [seen[k] for k in sorted(seen)]


def _threads(row: Row) -> int:
    hw = row.get("hardware") or {}
    threads, cpus = hw.get("torch_threads"), hw.get("cpus")
    if isinstance(threads, int) and threads > 0:
        return min(threads, cpus) if isinstance(cpus, int) and cpus > 0 else threads
    return cpus if isinstance(cpus, int) and cpus > 0 else 1


def _header(groups: Sequence[Group], results_dir: str, skipped: int,
            include_quick: bool) -> list[str]:
    rows = [r for g in groups for r in g.rows]
    lines = ["# Results", "",
             f"Generated by `perforate report {results_dir}` from {len(rows)} result rows under "
             f"`{results_dir}`. Do not edit by hand: rerun the commands below."]
    if not include_quick:
        lines.append(f"Rows of `*-quick` folders (smoke runs) are not included ({skipped} "
                     "skipped).")
    lines += ["", "## How to reproduce", "", "```bash"]
    for g in groups:
        seeds = seed_ranges(int(r["seed"]) for r in g.rows if isinstance(r.get("seed"), int))
        quick = " --quick" if g.quick else ""
        lines.append(f"perforate experiment {g.experiment} --seeds {seeds} --out "
                     f"{results_dir}{quick}")
    lines += [f"perforate report {results_dir}", "```", ""]
    if not groups:
        lines[-3:-3] = ["# no result rows yet: run e.g. "
                        f"perforate experiment fashion-mnist --seeds 0-2 --out {results_dir}"]

    lines += ["## Hardware", ""]
    hw_groups = _unique(rows, "hardware")
    for hw, hw_rows in hw_groups:
        desc = ", ".join(f"{k} {v if v is not None else 'none'}"
                         for k, v in sorted((hw or {}).items())) or "not recorded"
        lines.append(f"- {_plural(len(hw_rows), 'row')}: {desc}")
    if not hw_groups:
        lines.append("- no rows")

    lines += ["", "## Compute", "",
              "Wall time is the sum of each row's `wall_seconds` (the time inside `fit`: "
              "training, validation and test passes of every cycle; not data loading, model "
              "set-up or process start-up). CPU-hours = Σ `wall_seconds` × the row's torch "
              "threads (`hardware.torch_threads`, capped at `hardware.cpus`) / 3600: the CPU "
              "time the run had reserved, an upper bound on what it used. Rows whose machine "
              "had a CUDA device are counted the same way (the row does not record whether "
              "the run used it).", ""]
    body = []
    tot_wall = tot_cpu = 0.0
    for g in groups:
        wall = sum(_finite(r.get("wall_seconds") for r in g.rows))
        cpu = sum(float(r["wall_seconds"]) * _threads(r) for r in g.rows
                  if _finite([r.get("wall_seconds")]))
        cuda = sum(1 for r in g.rows if (r.get("hardware") or {}).get("cuda"))
        body.append([g.title, len(g.rows), f"{wall / 3600:.2f}", f"{cpu / 3600:.2f}", cuda])
        tot_wall, tot_cpu = tot_wall + wall, tot_cpu + cpu
    body.append(["**total**", len(rows), f"{tot_wall / 3600:.2f}", f"{tot_cpu / 3600:.2f}",
                 sum(1 for r in rows if (r.get("hardware") or {}).get("cuda"))])
    lines += md_table(["experiment", "rows", "wall hours", "CPU-hours", "rows with CUDA"], body)

    lines += ["", "## Git commits", ""]
    commits = _unique(rows, "git_commit")
    for commit, c_rows in commits:
        note = " (uncommitted changes)" if str(commit).endswith("-dirty") else ""
        lines.append(f"- `{commit}`: {_plural(len(c_rows), 'row')}{note}")
    if not commits:
        lines.append("- no rows")

    lines += ["", "## Reading the tables", "",
              "- *first-cycle test*: test score of cycle 0 (the plain network, no dendrites) at "
              "its best validation epoch; *final test*: test score of the architecture kept at "
              "the end (best validation over all cycles). Mean ± sample std over seeds, in %.",
              "- *error reduction*: (err_first − err_final) / err_first with err = 1 − score, "
              "per seed, then mean ± std, in %.",
              "- *Δ vs restart*: final test minus the restart control's final test on the same "
              "seed and options, in percentage points, mean ± std over the paired seeds; "
              "*better*: seeds where the variant was higher / pairs; *sign p*: two-sided sign "
              "test (ties dropped, `scipy.stats.binomtest`); *t p*: two-sided paired t-test "
              f"(`scipy.stats.ttest_rel`); {NA} with fewer than 2 pairs (t-test: also when "
              "every pair differs by the same amount).",
              f"- \"PB beat the X control\" means: mean paired difference > 0 and paired t-test "
              f"p < {ALPHA}. Anything else reads \"did not beat\".", ""]
    return lines


def _variant_table(by_variant: Mapping[str, list[Row]]) -> list[str]:
    extras = sorted({name for rows in by_variant.values() for r in rows
                     for name in (r.get("extra_tests") or {})})
    header = ["variant", "n", "first-cycle test %", "final test %", "final params",
              "dendrites", "error reduction %", "Δ vs restart (points)", "better", "sign p",
              "t p", *[f"{name} %" for name in extras]]
    control = by_variant.get(CONTROL, [])
    body = []
    for variant, rows in by_variant.items():
        params, _ = mean_std(_finite(r.get("final_params") for r in rows))
        dend, _ = mean_std(_finite(r.get("final_dendrites") for r in rows))
        red = _finite(error_reduction(r.get("first_test"), r.get("final_test")) for r in rows)
        if variant == CONTROL:
            cmp = ["(control)", "—", "—", "—"]
        elif not control:
            cmp = ["no restart rows", "—", "—", "—"]
        else:
            p = paired(rows, control)
            cmp = [fmt_mean_std(p.mean, p.std if p.n >= 2 else None, signed=True)
                   if p.n else NA, f"{p.better}/{p.n}", fmt_p(p.sign_p), fmt_p(p.t_p)]
        body.append([f"`{variant}`", len(rows),
                     fmt_pct(_finite(r.get("first_test") for r in rows)),
                     fmt_pct(_finite(r.get("final_test") for r in rows)),
                     NA if params is None else f"{params:,.0f}",
                     NA if dend is None else f"{dend:.2f}",
                     fmt_pct(red, signed=True), *cmp,
                     *[fmt_pct(_finite((r.get("extra_tests") or {}).get(name) for r in rows))
                       for name in extras]])
    return md_table(header, body)


def verdict(rows: Sequence[Row], control_rows: Sequence[Row], control: str) -> str:
    """One plain sentence: did PB beat `control` on the paired seeds (no claim beyond that)."""
    what = f"the {control} control"
    if not rows:
        return f"No PB rows: no comparison with {what}."
    if not control_rows:
        return f"No {control} control rows: PB was not compared with {what}."
    p = paired(rows, control_rows)
    if p.n == 0:
        return f"PB and {what} share no seed: no comparison."
    if p.n < 2:
        return (f"PB vs {what}: only 1 paired seed (PB − {control} = {p.mean:+.2f} points), "
                "too few to test.")
    diff = fmt_mean_std(p.mean, p.std, signed=True)
    detail = (f"PB − {control}: {diff} points (mean ± std over {p.n} paired seeds; paired "
              f"t-test p = {fmt_p(p.t_p)}, sign test p = {fmt_p(p.sign_p)}; {p.better}/{p.n} "
              "seeds better)")
    return f"PB beat {what}. {detail}." if _beat(p) else f"PB did not beat {what}. {detail}."


def _beat(p: Paired) -> bool:
    """The page's one criterion for "beat": mean paired difference > 0 and t-test p < ALPHA."""
    return p.mean is not None and p.mean > 0 and p.t_p is not None and p.t_p < ALPHA


def _beats(rows: Sequence[Row], control_rows: Sequence[Row]) -> str:
    """A table cell: PB − control in points, its t-test p and "beat" / "did not beat"."""
    if not rows or not control_rows:
        return "—"
    p = paired(rows, control_rows)
    if p.n == 0:
        return "—"
    word = "**beat**" if _beat(p) else "did not beat"
    return f"{p.mean:+.2f} (p {fmt_p(p.t_p)}, n {p.n}): {word}"


def _at_a_glance(groups: Sequence[Group]) -> list[str]:
    """One line per experiment and option combination: PB against both controls."""
    body = []
    for g in groups:
        if g.quick or g.experiment == "timing":
            continue
        for options, by_variant in g.combos():
            pb = by_variant.get(PB, [])
            if not pb:
                continue
            name = g.experiment + (f" ({options_label(options)})" if options else "")
            final = {v: fmt_pct(_finite(r.get("final_test") for r in by_variant.get(v, [])))
                     for v in (CONTROL, "width")}
            body.append([name, g.metric(), len(pb),
                         f"{fmt_pct(_finite(r.get('first_test') for r in pb))} → "
                         f"{fmt_pct(_finite(r.get('final_test') for r in pb))}",
                         final[CONTROL], final["width"],
                         _beats(pb, by_variant.get(CONTROL, [])),
                         _beats(pb, by_variant.get("width", []))])
    if not body:
        return []
    compression = _compression_lines(groups)
    return ["## At a glance", "",
            "PB (library defaults) against the two controls the paper lacks, per experiment. "
            "Test scores in %, mean ± std over seeds; differences in points, paired by seed, "
            f"with the paired t-test p (\"beat\": mean > 0 and p < {ALPHA}). Details, the other "
            "variants and the paper's own figures are in each experiment's section.", "",
            *md_table(["experiment", "metric", "PB seeds", "PB first → final",
                       "restart final", "width final", "PB − restart", "PB − width"], body),
            "", *compression]


def _compression_lines(groups: Sequence[Group]) -> list[str]:
    """The paper's PhysioNet claim: a narrow net with dendrites beats the full-width net."""
    lines = []
    for g in groups:
        if g.quick or g.experiment != "physionet":
            continue
        combos = g.combos()
        full = [v.get(CONTROL, []) for o, v in combos if o.get("width") == 1.0]
        if not full or not full[0]:
            continue
        for options, by_variant in combos:
            pb = by_variant.get(PB, [])
            if pb and options.get("width") != 1.0:
                lines.append(f"- Compression (the paper: width 0.125 + 3 dendrites beats width "
                             f"1 by 2.7% AUC): PB at {options_label(options)} − the plain "
                             f"network at width 1: {_beats(pb, full[0])}.")
    return [*lines, ""] if lines else []


def _quartile_table(by_variant: Mapping[str, list[Row]]) -> list[str]:
    body = []
    for variant, rows in by_variant.items():
        red = [100 * v for v in _finite(error_reduction(r.get("first_test"),
                                                         r.get("final_test")) for r in rows)]
        cells = [f"{v:+.2f}" for v in quartiles(red)] if red else [NA] * 5
        body.append([f"`{variant}`", len(red), *cells])
    return md_table(["variant", "n", "min", "Q1", "median", "Q3", "max"], body)


def _timing_table(by_variant: Mapping[str, list[Row]]) -> list[str]:
    """Rows = flattened keys of the rows' ``post`` dicts, columns = variants."""
    variants = [v for v, rows in by_variant.items() if any(r.get("post") for r in rows)]
    if not variants:
        return ["No `post` timing figures in these rows."]
    flat = {v: [flatten(r["post"]) for r in by_variant[v] if r.get("post")] for v in variants}
    keys: list[str] = []
    for v in variants:
        for f in flat[v]:
            keys += [k for k in f if k not in keys]
    body = []
    for key in keys:
        cells = []
        for v in variants:
            values = [f[key] for f in flat[v] if key in f]
            nums = _finite(values)
            if nums and len(nums) == len(values):
                mean, std = mean_std(nums)
                cells.append(fmt_number(mean) if std is None
                             else f"{fmt_number(mean)} ± {fmt_number(std)}")
            elif values:
                cells.append(" / ".join(sorted({_scalar(x) for x in values})))
            else:
                cells.append("—")
        body.append([key, *cells])
    body.append(["runs (seeds)", *[str(len(flat[v])) for v in variants]])
    return md_table(["figure", *[f"`{v}`" for v in variants]], body)


def _protocol(group: Group) -> list[str]:
    lines = ["### Protocol", "",
             "As recorded in the rows (data sizes, epochs, patience: the deviations from the "
             "paper's protocol).", ""]
    protocols = _unique(group.rows, "protocol")
    for protocol, rows in protocols:
        if len(protocols) > 1:
            combos = sorted({options_id(r.get("options") or {}) for r in rows})
            labels = "; ".join(options_label(json.loads(c)) for c in combos)
            lines += [f"Rows with {labels} ({_plural(len(rows), 'row')}):", ""]
        lines += render_value(protocol) if protocol else ["- not recorded"]
        lines.append("")
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _figure_link(path: Path, page_dir: Path, alt: str) -> str:
    rel = Path(os.path.relpath(path, page_dir)).as_posix()
    return f"![{alt}]({rel})"


def _intro(experiment: str, title: str) -> list[str]:
    """An experiment's heading, what it is and what the paper reports."""
    lines = [f"## {title}", ""]
    if experiment in DESCRIPTIONS:
        text = DESCRIPTIONS[experiment]
        lines += [text[0].upper() + text[1:] + ".", ""]
    if experiment in PAPER:
        lines += [f"**The paper:** {PAPER[experiment]}", ""]
    return lines


def _section(group: Group, figures_dir: Path, page_dir: Path,
             failures: Sequence[Row] = ()) -> list[str]:
    g = group
    seeds = sorted({r["seed"] for r in g.rows if isinstance(r.get("seed"), int)})
    metrics = g.metric()
    decisions = sorted({str(r.get("decision_metric")) for r in g.rows
                        if r.get("decision_metric")})
    lines = _intro(g.experiment, g.title)
    lines += [f"{_plural(len(g.rows), 'row')}; seeds {seed_ranges(seeds)}; "
              f"reported metric: {metrics}; "
              f"decisions on validation {' / '.join(decisions) or metrics}.", ""]
    lines += _protocol(g)
    combos = g.combos()
    labelled = [(options_label(o), v) for o, v in combos]
    many = len(combos) > 1 or bool(combos and combos[0][0])
    lines += ["### Results", ""]
    verdicts: list[str] = []
    for label, by_variant in labelled:
        if many:
            lines += [f"#### {label}", ""]
        lines += _variant_table(by_variant)
        lines.append("")
        pb_rows = by_variant.get(PB, [])
        sentences = [verdict(pb_rows, by_variant.get(c, []), c) for c in (CONTROL, "width")]
        lines += [" ".join(sentences), ""]
        verdicts.append(f"- {label}: " + " ".join(sentences))
        if g.experiment == "ablation":
            lines += ["Error reduction per variant (%, first → final cycle):", ""]
            lines += _quartile_table(by_variant)
            lines.append("")
        if g.experiment == "timing" or any(r.get("post") for rs in by_variant.values()
                                           for r in rs):
            lines += ["Timing (from each row's `post`; mean ± std over seeds):", ""]
            lines += _timing_table(by_variant)
            lines.append("")
    if len(combos) > 1:
        lines += ["### Summary", "", *verdicts, ""]
    lines += _failures_section(failures)
    lines += _figures(g, labelled, combos, figures_dir, page_dir)
    return lines


def _figures(g: Group, labelled: Sequence[tuple[str, dict[str, list[Row]]]],
             combos: Sequence[tuple[dict[str, Any], dict[str, list[Row]]]],
             figures_dir: Path, page_dir: Path) -> list[str]:
    lines: list[str] = []
    if not combos:
        return lines
    metric = g.metric()
    figs: list[tuple[Path, str, str]] = []
    if g.experiment == "ablation":
        figs.append((plot_error_reduction_boxes(labelled, figures_dir /
                                                f"{g.slug}-error-reduction.png"),
                     "error reduction per variant",
                     "Error reduction, first → final cycle, one box per variant (whiskers: "
                     "min and max; box: Q1, median, Q3), like the paper's Figure 7."))
    if g.experiment == "physionet":
        figs.append((plot_params_vs_score(combos, metric,
                                          figures_dir / f"{g.slug}-params-vs-score.png"),
                     f"{metric} vs parameters",
                     f"Test {metric} vs parameters (log scale), like the paper's Figures "
                     "10-11: the plain network at each width (restart control, and its first "
                     "cycle), the width control, and PB after each dendrite cycle (dN)."))
    if g.experiment not in ("ablation", "physionet", "timing"):
        have = [(label, v) for label, v in labelled if PB in v and CONTROL in v]
        if have:
            figs.append((plot_first_vs_final(have, metric,
                                             figures_dir / f"{g.slug}-first-vs-final.png"),
                         "first vs final test per seed",
                         "First-cycle and final test per seed (thin lines) and their mean "
                         "(thick), restart control vs PB."))
    for path, alt, caption in figs:
        lines += [_figure_link(path, page_dir, alt), "", caption, ""]
    return lines


def _groups(rows: Sequence[Row]) -> list[Group]:
    by: dict[tuple[str, bool], list[Row]] = defaultdict(list)
    for row in rows:
        by[(str(row["experiment"]), bool(row["quick"]))].append(row)

    def order(key: tuple[str, bool]) -> tuple[int, str, bool]:
        name, quick = key
        pos = KNOWN_EXPERIMENTS.index(name) if name in KNOWN_EXPERIMENTS \
            else len(KNOWN_EXPERIMENTS)
        return pos, name, quick

    return [Group(name, quick, by[(name, quick)]) for name, quick in sorted(by, key=order)]


def build_report(results_dir: str | Path, output: str | Path = "docs/results.md",
                 figures_dir: str | Path | None = None, *,
                 include_quick: bool = False) -> Path:
    """Write the results page of every row under `results_dir` to `output` (Markdown) and its
    PNGs to `figures_dir` (default: ``<output's folder>/results``); returns `output`."""
    output = Path(output)
    page_dir = output.parent
    figures = Path(figures_dir) if figures_dir is not None else page_dir / "results"
    figures.mkdir(parents=True, exist_ok=True)
    rows, skipped = load_rows(results_dir, include_quick=include_quick)
    failures = load_failures(results_dir, include_quick=include_quick)
    groups = _groups(rows)
    logger.info("report: %d rows in %d experiments (%d quick rows skipped)", len(rows),
                len(groups), skipped)
    lines = _header(groups, str(results_dir), skipped, include_quick)
    at = lines.index("## How to reproduce")
    lines[at:at] = _at_a_glance(groups)
    present = {g.experiment for g in groups}
    names = list(KNOWN_EXPERIMENTS) + sorted(present - set(KNOWN_EXPERIMENTS))
    for name in names:
        mine = [g for g in groups if g.experiment == name]
        if not mine:
            lines += [*_intro(name, name), "Not run yet.", ""]
            lines += _failures_section([f for f in failures if f["experiment"] == name])
            continue
        for group in mine:
            lines += _section(group, figures, page_dir,
                              [f for f in failures if f["experiment"] == group.experiment
                               and f["quick"] == group.quick])
    text = "\n".join(lines).rstrip("\n") + "\n"
    atomic_write_text(output, text)
    logger.info("wrote %s", output)
    return output


__all__: list[str] = ["build_report", "load_failures", "load_rows", "paired", "verdict"]
