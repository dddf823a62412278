"""DDP on CPU (gloo, 2 processes): every rank ends bitwise identical, and equal to one process
on the concatenated batches, through a dendrite phase (paper) and a growth (default)."""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import perforate as pf
from perforate.parallel.ddp import check_not_sharded

WORLD, LOCAL_BATCH, BATCHES, EPOCHS = 2, 8, 3, 9


def _data(features: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = WORLD * LOCAL_BATCH * BATCHES
    x = torch.randn(n, features, generator=g)
    xv = torch.randn(WORLD * 16, features, generator=g)
    target = lambda t: torch.sin(2 * t[:, :2]) + t[:, 2:4] * t[:, 4:5]  # noqa: E731
    return x, target(x), xv, target(xv)


def _config(kind: str) -> pf.PerforationConfig:
    if kind in ("paper", "wide"):
        return pf.PerforationConfig.paper(seed=0, candidates=4)
    if kind == "rank":  # the dendrites' shared input projection P (drawn, then trained)
        return pf.PerforationConfig.paper(seed=0, candidates=4, dendrite_rank=3,
                                          train_dendrites=True)
    if kind == "correlation":  # a second reduction (the variance); a scale-dependent install
        return pf.PerforationConfig.paper(seed=0, cascade=pf.CascadeCorrelation(
            candidates=4, objective="correlation", output_init="least_squares"))
    return pf.PerforationConfig(seed=0)


def _run(kind: str, rank: int, world: int) -> dict[str, Any]:
    """Train through neuron -> dendrite/grow -> install -> neuron; `world` ranks each see their
    share of every batch (world=1: the whole batch) and score their own validation shard."""
    # "wide": 1400 inputs, so the first layer's candidates exchange inputs and output
    # gradients (`DistributedSync.gathers`) where the others sum weight gradients.
    features = 1400 if kind == "wide" else 5
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(features, 12), nn.ReLU(), nn.Linear(12, 2))
    model = pf.perforate(net, _config(kind))
    wrapped = DDP(model) if world > 1 else model
    tracker = pf.Tracker(wrapped, lambda p: torch.optim.Adam(p, 1e-2), plot=False,
                         schedule=pf.Schedule(neuron_patience=2, dendrite_patience=2,
                                              max_dendrite_epochs=3, max_epochs=EPOCHS,
                                              improvement_threshold=10.0))
    x, y, xv, yv = _data(features)
    installed = gathers = None
    while not tracker.done:
        for b in range(BATCHES):
            rows = slice(b * WORLD * LOCAL_BATCH, (b + 1) * WORLD * LOCAL_BATCH)
            xb, yb = x[rows], y[rows]
            if world > 1:
                xb, yb = xb.chunk(world)[rank], yb.chunk(world)[rank]
            tracker.optimizer.zero_grad(set_to_none=True)
            if world > 1:  # the DDP wrapper in a neuron phase, the model in a dendrite phase
                assert isinstance(tracker.model, DDP) == (tracker.phase == "neuron")
                assert tracker.perforated is model
            loss = nn.functional.mse_loss(tracker.model(xb), yb)
            loss.backward()
            tracker.optimizer.step()
            if tracker.phase == "dendrite" and world > 1:
                gathers = [m.candidates._gathers for m in model.dendrite_layers().values()]
        val = None
        if tracker.phase == "neuron":
            with torch.no_grad():  # each rank its own shard; one process: the shards' mean
                shards = [-float(nn.functional.mse_loss(model(a), t))
                          for a, t in zip(xv.chunk(WORLD), yv.chunk(WORLD), strict=True)]
            val = shards[rank] if world > 1 else sum(shards) / WORLD
        decision = tracker.step(val)
        if decision.event in ("install", "grow") and decision.phase == "neuron":
            installed = {k: v.clone() for k, v in model.state_dict().items()}
    history = [{k: v for k, v in r.items() if k != "seconds"} for r in tracker.records.history]
    assert tracker.model is model  # done: the tracker keeps no DDP wrapper
    return {"history": history, "installed": installed, "final": model.state_dict(),
            "events": [r["event"] for r in tracker.records.history], "gathers": gathers}


class _Killed(Exception):
    pass


def _kill_at(epoch: int, rng_at_kill: list[torch.Tensor]) -> Any:
    def on_epoch_end(tracker: pf.Tracker, decision: Any) -> None:
        if decision.epoch == epoch:
            rng_at_kill.append(torch.get_rng_state())  # as checkpointed in this step
            raise _Killed

    return on_epoch_end


