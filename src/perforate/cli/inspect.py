"""``perforate inspect``: what dendrites would cost on a network, asked of each layer."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from ..engine.layers import DendriteLayer
from ..engine.layers.composite import top_wrappers
from ..engine.model import perforate
from ..errors import CLIError
from .factories import build_net, parse_config, parse_shape


def _positions_per_sample(model: Any, input_shape: tuple[int, ...]) -> dict[str, int]:
    """{dendrite layer: output positions} of one forward of a zero sample: each wrapper counts
    its own (`DendriteLayer.output_positions`, `CompositeLayer.projection_positions`); a layer
    used at several places sums them, one the forward never reaches has 0."""
    positions = dict.fromkeys(model.dendrite_layers(), 0)
    hooks = []
    for name, wrapper in top_wrappers(model.net).items():
        def hook(mod: nn.Module, args: Any, kwargs: Any, out: Any, name: str = name) -> None:
            counts = {"": mod.output_positions(out)} if isinstance(mod, DendriteLayer) \
                else mod.projection_positions(*args, **kwargs)
            for proj, count in counts.items():
                key = f"{name}.{proj}" if proj else name
                positions[key] = positions.get(key, 0) + count
        hooks.append(wrapper.register_forward_hook(hook, with_kwargs=True))
    mha = getattr(torch.backends, "mha", None)  # its fast path skips the attention's forward
    fastpath = mha.get_fastpath_enabled() if hasattr(mha, "set_fastpath_enabled") else None
    try:
        if fastpath is not None:
            mha.set_fastpath_enabled(False)  # type: ignore[union-attr]
        with torch.no_grad():
            model.net.eval()(torch.zeros(1, *input_shape))
    except Exception as exc:  # user network
        raise CLIError(f"forward pass with --input-shape {input_shape} failed: "
                       f"{type(exc).__name__}: {exc}") from exc
    finally:
        if fastpath is not None:
            mha.set_fastpath_enabled(fastpath)  # type: ignore[union-attr]
        for h in hooks:
            h.remove()
    return positions


def inspect_model(net: nn.Module, config: Any, input_shape: tuple[int, ...] | None = None
                  ) -> dict[str, Any]:
    """Dry run: per targeted layer, the costs it answers (`DendriteLayer.costs`): neurons,
    fan-in, parameters and multiply-adds of the layer, of one dendrite set (the first: set j
    adds ``(j - 1) * neurons`` cascade weights and as many multiply-adds per position) and of
    a dendrite phase's candidate pool (none with ``dendrite_phase="none"``). With
    `input_shape`, multiply-adds are per sample, else per output position."""
    model = perforate(net, config)
    positions = None if input_shape is None else _positions_per_sample(model, input_shape)
    rows = []
    for name, layer in model.dendrite_layers().items():
        c = layer.costs(None if positions is None else positions[name])
        rows.append({
            "layer": name, "type": type(layer.base_layer).__name__, "neurons": c.neurons,
            "fan_in": c.fan_in, "positions": c.positions, "params": c.base_params,
            "set_params": c.set_params, "projection_params": c.projection_params,
            "set_macs": c.per_sample(c.set_macs), "pool_params": c.pool_params,
            "pool_macs": c.per_sample(c.pool_macs), "base_macs": c.per_sample(c.base_macs),
            "projection_macs": c.per_sample(c.projection_macs), "costs": c})
    trains = config.dendrite_phase != "none"
    return {"layers": rows, "model_params": model.count_parameters(),
            "candidates": config.cascade.candidates if trains else 0, "trains_candidates": trains,
            "dendrite_phase": config.dendrite_phase, "per_sample": input_shape is not None}


def cmd_inspect(args: argparse.Namespace) -> int:
    net = build_net(args.factory)
    config = parse_config(args.config, args.preset)
    info = inspect_model(net, config, parse_shape(args.input_shape))
    rows, pool = info["layers"], info["trains_candidates"]
    unit = "per sample" if info["per_sample"] else "per output position"
    growth = (f"K = {info['candidates']} candidate sets per layer" if pool else
              "no candidate pool: each growth adds one untrained set "
              f"(dendrite_phase={info['dendrite_phase']!r})")
    print(f"{args.factory}: {len(rows)} layer(s) would get dendrites; {growth}; "
          f"multiply-adds {unit}")
    head = (f"{'layer':<24} {'type':<8} {'neurons':>7} {'fan_in':>6} {'params':>10} "
            f"{'+params/set':>11} {'+MACs/set':>11}"
            + (f" {'pool params':>11} {'pool MACs':>11}" if pool else ""))
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['layer']:<24} {r['type']:<8} {r['neurons']:>7,} {r['fan_in']:>6,} "
              f"{r['params']:>10,} {r['set_params']:>11,} {r['set_macs']:>11,}"
              + (f" {r['pool_params']:>11,} {r['pool_macs']:>11,}" if pool else ""))
    total = {k: sum(r[k] for r in rows) for k in ("params", "set_params", "set_macs",
                                                   "pool_params", "pool_macs", "base_macs")}
    print("-" * len(head))
    print(f"{'total':<24} {'':<8} {'':>7} {'':>6} {total['params']:>10,} "
          f"{total['set_params']:>11,} {total['set_macs']:>11,}"
          + (f" {total['pool_params']:>11,} {total['pool_macs']:>11,}" if pool else ""))
    params = info["model_params"]
    once = sum(r["projection_params"] for r in rows)
    first = total["set_params"] + once
    print(f"model: {params:,} parameters; each dendrite set adds {total['set_params']:,} "
          f"(x{(params + first) / params:.2f} after one set) plus cascade weights "
          f"(set j: (j - 1) x neurons per layer); wrapped layers' own multiply-adds "
          f"{total['base_macs']:,} {unit}")
    if once:
        print(f"dendrite_rank: the first set also adds the layers' shared input projections, "
              f"{once:,} parameters and {sum(r['projection_macs'] for r in rows):,} "
              f"multiply-adds {unit}")
    return 0


# --------------------------------------------------------------------------------- export
