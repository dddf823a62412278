"""The output term of installed dendrite sets that train, as one autograd function.

``z' = z + Σ_j a_j h_j`` with ``h_j = g(u_j + Σ_{i<j} C_j[:, i] h_i)`` and ``u`` the stacked
pre-activations of all D sets (one wide call of the layer's operation). Left to autograd, each
set's cascade, activation and product is its own node: a temporary per step and, in the
backward, one more tensor of all D sets to stack the sets' gradients (`unbind`'s backward).
`DendriteTerm` keeps the D outputs in one tensor, writes the gradient of every set's
pre-activation straight into one tensor of the stacked shape, and takes the activation's
derivative from its output. That is possible for sigmoid, tanh, ReLU and the identity; other
activations keep the autograd path.

The in-place backward is for a plain ``backward()``. Where the backward itself is
differentiated (``create_graph=True``: gradient penalties, Hessian-vector products, and every
``torch.func`` transform, which builds its gradients that way), the same formulas run as
ordinary differentiable torch ops; ``torch.func.vmap`` runs the forward batched
(``generate_vmap_rule``), and `DendriteTerm.jvp` gives forward mode (``jacfwd``, ``hessian``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ... import private_api
from ..activations import BACKWARD_FROM_OUTPUT, INPLACE_NO_GRAD

if TYPE_CHECKING:
    from ..geometry import Geometry


#: ``g'`` from the activation's output, as differentiable ops (the graph-building backward).
DERIVATIVE_FROM_OUTPUT: dict[str, Callable[[Tensor], Tensor | None]] = {
    "sigmoid": lambda h: h - h * h,
    "tanh": lambda h: 1 - h * h,
    "relu": lambda h: (h > 0).to(h.dtype),
    "identity": lambda h: None,  # 1
}


def fusable(activation: str, *tensors: Tensor) -> bool:
    """Whether `DendriteTerm` computes this case: an activation whose derivative its output
    gives, and one dtype throughout (under autocast the layer output's dtype may differ from
    the output weights'; autograd's path handles the promotions)."""
    return activation in BACKWARD_FROM_OUTPUT and len({t.dtype for t in tensors}) == 1


class DendriteTerm(torch.autograd.Function):
    """``(z, u [stacked], C [D, D, N], a [D, N]) -> (z + Σ_j a_j h_j, h [stacked])`` (see the
    module). ``h`` is an output so that the backward may read it as a saved output, which
    ``torch.func`` accepts and a double backward differentiates through; callers use the
    first output."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, pre: Tensor, cascade: Tensor,  # type: ignore[override]
                output: Tensor, geo: Geometry, activation: str) -> tuple[Tensor, Tensor]:
        d, dim = output.shape[0], geo.set_dim
        act_ = INPLACE_NO_GRAD[activation]  # no graph inside a forward
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
        return out, h

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]
                      ) -> None:
        _setup(ctx, inputs, output)
        ctx.save_for_forward(output[1], inputs[2], inputs[3])

    @staticmethod
    def jvp(ctx: Any, dz: Tensor | None, dpre: Tensor | None,  # type: ignore[override]
            dcascade: Tensor | None, doutput: Tensor | None, *_: Any
            ) -> tuple[Tensor, Tensor]:
        """Forward mode (``torch.func.jacfwd``, ``hessian``): the tangents of the output and
        of h, ``dh_j = g'(h_j) (du_j + Σ_{i<j} (dC_j[:, i] h_i + C_j[:, i] dh_i))``."""
        h, cascade, output = ctx.saved_tensors
        geo, derivative = ctx.geo, DERIVATIVE_FROM_OUTPUT[ctx.activation]
        dim, d = geo.set_dim, output.shape[0]
        hs = h.unbind(dim)
        dhs: list[Tensor] = []
        for j in range(d):
            parts = [] if dpre is None else [dpre.select(dim, j)]
            for i in range(j):
                parts.append(geo.expand(cascade[j, i]) * dhs[i])
                if dcascade is not None:
                    parts.append(geo.expand(dcascade[j, i]) * hs[i])
            dh = sum(parts[1:], parts[0]) if parts else torch.zeros_like(hs[j])
            dg = derivative(hs[j])
            dhs.append(dh if dg is None else dh * dg)
        parts = [geo.expand(output[j]) * dhs[j] for j in range(d)]
        if doutput is not None:
            parts += [geo.expand(doutput[j]) * hs[j] for j in range(d)]
        if dz is not None:
            parts.append(dz)
        return sum(parts[1:], parts[0]), torch.stack(dhs, dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None,  # type: ignore[override]
                 grad_h: Tensor | None) -> tuple[Tensor | None, ...]:
        h, cascade, output = ctx.saved_tensors
        geo, activation = ctx.geo, ctx.activation
        if grad is None and grad_h is None:
            return (None,) * 6
        if torch.is_grad_enabled() or grad is None or grad_h is not None:
            # The backward is itself differentiated (create_graph, torch.func), or the saved
            # h was (a double backward comes back here with h's gradient).
            return (grad, *_backward_graph(grad, grad_h, h, cascade, output, geo, activation),
                    None, None)
        need = ctx.needs_input_grad
        return (grad if need[0] else None,
                *_backward_fast(need[1:4], grad, h, cascade, output, geo, activation),
                None, None)


