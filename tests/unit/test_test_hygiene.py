"""What the test suite promises about itself, checked on the source (no test is run).

- Helpers shared between tests come from tests/fixtures/ only: no module under tests/
  imports a test module or a conftest.
- No sleep as synchronisation: waiting is stack/procs.py's `poll`. A sleep that is the
  workload itself (pacing a load, a deliberately slow fake) carries the comment
  `# not synchronisation: <why>` on its line.
- A test that needs a real component (Postgres, collector, Prometheus, promtool: the
  fixtures and helpers that start or find one) carries the `integration` marker; one that
  reads the wall clock (perf_counter, monotonic) carries `slow`.
- The dependency direction: inferwatch never imports tests/ or bench/, bench/ never
  imports tests/; stack/ imports neither.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.procs import ROOT

TESTS = ROOT / "tests"
SLEEP = re.compile(r"\b(time|asyncio)\.sleep\(")
SLEEP_OK = "# not synchronisation:"
# names through which a test reaches a real component
COMPONENT_NAMES = {
    "component_missing",
    "installed_binary",
    "require_stack_binaries",
    "running_stack",
    "Stack",
    "find_binary",
    "find_pg_bin",
    "throwaway_cluster",
    "start_test_cluster",
    "pg_cluster",
    "audit_db",
    "outage_db",
    "stack",
    "serving",
    "chromium",
}
CLOCK_NAMES = {"perf_counter", "monotonic", "perf_counter_ns", "monotonic_ns"}


def py_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every import in a file, relative imports resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            yield node.lineno, base
            for alias in node.names:  # `from tests.e2e import conftest`
                yield node.lineno, f"{base}.{alias.name}"


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_tests_import_shared_helpers_from_fixtures_only() -> None:
    bad = [
        f"{rel(path)}:{line}: imports {mod}"
        for path in py_files(TESTS)
        for line, mod in imported_modules(path)
        if mod.startswith("tests.") and not (mod + ".").startswith("tests.fixtures.")
    ]
    assert bad == []


def test_no_sleep_as_synchronisation_in_tests() -> None:
    bad = [
        f"{rel(path)}:{n}: {line.strip()}"
        for path in py_files(TESTS)
        if path != Path(__file__)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SLEEP.search(line) and SLEEP_OK not in line
    ]
    assert bad == []


def test_one_poll_and_one_free_port_helper() -> None:
    """No deadline loop and no free-port helper besides stack/procs.py's (the service's own
    code cannot import stack/ and is not checked here)."""
    loop = re.compile(r"while .*monotonic\(\)|monotonic\(\) \+")
    port_helper = re.compile(r"return\s+(int\()?\w+\.getsockname\(\)\[1\]")
    bad = []
    for folder in ("tests", "bench", "stack"):
        for path in py_files(ROOT / folder):
            if rel(path) in ("stack/procs.py", rel(Path(__file__))):
                continue
            text = path.read_text()
            if loop.search(text):
                bad.append(f"{rel(path)}: a deadline loop of its own (use stack.procs.poll)")
            if port_helper.search(text):
                bad.append(f"{rel(path)}: a free-port helper of its own (stack.procs.free_ports)")
    assert bad == []


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("service/inferwatch", {"tests", "bench", "stack"}),
        ("bench", {"tests"}),
        ("stack", {"tests", "bench"}),
    ],
)
def test_dependency_direction(folder: str, forbidden: set[str]) -> None:
    bad = [
        f"{rel(path)}:{line}: imports {mod}"
        for path in py_files(ROOT / folder)
        for line, mod in imported_modules(path)
        if mod.split(".")[0] in forbidden
    ]
    assert bad == []


def _markers(decorators: list[ast.expr]) -> set[str]:
    """`integration` from `@pytest.mark.integration` (called or not), and from a list."""
    out = set()
    for d in decorators:
        for node in ast.walk(d):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "mark"
            ):
                out.add(node.attr)
    return out


def _module_markers(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            return _markers([node.value])
    return set()


def _names(fn: ast.AST) -> set[str]:
    """Every name a function mentions: variables, attributes, parameters (fixtures)."""
    out = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
    return out


def _reach(tree: ast.Module) -> dict[str, set[str]]:
    """For each module-level function: the names it mentions, directly or through the
    module's other functions (helpers and fixtures) it mentions."""
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    direct = {name: _names(fn) for name, fn in funcs.items()}
    reach: dict[str, set[str]] = {}
    for name in funcs:
        seen, todo = {name}, [name]
        names: set[str] = set()
        while todo:
            cur = todo.pop()
            names |= direct[cur]
            for callee in direct[cur] & funcs.keys() - seen:
                seen.add(callee)
                todo.append(callee)
        reach[name] = names
    return reach


def test_markers_say_what_a_test_needs() -> None:
    bad = []
    for path in py_files(TESTS):
        if not path.name.startswith("test_"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        module_marks = _module_markers(tree)
        reach = _reach(tree)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            marks = module_marks | _markers(node.decorator_list)
            used = reach[node.name]
            if used & COMPONENT_NAMES and "integration" not in marks:
                bad.append(f"{rel(path)}::{node.name}: needs a real component, not `integration`")
            if "e2e" in marks and "integration" not in marks:
                bad.append(f"{rel(path)}::{node.name}: `e2e` without `integration`")
            if used & CLOCK_NAMES and "slow" not in marks:
                bad.append(f"{rel(path)}::{node.name}: reads the wall clock, not `slow`")
    assert bad == []
