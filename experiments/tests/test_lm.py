"""Protocol L (`perforate experiment lm`): the fortunes corpus loader, the byte windows, the two
LMs through the library (D = 0 identity, one growth step) and the --quick sweep end to end on a
tiny fake corpus (never the Debian package)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import perforate as pf
from perforate_experiments import runner
from perforate_experiments.data import fortunes
from perforate_experiments.data.fortunes import (
    RandomWindows,
    StridedWindows,
    load_fortunes,
)
from perforate_experiments.models.lm import LSTMLM, CausalTransformerLM
from perforate_experiments.registry import get_experiment
from perforate_experiments.report import build_report
from perforate_experiments.specs.lm import bpb, evenly, lm_loss, parse_net
from perforate_experiments.train import run_one


def fake_corpus(root: Path) -> Path:
    """A fortunes-like directory: text files, their .dat indexes and .u8 links."""
    folder = root / "fortunes"
    folder.mkdir(parents=True)
    texts = {"zeta": b"Z" * 3000, "alpha": b"The quick brown fox.\n%\n" * 200,
             "mid": bytes(range(256)) * 10}
    for name, data in texts.items():
        (folder / name).write_bytes(data)
        (folder / f"{name}.dat").write_bytes(b"\x00\x01index")
        (folder / f"{name}.u8").symlink_to(name)
    return folder


def test_loader_concatenates_sorted_files_and_splits_in_order(tmp_path: Path) -> None:
    folder = fake_corpus(tmp_path)
    corpus = load_fortunes(folder)
    assert corpus.files == ("alpha", "mid", "zeta")  # sorted; .dat and .u8 left out
    expected = b"".join((folder / n).read_bytes() for n in ("alpha", "mid", "zeta"))
    n = len(expected)
    assert corpus.n_bytes == n == 4600 + 2560 + 3000
    assert (len(corpus.train), len(corpus.val)) == (int(0.9 * n), int(0.05 * n))
    joined = torch.cat([corpus.train, corpus.val, corpus.test])
    assert bytes(joined.tolist()) == expected  # in order, nothing shuffled or lost
    assert bytes(corpus.test[-5:].tolist()) == b"ZZZZZ"  # the last file is held out
    assert "not the Debian package" in corpus.version
    sliced = load_fortunes(folder, max_bytes=1000)  # the --quick slice: the first bytes
    assert sliced.n_bytes == 1000 and torch.equal(sliced.train, joined[:900])


def test_missing_package_names_the_install_command(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"apt-get install -y fortunes"):
        load_fortunes(tmp_path / "nowhere")
    monkeypatch.delenv("PERFORATE_DATA", raising=False)
    monkeypatch.setattr(fortunes, "DEBIAN_FORTUNES_DIR", tmp_path / "games" / "fortunes")
    with pytest.raises(FileNotFoundError, match=r"`apt-get install -y fortunes`"):
        load_fortunes()
    fake_corpus(tmp_path)  # $PERFORATE_DATA/fortunes is used when it exists
    monkeypatch.setenv("PERFORATE_DATA", str(tmp_path))
    assert load_fortunes().files == ("alpha", "mid", "zeta")


def test_windows_are_next_byte_pairs_seeded_and_the_eval_pass_is_fixed() -> None:
    data = torch.arange(200, dtype=torch.uint8)
    train = RandomWindows(data, context=8, windows=10, batch_size=4, seed=3)
    batches = list(train)
    assert len(train) == len(batches) == 3 and [len(x) for x, _ in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == torch.int64 and x.shape == y.shape == (4, 8)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    again = list(RandomWindows(data, context=8, windows=10, batch_size=4, seed=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert not torch.equal(next(iter(train))[0], x)  # a new draw each epoch
    val = StridedWindows(data, context=8, batch_size=16)
    assert val.n_windows == 24  # (200 - 1) // 8: every byte after a window's first once
    xs = torch.cat([b[0] for b in val])
    assert torch.equal(xs[:, 0], torch.arange(24) * 8) and next(iter(val))[0].shape == (16, 8)
    kept = evenly(StridedWindows(data, context=8, batch_size=4), 5)
    starts = torch.cat([b[0][:, 0] for b in kept])
    assert kept.n_windows == 5 and starts.tolist() == [0, 48, 96, 136, 184]


def test_bpb_is_cross_entropy_in_bits() -> None:
    logits = torch.zeros(2, 3, 256)  # uniform over 256 bytes: exactly 8 bits
    targets = torch.randint(0, 256, (2, 3))
    assert bpb(logits, targets) == pytest.approx(8.0)
    assert float(lm_loss(logits, targets)) == pytest.approx(8 * math.log(2))
    assert parse_net("tf64") == ("tf", 64) and parse_net("lstm32") == ("lstm", 32)
    with pytest.raises(ValueError, match="tf<d> or lstm<h>"):
        parse_net("gru8")


@pytest.mark.parametrize("make", [lambda: CausalTransformerLM(16, context=16),
                                  lambda: LSTMLM(16)], ids=["transformer", "lstm"])
def test_lm_is_unchanged_by_perforate_and_grows_through_the_tracker(make) -> None:
    torch.manual_seed(0)
    net = make()
    x = torch.randint(0, 256, (3, 16))
    y = torch.randint(0, 256, (3, 16))
    net.eval()
    with torch.no_grad():
        plain = net(x)
    model = pf.perforate(net, pf.PerforationConfig(seed=0))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain)  # D = 0: the network itself
    assert plain.shape == (3, 16, 256) and "head" in model.dendrite_layers()
    # causal: the first position's logits do not depend on later bytes
    later = x.clone()
    later[:, 1:] = (later[:, 1:] + 1) % 256
    with torch.no_grad():
        assert torch.allclose(model(later)[:, 0], plain[:, 0], atol=1e-6)
    params = model.count_parameters()
    tracker = pf.Tracker(model, lambda p: torch.optim.Adam(p, 1e-3),
                         schedule=pf.Schedule(mode="min", neuron_patience=1))
    for score in (3.0, 3.5):  # bpb: lower is better; it got worse, so grow
        model.train()
        tracker.optimizer.zero_grad()
        lm_loss(tracker.model(x), y).backward()
        tracker.optimizer.step()
        if score == 3.0:  # the best epoch's weights: restored before the set is added
            model.eval()
            with torch.no_grad():
                best = model(x)
        decision = tracker.step(score)
    assert (decision.event, decision.dendrites) == ("grow", 1)
    assert model.num_dendrites == 1 and model.count_parameters() > params
    model.eval()
    with torch.no_grad():  # the new set's output weights start at 0: same function
        assert torch.allclose(model(x), best, atol=1e-5)
    model.train()
    tracker.optimizer.zero_grad()
    lm_loss(tracker.model(x), y).backward()
    grad = model.dendrite_layers()["head"].output_weight.grad
    assert grad is not None and grad.shape[0] == 1 and float(grad.abs().sum()) > 0


def test_quick_sweep_end_to_end_on_a_fake_corpus(tmp_path: Path) -> None:
    """`perforate experiment lm --quick` (one process per run, as the full protocol) on tf16,
    an in-process quick LSTM run, and the report's section and figures from their rows."""
    fake_corpus(tmp_path / "data")
    out = tmp_path / "runs"
    env = {**os.environ, "PERFORATE_DATA": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "perforate", "experiment", "lm", "--quick", "--seeds", "0",
           "--variant", "plain,restart,pb", "--only", "net=tf16", "--out", str(out)]
    plan = runner.plan("lm", [0], ["plain", "restart", "pb"], True, out, only={"net": ["tf16"]})
    assert sorted(v for v, _, _, _ in plan) == ["pb", "plain", "restart"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 run(s) done, 0 already on disk, 0 failed" in done.stdout
    rows = {v: json.loads(p.read_text()) for v, _, _, p in plan}
    pb = rows["pb"]
    assert pb["experiment"] == "lm" and pb["quick"] is True and pb["metric"] == "bpb"
    assert pb["tracker"]["mode"] == "min" and pb["hardware"]["torch_threads"] == 1
    assert pb["protocol"]["corpus"]["files"] == 3
    assert "not the Debian package" in pb["protocol"]["corpus"]["version"]
    assert [a["dendrites"] for a in pb["architectures"]] == [0, 1]  # one growth step
    assert pb["architectures"][1]["params"] > pb["first_params"] == 16064
    assert 0 < pb["extra_tests"]["test_full"] < 9 and pb["post"]["cpu_seconds"] > 0
    assert rows["restart"]["final_dendrites"] == 0
    assert len(rows["plain"]["architectures"]) == 1  # one cycle
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERFORATE_DATA", str(tmp_path / "data"))
        lstm = run_one(get_experiment("lm"), "pb-m", 0, quick=True, options={"net": "lstm32"})
        long = run_one(get_experiment("lm"), "restart-e150", 0, quick=True,
                       options={"net": "lstm32"})
    # a variant's own budget is what its row records as the protocol (the others keep theirs)
    assert long["tracker"]["max_epochs"] == long["protocol"]["max_epochs"] == 150
    assert long["final_dendrites"] == 0 and lstm["protocol"]["max_epochs"] == 4
    assert long["tracker"]["add_dendrites"] is False
    assert [a["dendrites"] for a in lstm["architectures"]] == [0, 1]
    assert lstm["first_params"] == 256 * 32 + 4 * (64 * 32 + 2 * 32) + 32 * 256 + 256
    assert lstm["config"]["dendrite_inputs"] == 8
    runner.write_json_atomic(runner.result_path(out, "lm", "pb-m", 0, {"net": "lstm32"}, True),
                             lstm)
    page = build_report(out, tmp_path / "results.md", include_quick=True).read_text()
    section = page[page.index("## lm (quick)"):]
    assert "#### transformer tf16" in section and "#### LSTM lstm32" in section
    assert "| `pb` | 1 |" in section and "| `pb-m` | 1 |" in section
    assert (tmp_path / "results" / "lm-quick-bpb-vs-params.png").is_file()
    assert (tmp_path / "results" / "lm-quick-bpb-vs-cpu-seconds.png").is_file()


def test_an_arm_is_placed_against_the_frontier_by_parameters_and_by_cpu_seconds() -> None:
    from perforate_experiments.report.lm import net_table

    def row(variant: str, seed: int, bpb: float, params: int, cpu: float) -> dict[str, Any]:
        return {"variant": variant, "seed": seed, "final_test": 9.0, "final_params": params,
                "final_dendrites": 0, "extra_tests": {"test_full": bpb},
                "post": {"cpu_seconds": cpu}}

    variants = {"restart": [row("restart", s, 2.7, 1000, 10.0) for s in (0, 1)],
                "pb": [row("pb", 0, 2.6, 2000, 40.0), row("pb", 1, 2.6, 2000, 40.0)]}
    by_params = [(1000.0, 3.0), (4000.0, 2.0)]  # 2.5 bpb at 2,000 parameters
    by_cpu = [(10.0, 3.0), (40.0, 2.0)]          # 2.0 bpb at 40 CPU seconds
    # the restart control's own curve over widths: 2.7 bpb at 1,000, 2.3 at 4,000 parameters
    curves = {"restart": [(1000.0, 2.7), (4000.0, 2.3)]}
    lines = net_table(("tf", 16), variants, by_params, by_cpu, curves)
    assert "| Δ frontier, params | Δ frontier, CPU s | Δ restart curve, params |" in lines[2]
    (pb,) = [line for line in lines if line.startswith("| `pb`")]
    cells = [c.strip() for c in pb.strip("|").split("|")]
    assert cells[7] == "+0.100 ± 0.000"  # restart − pb, the test_full bpb (not final_test)
    assert cells[-3:] == ["+0.100", "+0.600", "+0.100"]  # the curve gives 2.5 at 2,000
    (restart,) = [line for line in lines if line.startswith("| `restart`")]
    # at the frontier's first point; a control is not placed against its own curve
    assert restart.rstrip(" |").endswith("| -0.300 | -0.300 | —")


def test_long_budget_arms_pair_with_their_budgets_control_and_ablations_target_one_part() -> None:
    from perforate_experiments.report.lm import net_table
    from perforate_experiments.report.rows import control_of

    exp = get_experiment("lm")
    assert exp.variant_settings("pb-e150", "head") == ({}, {"max_epochs": 150})
    # a restart control at any budget is run without dendrites by run_one, not by its settings
    assert exp.variant_settings("restart-e150", "head") == ({}, {"max_epochs": 150})
    from perforate_experiments.base import is_plain

    assert [v for v in exp.variants if is_plain(v)] == [
        v for v in exp.variants if v.startswith(("restart", "width", "plain"))]
    assert is_plain("restart-e150") and not is_plain("pb-e150")
    assert [g["net"] for g in exp.option_grid("pb-e150")] == [
        "tf16", "tf32", "tf64", "tf128", "lstm32", "lstm64", "lstm128"]
    # the long budget's control also runs wider, so that its curve over widths reaches the arms
    assert [g["net"] for g in exp.option_grid("restart-e150")] == [
        "tf16", "tf32", "tf64", "tf128", "lstm32", "lstm64", "lstm128", "tf96", "lstm192"]
    assert [g["net"] for g in exp.option_grid("plain")][-2:] == ["lstm192", "lstm288"]
    # every arm runs at the long budget with its own settings, the epochs changed only
    from perforate_experiments.base import paper_fields

    assert exp.variant_settings("pb-cc-e150", "head") == (paper_fields(), {"max_epochs": 150})
    assert exp.variant_settings("pb-m-e150", "head") == (
        exp.variant_settings("pb-m", "head")[0], {"max_epochs": 150})
    assert exp.variant_settings("pb-cc", "head")[0] == paper_fields()
    assert [g["net"] for g in exp.option_grid("pb-rank-e150")] == ["tf16", "tf32", "tf64", "tf128"]
    # the default with the paper's initialisation of new dendrites, nothing else changed
    assert exp.variant_settings("pb-init-e150", "head") == (
        {"dendrite_init": "fan_in", "dendrite_weight_std": 1.0, "dendrite_bias_std": 1.0},
        {"max_epochs": 150})
    assert exp.variant_settings("pb-mlp-e150", "head") == (
        {"target_modules": ["linear1", "linear2"]}, {"max_epochs": 150})
    assert exp.option_grid("pb-attn-e150") == [{"net": "tf16"}, {"net": "tf32"}]
    from perforate_experiments.base import build_config

    for part, wrapped in (("attn", {"q_proj", "k_proj", "v_proj", "out_proj", "self_attn"}),
                          ("mlp", {"linear1", "linear2"}), ("head", {"head"})):
        config = build_config(exp.variant_settings(f"pb-{part}-e150", "head")[0])
        model = pf.perforate(CausalTransformerLM(16, context=8), config)
        assert {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                if hasattr(m, "base_layer")} == wrapped
    assert [control_of(v) for v in ("pb", "pb-cc", "pb-e150", "restart-e150")] == [
        "restart", "restart", "restart-e150", "restart-e150"]

    def row(variant: str, seed: int, bpb: float) -> dict[str, Any]:
        return {"variant": variant, "seed": seed, "final_params": 1000, "final_dendrites": 0,
                "epochs": 50 + 100 * variant.endswith("e150") + seed,
                "extra_tests": {"test_full": bpb}, "post": {"cpu_seconds": 1.0}}

    variants = {"restart": [row("restart", s, 3.0) for s in (0, 1)],
                "restart-e150": [row("restart-e150", s, 2.5) for s in (0, 1)],
                "pb-e150": [row("pb-e150", s, 2.4) for s in (0, 1)]}
    lines = net_table(("tf", 16), variants, [])
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in lines if line.startswith("| `")}
    assert cells["`pb-e150`"][7] == "+0.100 ± 0.000"  # against restart-e150, not restart
    assert cells["`restart-e150`"][7] == "+0.500 ± 0.000"  # the longer budget alone: vs restart
    assert cells["`restart`"][7] == "—"
    assert list(cells) == ["`restart`", "`restart-e150`", "`pb-e150`"]  # controls first
    assert [cells[v][5] for v in cells] == ["50", "150", "150"]  # mean epochs (50.5 rounds to 50)


