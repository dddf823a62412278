"""The "Frontier" section of the results page: Protocol P (``perforate experiment frontier``).

Per hidden width h: every variant's test accuracy, parameters and sets, its paired difference
with the restart control (sign test and paired t-test), and its distance to the width frontier
(the plain network's accuracy interpolated, on a log scale, at the variant's parameter count).
One figure: test accuracy against parameters (log x) with the plain frontier, the restart
control, every PB variant and, when its rows exist, the official package (`ANCHOR`).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..base import flat_config
from .figures import _pyplot, _save
from .markdown import fmt_mean_std, fmt_p, md_table, plural
from .rows import CONTROL, Group, Row
from .stats import finite, mean_std, paired

#: The plain network, one cycle: the width frontier.
PLAIN = "plain"
#: Rows written by the anchor benchmark (``bench/vs_perforatedai.py``), if any.
ANCHOR = "perforatedai"

Table = dict[int, dict[str, list[Row]]]


def by_width(rows: Sequence[Row]) -> Table:
    """{h: {variant: rows sorted by seed}}."""
    out: Table = defaultdict(lambda: defaultdict(list))
    for row in rows:
        h = (row.get("options") or {}).get("h")
        if isinstance(h, int):
            out[h][str(row["variant"])].append(row)
    for variants in out.values():
        for rows_ in variants.values():
            rows_.sort(key=lambda r: r.get("seed", 0))
    return out


def frontier_points(table: Table) -> list[tuple[float, float]]:
    """(mean parameters, mean test accuracy) of the plain network at each width, by size."""
    points = []
    for variants in table.values():
        rows = variants.get(PLAIN, [])
        tests = finite(r.get("final_test") for r in rows)
        params = finite(r.get("final_params") for r in rows)
        if tests and params:
            points.append((sum(params) / len(params), sum(tests) / len(tests)))
    return sorted(points)


def interpolate(points: Sequence[tuple[float, float]], params: float,
                best: Callable[[float, float], float] = max) -> float | None:
    """The frontier's score at `params` (linear in log parameters; where two points share
    `params`, the `best` of them); None outside it."""
    for (p0, a0), (p1, a1) in itertools.pairwise(points):
        if p0 <= params <= p1:
            if p1 == p0:
                return best(a0, a1)
            t = (math.log(params) - math.log(p0)) / (math.log(p1) - math.log(p0))
            return a0 + t * (a1 - a0)
    return None


def _order(variants: Mapping[str, list[Row]]) -> list[str]:
    first = [v for v in (PLAIN, CONTROL) if v in variants]
    return first + sorted(v for v in variants if v not in first)


def width_table(h: int, variants: Mapping[str, list[Row]],
                points: Sequence[tuple[float, float]]) -> list[str]:
    """One h's table: test, parameters, sets, Δ vs restart, Δ vs the frontier."""
    control = variants.get(CONTROL, [])
    body = []
    for variant in _order(variants):
        rows = variants[variant]
        tests = finite(r.get("final_test") for r in rows)
        params = finite(r.get("final_params") for r in rows)
        sets = finite(r.get("final_dendrites") for r in rows)
        mean_p = sum(params) / len(params) if params else None
        cells = [f"`{variant}`", len(rows), fmt_mean_std(*mean_std(tests), scale=100.0),
                 f"{mean_p:,.0f}" if mean_p is not None else "n/a",
                 f"{sum(sets) / len(sets):.1f}" if sets else "n/a"]
        if variant == CONTROL or not control:
            cells += ["—", "—", "—"]
        else:
            p = paired(rows, control)
            cells += [fmt_mean_std(p.mean, p.std, signed=True), f"{p.better}/{p.n}",
                      f"{fmt_p(p.sign_p)} / {fmt_p(p.t_p)}"]
        gap = interpolate(points, mean_p) if mean_p is not None else None
        cells.append(f"{100 * (sum(tests) / len(tests) - gap):+.2f}"
                     if gap is not None and tests else "n/a")
        body.append(cells)
    return [f"#### h = {h}", "",
            *md_table(["variant", "n", "test %", "params", "sets", "Δ vs restart (points)",
                       "better", "p sign / t", "Δ vs frontier"], body), ""]


