"""`perforate.integrations.hf`: a tiny BERT built from a config, trained by a
``transformers.Trainer`` through a dendrite phase and an install."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import transformers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import perforate as pf
from perforate.errors import ConfigError, LoadError, MissingExtraError, PhaseError
from perforate.integrations.hf import PerforateTrainerCallback

transformers.logging.set_verbosity_error()


class Tokens(torch.utils.data.Dataset):
    """Sequences of 8 tokens; the label says whether token 7 occurs (learnable)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(10, 50, (n, 8), generator=g)
        self.labels = (torch.rand(n, generator=g) < 0.5).long()
        pos = torch.randint(0, 8, (n,), generator=g)
        self.ids[self.labels.bool(), pos[self.labels.bool()]] = 7

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=2))


def make_args(tmp_path: Any, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = dict(
        output_dir=str(tmp_path / "hf"), report_to=[], use_cpu=True, eval_strategy="epoch",
        save_strategy="no", logging_strategy="no", num_train_epochs=20,
        per_device_train_batch_size=16, per_device_eval_batch_size=32, learning_rate=1e-3,
        weight_decay=0.01, lr_scheduler_type="linear", disable_tqdm=True, seed=0,
        dataloader_num_workers=0)
    settings.update(overrides)
    return TrainingArguments(**settings)


def make_trainer(tmp_path: Any, net: torch.nn.Module, **overrides: Any) -> Trainer:
    callbacks = overrides.pop("callbacks", None)
    compute_metrics = overrides.pop("compute_metrics", None)
    return Trainer(model=net, args=make_args(tmp_path, **overrides),
                   train_dataset=Tokens(64, 0), eval_dataset=Tokens(32, 1),
                   compute_metrics=compute_metrics, callbacks=callbacks)


class Scripted:
    """compute_metrics returning scripted scores: a deterministic cycle."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = iter(scores)

    def __call__(self, _: Any) -> dict[str, float]:
        return {"score": next(self.scores)}


class Probe(TrainerCallback):
    """Records, at every optimizer step, what the Trainer steps and schedules with."""

    def __init__(self, callback: PerforateTrainerCallback, trainer: Trainer) -> None:
        self.callback, self.trainer = callback, trainer
        self.steps: list[dict[str, Any]] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        tracker, trainer, model = self.callback.tracker, self.trainer, self.callback.model
        inner = trainer.optimizer.optimizer  # the AcceleratedOptimizer's
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        stepped = {id(p) for g in inner.param_groups for p in g["params"]}
        candidates = {id(p) for m in model.dendrite_layers().values() if m.candidates is not None
                      for p in m.candidates.parameters()}
        self._before = [p.detach().clone() for g in inner.param_groups for p in g["params"]]
        self.steps.append({
            "phase": tracker.phase, "dendrites": model.num_dendrites,
            "is_tracker_optimizer": inner is tracker.optimizer,
            "covers_trainable": stepped == trainable, "candidates_only": stepped == candidates,
            "scheduler": trainer.lr_scheduler,
            "scheduler_optimizer": trainer.lr_scheduler.optimizer,
            "lr": inner.param_groups[0]["lr"], "groups": inner.param_groups})

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        after = [p for g in self.trainer.optimizer.optimizer.param_groups for p in g["params"]]
        self.steps[-1]["moved"] = any(not torch.equal(a, b) for a, b in zip(
            after, self._before, strict=True))


class CpuGradScaler(TrainerCallback):
    """Gives the accelerator and its optimizer wrapper a GradScaler, as fp16 training on a GPU
    does (the wrapper's scaler path, which the callback must keep working)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        scaler = self.trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
        wrapper = self.trainer.optimizer
        wrapper.__init__(wrapper.optimizer, scaler=scaler)


def test_trainer_runs_a_dendrite_cycle(tmp_path: Any) -> None:
    net = tiny_bert()
    pmodel = pf.perforate(net, pf.PerforationConfig.paper(candidates=2, seed=0))
    trainer = make_trainer(tmp_path, net, compute_metrics=Scripted([0.5, 0.4, 0.7, 0.6]))
    callback = PerforateTrainerCallback(pmodel, trainer, monitor="score", out_dir=tmp_path / "run",
                                        plot=False,
                                        schedule=pf.Schedule(neuron_patience=1,
                                                             dendrite_patience=1,
                                                             max_dendrite_epochs=2,
                                                             max_dendrites=1))
    assert callback in trainer.callback_handler.callbacks and callback.mode == "max"
    probe = Probe(callback, trainer)
    trainer.add_callback(probe)
    trainer.train()

    tracker = callback.tracker
    assert tracker.done and "max_dendrites" in tracker.schedule.stop_reason
    phases = [r["phase"] for r in tracker.records.history]
    d_epochs = phases.count("dendrite")
    assert phases == ["neuron"] * 2 + ["dendrite"] * d_epochs + ["neuron"] * 2
    assert 1 <= d_epochs <= 2
    assert [r["val"] for r in tracker.records.history
            if r["phase"] == "neuron"] == [0.5, 0.4, 0.7, 0.6]
    # training stopped when the tracker was done, long before num_train_epochs (20)
    assert trainer.state.global_step == len(phases) * 4
    assert pmodel.num_dendrites == 1 and len(tracker.records.dendrite_phases) == 1
    assert tracker.final_architecture["dendrites"] == 1
    assert (tmp_path / "run" / "history.csv").is_file()

    steps = probe.steps
    assert [s["phase"] for s in steps[::4]] == phases
    assert all(s["is_tracker_optimizer"] and s["moved"] for s in steps)
    neuron = [s for s in steps if s["phase"] == "neuron"]
    assert all(s["covers_trainable"] for s in neuron)
    assert [s["dendrites"] for s in neuron] == [0] * 8 + [1] * 8
    dendrite = [s for s in steps if s["phase"] == "dendrite"]
    assert all(s["dendrites"] == 0 and s["candidates_only"] for s in dendrite)
    # one optimizer per cycle or phase; each scheduler is built over the Trainer's wrapper
    optimizers = [id(s["groups"]) for s in steps]
    assert len({id(s["scheduler"]) for s in steps}) == 3
    assert all(s["scheduler_optimizer"] is trainer.optimizer for s in steps)
    assert len(set(optimizers)) >= 3
    # the linear schedule restarts at each neuron cycle: full rate at the cycle's first step
    assert neuron[0]["lr"] == pytest.approx(1e-3) and neuron[8]["lr"] == pytest.approx(1e-3)
    assert neuron[1]["lr"] < 1e-3
    # the dendrite output weight is trained after the install, without weight decay
    ow = [m.output_weight for m in pmodel.dendrite_layers().values()]
    groups = neuron[8]["groups"]
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    undecayed = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(id(p) in undecayed and id(p) not in decayed for p in ow)
    assert {id(net.classifier.weight)} <= decayed


def test_a_run_cut_short_warns_and_evaluations_outside_training_are_ignored(tmp_path, caplog):
    net = tiny_bert()
    pmodel = pf.perforate(net)
    callback = PerforateTrainerCallback(pmodel, plot=False, schedule=pf.Schedule(neuron_patience=5))
    trainer = make_trainer(tmp_path, net, callbacks=[callback], eval_strategy="steps",
                           eval_steps=2, max_steps=6, eval_on_start=True)
    callback.bind(trainer)
    assert trainer.callback_handler.callbacks.count(callback) == 1
    assert (callback.monitor, callback.mode) == ("eval_loss", "min")
    trainer.train()
    tracker = callback.tracker
    # one tracker epoch per evaluation with training before it (not the one at the start)
    assert [r["epoch"] for r in tracker.records.history] == [1, 2, 3]
    assert [r["val"] for r in tracker.records.history] == [pytest.approx(v) for v in [
        h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h][1:]]
    assert not tracker.done and "before the perforated cycle was done" in caplog.text
    trainer.evaluate()
    assert len(tracker.records.history) == 3
    with pytest.raises(PhaseError, match=r"one trainer.train\(\) call"):
        trainer.train()


@pytest.mark.parametrize(("overrides", "match"), [
    ({"eval_strategy": "no"}, "eval_strategy='no'"),
    ({"load_best_model_at_end": True, "save_strategy": "epoch"}, "load_best_model_at_end"),
    ({"activation_checkpointing": True}, "checkpointing"),
    ({"callbacks": [EarlyStoppingCallback(2)]}, "EarlyStoppingCallback"),
])
def test_conflicting_settings_are_refused(tmp_path, overrides, match):
    net = tiny_bert()
    pmodel = pf.perforate(net)
    trainer = make_trainer(tmp_path, net, **overrides)
    with pytest.raises(ConfigError, match=match) as info:
        PerforateTrainerCallback(pmodel, trainer)
    assert isinstance(info.value, ValueError)


def test_sharded_training_and_user_optimizers_are_refused(tmp_path):
    net = tiny_bert()
    pmodel = pf.perforate(net)
    trainer = make_trainer(tmp_path, net)
    trainer.is_fsdp_enabled = True
    with pytest.raises(ConfigError, match="FSDP"):
        PerforateTrainerCallback(pmodel, trainer)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = Trainer(model=net, args=make_args(tmp_path), train_dataset=Tokens(8, 0),
                      eval_dataset=Tokens(8, 1), optimizers=(opt, None))
    with pytest.raises(ConfigError, match="optimizers="):
        PerforateTrainerCallback(pmodel, trainer)


def test_wrong_model_options_and_unbound_use_are_refused(tmp_path):
    net = tiny_bert()
    pmodel = pf.perforate(net)
    with pytest.raises(TypeError, match="PerforatedModel"):
        PerforateTrainerCallback(net)
    with pytest.raises(ConfigError, match="scheduler_factory"):
        PerforateTrainerCallback(pmodel, scheduler_factory=lambda o: None)
    trainer = make_trainer(tmp_path, net)
    with pytest.raises(ValueError, match="mode"):
        PerforateTrainerCallback(pmodel, trainer, mode="up")
    with pytest.raises(TypeError, match=r"PerforateTrainerCallback\(max_dendrites=1\) is now "
                       r"PerforateTrainerCallback\(schedule=pf\.Schedule\(max_dendrites=1\)"):
        PerforateTrainerCallback(pmodel, trainer, max_dendrites=1)
    callback = PerforateTrainerCallback(pmodel, schedule=pf.Schedule(neuron_patience=4))
    assert (callback.schedule.mode, callback.schedule.neuron_patience) == ("min", 4)  # eval_loss
    assert not any(isinstance(c, PerforateTrainerCallback)
                   for c in trainer.callback_handler.callbacks)
    other = make_trainer(tmp_path, tiny_bert())
    with pytest.raises(ConfigError, match="another model"):
        PerforateTrainerCallback(pmodel, other)
    unbound = PerforateTrainerCallback(pmodel)
    with pytest.raises(ConfigError, match="not bound"):
        make_trainer(tmp_path, net, callbacks=[unbound]).train()
    bound = PerforateTrainerCallback(pmodel, make_trainer(tmp_path, net))
    with pytest.raises(ConfigError, match="already bound"):
        bound.bind(make_trainer(tmp_path, net))


def test_a_missing_monitor_names_the_metrics(tmp_path):
    net = tiny_bert()
    pmodel = pf.perforate(net)
    trainer = make_trainer(tmp_path, net, max_steps=4)
    PerforateTrainerCallback(pmodel, trainer, monitor="accuracy", plot=False)
    with pytest.raises(ConfigError, match=r"'eval_accuracy' is not among .*eval_loss"):
        trainer.train()


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "perforate.integrations.hf")
    with pytest.raises(MissingExtraError, match=r"pip install 'perforate\[hf\]'"):
        importlib.import_module("perforate.integrations.hf")


def test_import_perforate_does_not_import_transformers():
    code = "import sys, perforate; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_default_config_grows_without_a_dendrite_phase(tmp_path):
    net = tiny_bert()
    pmodel = pf.perforate(net)  # the default: a new set is added at once and trained
    trainer = make_trainer(tmp_path, net, compute_metrics=Scripted([0.5, 0.4, 0.7, 0.6]))
    callback = PerforateTrainerCallback(pmodel, trainer, monitor="eval_score", plot=False,
                                        schedule=pf.Schedule(neuron_patience=1, max_dendrites=1))
    probe = Probe(callback, trainer)
    trainer.add_callback(probe)
    trainer.train()
    assert callback.tracker.done and pmodel.num_dendrites == 1
    assert [s["phase"] for s in probe.steps] == ["neuron"] * 16
    assert [s["dendrites"] for s in probe.steps] == [0] * 8 + [1] * 8
    assert all(s["is_tracker_optimizer"] and s["covers_trainable"] for s in probe.steps)
    grown = {id(p) for m in pmodel.dendrite_layers().values() for p in m.dendrite_parameters()}
    stepped = {id(p) for g in probe.steps[8]["groups"] for p in g["params"]}
    assert grown <= stepped  # the new set learns with the network
    assert len({id(s["scheduler"]) for s in probe.steps}) == 2


def test_a_grad_scaler_steps_each_new_optimizer(tmp_path):
    net = tiny_bert()
    pmodel = pf.perforate(net, pf.PerforationConfig.paper(candidates=2, seed=0))
    trainer = make_trainer(tmp_path, net, compute_metrics=Scripted([0.5, 0.4, 0.7, 0.6]),
                           gradient_accumulation_steps=2)
    trainer.add_callback(CpuGradScaler(trainer))  # runs before the perforate callback
    callback = PerforateTrainerCallback(pmodel, trainer, monitor="score", plot=False,
                                        schedule=pf.Schedule(neuron_patience=1,
                                                             dendrite_patience=1,
                                                             max_dendrite_epochs=2,
                                                             max_dendrites=1))
    probe = Probe(callback, trainer)
    trainer.add_callback(probe)
    trainer.train()
    assert callback.tracker.done and pmodel.num_dendrites == 1
    assert trainer.optimizer.scaler is trainer.accelerator.scaler
    phases = [s["phase"] for s in probe.steps]
    assert phases[:4] == ["neuron"] * 4 and "dendrite" in phases and phases[-1] == "neuron"
    assert len(probe.steps) == 2 * len(callback.tracker.records.history)  # 4 batches, 2 per step
    assert all(s["is_tracker_optimizer"] and s["moved"] for s in probe.steps)


# ------------------------------------------------------------------ Trainer checkpoints
class ByNeuronEpoch:
    """compute_metrics scripted by the tracker's neuron epochs so far: the same scores in a
    resumed run as in the uninterrupted one (the tracker's history is restored)."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores
        self.callback: PerforateTrainerCallback | None = None

    def __call__(self, _: Any) -> dict[str, float]:
        done = sum(r["phase"] == "neuron" for r in self.callback.tracker.records.history)
        return {"score": self.scores[done]}


def checkpointed_run(out: Any, resume: str | None = None,
                     config: pf.PerforationConfig | None = None) -> PerforateTrainerCallback:
    """A cycle with a dendrite phase and one install, a Trainer checkpoint every epoch (4
    steps); a fresh model, callback and Trainer each time, as in a new process."""
    net = tiny_bert()
    pmodel = pf.perforate(net, config or pf.PerforationConfig.paper(candidates=2, seed=0))
    metric = ByNeuronEpoch([0.5, 0.4, 0.7, 0.8, 0.6])
    trainer = make_trainer(out, net, compute_metrics=metric, save_strategy="epoch",
                           logging_strategy="steps", logging_steps=1)
    callback = PerforateTrainerCallback(pmodel, trainer, monitor="score", plot=False,
                                        schedule=pf.Schedule(neuron_patience=1,
                                                             dendrite_patience=1,
                                                             max_dendrite_epochs=2,
                                                             max_dendrites=1))
    metric.callback = callback
    trainer.train(resume_from_checkpoint=resume)
    return callback


def checkpoints(out: Any) -> dict[str, dict[str, Any]]:
    """``{checkpoint dir: its checkpoint.json}``, in step order."""
    dirs = sorted((out / "hf").glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[1]))
    return {str(d): json.loads((d / "checkpoint.json").read_text()) for d in dirs}


def without_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def steps_after(callback: PerforateTrainerCallback, step: int) -> list[tuple[Any, ...]]:
    """The Trainer's log of each optimizer step after `step`: loss, learning rate, norm."""
    return [(h["step"], h["loss"], h["learning_rate"], h["grad_norm"])
            for h in callback.trainer.state.log_history if "loss" in h and h["step"] > step]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: Any) -> tuple[Any, PerforateTrainerCallback]:
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, checkpointed_run(out)


