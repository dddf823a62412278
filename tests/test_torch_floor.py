"""The declared minimum torch version (pyproject's ``torch>=``), documented in docs/design.md,
is not below the first torch release that has every version-sensitive API the library uses.

The suite itself runs on one torch (the Makefile's pin); the floor is not run here because
PyPI's Linux wheels of old torch releases are CUDA builds of several GB. This test keeps the
declaration, the documentation and the code's API list consistent, and fails when code starts
using an API newer than the floor (add it to `APIS`) or when the floor changes silently.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch
from torch import nn

from perforate import private_api

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "perforate"

#: Public API -> (first torch release with it, a string the library's source contains, is it
#: here?). The private ones (`PRIVATE`) come from `perforate.private_api`.
APIS = {
    "Tensor.untyped_storage (serialization: shared-storage aliases)":
        ((2, 0), ".untyped_storage()", lambda: hasattr(torch.Tensor, "untyped_storage")),
    "torch.load(weights_only=True) (checkpoints without pickle)":
        ((1, 13), "weights_only=True",
         lambda: "weights_only" in inspect.signature(torch.load).parameters),
    "nn.Module.get_submodule (targeting, wrapping)":
        ((1, 9), ".get_submodule(", lambda: hasattr(nn.Module, "get_submodule")),
    "Tensor.register_post_accumulate_grad_hook (candidate gradients summed as they come)":
        ((2, 1), ".register_post_accumulate_grad_hook(",
         lambda: hasattr(torch.Tensor, "register_post_accumulate_grad_hook")),
    "torch.Generator.get_state / set_state (exact resume)":
        ((1, 0), "g.get_state()", lambda: hasattr(torch.Generator, "get_state")),
}

#: Private torch API -> (first release, the name the library calls it by, is it here?).
PRIVATE = {name: (api.since, f"private_api.{api.used_as}", api.present)
           for name, api in private_api.APIS.items() if api.library == "torch"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.match(r"\d+(\.\d+)*", text).group(0).split("."))


def declared_floor() -> tuple[int, ...]:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'"torch\s*>=\s*([0-9.]+)', text)
    assert match, "pyproject.toml declares no torch>= floor"
    return _version(match.group(1))


def library_source() -> str:
    return "\n".join(p.read_text() for p in SRC.rglob("*.py") if "experiments" not in p.parts)


def test_the_floor_is_documented():
    floor = ".".join(map(str, declared_floor()))
    design = (ROOT / "docs" / "design.md").read_text()
    assert f"torch >= {floor}" in design


def test_the_floor_covers_the_apis_the_library_uses():
    source = library_source()
    for name, (_since, token, available) in APIS.items():
        assert token in source, f"{name}: no longer used; drop it from APIS"
        assert available(), f"{name}: missing in torch {torch.__version__}"
    newest = max(since for since, _, _ in APIS.values())
    assert declared_floor() >= newest


def test_the_floor_covers_the_private_apis_the_library_uses():
    """Every private torch name of `perforate.private_api` (which `test_private_api` checks is
    used and present) came with a torch release not above the floor, except one the library
    can do without (`fused_kernel_devices`: an optimizer speed-up from torch 2.2)."""
    optional = {"torch.utils._foreach_utils._get_fused_kernels_supported_devices"}
    assert {"torch._C._current_graph_task_id", "torch.nn.functional._canonical_mask",
            "torch.autograd.Variable._execution_engine.queue_callback"} <= set(PRIVATE)
    newest = max(since for name, (since, _, _) in PRIVATE.items() if name not in optional)
    assert declared_floor() >= newest


def test_the_running_torch_is_not_below_the_floor():
    assert _version(torch.__version__) >= declared_floor()
