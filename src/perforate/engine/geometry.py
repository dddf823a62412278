"""How a layer type lays out neurons, so that the dendrite math can be written once.

A *stacked* tensor holds S sets of N neurons (S dendrite sets or S candidates), computed by one
wide call of the layer's own operation:

- Linear: the layer output is ``[..., N]``; a stacked tensor is ``[..., S, N]``.
- ConvNd, ConvTransposeNd: the layer output is ``[B, N, *spatial]``; a stacked tensor is
  ``[B, S, N, *spatial]``.

Per-set, per-neuron parameters have shape ``[S, N]`` and broadcast through `expand`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import private_api

#: An in-place activation, or None (`Geometry.stacked`).
Activation = Callable[[Tensor], Tensor] | None


def activated(out: Tensor, g_: Activation) -> Tensor:
    """`out` with the in-place activation `g_` applied without a graph (`Geometry.stacked`)."""
    if g_ is not None:
        with torch.no_grad():
            g_(out)
    return out


class Geometry:
    """Layer-type specific tensor plumbing. Subclasses fill in the abstract pieces."""

    #: Axis of the set dimension in a stacked tensor.
    set_dim: int
    #: Input rank of an unbatched call (``Linear([in])``, ``Conv2d([C, H, W])``).
    unbatched_dim: int
    #: `stacked` is one ``F.linear`` on the last axis (`LinearGeometry.stacked_with` works).
    plain_linear = False

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self._weight_shape: tuple[int, ...] | None = None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape of `weight`, read once: a parametrised weight (weight_norm,
        spectral_norm) is recomputed at every read."""
        if self._weight_shape is None:
            self._weight_shape = tuple(self.weight.shape)
        return self._weight_shape

    @property
    def weight(self) -> Tensor:
        return self.layer.weight

    @property
    def num_neurons(self) -> int:
        return self.weight_shape[0]

    @property
    def neuron_weight_shape(self) -> tuple[int, ...]:
        """Shape of one neuron's incoming weights (a row, or an output channel's kernel)."""
        return self.weight_shape[1:]

    @property
    def fan_in(self) -> int:
        return math.prod(self.neuron_weight_shape)

    def neuron_weights(self, weight: Tensor) -> Tensor:
        """A tensor shaped like the layer's weight as per-neuron rows ``[N, *w]`` (the
        layout of Linear and ConvNd weights already)."""
        return weight

    def stacked(self, x: Tensor, weight: Tensor, bias: Tensor, g_: Activation = None
                ) -> Tensor:
        """Apply S sets of neurons (``weight [S, N, *w]``, ``bias [S, N]``) to ``x`` in one op;
        `g_`: an in-place activation applied without a graph to the op's own output before it
        is viewed stacked (in place on the view, autograd would replace the view's backward
        with one that builds a zero tensor of the whole output)."""
        raise NotImplementedError

    def expand(self, p: Tensor) -> Tensor:
        """Make per-neuron values broadcast: ``[S, N]`` against a stacked tensor, ``[N]``
        against a layer output (the neuron axis is followed by the spatial axes, if any)."""
        raise NotImplementedError

    def unsqueeze_set(self, t: Tensor) -> Tensor:
        """Give a layer-output-shaped tensor a set axis of size 1."""
        return t.unsqueeze(self.set_dim)

    def sum_stacked(self, t: Tensor) -> Tensor:
        """Sum a stacked tensor over sample positions: ``[S, N]``."""
        raise NotImplementedError

    def sum_out(self, t: Tensor) -> Tensor:
        """Sum a layer-output-shaped tensor over sample positions: ``[N]``."""
        raise NotImplementedError

    def position_shape(self, out: Tensor) -> tuple[int, ...]:
        """Shape of the sample positions of a layer output (its shape without the neuron axis)."""
        raise NotImplementedError

    def expand_positions(self, mask: Tensor) -> Tensor:
        """Make a per-position tensor (shaped `position_shape`) broadcast against a layer
        output; `unsqueeze_set` of the result broadcasts against a stacked tensor."""
        raise NotImplementedError

    def stacked_position_dims(self, t: Tensor) -> tuple[int, ...]:
        """The sample-position axes of a stacked tensor."""
        raise NotImplementedError

    def sum_sq_stacked(self, t: Tensor) -> Tensor:
        """Sum of squares of a stacked tensor over sample positions ``[S, N]``: a squared
        2-norm, so no temporary as large as t is made."""
        return torch.linalg.vector_norm(t, dim=self.stacked_position_dims(t)).square()

    def sums_stacked(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(sum t, sum t**2)`` over sample positions ``[S, N]``: two single-pass reductions
        (`torch.var_mean`, the obvious one-call choice, is ~8x slower on a CPU)."""
        return self.sum_stacked(t), self.sum_sq_stacked(t)

    def cascade(self, u: Tensor, weights: Sequence[Tensor] | Tensor, hs: Sequence[Tensor], *,
                inplace: bool = False) -> Tensor:
        """The cascade ``u + sum_i weights[i] * hs[i]`` (per-neuron weights, expanded);
        `inplace`: on `u` itself (a fresh output whose old values no backward reads)."""
        for i, h in enumerate(hs):
            w = self.expand(weights[i])
            u = u.addcmul_(w, h) if inplace else torch.addcmul(u, w, h)
        return u

    def combine(self, h: Tensor, weight: Tensor) -> Tensor:
        """Output term: ``sum_j weight[j] * h[j]`` per neuron, shaped like the layer output."""
        return (self.expand(weight) * h).sum(self.set_dim)


class LinearGeometry(Geometry):
    set_dim = -2
    unbatched_dim = 1
    plain_linear = True

    def stacked(self, x: Tensor, weight: Tensor, bias: Tensor, g_: Activation = None
                ) -> Tensor:
        return self.stacked_with(F.linear, x, weight, bias, g_)

    @staticmethod
    def stacked_with(linear: Callable[[Tensor, Tensor, Tensor], Tensor], x: Tensor,
                     weight: Tensor, bias: Tensor, g_: Activation = None) -> Tensor:
        """`stacked` computed by ``linear(x, weight [S*N, in], bias [S*N])`` (e.g.
        `DistributedSync.linear`, whose backward returns the global batch's gradients)."""
        s, n = bias.shape
        # On 2-D rows, so that the op's output is a tensor of its own (F.linear views a
        # higher-dimensional result as one), which `g_` may change in place.
        out = linear(x.reshape(-1, x.shape[-1]), weight.reshape(s * n, -1), bias.reshape(s * n))
        return activated(out, g_).view(*x.shape[:-1], s, n)

    def expand(self, p: Tensor) -> Tensor:
        return p

    def stacked_position_dims(self, t: Tensor) -> tuple[int, ...]:
        return tuple(range(t.dim() - 2))

    def sum_stacked(self, t: Tensor) -> Tensor:
        return t.sum(dim=tuple(range(t.dim() - 2)))

    def sum_out(self, t: Tensor) -> Tensor:
        return t.sum(dim=tuple(range(t.dim() - 1)))

    def position_shape(self, out: Tensor) -> tuple[int, ...]:
        return tuple(out.shape[:-1])

    def expand_positions(self, mask: Tensor) -> Tensor:
        return mask.unsqueeze(-1)



class ProjectedLinearGeometry(LinearGeometry):
    """A Linear layer's dendrites behind a shared projection to `rank` inputs
    (``config.dendrite_rank``): their weights are ``[S, N, rank]``; the layer's own are not."""

    def __init__(self, layer: nn.Module, rank: int) -> None:
        super().__init__(layer)
        self.rank = rank

    @property
    def neuron_weight_shape(self) -> tuple[int, ...]:
        return (self.rank,)


class ConvGeometry(Geometry):
    set_dim = 1

    def __init__(self, layer: private_api.ConvNd) -> None:
        super().__init__(layer)
        self.spatial = len(layer.kernel_size)
        self.unbatched_dim = self.spatial + 1
        self.groups = layer.groups

    def _ones(self) -> list[int]:
        return [1] * self.spatial

    def stacked(self, x: Tensor, weight: Tensor, bias: Tensor, g_: Activation = None
                ) -> Tensor:
        s, n = bias.shape
        g = self.groups
        if g == 1:
            w, b = weight.reshape(s * n, *weight.shape[2:]), bias.reshape(s * n)
        else:
            # A grouped conv assigns output channels to groups in contiguous blocks, so the
            # S sets are interleaved per group: [g, S, N/g] instead of [S, g, N/g].
            w = weight.unflatten(1, (g, n // g)).transpose(0, 1).reshape(s * n, *weight.shape[2:])
            b = bias.unflatten(1, (g, n // g)).transpose(0, 1).reshape(s * n)
        out = activated(private_api.conv_forward(self.layer, x, w, b), g_)
        if g == 1:
            return out.unflatten(1, (s, n))
        return out.unflatten(1, (g, s, n // g)).transpose(1, 2).flatten(2, 3)

    def expand(self, p: Tensor) -> Tensor:
        return p.reshape(*p.shape, *self._ones())

    def op_weight(self, weight: Tensor) -> Tensor:
        """S sets ``[S, N, *w]`` as the weight of one wide conv (groups interleaved)."""
        s, n, g = weight.shape[0], weight.shape[1], self.groups
        if g > 1:
            weight = weight.unflatten(1, (g, n // g)).transpose(0, 1)
        return weight.reshape(s * n, *weight.shape[-len(self.neuron_weight_shape):])

    def op_bias(self, bias: Tensor) -> Tensor:
        """S sets of biases ``[S, N]`` in the channel order of `op_weight`."""
        s, n, g = bias.shape[0], bias.shape[1], self.groups
        return bias.unflatten(1, (g, n // g)).transpose(0, 1).reshape(s * n)

    def stacked_position_dims(self, t: Tensor) -> tuple[int, ...]:
        return (0, *range(3, t.dim()))

    # Conv sums reduce the contiguous spatial axes first, then the batch: faster on a CPU
    # than one reduction over (0, 3, ...).
    def sum_stacked(self, t: Tensor) -> Tensor:
        return t.flatten(3).sum(-1).sum(0)

    def sum_sq_stacked(self, t: Tensor) -> Tensor:
        return torch.linalg.vector_norm(t.flatten(3), dim=-1).square().sum(0)

    def sum_out(self, t: Tensor) -> Tensor:
        return t.sum(dim=(0, *range(2, t.dim())))

    def position_shape(self, out: Tensor) -> tuple[int, ...]:
        return (out.shape[0], *out.shape[2:])

    def expand_positions(self, mask: Tensor) -> Tensor:
        return mask.unsqueeze(1)


class ConvTransposeGeometry(ConvGeometry):
    """``nn.ConvTranspose1d/2d/3d``: the weight is ``[in, N/g, *k]``; neuron n (output channel
    n, in group g) owns ``weight[g*in/g:(g+1)*in/g, n % (N/g)]``, i.e. ``[in/g, *k]``, and a
    dendrite of n sees n's receptive field through the same transposed conv (stride, padding,
    output_padding, dilation, groups)."""

    @property
    def num_neurons(self) -> int:
        return self.layer.out_channels

    @property
    def neuron_weight_shape(self) -> tuple[int, ...]:
        shape = self.weight_shape
        return (shape[0] // self.groups, *shape[2:])

    def neuron_weights(self, weight: Tensor) -> Tensor:
        """``[in, N/g, *k]`` -> ``[N, in/g, *k]``."""
        g = self.groups
        return weight.unflatten(0, (g, weight.shape[0] // g)).transpose(1, 2).flatten(0, 1)

    def op_weight(self, weight: Tensor) -> Tensor:
        """``[S, N, in/g, *k]`` -> ``[in, S*N/g, *k]``: one wide transposed conv whose output
        channels come, per group, as S blocks of N/g (the order `op_bias` and `stacked` use)."""
        n, g = weight.shape[1], self.groups
        w = weight.unflatten(1, (g, n // g))  # [S, g, N/g, in/g, *k]
        w = w.permute(1, 3, 0, 2, *range(4, w.dim()))  # [g, in/g, S, N/g, *k]
        return w.flatten(0, 1).flatten(1, 2)

    def stacked(self, x: Tensor, weight: Tensor, bias: Tensor, g_: Activation = None
                ) -> Tensor:
        s, n, g = bias.shape[0], bias.shape[1], self.groups
        layer = self.layer
        conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.spatial - 1]
        out = conv(x, self.op_weight(weight), self.op_bias(bias), layer.stride, layer.padding,
                   layer.output_padding, g, layer.dilation)
        return activated(out, g_).unflatten(1, (g, s, n // g)).transpose(1, 2).flatten(2, 3)
