"""The `perforate` command: errors are one line and exit 2; inspect, export, demo --quick."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import perforate as pf
from perforate.cli.main import main
from perforate.demo import digits_mlp, fashion_cnn
from perforate.training import artifacts
from perforate.training.checkpoint import write_checkpoint

DIGITS = "perforate.demo:digits_mlp"


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("perforate: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("argv, needle", [
    ([], "required"),
    (["bogus"], "invalid choice"),
    (["demo", "--dataset", "mnist"], "invalid choice"),
    (["demo", "--seed", "x"], "invalid int value"),
    (["demo", "--seed", "-1"], "--seed must be >= 0"),
    (["demo", "--bogus"], "unrecognized arguments"),
    (["inspect"], "MODULE:FACTORY"),
    (["inspect", "nocolon"], "expected MODULE:FACTORY"),
    (["inspect", "no_such_module_xyz:f"], "cannot import module"),
    (["inspect", "perforate.demo:nothing"], "has no attribute"),
    (["inspect", "perforate.demo:DATASETS"], "not callable"),
    (["inspect", DIGITS, "--config", "{bad json"], "invalid JSON"),
    (["inspect", DIGITS, "--config", "missing.json"], "not a JSON object and not a readable"),
    (["inspect", DIGITS, "--config", '{"candidatez": 2}'], "unknown PerforationConfig"),
    (["inspect", DIGITS, "--config", '{"cascade": {"candidates": 0}}'], "candidates"),
    (["inspect", DIGITS, "--input-shape", "a,b"], "--input-shape"),
    (["inspect", DIGITS, "--input-shape", "3,3"], "forward pass"),
    (["export", "/nonexistent/dir", "out.pt"], "does not exist"),
    (["export"], "required"),
])
def test_argument_errors(capsys, argv, needle):
    code, _, err = run_main(capsys, *argv)
    assert_one_line_error(code, err, needle)


def test_missing_fashion_mnist_says_how_to_install(capsys, tmp_path):
    code, _, err = run_main(capsys, "demo", "--dataset", "fashion-mnist", "--data-dir",
                            str(tmp_path), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "apt-get install -y dataset-fashion-mnist",
                          "/usr/share/datasets/fashion-mnist/")
    assert not (tmp_path / "out").exists()


def test_unreadable_checkpoints(capsys, tmp_path):
    code, _, err = run_main(capsys, "export", str(tmp_path), str(tmp_path / "o.pt"))
    assert_one_line_error(code, err, "no checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00garbage")
    code, _, err = run_main(capsys, "export", str(tmp_path), str(tmp_path / "o.pt"))
    assert_one_line_error(code, err, "cannot read checkpoint")
    assert not (tmp_path / "o.pt").exists()


def small_run(out_dir: Path, *, net_factory: str | None = DIGITS, steps: int = 100):
    """A digits-MLP tracker through one install (scripted scores), checkpointed."""
    torch.manual_seed(0)
    model = pf.perforate(digits_mlp(), pf.PerforationConfig.paper())
    tracker = pf.Tracker(model, lambda p: torch.optim.Adam(p, 1e-2), out_dir=out_dir, plot=False,
                         net_factory=net_factory,
                         schedule=pf.Schedule(neuron_patience=1, max_dendrite_epochs=2,
                                              max_dendrites=1))
    scores = iter([0.5, 0.4, 0.6, 0.55])
    for _ in range(steps):
        if tracker.done:
            break
        g = torch.Generator().manual_seed(tracker.epoch)
        x, y = torch.rand(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)
        tracker.optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        tracker.optimizer.step()
        tracker.step(None if tracker.phase == "dendrite" else next(scores))
    return tracker


def test_export_checkpoint_and_pretrained_dir(capsys, tmp_path):
    tracker = small_run(tmp_path / "run")
    assert tracker.done and tracker.perforated.num_dendrites == 1
    x = torch.rand(7, 64)
    expected = tracker.model(x)
    for src in (tmp_path / "run", tmp_path / "run" / "checkpoint", tmp_path / "run" / "model"):
        out = tmp_path / f"{src.name}.pt"
        code, stdout, err = run_main(capsys, "export", str(src), str(out), "--trust-factory")
        assert code == 0, err
        assert "1 dendrite set(s)" in stdout
        scripted = torch.jit.load(str(out))
        assert torch.allclose(scripted(x), expected, atol=1e-6)


def test_export_mid_run_uses_best_weights_so_far(capsys, tmp_path):
    tracker = small_run(tmp_path / "run", steps=3)  # cycle 0 ended, in the dendrite phase
    assert tracker.phase == "dendrite"
    tracker.save_checkpoint(tmp_path / "ck")
    out = tmp_path / "mid.pt"
    code, stdout, err = run_main(capsys, "export", str(tmp_path / "ck"), str(out), "--net", DIGITS)
    assert code == 0, err
    assert "0 dendrite set(s)" in stdout
    x = torch.rand(5, 64)
    ref = digits_mlp()
    ref.load_state_dict({k.removeprefix("net.").replace("base_layer.", ""): v
                         for k, v in tracker.snapshots.best.items() if "base_layer." in k})
    assert torch.allclose(torch.jit.load(str(out))(x), ref(x), atol=1e-6)


def test_export_needs_the_net_factory(capsys, tmp_path):
    small_run(tmp_path / "run", net_factory=None)
    code, _, err = run_main(capsys, "export", str(tmp_path / "run"), str(tmp_path / "o.pt"))
    assert_one_line_error(code, err, "--net MODULE:FACTORY")
    code, _, err = run_main(capsys, "export", str(tmp_path / "run"), str(tmp_path / "o.pt"),
                            "--net", "perforate.demo:fashion_cnn")
    assert_one_line_error(code, err)
    code, _, err = run_main(capsys, "export", str(tmp_path / "run"), str(tmp_path / "o.pt"),
                            "--net", DIGITS)
    assert code == 0, err


def test_export_never_runs_a_recorded_factory_unasked(capsys, tmp_path, monkeypatch):
    """A stranger's run records `evil_cli_factory:make_net`, whose import writes a marker:
    export refuses (one line: the spec and the two ways on) and runs nothing; --net or
    --trust-factory proceed, and only the latter imports it."""
    marker = tmp_path / "ran"
    (tmp_path / "evil_cli_factory.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
        "from perforate.demo import digits_mlp as make_net\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_cli_factory", raising=False)
    tracker = small_run(tmp_path / "run", net_factory="evil_cli_factory:make_net")
    x = torch.rand(3, 64)
    for src in (tmp_path / "run", tmp_path / "run" / "model"):  # checkpoint, save_pretrained
        code, _, err = run_main(capsys, "export", str(src), str(tmp_path / "o.pt"))
        assert_one_line_error(code, err, "'evil_cli_factory:make_net'",
                              "--net evil_cli_factory:make_net", "--trust-factory")
        assert not marker.exists() and not (tmp_path / "o.pt").exists()
        code, _, err = run_main(capsys, "export", str(src), str(tmp_path / "o.pt"), "--net",
                                DIGITS)
        assert code == 0, err
        assert not marker.exists()
        assert torch.allclose(torch.jit.load(str(tmp_path / "o.pt"))(x), tracker.model(x),
                              atol=1e-6)
        (tmp_path / "o.pt").unlink()
    try:
        code, _, err = run_main(capsys, "export", str(tmp_path / "run"), str(tmp_path / "o.pt"),
                                "--trust-factory")
        assert code == 0, err
        assert marker.read_text() == "x"
    finally:
        sys.modules.pop("evil_cli_factory", None)


def test_export_never_imports_a_type_a_checkpoint_config_names(capsys, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    (tmp_path / "evil_cli_types.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
        "from torch import nn\nclass Layer(nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_cli_types", raising=False)
    small_run(tmp_path / "run", steps=3).save_checkpoint(tmp_path / "ck")
    path = tmp_path / "ck" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["config"] = json.dumps({**json.loads(state["config"]),
                                  "target_modules": ["type:evil_cli_types.Layer"]})
    write_checkpoint(path.parent, state, {})  # a stranger's file: its checksum matches
    code, _, err = run_main(capsys, "export", str(tmp_path / "ck"), str(tmp_path / "o.pt"),
                            "--net", DIGITS)
    assert_one_line_error(code, err, "'evil_cli_types.Layer'", "import evil_cli_types")
    assert not marker.exists()
    with pytest.raises(pf.LoadError, match=r"'evil_cli_types\.Layer'"):
        pf.resume(tmp_path / "ck", digits_mlp(), lambda p: torch.optim.Adam(p, 1e-2))
    assert not marker.exists()


def test_inspect_counts_match_a_real_install(capsys):
    code, out, err = run_main(capsys, "inspect", DIGITS)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in ("0", "2", "total")}
    # layer 0: Linear(64, 32): a set adds V 64*32 + bias 32 + output weight 32 (the default
    # trains no candidate pool: no pool columns)
    assert rows["0"][1:] == ["Linear", "32", "64", "2,080", "2,112", "2,080"]
    assert rows["2"][1:] == ["Linear", "10", "32", "330", "340", "330"]
    assert rows["total"][1:3] == ["2,410", "2,452"]
    # the real thing: one installed set adds exactly that many parameters, less those of the
    # dead dendrites of neurons no error reached (ReLUs that never fired on the batch)
    torch.manual_seed(0)
    model = pf.perforate(digits_mlp(), pf.PerforationConfig.paper())
    before = model.count_parameters()
    model.begin_dendrite_phase()
    F.cross_entropy(model(torch.rand(8, 64)), torch.zeros(8, dtype=torch.long)).backward()
    model.end_dendrite_phase()
    layers = model.dendrite_layers()
    dead = {n: int((m.dendrite_alive == 0).sum()) for n, m in layers.items()}
    assert model.count_parameters() - before == 2452 - dead["0"] * 66 - dead["2"] * 34


def test_inspect_conv_with_input_shape_and_config(capsys):
    code, out, err = run_main(capsys, "inspect", "perforate.demo:fashion_cnn", "--input-shape",
                              "1,28,28", "--preset", "paper", "--config",
                              '{"cascade": {"candidates": 2}}')
    assert code == 0, err
    assert "per sample" in out and "K = 2" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    # conv 1->8, 3x3 on 28x28: per set 784 positions * (9*8 + 8) multiply-adds
    assert rows["0"][1:5] == ["Conv2d", "8", "9", "80"]
    assert rows["0"][6] == f"{784 * (9 * 8 + 8):,}"
    assert rows["0"][8] == f"{784 * 2 * 9 * 8:,}"
    # conv 8->16 on 14x14
    assert rows["3"][6] == f"{196 * (72 * 16 + 16):,}"
    assert len([r for r in rows if r in ("0", "3", "7", "9")]) == 4
    assert fashion_cnn()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "perforate", "demo", "--quick",
                           "--no-progress", "--out", str(out)], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "restart control" in text and "error reduction" in text
    rows = [line.split() for line in text.splitlines()]
    pb_rows = [r for r in rows if r[:1] == ["PB"] and r[1].isdigit()]
    ctl_rows = [r for r in rows if r[:2] == ["restart", "control"] and r[2].isdigit()]
    assert [r[2] for r in pb_rows[:3]] == ["0", "1", "2"]  # >= 2 dendrite cycles
    assert len(ctl_rows) >= 3 and all(r[3] == "0" for r in ctl_rows)  # the control never grows
    assert pb_rows[0][3:] == ctl_rows[0][4:]  # same seed: identical cycle 0
    for run in ("pb", "restart"):
        for name in ("history.csv", "architectures.csv", "summary.json", "training.png",
                     "checkpoint/checkpoint.pt", "model/model.safetensors"):
            assert (out / run / name).is_file(), (run, name)
    archs = artifacts.read_csv(out / "pb" / "architectures.csv")
    assert [a["dendrites"] for a in archs][:3] == ["0", "1", "2"]
    assert sum(a["kept"] == "1" for a in archs) == 1
    exported = tmp_path / "pb.pt"
    proc = subprocess.run([sys.executable, "-m", "perforate", "export", str(out / "pb"),
                           str(exported), "--trust-factory"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert torch.jit.load(str(exported))(torch.rand(3, 64)).shape == (3, 10)


def test_inspect_attention_projections_with_input_shape():
    from perforate.cli.main import inspect_model

    net = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1,
                                enable_nested_tensor=False)
    layers = inspect_model(net, pf.PerforationConfig.paper(), (5, 8))["layers"]
    rows = {r["layer"]: r for r in layers}
    q = rows["layers.0.self_attn.q_proj"]
    assert (q["type"], q["neurons"], q["fan_in"], q["positions"], q["params"]) == (
        "AttentionProjection", 8, 8, 5, 72)
    assert rows["layers.0.linear1"]["positions"] == 5


def test_inspect_counts_the_inputs_a_dendrite_sees(capsys):
    from perforate.cli.main import inspect_model

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 2))

    full, sparse, rank = (
        {r["layer"]: r for r in inspect_model(net(), pf.PerforationConfig(**kw))["layers"]}
        for kw in ({}, {"dendrite_inputs": 5}, {"dendrite_rank": 4}))
    assert (full["0"]["set_params"], full["0"]["projection_params"]) == (30 * 8 + 16, 0)
    assert sparse["0"]["set_params"] == 5 * 8 + 16 and sparse["2"]["set_params"] == 5 * 2 + 4
    assert (rank["0"]["fan_in"], rank["0"]["set_params"], rank["0"]["projection_params"]) == (
        30, 4 * 8 + 16, 4 * 30)
    model = pf.perforate(net(), pf.PerforationConfig(dendrite_rank=4))
    base = model.count_parameters()
    model.grow()  # the dry run's figures are what a set really adds
    assert model.count_parameters() - base == sum(
        r["set_params"] + r["projection_params"] for r in rank.values())


def test_debug_shows_the_traceback_the_one_line_error_hides(capsys):
    code, _, err = run_main(capsys, "inspect", "perforate.demo:nothing")
    assert_one_line_error(code, err, "has no attribute")
    code, _, err = run_main(capsys, "--debug", "inspect", "perforate.demo:nothing")
    assert code == 2
    assert err.startswith("Traceback (most recent call last):")
    assert "import_factory" in err and "CLIError" in err
    assert err.strip().splitlines()[-1] == \
        "perforate: error: module 'perforate.demo' has no attribute 'nothing'"


def test_experiment_and_report_without_the_harness_say_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "perforate_experiments", None)  # not installed
    monkeypatch.setitem(sys.modules, "perforate_experiments.cli", None)
    for argv in (["experiment", "tox21", "--seeds", "0-2"], ["report", "results/x"]):
        code, _, err = run_main(capsys, *argv)
        assert_one_line_error(code, err, f"`perforate {argv[0]}` needs the research harness",
                              "pip install -e ./experiments")
    code, _, err = run_main(capsys, "demo", "--bogus")
    assert_one_line_error(code, err, "unrecognized arguments: --bogus")


def test_experiment_and_report_come_from_the_harness_when_installed(capsys):
    pytest.importorskip("perforate_experiments")
    code, _, err = run_main(capsys, "experiment", "no-such-experiment")
    assert_one_line_error(code, err, "unknown experiment 'no-such-experiment'")
    code, _, err = run_main(capsys, "report", "/nonexistent/results")
    assert_one_line_error(code, err, "results directory /nonexistent/results does not exist")


# ------------------------------------------- inspect: one source for costs, both presets
class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(8, 3, batch_first=True)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.lstm(x)[0])[0][:, -1])


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = x[:, :3]  # 3 key/value positions, 5 query positions
        return self.head(self.attn(x, kv, kv)[0])


def inspect_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def inspect_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3))


#: {factory: (sample shape, {layer: (type, neurons, fan_in, params, +params/set, +MACs/set,
#: pool params, pool MACs)})}, by hand; MACs per sample, the pool's with K = 4 (paper()).
INSPECT_NETS = {
    "inspect_mlp": ((6,), {
        # Linear(6, 5): a set adds V 6*5, bias 5, output weight 5; MACs V 30 + a 5
        "0": ("Linear", 5, 6, 35, 30 + 10, 30 + 5, 4 * (30 + 5), 4 * 30),
        "2": ("Linear", 3, 5, 18, 15 + 6, 15 + 3, 4 * (15 + 3), 4 * 15)}),
    "inspect_cnn": ((2, 6, 6), {
        # Conv2d(2, 4, 3) on 6x6: 16 output positions, fan_in 2*3*3 = 18
        "0": ("Conv2d", 4, 18, 76, 72 + 8, 16 * (72 + 4), 4 * (72 + 4), 16 * 4 * 72),
        "3": ("Linear", 3, 64, 195, 192 + 6, 192 + 3, 4 * (192 + 3), 4 * 192)}),
    "_Recurrent": ((5, 3), {
        # LSTM(3, 4, 2 layers, bidirectional): 2*2 layer-directions of 4*4 gate neurons; a
        # gate of layer 0 sees [x_t (3), h (4)], of layer 1 [x_t (2*4), h (4)]: padded to 12.
        # Parameters 2*(16*3 + 16*4 + 32) + 2*(16*8 + 16*4 + 32); a set: 32*7 + 32*12 + 2*64.
        # Positions: 5 time steps (batch 1); the pool computes over the padded 12 inputs.
        "lstm": ("LSTM", 64, 12, 288 + 448, 608 + 128, 5 * (608 + 64), 4 * (64 * 12 + 64),
                 5 * 4 * 64 * 12),
        # GRU(8, 3): 3*3 gate neurons over [x_t (8), h (3)]
        "gru": ("GRU", 9, 11, 72 + 27 + 18, 99 + 18, 5 * (99 + 9), 4 * (99 + 9), 5 * 4 * 99),
        "head": ("Linear", 2, 3, 8, 6 + 4, 6 + 2, 4 * (6 + 2), 4 * 6)}),
    "_Attention": ((5, 8), {
        # each projection: 8 neurons over 8 inputs (64 weights + 8 biases of the attention's);
        # q and out: 5 positions, k and v: 3 (the keys and values are 3 positions long)
        **{f"attn.{p}": ("AttentionProjection", 8, 8, 72, 64 + 16, n * (64 + 8), 4 * (64 + 8),
                         n * 4 * 64)
           for p, n in (("q_proj", 5), ("k_proj", 3), ("v_proj", 3), ("out_proj", 5))},
        "head": ("Linear", 2, 8, 18, 16 + 4, 5 * (16 + 2), 4 * (16 + 2), 5 * 4 * 16)}),
}


def _inspect_table(capsys, factory: str, shape: tuple[int, ...], preset: str):
    code, out, err = run_main(capsys, "inspect", f"{__name__}:{factory}", "--preset", preset,
                              "--input-shape", ",".join(map(str, shape)))
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:]
            if line.split() and not line.startswith(("-", "model:"))}
    return out, rows


def _measured(factory: str, shape: tuple[int, ...], config: pf.PerforationConfig):
    """What one real growth adds to `count_parameters`, and each layer's real pool size."""
    torch.manual_seed(0)
    model = pf.perforate(globals()[factory](), config)
    before = model.count_parameters()
    if not model.trains_candidates:
        model.grow()
        return model.count_parameters() - before, None
    model.begin_dendrite_phase()
    pools = {n: sum(p.numel() for p in m.candidates.parameters())
             for n, m in model.dendrite_layers().items()}
    trained = model.candidate_optimizer().param_groups
    assert sum(p.numel() for g in trained for p in g["params"]) == sum(pools.values())
    model(torch.randn(4, *shape)).square().sum().backward()
    model.end_dendrite_phase()
    assert all(bool(m.dendrite_alive.all()) for m in model.dendrite_layers().values())
    return model.count_parameters() - before, pools


