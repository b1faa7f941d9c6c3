"""`inferwatch serve --workers 2` as a real process tree (no collector, no Postgres).

- each worker holds its own audit spool slot: both slot locks are held while it serves, and
  every prediction id is in exactly one slot, each slot holding some (both workers served);
- a keep-alive response is never held back by Nagle's algorithm: the body follows the
  head at once (with Nagle it waits for the client's delayed ACK, about 40 ms);
- a worker that dies is replaced on its socket, and requests keep being answered;
- the supervisor stopped by SIGTERM stops its workers; killed (SIGKILL), it leaves none;
- a worker that cannot start stops the whole service with exit status 3.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferwatch.audit.encoding import KIND_PREDICTION, split_tuples, tuple_key
from inferwatch.audit.spool import iter_frames
from inferwatch.inference.data import generate_transactions
from inferwatch.inference.loading import METADATA_NAME, LoadedModel
from stack.procs import free_ports, pid_alive, poll, spawn, terminate, venv_bin
from tests.fixtures.serve import read_response, serving

pytestmark = pytest.mark.integration

# `serving` turns OTLP export off; GET /metrics goes too, or two workers are refused
NO_PULL = {"INFERWATCH_METRICS_ENDPOINT": "off"}
READY = re.compile(r"worker (\d+) \(pid (\d+)\) ready")
SUPERVISOR = re.compile(r"supervisor pid (\d+)")


def model_dir(model: LoadedModel) -> Path:
    return model.path.parent.parent  # <dir>/<name>/<version>


def ready_workers(log: Path) -> dict[int, int]:
    """worker index -> pid of its newest process that reported ready (the supervisor's log)."""
    return {int(i): int(pid) for i, pid in READY.findall(log.read_text(errors="replace"))}


def both_ready(log: Path) -> dict[int, int] | None:
    workers = ready_workers(log)
    return workers if len(workers) == 2 else None


def gone(pid: int) -> Callable[[], bool]:
    return lambda: not pid_alive(pid)


def slot_held(slot: Path) -> bool:
    """Whether a live process holds this spool slot's lock."""
    fd = os.open(slot / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases it if we got it
    return False


def spooled_ids(spool: Path) -> dict[str, list[str]]:
    """slot name -> the prediction ids in its segments."""
    out: dict[str, list[str]] = {}
    for slot in sorted(spool.glob("slot-*")):
        ids = [
            tuple_key(KIND_PREDICTION, t)
            for seg in sorted(slot.glob("seg-*.log"))
            for frame in iter_frames(seg.read_bytes())
            if frame.kind == KIND_PREDICTION
            for t in split_tuples(frame.payload)
        ]
        if ids:
            out[slot.name] = ids
    return out


def bodies(n: int) -> list[dict[str, Any]]:
    rows, _ = generate_transactions(n, seed=11)
    return [{"features": r} for r in rows]


def response_spread_ms(port: int, body: bytes, n: int) -> list[float]:
    """For `n` requests over one keep-alive connection: ms from the response's first byte to
    its last. The server writes head and body back to back; only Nagle's algorithm (waiting
    for the ACK of the head) puts time between them."""
    request = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    spreads = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        for _ in range(n):
            conn.sendall(request)
            data = conn.recv(65536)
            first = time.perf_counter()
            head, body = read_response(conn, data)
            spreads.append((time.perf_counter() - first) * 1000)
            assert head.startswith(b"HTTP/1.1 200"), head
            json.loads(body)
    return spreads


def send(url: str, payloads: list[dict[str, Any]]) -> list[str]:
    """Half on a fresh connection each, half over one keep-alive connection; the ids."""
    ids = []
    half = len(payloads) // 2
    for body in payloads[:half]:
        r = httpx.post(f"{url}/v1/predict", json=body, timeout=30)
        assert r.status_code == 200, r.text
        ids.append(r.json()["prediction_id"])
    with httpx.Client(base_url=url, timeout=30) as keep_alive:
        for body in payloads[half:]:
            r = keep_alive.post("/v1/predict", json=body)
            assert r.status_code == 200, r.text
            ids.append(r.json()["prediction_id"])
    return ids


@pytest.mark.slow
def test_two_workers_slots_nagle_and_replacement(small_model: LoadedModel, tmp_path: Path) -> None:
    """One service for all four promises (each start of two workers costs seconds)."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    log, spool = tmp_path / "serve.log", tmp_path / "spool"
    payloads = bodies(140)
    with serving(
        model_dir(small_model), tmp_path, ["--workers", "2", "--port", str(port)], NO_PULL, url
    ):
        first = poll(lambda: both_ready(log), 90, "both workers ready")
        # each worker holds a spool slot of its own
        assert slot_held(spool / "slot-0")
        assert slot_held(spool / "slot-1")

        # no keep-alive response waits for a delayed ACK (Nagle: about 40 ms, every request)
        body = json.dumps(payloads[0]).encode()
        spreads = response_spread_ms(port, body, 30)[5:]  # after the connection's quick ACKs
        assert statistics.median(spreads) < 10, spreads

        # both workers serve, and every record lands in exactly one slot (spool-only writers)
        ids = send(url, payloads[:120])

        def all_spooled() -> dict[str, list[str]] | None:
            per_slot = spooled_ids(spool)
            return per_slot if sum(map(len, per_slot.values())) >= len(ids) + 30 else None

        per_slot = poll(all_spooled, 30, "every record in the spool")
        assert sorted(per_slot) == ["slot-0", "slot-1"]
        stored = [i for slot_ids in per_slot.values() for i in slot_ids]
        assert len(stored) == len(set(stored)) == len(ids) + 30  # each once, in one slot
        assert set(ids) <= set(stored)

        # a worker that dies is replaced on its socket; the other one keeps serving
        os.kill(first[0], signal.SIGKILL)

        def replacement() -> dict[int, int] | None:
            w = ready_workers(log)
            return w if w.get(0) not in (None, first[0]) else None

        replaced = poll(replacement, 90, "worker 0 replaced")
        assert replaced[1] == first[1]
        send(url, payloads[120:])  # fresh connections reach both sockets again
        assert "worker 0 exited (status -9): starting a replacement" in log.read_text()

        # SIGTERM to the supervisor alone (not its group): it stops both workers
        match = SUPERVISOR.search(log.read_text())
        assert match is not None
        os.kill(int(match.group(1)), signal.SIGTERM)
        for pid in (int(match.group(1)), *replaced.values()):
            poll(gone(pid), 60, f"pid {pid} gone")


def clean_env(tmp_path: Path, model_dir: Path) -> dict[str, str]:
    """`serving`'s environment, for a service this module starts and stops itself."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("INFERWATCH_", "OTEL_"))},
        "INFERWATCH_ENVIRONMENT": "test",
        "INFERWATCH_MODEL_DIR": str(model_dir),
        "INFERWATCH_TRAIN_IF_MISSING": "false",
        "INFERWATCH_OTLP_ENABLED": "false",
        "INFERWATCH_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
        **NO_PULL,
    }


def test_a_killed_supervisor_leaves_no_worker(small_model: LoadedModel, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    log = tmp_path / "serve.log"
    argv = [str(venv_bin("inferwatch")), "serve", "--workers", "2", "--port", str(port)]
    proc = spawn(argv, env=clean_env(tmp_path, model_dir(small_model)), cwd=tmp_path, log=log)
    try:
        workers = poll(lambda: both_ready(log), 90, "both workers ready", log=log)
        proc.kill()  # SIGKILL: no chance to stop anything; the kernel tells the workers
        proc.wait(10)
        for pid in workers.values():
            poll(gone(pid), 60, f"worker pid {pid} gone")
    finally:
        terminate(proc.pid)  # the group: whatever is left


def test_a_worker_that_cannot_start_stops_the_service(
    small_model: LoadedModel, tmp_path: Path
) -> None:
    """A model version with metadata but no artifact: found by the CLI, unloadable."""
    broken = tmp_path / "models" / small_model.metadata.name / "broken"
    broken.mkdir(parents=True)
    (broken / METADATA_NAME).write_bytes((small_model.path / METADATA_NAME).read_bytes())
    (port,) = free_ports(1)
    log = tmp_path / "serve.log"
    env = clean_env(tmp_path, tmp_path / "models")
    argv = [str(venv_bin("inferwatch")), "serve", "--workers", "2", "--port", str(port)]
    proc = spawn(argv, env=env, cwd=tmp_path, log=log)
    try:
        poll(lambda: proc.poll() is not None, 120, "the service to give up", log=log)
    finally:
        terminate(proc.pid)
    assert proc.returncode == 3, log.read_text()
    assert "before it was ready" in log.read_text()
