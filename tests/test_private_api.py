"""`perforate.private_api` is the only module that touches a private API of torch, Lightning
or transformers, and every private name it lists is in the installed libraries: a library
upgrade that drops one fails here first, naming it."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from perforate import private_api

SRC = Path(__file__).resolve().parents[1] / "src" / "perforate"
OPTIONAL = {"lightning": "perforate[lightning]", "transformers": "perforate[hf]"}

#: Private-looking names other modules may touch, each with why it is not a private API.
ALLOWED = {
    "_load_from_state_dict": "nn.Module's hook for a module's own state-dict keys: its "
                             "docstring asks subclasses to override it (and call super's)",
}

#: Calls whose string argument names an attribute (``getattr(x, "_name")``).
_BY_NAME = {"getattr", "hasattr", "setattr", "delattr"}


@pytest.mark.parametrize("name", sorted(private_api.APIS))
def test_every_private_name_is_in_the_installed_library(name: str) -> None:
    api = private_api.APIS[name]
    try:
        library = importlib.import_module(api.library)
    except ImportError:
        if api.library not in OPTIONAL:
            raise
        pytest.skip(f"{api.library} is not installed (the {OPTIONAL[api.library]} extra)")
    version = getattr(library, "__version__", "?")
    assert api.present(), f"{name} is missing in {api.library} {version}: see " \
                          f"perforate.private_api.{api.used_as}"


def test_every_entry_is_used_by_the_library() -> None:
    others = "\n".join(p.read_text() for p in SRC.rglob("*.py") if p.name != "private_api.py")
    unused = [name for name, api in private_api.APIS.items()
              if f"private_api.{api.used_as}" not in others and not re.search(
                  rf"from \.+private_api import [^\n]*\b{api.used_as}\b", others)]
    assert not unused, f"no longer used (drop them from private_api): {unused}"


def _own_names(trees: list[ast.Module]) -> set[str]:
    """The ``_names`` perforate defines itself (functions, classes, assigned names and
    attributes of ``self``, arguments), less those nn.Module or Tensor also have: defining
    one of those overrides a private torch name."""
    names: set[str] = set()
    for tree in trees:
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                names.add(n.id)
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) \
                    and isinstance(n.value, ast.Name) and n.value.id == "self":
                names.add(n.attr)
            elif isinstance(n, ast.arg):
                names.add(n.arg)
            elif isinstance(n, ast.alias):
                names.add((n.asname or n.name).split(".")[0])
    return {n for n in names if not hasattr(nn.Module, n) and not hasattr(torch.Tensor, n)}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(tree: ast.Module, own: set[str]) -> list[tuple[int, str]]:
    """``(line, what)`` for each private name of another library that `tree` touches: an
    attribute ``x._name`` (not of ``self``/``cls``, not one of `own`), a ``getattr``-like
    call naming one, or an absolute import of a private module or name."""
    found: list[tuple[int, str]] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and _private(n.attr) and n.attr not in own \
                and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")):
            found.append((n.lineno, n.attr))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) \
                and n.func.id in _BY_NAME and len(n.args) > 1 \
                and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str) \
                and _private(n.args[1].value) and n.args[1].value not in own:
            found.append((n.lineno, n.args[1].value))
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            for part in [*n.module.split("."), *(a.name for a in n.names)]:
                if _private(part):
                    found.append((n.lineno, part))
        elif isinstance(n, ast.Import):
            found += [(n.lineno, a.name) for a in n.names
                      if any(_private(p) for p in a.name.split("."))]
    return [(line, what) for line, what in found if what not in ALLOWED]


def test_no_other_module_touches_a_private_name() -> None:
    files = {p: ast.parse(p.read_text()) for p in sorted(SRC.rglob("*.py"))}
    own = _own_names(list(files.values()))
    touched = [f"{p.relative_to(SRC)}:{line}: {what}"
               for p, tree in files.items() if p.name != "private_api.py"
               for line, what in private_uses(tree, own)]
    assert not touched, "private names outside perforate/private_api.py (add a function " \
                        "there and call it):\n" + "\n".join(touched)


def test_the_scan_finds_each_kind_of_private_use() -> None:
    source = """
import torch._dynamo
from torch.utils import _foreach_utils
from torch._C import x
torch._C._current_graph_task_id()
getattr(trainer, "_load_from_checkpoint", None)
strategy._setup_model
self._mine
super()._load_from_state_dict(state)
m._own_helper()
"""
    found = [what for _, what in private_uses(ast.parse(source), {"_own_helper"})]
    assert sorted(found) == sorted(["torch._dynamo", "_foreach_utils", "_C", "_C",
                                    "_current_graph_task_id", "_load_from_checkpoint",
                                    "_setup_model"])


def test_the_transformers_hook_replaces_the_loader_only_where_there_is_one() -> None:
    class Trainer:
        def _load_from_checkpoint(self, path: str, model: object = None) -> None:
            raise AssertionError("replaced")

    calls: list[str] = []
    trainer = Trainer()
    assert private_api.replace_trainer_checkpoint_loader(trainer, calls.append)
    trainer._load_from_checkpoint("ckpt")
    assert calls == ["ckpt"]
    assert not private_api.replace_trainer_checkpoint_loader(object(), calls.append)
