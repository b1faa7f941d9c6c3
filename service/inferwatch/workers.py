"""Worker processes for ``inferwatch serve``: listening sockets, one uvicorn server each.

``serve(spec, host, port, workers)`` binds the listening sockets, then serves:

- one worker: in this process, on one socket;
- N workers: this process binds N sockets to the same address with ``SO_REUSEPORT``, so
  the kernel spreads new connections over them by a hash of each connection's addresses,
  and supervises N worker processes (spawned: fresh interpreters that inherit nothing but
  their socket), worker i serving socket i. A worker that dies after it was ready is
  replaced on the same socket; the connections that arrived meanwhile wait in that
  socket's backlog, which this process holds. A worker that dies before it was ever
  ready (the app cannot start: model, settings) stops the service with exit status 3,
  as a replacement would fail the same way. SIGTERM or SIGINT stops every worker within
  ``spec.stop_timeout_s``, then kills what is left. A worker also gets SIGTERM when this
  process dies, however it dies (Linux's parent-death signal), so no orphan keeps the port.

Why not uvicorn's ``workers=N`` (measured, docs/decisions.md "Worker processes"): its N
processes accept from one shared socket, and whichever is awake first takes a whole burst
of new connections, so keep-alive clients pile onto one worker (5 of 32 connections on one
worker and 27 on the other, here); and its parent kills a worker that does not answer a
ping within 5 s, which a worker still importing its modules on a busy host cannot.

Every listening socket has TCP_NODELAY, which Linux copies to each connection it accepts:
a response written in two parts (uvicorn writes the head, then the body) then never waits
for the client's delayed ACK (Nagle's algorithm: about 40 ms per keep-alive request),
whatever event loop serves it. asyncio sets TCP_NODELAY only on sockets it created with
protocol IPPROTO_TCP, which uvicorn's own worker socket is not; uvloop sets it on every TCP
connection; tests/unit/test_workers.py checks both.

Each worker builds its own app (``inferwatch.asgi:create``) and runs its lifespan: its own
telemetry providers and ``service.instance.id``, its own audit writer, which claims the
first free spool slot (``inferwatch.audit.spool``), so two workers never write one file.

Must never: share anything built by the app between processes, or leave a worker running
after this process has gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Final, Literal

import uvicorn

from inferwatch.http_limits import BoundedHttpToolsProtocol
from inferwatch.settings import Settings

log = logging.getLogger(__name__)

# the exit status of a service that could not start (uvicorn's too)
EXIT_STARTUP_FAILURE = 3
# The event loop and HTTP parser of every worker: uvloop + httptools, the fastest pair
# measured here; uvloop also sets TCP_NODELAY on each connection (see the module doc).
SERVE_LOOP: Literal["uvloop"] = "uvloop"
# httptools with a deadline and a size cap on each request head (inferwatch.http_limits)
SERVE_HTTP: Final = BoundedHttpToolsProtocol
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# a worker that dies after it was ready is replaced, at most this often per socket
RESTART_INTERVAL_S = 1.0
_PR_SET_PDEATHSIG = 1  # prctl(2)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask: taskset and cpusets count)."""
    return len(os.sched_getaffinity(0))


def resolve_workers(value: int | Literal["auto"]) -> int:
    """A worker count as set (a number, or ``auto``: one per usable CPU)."""
    return cpu_count() if value == "auto" else value


def configure_logging(level: str) -> None:
    """Log records of the service's own loggers, in this process (each worker calls it)."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)


@dataclass(frozen=True)
class ServeSpec:
    """What every worker runs; picklable, it crosses into each spawned worker."""

    log_level: str = "info"
    app: str = "inferwatch.asgi:create"  # a factory: each worker builds its own app
    timeout_graceful_shutdown: int = 10  # s: open requests may finish within it
    backlog: int = 2048
    timeout_keep_alive: int = Settings.model_fields["http_keepalive_s"].default  # s
    # how long a stop waits for the workers (HTTP drain, audit flush, telemetry flush)
    stop_timeout_s: float = 30.0

    def config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self.app,
            factory=True,
            loop=SERVE_LOOP,
            http=SERVE_HTTP,
            log_level=self.log_level,
            access_log=False,
            backlog=self.backlog,
            timeout_graceful_shutdown=self.timeout_graceful_shutdown,
            timeout_keep_alive=self.timeout_keep_alive,
        )


def listen_sockets(host: str, port: int, n: int, backlog: int = 2048) -> list[socket.socket]:
    """N listening TCP sockets on (host, port), each with TCP_NODELAY; with N > 1, each
    with SO_REUSEPORT. Raises OSError when the address is taken, by anyone: a plain bind
    runs first, so a second service of this user on the port (whose sockets would accept
    ours into their SO_REUSEPORT group and split its traffic with it) is refused too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def make(reuse_port: bool) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return sock

    if n > 1:
        make(reuse_port=False).close()  # refused if anything is bound there already
    sockets: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = make(reuse_port=n > 1)
            sock.listen(backlog)
            sock.set_inheritable(True)
            sockets.append(sock)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Server(uvicorn.Server):
    """uvicorn's server, telling the supervisor once the app has started."""

    def __init__(self, config: uvicorn.Config, ready: Connection | None) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._ready is not None:
            with contextlib.suppress(OSError):
                self._ready.send(os.getpid())
                self._ready.close()
            self._ready = None


