"""One toolchain over the whole tree: every Python folder is type-checked and formatted.

scripts/test runs `ruff check .`, `ruff format --check .` and `mypy` (files from
pyproject.toml); these tests keep those commands covering everything and keep the
formatter in charge of layout (no opt-out comments that switch it off for a line or a block).
"""

from __future__ import annotations

import subprocess
import tomllib

from stack.procs import ROOT


def tracked_python_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_mypy_checks_every_python_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    roots = [r.rstrip("/") for r in config["files"]]
    assert config["strict"] is True
    unchecked = [
        f for f in tracked_python_files() if not any(f == r or f.startswith(r + "/") for r in roots)
    ]
    assert unchecked == []


def test_no_formatter_opt_outs() -> None:
    skips = [
        f"{f}:{n}"
        for f in tracked_python_files()
        for n, line in enumerate((ROOT / f).read_text().splitlines(), 1)
        if "fmt: " + "skip" in line or "fmt: " + "off" in line
    ]
    assert skips == []
