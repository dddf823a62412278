"""Registry of dendrite activations g: a name maps to a factory of a scriptable nn.Module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softsign": nn.Softsign,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """Instantiate the activation registered as `name` (see `ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown dendrite activation {name!r}; "
                         f"known: {', '.join(sorted(ACTIVATIONS))}") from None


def _identity_(t: Tensor) -> Tensor:
    return t


def sigmoid_form(x: Tensor) -> bool:
    """Whether `tanh` takes the sigmoid form for `x`: float32 on a CPU, where PyTorch's
    tanh (SLEEF's 1-ULP kernel) is slower than sigmoid and the form's extra element-wise
    passes (the form: 1.2-1.5x faster on an AMD EPYC with AVX2, `bench/tanh_form.py`; 3.75x
    on the machine it was chosen on); a GPU's tanh is as fast as its sigmoid. Scriptable."""
    return x.device.type == "cpu" and x.dtype == torch.float32


def tanh_of_half_(y: Tensor) -> Tensor:
    """``tanh(y / 2) = 2 sigmoid(y) - 1``, in place on `y` (which holds 2x). Scriptable, so
    that `perforate.io.export`'s inference path computes the same form."""
    return y.sigmoid_().mul_(2).sub_(1)


class _SigmoidTanh(torch.autograd.Function):
    """``tanh(x) = 2 sigmoid(2x) - 1``; the backward is tanh's, ``grad (1 - y²)`` from the
    output (twice differentiable, like tanh; ``torch.func`` transforms work through it:
    `setup_context`, ``generate_vmap_rule``).

    Within 2.4e-7 of ``torch.tanh`` in float32 (absolute: the form loses relative accuracy
    for |x| < 1e-3, where tanh(x) ~ x, which is below the rounding of the layer output the
    dendrite is added to), and exact at ±inf and NaN.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:  # type: ignore[override]
        return tanh_of_half_(x.mul(2))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class _SigmoidTanhInplace(torch.autograd.Function):
    """`_SigmoidTanh` in place on its input (``torch.func`` does not take an in-place
    autograd function that saves its output: outside autograd use `tanh_no_grad_`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        tanh_of_half_(x.mul_(2))
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x  # x itself (not the ops' result): torch.compile then traces it

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: Tensor) -> Tensor:
    """tanh, computed as ``2 sigmoid(2x) - 1`` for float32 on a CPU (see `_SigmoidTanh`)."""
    return _SigmoidTanh.apply(x) if sigmoid_form(x) else torch.tanh(x)


def tanh_(x: Tensor) -> Tensor:
    """In-place `tanh`."""
    return _SigmoidTanhInplace.apply(x) if sigmoid_form(x) else torch.tanh_(x)


def tanh_no_grad_(x: Tensor) -> Tensor:
    """In-place `tanh` that records no graph: for a tensor no gradient flows through (and
    inside an autograd function's forward), where `tanh_`'s autograd function is overhead
    and, under ``torch.func`` transforms, not allowed."""
    return tanh_of_half_(x.mul_(2)) if sigmoid_form(x) else x.tanh_()


#: Functions used in place of an activation module's forward where they are faster; the
#: modules themselves (exact, scriptable) are what `perforate.io.export` keeps.
FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {"tanh": tanh}

#: In-place versions: for perforated dendrite outputs (no gradient) and candidate activations
#: (their backward reads the result only).
INPLACE: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": tanh_,
    "sigmoid": torch.sigmoid_,
    "relu": torch.relu_,
    "identity": _identity_,
}

#: In-place versions that record no graph (see `tanh_no_grad_`).
INPLACE_NO_GRAD: dict[str, Callable[[Tensor], Tensor]] = {**INPLACE, "tanh": tanh_no_grad_}


def _sigmoid_backward_(grad: Tensor, out: Tensor) -> None:
    torch.ops.aten.sigmoid_backward.grad_input(grad, out, grad_input=grad)


def _tanh_backward_(grad: Tensor, out: Tensor) -> None:
    torch.ops.aten.tanh_backward.grad_input(grad, out, grad_input=grad)


def _relu_backward_(grad: Tensor, out: Tensor) -> None:
    torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)


def _identity_backward_(grad: Tensor, out: Tensor) -> None:
    pass


#: ``g'`` applied in place to a gradient, from the activation's output.
BACKWARD_FROM_OUTPUT: dict[str, Callable[[Tensor, Tensor], None]] = {
    "sigmoid": _sigmoid_backward_,
    "tanh": _tanh_backward_,
    "relu": _relu_backward_,
    "identity": _identity_backward_,
}
