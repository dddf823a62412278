"""The output term of installed dendrite sets that train, as one autograd function.

``z' = z + Σ_j a_j h_j`` with ``h_j = g(u_j + Σ_{i<j} C_j[:, i] h_i)`` and ``u`` the stacked
pre-activations of all D sets (one wide call of the layer's operation). Left to autograd, each
set's cascade, activation and product is its own node: a temporary per step and, in the
backward, one more tensor of all D sets to stack the sets' gradients (`unbind`'s backward).
`DendriteTerm` keeps the D outputs in one tensor, writes the gradient of every set's
pre-activation straight into one tensor of the stacked shape, and takes the activation's
derivative from its output. That is possible for sigmoid, tanh, ReLU and the identity; other
activations keep the autograd path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..activations import INPLACE

if TYPE_CHECKING:
    from ..geometry import Geometry


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


def fusable(activation: str, *tensors: Tensor) -> bool:
    """Whether `DendriteTerm` computes this case: an activation whose derivative its output
    gives, and one dtype throughout (under autocast the layer output's dtype may differ from
    the output weights'; autograd's path handles the promotions)."""
    return activation in BACKWARD_FROM_OUTPUT and len({t.dtype for t in tensors}) == 1


class DendriteTerm(torch.autograd.Function):
    """``(z, u [stacked], C [D, D, N], a [D, N]) -> z + Σ_j a_j h_j`` (see the module)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, pre: Tensor, cascade: Tensor,  # type: ignore[override]
                output: Tensor, geo: Geometry, activation: str) -> Tensor:
        d, dim = output.shape[0], geo.set_dim
        act_ = INPLACE[activation]
        h = torch.empty_like(pre)
        hs = h.unbind(dim)
        for j in range(d):
            hj, uj = hs[j], pre.select(dim, j)
            if j == 0:
                hj.copy_(uj)
            else:  # the cascade: h_j's input gets C_j[:, i] h_i from every earlier set
                torch.addcmul(uj, geo.expand(cascade[j, 0]), hs[0], out=hj)
                for i in range(1, j):
                    hj.addcmul_(geo.expand(cascade[j, i]), hs[i])
            act_(hj)
        out = torch.addcmul(z, geo.expand(output[0]), hs[0])
        for j in range(1, d):
            out.addcmul_(geo.expand(output[j]), hs[j])
        ctx.geo, ctx.activation = geo, activation
        ctx.save_for_backward(h, cascade, output)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor  # type: ignore[override]
                 ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None,
                            None, None]:
        h, cascade, output = ctx.saved_tensors
        geo: Geometry = ctx.geo
        dim, d = geo.set_dim, output.shape[0]
        act_backward_ = BACKWARD_FROM_OUTPUT[ctx.activation]
        need_z, need_pre, need_c, need_a = ctx.needs_input_grad[:4]
        hs = h.unbind(dim)
        grad_pre = grad_c = grad_a = None
        if need_pre or need_c:  # dLoss/du_j, last set first (the cascade feeds forward)
            grad_pre = torch.empty_like(h)
            gs = grad_pre.unbind(dim)
            for j in reversed(range(d)):
                torch.mul(grad, geo.expand(output[j]), out=gs[j])
                for k in range(j + 1, d):
                    gs[j].addcmul_(gs[k], geo.expand(cascade[k, j]))
                act_backward_(gs[j], hs[j])
        if need_c:
            grad_c = torch.zeros_like(cascade)
            for j in range(1, d):
                for i in range(j):
                    grad_c[j, i] = geo.sum_out(gs[j] * hs[i])  # type: ignore[index]
        if need_a:
            grad_a = geo.sum_stacked(h * geo.unsqueeze_set(grad))
        return (grad if need_z else None, grad_pre if need_pre else None, grad_c, grad_a,
                None, None)