def _fit(rank: int, world: int, out: Path, resume: Path | None = None,
         kill_at: int | None = None, rng: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """`pf.fit` with DistributedSamplers (world > 1) or plain loaders of the global batch;
    `kill_at`: stop after that epoch; `resume`: continue from that run's checkpoint. Each
    rank's global RNG is seeded apart (as dropout would need), which changes no weight; `rng`
    gets the RNG state at the kill, or right after the resume."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 2))
    factory = lambda p: torch.optim.Adam(p, 1e-2)  # noqa: E731
    tracker = None
    rng = [] if rng is None else rng
    if resume is None:
        model = pf.perforate(net, _config("paper"))
        torch.manual_seed(100 + rank)
    else:
        tracker = pf.resume(resume, net, factory, wrap=DDP if world > 1 else None)
        rng.append(torch.get_rng_state())
        model = tracker.perforated
    x, y, xv, yv = _data()
    sets = [TensorDataset(x, y), TensorDataset(xv, yv)]
    if world > 1:
        loaders = [DataLoader(d, LOCAL_BATCH, sampler=DistributedSampler(d, shuffle=False))
                   for d in sets]
    else:
        loaders = [DataLoader(d, LOCAL_BATCH * WORLD) for d in sets]
    tracker = pf.fit(DDP(model) if world > 1 and tracker is None else model, *loaders,
                     nn.functional.mse_loss, factory, progress=False, tracker=tracker,
                     on_epoch_end=None if kill_at is None else _kill_at(kill_at, rng),
                     schedule=pf.Schedule(neuron_patience=2, dendrite_patience=2,
                                          max_dendrite_epochs=3, max_epochs=EPOCHS,
                                          improvement_threshold=10.0),
                     tracker_kwargs={"plot": False, "out_dir": out, "checkpoint_every": 1})
    history = [{k: v for k, v in r.items() if k != "seconds"} for r in tracker.records.history]
    return {"history": history, "final": model.state_dict(),
            "phases": tracker.records.dendrite_phases, "rng": rng}


def _worker(rank: int, kind: str, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        if kind == "resume":  # killed in the dendrite phase, resumed from rank 0's files
            rng: list[torch.Tensor] = []
            with pytest.raises(_Killed):
                _fit(rank, WORLD, Path(out) / f"killed{rank}", kill_at=4, rng=rng)
            dist.barrier()  # rank 0's checkpoint is written
            result = _fit(rank, WORLD, Path(out) / "unused", resume=Path(out) / "killed0")
            result["rng_at_kill"] = rng
        elif kind == "fit":
            result = _fit(rank, WORLD, Path(out) / f"run{rank}")
        else:
            result = _run(kind, rank, WORLD)
        torch.save(result, Path(out) / f"{kind}{rank}.pt")
        dist.barrier()  # no rank tears the group down while another still reads from it
    finally:
        _teardown()


def _linear_worker(rank: int, port: int, out: str) -> None:
    """`DistributedSync.linear` with 3 rows on rank 0 and 5 on rank 1, two backwards each."""
    from perforate.parallel.distributed import DistributedSync

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        sync = DistributedSync()
        result = {}
        for case, (x, w, b) in _linear_cases().items():
            w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
            mine = x[:3] if rank == 0 else x[3:]
            for _ in range(2):  # gradient accumulation adds global gradients
                (sync.linear(mine, w, b) ** 2).sum().backward()
            result[case] = (w.grad, b.grad, sync.gathers(5 * x.shape[1], w.shape[1],
                                                          w.shape[0]))
        torch.save(result, Path(out) / f"linear{rank}.pt")
        dist.barrier()
    finally:
        _teardown()


def _linear_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return {name: (torch.randn(8, 2, fan_in, generator=g),
                   torch.randn(fan_out, fan_in, generator=g), torch.randn(fan_out, generator=g))
            for name, fan_in, fan_out in (("gather", 1400, 48), ("sum", 3, 40))}


def test_linear_gives_the_global_batchs_gradients_on_every_rank(tmp_path: Path) -> None:
    mp.spawn(_linear_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"linear{r}.pt") for r in range(WORLD)]
    for case, (x, w, b) in _linear_cases().items():
        w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
        for _ in range(2):
            (nn.functional.linear(x, w, b) ** 2).sum().backward()
        (gw0, gb0, gathers), (gw1, gb1, _) = ranks[0][case], ranks[1][case]
        assert gathers == (case == "gather")
        assert torch.equal(gw0, gw1) and torch.equal(gb0, gb1)
        torch.testing.assert_close(gw0, w.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gb0, b.grad, rtol=1e-5, atol=1e-5)


def test_gathers_when_the_exchange_is_smaller_than_the_weights() -> None:
    from perforate.parallel.distributed import DistributedSync

    sync = object.__new__(DistributedSync)
    sync.world = 2
    assert sync.gathers(32, 9216, 512)  # the MNIST CNN's fc1, K=4: 0.6 M vs 9.4 M numbers
    assert not sync.gathers(32, 32, 512)  # a narrow layer: 34 k vs 34 k
    assert not sync.gathers(4096, 256, 1024)  # a long sequence: 10.5 M vs 0.5 M
    # small: 2 x 16 x 320 = 10 k against 33 k, but 33 k rides in the step's one sum
    assert not sync.gathers(16, 64, 256)
    assert sync.gathers(16, 256, 256)  # 17 k against 132 k: big enough to exchange


def _overflow_worker(rank: int, port: int, out: str, kind: str) -> None:
    """A dendrite phase under a GradScaler where rank 0's loss overflows at batch 1."""
    import datetime

    from perforate.parallel.distributed import DistributedSync

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        result = _overflow_run(DistributedSync(), rank, kind)
        torch.save(result, Path(out) / f"overflow{rank}.pt")
        dist.barrier()
    finally:
        _teardown()


def _overflow_run(sync: Any, rank: int, kind: str) -> dict[str, Any]:
    torch.manual_seed(0)
    model = pf.perforate(nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 2)),
                         _config(kind))
    model.set_distributed(sync)
    model.begin_dendrite_phase()
    opt = model.candidate_optimizer()
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    x, y, _, _ = _data()
    params, scales, skipped = [], [], []
    for b in range(BATCHES):
        rows = slice(b * WORLD * LOCAL_BATCH, (b + 1) * WORLD * LOCAL_BATCH)
        xb, yb = x[rows].chunk(WORLD)[rank], y[rows].chunk(WORLD)[rank]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(xb), yb)
        if b == 1 and rank == 0:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        params.append(torch.cat([p.detach().flatten().clone()
                                 for g in opt.param_groups for p in g["params"]]))
        scales.append(scaler.get_scale())
        skipped.append([int(m.candidates.skipped) for m in model.dendrite_layers().values()])
    return {"params": params, "scales": scales, "skipped": skipped}


