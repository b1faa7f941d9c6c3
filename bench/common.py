"""Helpers shared by the benchmarks: one benchmark at a time, and whole process trees.

- `acquire_benchmark_lock` / `benchmark_lock`: an exclusive ``flock`` on one file in the
  system temp dir, held for a whole benchmark run, so two benchmarks started from any
  checkout on this host never measure each other (the second one waits, and says so).
- `pct`: a percentile as the benchmarks report it (the value at index q*n of the sorted
  values, no interpolation).
- `descendants`, `cpus_allowed`, `pin_tree`, `tree_cpu_ticks`: a server that forks
  (BentoML's supervisor and service worker, MLServer's main, metrics and inference
  processes, Postgres' postmaster and backends) is measured and pinned as the tree below
  its first pid, read from /proc.

Standard library only (bench/peers runs these against processes of other virtualenvs).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOCK_PATH = Path(tempfile.gettempdir()) / "inferwatch-bench.lock"


def acquire_benchmark_lock(name: str, path: Path = LOCK_PATH) -> int:
    """Take the host-wide benchmark lock, waiting (and saying so) while another run holds
    it; the open descriptor that holds it. The kernel drops the lock when that descriptor
    is closed or the process exits, however it exits, so a benchmark's ``main`` just calls
    this first. The file keeps the holder's name and pid, for a waiter's message only.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another run"
        print(f"[{name}] waiting for the benchmark lock {path} ({holder})", file=sys.stderr)
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{name} pid {os.getpid()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def benchmark_lock(name: str, path: Path = LOCK_PATH) -> Iterator[None]:
    """`acquire_benchmark_lock` for the duration of a block."""
    fd = acquire_benchmark_lock(name, path)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses):
    field 3 (state) is index 0."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """`root` and every process below it (children, grandchildren...), root first.

    One pass over /proc builds the parent map; processes that exit meanwhile are skipped.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(_stat_fields(int(entry.name))[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out = [root]
    i = 0
    while i < len(out):
        out.extend(sorted(children.get(out[i], ())))
        i += 1
    return out


def process_name(pid: int) -> str:
    """The first words of the command line, absolute paths shortened to their base name."""
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        words = [a.decode(errors="replace") for a in argv if a][:4]
        if words:
            return " ".join(Path(w).name if w.startswith("/") else w for w in words)[:80]
    return "?"


def cpus_allowed(pid: int) -> str:
    """The kernel's Cpus_allowed_list of a process (its main thread), e.g. ``1`` or ``0-1``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"/proc/{pid}/status has no Cpus_allowed_list")


def thread_cpus_allowed(pid: int) -> set[str]:
    """The Cpus_allowed_list of every thread of a process (a thread can be pinned alone)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    out.add(line.split(":", 1)[1].strip())
    return out


def pin_tree(root: int, cpus: set[int]) -> list[int]:
    """Set the affinity of every thread of `root` and of its descendants; the pids pinned.

    For processes started elsewhere (Postgres via pg_ctl, the collector): what they fork
    afterwards inherits the affinity. A server we start ourselves is better started under
    ``taskset`` so that nothing of it ever runs elsewhere.
    """
    pinned = []
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), cpus)
            pinned.append(pid)
    return pinned


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of one process, all its threads, in clock ticks."""
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of /proc/<pid>/stat


def tree_cpu_ticks(pids: list[int]) -> dict[int, int]:
    """CPU ticks of each of `pids` still alive (a process that exited is left out)."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            out[pid] = proc_cpu_ticks(pid)
    return out


def pct(values: list[float] | list[int], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``: the value at index q*n of their sorted copy."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]