def plot_frontier(table: Table, path: Path) -> Path:
    """Test accuracy against parameters (log x): the plain frontier, then every variant's
    mean point per h, joined in order of h (restart, PB variants, the official package)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 6))
    points = frontier_points(table)
    if points:
        ax.plot([p for p, _ in points], [100 * a for _, a in points], "k-o", lw=2,
                label="plain network (width frontier)")
    series: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for h, variants in table.items():
        for variant, rows in variants.items():
            tests = finite(r.get("final_test") for r in rows)
            params = finite(r.get("final_params") for r in rows)
            if variant != PLAIN and tests and params:
                series[variant].append((h, sum(params) / len(params),
                                        100 * sum(tests) / len(tests)))
    for variant in sorted(series):
        pts = [(p, a) for _, p, a in sorted(series[variant])]  # joined in order of h
        style = {"marker": "s", "ls": ":", "color": "grey"} if variant == CONTROL else \
            {"marker": "*", "ls": "--", "ms": 12, "color": "red"} if variant == ANCHOR else \
            {"marker": "o", "ls": "-", "alpha": 0.8}
        ax.plot([p for p, _ in pts], [a for _, a in pts], label=variant, **style)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("Protocol P: test accuracy against parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def describe(row: Row) -> str:
    """How a row's dendrites learned, from its recorded config and tracker arguments."""
    c, t = flat_config(row.get("config")), row.get("tracker") or {}
    if row.get("variant") == PLAIN:
        return "the plain network, one cycle"
    if row.get("variant") == ANCHOR:
        return "the official open package (GD dendrites trained with the network)"
    if t.get("add_dendrites") is False:
        text = "no dendrites (restart control)"
    else:
        learn = {"cascade_correlation": "Cascade-Correlation", "task_loss": "gradient-descent",
                 "none": "untrained"}.get(c.get("dendrite_phase"), "?")
        after = "trained with the network" if c.get("train_dendrites") else "frozen"
        text = (f"{learn} {c.get('dendrite_activation', '?')} candidates, then {after}"
                f"{'' if c.get('perforated', True) else ', not perforated'}")
        for key, default in (("objective", "covariance"), ("sign_source", "batch"),
                             ("output_init", "zero"), ("dendrite_inputs", None),
                             ("dendrite_input_selection", "random"), ("dendrite_rank", None)):
            if c.get(key, default) != default:
                text += f", {key}={c[key]}"
        if t.get("plateau", "max") != "max":
            text += f", plateau={t['plateau']}"
    if t.get("dendrite_tries", 1) != 1:
        text += f", dendrite_tries={t['dendrite_tries']}"
    return text


def is_default(row: Row) -> bool:
    """Whether a PB row ran with today's `PerforationConfig()` (its seed aside) and the
    controller's default options."""
    from perforate.config import PerforationConfig

    config, tracker = flat_config(row.get("config")), row.get("tracker") or {}
    if not config or tracker.get("add_dendrites") is False or set(tracker) - {
            "neuron_patience", "dendrite_patience", "max_dendrite_epochs", "max_dendrites",
            "min_dendrites", "max_epochs"}:
        return False
    default = flat_config(PerforationConfig().to_dict())
    return all(config.get(k, v) == v for k, v in default.items() if k != "seed")


def legend(table: Table) -> list[str]:
    """One line per variant: what it is (and which one `PerforationConfig()` is today)."""
    seen: dict[str, str] = {}
    for variants in table.values():
        for variant, rows in variants.items():
            mark = " (**the default**, `PerforationConfig()`)" if is_default(rows[0]) else ""
            seen.setdefault(variant, describe(rows[0]) + mark)
    body = [[f"`{v}`", seen[v]] for v in _order(seen)]
    return [*md_table(["variant", "how its dendrites learn"], body, align=["l", "l"]), ""]


