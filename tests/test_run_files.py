"""A run's files under faults: a kill at every write point, a moved or copied run, two
writers, a full disk, file modes (issue 22, items 1 and 3-6)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import perforate as pf
from perforate.io import atomic
from perforate.io.storage import read_net_factory
from perforate.training.checkpoint import read_checkpoint, write_checkpoint

#: Validation scores by epoch: cycle 0 (4) + dendrite (2) + cycle 1 (4) + dendrite (2) + 3.
SCORES = [0.1, 0.3, 0.2, 0.2, 0, 0, 0.35, 0.5, 0.4, 0.4, 0, 0, 0.5, 0.45, 0.4]


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def start(out: Path, **kwargs) -> pf.Tracker:
    torch.manual_seed(0)
    model = pf.perforate(make_net(), pf.PerforationConfig.paper(seed=0))
    return pf.Tracker(model, sgd, out_dir=out, plot=False, net_factory="test_run_files:make_net",
                      **kwargs,
                      schedule=pf.Schedule(neuron_patience=2, dendrite_patience=5,
                                           max_dendrite_epochs=2))


def run(tracker: pf.Tracker, until: int | None = None) -> pf.Tracker:
    """Train (a batch per epoch, seeded by the epoch) until done or epoch `until`."""
    model = tracker.perforated
    while not tracker.done and (until is None or tracker.epoch < until):
        g = torch.Generator().manual_seed(tracker.epoch)
        x, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
        tracker.optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        tracker.optimizer.step()
        if tracker.phase == "dendrite":
            tracker.step()
        else:
            tracker.step(SCORES[tracker.epoch], test_score=SCORES[tracker.epoch] - 0.05)
    return tracker


def outcome(tracker: pf.Tracker) -> dict:
    return {"history": [{k: v for k, v in r.items() if k != "seconds"}
                        for r in tracker.records.history],
            "state": {k: v.clone() for k, v in tracker.perforated.state_dict().items()},
            "dendrites": tracker.perforated.num_dendrites}


def assert_same(a: dict, b: dict) -> None:
    assert a["history"] == b["history"] and a["dendrites"] == b["dendrites"]
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


X = torch.randn(5, 4, generator=torch.Generator().manual_seed(99))


def model_output(directory: Path) -> torch.Tensor:
    return pf.load(directory, make_net())(X).detach()


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("full") / "run"
    tracker = run(start(out))
    assert tracker.done and tracker.epoch == len(SCORES)
    return {**outcome(tracker), "output": model_output(out / "model")}


class Crash(BaseException):
    """A simulated kill: raised instead of a write's rename (the disk as a SIGKILL leaves it)."""


def crash_at(monkeypatch, n: int | None) -> list[int]:
    """Count the renames that publish a file or directory; raise `Crash` at the `n`-th."""
    count = [0]
    commit, exchange = atomic._commit, atomic._exchange

    def counted(real):
        def step(*args):
            count[0] += 1
            if count[0] == n:
                raise Crash
            return real(*args)
        return step

    monkeypatch.setattr(atomic, "_commit", counted(commit))
    monkeypatch.setattr(atomic, "_exchange", counted(exchange))
    return count


