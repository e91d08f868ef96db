"""The package's modules import on their own, and their import graph has no cycle.

A cycle works only in the import order that happens to be used today (a late import inside
a function hides it until someone moves it), so it is checked on the source: every
``from .x import``, ``from .. import x``, ``import labelsmooth.x`` counts, including the
ones inside functions and ``if TYPE_CHECKING:`` blocks.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import labelsmooth

PACKAGE = Path(labelsmooth.__file__).parent
ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    _module_name(path): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if "__pycache__" not in path.parts
}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` inside ``module``."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(module: str) -> set[str]:
    """The package modules that ``module`` imports anywhere in its source."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve(module, path.name == "__init__.py", node.level, node.module)
            else:
                base = node.module or ""
            if not base.startswith("labelsmooth"):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                # `from pkg import submodule` depends on the submodule; a name defined in the
                # package's __init__ depends on the package.
                found.add(submodule if submodule in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("labelsmooth"))
    found.discard(module)
    return {name for name in found if name in MODULES}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_graph_helpers_see_imports_in_functions_and_type_checking_blocks():
    graph = {name: _imports(name) for name in MODULES}
    # Late or type-only imports that the cycle check must see (they are where cycles hide).
    assert "labelsmooth._problem" in graph["labelsmooth.kernels.fused"]  # TYPE_CHECKING
    assert "labelsmooth.kernels.linear_triton" in graph["labelsmooth.kernels.linear"]  # late
    assert "labelsmooth.kernels.cpu_ce" in graph["labelsmooth.kernels"]  # from . import x
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def _graph(keep) -> dict[str, set[str]]:
    names = {name for name in MODULES if keep(name)}
    return {name: _imports(name) & names for name in names}


def test_module_import_graph_has_no_cycle():
    cycle = _find_cycle(_graph(lambda name: not name.startswith("labelsmooth.study")))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_study_import_graph_has_no_cycle():
    cycle = _find_cycle(_graph(lambda name: name.startswith("labelsmooth.study")))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_checked_problem_sits_below_functional_and_kernels():
    graph = {name: _imports(name) for name in MODULES}
    assert graph["labelsmooth._problem"] <= {"labelsmooth._checks", "labelsmooth.targets"}
    for name, imported in graph.items():
        if name.startswith("labelsmooth.kernels"):
            assert "labelsmooth.functional" not in imported, name


def _import_alone(module: str) -> tuple[str, int, str]:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "error::ImportWarning"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return module, done.returncode, done.stderr[-3000:]


def _assert_import_alone(modules: list[str]) -> None:
    # linear_triton and triton_ce import triton when it is installed; without it, triton_ce
    # raises ImportError by design (kernels imports it only when impl="triton" is asked for).
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(_import_alone, modules))
    failures = []
    for module, code, stderr in results:
        if code == 0:
            continue
        if module == "labelsmooth.kernels.triton_ce" and "No module named 'triton'" in stderr:
            continue
        failures.append(f"{module} (exit {code}):\n{stderr}")
    assert not failures, "\n\n".join(failures)


# Importing any submodule runs labelsmooth/__init__.py first, in its fixed order, so a fresh
# process cannot reveal a cycle by itself (that is what the source check above is for); it
# catches a module that fails to import, e.g. a name moved away. The full list is slow.
CORE = ["labelsmooth._problem", "labelsmooth.kernels.cpu_ce", "labelsmooth.kernels.linear_triton"]


def test_core_modules_import_alone_in_a_fresh_process():
    _assert_import_alone(CORE)


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_process():
    _assert_import_alone([name for name in MODULES if name != "labelsmooth"])
