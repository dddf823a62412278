"""Protocol L: byte-level language models on Debian's fortunes (``perforate experiment lm``).

Data (`perforate_experiments.data.fortunes`): the package's English text files, sorted by name
and concatenated as bytes (about 2.6 MB), split 90 / 5 / 5 in order. Vocabulary 256, context 64.
An "epoch" is ``windows`` random training windows (a seeded generator per seed: every arm of a
seed sees the same windows), batch 32. Validation: a fixed set of ``n_eval`` windows spread
evenly over the validation split (every k-th window of its non-overlapping cut), scored every
epoch; the per-epoch test score uses ``n_eval_test`` windows of the test split the same way, for
the history: the **reported test bpb is one full pass over the whole test split** on the final
model (``extra_tests["test_full"]``). Metric: bits per byte, bpb = mean cross-entropy over every
predicted byte in nats / ln 2; lower is better (the tracker runs with ``mode="min"``).

Networks (`perforate_experiments.models.lm`; option ``net``): ``tf<d>`` a decoder-only pre-LN
transformer, 2 blocks of ``nn.TransformerEncoderLayer(norm_first=True)`` with a causal mask, d/16
heads, MLP 4·d; ``lstm<h>`` a 1-layer LSTM. Adam(lr=5e-3), a fresh optimizer per neuron cycle,
no dropout (5e-3: in the pilot it reached in 30 epochs lower validation bpb than 2e-3 on tf16
and lstm32, 3.55 against 3.65 and 3.17 against 3.37, and tf128 trained without trouble).
torch.manual_seed(seed) before building.

Schedule (`FULL`, from the pilot in docs/results.md, "Protocol L (in progress)"): an epoch is
1,024 windows (65,536 predicted bytes, 2.8 % of the training split); a neuron cycle ends when
validation bpb has not dropped by more than 0.01 (``improvement_threshold``) for 3 epochs; at
most 3 dendrite sets, dendrite phases of at most 5 epochs (patience 2), at most 50 epochs per run
(3.3M predicted bytes, about 1.4 passes over the training split). Why a threshold: at this
budget no network converges (the pilot's tf16 still gained 0.005-0.01 bpb per epoch at epoch
60), so with threshold 0 a cycle never ends and PB never grows; 0.01 bpb in 3 epochs ends tf16's
first cycle near epoch 33. The widest networks reach the cap without a plateau: there the arms
are the restart control (the protocol measures what dendrites buy at a fixed training budget).

Arms, paired by seed (5 seeds): ``restart`` (same controller, no dendrites), ``pb`` (the library
default, `PerforationConfig()`), ``pb-cc`` (`PerforationConfig.paper()`), and two
parameter-efficient defaults at one budget of **8 inputs per dendrite**: ``pb-rank``
(``dendrite_rank=8``: every dendrite of a Linear layer sees its input through one shared learned
projection ``[8, fan_in]``) and ``pb-m`` (``dendrite_inputs=8``: each dendrite sees 8 of its
neuron's inputs, drawn at random). Why 8: the default's set doubles each layer's weights (fan_in
per neuron), which at d = 128 is 0.43M parameters a set; 8 per neuron is half a full set at the
narrowest PB width (fan_in 16) and 1/16 at d = 128 (1/64 in the MLP's second layer; 1/8 to
1/32 of the LSTM's fan_in 2h), so
these arms ask whether dendrites pay at a small fraction of the default's growth, and the two
arms spend the same per neuron (r weights plus a shared P, against m masked weights).
``dendrite_rank`` applies to Linear layers only, so ``pb-rank`` runs on the transformers only.
Every arm at 150 epochs a run instead of 50 (``restart-e150``, ``pb-e150``, ``pb-cc-e150``,
``pb-rank-e150``, ``pb-m-e150``; `LONG_ARMS`, paired with ``restart-e150``): at 50 epochs most
runs reach the cap before their first plateau or one to three epochs after a growth, so the
50-epoch arms measure the budget, not the dendrites.
``pb-attn-e150`` / ``pb-mlp-e150`` / ``pb-head-e150`` (transformers tf16 and tf32): the
default at 150 epochs with dendrites on one part of the network only (the attention's
projections, the MLP's two layers, the output head): which layers' dendrites carry a gain, if
any (at 50 epochs the default's sets barely act, so the ablation runs at the long budget).
``pb-init-e150``: the default at 150 epochs whose new dendrites are drawn as `paper()` draws
them (`ACTIVE_INIT`): whether the default's sets pay once they act from their first step.
``plain``: the plain network, one cycle, at every width of the frontier (`TF_FRONTIER`,
`LSTM_FRONTIER`), drawn against parameters and against measured CPU seconds (the process's
CPU time from set-up to the end of the final test pass, ``post["cpu_seconds"]``, 1 thread).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import Experiment, Setup, paper_fields
from ..data.fortunes import RandomWindows, StridedWindows, load_fortunes
from ..models.lm import LSTMLM, CausalTransformerLM

CONTEXT = 64
BATCH_SIZE = 32
EVAL_BATCH = 256
LR = 5e-3
#: Budget of the parameter-efficient arms: inputs per dendrite (rank r and m).
BUDGET = 8
FULL = {"neuron_patience": 3, "improvement_threshold": 0.01, "dendrite_patience": 2,
        "max_dendrite_epochs": 5, "max_dendrites": 3, "max_epochs": 50, "windows": 1024,
        "n_eval": 512, "n_eval_test": 256, "max_bytes": None}
QUICK = {"neuron_patience": 1, "dendrite_patience": 1, "max_dendrite_epochs": 1,
         "max_dendrites": 1, "min_dendrites": 1, "max_epochs": 4, "windows": 32, "n_eval": 16,
         "n_eval_test": 16, "max_bytes": 40_000,
         "improvement_threshold": 10.0}  # no epoch improves by 10 bpb: grow at once
TRACKER_KEYS = ("neuron_patience", "dendrite_patience", "max_dendrite_epochs", "max_dendrites",
                "min_dendrites", "max_epochs", "improvement_threshold")
#: Networks of the PB arms and of the restart control.
TF_WIDTHS = (16, 32, 64, 128)
LSTM_WIDTHS = (32, 64, 128)
#: Widths of the plain frontier (one cycle): the arms' widths, between them, and above 128 so
#: that a grown network's parameter count lies inside the frontier.
TF_FRONTIER = (8, 16, 24, 32, 48, 64, 96, 128, 192)
LSTM_FRONTIER = (16, 24, 32, 48, 64, 96, 128, 192, 288)
#: Widths of the 150-epoch restart control beyond the arms' own: its curve over widths must
#: reach the parameter count of the arms that grow on tf32, tf64 and lstm128.
RESTART_CURVE = ("tf96", "lstm192")
#: How rows describe the networks (the option ``net`` names one).
NETWORKS = ("tf<d>: pre-LN causal transformer, 2 blocks, d/16 heads, MLP 4d, learned positions; "
            "lstm<h>: 1-layer LSTM, embedding width h; both: byte embedding, untied head")

#: The target ablation of the transformer: the default's dendrites on one part only.
TARGET_SETS = {"attn": ["self_attn"], "mlp": ["linear1", "linear2"], "head": ["head"]}
#: The long budget of the ``-e150`` arms: epochs a run.
LONG_EPOCHS = 150
#: The arms that also run at the long budget, and what each changes (the restart control
#: changes nothing: `train.run_one` runs every restart control, at any budget, without
#: dendrites).
ARMS: dict[str, dict[str, dict[str, Any]]] = {
    "restart": {},
    "pb": {},
    "pb-cc": {"config": paper_fields()},
    "pb-rank": {"config": {"dendrite_rank": BUDGET}},
    "pb-m": {"config": {"dendrite_inputs": BUDGET}},
}


def long_budget(arm: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`arm` at `LONG_EPOCHS` epochs a run."""
    return {"config": dict(arm.get("config", {})),
            "tracker": {**arm.get("tracker", {}), "max_epochs": LONG_EPOCHS}}


