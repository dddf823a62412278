"""Data-parallel training (``torchrun`` + `DistributedDataParallel`), correct by construction.

What each rank holds is identical after every step, because everything a decision or an
install reads is reduced across ranks (see ``docs/distributed.md``):

- neuron phase: DDP averages the gradients; the DDP wrapper is rebuilt after every
  restructure (its reducer binds parameter sizes when it is built), and empty parameters (a
  layer's dendrite parameters before its first set) are left out of it, so no rank waits for
  a gradient that never comes;
- dendrite phase: no DDP (the network is frozen); candidates are broadcast from rank 0 when
  drawn, each batch's correlation sums of every layer are summed across ranks in one
  collective at the end of the backward, which then backpropagates the candidates' gradients
  (`DistributedSync.sum_after_backward`; the epoch's statistics, the running ones and each
  position's candidate gradient are those of the global batch). The gradients those
  backwards give the candidates are summed in one more collective, so that the backward
  returns with the global batch's gradients; except where a Linear layer's inputs and output
  gradients are smaller than its candidate weights (K copies of the layer's): there the
  ranks exchange those instead (one all-gather per such layer, after the sum) and each
  computes the global batch's weight gradient
  (`DistributedSync.linear`). Gradients that reach the candidates through the
  user's backward itself (dendrite_phase="task_loss") are summed before the optimizer step;
- scores given to ``Tracker.step`` are averaged across ranks (one all-reduce per epoch), once
  the ranks have met at the end of the epoch with equal batch counts, each waiting at most
  `DistributedSync.timeout` for the others (`perforate.parallel.epoch_meeting`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import private_api
from .epoch_meeting import EpochMeeting

"""``wrap(perforated_model) -> module to train with`` (e.g. a `DistributedDataParallel`)."""
AfterSum = Callable[[], "tuple[Tensor, Tensor] | None"]
"""`DistributedSync.sum_after_backward`'s continuation: ``(root, gradient)`` to backpropagate,
or None."""
StepPreHook = Callable[[torch.optim.Optimizer, tuple[Any, ...], dict[str, Any]],
                      "tuple[tuple[Any, ...], dict[str, Any]] | None"]


#: `DistributedSync.sum_` sums at most this many numbers with an all-gather on gloo: on the
#: 2-core development machine, 2 ranks, an all-reduce of 500 to 80 000 float32 took 1.6 to
#: 2.0 ms and an all-gather of the same 0.9 to 1.3 ms.
SMALL = 1 << 17

#: `DistributedSync.gathers`: a Linear layer's candidates exchange inputs only where their
#: weight gradient holds at least this many numbers (0.5 MB in float32).
GATHER_MIN = 1 << 17


class DistributedSync:
    """Collectives over one process group: sums, broadcasts from rank 0, score means, and
    the ranks' meeting at the end of every epoch (`end_epoch`), where a rank waits at most
    `timeout` (default 10 minutes, or ``$PERFORATE_DIST_TIMEOUT`` seconds) for the others."""

    def __init__(self, group: Any = None, timeout: timedelta | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("a DistributedDataParallel model needs an initialised process "
                               "group (torch.distributed.init_process_group, or torchrun)")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        nccl = dist.get_backend(group) == "nccl"
        self.gather_small = dist.get_backend(group) == "gloo"
        """Sum a few numbers with an all-gather (`sum_`): lower latency on gloo."""
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl \
            else torch.device("cpu")
        """Where host values (scores) are reduced: NCCL reduces CUDA tensors only."""
        self._task: int | None = None  # the backward whose sums wait in `_pending`
        self._pending: list[tuple[Sequence[Tensor], AfterSum, Sequence[nn.Parameter]]] = []
        self._rows: list[_Rows] | None = None
        """While `_after_backward` backpropagates: each `linear`'s rows, exchanged after the
        gradient sum (None: a `linear` exchanges at once)."""
        self.meeting: EpochMeeting | None = EpochMeeting(group, self.rank, self.world, timeout)
        """The end-of-epoch meeting (`end_epoch`; it counts `count_forwards`'s batches)."""

    @property
    def timeout(self) -> timedelta:
        """How long a rank waits for the others at the end of an epoch before it raises a
        `DistributedError` naming those that have not come (settable)."""
        return self.meeting.timeout  # type: ignore[union-attr]

    @timeout.setter
    def timeout(self, value: timedelta) -> None:
        self.meeting.timeout = value  # type: ignore[union-attr]

    def count_forwards(self, module: nn.Module) -> None:
        """Count `module`'s training forwards: the batches the ranks compare at `end_epoch`."""
        if self.meeting is not None:
            self.meeting.count_forwards(module)

    def end_epoch(self, phase: str, epoch: int) -> None:
        """Meet every rank before the epoch's scores are reduced: raise a `DistributedError`
        on every rank if their batch counts differ in a dendrite epoch (in a neuron epoch
        DDP's ``join()`` may even them out), or, after `timeout`, naming the ranks that have
        not come (`perforate.parallel.epoch_meeting`)."""
        if self.meeting is not None:
            self.meeting.end_epoch(f"epoch {epoch} (a {phase} epoch)", equal=phase != "neuron")

    def explain(self, exc: BaseException) -> None:
        """Raise `exc` (the backend's error, from a batch) as a `DistributedError` if another
        rank stopped waiting for this one at the end of the epoch (`EpochMeeting.explain`)."""
        if self.meeting is not None:
            self.meeting.explain(exc)

    def _wait(self, work: Any) -> None:
        """Wait for a batch's collective; on gloo, raise if another rank ends the epoch
        meanwhile (`EpochMeeting.wait`). NCCL's wait does not block the host."""
        if self.meeting is not None and self.gather_small:
            self.meeting.wait(work)
        else:
            work.wait()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes artifacts and checkpoints."""
        return self.rank == 0

    def sum_(self, tensors: Sequence[Tensor]) -> None:
        """Sum `tensors` across ranks in place (one flat all-reduce per dtype)."""
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            if self.gather_small and flat.numel() <= SMALL:
                # gloo's all-reduce takes two rounds of messages, an all-gather one: for a
                # few numbers, where the latency is the cost, gather and add in rank order
                # (the same bits on every rank).
                every = [torch.empty_like(flat) for _ in range(self.world)]
                self._wait(dist.all_gather(every, flat, group=self.group, async_op=True))
                flat = torch.stack(every).sum(0)
            else:
                self._wait(dist.all_reduce(flat, group=self.group, async_op=True))
            _unflatten_into(group, flat)

    def sum_after_backward(self, tensors: Sequence[Tensor], then: AfterSum,
                           params: Sequence[nn.Parameter] = ()) -> None:
        """Sum `tensors` across ranks in place at the end of the running backward, in one
        collective with those of every other call made during it; then call each `then()`
        in order, backpropagating the ``(root, gradient)`` pair each returns before the next
        is called; then sum across ranks what those backwards added to the gradients of
        `params` (what they held before is kept: gradients accumulate as usual), in one
        more collective; then exchange the rows of each `linear` they passed through (one
        all-gather each) and add their gradients. Call it from
        inside a backward (an autograd Function's): the candidates of every layer then cost
        two meetings of the ranks per backward, not a few per layer, and hold the global
        batch's gradients when it returns, as a DDP model's parameters do. Every rank makes
        the same calls in the same order (the backward visits the same layers), so the flat
        sums line up."""
        task = private_api.current_graph_task_id()
        if task < 0:
            raise RuntimeError("sum_after_backward must be called from inside a backward")
        if task != self._task:  # this backward's first call (drops a failed backward's)
            self._task, self._pending = task, []
            private_api.queue_engine_callback(self._after_backward)
        self._pending.append((tensors, then, params))

    def _after_backward(self) -> None:
        pending, self._pending, self._task = self._pending, [], None
        self.sum_([t for tensors, _, _ in pending for t in tensors])
        before: dict[int, tuple[nn.Parameter, Tensor | None]] = {}
        rows: list[_Rows] = []
        self._rows = rows
        try:
            for _, then, params in pending:
                # One continuation's backward at a time: its gradient is still in cache when
                # its backward reads it, and only one layer's is alive at once.
                pair = then()
                if pair is None:
                    continue
                for p in params:  # set aside what the gradient held: only the new part is summed
                    if id(p) not in before:
                        before[id(p)] = (p, p.grad)
                        p.grad = None
                torch.autograd.backward(*pair)
        except BaseException:
            for p, old in before.values():  # a failure leaves the gradients as they were
                p.grad = old
            raise
        finally:
            self._rows = None
        params = [p for p, _ in before.values()]
        self.sum_(self._grads_to_sum(params))
        for r in rows:
            r.accumulate(self._exchange(r))
        for p, old in before.values():
            if old is not None and p.grad is not None:
                p.grad = old.add_(p.grad)

    def _grads_to_sum(self, params: Sequence[nn.Parameter]) -> list[Tensor]:
        """The gradients of `params`, zeros where a rank's batch reached none (every rank
        sends the same layout)."""
        for p in params:
            if p.grad is None and p.requires_grad and p.numel():
                p.grad = torch.zeros_like(p)
        return [p.grad for p in params if p.grad is not None and p.numel()]

    def _exchange(self, rows: _Rows) -> Tensor:
        """Every rank's padded `rows`, in rank order ``[world * most, in + out]`` (one
        all-gather, waited for at once)."""
        mine = rows.padded()
        every = [torch.empty_like(mine) for _ in range(self.world)]
        self._wait(dist.all_gather(every, mine, group=self.group, async_op=True))
        return torch.cat(every)

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Copy rank 0's values of `tensors` to every rank (in place)."""
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=dist.get_global_rank(self.group, 0)
                               if self.group is not None else 0, group=self.group)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order (e.g. the ranks' RNG states, which
        rank 0 checkpoints for all)."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def sum_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Sum the gradients of `params` across ranks (a candidate optimizer's step hook)."""
        self.sum_(self._grads_to_sum(params))

    def grad_sum_hook(self, params: Callable[[], Sequence[nn.Parameter]]) -> StepPreHook:
        """A step pre-hook for a candidate optimizer: sums the gradients of ``params()``
        across ranks before the step. A step given a closure (Lightning's, LBFGS) computes the
        gradients inside it, after the hook: the closure is then wrapped to sum them once it
        has run."""

        def hook(optimizer: torch.optim.Optimizer, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # 0: self
            if closure is None:
                self.sum_grads(params())
                return None

            def summed() -> Any:
                out = closure()
                self.sum_grads(params())
                return out

            if "closure" in kwargs:
                return args, {**kwargs, "closure": summed}
            return (args[0], summed, *args[2:]), kwargs

        return hook

    def gathers(self, rows: int, fan_in: int, fan_out: int) -> bool:
        """Whether exchanging `rows` inputs and output gradients per rank (``world x rows x
        (fan_in + fan_out)`` numbers received) moves less than summing a ``fan_out x fan_in``
        weight gradient and its bias (a ring all-reduce moves about twice their size), for a
        gradient of at least `GATHER_MIN` numbers. A smaller one is summed with the other
        candidate gradients: an exchange would be a collective of its own in every backward
        for few bytes saved (latency, not bytes, is then the cost)."""
        weights = 2 * fan_out * (fan_in + 1)
        return weights >= GATHER_MIN and self.world * rows * (fan_in + fan_out) < weights

    def max_rows(self, rows: int) -> int:
        """The largest of the ranks' `rows`."""
        t = torch.tensor([rows], device=self.device)
        self._wait(dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group, async_op=True))
        return int(t.item())

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor,
               rows: Callable[[], int | None] | None = None) -> Tensor:
        """``F.linear(x, weight, bias)`` whose backward gives `weight` and `bias` the
        gradients of the global batch on every rank (identical bits everywhere, so they need
        no sum at the step): the ranks exchange their inputs and output gradients
        (`linear_grads`), worth it where `gathers`. No gradient reaches `x` (a candidate's
        input is detached). ``rows()``, if given and not None at the backward, is the
        largest row count of any rank (saves a collective)."""
        return _GlobalGradLinear.apply(x, weight, bias, self, rows)

    def linear_grads(self, x: Tensor, grad: Tensor, most: int | None = None,
                     ) -> tuple[Tensor, Tensor]:
        """The global batch's ``(grad_weight, grad_bias)`` of a linear layer from this rank's
        inputs ``x [rows, in]`` and output gradients ``grad [rows, out]``. Ranks may hold
        different row counts (`most`: the largest, found with a collective if None): the
        exchanged rows are padded with zeros, which add nothing."""
        rows = _Rows(x, grad, self.max_rows(x.shape[0]) if most is None else most)
        return rows.grads(self._exchange(rows))

    def mean_scores(self, values: Sequence[float | None], main_only: Sequence[float] = (),
                    ) -> tuple[list[float | None], list[float]]:
        """The mean across ranks of each score (None stays None: it must be None on every
        rank), and rank 0's value of each of `main_only` (e.g. the epoch's seconds)."""
        present = [v for v in values if v is not None]
        buf = torch.tensor([*present, *main_only], dtype=torch.float64, device=self.device)
        buf[len(present):] *= float(self.is_main)
        dist.all_reduce(buf, group=self.group)
        means = iter((buf[:len(present)] / self.world).tolist())
        return ([None if v is None else next(means) for v in values],
                buf[len(present):].tolist())


