"""The wheel installs one top-level package, ``inferwatch``, with its data files and CLI.

A package called ``service`` (what the folder holding it is called) would collide with
anything else so named in site-packages: the wheel is built here and its contents read.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_has_exactly_one_top_level_package(tmp_path: Path) -> None:
    # from a copy of what the build reads: setuptools writes build/ and *.egg-info beside it
    src = tmp_path / "src"
    shutil.copytree(ROOT / "service", src / "service", ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-w", str(tmp_path), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("inferwatch-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(z.read(f"{dist_info}/entry_points.txt").decode())
    top = {n.split("/")[0] for n in names} - {dist_info}
    assert top == {"inferwatch"}
    assert entry_points["console_scripts"]["inferwatch"] == "inferwatch.cli:main"
    # the SQL the package runs at run time ships inside it
    assert "inferwatch/audit/migrations/0001_schema.sql" in names
    assert "inferwatch/analysis/sql/quality.sql" in names
    assert "inferwatch/py.typed" in names