@pytest.mark.parametrize("factory", list(INSPECT_NETS))
def test_inspect_under_the_default_has_no_candidate_pool(capsys, factory):
    shape, expected = INSPECT_NETS[factory]
    out, rows = _inspect_table(capsys, factory, shape, "default")
    assert "K =" not in out and "pool" not in out.splitlines()[1]
    assert "no candidate pool: each growth adds one untrained set " \
           "(dendrite_phase='none')" in out.splitlines()[0]
    assert {n: r for n, r in rows.items() if n != "total"} == {
        n: [e[0], *(f"{v:,}" for v in e[1:6])] for n, e in expected.items()}
    grown, _ = _measured(factory, shape, pf.PerforationConfig())
    assert grown == sum(e[4] for e in expected.values())  # a real growth adds what it says
    assert rows["total"][1] == f"{grown:,}"
    from perforate.cli.main import inspect_model

    info = inspect_model(globals()[factory](), pf.PerforationConfig(), shape)
    assert info["candidates"] == 0 and not info["trains_candidates"]
    assert all(r["pool_params"] == r["pool_macs"] == 0 for r in info["layers"])


@pytest.mark.parametrize("factory", list(INSPECT_NETS))
def test_inspect_under_paper_prints_the_candidate_pool(capsys, factory):
    shape, expected = INSPECT_NETS[factory]
    out, rows = _inspect_table(capsys, factory, shape, "paper")
    assert "K = 4 candidate sets per layer" in out.splitlines()[0]
    assert out.splitlines()[1].split()[-4:] == ["pool", "params", "pool", "MACs"]
    assert {n: r for n, r in rows.items() if n != "total"} == {
        n: [e[0], *(f"{v:,}" for v in e[1:])] for n, e in expected.items()}
    grown, pools = _measured(factory, shape, pf.PerforationConfig.paper())
    assert grown == sum(e[4] for e in expected.values())
    assert pools == {n: e[6] for n, e in expected.items()}  # the pool a phase really trains


def test_layer_costs_answer_the_set_after_the_first():
    from perforate.engine.layers.costs import LayerCosts

    model = pf.perforate(_Recurrent(), pf.PerforationConfig())
    lstm = model.dendrite_layers()["lstm"]
    costs = lstm.costs(5)
    assert isinstance(costs, LayerCosts) and costs.positions == 5
    assert (costs.neurons, costs.dendrite_fan_in, costs.base_macs) == (64, 12, 608)
    model.grow()
    model.grow()  # set 2 also has one cascade weight per neuron
    assert lstm.dendrite_parameter_count() == costs.set_params_at(1) + costs.set_params_at(2)
    assert costs.set_params_at(2) == costs.set_params + 64
    # an LSTM call's positions: batch x time (its neurons are every layer-direction's gates)
    out = lstm(torch.zeros(2, 7, 3))
    assert lstm.output_positions(out) == 14
