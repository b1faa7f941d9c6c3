"""API test fixtures: a small model trained once per session, in-memory telemetry and audit.

Every test gets its own app, span exporter, metric reader and audit sink: nothing
global, nothing to clean up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics import Histogram
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inferwatch.app import create_app
from inferwatch.audit.sink import InMemoryAuditSink
from inferwatch.inference.loading import LoadedModel, load_model
from inferwatch.inference.training import train_model
from inferwatch.settings import Settings


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    out: Path = tmp_path_factory.mktemp("models")
    meta = train_model(out, version="test-1", estimator="hgb", n_rows=6_000, seed=3)
    return load_model(out / meta.name / meta.version)


class DrainedSpans:
    """The in-memory exporter's spans, after the app's deferred telemetry is drained: a
    request's span ends at the next drain (service/inferwatch/telemetry/deferred.py), with the
    request's end time."""

    def __init__(self, exporter: InMemorySpanExporter, app: FastAPI) -> None:
        self.exporter = exporter
        self.app = app

    def get_finished_spans(self) -> tuple[ReadableSpan, ...]:
        runtime = getattr(self.app.state, "runtime", None)
        if runtime is not None and runtime.telemetry.deferred is not None:
            runtime.telemetry.deferred.drain()
        return tuple(self.exporter.get_finished_spans())


@dataclass
class Harness:
    client: TestClient
    spans: DrainedSpans
    metrics: InMemoryMetricReader
    audit: InMemoryAuditSink
    model: LoadedModel


def make_harness(model: LoadedModel, **overrides: object) -> Iterator[Harness]:
    settings = Settings(environment="test", otlp_enabled=False, **overrides)  # type: ignore[arg-type]
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader(
        preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()}
    )
    audit = InMemoryAuditSink()
    app = create_app(
        settings,
        model=model,
        audit_sink=audit,
        span_processors=[SimpleSpanProcessor(spans)],
        metric_readers=[reader],
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Harness(client, DrainedSpans(spans, app), reader, audit, model)


@pytest.fixture
def harness(small_model: LoadedModel) -> Iterator[Harness]:
    yield from make_harness(small_model)


@pytest.fixture
def valid_features(small_model: LoadedModel) -> dict[str, object]:
    from inferwatch.inference.data import generate_transactions

    rows, _ = generate_transactions(1, seed=11)
    return rows[0]


@pytest.fixture(scope="module")
def small_model_cached(small_model: LoadedModel) -> Iterator[Harness]:
    """One app for a whole module (hypothesis runs many examples against it)."""
    yield from make_harness(small_model)