class DendriteTermCompiled(DendriteTerm):
    """`DendriteTerm` for a forward that ``torch.compile`` traces: TorchDynamo breaks the graph
    at a custom `jvp` (and ``save_for_forward``), so this one has none (no forward mode
    under compile)."""

    jvp = staticmethod(torch.autograd.Function.jvp)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]
                      ) -> None:
        _setup(ctx, inputs, output)


class DendriteTermEager(torch.autograd.Function):
    """`DendriteTerm` as an autograd function of the older form (its context set up in the
    forward), for eager autograd outside ``torch.func`` transforms. Same forward, backward and
    jvp; `Function.apply` of the newer form binds the arguments to the forward's signature
    (``inspect``) at every call, about 0.1 ms, 2 % of a small layer's step."""

    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        out, h = DendriteTerm.forward(*inputs)
        _setup(ctx, inputs, (out, h))
        ctx.save_for_forward(h, inputs[2], inputs[3])
        return out, h

    backward = staticmethod(DendriteTerm.backward)
    jvp = staticmethod(DendriteTerm.jvp)


def _setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    ctx.geo, ctx.activation = inputs[4], inputs[5]
    ctx.set_materialize_grads(False)  # h's gradient is None unless h is differentiated
    ctx.save_for_backward(output[1], inputs[2], inputs[3])


def term_function() -> type[torch.autograd.Function]:
    """The form of the term to apply: `DendriteTermCompiled` while ``torch.compile`` traces,
    `DendriteTerm` under ``torch.func`` transforms, else `DendriteTermEager` (the fastest)."""
    if private_api.is_compiling():
        return DendriteTermCompiled
    return DendriteTerm if private_api.functorch_transforms_active() else DendriteTermEager


def _backward_fast(need: tuple[bool, ...], grad: Tensor, h: Tensor, cascade: Tensor,
                   output: Tensor, geo: Geometry, activation: str
                   ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of u, C and a, in place into one tensor each (no graph)."""
    dim, d = geo.set_dim, output.shape[0]
    act_backward_ = BACKWARD_FROM_OUTPUT[activation]
    need_pre, need_c, need_a = need
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
    return grad_pre if need_pre else None, grad_c, grad_a


def _backward_graph(grad: Tensor | None, grad_h: Tensor | None, h: Tensor, cascade: Tensor,
                    output: Tensor, geo: Geometry, activation: str
                    ) -> tuple[Tensor, Tensor, Tensor | None]:
    """The gradients of u, C and a as differentiable out-of-place ops (see the module), with
    h's own gradient `grad_h` (from a double backward) added to each set's."""
    dim, d = geo.set_dim, output.shape[0]
    derivative = DERIVATIVE_FROM_OUTPUT[activation]
    hs = h.unbind(dim)
    ghs = None if grad_h is None else grad_h.unbind(dim)
    gs: list[Tensor] = []  # dLoss/du_j, last set first
    for j in reversed(range(d)):
        parts = [] if grad is None else [grad * geo.expand(output[j])]
        if ghs is not None:
            parts.append(ghs[j])
        parts += [gs[d - 1 - k] * geo.expand(cascade[k, j]) for k in range(j + 1, d)]
        g = parts[0]
        for part in parts[1:]:
            g = g + part
        dg = derivative(hs[j])
        gs.append(g if dg is None else g * dg)
    gs.reverse()
    zero = torch.zeros_like(cascade[0, 0])
    grad_c = torch.stack([torch.stack([geo.sum_out(gs[j] * hs[i]) if i < j else zero
                                       for i in range(d)]) for j in range(d)])
    grad_a = None if grad is None else geo.sum_stacked(h * geo.unsqueeze_set(grad))
    return torch.stack(gs, dim), grad_c, grad_a
