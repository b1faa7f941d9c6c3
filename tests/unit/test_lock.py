"""requirements.lock agrees with pyproject.toml, and the running environment is the lock.

``scripts/bootstrap`` installs requirements.lock (made by ``scripts/lock``), so a machine
gets exactly what CI tested only when (1) every dependency pyproject.toml declares is
locked at the version it pins, (2) the lock holds the whole transitive closure of those
requirements and nothing else, and (3) the environment the tests run in has exactly the
locked versions. All three are checked here offline, from the installed distributions'
own metadata (``scripts/lock --check`` re-resolves against the index instead).
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def locked() -> dict[str, str]:
    text = (ROOT / "requirements.lock").read_text()
    return {canonicalize_name(n): v for n, v in LOCK_LINE.findall(text)}


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    ]


def _applies(req: Requirement, extra: str) -> bool:
    if req.marker is None:
        return True
    env = {**default_environment(), "python_version": "3.11", "extra": extra}
    return req.marker.evaluate(env)  # type: ignore[arg-type]


def closure(roots: list[Requirement]) -> set[str]:
    """Names of every distribution the roots need, following installed metadata."""
    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(r.name), extra) for r in roots for extra in ("", *r.extras)]
    names: set[str] = set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        names.add(name)
        for raw in metadata.requires(name) or ():
            req = Requirement(raw)
            if _applies(req, extra):
                child = canonicalize_name(req.name)
                todo.extend((child, e) for e in ("", *req.extras))
    return names


def test_every_declared_dependency_is_pinned_and_locked_at_its_pin() -> None:
    lock = locked()
    for req in declared():
        (spec,) = req.specifier  # exactly one specifier ...
        assert spec.operator == "==", f"{req} is not pinned exactly"  # ... and an exact pin
        assert lock.get(canonicalize_name(req.name)) == spec.version, f"{req} vs lock"


def test_lock_is_exactly_the_transitive_closure() -> None:
    assert closure(declared()) == set(locked())


def test_environment_is_the_lock() -> None:
    # versions compared as PEP 440 versions: a wheel may spell its own "v0.0.21"
    # (grafana-foundation-sdk does), which is version 0.0.21
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version)
        for d in metadata.distributions()
        if canonicalize_name(d.metadata["Name"]) != "inferwatch"
    }
    if "pip" not in locked():  # the venv's own installer, unless a dependency needs it
        installed.pop(canonicalize_name("pip"), None)
    assert installed == {name: Version(v) for name, v in locked().items()}
