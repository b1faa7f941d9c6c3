"""The whole native stack for end-to-end tests: real Postgres, collector, Prometheus, service.

One stack per test module (`stack` fixture), started with stack/launch.py's `Stack` on
free loopback ports in a run folder under run/ (kept after a failure for its logs, removed
after success unless INFERWATCH_KEEP_RUN=1). The helpers poll with deadlines; nothing here
sleeps and hopes. Missing binaries: a skip locally, a failure under CI=true.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from stack.launch import CACHE, ROOT, LaunchError, Options, Ports, Stack, find_pg_bin
from tests.fixtures.components import component_missing

T = TypeVar("T")


def require_stack_binaries() -> None:
    missing = [
        str(CACHE / "bin" / b)
        for b in ("otelcol-inferwatch", "prometheus")
        if not (CACHE / "bin" / b).exists()
    ]
    try:
        find_pg_bin()
    except LaunchError as exc:
        missing.append(str(exc))
    if not (ROOT / ".venv" / "bin" / "inferwatch").exists():
        missing.append(".venv/bin/inferwatch")
    if missing:
        component_missing(f"native stack incomplete (run stack/install.sh): {missing}")


def poll(fn: Callable[[], T | None], deadline_s: float, what: str, interval_s: float = 0.25) -> T:
    """Call fn until it returns something other than None/False; fail at the deadline."""
    end = time.monotonic() + deadline_s
    last: T | None = None
    while time.monotonic() < end:
        last = fn()
        if last is not None and last is not False:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what} (last: {last!r})")


class Prom:
    """A tiny Prometheus HTTP API client."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = self.http.get("/api/v1/query", params={"query": expr})
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        """The value of a one-element result, else None."""
        res = self.query(expr)
        if len(res) != 1:
            return None
        return float(res[0]["value"][1])

    def exemplars(self, expr: str, since_s: float = 900) -> list[dict[str, Any]]:
        now = time.time()
        r = self.http.get(
            "/api/v1/query_exemplars", params={"query": expr, "start": now - since_s, "end": now}
        )
        r.raise_for_status()
        data: list[dict[str, Any]] = r.json()["data"]
        return data

    def metric_names(self) -> set[str]:
        r = self.http.get("/api/v1/label/__name__/values")
        r.raise_for_status()
        return set(r.json()["data"])


def read_spans(traces_file: Path) -> list[dict[str, Any]]:
    """Every span in the collector's file exporter output (OTLP-JSON, one batch a line)."""
    spans: list[dict[str, Any]] = []
    if not traces_file.exists():
        return spans
    for line in traces_file.read_text().splitlines():
        if not line.strip():
            continue
        try:
            batch = json.loads(line)
        except json.JSONDecodeError:  # a line still being written
            continue
        for rs in batch.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                spans.extend(ss.get("spans", []))
    return spans


def span_attrs(span: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for a in span.get("attributes", []):
        ((_kind, value),) = a["value"].items()
        out[a["key"]] = value
    return out


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    require_stack_binaries()
    failed_before = request.session.testsfailed
    run_dir = ROOT / "run" / f"e2e-{uuid.uuid4().hex[:8]}"
    st = Stack(
        run_dir,
        Ports.free(),
        Options(
            collector=True,
            service_env={
                "INFERWATCH_ENVIRONMENT": "test",
            },
        ),
    )
    ok = False
    try:
        st.up()
        ok = True
        yield st
    finally:
        st.down()
        clean = ok and request.session.testsfailed == failed_before
        if clean and os.environ.get("INFERWATCH_KEEP_RUN") != "1":
            st.purge()
        else:
            print(f"\n[e2e] run folder kept for its logs: {run_dir}")


@pytest.fixture(scope="module")
def prom(stack: Stack) -> Prom:
    return Prom(stack.prometheus_url)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.service_url, timeout=30) as c:
        yield c
