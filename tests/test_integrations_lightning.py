"""`PerforateCallback` with the real Lightning Trainer: the cycle through a dendrite phase and
an install on one process, under ``strategy="ddp"`` with 2 CPU processes (ranks bitwise
identical, equal to one process to rounding), resumed from Lightning checkpoints, and the
clear errors (lightning missing, bad arguments, an unlogged metric)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("lightning")

import lightning.pytorch as L

import perforate as pf
from lightning_run import PHASES, SCHEDULE, TRACKER_OPTIONS, Regressor, fit, loaders
from perforate.errors import MissingExtraError
from perforate.integrations.lightning import PerforateCallback

HERE = Path(__file__).resolve().parent
#: Trainable numbers of the MLP 5-12-2: the network, then with one set (output weights only).
NETWORK, WITH_SET = 5 * 12 + 12 + 12 * 2 + 2, 5 * 12 + 12 + 12 * 2 + 2 + 12 + 2
#: 3 candidates per neuron, each with its inputs' weights and a bias.
CANDIDATES = 3 * (12 * (5 + 1) + 2 * (12 + 1))


def per_epoch(batches: list[dict]) -> list[dict]:
    """The recorder's batches, checked equal within each epoch, one per epoch."""
    epochs: dict[int, dict] = {}
    for b in batches:
        assert epochs.setdefault(b["epoch"], b) == b
    return [epochs[e] for e in sorted(epochs)]


def history(callback: PerforateCallback) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"}
            for r in callback.tracker.records.history]


def test_the_cycle_runs_in_the_trainer_with_the_trackers_optimizers() -> None:
    module, callback, recorder, trainer = fit()
    tracker = callback.tracker
    assert [r["phase"] for r in tracker.records.history] == PHASES
    assert [r["event"] for r in tracker.records.history] == ["best", "grow", "", "install", "best",
                                                     "stop"]
    assert tracker.done and trainer.current_epoch == len(PHASES) < trainer.max_epochs
    epochs = per_epoch(recorder.batches)
    assert [e["phase"] for e in epochs] == PHASES
    assert all(e["shared"] for e in epochs)  # Lightning steps tracker.optimizer in every phase
    assert [e["params"] for e in epochs] == [NETWORK] * 2 + [CANDIDATES] * 2 + [WITH_SET] * 2
    assert [e["dendrites"] for e in epochs] == [0, 0, 0, 0, 1, 1]
    assert [e["schedulers"] for e in epochs] == [1, 1, 0, 0, 1, 1]  # Lightning's StepLR
    # no validation in a dendrite epoch (4 batches of 8 in the others); restored at the end
    assert [recorder.val_batches.get(e, 0) for e in range(len(PHASES))] == [4, 4, 0, 0, 4, 4]
    assert trainer.limit_val_batches == 1.0
    lrs = [r["lr"] for r in tracker.records.history]  # stepped by Lightning, fresh after each cycle
    assert lrs == pytest.approx([5e-3, 2.5e-3, 1e-2, 1e-2, 5e-3, 2.5e-3])
    assert all(r["corr"] > 0 for r in tracker.records.history if r["phase"] == "dendrite")
    installed = recorder.installed  # the set's weights came from the trained candidates
    assert installed is not None and installed["net.net.0.dendrite_weight"].shape == (1, 12, 5)
    assert installed["net.net.0.dendrite_weight"].abs().sum() > 0
    assert len(tracker.records.dendrite_phases) == 1
    # the set did not improve by the threshold: the final model is cycle 0's, without it
    assert module.net.num_dendrites == tracker.final_architecture["dendrites"] == 0
    assert callback.model is None and tracker.perforated is module.net