@pytest.mark.parametrize("kind", ["paper", "correlation"])
def test_an_overflow_on_one_rank_skips_the_step_on_every_rank(kind: str, tmp_path: Path,
                                                             ) -> None:
    """A GradScaler decides from each rank's own gradients: the rank whose loss overflowed
    skips its step, so the others must too (else they wait for it in the gradient sum).
    Both objectives: each poisons its candidate gradient through its own scales."""
    mp.spawn(_overflow_worker, args=(_free_port(), str(tmp_path), kind), nprocs=WORLD,
             join=True)
    ranks = [torch.load(tmp_path / f"overflow{r}.pt") for r in range(WORLD)]
    assert ranks[0]["scales"] == ranks[1]["scales"] == [16.0, 8.0, 8.0]  # halved: skipped
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [[0, 0], [1, 1], [1, 1]]
    for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
        assert torch.equal(a, b)
    p0, p1, p2 = ranks[0]["params"]
    assert torch.equal(p0, p1) and not torch.equal(p1, p2)  # batch 1 stepped nowhere
    assert torch.isfinite(p2).all()


class _GRURegressor(nn.Module):
    """A GRU (its candidates observe a zero probe on the gate pre-activations) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(5, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0][:, -1])


def _deferred_run(sync: Any, rank: int, world: int) -> dict[str, Any]:
    """One dendrite-phase step of an MLP with three perforated layers, of one whose first
    layer exchanges inputs (`DistributedSync.gathers`; "wide2": two backwards, whose
    gradients accumulate, before the step) and of a GRU model, counting the collectives of
    the backwards and of the step; the candidates' gradients before the step, and their
    values after it. One process (world 1) sees every rank's batch, concatenated."""
    g = torch.Generator().manual_seed(3)
    xs, ys = torch.randn(WORLD * LOCAL_BATCH, 4, 350, generator=g), torch.randn(16, 2, generator=g)

    def local(t: torch.Tensor, part: int, parts: int) -> torch.Tensor:
        shards = [shard.chunk(parts)[part] for shard in t.chunk(WORLD)]
        return shards[rank] if world > 1 else torch.cat(shards)

    out: dict[str, Any] = {}
    torch.manual_seed(0)
    nets = {"mlp": nn.Sequential(nn.Flatten(), nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 12),
                                 nn.ReLU(), nn.Linear(12, 2)),
            "wide": nn.Sequential(nn.Flatten(), nn.Linear(1400, 12), nn.ReLU(),
                                  nn.Linear(12, 2)),
            "wide2": nn.Sequential(nn.Flatten(), nn.Linear(1400, 12), nn.ReLU(),
                                   nn.Linear(12, 2)),
            "gru": _GRURegressor()}
    features = {"mlp": 5, "wide": 350, "wide2": 350, "gru": 5}
    calls: list[str] = []
    real = {name: getattr(dist, name) for name in ("all_gather", "all_reduce")}
    for name, fn in real.items():
        setattr(dist, name, lambda *a, name=name, fn=fn, **k: (
            calls.append(name + (" async" if k.get("async_op") else "")), fn(*a, **k))[1])
    from perforate.parallel.distributed import DistributedSync

    wait = DistributedSync._wait  # a collective waited for at once (a sum, polling)
    DistributedSync._wait = lambda self, work: (calls.append("wait"), wait(self, work))[1]
    try:
        for name, net in nets.items():
            model = pf.perforate(net, _config("paper"))
            if sync is not None:
                model.set_distributed(sync)
            model.begin_dendrite_phase()
            opt = model.candidate_optimizer()
            before = {n: p.detach().clone() for n, p in model.named_parameters()
                      if ".candidates." in n}
            parts = 2 if name == "wide2" else 1
            out[f"{name}_calls_backward"] = []
            for part in range(parts):
                x, y = local(xs, part, parts)[..., :features[name]], local(ys, part, parts)
                loss = nn.functional.mse_loss(model(x), y)
                mark = len(calls)  # the forward's own (the first batch's row count)
                loss.backward()
                out[f"{name}_calls_backward"] += calls[mark:]
            out[f"{name}_grads"] = {n: p.grad.clone() for n, p in model.named_parameters()
                                    if ".candidates." in n and p.grad is not None}
            calls.clear()
            opt.step()
            out[f"{name}_calls_step"] = list(calls)
            out[name] = {n: p.detach().clone() for n, p in model.named_parameters()
                         if ".candidates." in n}
            out[f"{name}_moved"] = sorted({n.split(".candidates.")[0] for n in before
                                           if n.endswith("weight")
                                           and not torch.equal(before[n], out[name][n])})
    finally:
        for name, fn in real.items():
            setattr(dist, name, fn)
        DistributedSync._wait = wait
    return out


