"""service/inferwatch/telemetry/deferred.py: measurements queued on the request path, handed to the
SDK later, none lost, none doubled, exemplars still pointing at the request's span."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import TracerProvider

from inferwatch.settings import Settings
from inferwatch.telemetry import instruments as names
from inferwatch.telemetry.deferred import DeferredTelemetry
from inferwatch.telemetry.setup import build_telemetry

HIST = "test.duration"
COUNTER = "test.count"


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    mp = MeterProvider(metric_readers=[reader])
    yield mp
    mp.shutdown()


def metrics(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }


def points(metric: Metric) -> list[Any]:
    return list(metric.data.data_points)


def outcomes(got: dict[str, Metric]) -> dict[str, int]:
    """inferwatch.telemetry.deferred by outcome."""
    return {
        p.attributes[names.ATTR_OUTCOME]: p.value for p in points(got[names.TELEMETRY_DEFERRED])
    }


def test_a_collection_sees_every_measurement_made_before_it(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    meter = provider.get_meter("t")
    # an interval far beyond the test: only the collection itself can drain the queue
    deferred = DeferredTelemetry(meter, interval_s=3600)
    deferred.start()
    hist = deferred.histogram(meter.create_histogram(HIST, unit="s"))
    count = deferred.counter(meter.create_counter(COUNTER))
    attrs = {"model.version": "1"}
    for v in (0.001, 0.002, 0.004):
        hist.record(v, attrs)
        count.add(1, attrs)
    assert deferred.pending == 6  # queued, not yet recorded

    got = metrics(reader)
    (h,) = points(got[HIST])
    assert (h.count, h.sum, dict(h.attributes)) == (3, pytest.approx(0.007), attrs)
    (c,) = points(got[COUNTER])
    assert (c.value, dict(c.attributes)) == (3, attrs)
    assert deferred.pending == 0
    assert outcomes(got) == {"recorded": 6, "dropped": 0}
    deferred.shutdown()


def test_exemplars_carry_the_recording_span_although_the_sdk_sees_them_later(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    meter = provider.get_meter("t")
    deferred = DeferredTelemetry(meter, interval_s=3600)
    hist = deferred.histogram(meter.create_histogram(HIST, unit="s"))
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("request") as span:
        hist.record(0.003, {"k": "v"})
        ctx = span.get_span_context()
    # handed over from another thread, with no span current there
    worker = threading.Thread(target=deferred.drain)
    worker.start()
    worker.join()
    assert trace.get_current_span().get_span_context().is_valid is False

    (point,) = points(metrics(reader)[HIST])
    (exemplar,) = point.exemplars
    assert (exemplar.trace_id, exemplar.span_id) == (ctx.trace_id, ctx.span_id)
    assert exemplar.value == 0.003


def test_counter_increments_are_summed_per_attribute_set(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    meter = provider.get_meter("t")
    deferred = DeferredTelemetry(meter, interval_s=3600, chunk=4)
    count = deferred.counter(meter.create_counter(COUNTER))
    a, b = {"class": "0"}, {"class": "1"}
    for i in range(25):
        count.add(1, a if i % 5 else b)
    count.add(10, a)
    assert deferred.drain() == 26
    by_class = {p.attributes["class"]: p.value for p in points(metrics(reader)[COUNTER])}
    assert by_class == {"0": 30, "1": 5}


def test_concurrent_requests_and_drains_lose_and_double_nothing(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    meter = provider.get_meter("t")
    deferred = DeferredTelemetry(meter, interval_s=0.001, chunk=8)
    deferred.start()
    hist = deferred.histogram(meter.create_histogram(HIST, unit="s"))
    count = deferred.counter(meter.create_counter(COUNTER))
    threads, per_thread = 4, 3000

    def requests() -> None:
        for _ in range(per_thread):
            hist.record(0.001, {"k": "v"})
            count.add(1, {"k": "v"})

    workers = [threading.Thread(target=requests) for _ in range(threads)]
    for w in workers:
        w.start()
    seen = []
    while any(w.is_alive() for w in workers):  # collections racing the drain thread
        counter = metrics(reader).get(COUNTER)
        seen.append(points(counter)[0].value if counter is not None else 0)
    for w in workers:
        w.join()
    deferred.shutdown()

    got = metrics(reader)
    assert points(got[HIST])[0].count == threads * per_thread
    assert points(got[COUNTER])[0].value == threads * per_thread
    assert seen == sorted(seen)  # cumulative: never went backwards


def test_a_full_queue_drops_and_counts_rather_than_grow(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    meter = provider.get_meter("t")
    deferred = DeferredTelemetry(meter, interval_s=3600, max_pending=5)
    hist = deferred.histogram(meter.create_histogram(HIST, unit="s"))
    for _ in range(8):
        hist.record(0.001)
    assert deferred.pending == 5
    got = metrics(reader)
    assert points(got[HIST])[0].count == 5
    assert outcomes(got) == {"recorded": 5, "dropped": 3}


def test_shutdown_hands_over_what_is_queued(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    meter = provider.get_meter("t")
    deferred = DeferredTelemetry(meter, interval_s=3600)
    deferred.start()
    hist = deferred.histogram(meter.create_histogram(HIST, unit="s"))
    hist.record(0.5)
    deferred.shutdown(timeout_s=2)
    assert deferred.pending == 0
    assert deferred.recorded == 1


def drain_threads() -> int:
    return sum(t.name == "telemetry-deferred" for t in threading.enumerate())


def test_batching_off_builds_no_queue_and_no_drain_thread() -> None:
    before = drain_threads()
    telemetry = build_telemetry(
        Settings(environment="test", otlp_enabled=False, telemetry_batch_ms=0),
        metric_readers=[InMemoryMetricReader()],
    )
    try:
        assert telemetry.deferred is None
        assert drain_threads() == before  # no drain thread started
    finally:
        telemetry.shutdown(2)
    with pytest.raises(ValueError, match="interval_s"):
        DeferredTelemetry(MeterProvider().get_meter("t"), interval_s=0)