# ------------------------------------------------------------------------- item 4 (kills)
def test_a_kill_at_every_write_point_resumes_to_the_same_run(full, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        writes = crash_at(m, None)
        run(start(tmp_path / "count"))
    total = writes[0]
    assert total >= 30  # artifacts and checkpoints at 5 switches, the model's files
    for n in range(1, total + 1):
        out = tmp_path / f"k{n}"
        with monkeypatch.context() as m:
            crash_at(m, n)
            try:
                run(start(out))
            except Crash:
                pass
            else:
                raise AssertionError(f"write {n} of {total} never happened")
        if (out / "model").exists():  # never a broken model directory
            model_output(out / "model")
        if (out / "checkpoint" / "checkpoint.pt").exists():
            tracker = pf.resume(out, make_net(), sgd)
        else:  # killed before the first checkpoint: start over
            tracker = start(out)
        run(tracker)
        assert_same(outcome(tracker), full)
        assert torch.equal(model_output(out / "model"), full["output"]), n
        assert json.loads((out / "checkpoint" / "checkpoint.json").read_text())["done"]
        assert not [p for p in out.rglob(".*") if p.name != ".lock"], n  # no temp files
        shutil.rmtree(out)


def test_resume_rebuilds_a_missing_or_incomplete_model(full, tmp_path):
    out = tmp_path / "run"
    run(start(out))
    (out / "model" / "perforate_config.json").unlink()  # a model an older version half wrote
    with pytest.raises(pf.LoadError):
        model_output(out / "model")
    tracker = pf.resume(out, make_net(), sgd)
    assert tracker.done and torch.equal(model_output(out / "model"), full["output"])
    shutil.rmtree(out / "model")
    pf.resume(out, make_net(), sgd)
    assert torch.equal(model_output(out / "model"), full["output"])
    assert json.loads((out / "model" / "perforate_net.json").read_text()) == {
        "net_factory": "test_run_files:make_net"}


# ----------------------------------------------------------------- item 1 (moved, copied)
def test_a_copied_or_moved_run_resumes_where_it_is(full, tmp_path):
    first = tmp_path / "first"
    tracker = run(start(first), until=7)  # checkpointed at the phase switch of epoch 6
    tracker.close()
    del tracker
    state = torch.load(first / "checkpoint" / "checkpoint.pt", weights_only=True)
    assert state["settings"]["out_dir"] == ".."  # nothing absolute
    summary = json.loads((first / "summary.json").read_text())
    assert summary["settings"]["out_dir"] == "."
    before = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}

    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    resumed = pf.resume(copy, make_net(), sgd)
    assert resumed.files.out_dir == copy
    run(resumed)
    assert_same(outcome(resumed), full)
    assert json.loads((copy / "checkpoint" / "checkpoint.json").read_text())["done"]
    assert torch.equal(model_output(copy / "model"), full["output"])
    after = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    assert after == before and not (first / "model").exists()  # the original is untouched

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)
    run(pf.resume(moved / "checkpoint", make_net(), sgd))
    assert not first.exists() and torch.equal(model_output(moved / "model"), full["output"])


def test_an_older_checkpoint_with_an_absolute_out_dir_resumes_where_it_is(tmp_path):
    out = tmp_path / "run"
    run(start(out), until=7).close()
    path = out / "checkpoint" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["settings"]["out_dir"] = str(tmp_path / "gone")  # as older versions stored it
    torch.save(state, path)
    (out / "checkpoint" / "checkpoint.json").unlink()  # older versions' files: no checksums
    tracker = run(pf.resume(out, make_net(), sgd))
    assert tracker.files.out_dir == out and not (tmp_path / "gone").exists()
    assert (out / "model" / "model.safetensors").is_file()


# --------------------------------------------------------------------- item 3 (writers)
HOLDER = """
import sys, time, torch, perforate as pf
from torch import nn
model = pf.perforate(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)))
tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, lr=0.1), out_dir=sys.argv[1],
                     plot=False)
print("ready", flush=True)
time.sleep(120)
"""