def phases_table(table: Table) -> list[str]:
    """Per variant, over every width and seed: dendrite phases, their mean length and how many
    ran to the cap, the mean installed |corr| (over layers), and the validation score right
    after the install minus the cycle's best before it (rows that recorded it)."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for variants in table.values():
        for variant, rows in variants.items():
            for row in rows:
                best = {a.get("cycle"): a.get("best_val") for a in row.get("architectures", [])}
                cap = (row.get("tracker") or {}).get("max_dendrite_epochs")
                for i, phase in enumerate(row.get("dendrite_phases") or []):
                    a = acc[variant]
                    a["epochs"].append(phase.get("epochs", 0))
                    a["capped"].append(float(cap is not None and phase.get("epochs") == cap))
                    corr = finite(layer.get("mean_corr") for layer in
                                  (phase.get("layers") or {}).values())
                    if corr:
                        a["corr"].append(sum(corr) / len(corr))
                    at, before = phase.get("val_at_install"), best.get(i)
                    if finite([at]) and finite([before]):
                        a["jump"].append(100 * (at - before))
    body = []
    for variant in _order(acc):
        a = acc[variant]
        mean = {k: (sum(v) / len(v) if v else None) for k, v in a.items()}
        body.append([f"`{variant}`", len(a["epochs"]),
                     f"{mean['epochs']:.1f}" if mean.get("epochs") is not None else "n/a",
                     f"{int(sum(a['capped']))}/{len(a['capped'])}",
                     f"{mean['corr']:.3f}" if mean.get("corr") is not None else "n/a",
                     f"{mean['jump']:+.2f}" if mean.get("jump") is not None else "n/a"])
    if not body:
        return []
    return ["### Dendrite phases", "",
            "Every width and seed: dendrite phases, their mean length in epochs and how many ran "
            "to the cap, the mean installed |corr| (the mean over layers of each layer's mean "
            "over neurons; 0 for untrained candidates), and the validation score right after "
            "the install minus the best before it, in points (rows that recorded it).", "",
            *md_table(["variant", "phases", "epochs", "capped", "installed |corr|",
                       "val at install − before"], body), ""]


def frontier_section(group: Group, figure: Path | None) -> list[str]:
    """The section's body (tables and the figure link; the caller adds intro and protocol)."""
    table = by_width(group.rows)
    points = frontier_points(table)
    lines = ["### Variants", "", *legend(table),
             "### The width frontier (plain network, one cycle)", ""]
    plain_rows = [[h, len(v[PLAIN]),
                   fmt_mean_std(*mean_std(finite(r.get("final_test") for r in v[PLAIN])),
                                scale=100.0),
                   f"{v[PLAIN][0].get('final_params'):,}"]
                  for h, v in sorted(table.items()) if v.get(PLAIN)]
    lines += [*md_table(["h", "n", "test %", "params"], plain_rows), ""]
    lines += ["### Variants per hidden width", "",
              "Test accuracy in %, mean ± std over seeds; Δ vs restart: paired by seed, in "
              "points, with how many seeds were better, and the sign-test / paired t-test p; "
              "Δ vs frontier: the variant's mean test minus the plain network interpolated "
              "(log parameters) at the variant's mean parameter count (n/a outside the "
              "frontier's range).", ""]
    for h, variants in sorted(table.items()):
        if set(variants) - {PLAIN}:
            lines += width_table(h, variants, points)
    lines += phases_table(table)
    anchors = [r for v in table.values() for r in v.get(ANCHOR, [])]
    if not anchors:
        lines += [f"No `{ANCHOR}` rows: run the anchor benchmark to add the official package's "
                  "points.", ""]
    if figure is not None:
        lines += [f"![test accuracy against parameters]({figure.as_posix()})", "",
                  f"Test accuracy against parameters (log x), {plural(len(group.rows), 'row')}: "
                  "the plain network at every width (black), the restart control (grey), "
                  "every PB variant (one point per h)"
                  + (f" and `{ANCHOR}` (red stars)." if anchors else "."), ""]
    return lines