def test_a_resumed_trainer_run_equals_the_uninterrupted_one(uninterrupted, tmp_path, caplog):
    out, full = uninterrupted
    tracker = full.tracker
    assert tracker.done and full.model.num_dendrites == 1
    assert [r["phase"] for r in tracker.records.history] == ["neuron"] * 2 + ["dendrite"] * 2 + [
        "neuron"] * 3
    saved = checkpoints(out)
    assert [m["epoch"] for m in saved.values()] == [1, 2, 3, 4, 5, 6, 7]  # one per epoch
    # One checkpoint inside the dendrite phase (candidates training), one after the growth
    # and before the best epoch (6), whose weights the finished run keeps.
    in_phase = next(d for d, m in saved.items() if m["phase"] == "dendrite")
    grown = next(d for d, m in saved.items() if m["dendrites"] == 1 and m["epoch"] == 5)
    assert tracker.final_architecture["best_epoch"] == 6
    for checkpoint in (in_phase, grown):
        resumed = checkpointed_run(tmp_path / checkpoint[-2:], resume=checkpoint)
        # Bitwise equal, not allclose: the same CPU kernels run on the same values in the
        # same order, with the Trainer's RNG states restored (BERT's dropout draws), so any
        # difference means some state (schedule, optimizer moments, candidates) was lost.
        # Both runs use one torch thread (conftest.py, session-wide: the module fixture too);
        # another thread count splits the CPU kernels' sums otherwise (a 1-ulp grad norm).
        step = 4 * saved[checkpoint]["epoch"]
        assert steps_after(resumed, step) == steps_after(full, step)
        assert len(steps_after(full, step)) == 28 - step
        mine, theirs = resumed.model.state_dict(), full.model.state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), checkpoint
        assert resumed.model.num_dendrites == 1 and resumed.tracker.done
        assert without_times(resumed.tracker.records.history) == without_times(
            tracker.records.history)
        assert without_times(resumed.tracker.records.architectures) == without_times(
            tracker.records.architectures)
        assert resumed.tracker.schedule.stop_reason == tracker.schedule.stop_reason
        assert resumed.trainer.state.global_step == full.trainer.state.global_step == 28
    assert "cannot resume" not in caplog.text and "options differ" not in caplog.text


