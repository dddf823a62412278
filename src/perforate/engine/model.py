"""`PerforatedModel`: a user's network with dendrite layers injected, and its two phases."""

from __future__ import annotations

import copy
import functools
import logging
import statistics
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import private_api
from ..config import PerforationConfig
from ..errors import PhaseError
from ..io.storage import check_structure, save_pretrained
from ..parallel.distributed import DistributedSync
from ..parallel.distributed_pool import DistributedCandidatePool
from ..training.finite import skip_nonfinite_steps
from .candidate_optimizer import make_optimizer
from .candidates import CandidatePool
from .layers import CompositeLayer, DendriteLayer, WrapperRegistry, default_registry
from .layers.composite import top_wrappers
from .layers.fastpath import disable_fused_transformer, restore
from .layers.recurrent import RNN, RNNCell, unrolled_cost_note
from .masking import sample_mask
from .pool_results import EpochReport
from .targeting import select_targets
from .targeting import set_submodule as _set_submodule

logger = logging.getLogger(__name__)

NEURON, DENDRITE = "neuron", "dendrite"


def _tracked_norms(net: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in net.named_modules():
        if isinstance(m, private_api.NormBase) and m.track_running_stats \
                and m.running_mean is not None:
            yield name, m


class PerforatedModel(nn.Module):
    """Holds the user's network as ``net``; targeted layers are replaced by `DendriteLayer`s.

    Neuron phase: ordinary training (perforated: no error flows through dendrites).
    Dendrite phase: the network is frozen and each layer's candidates learn by
    Cascade-Correlation from the same ``loss.backward()``; step `candidate_optimizer()`.
    """

    def __init__(self, net: nn.Module, config: PerforationConfig,
                 registry: WrapperRegistry | None = None) -> None:
        super().__init__()
        self.config = config
        self.registry = registry or default_registry()
        for name in select_targets(net, config, self.registry):
            base = net.get_submodule(name)
            wrapper = self.registry.lookup(base)(base, config)  # type: ignore[misc]
            _set_submodule(net, name, wrapper)
        self._fused_paths = disable_fused_transformer(net, (DendriteLayer, CompositeLayer))
        self.net = net
        _warn_clamped_inputs(config, self.dendrite_layers())
        self._phase = NEURON
        self._requires_grad: dict[str, bool] = {}
        self._norm_state: dict[str, tuple[float | None, Tensor]] = {}
        self._norm_stats: dict[str, tuple[Tensor, Tensor]] = {}
        self._optimizer: torch.optim.Optimizer | None = None
        self._sync: DistributedSync | None = None
        logger.info("perforated %d layer(s): %s", len(self.dendrite_layers()),
                    ", ".join(self.dendrite_layers()))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        """Also accept the state of the plain network (keys without ``net.``): a checkpoint
        of the model before `perforate`. Layers resize to the dendrite sets they are given."""
        inner = prefix + "net."
        keys = [k for k in state_dict if k.startswith(prefix)]
        if keys and not any(k.startswith(inner) for k in keys):
            for key in keys:
                state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -------------------------------------------------------------------------------- queries
    @property
    def phase(self) -> str:
        """"neuron" or "dendrite"."""
        return self._phase

    def dendrite_layers(self) -> dict[str, DendriteLayer]:
        """{qualified name in ``net``: wrapper}; each wrapper keeps its ``.base_layer``."""
        return {n: m for n, m in self.net.named_modules() if isinstance(m, DendriteLayer)}

    @property
    def num_dendrites(self) -> int:
        """Dendrite sets installed (the same on every wrapped layer)."""
        layers = self.dendrite_layers()
        return next(iter(layers.values())).num_dendrites if layers else 0

    def structure(self) -> dict[str, int]:
        """{layer name: dendrite sets}: what a load needs to rebuild the model."""
        return {n: m.num_dendrites for n, m in self.dendrite_layers().items()}

    def count_parameters(self) -> int:
        """Deployable parameters: the network plus dendrite sets, cascade and output weights
        (no candidates, no bookkeeping copies); shared parameters count once."""
        layers = self.dendrite_layers().values()
        skip = {id(p) for m in layers for p in m.dendrite_parameters()}
        for m in layers:
            if m.candidates is not None:
                skip |= {id(p) for p in m.candidates.parameters()}
        seen: dict[int, int] = {}
        for p in self.net.parameters():
            if id(p) not in skip:
                seen[id(p)] = p.numel()
        return sum(seen.values()) + sum(m.dendrite_parameter_count() for m in layers)

    # ------------------------------------------------------------------------ dendrite phase
    def _require(self, phase: str, action: str) -> None:
        if self._phase != phase:
            raise PhaseError(f"{action} needs the {phase} phase; the model is in the "
                             f"{self._phase} phase")

    @property
    def trains_candidates(self) -> bool:
        """False when candidates are installed as drawn (``dendrite_phase="none"``): a
        dendrite phase then needs no epoch (`grow` adds a set at once)."""
        return self.config.dendrite_phase != "none"

    def grow(self, attempt: int = 0) -> dict[str, dict[str, float]]:
        """Add a dendrite set without a dendrite phase (``dendrite_phase="none"``)."""
        if self.trains_candidates:
            raise PhaseError("grow() adds untrained dendrites; with dendrite_phase="
                             f"{self.config.dendrite_phase!r} run a dendrite phase")
        self.begin_dendrite_phase(attempt)
        return self.end_dendrite_phase()

    def begin_dendrite_phase(self, attempt: int = 0) -> None:
        """Freeze the network and attach K fresh candidate sets to every wrapped layer.

        `attempt` numbers retries of the same set (a retried set draws other candidates)."""
        self._require(NEURON, "begin_dendrite_phase()")
        self._requires_grad = {n: p.requires_grad for n, p in self.net.named_parameters()}
        for p in self.net.parameters():
            p.requires_grad_(False)
        # Normalisation layers keep their running statistics (momentum 0 leaves them as is;
        # a NaN batch would not: 0 * NaN, so they are put back when the phase ends).
        self._norm_state = {}
        for name, m in _tracked_norms(self.net):
            self._norm_state[name] = (m.momentum, m.num_batches_tracked.clone())
            m.momentum = 0.0
        self._keep_norm_stats()
        if self.num_dendrites == 0:
            _note_recurrent_cost(self.dendrite_layers())
        generator = None
        if self.config.seed is not None:
            seed = self.config.seed + 1_000_003 * self.num_dendrites + 7_919 * attempt
            generator = torch.Generator().manual_seed(seed)
        params, pools = [], []
        # A distributed run's pools reduce their statistics and gradients across ranks.
        pool_type = CandidatePool if self._sync is None else \
            functools.partial(DistributedCandidatePool, sync=self._sync)
        for layer in self.dendrite_layers().values():
            pool = layer.begin_candidates(generator, pool_type)
            params += list(pool.parameters())
            pools.append(pool)
            if isinstance(pool, DistributedCandidatePool):  # rank 0's draw everywhere
                pool.take_rank0()
                if layer.dendrite_projection is not None:
                    self._sync.broadcast_([layer.dendrite_projection.data])
        self._optimizer = self._make_optimizer(params)
        if self._sync is not None:
            self._optimizer.register_step_pre_hook(self._sync.grad_sum_hook(
                lambda: [p for pool in pools if isinstance(pool, DistributedCandidatePool)
                         for p in pool.params_to_sum()]))
        skip_nonfinite_steps(self._optimizer)  # a batch left out of the statistics
        self._phase = DENDRITE
        logger.info("dendrite phase %d: %d candidate(s) per layer", self.num_dendrites + 1,
                    self.config.cascade.candidates)

    def _keep_norm_stats(self) -> None:
        """Copies of the normalisation layers' running statistics, put back when the dendrite
        phase ends (not state: momentum 0 keeps them unchanged unless a batch was NaN)."""
        self._norm_stats = {name: (m.running_mean.clone(), m.running_var.clone())
                            for name, m in _tracked_norms(self.net) if m.running_var is not None}

    def set_distributed(self, sync: DistributedSync | None) -> None:
        """Reduce the dendrite phases across ranks (`perforate.parallel.distributed`; `pf.Tracker`
        calls this for a DDP model): candidates drawn on rank 0, statistics of the global
        batch, candidate gradients summed before their optimizer steps."""
        if self._phase == DENDRITE:
            raise PhaseError("set_distributed() needs the neuron phase")
        self._sync = sync

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        cascade = self.config.cascade
        return make_optimizer(cascade.optimizer, cascade.lr, cascade.optimizer_kwargs, params)

    def candidate_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer that trains this dendrite phase's candidates (step it per batch)."""
        self._require(DENDRITE, "candidate_optimizer()")
        return self._optimizer  # type: ignore[return-value]  # set by begin_dendrite_phase

    def candidate_correlations(self) -> dict[str, Tensor]:
        """{layer: |Pearson| ``[K, N]``} of each candidate with its neuron's error, this epoch."""
        self._require(DENDRITE, "candidate_correlations()")
        return {n: m.candidates.correlations().abs()  # type: ignore[union-attr]
                for n, m in self.dendrite_layers().items()}

    def sample_mask(self, mask: Tensor) -> AbstractContextManager[None]:
        """Count only the sample positions where `mask` is True in the candidate statistics and
        gradients of the forward passes run inside the block (leave padding out).

        ``mask`` has the shape of a layer output without its neuron axis (``[B, T]`` for
        ``[B, T, C]`` Linear outputs); layers with other position shapes are not affected.
        See `perforate.engine.masking`.
        """
        return sample_mask(mask)

    def end_epoch(self) -> dict[str, EpochReport]:
        """Close the epoch's statistics: keep each neuron's best candidate so far, reset sums.

        Raises `NonFiniteError` if non-finite errors or activations were seen in every batch
        of a layer (or leave its candidates non-finite), `PhaseError` if no batch was seen.
        """
        self._require(DENDRITE, "end_epoch()")
        layers = self.dendrite_layers()
        if self.trains_candidates and layers and not any(
                m.candidates.has_pending() for m in layers.values()):  # type: ignore[union-attr]
            raise PhaseError("no batches were seen in this dendrite epoch; train the candidates "
                             "(forward and loss.backward() through the model, then the "
                             "candidate optimizer's step) before ending the epoch")
        return {n: m.candidates.close_epoch(n)  # type: ignore[union-attr]
                for n, m in layers.items()}

    def end_dendrite_phase(self) -> dict[str, dict[str, float]]:
        """Install the best candidate per neuron as a new frozen dendrite set; unfreeze.

        A neuron whose candidates never correlated with its error (best |corr| 0: a dead ReLU,
        a head outside the loss) gets a dead, masked dendrite (`DendriteLayer`), not counted.
        Raises `PhaseError` if no layer saw a dendrite-phase batch.

        Returns per layer: neurons, alive neurons and the mean / median / min / max best |corr|
        installed.
        Each layer's dendrite parameters keep their identity but grow by one set: an Adam-like
        optimizer that holds state for them must be rebuilt after this call (`pf.Tracker`
        builds a fresh one per neuron cycle).
        """
        self._require(DENDRITE, "end_dendrite_phase()")
        layers = self.dendrite_layers()
        seen = False
        for name, layer in layers.items():
            pool = layer.candidates
            if pool.has_pending():  # type: ignore[union-attr]
                pool.close_epoch(name)
            seen = seen or int(pool.epochs) > 0  # type: ignore[union-attr]
        if self.trains_candidates and layers and not seen:
            raise PhaseError("no dendrite-phase batch was seen; train the candidates (forward "
                             "+ backward) before ending the phase")
        stats = {}
        for name, layer in layers.items():
            winners = layer.end_candidates()
            corr = winners.corr.tolist()
            dead = int((winners.alive == 0).sum()) if winners.alive is not None else 0
            if dead:  # a layer no error reached (a head outside the loss) has only dead ones
                logger.info("layer %r: %d of %d neuron(s) never correlated (no error reached "
                            "them): their dendrites are masked", name, dead, len(corr))
            stats[name] = {"neurons": float(len(corr)), "alive": float(len(corr) - dead),
                           "mean_corr": statistics.fmean(corr),
                           "median_corr": statistics.median(corr), "min_corr": min(corr),
                           "max_corr": max(corr)}
        self._leave_dendrite_phase()
        logger.info("installed dendrite set %d", self.num_dendrites)
        return stats

    def _leave_dendrite_phase(self) -> None:
        for name, p in self.net.named_parameters():
            p.requires_grad_(self._requires_grad.get(name, True))
        for name, (momentum, tracked) in self._norm_state.items():
            m = self.net.get_submodule(name)
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
        for name, stats in self._norm_stats.items():
            m = self.net.get_submodule(name)
            for buffer, kept in zip((m.running_mean, m.running_var), stats, strict=True):
                buffer.copy_(kept)
        self._requires_grad, self._norm_state, self._optimizer = {}, {}, None
        self._norm_stats = {}
        self._phase = NEURON

    def remove_last_dendrites(self) -> None:
        """Undo the newest dendrite set on every layer (the final revert of the cycle)."""
        self._require(NEURON, "remove_last_dendrites()")
        if self.num_dendrites == 0:
            raise PhaseError("remove_last_dendrites(): no dendrite set is installed")
        for layer in self.dendrite_layers().values():
            layer.remove_last()

    def resize_dendrites(self, structure: dict[str, int]) -> None:
        """Allocate empty dendrite sets so that saved weights of `structure` can be loaded."""
        self._require(NEURON, "resize_dendrites()")
        layers = self.dendrite_layers()
        for name, d in structure.items():
            layers[name].resize(d)

    # ------------------------------------------------------------------ checkpoint (exact)
    def training_state(self) -> dict[str, Any]:
        """Everything to resume exactly, in either phase (candidates, their optimizer, freeze
        flags): an independent copy (tensors and plain values) for ``torch.save``."""
        return copy.deepcopy({"structure": self.structure(), "phase": self._phase,
                "state_dict": self.state_dict(),
                "optimizer": self._optimizer.state_dict() if self._optimizer else None,
                "requires_grad": dict(self._requires_grad),
                "norm_state": {k: (m, t) for k, (m, t) in self._norm_state.items()}})

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Inverse of `training_state` on a model perforated with the same config."""
        if self._phase == DENDRITE:
            self._leave_dendrite_phase()
            for layer in self.dendrite_layers().values():
                layer.candidates = None
        check_structure(self, state["structure"])
        self.resize_dendrites(state["structure"])
        if state["phase"] == DENDRITE:
            self.begin_dendrite_phase()
        self.load_state_dict(state["state_dict"])
        if state["phase"] == DENDRITE:
            self.candidate_optimizer().load_state_dict(state["optimizer"])
            self._requires_grad = dict(state["requires_grad"])
            self._norm_state = {k: (m, t) for k, (m, t) in state["norm_state"].items()}
            self._keep_norm_stats()  # the loaded ones: the phase's start values

    # ----------------------------------------------------------------------------- leaving
    def unload(self) -> nn.Module:
        """Return the original network with every wrapper replaced by its ``base_layer``."""
        if self._phase == DENDRITE:
            self._leave_dendrite_phase()
        for name, layer in top_wrappers(self.net).items():
            _set_submodule(self.net, name, layer.base_layer)
        restore(self.net, self._fused_paths)
        return self.net

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config JSON + safetensors weights (no pickle) of the deployable model."""
        return save_pretrained(self, directory)


def _note_recurrent_cost(layers: dict[str, DendriteLayer]) -> None:
    """Say once per growth from D = 0 what the recurrent layers' dendrites will cost."""
    names = [n for n, layer in layers.items() if isinstance(layer, (RNN, RNNCell))]
    if names:
        logger.warning("%s", unrolled_cost_note(names))


def perforate(net: nn.Module, config: PerforationConfig | None = None, *,
              registry: WrapperRegistry | None = None) -> PerforatedModel:
    """Wrap the targeted layers of `net` (in place) and return a `PerforatedModel` holding it."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"perforate() needs an nn.Module, got {type(net).__name__}")
    if config is not None and not isinstance(config, PerforationConfig):
        raise TypeError(f"config must be a PerforationConfig, got {type(config).__name__}")
    return PerforatedModel(net, config or PerforationConfig(), registry)


def _warn_clamped_inputs(config: PerforationConfig, layers: dict[str, DendriteLayer]) -> None:
    """``dendrite_inputs=m`` on a layer whose fan-in is below m: its dendrites see all of
    their inputs (as with ``dendrite_rank``), not an error, since a network's layers differ
    in fan-in and one m is meant for the wide ones; said once, as a warning naming them."""
    m = config.dendrite_inputs
    if m is None:
        return
    clamped = [f"{name!r} ({layer.geometry.fan_in})" for name, layer in layers.items()
               if layer.geometry.fan_in < m]
    if clamped:
        logger.warning("dendrite_inputs=%d is more than the fan-in of %d layer(s): %s; their "
                       "dendrites see all of their inputs", m, len(clamped), ", ".join(clamped))
