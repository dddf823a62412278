"""Choose which modules get dendrites: by exact name, name suffix, regex or module type."""

from __future__ import annotations

import logging
import re
from collections import Counter

from torch import nn

from ..config import PerforationConfig
from ..errors import TargetError
from ..selectors import Selector, selector_list
from .layers import DendriteLayer, WrapperRegistry
from .layers.layout import layout_mismatch

logger = logging.getLogger(__name__)

#: Lookups: a weight of >= 2 dims, but no neurons for dendrites (never listed as left out).
LOOKUPS = (nn.Embedding, nn.EmbeddingBag)


def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
    if isinstance(selector, type):
        return isinstance(module, selector)
    if name == selector or name.endswith("." + selector):
        return True
    try:
        return re.fullmatch(selector, name) is not None
    except re.error:
        return False


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule of `root` at dotted `name` by `module` (wrap, unwrap, export)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _candidate_modules(net: nn.Module, registry: WrapperRegistry
                       ) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """({name: module} a wrapper exists for, {name: why it cannot be wrapped})."""
    parents = {id(child): parent for parent in net.modules() for child in parent.children()}
    out, refused = {}, {}
    for name, module in net.named_modules():
        if not name or registry.lookup(module) is None:
            continue
        # MultiheadAttention reads out_proj.weight directly instead of calling it.
        if isinstance(parents.get(id(module)), nn.MultiheadAttention):
            continue
        reason = registry.unwrappable_reason(module)
        if reason is None:
            out[name] = module
        else:
            refused[name] = reason
    return out, refused


def wrappable_modules(net: nn.Module, registry: WrapperRegistry) -> dict[str, nn.Module]:
    """Every named module a wrapper exists for, in definition order."""
    return _candidate_modules(net, registry)[0]


def _resolve(net: nn.Module, selectors: list[Selector], wrappable: dict[str, nn.Module],
             field: str, refused: dict[str, str] | None = None) -> set[str]:
    named = [(n, m) for n, m in net.named_modules() if n]
    refused = refused or {}
    chosen: set[str] = set()
    for sel in selectors:
        hits = [n for n, m in named if _matches(sel, n, m)]
        picked = set()
        for name in hits:
            if name in wrappable:
                picked.add(name)
            elif name in refused:
                if field == "exclude_modules":
                    picked.add(name)  # excluding what is not wrapped anyway is no error
                elif not isinstance(sel, type):  # named explicitly: say why it cannot be done
                    raise TargetError(f"{field} entry {sel!r} selects {name!r}, which cannot "
                                      f"be wrapped: {refused[name]}")
                else:
                    logger.info("not wrapping %r: %s", name, refused[name])
            else:  # a container selects every wrappable module inside it
                picked.update(w for w in wrappable if w.startswith(name + "."))
        if not picked and field == "exclude_modules" and hits and any(
                _has_weights(m) for n, m in named if _within(n, set(hits))):
            continue  # only unwrappable weights: excluded from the left-out warning
        if not picked:
            shown = getattr(sel, "__name__", sel)
            what = (f"matched {', '.join(repr(h) for h in hits[:5])}, which contain no wrappable "
                    "layer" if hits else "matched no module")
            raise TargetError(f"{field} entry {shown!r} {what}; wrappable modules are: "
                              f"{_listing(wrappable)}")
        chosen |= picked
    return chosen


def _has_weights(module: nn.Module) -> bool:
    """Whether `module` has a parameter of its own with >= 2 dims (not an embedding's)."""
    return not isinstance(module, LOOKUPS) and any(
        not isinstance(p, nn.parameter.UninitializedParameter) and p.dim() >= 2
        for p in module.parameters(recurse=False))


def _within(name: str, names: set[str]) -> bool:
    """`name` is in `names` or inside one of them (a dotted prefix)."""
    parts = name.split(".")
    return any(".".join(parts[:i]) in names for i in range(1, len(parts) + 1))


