"""`DendriteLayer`: a wrapper that keeps the original layer as ``base_layer`` and adds dendrites.

Forward with D installed dendrite sets (algorithm.md, "Forward")::

    x~  = x.detach()                                   # perforation
    h_j = g(V_j(x~) + sum_{i<j} C_j[:, i] * h_i)       # all V_j in one wide op, no autograd
    z'  = W(x) + sum_j a_j * h_j

In the dendrite phase a `CandidatePool` is attached and the output is routed through its
`ErrorTap`, which trains the candidates from the user's own backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..activations import INPLACE, make_activation
from ..candidates import CandidatePool, Winners
from ..config import PerforationConfig
from ..errors import PhaseError
from ..geometry import Geometry


class DendriteLayer(nn.Module):
    """Base wrapper. Subclasses set `geometry_cls` for their layer type."""

    geometry_cls: type[Geometry] = Geometry

    def __init__(self, base_layer: nn.Module, config: PerforationConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.config = config
        self.geometry = self.geometry_cls(base_layer)
        self.activation = make_activation(config.dendrite_activation)
        self._activation_ = INPLACE.get(config.dendrite_activation)
        w = self.geometry.weight
        n, shape = self.geometry.num_neurons, self.geometry.neuron_weight_shape
        kw = {"device": w.device, "dtype": w.dtype}
        # Frozen dendrite sets, stacked: V [D, N, *w], bias [D, N], cascade C [D, D, N]
        # (C[j, i] for i < j is the weight from dendrite i to dendrite j of each neuron).
        self.register_buffer("dendrite_weight", torch.zeros(0, n, *shape, **kw))
        self.register_buffer("dendrite_bias", torch.zeros(0, n, **kw))
        self.register_buffer("cascade_weight", torch.zeros(0, 0, n, **kw))
        # Output weights a [D, N]: trained by the user's optimizer in the neuron phase.
        self.output_weight = nn.Parameter(torch.zeros(0, n, **kw))
        self.candidates: CandidatePool | None = None

    # ----------------------------------------------------------------------------- structure
    @property
    def num_dendrites(self) -> int:
        return self.dendrite_bias.shape[0]

    @property
    def num_neurons(self) -> int:
        return self.geometry.num_neurons

    def dendrite_parameter_count(self) -> int:
        """Deployable parameters the dendrites add: V, biases, used cascade entries, a."""
        d, n = self.num_dendrites, self.num_neurons
        return self.dendrite_weight.numel() + d * n + d * (d - 1) // 2 * n + d * n

    def extra_repr(self) -> str:
        k = self.candidates.num_candidates if self.candidates is not None else 0
        return f"dendrites={self.num_dendrites}, candidates={k}"

    # ------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == self.geometry.unbatched_dim:
            return self._forward(x.unsqueeze(0)).squeeze(0)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        z = self.base_layer(x)
        pool = self.candidates
        if self.num_dendrites == 0 and pool is None:
            return z
        x_free = x.detach()
        hs: list[Tensor] = []
        if self.num_dendrites:
            hs = self.dendrite_outputs(x_free if self.config.perforated else x)
            a = self.output_weight
            for j, h in enumerate(hs):
                z = torch.addcmul(z, self.geometry.expand(a[j]), h)
        if pool is not None:
            c = pool(x_free, [h.detach() for h in hs])
            z = pool.attach(z, c)
        return z

    def dendrite_outputs(self, x: Tensor) -> list[Tensor]:
        """Outputs h_1..h_D of the installed dendrite sets, each shaped like the layer output.

        All D sets' pre-activations come from one wide call of the layer's operation; the
        cascade then adds ``C_j[:, i] * h_i`` for i < j.
        """
        geo = self.geometry
        pre = geo.stacked(x, self.dendrite_weight, self.dendrite_bias)
        hs: list[Tensor] = []
        if self._activation_ is not None and not (pre.requires_grad and torch.is_grad_enabled()):
            # No autograd through the dendrites (perforated): work in place on `pre`.
            for j in range(self.num_dendrites):
                u = pre.select(geo.set_dim, j)
                for i, h_i in enumerate(hs):
                    u.addcmul_(geo.expand(self.cascade_weight[j, i]), h_i)
                hs.append(self._activation_(u))
            return hs
        for j in range(self.num_dendrites):
            u = pre.select(geo.set_dim, j)
            for i, h_i in enumerate(hs):
                u = torch.addcmul(u, geo.expand(self.cascade_weight[j, i]), h_i)
            hs.append(self.activation(u))
        return hs

    # ------------------------------------------------------------------------ dendrite phase
    def begin_candidates(self, generator: torch.Generator | None) -> CandidatePool:
        """Attach a fresh pool of K candidate sets (cascade inputs from all D dendrites)."""
        if self.candidates is not None:
            raise PhaseError("candidates are already attached")
        self.candidates = CandidatePool(self.geometry, self.num_dendrites, self.config,
                                        make_activation(self.config.dendrite_activation),
                                        generator)
        return self.candidates

    def end_candidates(self) -> Winners:
        """Install the per-neuron winners as dendrite set D+1 and drop the pool."""
        if self.candidates is None:
            raise PhaseError("no candidates are attached")
        winners = self.candidates.winners()
        self.candidates = None
        self.install(winners)
        return winners

    @torch.no_grad()
    def install(self, winners: Winners) -> None:
        """Append one frozen dendrite set built from per-neuron winners."""
        d, n = self.num_dendrites, self.num_neurons
        ref = self.dendrite_bias
        self.dendrite_weight = torch.cat([self.dendrite_weight, winners.weight.unsqueeze(0)])
        self.dendrite_bias = torch.cat([self.dendrite_bias, winners.bias.unsqueeze(0)])
        cascade = ref.new_zeros(d + 1, d + 1, n)
        cascade[:d, :d] = self.cascade_weight
        cascade[d, :d] = winners.cascade
        self.cascade_weight = cascade
        if winners.output is not None:
            a_new = winners.output
        elif self.config.output_init == "signed":
            a_new = -winners.sign * self.config.output_init_eps
        else:
            a_new = ref.new_zeros(n)
        self._set_output_weight(torch.cat([self.output_weight.detach(), a_new.unsqueeze(0)]))

    @torch.no_grad()
    def remove_last(self) -> None:
        """Drop the newest dendrite set."""
        d = self.num_dendrites
        if d == 0:
            raise PhaseError("no dendrite set to remove")
        self.dendrite_weight = self.dendrite_weight[: d - 1].clone()
        self.dendrite_bias = self.dendrite_bias[: d - 1].clone()
        self.cascade_weight = self.cascade_weight[: d - 1, : d - 1].clone()
        self._set_output_weight(self.output_weight.detach()[: d - 1].clone())

    @torch.no_grad()
    def resize(self, num_dendrites: int) -> None:
        """Allocate `num_dendrites` zero sets (to load saved weights into)."""
        ref, n = self.dendrite_bias, self.num_neurons
        d = num_dendrites
        self.dendrite_weight = ref.new_zeros(d, n, *self.geometry.neuron_weight_shape)
        self.dendrite_bias = ref.new_zeros(d, n)
        self.cascade_weight = ref.new_zeros(d, d, n)
        self._set_output_weight(ref.new_zeros(d, n))

    def _set_output_weight(self, value: Tensor) -> None:
        requires_grad = self.output_weight.requires_grad
        self.output_weight = nn.Parameter(value, requires_grad=requires_grad)
