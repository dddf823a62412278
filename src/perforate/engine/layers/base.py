"""`DendriteLayer`: a wrapper that keeps the original layer as ``base_layer`` and adds dendrites.

Forward with D installed dendrite sets (algorithm.md, "Forward")::

    x~  = x.detach()                                   # perforation (x itself if unperforated)
    x~  = P x~                                         # only with config.dendrite_rank
    h_j = g(V_j(x~) + sum_{i<j} C_j[:, i] * h_i)       # all V_j in one wide op
    z'  = W(x) + sum_j a_j * h_j

A dendrite whose neuron never correlated with its error in the dendrite phase (a dead ReLU, a
head outside the loss: no error to correlate with) is installed *dead*: ``dendrite_alive`` is 0
for it, its ``a`` and the cascade entries it feeds are multiplied by 0, so it contributes exactly
nothing, learns nothing and is not counted in `dendrite_parameter_count`.

In the dendrite phase a `CandidatePool` is attached and the output is routed through its
`ErrorTap`, which trains the candidates from the user's own backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import PerforationConfig
from ...errors import ConfigError, PhaseError
from ..activations import FUNCTIONS, INPLACE_NO_GRAD, make_activation
from ..candidates import CandidatePool
from ..geometry import Geometry, LinearGeometry, ProjectedLinearGeometry
from ..pool_results import Winners
from .costs import LayerCosts, layer_costs
from .dendrite_term import fusable, term_function
from .input_correlation import watch_input_correlation


def base_view(name: str) -> property:
    """A read-only property that returns the base layer's attribute `name`.

    Wrappers look like the layer they wrap: PyTorch's and third-party code that reads
    ``linear.weight`` or ``conv.kernel_size`` (e.g. ``nn.TransformerEncoderLayer``'s fast-path
    check) reads the base layer's value. Assigning raises ``AttributeError``: change the
    ``base_layer`` itself.
    """

    def get(self: DendriteLayer) -> Any:
        return getattr(self.base_layer, name)

    return property(get, doc=f"The base layer's ``{name}`` (read-only view).")


class DendriteLayer(nn.Module):
    """Base wrapper. Subclasses set `geometry_cls` for their layer type.

    ``weight`` and ``bias`` (and each subclass's shape attributes, e.g. ``in_features``) are
    read-only views of ``base_layer``'s (see `base_view`).
    """

    geometry_cls: type[Geometry] = Geometry

    weight = base_view("weight")
    bias = base_view("bias")

    def __init__(self, base_layer: nn.Module, config: PerforationConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.config = config
        self.geometry = self.geometry_cls(base_layer)
        fan_in = self.geometry.fan_in
        rank = self._rank = self._projection_rank(config)
        if rank is not None:  # the dendrites' geometry: `rank` inputs per neuron
            self.geometry = ProjectedLinearGeometry(base_layer, rank)
        self.activation = make_activation(config.dendrite_activation)
        self._activation_ = INPLACE_NO_GRAD.get(config.dendrite_activation)
        self._activation_fn = FUNCTIONS.get(config.dendrite_activation)  # faster than the module
        w = self.geometry.weight
        n, shape = self.geometry.num_neurons, self.geometry.neuron_weight_shape
        kw = {"device": w.device, "dtype": w.dtype}
        # Installed dendrite sets, stacked: V [D, N, *w], bias [D, N], cascade C [D, D, N]
        # (C[j, i] for i < j is the weight from dendrite i to dendrite j of each neuron), and
        # the output weights a [D, N]. All four are parameters whose identity never changes:
        # an install or a removal resizes them in place (`_assign`), so an optimizer, EMA or
        # DDP built earlier still holds them. a is trained in the neuron phase; V, bias and C
        # only with `config.train_dendrites` (else frozen: requires_grad=False).
        trained = config.train_dendrites
        self.dendrite_weight = nn.Parameter(torch.zeros(0, n, *shape, **kw), trained)
        self.dendrite_bias = nn.Parameter(torch.zeros(0, n, **kw), trained)
        self.cascade_weight = nn.Parameter(torch.zeros(0, 0, n, **kw), trained)
        self.output_weight = nn.Parameter(torch.zeros(0, n, **kw))
        # With `config.dendrite_rank` r (Linear layers): the projection P [r, fan_in] that all
        # dendrites of the layer share; [0, fan_in] until the first set is drawn, like V.
        self.dendrite_projection = None if rank is None else \
            nn.Parameter(torch.zeros(0, fan_in, **kw), trained)
        # With `config.dendrite_inputs`, each dendrite sees a subset of its neuron's inputs:
        # a 0/1 mask on V (same shape), whose zeros are neither used nor counted.
        self.register_buffer("dendrite_mask", torch.zeros(0, n, *shape, **kw)
                             if config.dendrite_inputs else None)
        # 1 where an installed dendrite is alive, 0 where its neuron's candidates never
        # correlated (see the module docstring) [D, N].
        self.register_buffer("dendrite_alive", torch.zeros(0, n, **kw))
        self.candidates: CandidatePool | None = None
        # With dendrite_input_selection="correlation": per neuron and input, Σ |dLoss/dW|
        # of the layer's own weight over this neuron phase's backward passes (not state).
        self.input_score: Tensor | None
        self.register_buffer("input_score", None, persistent=False)
        if config.dendrite_input_selection == "correlation":
            self.input_score = watch_input_correlation(self)

    # ----------------------------------------------------------------------------- structure
    @property
    def num_dendrites(self) -> int:
        return self.dendrite_bias.shape[0]

    @property
    def num_neurons(self) -> int:
        return self.geometry.num_neurons

    def _projection_rank(self, config: PerforationConfig) -> int | None:
        """r of `config.dendrite_rank` for this layer: None without it, or where the layer's
        fan_in is at most r (a projection would not save weights)."""
        rank = config.dendrite_rank
        if rank is None:
            return None
        if type(self.geometry) is not LinearGeometry:
            raise ConfigError(
                f"dendrite_rank applies to Linear layers; this {type(self.base_layer).__name__} "
                "is not one: leave it out (target_modules=[nn.Linear] or exclude_modules)")
        return rank if rank < self.geometry.fan_in else None

    def dendrite_parameters(self) -> list[nn.Parameter]:
        """The installed dendrites' parameters: V, bias, cascade C and output weights a (and
        the shared input projection P with `config.dendrite_rank`)."""
        params = [self.dendrite_weight, self.dendrite_bias, self.cascade_weight,
                  self.output_weight]
        return params if self.dendrite_projection is None else [*params,
                                                                 self.dendrite_projection]

    def dendrite_parameter_count(self) -> int:
        """Deployable parameters the alive dendrites add: V (its used entries), biases, a, the
        cascade entries between two alive dendrites of a neuron (dead ones count 0), and the
        shared projection P once if any dendrite is alive."""
        alive = self.dendrite_alive
        per_neuron = alive.sum(0)  # alive sets of each neuron
        count = (self._used_inputs() * alive).sum() + 2 * alive.sum() \
            + (per_neuron * (per_neuron - 1) / 2).sum()
        if self.dendrite_projection is not None and bool(alive.any()):
            count = count + self.dendrite_projection.numel()
        return int(count)

    def _used_inputs(self) -> Tensor:
        """``[D, N]``: the entries of V each dendrite uses (all, or those of its mask)."""
        if self.dendrite_mask is None:
            fan_in = math.prod(self.geometry.neuron_weight_shape)
            return torch.full_like(self.dendrite_alive, fan_in)
        return self.dendrite_mask.flatten(2).sum(-1)

    def costs(self, positions: int | None = None) -> LayerCosts:
        """This layer's parameters and multiply-adds per output position, and those a dendrite
        set and a dendrite phase's candidate pool add (`LayerCosts`); `positions`: output
        positions per sample (`output_positions`), if counted."""
        fan_ins = torch.full((self.num_neurons,), self.geometry.fan_in)
        return layer_costs(self, fan_ins, positions)

    def output_positions(self, output: Tensor) -> int:
        """The sample positions in one forward's output (each neuron is computed once at each):
        the output's shape without the neuron axis, per the layer's geometry."""
        if output.dim() == self.geometry.unbatched_dim:
            output = output.unsqueeze(0)
        return math.prod(self.geometry.position_shape(output))

    def live_weights(self) -> tuple[Tensor, Tensor]:
        """The cascade C ``[D, D, N]`` and output weights a ``[D, N]`` with the entries of dead
        dendrites zeroed (what the forward and `pf.export` use)."""
        alive = self.dendrite_alive
        return self.cascade_weight * alive.unsqueeze(0), self.output_weight * alive

    def extra_repr(self) -> str:
        k = self.candidates.num_candidates if self.candidates is not None else 0
        rank = "" if self._rank is None else f", dendrite_rank={self._rank}"
        return f"dendrites={self.num_dendrites}, candidates={k}{rank}"

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
        x_in = x_free if self.config.perforated else x
        if self.dendrite_projection is not None:  # the dendrites' shared input projection
            x_in = F.linear(x_in, self.dendrite_projection)
            x_free = x_in.detach()
        hs: list[Tensor] = []
        if self.num_dendrites:
            pre = self._dendrite_pre(x_in)
            cascade, a = self.live_weights()
            name = self.config.dendrite_activation
            if pool is None and pre.requires_grad and torch.is_grad_enabled() \
                    and fusable(name, z, pre, cascade, a):  # sets that train: one node
                return term_function().apply(z, pre, cascade, a, self.geometry, name)[0]
            hs = self._outputs(pre, cascade)
            for j, h in enumerate(hs):
                z = torch.addcmul(z, self.geometry.expand(a[j]), h)
        if pool is not None:  # a dead dendrite's output is 0 for the candidates too
            alive = self.dendrite_alive
            c = pool(x_free, [h.detach() * self.geometry.expand(alive[j])
                              for j, h in enumerate(hs)])
            z = pool.attach(z, c)
        return z

    def dendrite_outputs(self, x: Tensor) -> list[Tensor]:
        """Outputs h_1..h_D of the installed dendrite sets, each shaped like the layer output.

        All D sets' pre-activations come from one wide call of the layer's operation; the
        cascade then adds ``C_j[:, i] * h_i`` for i < j (0 from a dead dendrite i, whose own
        output is computed but used nowhere).
        """
        return self._outputs(self._dendrite_pre(x), self.live_weights()[0])

    def _dendrite_pre(self, x: Tensor) -> Tensor:
        """The D sets' pre-activations, stacked (one wide call of the layer's operation)."""
        weight = self.dendrite_weight
        if self.dendrite_mask is not None and weight.requires_grad:
            weight = weight * self.dendrite_mask  # trained: keep the unseen inputs at zero
        return self.geometry.stacked(x, weight, self.dendrite_bias)

    def _outputs(self, pre: Tensor, cascade: Tensor) -> list[Tensor]:
        """`dendrite_outputs` from the stacked pre-activations and the live cascade."""
        geo = self.geometry
        inplace = self._activation_ is not None \
            and not (pre.requires_grad and torch.is_grad_enabled())
        # Trained sets: `unbind`, whose backward stacks the sets' gradients once (a `select`
        # per set would fill a zero tensor of all D sets for each, then add them up).
        parts = None if inplace else pre.unbind(geo.set_dim)
        hs: list[Tensor] = []
        for j in range(self.num_dendrites):
            u = pre.select(geo.set_dim, j) if parts is None else parts[j]
            u = geo.cascade(u, cascade[j], hs, inplace=inplace)
            # No autograd through the dendrites (perforated, frozen): in place on `pre`.
            g = self._activation_ if inplace else self._activation_fn or self.activation
            hs.append(g(u))  # type: ignore[misc]
        return hs

    # ------------------------------------------------------------------------ dendrite phase
    def begin_candidates(self, generator: torch.Generator | None,
                         pool_type: Callable[..., CandidatePool] = CandidatePool,
                         ) -> CandidatePool:
        """Attach a fresh pool of K candidate sets (cascade inputs from all D dendrites), a
        `pool_type` (a distributed run's: `DistributedCandidatePool`); with
        ``dendrite_input_selection="correlation"`` they see the inputs `input_score` ranks
        first, and the score starts again for the next neuron phase."""
        if self.candidates is not None:
            raise PhaseError("candidates are already attached")
        proj = self.dendrite_projection
        if proj is not None and proj.shape[0] == 0:  # the first set: draw P ~ N(0, 1/fan_in)
            fan_in = proj.shape[1]
            value = torch.randn(self._rank or 0, fan_in, generator=generator,
                                dtype=torch.float32) / fan_in ** 0.5
            self._set(proj, value.to(proj))
        self.candidates = pool_type(self.geometry, self.num_dendrites, self.config,
                                    make_activation(self.config.dendrite_activation),
                                    generator, input_score=self.input_score)
        if self.input_score is not None:
            self.input_score.zero_()
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
        """Append one dendrite set built from per-neuron winners (dead where
        ``winners.alive`` is 0: those get output weight 0 and stay masked)."""
        d, n = self.num_dendrites, self.num_neurons
        ref = self.dendrite_bias
        alive = ref.new_ones(n) if winners.alive is None else winners.alive.to(ref)
        cascade = ref.new_zeros(d + 1, d + 1, n)
        cascade[:d, :d] = self.cascade_weight
        cascade[d, :d] = winners.cascade
        if winners.output is not None:
            a_new = winners.output
        elif self.config.cascade.output_init == "signed":
            a_new = -winners.sign * self.config.cascade.output_init_eps
        else:
            a_new = ref.new_zeros(n)
        self._assign(torch.cat([self.dendrite_weight, winners.weight.unsqueeze(0)]),
                     torch.cat([self.dendrite_bias, winners.bias.unsqueeze(0)]), cascade,
                     torch.cat([self.output_weight, (a_new * alive).unsqueeze(0)]))
        self.dendrite_alive = torch.cat([self.dendrite_alive, alive.unsqueeze(0)])
        if self.dendrite_mask is not None:
            self.dendrite_mask = torch.cat([self.dendrite_mask, winners.mask.unsqueeze(0)])

    @torch.no_grad()
    def remove_last(self) -> None:
        """Drop the newest dendrite set."""
        d = self.num_dendrites
        if d == 0:
            raise PhaseError("no dendrite set to remove")
        self._assign(self.dendrite_weight[: d - 1], self.dendrite_bias[: d - 1],
                     self.cascade_weight[: d - 1, : d - 1], self.output_weight[: d - 1])
        if d == 1 and self.dendrite_projection is not None:  # P goes with the last set
            self._set(self.dendrite_projection, self.dendrite_projection[:0])
        self.dendrite_alive = self.dendrite_alive[: d - 1].clone()
        if self.dendrite_mask is not None:
            self.dendrite_mask = self.dendrite_mask[: d - 1].clone()

    @torch.no_grad()
    def resize(self, num_dendrites: int) -> None:
        """Allocate `num_dendrites` zero sets, alive (to load saved weights into)."""
        if self.candidates is not None:
            raise PhaseError("cannot resize the dendrites of a layer in the dendrite phase")
        ref, n, d = self.dendrite_bias, self.num_neurons, num_dendrites
        weight = ref.new_zeros(d, n, *self.geometry.neuron_weight_shape)
        self._assign(weight, ref.new_zeros(d, n), ref.new_zeros(d, d, n), ref.new_zeros(d, n))
        proj = self.dendrite_projection
        if proj is not None:
            self._set(proj, proj.new_zeros((self._rank or 0) if d else 0, proj.shape[1]))
        self.dendrite_alive = ref.new_ones(d, n)
        if self.dendrite_mask is not None:
            self.dendrite_mask = torch.zeros_like(weight)

    def _assign(self, weight: Tensor, bias: Tensor, cascade: Tensor, output: Tensor) -> None:
        """Give the four per-set dendrite parameters new values (and shapes)."""
        for param, value in zip(self.dendrite_parameters()[:4], (weight, bias, cascade, output),
                                strict=True):
            self._set(param, value)

    @staticmethod
    def _set(param: nn.Parameter, value: Tensor) -> None:
        """Give `param` a new value (and shape), keeping its identity: an optimizer, EMA or
        DDP built earlier still holds it."""
        value = value.detach().clone()
        if param.shape != value.shape:
            # `.data =` forgets the parameter's cached gradient accumulator only on a dtype
            # or device change; one kept alive by a graph the caller still holds (the last
            # batch's loss) would give the next backward's gradient the old shape. An empty
            # tensor of another dtype passes first: no copy, and a dtype every device has
            # (MPS has no float64).
            other = torch.float32 if value.dtype == torch.float16 else torch.float16
            param.data = value.new_empty(0, dtype=other)
        param.data = value
        param.grad = None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        """Let ``load_state_dict`` take (a) a state with another number of dendrite sets: the
        layer is resized to it; (b) the plain layer's own state (``weight``, ``bias``, ...,
        from a checkpoint of the network before `perforate`): it goes to ``base_layer`` and
        the layer keeps no dendrites. A state saved before dendrites could be dead (no
        ``dendrite_alive``) loads with every dendrite alive."""
        for key in self.base_layer.state_dict():
            plain, wrapped = prefix + key, f"{prefix}base_layer.{key}"
            if plain in state_dict and wrapped not in state_dict:
                state_dict[wrapped] = state_dict.pop(plain)
        incoming = state_dict.get(prefix + "dendrite_bias")
        if incoming is not None and prefix + "dendrite_alive" not in state_dict:
            state_dict[prefix + "dendrite_alive"] = torch.ones_like(incoming)
        if incoming is not None and incoming.shape[0] != self.num_dendrites:
            self.resize(incoming.shape[0])
        elif incoming is None and self.num_dendrites == 0 and any(
                k.startswith(f"{prefix}base_layer.") for k in state_dict):
            for name, value in self._dendrite_state().items():  # a plain layer's checkpoint
                state_dict.setdefault(prefix + name, value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _dendrite_state(self) -> dict[str, Tensor]:
        names = ["dendrite_weight", "dendrite_bias", "cascade_weight", "output_weight",
                 "dendrite_alive"]
        if self.dendrite_mask is not None:
            names.append("dendrite_mask")
        if self.dendrite_projection is not None:
            names.append("dendrite_projection")
        return {name: getattr(self, name).detach() for name in names}

