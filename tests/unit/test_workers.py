"""The listening sockets of `inferwatch serve` and its worker-count setting.

- every connection a worker accepts has TCP_NODELAY, whatever the event loop: the socket
  uvicorn makes for its own workers does not under asyncio (the control case), ours does;
  and the loop every worker runs sets it by itself too;
- N sockets with SO_REUSEPORT: the kernel spreads connections over all of them; a port
  that anybody holds, a second service's SO_REUSEPORT group included, is refused;
- ``INFERWATCH_WORKERS`` and ``--workers``: a number or ``auto`` (the usable CPUs); one
  worker while GET /metrics is served, and more refused there when asked for.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from collections.abc import Callable

import pytest
import typer
import uvicorn
from pydantic import ValidationError

from inferwatch.cli import parse_workers, worker_count
from inferwatch.settings import Settings
from inferwatch.workers import SERVE_LOOP, cpu_count, listen_sockets, resolve_workers
from stack.procs import free_ports


def _uvicorn_worker_socket() -> socket.socket:
    """A listening socket made as uvicorn makes the one its workers share
    (``Config.bind_socket``: ``socket.socket(family)``, protocol 0, no TCP_NODELAY)."""
    sock = socket.socket(socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def _accepted_nodelay(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    sockets: list[socket.socket],
    connections: int = 1,
) -> list[int]:
    """TCP_NODELAY of each connection the loop accepted on `sockets` (all bound to one
    address; with SO_REUSEPORT the kernel picks which accepts), as its transport has it."""

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        seen: list[int] = []
        done = asyncio.Event()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                conn = transport.get_extra_info("socket")
                seen.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                if len(seen) == connections:
                    done.set()

        servers = [await loop.create_server(Probe, sock=s) for s in sockets]
        host, port = sockets[0].getsockname()[:2]
        writers = [(await asyncio.open_connection(host, port))[1] for _ in range(connections)]
        try:
            await asyncio.wait_for(done.wait(), 10)
            return seen
        finally:
            for w in writers:
                w.close()
            for server in servers:
                server.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def test_accepted_connections_have_tcp_nodelay_under_asyncio() -> None:
    # the trap: asyncio leaves Nagle's algorithm on for uvicorn's worker socket
    assert _accepted_nodelay(asyncio.new_event_loop, [_uvicorn_worker_socket()]) == [0]
    for n in (1, 2):
        sockets = listen_sockets("127.0.0.1", 0 if n == 1 else free_ports(1)[0], n)
        try:
            assert _accepted_nodelay(asyncio.new_event_loop, sockets, 8) == [1] * 8
        finally:
            for s in sockets:
                s.close()


def test_the_serving_event_loop_sets_tcp_nodelay_on_its_own() -> None:
    """The loop uvicorn builds for SERVE_LOOP disables Nagle even on uvicorn's socket."""
    factory = uvicorn.Config("inferwatch.asgi:create", loop=SERVE_LOOP).get_loop_factory()
    assert factory is not None
    assert _accepted_nodelay(factory, [_uvicorn_worker_socket()]) == [1]


def test_reuseport_sockets_all_receive_connections() -> None:
    port = free_ports(1)[0]
    sockets = listen_sockets("127.0.0.1", port, 2)
    clients = []
    try:
        for _ in range(64):
            clients.append(socket.create_connection(("127.0.0.1", port)))
        per_socket: Counter[int] = Counter()
        for i, sock in enumerate(sockets):
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                per_socket[i] += 1
        # by a hash of the addresses: all 64 on one socket has a chance of 2**-63
        assert sum(per_socket.values()) == 64
        assert per_socket[0] > 0, per_socket
        assert per_socket[1] > 0, per_socket
    finally:
        for c in clients:
            c.close()
        for s in sockets:
            s.close()


def test_a_taken_port_is_refused_even_to_another_reuseport_group() -> None:
    port = free_ports(1)[0]
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", port))
        plain.listen(1)
        with pytest.raises(OSError, match="in use"):
            listen_sockets("127.0.0.1", port, 2)
        with pytest.raises(OSError, match="in use"):
            listen_sockets("127.0.0.1", port, 1)
    first = listen_sockets("127.0.0.1", port, 2)
    try:
        # a second service of the same user on the same port
        with pytest.raises(OSError, match="in use"):
            listen_sockets("127.0.0.1", port, 2)
    finally:
        for s in first:
            s.close()


def test_workers_setting_takes_a_number_or_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERWATCH_WORKERS", "3")
    assert Settings().workers == 3
    monkeypatch.setenv("INFERWATCH_WORKERS", "auto")
    assert Settings().workers == "auto"
    assert resolve_workers("auto") == cpu_count() == len(os.sched_getaffinity(0))
    for bad in ("0", "65", "many"):
        monkeypatch.setenv("INFERWATCH_WORKERS", bad)
        with pytest.raises(ValidationError):
            Settings()


def test_workers_option_takes_a_number_or_auto() -> None:
    assert parse_workers("2") == 2
    assert parse_workers("auto") == "auto"
    for bad in ("0", "65", "two", ""):
        with pytest.raises(typer.BadParameter):
            parse_workers(bad)


def test_one_worker_while_metrics_are_pulled_and_more_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INFERWATCH_WORKERS", raising=False)
    monkeypatch.delenv("INFERWATCH_METRICS_ENDPOINT", raising=False)
    monkeypatch.delenv("INFERWATCH_OTLP_ENABLED", raising=False)
    assert worker_count(Settings(), None) == 2  # the default, with OTLP export
    assert worker_count(Settings(), "auto") == cpu_count()
    pull = Settings(otlp_enabled=False)  # GET /metrics on ("auto"): the no-collector path
    assert worker_count(pull, None) == 1
    assert worker_count(pull, "1") == 1
    with pytest.raises(typer.BadParameter, match="need OTLP export"):
        worker_count(pull, "2")
    monkeypatch.setenv("INFERWATCH_WORKERS", "2")
    with pytest.raises(typer.BadParameter, match="need OTLP export"):
        worker_count(Settings(otlp_enabled=False), None)
    assert worker_count(Settings(otlp_enabled=False, metrics_endpoint="off"), None) == 2
    with pytest.raises(typer.BadParameter, match="need OTLP export"):
        worker_count(Settings(metrics_endpoint="on"), None)
