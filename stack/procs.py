"""Process helpers for the native stack, the test fixtures and the benchmarks.

Where the binaries are (stack/install.sh's cache, the project's venv), free loopback ports,
spawning a logged process in its own session with a pid file, liveness and termination,
HTTP/TCP health checks, and `poll`: the one way anything in this repository waits for a
condition (a deadline, never a fixed sleep). Standard library only.

This module must never kill what it did not start: `terminate` signals the process group
created by `spawn` (or one pid the caller owns), nothing found by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("INFERWATCH_CACHE", ROOT / ".stack"))

T = TypeVar("T")


class LaunchError(RuntimeError):
    """Something the operator must fix; the message says what."""


class PollTimeout(LaunchError):
    """A condition `poll` waited for did not come true within its deadline."""


# --- binaries ------------------------------------------------------------------------


def find_binary(name: str) -> Path:
    """A binary from stack/install.sh's cache, else from PATH."""
    cached = CACHE / "bin" / name
    if cached.exists():
        return cached
    found = shutil.which(name)
    if found:
        return Path(found)
    raise LaunchError(f"{name} not found in {CACHE / 'bin'} or on PATH: run stack/install.sh")


def venv_bin(name: str) -> Path:
    """A console script of the project's venv (or of the running interpreter's)."""
    for cand in (ROOT / ".venv" / "bin" / name, Path(sys.executable).parent / name):
        if cand.exists():
            return cand
    found = shutil.which(name)
    if found:
        return Path(found)
    raise LaunchError(f"{name} not found in .venv/bin: install the project (pip install -e .)")


# --- ports ---------------------------------------------------------------------------


def free_ports(n: int, host: str = "127.0.0.1") -> tuple[int, ...]:
    """`n` distinct free ports on `host` (all bound at once, so none is handed out twice)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return tuple(int(s.getsockname()[1]) for s in socks)
    finally:
        for s in socks:
            s.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports_free(component: str, ports: Mapping[str, int]) -> None:
    """Fail at once, naming the port and its variable, instead of hanging on a busy port."""
    busy = {name: p for name, p in ports.items() if port_in_use(p)}
    if busy:
        desc = ", ".join(f"{name}={p}" for name, p in busy.items())
        raise LaunchError(
            f"cannot start {component}: port already in use ({desc}). Stop whatever listens "
            f"there (`ss -ltnp | grep :PORT`) or set another port in stack/ports.env or the "
            f"environment variable of that name."
        )


# --- health checks -------------------------------------------------------------------


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback URL)
            return bool(200 <= resp.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tcp_ok(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- waiting -------------------------------------------------------------------------


def log_tail(log: Path | None, lines: int = 25) -> str:
    """The last lines of a log, formatted to end an error message ('' without a log)."""
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(tail)


def poll(
    check: Callable[[], T | None],
    deadline_s: float,
    what: str,
    *,
    interval_s: float = 0.1,
    alive: Callable[[], bool] | None = None,
    log: Path | None = None,
) -> T:
    """Call `check` until it returns something other than None or False, and return that.

    Raises `PollTimeout` at the deadline, and `LaunchError` as soon as `alive()` (the
    process that should make the condition true) says it died; both messages name `what`
    and end with the tail of `log`. `check` runs at least once, even with a zero deadline.
    """
    end = time.monotonic() + deadline_s
    while True:
        last = check()
        if last is not None and last is not False:
            return last
        if alive is not None and not alive():
            raise LaunchError(f"the process exited while waiting for {what}{log_tail(log)}")
        if time.monotonic() >= end:
            raise PollTimeout(
                f"timed out after {deadline_s:g}s waiting for {what} (last: {last!r})"
                f"{log_tail(log)}"
            )
        time.sleep(interval_s)


# --- processes -----------------------------------------------------------------------


def spawn(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: Path,
    pid_file: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in a session of its own, stdout and stderr appended to `log`.

    `env` is the child's whole environment. The pid is written to `pid_file` before this
    returns, so that whoever stops the process later finds it even if we die meanwhile.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{proc.pid}\n")
    return proc


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as gone (reap it if it is our child)
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def terminate(pid: int, deadline_s: float = 15.0, group: bool = True) -> None:
    """SIGTERM (to the process group `spawn` created), then SIGKILL after the deadline."""

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def gone() -> bool:
        return not pid_alive(pid)

    if gone():
        return
    send(signal.SIGTERM)
    try:
        poll(gone, deadline_s, f"pid {pid} to exit after SIGTERM", interval_s=0.05)
    except PollTimeout:
        send(signal.SIGKILL)
        with contextlib.suppress(PollTimeout):
            poll(gone, 5, f"pid {pid} to exit after SIGKILL", interval_s=0.05)