def _unflatten_into(tensors: Sequence[Tensor], flat: Tensor) -> None:
    """Copy consecutive parts of the flat `flat` into `tensors`, in order."""
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(part.view_as(t))


class _GlobalGradLinear(torch.autograd.Function):
    """`DistributedSync.linear`: a linear op whose weight and bias gradients are global."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor,  # type: ignore[override]
                sync: DistributedSync, rows: Callable[[], int | None] | None) -> Tensor:
        ctx.sync, ctx.rows = sync, rows
        # Held for a deferred exchange (`_Rows.accumulate`), with the graph that made them.
        ctx.weight, ctx.bias = weight, bias
        ctx.save_for_backward(x, weight)
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor  # type: ignore[override]
                 ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        sync: DistributedSync = ctx.sync
        grad_x = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        x, grad = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        most = None if ctx.rows is None else ctx.rows()
        if sync._rows is not None:  # inside `_after_backward`: it exchanges them after the sum
            sync._rows.append(_Rows(x, grad, most or sync.max_rows(x.shape[0]),
                                    ctx.weight, ctx.bias))
            return grad_x, None, None, None, None
        gw, gb = sync.linear_grads(x, grad, most)
        return grad_x, gw.to(weight.dtype), gb.to(weight.dtype), None, None


class _Rows:
    """A `DistributedSync.linear`'s inputs and output gradients on this rank, to exchange
    with the other ranks' and turn into the global batch's weight and bias gradients."""

    def __init__(self, x: Tensor, grad: Tensor, most: int, weight: Tensor | None = None,
                 bias: Tensor | None = None) -> None:
        self.x, self.grad, self.most = x, grad, most
        self.weight, self.bias = weight, bias

    def padded(self) -> Tensor:
        """``[most, in + out]``: this rank's rows, padded with zeros (which add nothing)."""
        x, grad = self.x, self.grad
        mine = x.new_zeros((self.most, x.shape[1] + grad.shape[1]),
                           dtype=torch.promote_types(x.dtype, grad.dtype))
        mine[:x.shape[0], :x.shape[1]] = x
        mine[:x.shape[0], x.shape[1]:] = grad
        return mine

    def grads(self, every: Tensor) -> tuple[Tensor, Tensor]:
        """``(grad_weight, grad_bias)`` of every rank's rows ``[world * most, in + out]``."""
        xs, gs = every.split([self.x.shape[1], self.grad.shape[1]], dim=1)
        return gs.t() @ xs, gs.sum(0)

    def accumulate(self, every: Tensor) -> None:
        """Backpropagate `grads` from the weight and the bias (the layer's inputs: a view or
        a masked product of the parameters)."""
        if self.weight is None or self.bias is None:
            raise RuntimeError("these rows were given no weight and bias to train")
        gw, gb = self.grads(every)
        torch.autograd.backward([self.weight, self.bias],
                                [gw.to(self.weight.dtype), gb.to(self.bias.dtype)])