def _deferred_worker(rank: int, port: int, out: str) -> None:
    from perforate.parallel.distributed import DistributedSync

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        torch.save(_deferred_run(DistributedSync(), rank, WORLD), Path(out) / f"d{rank}.pt")
        dist.barrier()
    finally:
        _teardown()


def test_candidates_meet_twice_per_backward_and_hold_global_gradients(tmp_path: Path) -> None:
    """The candidate statistics of all layers are summed in one collective at the end of the
    backward, which then trains the candidates and sums their new gradients in one more (a
    layer that exchanges inputs then exchanges its rows in one more, synchronous like the
    others: no collective is left in flight); a recurrent layer's zero probe included. After
    the backward every rank holds the global
    batch's gradients, so that clipping or a loss scaler sees what one process would, and
    they accumulate over two backwards as one process's do; the step sums nothing."""
    mp.spawn(_deferred_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"d{r}.pt") for r in range(WORLD)]
    single = _deferred_run(None, 0, 1)
    for name, layers in (("mlp", 3), ("wide", 2), ("wide2", 2), ("gru", 2)):
        backwards = 2 if name == "wide2" else 1
        # two meetings per backward, each waited for at once; the wide layer's rows are
        # exchanged after the gradient sum, also waited for at once
        summed = ["all_gather async", "wait"]
        meet = summed * 3 if name.startswith("wide") else summed * 2
        assert ranks[0][f"{name}_calls_backward"] == meet * backwards, name
        assert ranks[0][f"{name}_calls_step"] == []
        grads, single_grads = ranks[0][f"{name}_grads"], single[f"{name}_grads"]
        assert grads.keys() == single_grads.keys() and len(grads) >= 2 * layers
        for key, value in single_grads.items():
            assert torch.equal(grads[key], ranks[1][f"{name}_grads"][key]), key
            torch.testing.assert_close(grads[key], value, rtol=1e-5, atol=1e-6)
        for key, value in single[name].items():
            assert torch.equal(ranks[0][name][key], ranks[1][name][key]), key
            torch.testing.assert_close(ranks[0][name][key], value, rtol=1e-5, atol=1e-6)
        # every layer's candidates got a gradient and stepped
        assert len(ranks[0][f"{name}_moved"]) == len(single[f"{name}_moved"]) == layers