LONG_ARMS = tuple(f"{arm}-e{LONG_EPOCHS}" for arm in ARMS)
TARGET_ARMS = tuple(f"pb-{part}-e{LONG_EPOCHS}" for part in TARGET_SETS)
#: The default with `paper()`'s initialisation of new dendrites (N(0, 1/fan_in) weights, N(0, 1)
#: biases): sigmoid features that vary with the input from the first step, where the
#: default's (std 0.01) start as a near-constant 0.5, a term the neuron's own weights already
#: give; its output weights still start at 0, so growth leaves the function unchanged.
INIT_ARM = f"pb-init-e{LONG_EPOCHS}"
ACTIVE_INIT = {k: v for k, v in paper_fields().items()
               if k in ("dendrite_init", "dendrite_weight_std", "dendrite_bias_std")}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "pb-rank": ARMS["pb-rank"],
    "pb-m": ARMS["pb-m"],
    **{f"{arm}-e{LONG_EPOCHS}": long_budget(own) for arm, own in ARMS.items()},
    **{f"pb-{part}-e{LONG_EPOCHS}": long_budget({"config": {"target_modules": targets}})
       for part, targets in TARGET_SETS.items()},
    INIT_ARM: long_budget({"config": ACTIVE_INIT}),
}


def nets(family: str, widths: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(f"{family}{w}" for w in widths)


def parse_net(net: str) -> tuple[str, int]:
    """``"tf64"`` -> ``("tf", 64)``; ``"lstm32"`` -> ``("lstm", 32)``."""
    match = re.fullmatch(r"(tf|lstm)(\d+)", str(net))
    if match is None or int(match.group(2)) < 1:
        raise ValueError(f"net must be tf<d> or lstm<h> (e.g. tf16, lstm32), got {net!r}")
    return match.group(1), int(match.group(2))


def build_net(family: str, width: int) -> nn.Module:
    """The network of `family` ("tf" or "lstm") at `width` (d_model or hidden)."""
    if family == "tf":
        return CausalTransformerLM(width, context=CONTEXT)
    return LSTMLM(width)


def lm_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean next-byte cross-entropy (nats) over every position of every window."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def bpb(outputs: Tensor, targets: Tensor) -> float:
    """Bits per byte: mean cross-entropy in nats / ln 2 (lower is better)."""
    return float(lm_loss(outputs, targets)) / math.log(2)


def evenly(loader: StridedWindows, n: int | None) -> StridedWindows:
    """`loader` keeping `n` of its windows, evenly spaced (every k-th); all when n is None."""
    if n is None or n >= loader.n_windows:
        return loader
    x = torch.cat([b[0] for b in loader.batches])
    y = torch.cat([b[1] for b in loader.batches])
    keep = torch.linspace(0, len(x) - 1, n).round().long()
    size = len(loader.batches[0][0])
    loader.batches = [(x[keep[s:s + size]], y[keep[s:s + size]])
                      for s in range(0, n, size)]
    loader.n_windows = n
    return loader


def _cost(tracker: Any, cpu_start: float) -> dict[str, Any]:
    """The run's CPU seconds (this process's, since its set-up: training, every evaluation and
    the final full test pass; unlike wall time, not inflated by other processes on the
    machine) and the mean wall seconds of its neuron and dendrite epochs."""
    out: dict[str, Any] = {"cpu_seconds": time.process_time() - cpu_start}
    for phase in ("neuron", "dendrite"):
        secs = [r["seconds"] for r in tracker.records.history
                if r.get("phase") == phase and isinstance(r.get("seconds"), (int, float))]
        out[f"{phase}_epochs"] = len(secs)
        out[f"seconds_per_{phase}_epoch"] = sum(secs) / len(secs) if secs else None
    return out


def lm_setup(seed: int, quick: bool, *, net: str = "tf16", root: str | None = None,
             **overrides: Any) -> Setup:
    """Setup of one Protocol L run of network `net` (``root``: the fortunes directory)."""
    cpu_start = time.process_time()
    p = {**(QUICK if quick else FULL), **overrides}
    family, width = parse_net(net)
    corpus = load_fortunes(root, max_bytes=p["max_bytes"])
    val = evenly(StridedWindows(corpus.val, context=CONTEXT, batch_size=EVAL_BATCH), p["n_eval"])
    test = StridedWindows(corpus.test, context=CONTEXT, batch_size=EVAL_BATCH)
    test_sample = evenly(StridedWindows(corpus.test, context=CONTEXT, batch_size=EVAL_BATCH),
                         p["n_eval_test"])
    protocol: Mapping[str, Any] = {
        **{k: p[k] for k in (*TRACKER_KEYS, "windows", "n_eval", "n_eval_test", "max_bytes")
           if k in p},
        "networks": NETWORKS, "context": CONTEXT,
        "batch_size": BATCH_SIZE, "optimizer": f"Adam(lr={LR})", "decision": "val bpb (min)",
        "corpus": {"package": "fortunes", "version": corpus.version, "files": len(corpus.files),
                   "bytes": corpus.n_bytes, "train": len(corpus.train), "val": len(corpus.val),
                   "test": len(corpus.test)},
        "val_windows": val.n_windows, "test_windows": test.n_windows,
        "budget_inputs_per_dendrite": BUDGET,
    }
    return Setup(
        make_net=lambda w: build_net(family, max(1, round(width * w))),
        head="head",
        train=RandomWindows(corpus.train, context=CONTEXT, windows=p["windows"],
                            batch_size=BATCH_SIZE, seed=seed),
        val=val,
        test=test_sample,
        loss_fn=lm_loss,
        metric=bpb,
        optimizer_factory=lambda params: torch.optim.Adam(params, lr=LR),
        tracker_kwargs={"mode": "min", **{k: p[k] for k in TRACKER_KEYS if k in p}},
        extra_tests={"test_full": test},
        protocol=dict(protocol),
        post_run=lambda model, setup, tracker: _cost(tracker, cpu_start),
    )


ARM_NETS = (*nets("tf", TF_WIDTHS), *nets("lstm", LSTM_WIDTHS))
TF_NETS = nets("tf", TF_WIDTHS)
EXPERIMENT = Experiment(
    name="lm",
    description="Protocol L: byte-level LMs (transformer, LSTM) on Debian's fortunes, bpb",
    variants=("plain", *ARMS, *LONG_ARMS, *TARGET_ARMS, INIT_ARM),
    setup=lm_setup,
    default_seeds=tuple(range(5)),
    options={"net": ARM_NETS},
    variant_options={"plain": {"net": (*nets("tf", TF_FRONTIER), *nets("lstm", LSTM_FRONTIER))},
                     f"restart-e{LONG_EPOCHS}": {"net": (*ARM_NETS, *RESTART_CURVE)},
                     "pb-rank": {"net": TF_NETS},
                     f"pb-rank-e{LONG_EPOCHS}": {"net": TF_NETS},
                     **{arm: {"net": ("tf16", "tf32")} for arm in TARGET_ARMS}},
    overrides=VARIANTS,
)
