"""`perforate.Tracker` (`tracker`) and the collaborators it conducts, one job each.

- `run_files`: what a run writes into its ``out_dir`` and when (`RunFiles`);
- `state`: the tracker's state dict and its settings' layout (old flat checkpoints read);
- `restructure`: the schedule's actions carried out on the model (cycle end, growth, retry,
  final revert);
- `resume`: a checkpoint's tracker rebuilt around a fresh network;
- `optimizers`: the neuron-phase optimizer and scheduler (fresh each cycle, stepped per epoch
  or per batch) and parameter groups for the user's factory;
- `snapshots`: copies of the best weights of the current cycle and of the best cycle;
- `records`: the run's records (per epoch, per cycle, per dendrite phase) and score checks;
- `rng`: random number generator states, global and the DataLoaders';
- `checkpoint`: the checkpoint files (format, atomic write, read, the deployable weights);
- `finite`: divergence checks (parameters and scores after an epoch; candidate steps whose
  gradients are not finite are skipped).
"""

from .optimizers import (
    OptimizerFactory,
    SchedulerFactory,
    TrainableParameters,
    param_groups,
)

__all__ = ["OptimizerFactory", "SchedulerFactory", "TrainableParameters", "param_groups"]