def run_worker(spec: ServeSpec, sock: socket.socket, ready: Connection | None = None) -> bool:
    """Serve on `sock` in this process until a signal stops it; whether it had started."""
    server = _Server(spec.config(), ready)
    server.run(sockets=[sock])
    return server.started


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when its parent dies (Linux), and exit if it already has."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(0)


def _worker_main(
    spec: ServeSpec, sock: socket.socket, ready: Connection, parent: int, index: int
) -> None:
    """The body of a spawned worker process."""
    _die_with_parent(parent)
    configure_logging(spec.log_level)
    log.info("worker %d serving", index)
    if not run_worker(spec, sock, ready):
        sys.exit(EXIT_STARTUP_FAILURE)


@dataclass
class _Slot:
    """One socket and the worker process serving it."""

    index: int
    sock: socket.socket
    process: BaseProcess | None = None
    ready_conn: Connection | None = None
    ready: bool = False
    started_at: float = 0.0
    restart_at: float | None = None  # when to start a replacement


class Supervisor:
    """Starts one worker per socket, replaces those that die, stops them all on a signal."""

    def __init__(self, spec: ServeSpec, sockets: list[socket.socket]) -> None:
        self.spec = spec
        self.slots = [_Slot(i, s) for i, s in enumerate(sockets)]
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = False
        self._status = 0

    def _start(self, slot: _Slot) -> None:
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_worker_main,
            args=(self.spec, slot.sock, send, os.getpid(), slot.index),
            name=f"inferwatch-worker-{slot.index}",
        )
        process.start()
        send.close()  # the worker holds the sending end now
        slot.process, slot.ready_conn, slot.ready = process, receive, False
        slot.started_at, slot.restart_at = time.monotonic(), None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping the workers", signal.Signals(signum).name)
        self._stopping = True

    def _reap(self, slot: _Slot) -> None:
        """`slot`'s worker has exited: replace it, or stop everything if it never started."""
        assert slot.process is not None
        slot.process.join()
        code = slot.process.exitcode
        if slot.ready_conn is not None:
            slot.ready_conn.close()
        slot.process, slot.ready_conn = None, None
        if self._stopping:
            return
        if not slot.ready:
            log.error(
                "worker %d exited (status %s) before it was ready: stopping", slot.index, code
            )
            self._status = EXIT_STARTUP_FAILURE
            self._stopping = True
            return
        log.warning("worker %d exited (status %s): starting a replacement", slot.index, code)
        slot.restart_at = max(time.monotonic(), slot.started_at + RESTART_INTERVAL_S)

    def _wait_once(self) -> None:
        """Wait for a worker to be ready or to exit (or a restart to be due, or a signal)."""
        waitables: list[Any] = []
        for slot in self.slots:
            if slot.process is not None:
                waitables.append(slot.process.sentinel)
                if slot.ready_conn is not None and not slot.ready:
                    waitables.append(slot.ready_conn)
        due = [s.restart_at for s in self.slots if s.restart_at is not None]
        timeout = 0.5 if not due else max(0.0, min(min(due) - time.monotonic(), 0.5))
        wait(waitables, timeout)  # a signal ends it early too: its handler set the flag
        for slot in self.slots:
            if slot.process is None:
                continue
            if not slot.ready and slot.ready_conn is not None and slot.ready_conn.poll():
                with contextlib.suppress(EOFError, OSError):
                    pid = slot.ready_conn.recv()
                    slot.ready = True
                    log.info("worker %d (pid %s) ready", slot.index, pid)
                    if all(s.ready for s in self.slots):
                        log.info("all %d workers ready", len(self.slots))
            if not slot.process.is_alive():
                self._reap(slot)
        now = time.monotonic()
        for slot in self.slots:
            if not self._stopping and slot.restart_at is not None and slot.restart_at <= now:
                self._start(slot)

    def _stop_all(self) -> None:
        # first, nothing new waits in a backlog that no worker will serve
        for slot in self.slots:
            slot.sock.close()
        alive = [s.process for s in self.slots if s.process is not None and s.process.is_alive()]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                assert process.pid is not None
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.spec.stop_timeout_s
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in alive:
            if process.is_alive():
                log.warning(
                    "worker pid %s still runs after %gs: killing it",
                    process.pid,
                    self.spec.stop_timeout_s,
                )
                process.kill()
                process.join()

    def run(self) -> int:
        """Serve until a signal (0) or a worker that could not start (3)."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            log.info("supervisor pid %d: starting %d workers", os.getpid(), len(self.slots))
            for slot in self.slots:
                self._start(slot)
            while not self._stopping:
                self._wait_once()
        finally:
            self._stopping = True
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._status


def serve(spec: ServeSpec, host: str, port: int, workers: int) -> int:
    """Bind (host, port) and serve with `workers` processes; the exit status."""
    try:
        sockets = listen_sockets(host, port, workers, spec.backlog)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return EXIT_STARTUP_FAILURE
    log.info("listening on http://%s:%d with %d worker process(es)", host, port, workers)
    if workers == 1:
        return 0 if run_worker(spec, sockets[0]) else EXIT_STARTUP_FAILURE
    return Supervisor(spec, sockets).run()