def test_a_second_run_on_one_out_dir_is_refused_until_the_first_dies(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(pf.RunLockedError, match=rf"{out}.*PID {proc.pid}\b"):
            start(out)
        assert not (out / "checkpoint").exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    tracker = start(out)  # the dead holder's lock is taken over
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    run(tracker)
    assert not (out / ".lock").exists()  # released when done
    (out / ".lock").write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": "x"}))  # stale file
    run(pf.resume(out, make_net(), sgd))


def test_a_newer_tracker_in_the_same_process_takes_over(tmp_path, caplog):
    out = tmp_path / "run"
    old = start(out, checkpoint_every=1)
    new = start(out, checkpoint_every=1)
    assert "takes over" in caplog.text
    with pytest.raises(pf.RunLockedError, match="took it over"):
        run(old, until=1)
    assert not (out / "checkpoint").exists()
    run(new, until=2)
    assert read_checkpoint(out)["schedule"]["epoch"] == 2


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_two_writers_of_one_model_directory_never_collide(tmp_path, monkeypatch, exchange):
    """Writers replace the directory whole: no error, and a reader meanwhile always loads
    one of the two models whole. Where the system has no atomic exchange (rename aside, then
    rename in), a reader racing two writers may instead get a `LoadError`, or find no
    directory between the two renames (`FileNotFoundError`; both rare); it never gets wrong
    values."""
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    torch.manual_seed(1)
    models = [pf.perforate(make_net(), pf.PerforationConfig.paper(seed=s)) for s in (0, 1)]
    outputs = [m(X).detach() for m in models]
    target = tmp_path / "model"
    models[0].save_pretrained(target)
    errors: list[BaseException] = []
    done = threading.Event()

    def write(model) -> None:
        try:
            for _ in range(15):
                model.save_pretrained(target)
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        reads = 0
        while not done.is_set() or reads < 5:
            try:
                y = model_output(target)
                assert torch.equal(y, outputs[0]) or torch.equal(y, outputs[1])
            except (pf.LoadError, FileNotFoundError) as exc:
                if exchange:
                    errors.append(exc)
                    return
            except BaseException as exc:
                errors.append(exc)
                return
            reads += 1

    writers = [threading.Thread(target=write, args=(m,)) for m in models]
    reader = threading.Thread(target=read)
    for t in [*writers, reader]:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    assert not errors, errors[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dirs left
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors",
                                                        "perforate_config.json"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_a_model_directory_moved_aside_mid_save_is_replaced_whole(tmp_path, monkeypatch,
                                                                   exchange):
    """The races that once failed the stress test above, made certain: another writer moves
    the directory aside just as this one looks into it (rename-aside), or just before this
    one swaps it (renameat2). The save neither raises nor writes into the moved directory;
    the new model is there whole."""
    models = [pf.perforate(make_net(), pf.PerforationConfig.paper(seed=s)) for s in (0, 1)]
    target, aside = tmp_path / "model", tmp_path / "aside"
    models[0].save_pretrained(target)
    real_cwd, real_exchange = Path.cwd, atomic._exchange

    def rival() -> None:  # the other writer's "rename aside", once
        if target.exists() and not aside.exists():
            os.rename(target, aside)

    if exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: (rival(), real_exchange(a, b))[1])
    else:  # Path.cwd is asked just before the save looks into the directory
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
        monkeypatch.setattr(Path, "cwd", staticmethod(lambda: (rival(), real_cwd())[1]))
    models[1].save_pretrained(target)
    assert sorted(p.name for p in aside.iterdir()) == sorted(
        p.name for p in target.iterdir())  # the moved one was left as it was, not written into
    assert torch.equal(model_output(aside), models[0](X).detach())
    assert torch.equal(model_output(target), models[1](X).detach())



# ------------------------------------------------------------------- item 5 (full disk)
def fake_torch_save_on_full_disk(obj, f):
    """What torch.save does on a full disk: the file's OSError becomes the context of a vague
    RuntimeError from its C++ writer."""
    try:
        f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 "
                           "vs 598") from None


