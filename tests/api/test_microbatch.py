"""Adaptive micro-batching: shared model calls, per-request telemetry, faults and shedding.

A gated estimator holds the model thread inside ``predict_proba`` until the test lets
it go, so which requests share a batch is decided by the test, not by timing: the first
request enters the model alone, the next ones queue behind it (the test polls the
queue's depth), and the gate opens.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from inferwatch.app import create_app
from inferwatch.audit.sink import InMemoryAuditSink
from inferwatch.inference.batcher import (
    BATCH_SPAN_NAME,
    BatchTelemetry,
    MicroBatcher,
)
from inferwatch.inference.data import generate_transactions
from inferwatch.inference.loading import LoadedModel
from inferwatch.inference.predictor import Prediction, Predictor
from inferwatch.settings import Settings
from inferwatch.telemetry import instruments as names
from stack.procs import poll
from tests.fixtures.api import FinishedSpans, GatedEstimator, attributes_of, points


class Served:
    """An app with a gated model, in-memory telemetry and audit, and a client for threads."""

    def __init__(self, model: LoadedModel, estimator: GatedEstimator, **settings: Any) -> None:
        self.estimator = estimator
        self.exporter = InMemorySpanExporter()
        self.spans = FinishedSpans(self.exporter)
        self.reader = InMemoryMetricReader()
        self.audit = InMemoryAuditSink()
        self.app: FastAPI = create_app(
            Settings(environment="test", otlp_enabled=False, **settings),
            model=LoadedModel(model.metadata, estimator, model.path),
            audit_sink=self.audit,
            span_processors=[SimpleSpanProcessor(self.exporter)],
            metric_readers=[self.reader],
        )
        self.pool = ThreadPoolExecutor(64)

    def depth(self) -> int:
        return int(self.app.state.runtime.batcher.depth)

    def post(self, client: TestClient, features: dict[str, Any]) -> Future[httpx.Response]:
        return self.pool.submit(client.post, "/v1/predict", json={"features": features})


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    return generate_transactions(40, seed=5)[0]


def _queue_behind_the_first(
    served: Served, client: TestClient, rows: list[dict[str, Any]]
) -> list[Future[httpx.Response]]:
    """rows[0] enters the model alone and waits at the gate; the rest queue behind it."""
    first = served.post(client, rows[0])
    poll(lambda: len(served.estimator.calls) == 1, 10, "the first request in the model")
    rest = [served.post(client, r) for r in rows[1:]]
    poll(lambda: served.depth() == len(rows) - 1, 10, f"{len(rows) - 1} requests queued")
    return [first, *rest]


def test_batched_predictions_equal_one_by_one_exactly(
    small_model: LoadedModel, rows: list[dict[str, Any]]
) -> None:
    predictor = Predictor(small_model)
    alone = [predictor.predict([r])[0] for r in rows]
    assert predictor.predict(rows) == alone  # labels and probabilities, bit for bit

    sizes: list[int] = []

    def predict(batch: Any) -> list[Prediction]:
        sizes.append(len(batch))
        return predictor.predict(batch)

    async def run() -> list[Prediction]:
        batcher = MicroBatcher(
            predict,
            BatchTelemetry(None, None, None, {}, {}, {}),
            max_batch_size=16,
            max_wait_s=0,
            max_queue=100,
        )
        batcher.start()
        try:
            done = await asyncio.gather(*(batcher.predict(r, None) for r in rows))
        finally:
            await batcher.stop()
        return [d.prediction for d in done]

    assert asyncio.run(run()) == alone
    assert sum(sizes) == len(rows)
    assert max(sizes) == 16  # 40 concurrent requests: full batches, not 40 calls
    assert len(sizes) < len(rows)


def test_requests_share_a_batch_and_keep_their_own_span_samples_and_rows(
    small_model: LoadedModel, rows: list[dict[str, Any]]
) -> None:
    served = Served(small_model, GatedEstimator(small_model.estimator))
    rows = rows[:21]
    with TestClient(served.app, raise_server_exceptions=False) as client:
        futures = _queue_behind_the_first(served, client, rows)
        served.estimator.gate.set()
        responses = [f.result(30) for f in futures]
        data = served.reader.get_metrics_data()
    assert [r.status_code for r in responses] == [200] * 21
    assert served.estimator.calls == [1, 20]  # the first alone, then the other 20 in one call
    alone = Predictor(small_model)
    for resp, row in zip(responses, rows, strict=True):
        expected = alone.predict([row])[0]
        assert (resp.json()["prediction"], resp.json()["probability"]) == (
            expected.label,
            expected.probability,
        )

    server = {format(s.context.trace_id, "032x"): s for s in served.spans.server()}
    assert sorted(server) == sorted(r.json()["trace_id"] for r in responses)
    by_trace = {r.json()["trace_id"]: r.json() for r in responses}
    for trace_id, span in server.items():
        attrs = attributes_of(span)
        assert attrs[names.ATTR_PREDICTION_ID] == by_trace[trace_id]["prediction_id"]
        assert attrs[names.ATTR_PROBABILITY] == by_trace[trace_id]["probability"]
    batches = [s for s in served.spans.get_finished_spans() if s.name == BATCH_SPAN_NAME]
    assert sorted(attributes_of(b)[names.ATTR_BATCH_SIZE] for b in batches) == [1, 20]
    for b in batches:
        assert b.kind == SpanKind.INTERNAL
        assert b.parent is None  # a root: linked to its requests, a child of none of them
        assert attributes_of(b)[names.ATTR_MODEL_VERSION] == small_model.metadata.version
        for link in b.links:  # each link points at a request's SERVER span
            s = server[format(link.context.trace_id, "032x")]
            assert link.context.span_id == s.context.span_id
            assert attributes_of(s)[names.ATTR_BATCH_SIZE] == len(b.links)
    assert sum(len(b.links) for b in batches) == 21

    (inference,) = points(data, names.INFERENCE_DURATION)
    (queued,) = points(data, names.INFERENCE_QUEUE_DURATION)
    (size,) = points(data, names.MICROBATCH_SIZE)
    (compute,) = points(data, names.MICROBATCH_DURATION)
    assert (inference.count, queued.count, size.count, size.sum, compute.count) == (
        21,
        21,
        2,
        21,
        2,
    )
    assert queued.sum < inference.sum  # the queueing part of what each request experienced
    exemplar_traces = {format(e.trace_id, "032x") for e in inference.exemplars}
    assert exemplar_traces
    assert exemplar_traces <= set(server)
    assert sum(p.value for p in points(data, names.PREDICTIONS)) == 21
    records = served.audit.predictions
    assert sorted(str(r.prediction_id) for r in records) == sorted(
        r.json()["prediction_id"] for r in responses
    )
    for record in records:
        span = server[record.trace_id]
        assert record.span_id == format(span.context.span_id, "016x")


def test_a_model_error_fails_only_its_batch_and_the_batcher_carries_on(
    small_model: LoadedModel, rows: list[dict[str, Any]]
) -> None:
    served = Served(small_model, GatedEstimator(small_model.estimator, fail_on=2))
    with TestClient(served.app, raise_server_exceptions=False) as client:
        futures = _queue_behind_the_first(served, client, rows[:4])
        served.estimator.gate.set()
        first, *failed = [f.result(30) for f in futures]
        after = client.post("/v1/predict", json={"features": rows[4]})
        data = served.reader.get_metrics_data()
    assert served.estimator.calls == [1, 3, 1]
    assert first.status_code == 200
    assert [r.status_code for r in failed] == [500] * 3  # a server fault, never a 4xx
    assert {r.json()["error"] for r in failed} == {"internal"}
    assert after.status_code == 200  # the batcher survived its batch's failure
    meta = small_model.metadata
    by_outcome = {
        attributes_of(p)[names.ATTR_OUTCOME]: p for p in points(data, names.INFERENCE_DURATION)
    }
    assert (by_outcome["ok"].count, by_outcome["error"].count) == (2, 3)
    compute = {
        attributes_of(p)[names.ATTR_OUTCOME]: p.count
        for p in points(data, names.MICROBATCH_DURATION)
    }
    assert compute == {"ok": 2, "error": 1}
    assert sum(p.value for p in points(data, names.PREDICTIONS)) == 2
    assert points(data, names.REJECTED_REQUESTS) == []
    assert len(served.audit.predictions) == 2
    (failed_batch,) = [
        s
        for s in served.spans.get_finished_spans()
        if s.name == BATCH_SPAN_NAME and s.status.status_code == StatusCode.ERROR
    ]
    assert len(failed_batch.links) == 3
    assert attributes_of(failed_batch)[names.ATTR_MODEL_NAME] == meta.name
    errors = [s for s in served.spans.server() if s.status.status_code == StatusCode.ERROR]
    assert len(errors) == 3


def test_a_full_queue_sheds_with_503_retry_after_and_counts_it(
    small_model: LoadedModel, rows: list[dict[str, Any]]
) -> None:
    served = Served(small_model, GatedEstimator(small_model.estimator), microbatch_max_queue=3)
    with TestClient(served.app, raise_server_exceptions=False) as client:
        held = _queue_behind_the_first(served, client, rows[:4])  # 1 computing + 3 queued
        shed = client.post("/v1/predict", json={"features": rows[4]})
        served.estimator.gate.set()
        responses = [f.result(30) for f in held]
        data = served.reader.get_metrics_data()
    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    assert shed.json()["error"] == names.REASON_OVERLOADED
    assert [r.status_code for r in responses] == [200] * 4
    (rejected,) = points(data, names.REJECTED_REQUESTS)
    assert attributes_of(rejected) == {names.ATTR_REJECT_REASON: names.REASON_OVERLOADED}
    assert rejected.value == 1
    assert len(served.audit.predictions) == 4  # nothing written for the shed request


def test_with_batching_off_every_request_is_its_own_call(
    small_model: LoadedModel, rows: list[dict[str, Any]]
) -> None:
    served = Served(small_model, GatedEstimator(small_model.estimator), microbatch_enabled=False)
    with TestClient(served.app, raise_server_exceptions=False) as client:
        futures = _queue_behind_the_first(served, client, rows[:6])
        served.estimator.gate.set()
        assert [f.result(30).status_code for f in futures] == [200] * 6
    assert served.estimator.calls == [1] * 6


def test_a_request_alone_never_waits_for_company(
    small_model: LoadedModel, rows: list[dict[str, Any]]
) -> None:
    """Sequential requests (never concurrent) are not held back: a wait would last the
    whole maximum (nobody else arrives), so every queueing time stays below it."""
    estimator = GatedEstimator(small_model.estimator)
    estimator.gate.set()
    served = Served(small_model, estimator, microbatch_max_wait_ms=100)
    with TestClient(served.app) as client:
        for row in rows[:5]:
            assert client.post("/v1/predict", json={"features": row}).status_code == 200
        data = served.reader.get_metrics_data()
    (queued,) = points(data, names.INFERENCE_QUEUE_DURATION)
    assert queued.count == 5
    assert queued.max < 0.1, f"a lone request waited {queued.max:.3f} s"


def test_the_event_loop_never_runs_the_model(
    small_model: LoadedModel, rows: list[dict[str, Any]]
) -> None:
    """While the model thread is held, the event loop still answers other routes."""
    served = Served(small_model, GatedEstimator(small_model.estimator))
    with TestClient(served.app, raise_server_exceptions=False) as client:
        held = served.post(client, rows[0])
        poll(lambda: len(served.estimator.calls) == 1, 10, "the request in the model")
        assert client.get("/healthz").status_code == 200  # answered while the model is busy
        assert not held.done()
        served.estimator.gate.set()
        assert held.result(30).status_code == 200