def _warn_left_out(net: nn.Module, config: PerforationConfig, wrappable: dict[str, nn.Module],
                   refused: dict[str, str]) -> None:
    """One WARNING listing, by type, the modules with weights (a parameter of >= 2 dims of
    their own; embeddings and other lookups aside) that get no dendrites although the user did
    not leave them out: no wrapper serves their type, or it overrides ``forward``. With
    `target_modules`, only those the targets select count."""
    named = [(n, m) for n, m in net.named_modules() if n]
    covered = set(wrappable)

    def selected(selectors: list[Selector]) -> set[str]:
        return {n for n, m in named if any(_matches(s, n, m) for s in selectors)}

    excluded = selected(selector_list(config.exclude_modules))
    targets = selector_list(config.target_modules)
    scope = selected(targets) if targets else None
    found: Counter[str] = Counter()
    params: dict[str, set[str]] = {}
    for name, module in [("", net), *named]:
        if not _has_weights(module) or (name and (_within(name, covered)
                                                  or _within(name, excluded))):
            continue
        if scope is not None and not (name and _within(name, scope)):
            continue
        kind = type(module).__name__ + (" (overrides forward)" if name in refused else "")
        found[kind] += 1
        params.setdefault(kind, set()).update(
            n for n, p in module.named_parameters(recurse=False) if p.dim() >= 2)
    if not found:
        return
    listing = ", ".join(f"{kind} x{count} ({', '.join(sorted(params[kind]))})"
                        for kind, count in found.most_common())
    logger.warning(
        "%d module(s) with weights get no dendrites, as no wrapper serves them: %s. To give "
        "them dendrites, register a wrapper for their type "
        "(registry = pf.default_registry(); registry.register(TheType, TheWrapper); "
        "pf.perforate(net, config, registry=registry)); to silence this, exclude them with "
        "exclude_modules=[...]. Listed: modules with a parameter of >= 2 dims of their own "
        "(not embeddings: dendrites do not apply to lookups) that are neither wrapped, inside "
        "a wrapped module, nor excluded.", sum(found.values()), listing)


def _listing(wrappable: dict[str, nn.Module]) -> str:
    items = [f"{n} ({type(m).__name__})" for n, m in wrappable.items()]
    if len(items) > 20:
        items = [*items[:20], f"... {len(items) - 20} more"]
    return ", ".join(items) or "(none)"


def select_targets(net: nn.Module, config: PerforationConfig,
                   registry: WrapperRegistry) -> list[str]:
    """Qualified names of the modules to wrap, in definition order. Raises `TargetError`."""
    if any(isinstance(m, DendriteLayer) for m in net.modules()):
        raise TargetError("the network already contains dendrite layers (perforated twice?)")
    wrappable, refused = _candidate_modules(net, registry)
    if not wrappable:
        kinds = ", ".join(registry.type_names())
        hint = (" (the network is itself one layer: wrap it, e.g. nn.Sequential(layer))"
                if registry.lookup(net) is not None else "")
        if refused:
            hint = "; " + "; ".join(f"{n!r}: {r}" for n, r in refused.items())
        raise TargetError(f"{type(net).__name__} has nothing to wrap: no {kinds} module "
                          f"found inside it{hint}")
    targets = selector_list(config.target_modules)
    if targets:
        chosen = _resolve(net, targets, wrappable, "target_modules", refused)
    else:
        chosen = set(wrappable)
        for name, reason in refused.items():
            logger.info("not wrapping %r: %s", name, reason)
    excludes = selector_list(config.exclude_modules)
    if excludes:
        chosen -= _resolve(net, excludes, wrappable, "exclude_modules", refused)
    if not chosen:
        raise TargetError("target and exclude selection left no module to wrap; wrappable "
                          f"modules are: {_listing(wrappable)}")
    for name in chosen:
        module = wrappable[name]
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.parameter.UninitializedParameter):
            raise TargetError(f"module {name!r} ({type(module).__name__}) is lazy and not yet "
                              "initialised: run one forward pass on an example batch before "
                              "perforate() (it sets the layer's shape), or exclude it with "
                              "exclude_modules")
        wrapper, cls = registry.lookup(module), registry.registered_type(module)
        if wrapper is not None and cls is not None and not registry.is_builtin(module):
            why = layout_mismatch(module, wrapper)  # a registered pairing: does it fit?
            if why is not None:
                raise TargetError(
                    f"module {name!r} ({type(module).__name__}): the wrapper "
                    f"{wrapper.__name__} registered for {cls.__name__} does not fit its "
                    f"weight layout: {why}. Register a wrapper whose geometry lays out the "
                    "weight as the layer uses it (for x @ weight with weight [in, out], as "
                    "Hugging Face's Conv1D: perforate.engine.layers.TransposedLinear), or exclude "
                    "it "
                    "with exclude_modules")
    _warn_left_out(net, config, wrappable, refused)
    return [n for n in wrappable if n in chosen]