def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    tracker = run(start(out), until=5)
    before = (out / "checkpoint" / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(torch, "save", fake_torch_save_on_full_disk)
    with pytest.raises(OSError, match=r"no space left on device while writing "
                       rf"{out / 'checkpoint' / 'checkpoint.pt'}; the previous checkpoint is "
                       "intact") as info:
        tracker.save_checkpoint(out / "checkpoint")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert (out / "checkpoint" / "checkpoint.pt").read_bytes() == before
    assert pf.resume(out / "checkpoint", make_net(), sgd, out_dir=None).epoch == 4


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs the right to mount, e.g. root in a container), else skip."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the injected-ENOSPC test covers the message)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_really_full_disk_during_checkpoint_and_final_model(full, small_disk):
    out = small_disk / "run"
    tracker = run(start(out), until=5)
    filler = fill(small_disk)
    with pytest.raises(OSError, match=r"no space left on device while writing .*checkpoint\.pt; "
                       "the previous checkpoint is intact"):
        tracker.save_checkpoint(out / "checkpoint")
    assert read_checkpoint(out)["schedule"]["epoch"] == 4
    filler.unlink()
    tracker = run(tracker, until=len(SCORES) - 1)
    filler = fill(small_disk)
    with pytest.raises(OSError, match="no space left on device while writing"):
        run(tracker)  # the final epoch: artifacts, model, checkpoint
    filler.unlink()
    assert not read_checkpoint(out)["schedule"]["done"]
    del tracker
    tracker = run(pf.resume(out, make_net(), sgd))
    assert_same(outcome(tracker), full)
    assert torch.equal(model_output(out / "model"), full["output"])


# ------------------------------------------------------------------------ item 6 (modes)
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_is_written_with_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        run(start(out))
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert "checkpoint/checkpoint.pt" in modes and "model/model.safetensors" in modes
    want = {p: (0o777 if (out / p).is_dir() else 0o666) & ~umask for p in modes}
    assert modes == want


def test_temp_files_of_a_killed_writer_are_swept(tmp_path):
    """A SIGKILLed writer leaves its temp file; the next write beside it removes it."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(proc.stdout)
    time.sleep(0.1)
    left = tmp_path / f".f.txt.{dead}-{atomic._HOST}-0000abcd.tmp"
    left.write_bytes(b"half")
    other_host = tmp_path / f".f.txt.{dead}-zzzz-0000abcd.tmp"
    other_host.write_bytes(b"half")
    atomic.atomic_write_text(tmp_path / "f.txt", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other_host.name, "f.txt"]


def test_a_flipped_byte_in_perforate_net_json_is_caught_and_resume_repairs_it(tmp_path):
    out = tmp_path / "run"
    run(start(out))
    path = out / "model" / "perforate_net.json"
    data = path.read_bytes()
    assert read_net_factory(out / "model") == "test_run_files:make_net"
    i = data.index(b"make_net")
    path.write_bytes(data[:i] + b"l" + data[i + 1:])  # "lake_net": another factory
    with pytest.raises(pf.LoadError, match=rf"{path} is corrupt or not the file"):
        read_net_factory(out / "model")
    pf.resume(out, make_net(), sgd)  # a finished run's model that is not whole is rebuilt
    assert path.read_bytes() == data


def test_a_checkpoint_read_while_it_is_rewritten_is_always_whole(tmp_path):
    """``perforate export`` of a running run: each read is one of the checkpoints, checked."""
    state = run(start(None), until=3).state_dict(include_rng=True)
    write_checkpoint(tmp_path, {**state, "n": -1}, {})
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for n in range(40):  # each a different file
                write_checkpoint(tmp_path, {**state, "n": n}, {"n": n})
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        done.set()

    def read() -> None:
        seen = set()
        while not done.is_set():
            try:
                got = read_checkpoint(tmp_path)
                assert got["schedule"]["epoch"] == 3 and -1 <= got["n"] < 40
                seen.add(got["n"])
            except BaseException as exc:
                errors.append(exc)
                return
        assert len(seen) > 1

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_a_symlinked_model_directory_is_updated_through_the_link_not_replaced(tmp_path):
    """Saving to a symlink of a model directory writes the files into the directory it points
    at; the link stays a link (replacing it whole would swap out the link itself)."""
    models = [pf.perforate(make_net(), pf.PerforationConfig.paper(seed=s)) for s in (0, 1)]
    real, link = tmp_path / "real", tmp_path / "link"
    models[0].save_pretrained(real)
    link.symlink_to(real, target_is_directory=True)
    models[1].save_pretrained(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert torch.equal(model_output(real), models[1](X).detach())