def test_trainer_checkpoints_hold_the_perforate_state_and_load_with_pf_load(uninterrupted):
    out, _ = uninterrupted
    grown = next(d for d, m in checkpoints(out).items() if m["dendrites"] == 1)
    state = torch.load(f"{grown}/checkpoint.pt", weights_only=True)  # no pickled objects
    assert state["format"] == "perforate-tracker" and state["rng"] is not None
    assert state["model"]["structure"] and set(state["model"]["structure"].values()) == {1}
    # the directory is also a pmodel.save_pretrained one: pf.load rebuilds its model
    loaded = pf.load(grown, tiny_bert())
    assert loaded.num_dendrites == 1
    weights = {k.removeprefix("net."): v for k, v in state["model"]["state_dict"].items()}
    assert all(torch.equal(v, weights[k]) for k, v in loaded.net.state_dict().items())
    assert not any(f.name.startswith(".") for f in Path(grown).iterdir())  # no temp files


def test_resuming_what_the_callback_cannot_continue_is_refused(uninterrupted, tmp_path):
    out, _ = uninterrupted
    saved = checkpoints(out)
    last = list(saved)[-1]
    assert saved[last]["done"]
    with pytest.raises(PhaseError, match="done: nothing to resume"):
        checkpointed_run(tmp_path / "a", resume=last)
    plain = tmp_path / "plain"  # a Trainer checkpoint without the callback's files
    shutil.copytree(list(saved)[1], plain)
    (plain / "checkpoint.pt").unlink()
    with pytest.raises(LoadError, match="not saved with a PerforateTrainerCallback"):
        checkpointed_run(tmp_path / "b", resume=str(plain))
    with pytest.raises(LoadError, match=r"another config \(cascade\.candidates\)"):
        checkpointed_run(tmp_path / "c", resume=list(saved)[1],
                         config=pf.PerforationConfig.paper(candidates=3, seed=0))
    # restored, but the Trainer starts from step 0: refused before any training
    net = tiny_bert()
    pmodel = pf.perforate(net, pf.PerforationConfig.paper(candidates=2, seed=0))
    trainer = make_trainer(tmp_path / "d", net)
    callback = PerforateTrainerCallback(pmodel, trainer, plot=False)
    callback.restore(list(saved)[1])
    assert len(callback.tracker.records.history) == 2
    with pytest.raises(PhaseError, match="starts at step 0"):
        trainer.train()
    assert trainer.state.global_step == 0
