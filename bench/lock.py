"""One benchmark at a time on this machine: an exclusive ``flock`` every benchmark holds.

The machine is small and shared (2 cores): two benchmarks at once measure each other.
Every ``bench/`` entry point runs inside :func:`bench_lock`, which waits (printing who
holds it) until the previous benchmark has finished. The lock file lives in the system's
temp dir, so checkouts and worktrees of the project exclude each other too; the kernel
releases it when its holder exits, however it exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_PATH = Path(tempfile.gettempdir()) / "inferwatch-bench.lock"


@contextlib.contextmanager
def bench_lock(name: str, path: Path = LOCK_PATH) -> Iterator[None]:
    """Hold the machine's benchmark lock for the block; wait for it if another holds it."""
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another benchmark"
            print(f"{name}: waiting for the benchmark lock ({holder})", file=sys.stderr)
            started = time.monotonic()
            fcntl.flock(f, fcntl.LOCK_EX)
            waited = time.monotonic() - started
            print(f"{name}: got the benchmark lock after {waited:.0f} s", file=sys.stderr)
        f.seek(0)
        f.truncate()
        f.write(f"{name} (pid {os.getpid()})\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)