def _teardown() -> None:
    """Free every DDP wrapper before the process group: one that outlives it can abort the
    process at exit ("terminate called without an active exception", 2 in 20 runs)."""
    gc.collect()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["paper", "wide", "correlation", "default", "rank"])
def test_ranks_identical_and_equal_to_one_process(kind: str, tmp_path: Path) -> None:
    mp.spawn(_worker, args=(kind, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"{kind}{r}.pt", weights_only=False) for r in range(WORLD)]
    single = _run(kind, 0, 1)
    assert ranks[0]["installed"] is not None, ranks[0]["events"]
    if kind != "default":  # which layers exchange inputs instead of summing gradients
        assert ranks[0]["gathers"] == ranks[1]["gathers"] == [kind == "wide", False]
    assert ranks[0]["history"] == ranks[1]["history"]
    for key in ("installed", "final"):
        a, b, s = ranks[0][key], ranks[1][key], single[key]
        assert a.keys() == b.keys() == s.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
            torch.testing.assert_close(a[name], s[name], rtol=1e-5, atol=1e-5)
    assert ranks[0]["events"] == single["events"]
    for r, s in zip(ranks[0]["history"], single["history"], strict=True):
        for col in ("val", "corr"):
            if r[col] is not None:
                assert r[col] == pytest.approx(s[col], rel=1e-5, abs=1e-6), (col, r, s)


def test_fit_under_ddp_matches_one_process_rank0_writes_and_resumes(tmp_path: Path) -> None:
    for kind in ("fit", "resume"):
        mp.spawn(_worker, args=(kind, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"fit{r}.pt", weights_only=False) for r in range(WORLD)]
    resumed = [torch.load(tmp_path / f"resume{r}.pt", weights_only=False) for r in range(WORLD)]
    single = _fit(0, 1, tmp_path / "single")
    for r in resumed:  # a kill and resume changes nothing
        assert r["history"] == ranks[0]["history"]
        # each rank continues with its own RNG states (the ranks' differ), not rank 0's
        assert torch.equal(r["rng"][0], r["rng_at_kill"][0])
        for name, value in ranks[0]["final"].items():
            assert torch.equal(value, r["final"][name]), name
    assert not torch.equal(resumed[0]["rng"][0], resumed[1]["rng"][0])
    assert ranks[0]["history"] == ranks[1]["history"]
    assert ranks[0]["phases"] == ranks[1]["phases"] and len(ranks[0]["phases"]) == 1
    assert [r["phase"] for r in ranks[0]["history"]].count("dendrite") >= 1
    for name, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][name]), name
        torch.testing.assert_close(value, single["final"][name], rtol=1e-5, atol=1e-5)
    for r, s in zip(ranks[0]["history"], single["history"], strict=True):
        assert r["event"] == s["event"]
        assert r["val"] == pytest.approx(s["val"], rel=1e-5), (r, s)
    assert (tmp_path / "run0" / "history.csv").is_file()
    assert (tmp_path / "run0" / "checkpoint" / "checkpoint.pt").is_file()
    assert not (tmp_path / "run1").exists()  # only rank 0 writes


def test_fsdp_is_refused_clearly() -> None:
    class FullyShardedDataParallel(nn.Module):  # stands in for torch's (needs a process group)
        pass

    with pytest.raises(TypeError, match="FSDP"):
        check_not_sharded(FullyShardedDataParallel())
    with pytest.raises(TypeError, match="FSDP"):
        pf.Tracker(FullyShardedDataParallel(), lambda p: torch.optim.SGD(p, 0.1))


