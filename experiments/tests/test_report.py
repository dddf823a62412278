"""The results page: numbers, paired statistics, verdicts, figures, quick folders skipped."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from perforate_experiments.report import build_report
from perforate_experiments.runner import result_path, write_json_atomic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HW = {"machine": "x86_64", "processor": "x86_64", "cpus": 4, "torch_threads": 2,
      "torch": "2.13.0", "python": "3.12.0", "cuda": None}

# fashion-mnist: 3 seeds, PB +0.5/+0.6/+0.7 points over restart; PB vs width mixed.
FM = {
    "restart": ([0.8900, 0.8950, 0.9000], [0.9000, 0.9050, 0.9100]),
    "pb": ([0.8900, 0.8950, 0.9000], [0.9050, 0.9110, 0.9170]),
    "width": ([0.8920, 0.8960, 0.9010], [0.9060, 0.9080, 0.9150]),
}
# ablation: 4 seeds per variant (first, final).
ABL = {
    "pb": ([0.80, 0.82, 0.84, 0.86], [0.84, 0.85, 0.86, 0.88]),
    "gd": ([0.80, 0.82, 0.84, 0.86], [0.81, 0.82, 0.85, 0.86]),
    "restart": ([0.80, 0.82, 0.84, 0.86], [0.81, 0.83, 0.85, 0.865]),
}


def row(experiment: str, variant: str, seed: int, first: float, final: float, *,
        options: dict[str, Any] | None = None, params: int = 1000, dendrites: int = 0,
        quick: bool = False, first_params: int = 1000, **extra: Any) -> dict[str, Any]:
    archs = [{"cycle": 0, "dendrites": 0, "params": first_params, "epochs": 5,
              "best_val": first, "test": first, "improved": True, "kept": dendrites == 0}]
    for d in range(1, dendrites + 1):
        archs.append({"cycle": d, "dendrites": d, "params": first_params + 500 * d, "epochs": 4,
                      "best_val": first + 0.01 * d, "test": first + 0.01 * d,
                      "improved": True, "kept": d == dendrites})
    return {"experiment": experiment, "variant": variant, "seed": seed, "quick": quick,
            "options": options or {}, "width": 1.0, "metric": "accuracy",
            "decision_metric": "accuracy", "first_test": first, "final_test": final,
            "final_cycle": dendrites, "first_params": first_params, "final_params": params,
            "final_dendrites": dendrites, "architectures": archs, "extra_tests": {},
            "epochs": 10, "stop_reason": "no improvement", "dendrite_phases": [],
            "history": [], "config": {}, "tracker": {},
            "protocol": {"n_train": 1000, "neuron_patience": 3, "optimizer": "Adadelta(lr=1.0)"},
            "git_commit": "abc123def456", "hardware": HW, "wall_seconds": 360.0, **extra}


def put(out: Path, r: dict[str, Any]) -> None:
    write_json_atomic(result_path(out, r["experiment"], r["variant"], r["seed"], r["options"],
                                  r["quick"]), r)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    for variant, (firsts, finals) in FM.items():
        for seed, (a, b) in enumerate(zip(firsts, finals, strict=True)):
            d = 2 if variant == "pb" else 0
            put(out, row("fashion-mnist", variant, seed, a, b, dendrites=d,
                          params=2000 if variant != "restart" else 1000))
    for variant, (firsts, finals) in ABL.items():
        for seed, (a, b) in enumerate(zip(firsts, finals, strict=True)):
            put(out, row("ablation", variant, seed, a, b))
    # tox21: PB worse than restart for mpnn (3 seeds), a single pair for fp.
    for seed, (pb, rs) in enumerate([(0.70, 0.72), (0.71, 0.72), (0.69, 0.73)]):
        put(out, row("tox21", "pb", seed, 0.70, pb, options={"model": "mpnn"}, dendrites=1))
        put(out, row("tox21", "restart", seed, 0.70, rs, options={"model": "mpnn"}))
    put(out, row("tox21", "pb", 0, 0.60, 0.62, options={"model": "fp"}, dendrites=1))
    put(out, row("tox21", "restart", 0, 0.60, 0.61, options={"model": "fp"}))
    # physionet: two widths, set_c extra test.
    for width in (0.125, 0.25):
        for seed in range(2):
            base = 0.80 + width / 10 + seed * 0.002
            for variant, gain, d in (("pb", 0.01, 2), ("restart", 0.0, 0), ("width", 0.005, 0)):
                plain = int(4000 * width) * (2 if variant == "width" else 1)
                put(out, row("physionet", variant, seed, base, base + gain, dendrites=d,
                             options={"width": width}, params=plain + 500 * d,
                             first_params=plain,
                             extra_tests={"set_c": base + gain - 0.01}))
    post = {"seconds_per_epoch": {"cycle 0": 1.5, "cycle 1": 2.25}, "total_seconds": 12345.0,
            "inference": {"inputs_per_s": 5000.5}}
    put(out, row("timing", "pb", 0, 0.9, 0.91, dendrites=1, post=post))
    # a smoke run that must not show up
    put(out, row("fashion-mnist", "pb", 0, 0.1, 0.1234, quick=True, git_commit="quickcommit"))
    return out


@pytest.fixture(scope="module")
def page(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("docs") / "docs" / "results.md"
    path = build_report(tree, out)
    return path, path.read_text()


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def cells(text: str, variant: str, nth: int = 0) -> list[str]:
    found = [line for line in text.splitlines() if line.startswith(f"| `{variant}` |")]
    return [c.strip() for c in found[nth].strip("|").split("|")]


def pm(values: list[float], signed: bool = False) -> str:
    m, s = 100 * statistics.mean(values), 100 * statistics.stdev(values)
    return f"{m:+.2f} ± {s:.2f}" if signed else f"{m:.2f} ± {s:.2f}"


def test_variant_table_numbers(page: tuple[Path, str]) -> None:
    fm = section(page[1], "fashion-mnist")
    pb = cells(fm, "pb")
    assert pb[1] == "3"
    assert pb[2] == pm(FM["pb"][0]) and pb[3] == pm(FM["pb"][1])
    assert pb[4] == "2,000" and pb[5] == "2.00"
    red = [((1 - a) - (1 - b)) / (1 - a) for a, b in zip(*FM["pb"], strict=True)]
    assert pb[6] == pm(red, signed=True)
    diffs = [b - a for a, b in zip(FM["restart"][1], FM["pb"][1], strict=True)]
    assert pb[7] == pm(diffs, signed=True) == "+0.60 ± 0.10"
    assert pb[8] == "3/3"
    sign_p = stats.binomtest(3, 3, 0.5).pvalue
    t_p = stats.ttest_rel(FM["pb"][1], FM["restart"][1]).pvalue
    assert pb[9] == f"{sign_p:.3f}" and pb[10] == f"{t_p:.3f}"
    assert cells(fm, "restart")[7] == "(control)"
    # fixed variant order: pb before restart before width
    assert fm.index("| `pb` |") < fm.index("| `restart` |") < fm.index("| `width` |")


def test_verdicts(page: tuple[Path, str]) -> None:
    fm = section(page[1], "fashion-mnist")
    t_p = stats.ttest_rel(FM["pb"][1], FM["restart"][1]).pvalue
    assert t_p < 0.05
    assert (f"PB beat the restart control. PB − restart: +0.60 ± 0.10 points (mean ± std over "
            f"3 paired seeds; paired t-test p = {t_p:.3f}, sign test p = 0.250; 3/3 seeds "
            "better).") in fm
    d = [100 * (b - a) for a, b in zip(FM["width"][1], FM["pb"][1], strict=True)]
    tw = stats.ttest_rel(FM["pb"][1], FM["width"][1]).pvalue
    assert (f"PB did not beat the width control. PB − width: {statistics.mean(d):+.2f} ± "
            f"{statistics.stdev(d):.2f} points") in fm
    assert f"paired t-test p = {tw:.3f}, sign test p = 1.000; 2/3 seeds better" in fm
    tox = section(page[1], "tox21")
    assert "#### model = mpnn" in tox and "#### model = fp" in tox
    assert tox.index("#### model = fp") < tox.index("#### model = mpnn")
    assert "PB did not beat the restart control. PB − restart: -2.33 ± 1.53 points" in tox
    assert "0/3 seeds better" in tox
    # a single pair: no test
    fp = tox[tox.index("#### model = fp"):tox.index("#### model = mpnn")]
    assert cells(fp, "pb")[9:11] == ["n/a", "n/a"]
    assert "only 1 paired seed" in fp


def test_ablation_quartiles_and_box(page: tuple[Path, str]) -> None:
    abl = section(page[1], "ablation")
    red = [100 * ((1 - a) - (1 - b)) / (1 - a) for a, b in zip(*ABL["gd"], strict=True)]
    expect = [f"{v:+.2f}" for v in np.percentile(red, [0, 25, 50, 75, 100])]
    assert cells(abl, "gd", nth=1) == ["`gd`", "4", *expect]
    assert "![error reduction per variant](results/ablation-error-reduction.png)" in abl


def test_physionet_options_and_set_c(page: tuple[Path, str]) -> None:
    phy = section(page[1], "physionet")
    assert "set_c %" in phy
    assert phy.index("#### width = 0.125") < phy.index("#### width = 0.25")
    narrow = phy[phy.index("#### width = 0.125"):phy.index("#### width = 0.25")]
    base = [0.80 + 0.0125 + s * 0.002 for s in range(2)]
    assert cells(narrow, "pb")[-1] == pm([b + 0.01 - 0.01 for b in base])
    assert cells(narrow, "pb")[4] == "1,500"
    assert "results/physionet-params-vs-score.png" in phy


def test_timing_and_header(page: tuple[Path, str]) -> None:
    text = page[1]
    timing = section(text, "timing")
    assert "| seconds_per_epoch / cycle 1 | 2.25 |" in timing
    assert "| total_seconds | 12,345 |" in timing
    assert "| inference / inputs_per_s | 5,000.5 |" in timing
    assert "perforate experiment fashion-mnist --seeds 0-2 --out" in text
    assert "perforate experiment ablation --seeds 0-3 --out" in text
    assert "perforate report " in text
    assert "`abc123def456`" in text
    n_rows = 9 + 12 + 8 + 12 + 1
    assert f"| **total** | {n_rows} | {n_rows * 0.1:.2f} | {n_rows * 0.2:.2f} | 0 |" in text
    assert "- `neuron_patience`: 3" in section(text, "fashion-mnist")


def test_figures_are_pngs(page: tuple[Path, str]) -> None:
    path, text = page
    figs = sorted((path.parent / "results").glob("*.png"))
    names = {p.name for p in figs}
    assert {"ablation-error-reduction.png", "physionet-params-vs-score.png",
            "fashion-mnist-first-vs-final.png", "tox21-first-vs-final.png"} <= names
    for fig in figs:
        assert fig.read_bytes()[:8] == PNG_MAGIC
        assert f"(results/{fig.name})" in text


def test_quick_skipped_and_included(tree: Path, page: tuple[Path, str], tmp_path: Path) -> None:
    text = page[1]
    assert "quickcommit" not in text and "(quick)" not in text
    assert "1 skipped" in text
    with_quick = build_report(tree, tmp_path / "r.md", include_quick=True).read_text()
    assert "## fashion-mnist (quick)" in with_quick and "quickcommit" in with_quick
    assert "--out " in with_quick and "--quick" in with_quick


def test_deterministic(tree: Path, page: tuple[Path, str], tmp_path: Path) -> None:
    again = build_report(tree, tmp_path / "docs" / "results.md").read_text()
    assert again == page[1]


def test_empty_results(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    text = build_report(tmp_path / "runs", tmp_path / "results.md").read_text()
    for name in ("fashion-mnist", "ablation", "tox21", "physionet", "timing"):
        assert f"## {name}\n" in text
        assert "Not run yet." in section(text, name)
    json.dumps(text)  # plain text


def test_at_a_glance(page: tuple[Path, str]) -> None:
    text = page[1]
    glance = section(text, "At a glance")
    assert text.index("## At a glance") < text.index("## How to reproduce")
    t_p = stats.ttest_rel(FM["pb"][1], FM["restart"][1]).pvalue
    tw = stats.ttest_rel(FM["pb"][1], FM["width"][1]).pvalue
    d = statistics.mean(100 * (b - a) for a, b in zip(FM["width"][1], FM["pb"][1], strict=True))
    assert (f"| fashion-mnist | `pb` | accuracy | 3 | {pm(FM['pb'][0])} → {pm(FM['pb'][1])} | "
            f"{pm(FM['restart'][1])} | {pm(FM['width'][1])} | +0.60 (p {t_p:.3f}, n 3): "
            f"**beat** | {d:+.2f} (p {tw:.3f}, n 3): did not beat |") in glance
    mpnn = [line for line in glance.splitlines() if line.startswith("| tox21 (model = mpnn) |")]
    assert len(mpnn) == 1 and "| -2.33 (p " in mpnn[0] and "n 3): did not beat | — |" in mpnn[0]
    assert "| ablation | `pb` | accuracy | 4 |" in glance and "| timing |" not in glance


def test_compression_claim(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    finals = {1.0: (0.80, 0.82, 0.81), 0.125: (0.83, 0.84, 0.85)}
    for width, scores in finals.items():
        for seed, score in enumerate(scores):
            put(out, row("physionet", "restart", seed, score, score, options={"width": width}))
            if width == 0.125:
                put(out, row("physionet", "pb", seed, score - 0.01, score,
                             options={"width": width}, dendrites=1))
    text = build_report(out, tmp_path / "results.md").read_text()
    t_p = stats.ttest_rel(finals[0.125], finals[1.0]).pvalue
    assert t_p < 0.05
    assert (f"`pb` at width = 0.125 − the plain network at width 1: +3.00 (p {t_p:.3f}, n 3): "
            "**beat**.") in section(text, "At a glance")


def test_paper_algorithm_has_its_own_width_control(tmp_path: Path) -> None:
    """`pb-cc` is compared with `width-cc` (matched to its own parameter count), `pb` with
    `width`, both with the restart control; the page says which config each one was."""
    out = tmp_path / "runs"
    finals = {"restart": (0.80, 0.81, 0.82), "pb": (0.82, 0.84, 0.85),
              "width": (0.83, 0.84, 0.85), "pb-cc": (0.80, 0.81, 0.83),
              "width-cc": (0.79, 0.80, 0.81)}
    configs = {"pb": {"dendrite_learning": "none", "train_dendrites": True, "perforated": False},
               "pb-cc": {"dendrite_learning": "cc", "train_dendrites": False}}
    for variant, scores in finals.items():
        for seed, score in enumerate(scores):
            put(out, row("fashion-mnist", variant, seed, 0.80, score,
                         config=configs.get(variant, {})))
    text = build_report(out, tmp_path / "results.md").read_text()
    glance = section(text, "At a glance")
    lines = {v: [x for x in glance.splitlines() if x.startswith(f"| fashion-mnist | `{v}` |")]
             for v in ("pb", "pb-cc")}
    assert len(lines["pb"]) == 1 and len(lines["pb-cc"]) == 1
    # pb-cc − width-cc = +1.33 points on every seed but the first: its own control, not width
    t_cc = stats.ttest_rel(finals["pb-cc"], finals["width-cc"]).pvalue
    assert lines["pb-cc"][0].endswith(f"| +1.33 (p {t_cc:.3f}, n 3): did not beat |")
    t_pb = stats.ttest_rel(finals["pb"], finals["width"]).pvalue
    assert lines["pb"][0].endswith(f"| -0.33 (p {t_pb:.3f}, n 3): did not beat |")
    results = section(text, "fashion-mnist")
    assert "`pb-cc` beat the restart control" not in results
    assert "`pb-cc` did not beat the width-cc control. `pb-cc` − width-cc: +1.33" in results
    assert "PB beat the restart control. PB − restart: +2.67" in results
    assert "(the default, `PerforationConfig()`)" in results
    assert "`PerforationConfig.paper()`" in results


def test_at_a_glance_points_to_the_lm_section_it_leaves_out(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    for seed in range(2):
        put(out, row("fashion-mnist", "restart", seed, 0.8, 0.8))
        put(out, row("fashion-mnist", "pb", seed, 0.8, 0.81, dendrites=1))
    text = build_report(out, tmp_path / "results.md").read_text()
    assert "section [lm](#lm)" not in text  # no Protocol L rows: nothing to point to
    put(out, row("lm", "restart", 0, 3.5, 3.4, options={"net": "tf16"}, metric="bpb"))
    glance = section(build_report(out, tmp_path / "results.md").read_text(), "At a glance")
    assert "| lm" not in glance  # bpb (lower is better) is not a % of this table
    assert "Protocol L (language models, in bits per byte" in glance
    assert "section [lm](#lm)" in glance
