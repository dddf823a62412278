"""The candidate pool of one layer: K candidate dendrite sets trained by Cascade-Correlation.

All K candidates of a layer are one wide layer (one call of the layer's operation). The neuron
error ``Delta = dLoss/dz'`` is captured inside the user's own ``loss.backward()`` by `ErrorTap`,
which in the same backward pass hands the candidates the gradient of ``-sum |S|`` (eq. 3.4) and
adds the batch to the epoch's correlation sums, all on the device, with no host sync.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from .. import private_api
from ..config import PerforationConfig
from ..errors import NonFiniteError
from .activations import BACKWARD_FROM_OUTPUT, FUNCTIONS, INPLACE, INPLACE_NO_GRAD
from .error_tap import ErrorTap
from .geometry import Activation, Geometry, activated
from .pool_results import EpochReport, Winners
from .stats import CorrelationSums, ObservedBatch, accumulator_dtype

logger = logging.getLogger(__name__)


class CandidatePool(nn.Module):
    """K candidate sets for one layer with D installed dendrite sets.

    ``c_k = g(U_k(x~) + sum_i E_k[:, i] * h_i)``; U ~ N(0, std²/fan_in), bias ~ N(0, std²),
    cascade weights E start at 0 (algorithm.md, dendrite phase step 3).
    """

    def __init__(self, geometry: Geometry, num_dendrites: int, config: PerforationConfig,
                 activation: nn.Module, generator: torch.Generator | None, *,
                 input_score: Tensor | None = None) -> None:
        super().__init__()
        self.geometry = geometry
        self.config = config
        self.activation = activation
        self._activation_ = INPLACE.get(config.dendrite_activation)
        self._activation_fn = FUNCTIONS.get(config.dendrite_activation)  # faster than the module
        ref = geometry.weight
        self.learning = config.dendrite_phase
        # With no candidate training ("none") one candidate per neuron is installed as drawn.
        k = 1 if self.learning == "none" else config.cascade.candidates
        n, d = geometry.num_neurons, num_dendrites
        w_shape = geometry.neuron_weight_shape
        fan_in = geometry.fan_in if config.dendrite_inputs is None \
            else min(config.dendrite_inputs, geometry.fan_in)
        w_std = config.dendrite_weight_std
        if config.dendrite_init == "fan_in":
            w_std /= fan_in ** 0.5

        def normal(*shape: int, std: float) -> Tensor:
            # Drawn on the CPU so a seed gives the same candidates on every device.
            t = torch.randn(*shape, generator=generator, dtype=torch.float32) * std
            return t.to(device=ref.device, dtype=ref.dtype)

        weight = normal(k, n, *w_shape, std=w_std)
        mask = None
        if config.dendrite_inputs is not None:  # each candidate sees fan_in of the inputs
            scores = torch.rand(k, n, geometry.fan_in, generator=generator)  # random ones
            if input_score is not None:  # those ranked first (`input_score`), ties at random
                rank = input_score.reshape(n, -1).float().cpu()
                rank = rank / rank.amax(-1, keepdim=True).clamp_min(1e-30)
                scores = scores * 1e-6 - rank
            chosen = scores.argsort(dim=-1)[..., :fan_in]
            mask = torch.zeros(k, n, geometry.fan_in).scatter_(-1, chosen, 1.0)
            mask = mask.reshape(k, n, *w_shape).to(ref.device, ref.dtype)
            weight = weight * mask
        self.mask: Tensor | None
        self.register_buffer("mask", mask)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(normal(k, n, std=config.dendrite_bias_std))
        self.cascade = nn.Parameter(torch.zeros(k, d, n, device=ref.device, dtype=ref.dtype))
        self.gd = self.learning == "task_loss"
        if self.gd:
            self.output = nn.Parameter(normal(k, n, std=config.cascade.task_loss_output_std))
        # Where g' comes from g's output and nothing but the error tap reads the candidates
        # (not "task_loss"), g is applied without a graph, in place on the pre-activation,
        # and the tap's gradient goes through g' in place (`through_activation`): two
        # temporaries of K layer outputs fewer per batch (`forward`).
        self._g_ = None if self.gd else INPLACE_NO_GRAD.get(config.dendrite_activation)
        self._g_backward_ = None if self._g_ is None else \
            BACKWARD_FROM_OUTPUT.get(config.dendrite_activation)

        dev = ref.device
        acc = accumulator_dtype(dev)
        self.sums = CorrelationSums(k, n, dev)
        # Running (EMA) statistics: the error scale s_n, means for centering="running" and
        # for reporting, the covariance for sign_source="running". `seen` counts batches, so
        # the first batch initialises the EMAs; `batches` counts this epoch's.
        self.register_buffer("seen", torch.zeros((), dtype=torch.long, device=dev))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long, device=dev))
        self.register_buffer("error_var", torch.zeros(n, device=dev))
        self.register_buffer("mean_e", torch.zeros(n, device=dev))
        self.register_buffer("mean_c", torch.zeros(k, n, device=dev))
        self.register_buffer("cov", torch.zeros(k, n, device=dev))
        # Best candidate per neuron over closed epochs, and a copy of its weights.
        self.register_buffer("best_corr", torch.zeros(n, dtype=acc, device=dev))
        self.register_buffer("best_sign", torch.zeros(n, dtype=ref.dtype, device=dev))
        self.register_buffer("best_weight", torch.zeros(n, *w_shape, dtype=ref.dtype, device=dev))
        self.register_buffer("best_bias", torch.zeros(n, dtype=ref.dtype, device=dev))
        self.register_buffer("best_cascade", torch.zeros(d, n, dtype=ref.dtype, device=dev))
        self.register_buffer("best_output", torch.zeros(n, dtype=ref.dtype, device=dev))
        self.register_buffer("best_mask", torch.zeros(n, *w_shape, dtype=ref.dtype, device=dev)
                             if self.mask is not None else None)
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long, device=dev))
        # Batches left out of this epoch's statistics for a non-finite error (loss scaling).
        self.register_buffer("skipped", torch.zeros((), dtype=torch.long, device=dev))
        self._scratch: dict[str, Tensor] = {}  # see `_scratch_like`; not state

    @property
    def num_candidates(self) -> int:
        return self.bias.shape[0]

    def forward(self, x: Tensor, hs: list[Tensor]) -> Tensor:
        """Candidate activations, stacked ``[K]``; x and the dendrite outputs hs detached."""
        geo = self.geometry
        weight = self.weight if self.mask is None else self.weight * self.mask
        if self._g_backward_ is not None and not hs:  # g inside: see below
            return self._stacked(x, weight, self._g_)
        pre = self._stacked(x, weight)
        # Cascade inputs E[k, i] * h_i, then the activation: in place where `pre` is a tensor
        # of its own (no backward reads its old values), so no extra temporary of K layer
        # outputs; not on a view (the op's output reshaped), whose in-place change autograd
        # would undo with a full copy in the backward (CopySlices).
        own = not private_api.is_view(pre)
        pre = geo.cascade(pre, self.cascade.unbind(1), [geo.unsqueeze_set(h) for h in hs],
                          inplace=own)
        if self._g_backward_ is not None:
            # The activation's values in the pre-activation's own tensor, which the graph
            # knows as the pre-activation: `through_activation` makes the gradient that
            # reaches it dLoss/dpre (no activation node, no temporary for c or for g').
            return activated(pre, self._g_)
        if self._activation_ is not None and (own or hs):
            return self._activation_(pre)
        return (self._activation_fn or self.activation)(pre)

    def _stacked(self, x: Tensor, weight: Tensor, g_: Activation = None) -> Tensor:
        """The K candidates' pre-activation (one call of the layer's op; a distributed pool
        may exchange a Linear layer's inputs instead, `DistributedCandidatePool`), or with
        `g_` their activation computed in the op's output (`Geometry.stacked`)."""
        return self.geometry.stacked(x, weight, self.bias, g_)

    def attach(self, z: Tensor, c: Tensor) -> Tensor:
        """Return the layer output to use downstream: z itself (plus the candidates' output
        term for dendrite_phase="task_loss"), routed through `ErrorTap` to observe its error."""
        if self.gd:
            z = z + self.geometry.combine(c, self.output)
            c = c.detach()
        return self._tap(z, c)

    def through_activation(self, grad: Tensor | None, c: Tensor) -> Tensor | None:
        """dLoss/dc (`observe`) as the gradient of what `forward` returned: times g'(c), in
        place, where the forward applied g without a graph; else unchanged."""
        if grad is not None and self._g_backward_ is not None:
            self._g_backward_(grad, c)
        return grad

    def _tap(self, z: Tensor, c: Tensor) -> Tensor:
        """`z` through an `ErrorTap` whose backward trains the candidates (`observe`)."""
        return ErrorTap.apply(z, c, self, ())

    @torch.no_grad()
    def observe(self, c: Tensor, e: Tensor, mask: Tensor | None = None) -> Tensor | None:
        """Add a batch to the statistics; return the candidates' gradient dLoss_cc/dc.

        ``c`` is the stacked candidate activation, ``e`` the neuron error dLoss/dz', ``mask``
        the sample positions that count (`perforate.engine.masking`). Only device ops: no host sync.
        Few, fused ops, since this runs per layer per batch. objective="covariance":
        ``-sigma (e - ē) / s`` (eq. 3.4); "correlation": the gradient of ``-P |r|`` with r the
        batch's Pearson correlation of c and e (P positions). One process; a distributed run
        uses `DistributedCandidatePool.observe_later`.
        """
        batch = self._observed(c, e, mask)
        self.skipped += ~batch.finite
        # A skipped batch's gradient is non-finite throughout (not only where e was), so the
        # candidate optimizer (`skip_nonfinite_steps`) or a GradScaler skips its step.
        return self._learn(batch, *batch.sums, factor=torch.where(batch.finite, 1.0, torch.nan))

    def _observed(self, c: Tensor, e: Tensor, mask: Tensor | None) -> ObservedBatch:
        """One batch of this rank, with its ``[count, cand, err]`` sums
        (`CorrelationSums.add`; one dtype, so one collective sums them)."""
        # Numerics first: float32+ statistics, masked positions out, a batch with a non-finite
        # (loss-scaled) error skipped; see `ObservedBatch`. Then the statistics proper.
        return ObservedBatch.of(self.geometry, c, e, mask, self._scratch_like,
                                self._error_scale())

    def _error_scale(self) -> float:
        """What this process's errors count for (a distributed pool's: 1/world)."""
        return 1.0

    def _reduce(self, tensors: list[Tensor]) -> None:
        """Sum `tensors` over the processes that share the batch (here: one, nothing)."""

    @torch.no_grad()
    def _learn(self, batch: ObservedBatch, p: Tensor, cand: Tensor, err: Tensor,
               factor: Tensor | None = None) -> Tensor | None:
        """Add a batch's (global) sums to the statistics; return the candidate gradient,
        times `factor` (a scalar) if given: applied to its per-neuron scales, not in a pass
        of its own over the K layer outputs."""
        geo, cfg = self.geometry, self.config
        c = batch.c
        sc, _, sce = cand
        self.sums.add(p, cand, err)
        valid, p = p > 0, p.clamp_min(1).float()  # a skipped or fully masked batch moves no EMA

        # Running statistics (float32): the error scale s_n and EMA means. The first batch
        # initialises them (weight 1), later ones move them by 1 - momentum.
        se, se2 = err.float()
        sc, sce = sc.float(), sce.float()
        mean_e_b = se / p
        var_e_b = (se2 / p - mean_e_b * mean_e_b).clamp_min(0)
        mean_c_b = sc / p
        w = torch.where(self.seen == 0, 1.0, 1.0 - cfg.cascade.running_momentum) * valid
        if cfg.cascade.centering == "running":  # the paper: centre with means of previous batches
            e_bar = torch.where(self.seen == 0, mean_e_b, self.mean_e)
            c_bar = torch.where(self.seen == 0, mean_c_b, self.mean_c)
        self.error_var.lerp_(var_e_b, w)
        self.mean_e.lerp_(mean_e_b, w)
        self.mean_c.lerp_(mean_c_b, w)
        self.seen += valid
        self.batches += valid
        if self.gd:
            return None

        # S[k, n] * s_n = sum_p (c - c̄)(e - ē)  (eq. 3.3)
        if cfg.cascade.centering == "batch" or cfg.cascade.objective == "correlation":
            e_bar = mean_e_b
            s_raw = sce - sc * se / p
        else:
            s_raw = sce - c_bar * se - e_bar * sc + p * c_bar * e_bar
        self.cov.lerp_(s_raw / p, w)
        sign = torch.sign(self.cov if cfg.cascade.sign_source == "running" else s_raw)
        if cfg.cascade.objective == "correlation":
            centred_e = geo.unsqueeze_set(batch.centred_error(geo.expand(e_bar)))
            centred_c = c - geo.expand(mean_c_b.to(c.dtype))
            if batch.keep is not None:
                centred_c = torch.where(geo.unsqueeze_set(batch.keep), centred_c, 0.0)
            # Two-pass variance, from the centred candidate: E[c²] - E[c]² would cancel for
            # a saturated candidate, and this gradient scales with var_c^-1.5.
            sq = geo.sum_sq_stacked(centred_c).float()
            self._reduce([sq])
            var_c = (sq / p).clamp_min(
                cfg.cascade.min_variance)
            inv_e = torch.where(var_e_b > 0, var_e_b.rsqrt(), 0.0)
            a = -sign * var_c.rsqrt() * inv_e  # on the centred error
            b = sign * (s_raw / p) * var_c.pow(-1.5) * inv_e  # on the centred candidate
            if factor is not None:
                a, b = a * factor, b * factor
            grad = torch.addcmul(geo.expand(a.to(c.dtype)) * centred_e,
                                 geo.expand(b.to(c.dtype)), centred_c)
            return grad.to(batch.dtype)
        scale = sign.neg_() if factor is None else sign.neg_() * factor
        if cfg.cascade.normalize_error:
            scale *= torch.where(self.error_var > 0, self.error_var.rsqrt(), 0.0)
        return batch.scaled_centred_error(geo, scale, e_bar,
                                          out=self._scratch_like(c, "grad")).to(batch.dtype)

    def _scratch_like(self, t: Tensor, use: str = "product") -> Tensor | None:
        """On a CPU, a tensor shaped like `t`, kept between batches, one per `use`: "product",
        a per-batch product summed at once; "grad", the candidate gradient `observe` returns
        (the backward consumes it before the next batch overwrites it). A fresh temporary of
        K layer outputs (tens of MB, so mapped anew by the allocator each time) costs more
        than the work itself. None (a fresh tensor) elsewhere: a GPU's caching allocator
        already reuses the memory."""
        if t.device.type != "cpu":
            return None
        s = self._scratch.get(use)
        if s is None or s.shape != t.shape or s.dtype != t.dtype or s.device != t.device:
            s = self._scratch[use] = torch.empty(t.shape, dtype=t.dtype, device=t.device)
        return s

    @torch.no_grad()
    def correlations(self) -> Tensor:
        """Signed Pearson correlation ``[K, N]`` over the epoch so far."""
        return self.sums.pearson(self.config.cascade.min_variance)

    @torch.no_grad()
    def close_epoch(self, layer_name: str) -> EpochReport:
        """Score the epoch, keep each neuron's best candidate weights, reset the sums.

        Only the rows of neurons whose best |corr| improved are copied (one host sync), so
        late epochs, where few neurons improve, cost little.
        """
        self._check_skipped(layer_name)
        cov, var_c, _ = self.sums.moments()
        corr = self.correlations()
        epoch_best, k_star = corr.abs().max(dim=0)
        gain = epoch_best - self.best_corr
        idx = (gain > 0).nonzero().squeeze(1)  # neurons that improved
        k = k_star[idx]
        rows = {"weight": self.weight[k, idx], "bias": self.bias[k, idx],
                "cascade": self.cascade[k, :, idx].T}
        if self.gd:
            rows["output"] = self.output[k, idx]
        elif self.config.cascade.output_init == "least_squares":
            # The a that best fits the negative per-sample error -P e (P positions per batch:
            # dLoss/dz of a mean-reduced loss is the residual / P) with a * c: -P cov / var.
            per_batch = self.sums.count / self.batches.clamp_min(1)
            slope = cov[k, idx] / var_c[k, idx].clamp_min(self.config.cascade.min_variance)
            rows["output"] = (-per_batch * slope).to(self.best_output.dtype)
        if self.mask is not None:
            rows["mask"] = self.mask[k, idx]
        finite = torch.stack([self.sums.cand.isfinite().all(), self.sums.err.isfinite().all(),
                              *(r.isfinite().all() for r in rows.values())]).all()
        if not bool(finite):
            raise NonFiniteError(
                f"layer {layer_name!r}: non-finite errors or candidate activations in the "
                "dendrite phase (check the loss for inf/nan, or lower cascade.lr)")
        self.best_corr[idx] = epoch_best[idx]
        self.best_sign[idx] = torch.sign(corr[k, idx]).to(self.best_sign.dtype)
        self.best_weight[idx] = rows["weight"]
        self.best_bias[idx] = rows["bias"]
        self.best_cascade[:, idx] = rows["cascade"]
        if "output" in rows:
            self.best_output[idx] = rows["output"]
        if self.best_mask is not None:
            self.best_mask[idx] = rows["mask"]
        self.sums.reset()
        self.batches.zero_()
        self.epochs += 1
        gains = gain.clamp_min(0)
        return EpochReport(epoch_corr=epoch_best, best_corr=self.best_corr.clone(),
                           improvement=float(gains.max()) if gain.numel() else 0.0,
                           mean_improvement=float(gains.mean()) if gain.numel() else 0.0)

    def _check_skipped(self, layer_name: str) -> None:
        """Report the batches skipped for non-finite errors or candidate activations (a
        WARNING); raise if that was all of them."""
        skipped = int(self.skipped)
        if not skipped:
            return
        self.skipped.zero_()
        if not bool(self.sums.count > 0):
            raise NonFiniteError(
                f"layer {layer_name!r}: every batch of the dendrite epoch had non-finite errors "
                f"or candidate activations ({skipped} skipped; check the inputs and the loss "
                "for inf/nan)")
        logger.warning("layer %r: %d batch(es) with non-finite errors or candidate activations "
                       "left out of the statistics and the candidates' steps (a loss scaler's "
                       "overflow, or NaN/inf inputs or loss)", layer_name, skipped)

    def has_pending(self) -> bool:
        """True if batches were seen (or skipped) since the last closed epoch."""
        return bool(self.sums.count > 0) or bool(self.skipped > 0)

    def winners(self) -> Winners:
        """The per-neuron winners of the closed epochs, ready to install (with no candidate
        training, the one candidate per neuron as drawn, all alive). A neuron whose best |corr|
        stayed 0 (it never had an error that varied) gets a dead winner."""
        if self.learning == "none":
            zero = torch.zeros_like(self.best_corr)
            return Winners(weight=self.weight[0].detach().clone(),
                           bias=self.bias[0].detach().clone(),
                           cascade=self.cascade[0].detach().clone(), corr=zero,
                           sign=torch.ones_like(self.best_sign), output=None,
                           mask=None if self.mask is None else self.mask[0].clone(),
                           alive=torch.ones_like(self.best_bias))  # no correlation to judge
        ls = self.config.cascade.output_init == "least_squares"
        output = None
        if self.gd:
            output = self.best_output.clone()
        elif ls:
            output = self.best_output * self.config.cascade.output_init_shrink
        return Winners(weight=self.best_weight.clone(), bias=self.best_bias.clone(),
                       cascade=self.best_cascade.clone(), corr=self.best_corr.clone(),
                       sign=self.best_sign.clone(), output=output,
                       mask=None if self.best_mask is None else self.best_mask.clone(),
                       alive=(self.best_corr > 0).to(self.best_bias.dtype))
