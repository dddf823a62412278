"""``training.png``: the run at a glance (matplotlib, Agg backend, imported lazily).

Panel 1: train / val / test per epoch, dendrite phases shaded, each installed set marked
(the paper's Figure 6); extra scores on a second y axis, dashed. Panel 2: best |correlation|
per layer per dendrite phase at install (mean over neurons, max dashed). Panel 3: parameters
per architecture, the kept one highlighted, test at best val written on each bar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write

_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'perforate[train]'") from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _spans(history: list[dict[str, Any]], phase: str) -> list[tuple[int, int]]:
    """Contiguous epoch ranges [first, last] spent in `phase`."""
    spans: list[tuple[int, int]] = []
    for row in history:
        if row["phase"] != phase:
            continue
        if spans and spans[-1][1] == row["epoch"] - 1:
            spans[-1] = (spans[-1][0], row["epoch"])
        else:
            spans.append((row["epoch"], row["epoch"]))
    return spans


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if v is not None:
            xs.append(row["epoch"])
            ys.append(v)
    return xs, ys


def _focus(ax: Any, history: list[dict[str, Any]], keys: list[str]) -> None:
    """Set y limits from the epochs after the first 10% (the first epochs' low scores would
    squash the interesting part)."""
    if not history:
        return
    skip = history[0]["epoch"] + max(3, len(history) // 10)
    values = [r[k] for r in history for k in keys if r.get(k) is not None and r["epoch"] >= skip]
    if len(values) < 2:
        return
    lo, hi = min(values), max(values)
    pad = 0.1 * (hi - lo) if hi > lo else 0.05 * (abs(hi) or 1.0)
    ax.set_ylim(lo - pad, hi + 2 * pad)


def plot_training(tracker: Any, path: str | Path, *, title: str | None = None) -> Path:
    """Draw the three panels of `tracker`'s run into `path` (PNG, written atomically)."""
    plt = _matplotlib()
    fig = training_figure(tracker, title=title)
    out = Path(path)
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return out


def training_figure(tracker: Any, *, title: str | None = None) -> Any:
    """The matplotlib figure of `plot_training` (the caller closes it): axes 0-2 are the
    panels, a fourth (a twin of panel 1) holds extra scores if there are any."""
    plt = _matplotlib()
    records = tracker.records
    history, archs, phases = records.history, records.architectures, records.dendrite_phases
    fig, axes = plt.subplots(3, 1, figsize=(9, 11), gridspec_kw={"height_ratios": [3, 2, 2]})
    ax1, ax2, ax3 = axes

    # ---- panel 1: scores per epoch
    for start, end in _spans(history, "dendrite"):
        ax1.axvspan(start - 0.5, end + 0.5, color="tab:purple", alpha=0.12, lw=0)
    for key in ("train", "val", "test"):
        xs, ys = _series(history, key)
        if xs:
            ax1.plot(xs, ys, color=_COLORS[key], lw=1.2, label=key)
    extras = list(tracker.records.extra_names)
    ax1b = None
    if extras:
        ax1b = ax1.twinx()
        for i, key in enumerate(extras):
            xs, ys = _series(history, key)
            prefix = key.split("_", 1)[0]
            color = _COLORS.get(prefix, f"C{(i + 3) % 10}")
            if xs:
                ax1b.plot(xs, ys, ls="--", lw=0.9, color=color, alpha=0.8, label=key)
        _focus(ax1b, history, extras)
        ax1b.set_ylabel("extra scores (dashed)")
    _focus(ax1, history, ["train", "val", "test"])
    ymax = ax1.get_ylim()[1]
    for row in history:
        if row["event"] == "install":
            x = row["epoch"] + 0.5
            ax1.axvline(x, color="tab:purple", ls=":", lw=1)
            ax1.text(x, ymax, f" set {row['dendrites'] + 1}", color="tab:purple", fontsize=8,
                     va="top", ha="left")
        elif row["event"] == "restart":
            x = row["epoch"] + 0.5
            ax1.axvline(x, color="grey", ls=":", lw=1)
            ax1.text(x, ymax, " restart", color="grey", fontsize=8, va="top", ha="left")
    final = tracker.final_architecture
    if final is not None:
        ax1.scatter([final["best_epoch"]], [final["best_val"]], marker="*", s=120,
                    color="tab:red", zorder=5, label="final model (best val)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("score")
    ax1.set_title(title or "scores per epoch (dendrite phases shaded)", pad=34)
    handles, labels = ax1.get_legend_handles_labels()
    if ax1b is not None:
        more = ax1b.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax1.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4,
               fontsize=8, frameon=False)
    ax1.grid(alpha=0.3)

    # ---- panel 2: best |corr| per layer per dendrite phase
    if phases:
        layers = list(phases[0]["layers"])
        sets = [p["set"] for p in phases]
        for i, layer in enumerate(layers):
            color = f"C{i % 10}"
            mean = [p["layers"].get(layer, {}).get("mean_corr") for p in phases]
            best = [p["layers"].get(layer, {}).get("max_corr") for p in phases]
            ax2.plot(sets, mean, marker="o", color=color, label=f"{layer} mean")
            ax2.plot(sets, best, marker="^", ls="--", color=color, alpha=0.6,
                     label=f"{layer} max")
        ax2.set_xticks(sets)
        ax2.set_ylim(0, 1)
        ax2.legend(fontsize=7, ncol=2)
    else:
        ax2.text(0.5, 0.5, "no dendrite phase", ha="center", va="center",
                 transform=ax2.transAxes)
    ax2.set_xlabel("dendrite set")
    ax2.set_ylabel("best |correlation| at install")
    ax2.set_title("candidate correlation with the neuron error, per layer")
    ax2.grid(alpha=0.3)

    # ---- panel 3: parameters per architecture
    if archs:
        xs = list(range(len(archs)))
        colors = ["tab:red" if a.get("kept") else "tab:gray" for a in archs]
        ax3.bar(xs, [a["params"] for a in archs], color=colors)
        ax3.set_xticks(xs, [f"cycle {a['cycle']}\n{a['dendrites']} sets" for a in archs],
                       fontsize=8)
        for x, a in zip(xs, archs, strict=True):
            test = a.get("test_at_best_val")
            label = f"val {a['best_val']:.4g}" + ("" if test is None else f"\ntest {test:.4g}")
            for name in extras:
                value = a.get(f"{name}_at_best_val")
                if name.startswith("test") and value is not None:
                    label += f"\n{name} {value:.4g}"
            ax3.text(x, a["params"], label, ha="center", va="bottom", fontsize=7)
        ax3.margins(y=0.25)
    else:
        ax3.text(0.5, 0.5, "no completed cycle", ha="center", va="center",
                 transform=ax3.transAxes)
    ax3.set_ylabel("parameters")
    ax3.set_title("parameters per architecture (kept one in red; scores at best val)")
    ax3.grid(alpha=0.3, axis="y")

    fig.tight_layout()
    return fig
