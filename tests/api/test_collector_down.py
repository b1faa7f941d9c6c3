"""An unreachable or hanging collector never blocks, slows or fails a prediction.

The real OTLP exporters (BatchSpanProcessor + PeriodicExportingMetricReader) point at
a closed port, and at a port that accepts connections but never answers. Requests
must all succeed, with latency in the same budget as with telemetry off, and the
app must shut down within its bounded telemetry deadline.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inferwatch.app import create_app
from inferwatch.audit.sink import InMemoryAuditSink
from inferwatch.inference.loading import LoadedModel
from inferwatch.settings import Settings
from stack.procs import free_ports

REQUESTS = 300


@pytest.fixture
def blackhole() -> Iterator[int]:
    """Accepts TCP connections and never answers (a hung collector)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join(2)
    for c in conns:
        c.close()
    srv.close()


def interleaved_runs(
    settings_a: Settings, settings_b: Settings, model: LoadedModel, body: dict[str, Any]
) -> tuple[list[float], list[float], float]:
    """Alternate requests between two apps so that machine noise hits both alike."""
    app_a = create_app(settings_a, model=model, audit_sink=InMemoryAuditSink())
    app_b = create_app(settings_b, model=model, audit_sink=InMemoryAuditSink())
    lat_a: list[float] = []
    lat_b: list[float] = []
    with TestClient(app_a) as client_a:
        client_b = TestClient(app_b)
        client_b.__enter__()
        try:
            for _ in range(20):  # warm-up
                client_a.post("/v1/predict", json=body)
                client_b.post("/v1/predict", json=body)
            for _ in range(REQUESTS):
                for client, out in ((client_a, lat_a), (client_b, lat_b)):
                    t0 = time.perf_counter()
                    resp = client.post("/v1/predict", json=body)
                    out.append(time.perf_counter() - t0)
                    assert resp.status_code == 200, resp.text
        finally:
            t0 = time.perf_counter()
            client_b.__exit__(None, None, None)
            shutdown_b = time.perf_counter() - t0
    return lat_a, lat_b, shutdown_b


def p(xs: list[float], q: float) -> float:
    return sorted(xs)[int(q * (len(xs) - 1))]


@pytest.mark.slow  # latency compared with wall-clock timings
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
@pytest.mark.parametrize("collector", ["closed", "hanging"])
def test_collector_faults_do_not_touch_requests(
    small_model: LoadedModel,
    valid_features: dict[str, Any],
    blackhole: int,
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
    collector: str,
) -> None:
    port = free_ports(1)[0] if collector == "closed" else blackhole
    scheme_port = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", scheme_port)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    body = {"features": valid_features}
    off, on, shutdown = interleaved_runs(
        Settings(environment="test", telemetry_enabled=False),
        Settings(environment="test", otlp_enabled=True, telemetry_shutdown_timeout_s=2.0),
        small_model,
        body,
    )
    # Every request succeeded (asserted in timed_run). No request waited on an export
    # (an export attempt against a dead collector blocks for seconds), and the
    # median stays in the telemetry-off budget (+2 ms, loose for a busy CI machine).
    assert max(on) < 1.0, f"a request blocked for {max(on):.3f}s"
    assert statistics.median(on) < 1.5 * statistics.median(off) + 0.002, (
        statistics.median(on),
        statistics.median(off),
    )
    assert p(on, 0.99) < p(off, 0.99) + 0.05
    # shutdown is bounded even though nothing can be flushed
    assert shutdown < 2.0 + 1.5, shutdown
