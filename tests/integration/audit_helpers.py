"""Builders and readers shared by the audit tests (records, writers, metric values)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import uuid_utils
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from inferwatch.audit.privacy import PrivacyPolicy
from inferwatch.audit.records import PredictionRecord
from inferwatch.audit.writer import PostgresAuditWriter

FEATURES = [f"f{i:02d}" for i in range(20)]


def new_id() -> UUID:
    return UUID(bytes=uuid_utils.uuid7().bytes)


def make_prediction(i: int = 0, **over: Any) -> PredictionRecord:
    rnd = random.Random(i)
    fields: dict[str, Any] = {
        "prediction_id": new_id(),
        "ts": datetime.now(UTC),
        "model_name": "card-fraud",
        "model_version": "1.2.3",
        "features": {n: rnd.uniform(-1e3, 1e3) for n in FEATURES} | {"mcc": "grocery"},
        "prediction": i % 2,
        "probability": rnd.random(),
        "latency_s": rnd.uniform(1e-5, 1e-3),
        "trace_id": f"{rnd.getrandbits(128):032x}",
        "span_id": f"{rnd.getrandbits(64):016x}",
        "entity_type": "account",
        "entity_id": f"acct-{i}",
        "request_id": f"req-{i}",
    }
    fields.update(over)
    return PredictionRecord(**fields)


class Metrics:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.meter = self.provider.get_meter("test")

    def values(self) -> dict[str, float]:
        out: dict[str, float] = {}
        data = self.reader.get_metrics_data()
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        v = getattr(p, "value", None)
                        if v is None:
                            v = getattr(p, "sum", 0)
                        out[m.name] = out.get(m.name, 0) + v
        return out


@contextmanager
def running_writer(
    dsn: str | None, spool_dir: Path, metrics: Metrics | None = None, **kw: Any
) -> Iterator[PostgresAuditWriter]:
    metrics = metrics or Metrics()
    kw.setdefault("flush_interval_s", 0.05)
    kw.setdefault("policy", PrivacyPolicy())
    w = PostgresAuditWriter(dsn=dsn, spool_dir=spool_dir, meter=metrics.meter, **kw)
    w.start()
    try:
        yield w
    finally:
        w.close(10.0)


def count_ids(admin_dsn: str, ids: list[UUID]) -> tuple[int, int]:
    """(rows matching ids, distinct ids among them)."""
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT prediction_id) FROM predictions"
            " WHERE prediction_id = ANY(%s)",
            (ids,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
