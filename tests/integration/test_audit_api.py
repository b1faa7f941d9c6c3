"""N predictions through the API -> exactly N audit rows, every field as sent.

The app is built by ``create_app`` with ``database_url`` set, so the audit sink is
the one ``build_audit_sink`` makes (the Postgres writer), started and closed by the
lifespan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from inferwatch.app import create_app
from inferwatch.audit.writer import PostgresAuditWriter
from inferwatch.inference.data import generate_transactions
from inferwatch.inference.loading import LoadedModel, load_model
from inferwatch.inference.training import train_model
from inferwatch.settings import Settings
from stack.postgres import AuditDb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    out: Path = tmp_path_factory.mktemp("models")
    meta = train_model(out, version="audit-1", estimator="logreg", n_rows=4_000, seed=5)
    return load_model(out / meta.name / meta.version)


def test_n_predictions_through_the_api_make_n_rows(
    audit_db: AuditDb, api_model: LoadedModel, tmp_path: Path
) -> None:
    settings = Settings(
        environment="test",
        otlp_enabled=False,
        database_url=audit_db.writer_dsn,
        audit_spool_dir=tmp_path / "spool",
        audit_flush_interval_s=0.05,
    )
    app = create_app(settings, model=api_model, metric_readers=[InMemoryMetricReader()])
    rows, _ = generate_transactions(40, seed=21)
    sent: dict[UUID, tuple[dict[str, Any], dict[str, Any]]] = {}
    with TestClient(app) as client:
        assert isinstance(app.state.runtime.audit, PostgresAuditWriter)
        for i, features in enumerate(rows):
            body: dict[str, Any] = {
                "features": features,
                "entity": {"type": "account", "id": f'it\'s \\ "{i}" ü'},
                "request_id": f"req-{i}",
            }
            resp = client.post("/v1/predict", json=body)
            assert resp.status_code == 200, resp.text
            out = resp.json()
            sent[UUID(out["prediction_id"])] = (body, out)
    # the lifespan closed the writer: everything is flushed
    with psycopg.connect(audit_db.admin_dsn) as conn:
        got = {
            r[0]: r
            for r in conn.execute(
                "SELECT prediction_id, features, entity_type, entity_id, request_id, trace_id,"
                " prediction, probability, model_version FROM predictions"
                " WHERE prediction_id = ANY(%s)",
                (list(sent),),
            ).fetchall()
        }
    assert len(got) == len(sent)
    for pid, (body, out) in sent.items():
        row = got[pid]
        assert row[1].keys() == body["features"].keys()
        for k, v in body["features"].items():
            assert row[1][k] == pytest.approx(v) if isinstance(v, float) else row[1][k] == v
        assert (row[2], row[3]) == (body["entity"]["type"], body["entity"]["id"])
        assert row[4] == body["request_id"]
        assert row[5] == out["trace_id"]
        assert row[6] == out["prediction"]
        assert row[7] == out["probability"]
        assert row[8] == out["model_version"]
