"""Histograms on both metric paths: /metrics (pull) and OTLP (push), from one provider.

The pull reader can only render explicit-bucket histograms; the Prometheus rules need
OTLP's native (exponential) ones. The duration histograms carry their explicit buckets
as advisory boundaries (service/inferwatch/telemetry/instruments.py), so each reader
aggregates its own way: checked with the pull endpoint alone, and with both paths on
(OTLP to a local receiver, which also gets the request's server span).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from inferwatch.app import create_app
from inferwatch.audit.sink import InMemoryAuditSink
from inferwatch.inference.loading import LoadedModel
from inferwatch.settings import Settings
from inferwatch.telemetry import instruments as names
from tests.fixtures.otlp import OtlpSink

DURATIONS = (names.INFERENCE_DURATION, names.HTTP_SERVER_DURATION)


def bucket_bounds(exposition: str, metric: str) -> set[float]:
    """The `le` bounds of one histogram's buckets in a Prometheus text exposition."""
    prefix = f"{names.prometheus_name(metric)}_bucket{{"
    bounds = set()
    for line in exposition.splitlines():
        if line.startswith(prefix):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bounds.add(float(le))
    return bounds


def predict_and_scrape(settings: Settings, model: LoadedModel, features: dict[str, Any]) -> str:
    app = create_app(settings, model=model, audit_sink=InMemoryAuditSink())
    with TestClient(app) as client:  # leaving it shuts the providers down: the last export
        assert client.post("/v1/predict", json={"features": features}).status_code == 200
        scraped = client.get("/metrics")
        assert scraped.status_code == 200
    text: str = scraped.text
    return text


def test_the_pull_endpoint_has_the_duration_buckets(
    small_model: LoadedModel, valid_features: dict[str, Any]
) -> None:
    text = predict_and_scrape(
        Settings(environment="test", otlp_enabled=False), small_model, valid_features
    )
    for metric in DURATIONS:
        assert bucket_bounds(text, metric) == {*names.DURATION_BUCKETS_S, math.inf}, metric


def test_with_both_paths_otlp_keeps_native_histograms(
    small_model: LoadedModel,
    valid_features: dict[str, Any],
    otlp_sink: OtlpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_sink.base)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    for var in ("TRACES_ENDPOINT", "METRICS_ENDPOINT", "COMPRESSION", "TRACES_COMPRESSION"):
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{var}", raising=False)
    settings = Settings(environment="test", otlp_enabled=True, metrics_endpoint="on")
    text = predict_and_scrape(settings, small_model, valid_features)

    for metric in DURATIONS:
        assert bucket_bounds(text, metric) == {*names.DURATION_BUCKETS_S, math.inf}, metric
    pushed = {
        m.name: m
        for request in otlp_sink.messages("/v1/metrics", ExportMetricsServiceRequest.FromString)
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    for metric in DURATIONS:
        assert pushed[metric].WhichOneof("data") == "exponential_histogram", metric
        (point,) = pushed[metric].exponential_histogram.data_points
        assert point.count == 1
    # the span went through our exporter (service/inferwatch/telemetry/otlp_spans.py)
    spans = [
        span
        for request in otlp_sink.messages("/v1/traces", ExportTraceServiceRequest.FromString)
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    (server,) = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert names.ATTR_PREDICTION_ID in {kv.key for kv in server.attributes}