def test_unused_parameters_are_the_empty_ones_and_a_single_sets_cascade() -> None:
    from perforate.parallel.ddp import unused_parameters

    model = pf.perforate(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)),
                         _config("default"))
    names = unused_parameters(model)
    assert sorted(names) == sorted(f"net.{i}.{p}" for i in (0, 2) for p in (
        "dendrite_weight", "dendrite_bias", "cascade_weight", "output_weight"))
    model.grow()
    assert sorted(unused_parameters(model)) == ["net.0.cascade_weight", "net.2.cascade_weight"]
    model.grow()
    assert unused_parameters(model) == []


def test_one_process_trains_the_model_itself() -> None:
    model = pf.perforate(nn.Sequential(nn.Linear(5, 4)), _config("paper"))
    tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, 0.1))
    assert tracker.model is tracker.perforated is model
    assert tracker.sync is None and tracker.is_main
    assert tracker.mean_score(0.25) == 0.25
    with pytest.raises(RuntimeError, match="process group"):
        pf.Tracker(model, lambda p: torch.optim.SGD(p, 0.1), wrap=DDP)


@pytest.mark.parametrize("how", ["none", "keyword", "positional"])
def test_candidate_gradients_are_summed_after_a_steps_closure(how: str) -> None:
    """Lightning (and LBFGS) compute the gradients inside ``step(closure)``, after the step's
    pre-hooks: the sum must follow the closure's backward."""
    from perforate.parallel.distributed import DistributedSync

    sync = object.__new__(DistributedSync)  # no process group: record what would be summed
    summed: list[torch.Tensor | None] = []
    sync.sum_grads = lambda params: summed.extend(  # type: ignore[method-assign]
        None if p.grad is None else p.grad.clone() for p in params)
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.0)
    opt.register_step_pre_hook(sync.grad_sum_hook(lambda: [w]))

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = (2 * w).sum()
        loss.backward()
        return loss

    if how == "none":
        closure()
        opt.step()
    elif how == "keyword":
        assert opt.step(closure=closure).item() == 6.0
    else:
        assert opt.step(closure).item() == 6.0
    assert len(summed) == 1 and torch.equal(summed[0], torch.full((3,), 2.0))


def _one_rank_sync(factor: float) -> Any:
    """A `DistributedSync` without a process group whose sums multiply by `factor` (as
    `factor` ranks holding the same values would)."""
    from perforate.parallel.distributed import DistributedSync

    sync = object.__new__(DistributedSync)
    sync.world, sync.rank, sync.group, sync.gather_small = 1, 0, None, True
    sync._task, sync._pending, sync._rows, sync.meeting = None, [], None, None
    sync.sum_ = lambda tensors: [t.mul_(factor) for t in tensors]  # type: ignore[method-assign]
    return sync


