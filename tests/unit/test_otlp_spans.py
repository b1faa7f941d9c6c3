"""service/inferwatch/telemetry/otlp_spans.py: the encoder says exactly what the SDK's says,
and the exporter delivers it the way an OTLP/HTTP exporter must.

Encoder: equality is checked on parsed messages (``ExportTraceServiceRequest.FromString(ours)
== encode_spans(spans)``) and on deterministic re-serialisations, over real SDK spans:
hand-picked shapes (events, links, remote parents, trace state, error status, several
resources and scopes, values the SDK skips) and hypothesis-generated attribute sets.

Transport: against a local HTTP server in a thread that answers from a script: the
``OTEL_*`` configuration, headers, gzip, one keep-alive connection, retries on 503/429
and connection errors within the timeout, no retry on 400, shutdown.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from inferwatch.telemetry.otlp_spans import OtlpHttpConfig, OtlpHttpSpanExporter, SpanEncoder
from stack.procs import free_ports, poll
from tests.fixtures.otlp import OtlpSink


def assert_same(spans: Sequence[ReadableSpan], encoder: SpanEncoder | None = None) -> bytes:
    ours = (encoder or SpanEncoder()).encode_request(spans)
    reference = encode_spans(spans)
    parsed = ExportTraceServiceRequest.FromString(ours)
    assert parsed.SerializeToString(deterministic=True) == reference.SerializeToString(
        deterministic=True
    )
    if not _has_nan(reference):
        assert parsed == reference
    return ours


def _has_nan(msg: ExportTraceServiceRequest) -> bool:
    return "nan" in str(msg).lower()


def record(
    resource: Resource | None = None, scope: str = "test"
) -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource or Resource.create({"service.name": "t"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer(scope, "1.2.3"), exporter


def test_prediction_like_server_spans() -> None:
    tracer, exporter = record()
    for i in range(50):
        with tracer.start_as_current_span(
            "POST /v1/predict",
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": "/v1/predict"},
        ) as span:
            span.set_attributes(
                {
                    "inferwatch.prediction.id": f"01a2-{i}",
                    "prediction.class": i % 2,
                    "inferwatch.prediction.probability": i / 50,
                    "http.response.status_code": 200,
                    "card_present": i % 3 == 0,
                }
            )
    assert_same(exporter.get_finished_spans())


def test_every_span_field() -> None:
    tracer, exporter = record()
    remote = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "v1"), ("other", "x")]),
    )
    linked = SpanContext(trace_id=7, span_id=9, is_remote=False)
    with tracer.start_as_current_span(
        "parent",
        context=set_span_in_context(NonRecordingSpan(remote)),
        links=[Link(linked, {"link.attr": "l", "n": 3}), Link(remote)],
    ) as parent:
        parent.add_event("evt", {"a": 1, "b": [1.5, 2.5], "c": ("x", "y")})
        parent.add_event("bare")
        parent.set_status(Status(StatusCode.ERROR, "it broke"))
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.set_attribute("empty", "")
            child.set_attribute("big", 2**62)
            child.set_attribute("negative", -42)
            child.set_attribute("unicode", "Zürich \u2013 東京 \U0001f600")
            child.set_attribute("floats", [0.0, -0.0, math.inf, 1e-300])
            child.set_attribute("bools", [True, False])
            child.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span("internal", kind=SpanKind.INTERNAL):
            pass
    for kind in (SpanKind.PRODUCER, SpanKind.CONSUMER):
        tracer.start_span("k", kind=kind).end()
    assert_same(exporter.get_finished_spans())


def test_several_resources_and_scopes_group_like_the_sdk() -> None:
    spans: list[ReadableSpan] = []
    same = Resource.create({"service.name": "a", "k": 1})
    for resource, scope in (
        (same, "s1"),
        (Resource.create({"service.name": "b"}), "s1"),
        (same, "s2"),
        (Resource.create({"service.name": "a", "k": 1}), "s1"),  # equal, not identical
    ):
        tracer, exporter = record(resource, scope)
        with tracer.start_as_current_span("x"):
            pass
        spans.extend(exporter.get_finished_spans())
    ours = assert_same(spans)
    assert len(ExportTraceServiceRequest.FromString(ours).resource_spans) == 2


def test_unencodable_values_are_skipped_like_the_sdk(caplog: pytest.LogCaptureFixture) -> None:
    tracer, exporter = record()
    with tracer.start_as_current_span("x") as span:
        span.set_attribute("too.big", 2**70)  # beyond int64: the SDK logs and skips it
        span.set_attribute("kept", "yes")
    assert_same(exporter.get_finished_spans())
    assert "too.big" in caplog.text


attribute_values = st.one_of(
    st.text(max_size=40),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=8), max_size=4),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4),
    st.lists(st.floats(allow_nan=False), max_size=4),
    st.lists(st.booleans(), max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.text(min_size=1, max_size=20), attribute_values, max_size=12),
        min_size=1,
        max_size=6,
    ),
    st.text(max_size=30),
)
def test_generated_attribute_sets(attribute_sets: list[dict[str, Any]], name: str) -> None:
    tracer, exporter = record()
    encoder = SpanEncoder()  # one encoder across examples: its caches must not leak
    for attrs in attribute_sets:
        with tracer.start_as_current_span(name or "n", attributes=attrs):
            pass
    spans = exporter.get_finished_spans()
    assert_same(spans, encoder)
    assert_same(spans, encoder)  # second time from the caches


def some_spans(n: int = 20) -> tuple[ReadableSpan, ...]:
    tracer, exporter = record()
    for i in range(n):
        with tracer.start_as_current_span(f"s{i}", attributes={"i": i, "route": "/v1/predict"}):
            pass
    return exporter.get_finished_spans()


ExporterFactory = Callable[..., OtlpHttpSpanExporter]


@pytest.fixture
def make_exporter(otlp_sink: OtlpSink) -> Iterator[ExporterFactory]:
    """Exporters to the local collector (or ``endpoint=``), quick to back off, shut down
    after the test."""
    made: list[OtlpHttpSpanExporter] = []

    def make(backoff_s: float = 0.05, **config: Any) -> OtlpHttpSpanExporter:
        config.setdefault("endpoint", f"{otlp_sink.base}/v1/traces")
        exporter = OtlpHttpSpanExporter(OtlpHttpConfig(**config), backoff_s=backoff_s)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.shutdown()


def test_config_from_env_reads_what_the_sdk_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("OTEL_EXPORTER_OTLP"):
            monkeypatch.delenv(var)
    default = OtlpHttpConfig.from_env()
    assert default.endpoint == "http://localhost:4318/v1/traces"
    assert (default.timeout_s, default.compression, dict(default.headers)) == (10.0, "none", {})

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Api-Key=general,x-tenant=a%20b")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    general = OtlpHttpConfig.from_env()
    assert general.endpoint == "http://collector:4318/v1/traces"  # the signal path appended
    assert dict(general.headers) == {"api-key": "general", "x-tenant": "a b"}
    assert (general.timeout_s, general.compression) == (3.0, "gzip")

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces.example/custom")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0.5")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none")
    traces = OtlpHttpConfig.from_env()
    assert traces.endpoint == "https://traces.example/custom"  # used as is
    assert dict(traces.headers) == {"api-key": "traces"}  # the signal's own variable wins
    assert (traces.timeout_s, traces.compression) == (0.5, "none")

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd")
    bad = OtlpHttpConfig.from_env()
    assert (bad.timeout_s, bad.compression) == (10.0, "none")


def test_exports_the_sdk_message_with_headers_over_one_connection(
    otlp_sink: OtlpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{otlp_sink.base}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Authorization=Bearer%20t0ken")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_COMPRESSION", raising=False)
    spans = some_spans()
    exporter = OtlpHttpSpanExporter()
    for _ in range(3):
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert len(otlp_sink.received) == 3
    first = otlp_sink.received[0]
    assert first.path == "/v1/traces"
    assert first.headers["content-type"] == "application/x-protobuf"
    assert first.headers["authorization"] == "Bearer t0ken"
    assert first.headers["user-agent"].startswith("inferwatch/")
    assert "content-encoding" not in first.headers
    assert ExportTraceServiceRequest.FromString(first.body) == encode_spans(spans)
    assert len({r.client_port for r in otlp_sink.received}) == 1  # keep-alive


def test_gzip(otlp_sink: OtlpSink, make_exporter: ExporterFactory) -> None:
    spans = some_spans()
    exporter = make_exporter(compression="gzip")
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    (got,) = otlp_sink.received
    assert got.headers["content-encoding"] == "gzip"
    assert ExportTraceServiceRequest.FromString(got.payload()) == encode_spans(spans)


def test_retries_503_and_429_then_succeeds(
    otlp_sink: OtlpSink, make_exporter: ExporterFactory
) -> None:
    otlp_sink.answer(503, (429, {"Retry-After": "0"}), 200)
    exporter = make_exporter(timeout_s=5.0)
    assert exporter.export(some_spans()) == SpanExportResult.SUCCESS
    assert len(otlp_sink.received) == 3
    assert len({r.body for r in otlp_sink.received}) == 1  # the same request each time


@pytest.mark.slow  # reads the clock: a deadline is the behaviour
def test_gives_up_within_the_timeout(otlp_sink: OtlpSink, make_exporter: ExporterFactory) -> None:
    otlp_sink.answer(*([503] * 100))
    exporter = make_exporter(timeout_s=0.6)
    started = time.monotonic()
    assert exporter.export(some_spans()) == SpanExportResult.FAILURE
    assert time.monotonic() - started < 0.6 + 0.3
    assert 2 <= len(otlp_sink.received) < 100  # retried, with backoff, then gave up


@pytest.mark.slow  # reads the clock: a deadline is the behaviour
def test_connection_errors_are_retried_within_the_timeout(make_exporter: ExporterFactory) -> None:
    exporter = make_exporter(
        endpoint=f"http://127.0.0.1:{free_ports(1)[0]}/v1/traces", timeout_s=0.6
    )
    started = time.monotonic()
    assert exporter.export(some_spans()) == SpanExportResult.FAILURE
    assert time.monotonic() - started < 0.6 + 0.3


def test_a_refusal_is_not_retried(
    otlp_sink: OtlpSink, make_exporter: ExporterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    otlp_sink.answer(400, 200)
    exporter = make_exporter(timeout_s=5.0)
    assert exporter.export(some_spans()) == SpanExportResult.FAILURE
    assert len(otlp_sink.received) == 1
    assert "HTTP 400" in caplog.text


@pytest.mark.slow  # reads the clock: a deadline is the behaviour
def test_shutdown_fails_exports_fast_and_interrupts_a_retry_wait(
    otlp_sink: OtlpSink, make_exporter: ExporterFactory
) -> None:
    otlp_sink.answer(503)
    exporter = make_exporter(timeout_s=30.0, backoff_s=10.0)
    results: list[SpanExportResult] = []
    worker = threading.Thread(target=lambda: results.append(exporter.export(some_spans())))
    worker.start()
    poll(lambda: otlp_sink.received or None, 5.0, "the first export attempt")
    started = time.monotonic()
    exporter.shutdown()  # while the export waits ~10 s to retry
    worker.join(5.0)
    assert results == [SpanExportResult.FAILURE]
    assert time.monotonic() - started < 2.0
    assert exporter.export(some_spans()) == SpanExportResult.FAILURE  # no request made
    assert len(otlp_sink.received) == 1
    exporter.shutdown()  # twice is harmless


def test_never_raises_into_the_span_processor(
    otlp_sink: OtlpSink,
    make_exporter: ExporterFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = make_exporter()

    def broken(spans: Sequence[ReadableSpan]) -> bytes:
        raise RuntimeError("encoder bug")

    monkeypatch.setattr(exporter.encoder, "encode_request", broken)
    assert exporter.export(some_spans()) == SpanExportResult.FAILURE
    assert "encoder bug" in caplog.text
    assert otlp_sink.received == []
