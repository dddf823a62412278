"""Checks that need a GPU: no host sync per batch in either phase, and CUDA equals CPU.

    python bench/gpu_check.py            # exits non-zero on failure; writes results/gpu_check.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

import perforate as pf

sys.path.insert(0, str(Path(__file__).parent))
from epoch_cost import MnistNet


def build(device: str, dendrites: int) -> pf.PerforatedModel:
    torch.manual_seed(0)
    model = pf.perforate(MnistNet(), pf.PerforationConfig(seed=0,
                                                          cascade=pf.CascadeCorrelation(candidates=4)))
    for layer in model.dendrite_layers().values():
        layer.resize(dendrites)
        with torch.no_grad():
            for t in (layer.dendrite_weight, layer.dendrite_bias, layer.cascade_weight,
                      layer.output_weight):
                t.normal_(0, 0.05)
    return model.to(device).eval()  # eval: no dropout, so CPU and CUDA see the same function


def step(model: pf.PerforatedModel, x: torch.Tensor, y: torch.Tensor, sync_check: bool) -> None:
    if sync_check:
        torch.cuda.set_sync_debug_mode("error")
    try:
        nn.functional.cross_entropy(model(x), y).backward()
    finally:
        if sync_check:
            torch.cuda.set_sync_debug_mode("default")


def main() -> int:
    target = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu" = dry run of this script
    if target == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    # Full fp32 on the GPU too, so that the comparison with the CPU is about our code.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name() if target == "cuda" else "cpu (dry run)"}
    failures = []
    grads = {}
    for device in ("cpu", target):
        model = build(device, dendrites=2)
        xd, yd = x.to(device), y.to(device)
        step(model, xd, yd, sync_check=False)  # warm-up (lazy CUDA init may sync)
        model.zero_grad()
        try:
            step(model, xd, yd, sync_check=device != "cpu")
        except RuntimeError as exc:
            failures.append(f"neuron phase synced: {exc}")
        model.begin_dendrite_phase()
        step(model, xd, yd, sync_check=False)
        model.candidate_optimizer().zero_grad()
        try:
            step(model, xd, yd, sync_check=device != "cpu")
        except RuntimeError as exc:
            failures.append(f"dendrite phase synced: {exc}")
        grads[device] = {n: m.candidates.weight.grad.detach().cpu().flatten(2)
                         for n, m in model.dendrite_layers().items()}
        results[f"{device}_corr"] = {n: float(c.max()) for n, c in
                                     model.candidate_correlations().items()}
    # The gradient of each (candidate, neuron) carries sigma = sign(S); where S is ~0 rounding
    # may flip it on another device. Compare where the signs agree, and count the flips.
    diffs, flips = {}, {}
    for name, g_cpu in grads["cpu"].items():
        g_dev = grads[target][name]
        agree = ((g_cpu * g_dev).sum(-1) >= 0).unsqueeze(-1)
        flips[name] = int((~agree).sum())
        a, b = g_cpu * agree, g_dev * agree
        diffs[name] = float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
        if diffs[name] > 1e-3 or flips[name] > 0.05 * agree.numel():
            failures.append(f"{name}: device candidate gradient differs from CPU by "
                            f"{diffs[name]:.2e} with {flips[name]} sign flip(s)")
    results["relative_grad_diff_vs_cpu"] = diffs
    results["sign_flips_vs_cpu"] = flips
    results["failures"] = failures
    out = Path(__file__).parent / "results" / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