class _Continue(torch.autograd.Function):
    """Identity whose backward hands `then` to `sum_after_backward`, as `ErrorTap` does."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, sync: Any, then: Any,  # type: ignore[override]
                params: Any) -> torch.Tensor:
        ctx.args = (sync, then, params)
        return z.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        sync, then, params = ctx.args
        sync.sum_after_backward([], then, params)
        return grad, None, None, None


def test_only_the_new_part_of_a_gradient_is_summed_and_a_failure_keeps_the_old() -> None:
    w = nn.Parameter(torch.ones(3))
    w.grad = torch.full((3,), 5.0)  # accumulated by an earlier backward, already summed
    root = (2 * w).sum()
    sync = _one_rank_sync(2.0)
    z = torch.zeros(2, requires_grad=True)
    _Continue.apply(z, sync, lambda: (root, torch.tensor(1.0)), [w]).sum().backward()
    assert torch.equal(w.grad, torch.full((3,), 5.0 + 2 * 2.0))  # old + sum of the new only

    def fails() -> None:
        raise ValueError("no statistics")

    root = (2 * w).sum()
    inner = _Continue.apply(z, sync, fails, [w])  # its continuation runs second, and fails
    with pytest.raises(ValueError, match="no statistics"):
        _Continue.apply(inner, sync, lambda: (root, torch.tensor(1.0)), [w]).sum().backward()
    assert torch.equal(w.grad, torch.full((3,), 9.0))  # not the first continuation's 2
    assert sync._pending == [] and sync._rows is None


# ------------------------------------------------------------------ ranks that disagree or stall
TIMEOUT = 4.0  # seconds a rank waits for the others at the end of an epoch, in these tests


def _disagree(rank: int, case: str, result: dict[str, Any]) -> None:
    """Train (neuron, neuron, then a dendrite phase: the second step switches phases) where
    rank 0 runs one batch more in the first epoch of the phase `case` ("neuron" or
    "dendrite"), or, for "stall", sleeps before the phase-switching step; "join": one batch
    more in the first neuron epoch, under DDP's ``join()``, and one training forward more (no
    backward: no collective) in the first dendrite epoch."""
    torch.manual_seed(0)
    model = pf.perforate(nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 2)),
                         _config("paper"))
    tracker = pf.Tracker(DDP(model), lambda p: torch.optim.Adam(p, 1e-2), plot=False,
                         schedule=pf.Schedule(neuron_patience=1, improvement_threshold=10.0,
                                              max_epochs=6))
    tracker.sync.timeout = datetime.timedelta(seconds=TIMEOUT)
    x, y, _, _ = _data()
    while not tracker.done:
        first = tracker.phase not in result["phases"]
        extra = rank == 0 and first and tracker.phase == case.replace("join", "neuron")
        result["phases"].append(tracker.phase)
        joined = case == "join" and tracker.phase == "neuron"
        with tracker.model.join() if joined else contextlib.nullcontext():
            for b in range(BATCHES + extra):
                rows = slice(b % BATCHES * WORLD * LOCAL_BATCH,
                             (b % BATCHES + 1) * WORLD * LOCAL_BATCH)
                tracker.optimizer.zero_grad(set_to_none=True)
                out = tracker.model(x[rows].chunk(WORLD)[rank])
                nn.functional.mse_loss(out, y[rows].chunk(WORLD)[rank]).backward()
                tracker.optimizer.step()
        if case == "join" and rank == 0 and first and tracker.phase == "dendrite":
            tracker.model(x[:LOCAL_BATCH])  # a forward without backward: no collective
        if case == "stall" and rank == 0 and tracker.epoch == 1:
            time.sleep(TIMEOUT + 2)
        result["at_step"] = time.time()
        tracker.step(1.0 if tracker.phase == "neuron" else None)


def _disagree_fit(rank: int, result: dict[str, Any]) -> None:
    """`pf.fit` where rank 0's train loader has one batch more than rank 1's; the wait is
    set by the environment."""
    from perforate.parallel.epoch_meeting import TIMEOUT_ENV

    os.environ[TIMEOUT_ENV] = f"{TIMEOUT:g}"
    torch.manual_seed(0)
    model = pf.perforate(nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 2)),
                         _config("paper"))
    x, y, xv, yv = _data()
    rows = (BATCHES + (rank == 0)) * LOCAL_BATCH
    loaders = [DataLoader(TensorDataset(x[:rows], y[:rows]), LOCAL_BATCH),
               DataLoader(TensorDataset(xv.chunk(WORLD)[rank], yv.chunk(WORLD)[rank]), 16)]
    result["at_step"] = time.time()  # at the start: rank 1's step follows within a second
    pf.fit(DDP(model), *loaders, nn.functional.mse_loss, lambda p: torch.optim.Adam(p, 1e-2),
           progress=False, schedule=pf.Schedule(max_epochs=4),
           tracker_kwargs={"plot": False})


def _disagree_worker(rank: int, port: int, out: str, case: str) -> None:
    """`_disagree`; what it raised (type, message, when) is saved, then raised again as a
    user's script would (the process's exit code is then 1)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    result: dict[str, Any] = {"phases": []}
    try:
        if case == "fit":
            _disagree_fit(rank, result)
        else:
            _disagree(rank, case, result)
    except Exception as exc:
        result.update(error=type(exc).__name__, message=str(exc), at=time.time())
        torch.save(result, Path(out) / f"{case}{rank}.pt")
        raise exc.with_traceback(None) from None  # no frame keeps a DDP wrapper alive
    finally:
        _teardown()