def test_ddp_two_processes_identical_and_equal_to_one_process(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE),
                                          os.environ.get("PYTHONPATH", "")])}
    for key in ("MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "RANK"):
        env.pop(key, None)
    run = subprocess.run([sys.executable, str(HERE / "lightning_run.py"), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    for key in ("state", "installed"):
        a, b = ranks[0][key], ranks[1][key]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), key
    assert ranks[0]["history"] == ranks[1]["history"]
    assert [r["phase"] for r in ranks[0]["history"]] == PHASES
    epochs = per_epoch(ranks[0]["batches"])
    assert all(e["shared"] for e in epochs)
    assert [e["ddp"] for e in epochs] == [  # no DDP in the dendrite phase
        "DistributedDataParallel" if p == "neuron" else "Regressor" for p in PHASES]
    assert [ranks[0]["val_batches"].get(e, 0) for e in range(len(PHASES))] == [4, 4, 0, 0, 4, 4]
    # one process on the global batches of the 2 ranks (loaders() in lightning_run.py)
    _, callback, recorder, _ = fit()
    one = history(callback)
    for ddp, single in zip(ranks[0]["history"], one, strict=True):
        assert (ddp["phase"], ddp["event"]) == (single["phase"], single["event"])
        assert ddp["val"] == pytest.approx(single["val"], rel=1e-5)
        assert (ddp["corr"] is None) == (single["corr"] is None)
        if ddp["corr"] is not None:
            assert ddp["corr"] == pytest.approx(single["corr"], rel=1e-4)
    for k, v in recorder.installed.items():
        torch.testing.assert_close(ranks[0]["installed"][k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stop", [2, 3, 5])  # neuron (grow decided), dendrite, after install
def test_resumes_exactly_from_a_lightning_checkpoint(stop: int, tmp_path: Path) -> None:
    module, callback, _, _ = fit()
    _, _, _, trainer = fit(max_epochs=stop)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert checkpoint["callbacks"]["PerforateCallback"]["schedule"]["epoch"] == stop
    assert not any(".candidates." in k for k in checkpoint["state_dict"])
    resumed, again, _, trainer = fit(ckpt_path=tmp_path / "last.ckpt")
    assert history(again) == history(callback)
    assert trainer.current_epoch == len(PHASES)
    final = module.state_dict()
    assert all(torch.equal(v, final[k]) for k, v in resumed.state_dict().items())


def test_missing_lightning_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "perforate.integrations.lightning")
    with pytest.raises(MissingExtraError) as info:
        importlib.import_module("perforate.integrations.lightning")
    assert str(info.value) == ("perforate.integrations.lightning needs lightning, which is not "
                               "installed: pip install 'perforate[lightning]'")


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        PerforateCallback(mode="up")
    with pytest.raises(TypeError, match="sets optimizer_factory itself"):
        PerforateCallback(optimizer_factory=lambda p: torch.optim.SGD(p, 0.1))
    with pytest.raises(TypeError, match="must be a PerforatedModel"):
        PerforateCallback(model=nn.Linear(2, 2))
    net = Regressor().net
    assert PerforateCallback(model=net).model is net


def test_schedule_settings_are_given_as_a_schedule() -> None:
    with pytest.raises(TypeError, match=r"PerforateCallback\(neuron_patience=5\) is now "
                       r"PerforateCallback\(schedule=pf\.Schedule\(neuron_patience=5\)\)"):
        PerforateCallback(monitor="val_loss", neuron_patience=5)
    callback = PerforateCallback(monitor="val_loss", mode="min",
                                 schedule=pf.Schedule(neuron_patience=5, max_dendrites=2))
    assert (callback.schedule.mode, callback.schedule.neuron_patience,
            callback.schedule.max_dendrites) == ("min", 5, 2)
    with pytest.raises(ValueError, match="differs from mode"):
        PerforateCallback(mode="max", schedule=pf.Schedule(mode="min"))


class Plain(Regressor):
    """No PerforatedModel inside."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(5, 2)


class TwoOptimizers(Regressor):
    """Manual optimization (automatic optimization refuses two optimizers itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def configure_optimizers(self):
        return [torch.optim.SGD(self.parameters(), 0.1), torch.optim.SGD(self.parameters(), 0.1)]


class Stale(Regressor):
    """An optimizer over a parameter list taken once (misses the sets an install adds)."""

    def configure_optimizers(self):
        return torch.optim.SGD(list(self.parameters())[:2], 0.1)


@pytest.mark.parametrize(("module", "callback", "error", "message"), [
    (Plain, {}, ValueError, "exactly one PerforatedModel"),
    (Regressor, {"monitor": "val_acc"}, KeyError, r"monitors 'val_acc'.*\['val_loss'\]"),
    (TwoOptimizers, {}, ValueError, "one optimizer, got 2"),
    (Stale, {}, ValueError, "leaves out 4 trainable parameter"),
])
def test_setup_errors_are_clear(module: type, callback: dict, error: type,
                                message: str) -> None:
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, enable_progress_bar=False,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[PerforateCallback(**{
                            "monitor": "val_loss", "mode": "min", **TRACKER_OPTIONS,
                            **callback})])
    with pytest.raises(error, match=message):
        trainer.fit(module(), *loaders())


def test_a_perforated_model_can_be_named(tmp_path: Path) -> None:
    """``model=``: two perforated models in the module; the named one is driven."""

    class Twin(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.other = pf.perforate(nn.Sequential(nn.Linear(5, 2)))

    module = Twin()
    callback = PerforateCallback(monitor="val_loss", mode="min", model=module.net,
                                 **{**TRACKER_OPTIONS, "schedule": dataclasses.replace(
                                     SCHEDULE, max_epochs=2)})
    trainer = L.Trainer(accelerator="cpu", max_epochs=5, enable_progress_bar=False,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[callback])
    trainer.fit(module, *loaders())
    assert callback.tracker.perforated is module.net and callback.tracker.done
    assert trainer.current_epoch == 2


def test_sharding_and_other_strategies_are_refused() -> None:
    from types import SimpleNamespace

    from perforate.integrations.lightning import _is_ddp

    class DeepSpeedStrategy(L.strategies.DDPStrategy):  # stands in for Lightning's
        pass

    with pytest.raises(TypeError, match="does not support DeepSpeed"):
        _is_ddp(DeepSpeedStrategy())
    assert _is_ddp(L.strategies.DDPStrategy())
    trainer = SimpleNamespace(strategy=object())
    with pytest.raises(TypeError, match="single-device and DDP strategies, not object"):
        PerforateCallback().on_fit_start(trainer, Regressor())


def test_import_perforate_does_not_import_lightning() -> None:
    code = "import sys, perforate, perforate.integrations; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")}, check=True)
    assert out.stdout.strip() == "False"
