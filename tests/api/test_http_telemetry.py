"""Our HTTP server instrumentation (inferwatch/telemetry/http.py, the default) and the switch.

Each mode makes exactly the spans it should; ours follows the stable HTTP conventions
on the span and on ``http.server.request.duration``, continues a caller's trace, marks
server errors (never client errors) and keeps metric attributes bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from time import time_ns
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from inferwatch.app import contrib_semconv_warning, create_app
from inferwatch.audit.sink import InMemoryAuditSink
from inferwatch.inference.loading import LoadedModel
from inferwatch.settings import Settings
from inferwatch.telemetry import instruments as names
from tests.fixtures.api import FinishedSpans, Harness, attributes_of, make_harness

boom = APIRouter()


@boom.get("/v1/boom")
async def explode() -> None:
    raise RuntimeError("kaboom")


@pytest.fixture
def harness_with_boom(small_model: LoadedModel) -> Iterator[Harness]:
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    audit = InMemoryAuditSink()
    app = create_app(
        Settings(environment="test", otlp_enabled=False),
        model=small_model,
        audit_sink=audit,
        span_processors=[SimpleSpanProcessor(spans)],
        metric_readers=[reader],
    )
    app.include_router(boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Harness(client, FinishedSpans(spans), reader, audit, small_model)


def http_points(harness: Harness) -> list[Any]:
    data = harness.metrics.get_metrics_data()
    assert data is not None
    return [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == names.HTTP_SERVER_DURATION
        for p in m.data.data_points
    ]


@pytest.mark.parametrize("mode", ["inferwatch", "otel-contrib"])
def test_each_mode_makes_one_server_span_per_request(
    small_model: LoadedModel, valid_features: dict[str, Any], mode: str
) -> None:
    """contrib configured fairly: no ASGI receive/send child spans; besides the server
    spans only the micro-batcher's batch spans (INTERNAL, linked, roots of their own)."""
    for h in make_harness(small_model, http_instrumentation=mode):
        for _ in range(3):
            assert h.client.post("/v1/predict", json={"features": valid_features}).is_success
        assert h.client.get("/healthz").is_success  # probes are not traced
        spans = h.spans.server()
        assert [(s.name, s.kind) for s in spans] == [("POST /v1/predict", SpanKind.SERVER)] * 3
        others = [s for s in h.spans.get_finished_spans() if s.kind != SpanKind.SERVER]
        assert [(s.kind, s.parent) for s in others] == [(SpanKind.INTERNAL, None)] * 3
        for span in spans:  # the prediction is on the server span whichever ends it
            assert span.attributes is not None
            assert span.attributes[names.ATTR_MODEL_NAME] == small_model.metadata.name
            assert span.attributes[names.ATTR_PREDICTION_CLASS] in (0, 1)
        if mode == "inferwatch":  # contrib names its histogram by OTEL_SEMCONV_STABILITY_OPT_IN
            (point,) = http_points(h)
            assert point.count == 3


def test_no_http_instrumentation_makes_no_span(
    small_model: LoadedModel, valid_features: dict[str, Any]
) -> None:
    for h in make_harness(small_model, http_instrumentation="none"):
        resp = h.client.post("/v1/predict", json={"features": valid_features})
        assert resp.is_success
        assert h.spans.server() == ()
        assert http_points(h) == []


def test_span_and_metric_follow_the_stable_http_conventions(
    harness: Harness, valid_features: dict[str, Any]
) -> None:
    assert harness.client.post("/v1/predict", json={"features": valid_features}).status_code == 200
    (span,) = harness.spans.server()
    attrs = dict(span.attributes or {})
    assert {k: attrs[k] for k in attrs if not k.startswith(("inferwatch.", "model.", "pred"))} == {
        "http.request.method": "POST",
        "url.scheme": "http",
        "url.path": "/v1/predict",
        "network.protocol.version": "1.1",
        "http.route": "/v1/predict",
        "http.response.status_code": 200,
    }
    assert span.status.status_code == StatusCode.UNSET
    assert span.parent is None
    (point,) = http_points(harness)
    assert dict(point.attributes) == {
        "http.request.method": "POST",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.route": "/v1/predict",
        "http.response.status_code": 200,
    }
    # exemplars only on the inference histogram (telemetry/setup.py exemplar_views)
    assert point.exemplars == []


