"""The native launcher's own promises: a busy port is a clear error (no hang), `down` leaves
no process behind (Jaeger and the analysis job included), and the no-collector path
(Prometheus scrapes the service's /metrics) feeds the same recording rules."""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from inferwatch.inference.data import generate_transactions
from inferwatch.telemetry import instruments as names
from stack.launch import COMPONENTS, COMPONENTS_NO_COLLECTOR, Options, Ports, Stack
from stack.procs import ROOT, LaunchError, pid_alive, poll
from tests.fixtures.stack import Prom, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.mark.slow  # a wall-clock bound: no hang
def test_port_in_use_is_a_clear_error_not_a_hang() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = Ports.free()
        stack = Stack(
            ROOT / "run" / f"busy-{uuid.uuid4().hex[:8]}",
            dataclasses.replace(ports, prometheus=port),
        )
        t0 = time.monotonic()
        with pytest.raises(LaunchError, match=rf"PROMETHEUS_PORT={port}"):
            stack.start_prometheus()
        assert time.monotonic() - t0 < 2
    stack.purge()


NO_COLLECTOR = Options(collector=False, service_env={"INFERWATCH_ENVIRONMENT": "test"})


@pytest.fixture(scope="module")
def scrape_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    with running_stack(request, "e2e-nocol", NO_COLLECTOR) as st:
        yield st


@pytest.mark.slow
def test_no_collector_path_feeds_the_same_rules(scrape_stack: Stack) -> None:
    prom = Prom(scrape_stack.prometheus_url)
    rows, _ = generate_transactions(51, seed=11)
    count = f'sum({names.prometheus_name(names.INFERENCE_DURATION)}_count{{job="inferwatch"}})'
    with httpx.Client(base_url=scrape_stack.service_url, timeout=30) as c:
        # one first, so the series exists before the 50 (rate() counts from its first sample)
        assert c.post("/v1/predict", json={"features": rows[0]}).status_code == 200
        poll(lambda: prom.scalar(count) == 1, 60, "the first prediction scraped")
        for row in rows[1:]:
            assert c.post("/v1/predict", json={"features": row}).status_code == 200
    poll(lambda: prom.scalar(count) == 51, 60, "51 predictions scraped from /metrics")

    def p99() -> float | None:
        v = prom.scalar("inferwatch:inference_latency:p99_5m")
        return v if v is not None and v == v else None  # not NaN

    # the recording rule's classic-histogram fallback gives the P99 per model version
    assert 0 < poll(p99, 60, "P99 recorded from the classic histogram") < 10
    assert prom.query('up{job="otelcol"}') == []  # no collector in this stack
    # nor Jaeger or the analysis job: nothing would carry their data
    running = {s.name for s in scrape_stack.status() if s.running}
    assert running == set(COMPONENTS_NO_COLLECTOR)
    assert scrape_stack.pid("jaeger") is None
    assert scrape_stack.pid("analysis") is None


def test_down_leaves_no_process(request: pytest.FixtureRequest) -> None:
    options = Options(collector=True, service_env={"INFERWATCH_ENVIRONMENT": "test"})
    with running_stack(request, "e2e-down", options) as st:  # its own: `down` ends it
        pids = {s.name: s.pid for s in st.status() if s.running}
        assert set(pids) == set(COMPONENTS)
        st.down()
        for name, pid in pids.items():
            assert pid is not None

            def gone(p: int = pid) -> bool:
                return not pid_alive(p)

            poll(gone, 10, f"{name} (pid {pid}) gone")
        assert not any(s.running for s in st.status())
