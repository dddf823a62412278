"""Finiteness checks that cost one host sync (or none): a diverged network must stop the run,
not be mistaken for one that stopped improving.

- `check_parameters`: `pf.Tracker.step` checks every parameter after each neuron-phase epoch
  and raises `NonFiniteError` naming the first non-finite one and its layer.
- `skip_nonfinite_steps`: the candidate optimizer skips a step whose gradients are not all
  finite (a batch left out of the candidate statistics), as a ``GradScaler`` would, so that one
  NaN batch does not make the candidates non-finite for the rest of the dendrite phase.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import NonFiniteError

_HALF = (torch.float16, torch.bfloat16)


def _finite_flags(tensors: Sequence[Tensor]) -> Tensor:
    """One bool per tensor, on the first tensor's device: its values are all finite.

    Read from each tensor's sum (float32 at least, so a half-precision sum does not overflow):
    a NaN or inf reaches it. A sum of finite values that overflows counts as non-finite; no
    network that trains has such values."""
    device = tensors[0].device
    return torch.stack([
        t.detach().sum(dtype=torch.float32 if t.dtype in _HALF else None).isfinite().to(device)
        for t in tensors])


def check_parameters(named: Iterable[tuple[str, Tensor]], layers: Iterable[str] = (),
                     *, context: str = "") -> None:
    """Raise `NonFiniteError` if a floating-point tensor of `named` holds a NaN or inf.

    One host sync when all are finite. The error names the first bad tensor and the longest
    of `layers` (qualified module names) that contains it, or its own module."""
    items = [(n, t) for n, t in named if t.is_floating_point() or t.is_complex()]
    if not items:
        return
    flags = _finite_flags([t for _, t in items])
    if bool(flags.all()):
        return
    name = items[flags.tolist().index(False)][0]
    module = name.rpartition(".")[0]
    owners = [la for la in layers if module == la or module.startswith(la + ".")]
    layer = max(owners, key=len) if owners else module
    raise NonFiniteError(
        f"{context}parameter {name!r} of layer {layer!r} is not finite: training diverged (a "
        "batch with NaN/inf inputs or loss, or too high a learning rate)")


def check_score(name: str, value: float | None, *, context: str = "") -> None:
    """Raise `NonFiniteError` if the score `value` is NaN or infinite (None passes)."""
    if value is not None and not math.isfinite(value):
        raise NonFiniteError(f"{context}the {name} score is {value}: training diverged, or "
                             "the metric is not finite")


def skip_nonfinite_steps(optimizer: torch.optim.Optimizer) -> None:
    """Make `optimizer` skip every step whose gradients are not all finite.

    Fused optimizers (``fused=True``: what `perforate.engine.candidate_optimizer.fast_step`
    chooses where PyTorch has the kernel) skip on the device through their ``found_inf``
    input, the one a ``GradScaler`` uses: no host sync, and Adam's step count is not
    advanced. Others read the check on the host (one sync per step) and drop the gradients of a
    bad step, so the step leaves parameters and state alone. Under a ``GradScaler`` that
    already checked the gradients (it sets ``found_inf`` itself), nothing is added.
    """
    fused = all(group.get("fused") for group in optimizer.param_groups)
    owned = "_perforate_found_inf"

    def before(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if getattr(opt, "found_inf", None) is not None:  # a GradScaler's step checked them
            return
        params = [p for group in opt.param_groups for p in group["params"]
                  if p.grad is not None]
        if not params:
            return
        bad = ~_finite_flags([p.grad for p in params]).all()
        if fused:
            opt.found_inf = bad.float()  # type: ignore[attr-defined]
            setattr(opt, owned, True)
        elif bool(bad):
            for p in params:
                p.grad = None

    def after(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if getattr(opt, owned, False):
            del opt.found_inf  # type: ignore[attr-defined]
            setattr(opt, owned, False)

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)