def test_a_callers_traceparent_is_continued(
    harness: Harness, valid_features: dict[str, Any]
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    resp = harness.client.post(
        "/v1/predict",
        json={"features": valid_features},
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    assert resp.json()["trace_id"] == trace_id
    (span,) = harness.spans.server()
    assert span.parent is not None
    assert span.parent.is_remote
    assert format(span.parent.span_id, "016x") == parent_id


def test_client_errors_are_not_span_errors(harness: Harness) -> None:
    assert harness.client.post("/v1/predict", json={"features": {}}).status_code == 422
    assert harness.client.get("/no/such/path/123").status_code == 404
    spans = {s.name: s for s in harness.spans.server()}
    assert set(spans) == {"POST /v1/predict", "GET"}  # no route: method only
    assert attributes_of(spans["POST /v1/predict"])["http.response.status_code"] == 422
    assert "http.route" not in attributes_of(spans["GET"])  # never the raw path on a route
    assert all(s.status.status_code == StatusCode.UNSET for s in spans.values())
    assert all("error.type" not in attributes_of(p) for p in http_points(harness))


def test_an_unhandled_exception_is_a_server_error_on_span_and_metric(
    harness_with_boom: Harness,
) -> None:
    h = harness_with_boom
    assert h.client.get("/v1/boom").status_code == 500
    (span,) = h.spans.server()
    assert span.name == "GET /v1/boom"
    assert span.status.status_code == StatusCode.ERROR
    assert attributes_of(span)["error.type"] == "RuntimeError"
    assert attributes_of(span)["http.response.status_code"] == 500
    assert [e.name for e in span.events] == ["exception"]
    (point,) = http_points(h)
    assert attributes_of(point)["error.type"] == "RuntimeError"
    assert attributes_of(point)["http.response.status_code"] == 500


def test_unknown_methods_are_bounded_on_metrics(harness: Harness) -> None:
    resp = harness.client.request("FROB", "/v1/predict")
    assert resp.status_code == 405
    (span,) = harness.spans.server()
    assert span.name == "HTTP /v1/predict"
    assert attributes_of(span)["http.request.method"] == "_OTHER"
    assert attributes_of(span)["http.request.method_original"] == "FROB"
    (point,) = http_points(harness)
    assert attributes_of(point)["http.request.method"] == "_OTHER"


def test_a_span_finished_at_the_drain_keeps_the_requests_end_time(
    harness: Harness, valid_features: dict[str, Any]
) -> None:
    before = time_ns()
    resp = harness.client.post("/v1/predict", json={"features": valid_features})
    answered = time_ns()
    (span,) = harness.spans.server()  # drained only now, after `answered`
    assert resp.status_code == 200
    assert span.start_time is not None
    assert span.end_time is not None
    assert before <= span.start_time <= span.end_time <= answered
    attrs = dict(span.attributes or {})
    # the route's prediction attributes, queued before the end, are on the span
    assert attrs[names.ATTR_PREDICTION_ID] == resp.json()["prediction_id"]
    assert attrs["http.route"] == "/v1/predict"
    assert span.name == "POST /v1/predict"


def test_otel_contrib_mode_warns_without_the_stable_http_opt_in() -> None:
    opt_in = "OTEL_SEMCONV_STABILITY_OPT_IN"
    for missing in ({}, {opt_in: ""}, {opt_in: "database"}, {opt_in: "https"}):
        warning = contrib_semconv_warning(missing)
        assert warning is not None
        assert f"{opt_in}=http" in warning
    for given in ("http", "http/dup", "database, http"):
        assert contrib_semconv_warning({opt_in: given}) is None


# In a child process: contrib's instrumentation reads the opt-in once per process.
_CONTRIB_CHILD = """
import logging, os, sys
from pathlib import Path
from fastapi.testclient import TestClient
from inferwatch.app import create_app
from inferwatch.audit.sink import InMemoryAuditSink
from inferwatch.inference.loading import load_model
from inferwatch.settings import Settings

logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
app = create_app(
    Settings(environment="test", otlp_enabled=False, http_instrumentation="otel-contrib"),
    model=load_model(Path(sys.argv[1])), audit_sink=InMemoryAuditSink(), span_processors=[],
)
with TestClient(app) as client:
    assert client.get("/readyz").status_code == 200
print("opt-in:", os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN"))
"""


def test_otel_contrib_start_up_warns_and_never_writes_the_environment(
    small_model: LoadedModel,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OTEL_SEMCONV_STABILITY_OPT_IN"}
    out = subprocess.run(
        [sys.executable, "-c", _CONTRIB_CHILD, str(small_model.path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "WARNING INFERWATCH_HTTP_INSTRUMENTATION=otel-contrib without" in out
    assert "opt-in: None" in out
