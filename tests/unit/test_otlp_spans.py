"""service/inferwatch/telemetry/otlp_spans.py: the direct encoder says exactly what the SDK's says.

Equality is checked on parsed messages (``ExportTraceServiceRequest.FromString(ours)
== encode_spans(spans)``) and on deterministic re-serialisations, over real SDK spans:
hand-picked shapes (events, links, remote parents, trace state, error status, several
resources and scopes, values the SDK skips) and hypothesis-generated attribute sets.
"""

from __future__ import annotations

import http.server
import math
import threading
from collections.abc import Iterator, Sequence
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

from inferwatch.telemetry.otlp_spans import FastOTLPSpanExporter, SpanEncoder


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


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    _Collector.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", _Collector.bodies
    server.shutdown()
    server.server_close()


def test_the_exporter_posts_what_the_sdk_would(collector: tuple[str, list[bytes]]) -> None:
    url, bodies = collector
    tracer, exporter = record()
    for i in range(20):
        with tracer.start_as_current_span(f"s{i}", attributes={"i": i}):
            pass
    spans = exporter.get_finished_spans()
    fast = FastOTLPSpanExporter(endpoint=url)
    assert fast.export(spans) == SpanExportResult.SUCCESS
    (body,) = bodies
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(spans)
    fast.shutdown()  # type: ignore[no-untyped-call]  # the OTLP exporter is not annotated
    assert fast.export(spans) == SpanExportResult.FAILURE  # after shutdown, like the SDK's
