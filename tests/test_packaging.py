"""The package as shipped: one version, py.typed, no import cycles, a wheel without the
research harness."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import perforate

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(perforate.__file__).resolve().parent


def intra_package_imports(path: Path) -> set[str]:
    """Modules of `perforate` that the module at `path` imports, anywhere in its body."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            if node.module is None:  # from . import x
                found.update(f"{target}.{a.name}" for a in node.names)
            else:
                found.add(target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("perforate."):
            found.add(node.module)
    names = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
        ".__init__") for p in PACKAGE.rglob("*.py")}
    return {n for n in found if n in names and n != module}


def test_no_import_cycles_between_modules():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py":
            continue  # a package's __init__ re-exports its modules by design
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        graph[name] = intra_package_imports(path)
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])
    assert graph["perforate.engine.model"] >= {"perforate.io.storage", "perforate.engine.targeting"}
    assert "perforate.io.serialization" not in graph["perforate.engine.model"]


def test_version_has_one_home():
    assert perforate.__version__ == (PACKAGE / "_version.py").read_text().split('"')[-2]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "\nversion =" not in pyproject.split(
        "[tool.setuptools.dynamic]")[0]


def test_py_typed_ships():
    assert (PACKAGE / "py.typed").is_file()
    assert 'perforate = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()


def test_the_wheel_holds_the_library_only(tmp_path):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building the wheel offline needs setuptools (the dev extra has it)")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", str(ROOT), "-w", str(tmp_path)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel, = tmp_path.glob("perforate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "perforate/py.typed" in names and "perforate/cli/main.py" in names
    assert not [n for n in names if "experiments" in n]
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_wheel.py"),
                            str(wheel)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_no_library_module_is_over_400_lines() -> None:
    """Small modules with one job each: a file that grows past 400 lines is split."""
    long = {str(f.relative_to(PACKAGE)): n for f in sorted(PACKAGE.rglob("*.py"))
            if (n := len(f.read_text().splitlines())) > 400}
    assert long == {}