def test_gains_are_split_by_whether_the_arm_trained_as_many_epochs_as_its_control() -> None:
    import numpy as np

    from perforate_experiments.report.lm import epochs_table

    def row(variant: str, seed: int, bpb: float, epochs: int, **post: Any) -> dict[str, Any]:
        return {"variant": variant, "seed": seed, "epochs": epochs, "post": post,
                "extra_tests": {"test_full": bpb}}

    gains, extra = [0.0, 0.1, -0.05, 0.01], [0, 10, -10, 0]
    table = {("tf", 16): {
        "restart-e150": [row("restart-e150", s, 3.0, 70) for s in range(4)],
        "pb-e150": [row("pb-e150", s, 3.0 - g, 70 + e)
                    for s, (g, e) in enumerate(zip(gains, extra, strict=True))],
        # 10 of its 80 epochs were dendrite phases: it trained the network as long as restart
        "pb-cc-e150": [row("pb-cc-e150", 0, 2.9, 80, neuron_epochs=70)],
        "plain": [row("plain", 0, 3.5, 40)]}}
    lines = epochs_table(table)
    cells = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in lines if line.startswith("| tf16")}
    assert list(cells) == ["`pb-cc-e150`", "`pb-e150`"]  # controls and plain are not arms
    corr = f"{np.corrcoef(gains, extra)[0, 1]:+.2f}"
    assert cells["`pb-e150`"][2:] == ["4", "+0.0", corr, "+0.005 (2)", "+0.100 (1)", "-0.050 (1)"]
    assert cells["`pb-cc-e150`"][2:] == ["1", "+0.0", "n/a", "+0.100 (1)", "n/a", "n/a"]


def test_arms_are_paired_with_the_default_of_their_budget() -> None:
    from perforate_experiments.report.lm import default_table

    def row(variant: str, seed: int, bpb: float) -> dict[str, Any]:
        return {"variant": variant, "seed": seed, "extra_tests": {"test_full": bpb}}

    table = {("tf", 16): {
        "restart-e150": [row("restart-e150", s, 3.0) for s in range(3)],
        "pb-e150": [row("pb-e150", s, 3.0) for s in range(3)],
        "pb-init-e150": [row("pb-init-e150", s, 3.0 - d)
                         for s, d in enumerate([0.01, 0.03, -0.01])],
        "pb-cc": [row("pb-cc", 0, 2.0)],  # its default (`pb`) was not run: no row
        "plain": [row("plain", 0, 3.5)]}}
    lines = default_table(table)
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines
            if line.startswith("| tf16")]
    assert len(body) == 1
    assert body[0][:6] == ["tf16", "`pb-init-e150`", "`pb-e150`", "3", "+0.010 ± 0.020", "2/3"]
    assert default_table({("tf", 16): {"pb": table[("tf", 16)]["pb-e150"]}}) == []
