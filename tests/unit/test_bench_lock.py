"""bench/lock.py: a second benchmark waits for the first, and runs once it has finished."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.lock import bench_lock
from stack.procs import poll

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from bench.lock import bench_lock
with bench_lock("second", Path({path!r})):
    print("second ran", flush=True)
"""


def test_a_second_benchmark_waits_until_the_first_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "bench.lock"
    err = tmp_path / "child.err"
    with bench_lock("first", path):
        assert path.read_text().startswith("first (pid ")
        with err.open("w") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(path))],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        poll(lambda: "waiting for the benchmark lock (first" in err.read_text(), 20, "waiting")
        assert child.poll() is None  # still held: the second has not run
    out, _ = child.communicate(timeout=20)
    assert child.returncode == 0
    assert out == "second ran\n"
    assert "got the benchmark lock" in err.read_text()
    assert path.read_text() == ""  # released by its last holder
