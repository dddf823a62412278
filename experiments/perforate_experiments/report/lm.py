"""The "lm" section of the results page: Protocol L (``perforate experiment lm``).

Scores are bits per byte (bpb), lower is better, shown as numbers (not percentages). The test
bpb of a row is its full pass over the test split (``extra_tests["test_full"]``; the per-epoch
test sample's ``final_test`` only for rows without it). Per network (``net`` = tf<d> or lstm<h>):
every arm's test bpb, parameters, sets, epochs run, CPU seconds, its paired difference with
the restart control (restart − arm: positive means the arm's bpb is lower; a longer budget's
control against ``restart``) and its distance to the plain width frontier of its family
(arm − frontier interpolated in log parameters, and in log CPU seconds: negative means below
the frontier, i.e. better than any plain width of that size or cost). A table splits each
arm's gain by whether it trained as many epochs as its control (`epochs_table`). Two figures:
test bpb against parameters and against measured CPU seconds (log x), the frontier and every
arm.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .figures import _pyplot, _save
from .frontier import interpolate
from .markdown import NA, fmt_p, md_table, plural
from .rows import CONTROL, PB, Group, Row, budget_of, control_of, variant_sort_key
from .stats import finite, mean_std, paired

PLAIN = "plain"
FAMILIES = {"tf": "transformer", "lstm": "LSTM"}
#: (family, width) -> {variant: rows sorted by seed}
Table = dict[tuple[str, int], dict[str, list[Row]]]


def parse_net(net: object) -> tuple[str, int] | None:
    """``"tf64"`` -> ``("tf", 64)``; None for anything else."""
    match = re.fullmatch(r"(tf|lstm)(\d+)", str(net))
    return (match.group(1), int(match.group(2))) if match else None


def test_bpb(row: Row) -> float | None:
    """The row's reported test bpb: the full test pass, else the per-epoch sample's."""
    full = (row.get("extra_tests") or {}).get("test_full")
    value = full if finite([full]) else row.get("final_test")
    return float(value) if finite([value]) else None


def cpu_seconds(row: Row) -> float | None:
    """The run's measured CPU seconds (``post["cpu_seconds"]``), else ``wall_seconds`` x its
    torch threads (capped at the machine's CPUs)."""
    measured = (row.get("post") or {}).get("cpu_seconds")
    if finite([measured]):
        return float(measured)
    wall = row.get("wall_seconds")
    if not finite([wall]):
        return None
    hw = row.get("hardware") or {}
    threads, cpus = hw.get("torch_threads"), hw.get("cpus")
    n = threads if isinstance(threads, int) and threads > 0 else 1
    if isinstance(cpus, int) and cpus > 0:
        n = min(n, cpus)
    return float(wall) * n


def by_net(rows: Sequence[Row]) -> Table:
    out: Table = defaultdict(lambda: defaultdict(list))
    for row in rows:
        net = parse_net((row.get("options") or {}).get("net"))
        if net is not None:
            out[net][str(row["variant"])].append(row)
    for variants in out.values():
        for rows_ in variants.values():
            rows_.sort(key=lambda r: r.get("seed", 0))
    return out


def fmt_bpb(mean: float | None, std: float | None, *, signed: bool = False) -> str:
    """``"2.345 ± 0.012"`` in bpb (3 decimals; the std left out with one seed)."""
    if mean is None:
        return NA
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if std is None else f"{text} ± {std:.3f}"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def param_count(row: Row) -> float | None:
    return row.get("final_params")


def frontier(table: Table, family: str, x: Callable[[Row], float | None],
             variant: str = PLAIN) -> list[tuple[float, float]]:
    """(mean x, mean test bpb) of `variant` (the plain network: the frontier) at each width of
    `family`, by x."""
    points = []
    for (fam, _), variants in table.items():
        rows = variants.get(variant, [])
        xs, ys = finite(x(r) for r in rows), finite(test_bpb(r) for r in rows)
        if fam == family and xs and ys:
            points.append((sum(xs) / len(xs), sum(ys) / len(ys)))
    return sorted(points)


def paired_with(variant: str) -> str | None:
    """What a row's "restart − arm" compares it with: an arm, the restart control of its
    budget; a longer budget's control, ``restart`` (what the extra epochs alone buy); ``restart``
    itself, nothing."""
    control = control_of(variant)
    if variant != control:
        return control
    return CONTROL if variant != CONTROL else None


def paired_cells(base: Sequence[Row], arm: Sequence[Row]) -> tuple[int, list[str]]:
    """Seeds paired and the cells base − arm (bpb, mean ± std), seeds lower, sign-test / t-test
    p: positive when the arm's bpb is lower (`paired` works in points: / 100 for bpb)."""
    p = paired([{**r, "final_test": test_bpb(r)} for r in base],
               [{**r, "final_test": test_bpb(r)} for r in arm])
    return p.n, [fmt_bpb(None if p.mean is None else p.mean / 100,
                         None if p.std is None else p.std / 100, signed=True),
                 f"{p.better}/{p.n}", f"{fmt_p(p.sign_p)} / {fmt_p(p.t_p)}"]


def _order(variants: Sequence[str]) -> list[str]:
    """The plain network, then every restart control (shortest budget first), then the arms."""
    controls = sorted((v for v in variants if v == control_of(v)), key=lambda v: (len(v), v))
    first = [v for v in (PLAIN, *controls) if v in variants]
    return first + sorted((v for v in variants if v not in first), key=variant_sort_key)


def net_table(net: tuple[str, int], variants: dict[str, list[Row]],
              points: Sequence[tuple[float, float]],
              cpu_points: Sequence[tuple[float, float]] = (),
              control_curves: Mapping[str, Sequence[tuple[float, float]]] | None = None,
              ) -> list[str]:
    """One network's table: every arm against the restart control and the frontier, at equal
    parameters (`points`) and at equal CPU seconds (`cpu_points`), and against its restart
    control's curve over widths (`control_curves[control]`, by parameters): the network made
    wider instead, trained with the same schedule and budget."""
    body = []
    for variant in _order(list(variants)):
        rows = variants[variant]
        against = paired_with(variant)
        control = variants.get(against, []) if against else []
        tests = finite(test_bpb(r) for r in rows)
        params = _mean(finite(r.get("final_params") for r in rows))
        sets = _mean(finite(r.get("final_dendrites") for r in rows))
        epochs = _mean(finite(r.get("epochs") for r in rows))
        secs = _mean(finite(cpu_seconds(r) for r in rows))
        cells = [f"`{variant}`", len(rows), fmt_bpb(*mean_std(tests)),
                 f"{params:,.0f}" if params is not None else NA,
                 f"{sets:.1f}" if sets is not None else NA,
                 f"{epochs:.0f}" if epochs is not None else NA,
                 f"{secs:,.0f}" if secs is not None else NA]
        cells += paired_cells(control, rows)[1] if control else ["—", "—", "—"]
        own_curve = variant in (PLAIN, control_of(variant))  # a control lies on its curve
        curve = (control_curves or {}).get(control_of(variant), ())
        for at, where in ((params, points), (secs, cpu_points), (params, curve)):
            gap = interpolate(where, at, min) if at is not None else None
            cells.append(f"{sum(tests) / len(tests) - gap:+.3f}" if gap is not None and tests
                         else NA)
        if own_curve:
            cells[-1] = "—"
        body.append(cells)
    family, width = net
    return [f"#### {FAMILIES[family]} {family}{width}", "",
            *md_table(["arm", "n", "test bpb", "params", "sets", "epochs", "CPU s",
                       "restart − arm (bpb)", "lower", "p sign / t", "Δ frontier, params",
                       "Δ frontier, CPU s", "Δ restart curve, params"], body), ""]


def trained_epochs(row: Row) -> float | None:
    """Epochs the network itself trained (``post["neuron_epochs"]``: dendrite phases, where
    it is frozen, left out), else the row's epochs."""
    value = (row.get("post") or {}).get("neuron_epochs", row.get("epochs"))
    return float(value) if finite([value]) else None


def _fmt_gain(values: Sequence[float]) -> str:
    return f"{sum(values) / len(values):+.3f} ({len(values)})" if values else NA


def epochs_table(table: Table) -> list[str]:
    """Whether an arm's gain is its dendrites' or its extra epochs': per arm and network, on
    the seeds it shares with its restart control, the mean difference in epochs trained (arm −
    control), the correlation of restart − arm (bpb) with it, and restart − arm on the seeds
    where the arm trained as many epochs as the control, more, or fewer (seeds in brackets).
    A patience rule ends a cycle at a different epoch once a set perturbs the run, and a run
    that trains longer scores better with or without dendrites."""
    body = []
    for (family, width), variants in sorted(table.items()):
        for variant in _order(list(variants)):
            if variant in (PLAIN, control_of(variant)):
                continue
            control = {r.get("seed"): r for r in variants.get(control_of(variant), [])}
            gains, extra = [], []
            for row in variants[variant]:
                other = control.get(row.get("seed"))
                if other is None:
                    continue
                values = (test_bpb(other), test_bpb(row), trained_epochs(other),
                          trained_epochs(row))
                if None not in values:
                    gains.append(values[0] - values[1])
                    extra.append(values[3] - values[2])
            if not gains:
                continue
            corr = (float(np.corrcoef(gains, extra)[0, 1])
                    if len(set(gains)) > 1 and len(set(extra)) > 1 else None)
            body.append([f"{family}{width}", f"`{variant}`", len(gains),
                         f"{sum(extra) / len(extra):+.1f}", NA if corr is None else f"{corr:+.2f}",
                         *(_fmt_gain([g for g, e in zip(gains, extra, strict=True) if test(e)])
                           for test in (lambda e: e == 0, lambda e: e > 0, lambda e: e < 0))])
    if not body:
        return []
    return ["### Gains and epochs trained", "",
            "Per arm, on the seeds it shares with its restart control: Δ epochs = the arm's "
            "epochs of network training (dendrite phases left out) minus the control's, mean; "
            "corr = the correlation over seeds of restart − arm (bpb) with Δ epochs; then "
            "restart − arm (bpb, mean, seeds in brackets) on the seeds where the arm trained "
            "as many epochs as the control, more, or fewer. A gain that appears only where the "
            "arm trained longer is the epochs', not the dendrites'.", "",
            *md_table(["net", "arm", "n", "Δ epochs", "corr", "restart − arm, same epochs",
                       "arm trained longer", "arm trained less"], body), ""]


def default_table(table: Table) -> list[str]:
    """Every arm with dendrites against the library default of its budget (``pb``,
    ``pb-e150``), paired by seed: what a change to the default would buy."""
    body = []
    for (family, width), variants in sorted(table.items()):
        for variant in _order(list(variants)):
            default = PB + budget_of(variant)
            if variant in (PLAIN, control_of(variant), default) or default not in variants:
                continue
            n, cells = paired_cells(variants[default], variants[variant])
            if n:
                body.append([f"{family}{width}", f"`{variant}`", f"`{default}`", n, *cells])
    if not body:
        return []
    return ["### Arms against the default", "",
            "default − arm: paired by seed with the library default of the arm's budget, in "
            "bpb (positive: the arm's bpb is lower), with how many seeds were lower and the "
            "sign-test / paired t-test p. The restart control says whether an arm's dendrites "
            "pay; this says whether it should replace the default.", "",
            *md_table(["net", "arm", "default", "n", "default − arm (bpb)", "lower",
                       "p sign / t"], body), ""]


def frontier_table(table: Table, family: str) -> list[str]:
    body = []
    for (fam, width), variants in sorted(table.items()):
        rows = variants.get(PLAIN, [])
        if fam != family or not rows:
            continue
        params = _mean(finite(r.get("final_params") for r in rows))
        secs = _mean(finite(cpu_seconds(r) for r in rows))
        body.append([f"{family}{width}", len(rows),
                     fmt_bpb(*mean_std(finite(test_bpb(r) for r in rows))),
                     f"{params:,.0f}" if params is not None else NA,
                     f"{secs:,.0f}" if secs is not None else NA])
    if not body:
        return []
    return [f"#### {FAMILIES[family]}", "",
            *md_table(["net", "n", "test bpb", "params", "CPU s"], body), ""]


def plot_lm(table: Table, x: Callable[[Row], float | None], xlabel: str, path: Path) -> Path:
    """Test bpb against `x` (log scale), one panel per family: the plain frontier (black) and
    every arm's mean point per width, joined in order of width (restart grey)."""
    plt = _pyplot()
    families = [f for f in FAMILIES if any(fam == f for fam, _ in table)]
    fig, axes = plt.subplots(1, max(1, len(families)), figsize=(7.5 * max(1, len(families)), 5.5),
                             squeeze=False)
    for ax, family in zip(axes.flat, families, strict=False):
        points = frontier(table, family, x)
        if points:
            ax.plot([p for p, _ in points], [b for _, b in points], "k-o", lw=2,
                    label="plain network, one cycle (frontier)")
        series: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
        for (fam, width), variants in table.items():
            for variant, rows in variants.items():
                xs, ys = finite(x(r) for r in rows), finite(test_bpb(r) for r in rows)
                if fam == family and variant != PLAIN and xs and ys:
                    series[variant].append((width, sum(xs) / len(xs), sum(ys) / len(ys)))
        for variant in _order(list(series)):
            pts = [(a, b) for _, a, b in sorted(series[variant])]
            # controls grey; a longer budget's control is a diamond, its arms dashed
            longer = control_of(variant) != CONTROL
            style = ({"marker": "D" if longer else "s", "ls": ":", "color": "grey"}
                     if variant == control_of(variant)
                     else {"marker": "o", "ls": "--" if longer else "-", "alpha": 0.8})
            ax.plot([a for a, _ in pts], [b for _, b in pts], label=variant, **style)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test bits per byte (lower is better)")
        ax.set_title(f"Protocol L, {FAMILIES[family]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def lm_section(group: Group, figures_dir: Path, page_dir: Path) -> list[str]:
    """The section's body (the caller adds the intro and the protocol)."""
    import os

    table = by_net(group.rows)
    lines = ["### The width frontier (plain network, one cycle)", "",
             "Test bpb (full test split), mean ± std over seeds; CPU s: a run's measured CPU "
             "seconds (`post.cpu_seconds`: training, every evaluation and the final test pass; "
             "else `wall_seconds` × torch threads), mean over seeds.", ""]
    for family in FAMILIES:
        lines += frontier_table(table, family)
    lines += ["### Arms per network", "",
              "restart − arm: paired by seed with the restart control of the arm's budget "
              "(`restart`; `restart-e150` for the `-e150` arms; `restart-e150` itself against "
              "`restart`: what the extra epochs alone buy), in bpb (positive: the arm's bpb is "
              "lower), with how many seeds were lower and the sign-test / paired t-test p; Δ "
              "frontier: the arm's mean test bpb minus the plain frontier of its family "
              "interpolated at the arm's mean parameter count (log parameters) or at its mean "
              "measured CPU seconds (log seconds): negative is below the frontier, better than "
              "a plain network of that size or cost; n/a outside the frontier's range. Δ "
              "restart curve: the arm's mean test bpb minus its restart control's curve over "
              "the family's widths at the arm's parameter count: against a wider network "
              "trained with the same schedule and budget (the one-cycle frontier stops at the "
              "first plateau, so a longer budget's arms are better judged here).", ""]
    # per family, once: the frontier by parameters and by CPU seconds, and every restart
    # control's curve over widths
    controls = {control_of(v) for variants in table.values() for v in variants}
    fronts = {family: (frontier(table, family, param_count), frontier(table, family, cpu_seconds),
                       {c: frontier(table, family, param_count, c) for c in controls})
              for family in FAMILIES}
    for net, variants in sorted(table.items()):
        if set(variants) - {PLAIN}:
            lines += net_table(net, variants, *fronts[net[0]])
    lines += epochs_table(table)
    lines += default_table(table)
    if table:
        slug = group.slug
        for x, xlabel, name, what in (
                (param_count, "parameters (log scale)", "params",
                 "parameters"),
                (cpu_seconds, "measured CPU seconds per run (log scale)", "cpu-seconds",
                 "measured CPU seconds per run")):
            path = plot_lm(table, x, xlabel, figures_dir / f"{slug}-bpb-vs-{name}.png")
            rel = Path(os.path.relpath(path, page_dir)).as_posix()
            lines += [f"![test bpb against {what}]({rel})", "",
                      f"Test bpb against {what}, {plural(len(group.rows), 'row')}: the plain "
                      "network at every width (black), the restart control (grey) and every "
                      "PB arm, one point per width.", ""]
    return lines