def _spawn_and_join(case: str, out: Path) -> list[dict[str, Any]]:
    """Both ranks, joined with a deadline; their exit codes must be 1 (raised), not a signal
    (-6: SIGABRT) nor a hang."""
    ctx = mp.start_processes(_disagree_worker, args=(_free_port(), str(out), case),
                             nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 90
    for p in ctx.processes:
        p.join(max(deadline - time.monotonic(), 0.1))
    codes = [p.exitcode for p in ctx.processes]
    for p in ctx.processes:
        if p.exitcode is None:
            p.kill()
            p.join()
    assert codes == [1, 1], codes
    return [torch.load(out / f"{case}{r}.pt") for r in range(WORLD)]


def test_unequal_batch_counts_in_a_dendrite_epoch_raise_on_every_rank(tmp_path: Path) -> None:
    """Rank 0 runs 4 batches, rank 1 3: rank 0 waits in its 4th batch's statistics sum, rank
    1 at the meeting; rank 0 finds that rank 1 has ended the epoch and both raise at once
    (not after the timeout), naming each rank's count."""
    ranks = _spawn_and_join("dendrite", tmp_path)
    for r in ranks:
        assert r["error"] == "DistributedError", r
        assert "rank 0: 4 (still training), rank 1: 3" in r["message"]
        assert r["phases"] == ["neuron", "neuron", "dendrite"]
        assert r["at"] - ranks[1]["at_step"] < TIMEOUT  # found, not timed out
    assert "epoch 3 (a dendrite epoch)" in ranks[1]["message"]
    assert "rank 0 is in batch 4" in ranks[0]["message"]


def test_counts_that_differ_at_the_meeting_raise_in_a_dendrite_epoch_only(tmp_path: Path,
                                                                         ) -> None:
    """Uneven neuron batches under DDP's ``join()`` meet with different counts, which DDP
    allows; a dendrite epoch's counts that differ (an extra training forward on rank 0)
    raise on every rank at the meeting, without waiting."""
    ranks = _spawn_and_join("join", tmp_path)
    for r in ranks:
        assert r["phases"] == ["neuron", "neuron", "dendrite"]  # the joined epoch passed
        assert r["error"] == "DistributedError", r
        assert r["message"].startswith("the ranks ran different numbers of batches in epoch 3 "
                                       "(a dendrite epoch): rank 0: 4, rank 1: 3")
        assert r["at"] - r["at_step"] < TIMEOUT


def test_unequal_batch_counts_in_a_neuron_epoch_end_every_rank(tmp_path: Path) -> None:
    """`pf.fit` where rank 0's loader has an extra batch: in the first (neuron) epoch it
    waits inside DDP's gradient all-reduce, which perforate cannot look into; rank 1 names it
    after the timeout and leaves; that ends rank 0's wait with gloo's error at once, which
    `fit` turns into the note rank 1 left. (A hand-written loop gets gloo's error there.)"""
    ranks = _spawn_and_join("fit", tmp_path)
    zero, one = ranks
    assert one["error"] == zero["error"] == "DistributedError", ranks
    assert one["message"].startswith("rank(s) 0 did not reach the end of epoch 1 (a neuron "
                                     f"epoch) within {TIMEOUT:g} s (rank 1 ran 3 batch(es))")
    assert TIMEOUT < one["at"] - one["at_step"] < TIMEOUT + 10
    assert zero["message"].startswith(f"rank 1 stopped waiting for rank(s) 0 at the end of "
                                      f"epoch 1 (a neuron epoch) after {TIMEOUT:g} s; rank 0 "
                                      "was still in that epoch")
    assert 0 <= zero["at"] - one["at"] < 10


def test_a_stalled_rank_is_named_within_the_timeout(tmp_path: Path) -> None:
    """Rank 0 sleeps before the step that switches to a dendrite phase: rank 1 names it once
    `timeout` has passed and leaves a note, so rank 0, when it comes, raises too."""
    ranks = _spawn_and_join("stall", tmp_path)
    zero, one = ranks
    assert one["error"] == zero["error"] == "DistributedError"
    assert one["message"].startswith(f"rank(s) 0 did not reach the end of epoch 2 (a neuron "
                                     f"epoch) within {TIMEOUT:g} s")
    assert TIMEOUT - 0.5 < one["at"] - one["at_step"] < TIMEOUT + 5
    assert zero["message"].startswith(f"rank 1 stopped waiting for rank(s) 0 at the end of "
                                      f"epoch 2 (a neuron epoch) after {TIMEOUT:g} s")
    assert zero["at"] - zero["at_step"] < TIMEOUT


def test_the_timeout_is_set_by_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from perforate.parallel.epoch_meeting import DEFAULT_TIMEOUT, TIMEOUT_ENV, default_timeout

    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert default_timeout() == DEFAULT_TIMEOUT == datetime.timedelta(minutes=10)
    monkeypatch.setenv(TIMEOUT_ENV, "2.5")
    assert default_timeout() == datetime.timedelta(seconds=2.5)
    for bad in ("0", "-3", "soon", "inf", "nan"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(pf.ConfigError, match=TIMEOUT_ENV):
            default_timeout()
