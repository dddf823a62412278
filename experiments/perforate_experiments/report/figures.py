"""The results page's figures (matplotlib, Agg backend, imported when drawn): the paper's
Figure 7 boxes, Figures 10-11 parameters vs score, and per-seed first vs final."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perforate.io.atomic import atomic_write

from .markdown import plural
from .rows import CONTROL, PB, Row, is_plain, variant_sort_key
from .stats import error_reduction, finite, mean_std

logger = logging.getLogger(__name__)


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
            red = finite(error_reduction(r.get("first_test"), r.get("final_test"))
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

    restart = [(finite(r.get("final_params") for r in v[CONTROL]),
                finite(r.get("final_test") for r in v[CONTROL]))
               for _, v in by_combo if CONTROL in v]
    line(restart, color="black", marker="o", label="plain, restart control (final)")
    first = [(finite(r.get("first_params") for rows in v.values() for r in rows),
              finite(r.get("first_test") for rows in v.values() for r in rows))
             for _, v in by_combo]
    line(first, color="grey", marker=".", ls="--", label="plain, first cycle (all variants)")
    width = [(finite(r.get("final_params") for r in v["width"]),
              finite(r.get("final_test") for r in v["width"]))
             for _, v in by_combo if "width" in v]
    line(width, color="tab:green", marker="s", ls=":", label="width control")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pb_variants = sorted({v for _, combo in by_combo for v in combo if not is_plain(v)},
                         key=variant_sort_key)
    for i, variant in enumerate(pb_variants):
        color = colors[i % len(colors)]
        labelled = False
        for _, combo in by_combo:
            per_d: dict[int, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
            for row in combo.get(variant, []):
                for arch in row.get("architectures") or []:
                    if finite([arch.get("params")]) and finite([arch.get("test")]):
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
                if finite([r.get("first_test")]) and finite([r.get("final_test")]):
                    firsts.append(100 * r["first_test"])
                    finals.append(100 * r["final_test"])
                    ax.plot(xs, [firsts[-1], finals[-1]], color=color, alpha=0.45, lw=1,
                            marker="o", ms=3)
            if firsts:
                ax.plot(xs, [sum(firsts) / len(firsts), sum(finals) / len(finals)],
                        color=color, lw=3,
                        label=f"{variant} (mean of {plural(len(firsts), 'seed')})")
        ax.set_xticks([0, 1, 2, 3], ["restart\nfirst", "restart\nfinal", "PB\nfirst",
                                     "PB\nfinal"])
        ax.set_ylabel(f"test {metric} (%)")
        ax.set_title(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(combos):]:
        ax.set_visible(False)
    return _save(fig, path)
