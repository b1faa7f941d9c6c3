"""POST /v1/feedback and GET /v1/monitoring/* against the real writer and Postgres.

The app runs with the real ``PostgresAuditWriter`` (writer role) and the analyst
role for reads, on the throwaway cluster of tests/fixtures/pg.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from inferwatch.analysis import drift, store
from inferwatch.audit.writer import PostgresAuditWriter
from inferwatch.inference import data
from inferwatch.inference.loading import LoadedModel, load_model
from inferwatch.inference.training import train_model
from stack.postgres import AuditDb
from tests.fixtures.api import postgres_app
from tests.fixtures.audit import insert_predictions

pytestmark = pytest.mark.integration

KEY = "analyst-key-for-tests-0123456789"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    out: Path = tmp_path_factory.mktemp("models")
    meta = train_model(out, version="fb-1", estimator="logreg", n_rows=4_000, seed=3)
    return load_model(out / meta.name / meta.version)


class App:
    def __init__(self, client: TestClient, writer: PostgresAuditWriter, db: AuditDb) -> None:
        self.client = client
        self.writer = writer
        self.db = db

    def flush(self) -> None:
        assert self.writer.wait_idle(20.0)

    def analyst(self, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db.analyst_dsn) as conn:
            return list(conn.execute(query.encode(), params).fetchall())


@pytest.fixture
def app(audit_db: AuditDb, model: LoadedModel, tmp_path: Path) -> Iterator[App]:
    with postgres_app(model, audit_db, tmp_path / "spool", KEY) as (client, writer):
        yield App(client, writer, audit_db)


def _predict(app: App, n: int, entity_prefix: str, seed: int = 1) -> list[dict[str, Any]]:
    rows, _ = data.generate_transactions(n, seed=seed)
    out = []
    for i, row in enumerate(rows):
        r = app.client.post(
            "/v1/predict",
            json={"features": row, "entity": {"type": "txn", "id": f"{entity_prefix}{i}"}},
        )
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def test_feedback_before_the_prediction_is_flushed_still_joins(app: App) -> None:
    pid = uuid.uuid4()
    tag = uuid.uuid4().hex[:8]
    r = app.client.post("/v1/feedback", json={"prediction_id": str(pid), "label": 1})
    assert r.status_code == 202, r.text
    r = app.client.post(
        "/v1/feedback", json={"entity": {"type": "txn", "id": f"early-{tag}"}, "label": 1}
    )
    assert r.status_code == 202, r.text
    app.flush()
    # the outcome is stored although no prediction row exists yet: it waits, unmatched
    assert app.analyst(
        "SELECT count(*) FROM unmatched_outcomes WHERE prediction_id = %s", (pid,)
    ) == [(1,)]
    # now the prediction rows land (as a late flush of the writer would store them)
    rows, _ = data.generate_transactions(2, seed=9)
    with psycopg.connect(app.db.writer_dsn) as conn:
        for k, (p, ent) in enumerate(((pid, None), (uuid.uuid4(), f"early-{tag}"))):
            conn.execute(
                "INSERT INTO predictions (prediction_id, ts, model_name, model_version,"
                " entity_type, entity_id, features, prediction, probability, latency_s,"
                " trace_id, span_id)"
                " VALUES (%s, now(), 'card-fraud', 'late', %s, %s, %s, 0, 0.2, 0.001, '', '')",
                (p, "txn" if ent else None, ent, Jsonb(rows[k])),
            )
    got = app.analyst(
        "SELECT prediction_id, label, label_keyed_by FROM prediction_outcomes"
        " WHERE model_version = 'late' AND label IS NOT NULL ORDER BY label_keyed_by"
    )
    assert len(got) == 2
    assert {g[2] for g in got} == {"entity", "prediction_id"}
    assert all(g[1] == 1 for g in got)


def test_feedback_through_the_api_joins_idempotent_and_corrections(app: App) -> None:
    tag = uuid.uuid4().hex[:8]
    preds = _predict(app, 6, f"api-{tag}-")
    body = {
        "outcomes": [
            {"prediction_id": preds[0]["prediction_id"], "label": 0},
            {
                "prediction_id": preds[1]["prediction_id"],
                "label": 1,
                "observed_at": "2026-11-01T10:00:00+00:00",
            },
            {"entity": {"type": "txn", "id": f"api-{tag}-2"}, "label": 1},
        ]
    }
    assert app.client.post("/v1/feedback", json=body).status_code == 202
    assert app.client.post("/v1/feedback", json=body).status_code == 202  # a client's retry
    app.flush()
    ids = [uuid.UUID(p["prediction_id"]) for p in preds[:2]]
    # every receipt is kept (two per prediction), and the effective label is unchanged
    receipts = app.analyst(
        "SELECT prediction_id, count(*), count(DISTINCT received_at) FROM outcomes"
        " WHERE prediction_id = ANY(%s) GROUP BY 1",
        (ids,),
    )
    assert sorted(receipts) == sorted([(ids[0], 2, 2), (ids[1], 2, 2)])
    # correction: a different label later wins, the first stays as history
    r = app.client.post(
        "/v1/feedback", json={"prediction_id": preds[0]["prediction_id"], "label": 1}
    )
    assert r.status_code == 202
    app.flush()
    got = dict(
        app.analyst(
            "SELECT entity_id, label FROM prediction_outcomes WHERE entity_id LIKE %s",
            (f"api-{tag}-%",),
        )
    )
    assert got[f"api-{tag}-0"] == 1
    assert got[f"api-{tag}-1"] == 1
    assert got[f"api-{tag}-2"] == 1
    assert got[f"api-{tag}-3"] is None
    versions = app.analyst(
        "SELECT label_versions FROM prediction_outcomes WHERE prediction_id = %s", (ids[0],)
    )
    assert versions == [(3,)]


def test_a_label_that_flips_back_is_kept_and_the_latest_wins(app: App) -> None:
    """0 -> 1 -> 0 by prediction_id, and 1 -> 0 -> 1 by entity: three rows each, last wins."""
    tag = uuid.uuid4().hex[:8]
    preds = _predict(app, 2, f"flip-{tag}-")
    pid = preds[0]["prediction_id"]
    entity = {"type": "txn", "id": f"flip-{tag}-1"}
    for label in (0, 1, 0):
        assert (
            app.client.post("/v1/feedback", json={"prediction_id": pid, "label": label}).status_code
            == 202
        )
    for label in (1, 0, 1):
        assert (
            app.client.post("/v1/feedback", json={"entity": entity, "label": label}).status_code
            == 202
        )
    app.flush()
    history = app.analyst(
        "SELECT label FROM outcomes WHERE prediction_id = %s ORDER BY received_at",
        (uuid.UUID(pid),),
    )
    assert history == [(0,), (1,), (0,)]
    history = app.analyst(
        "SELECT label FROM outcomes WHERE entity_id = %s ORDER BY received_at", (entity["id"],)
    )
    assert history == [(1,), (0,), (1,)]
    got = app.analyst(
        "SELECT entity_id, label, label_versions FROM prediction_outcomes"
        " WHERE entity_id LIKE %s ORDER BY entity_id",
        (f"flip-{tag}-%",),
    )
    assert got == [(f"flip-{tag}-0", 0, 3), (f"flip-{tag}-1", 1, 3)]


def test_one_batch_with_two_labels_for_one_key_is_refused(app: App) -> None:
    tag = uuid.uuid4().hex[:8]
    preds = _predict(app, 1, f"conflict-{tag}-")
    pid = preds[0]["prediction_id"]
    body = {
        "outcomes": [
            {"prediction_id": pid, "label": 0},
            {"entity": {"type": "txn", "id": f"conflict-{tag}-0"}, "label": 1},
            {"prediction_id": pid, "label": 0},  # the same label twice: one receipt
            {"prediction_id": pid, "label": 1},
        ]
    }
    r = app.client.post("/v1/feedback", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [d["field"] for d in detail] == ["outcomes[3].label"]
    assert "outcomes[0]" in detail[0]["problem"]
    app.flush()
    assert app.analyst(
        "SELECT count(*) FROM outcomes WHERE prediction_id = %s", (uuid.UUID(pid),)
    ) == [(0,)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"label": 1}, "prediction_id"),
        (
            {"prediction_id": str(uuid.uuid4()), "entity": {"type": "t", "id": "x"}, "label": 1},
            "prediction_id",
        ),
        ({"prediction_id": "not-a-uuid", "label": 1}, "prediction_id"),
        ({"prediction_id": str(uuid.uuid4()), "label": 2}, "label"),
        ({"prediction_id": str(uuid.uuid4()), "label": True}, "label"),
        ({"prediction_id": str(uuid.uuid4()), "label": 0.5}, "label"),
        ({"prediction_id": str(uuid.uuid4())}, "label"),
        ({"entity": {"type": "t"}, "label": 0}, "entity.id"),
        ({"entity": {"type": "t", "id": "a\x00b"}, "label": 0}, "entity.id"),
        ({"entity": "x", "label": 0}, "entity"),
        (
            {"prediction_id": str(uuid.uuid4()), "label": 1, "observed_at": "yesterday"},
            "observed_at",
        ),
        (
            {"prediction_id": str(uuid.uuid4()), "label": 1, "observed_at": "2026-01-01T00:00:00"},
            "observed_at",
        ),
        (
            {"prediction_id": str(uuid.uuid4()), "label": 1, "observed_at": "2999-01-01T00:00:00Z"},
            "observed_at",
        ),
        ({"prediction_id": str(uuid.uuid4()), "label": 1, "extra": 1}, "extra"),
        ({"outcomes": []}, "outcomes"),
        ({"outcomes": [{"label": 1}]}, "outcomes[0].prediction_id"),
        ([1, 2], "body"),
    ],
)
def test_feedback_rejects_bad_input_with_a_clear_4xx(app: App, body: Any, field: str) -> None:
    r = app.client.post("/v1/feedback", json=body)
    assert r.status_code == 422, r.text
    assert field in {d["field"] for d in r.json()["detail"]}


def test_feedback_malformed_and_oversized(app: App) -> None:
    r = app.client.post(
        "/v1/feedback", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    big = {"outcomes": [{"prediction_id": str(uuid.uuid4()), "label": 1}] * 300}
    r = app.client.post("/v1/feedback", json=big)
    assert r.status_code == 422
    assert r.json()["error"] == "batch_too_large"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/monitoring/latency",
        "/v1/monitoring/predictions",
        "/v1/monitoring/distribution",
        "/v1/monitoring/drift",
    ],
)
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY + "x"}])
def test_monitoring_requires_the_analyst_key(app: App, path: str, headers: dict[str, str]) -> None:
    r = app.client.get(path, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"


def test_monitoring_answers_from_the_audit_table(app: App) -> None:
    tag = uuid.uuid4().hex[:8]
    preds = _predict(app, 25, f"mon-{tag}-", seed=4)
    app.flush()
    h = {"X-API-Key": KEY}
    version = preds[0]["model_version"]
    # exact percentiles over the window equal numpy's linear interpolation
    since = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    r = app.client.get(
        "/v1/monitoring/latency", headers=h, params={"model_version": version, "since": since}
    )
    assert r.status_code == 200, r.text
    lat = app.analyst(
        "SELECT latency_s FROM predictions WHERE model_version = %s AND ts >= %s",
        (version, datetime.fromisoformat(since)),
    )
    values = np.array([v[0] for v in lat])
    body = r.json()
    assert body["count"] == len(values)
    assert body["p99_s"] == pytest.approx(float(np.quantile(values, 0.99)), rel=1e-12)
    assert body["p50_s"] == pytest.approx(float(np.quantile(values, 0.5)), rel=1e-12)
    # keyset pagination over one entity prefix: every row once, newest first
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7, "model_version": version}
        if cursor:
            params["cursor"] = cursor
        page = app.client.get("/v1/monitoring/predictions", headers=h, params=params).json()
        seen += [p["prediction_id"] for p in page["predictions"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    mine = {p["prediction_id"] for p in preds}
    assert mine <= set(seen)
    assert len(seen) == len(set(seen))
    params = {"entity_type": "txn", "entity_id": f"mon-{tag}-3"}
    one = app.client.get("/v1/monitoring/predictions", headers=h, params=params).json()
    assert [p["prediction_id"] for p in one["predictions"]] == [preds[3]["prediction_id"]]
    assert one["predictions"][0]["features"]["merchant_category"]
    dist = app.client.get(
        "/v1/monitoring/distribution", headers=h, params={"model_version": version, "bins": 5}
    ).json()
    assert dist["count"] == sum(b["count"] for b in dist["probability_histogram"])
    assert dist["count"] >= 25
    assert (
        app.client.get(
            "/v1/monitoring/predictions", headers=h, params={"cursor": "garbage"}
        ).status_code
        == 422
    )
    assert (
        app.client.get("/v1/monitoring/predictions", headers=h, params={"limit": 0}).status_code
        == 422
    )


def test_monitoring_reads_the_served_models_rows_unless_asked_for_another(
    app: App, model: LoadedModel
) -> None:
    """A shared audit database holds other models' rows, at the same version string too:
    latency, recent predictions and the distribution count the served model's rows by
    default, and another model's when ``model_name`` names it."""
    served, version = model.metadata.name, model.metadata.version
    other = f"other-model-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC) - timedelta(minutes=5)
    rows, _ = data.generate_transactions(9, seed=12)
    insert_predictions(
        app.db.writer_dsn, rows, model_version=version, start=start, model_name=other
    )
    mine = _predict(app, 4, f"own-{uuid.uuid4().hex[:8]}-", seed=13)
    app.flush()
    h = {"X-API-Key": KEY}
    since = start - timedelta(seconds=1)

    def stored(name: str, floor: datetime) -> int:
        return int(
            app.analyst(
                "SELECT count(*) FROM predictions"
                " WHERE model_name = %s AND model_version = %s AND ts >= %s",
                (name, version, floor),
            )[0][0]
        )

    assert stored(served, since) >= len(mine)
    for asked in (None, other):
        name = asked or served
        by_name = {} if asked is None else {"model_name": asked}
        params: dict[str, Any] = {"model_version": version, **by_name}
        lat = app.client.get(
            "/v1/monitoring/latency", headers=h, params={**params, "since": since.isoformat()}
        ).json()
        assert (lat["model_name"], lat["count"]) == (name, stored(name, since))
        dist = app.client.get("/v1/monitoring/distribution", headers=h, params=params).json()
        hour = datetime.fromisoformat(dist["since"])
        assert (dist["model_name"], dist["count"]) == (name, stored(name, hour))
        page = app.client.get(
            "/v1/monitoring/predictions", headers=h, params={**params, "limit": 500}
        ).json()["predictions"]
        assert {p["model_name"] for p in page} == {name}
    assert stored(other, since) == 9


def test_monitoring_drift_counts_what_was_served(app: App, model: LoadedModel) -> None:
    """GET /v1/monitoring/drift: the served version's drift over a window, from profiles
    and a scan (here the open hour: a scan), with the same counts as the raw scan."""
    _predict(app, 30, f"drift-{uuid.uuid4().hex[:8]}-", seed=6)
    app.flush()
    until = datetime.now(UTC) + timedelta(seconds=1)
    since = until - timedelta(hours=2)
    r = app.client.get(
        "/v1/monitoring/drift",
        headers={"X-API-Key": KEY},
        params={"since": since.isoformat(), "until": until.isoformat()},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    meta = model.metadata
    refs = drift.parse_profile(meta.reference_profile)
    with psycopg.connect(app.db.analyst_dsn) as conn:
        hists, rows = store.drift_histograms(
            conn, refs, model_name=meta.name, model_version=meta.version, since=since, until=until
        )
    assert body["model_version"] == meta.version
    assert body["rows"] == rows >= 30
    assert {f["feature"]: f["n"] for f in body["features"]} == {
        name: h.n for name, h in hists.items()
    }
    assert body["sources"]["scanned"]
    too_long = {"since": (until - timedelta(days=40)).isoformat(), "until": until.isoformat()}
    r = app.client.get("/v1/monitoring/drift", headers={"X-API-Key": KEY}, params=too_long)
    assert r.status_code == 422
    # a number is not a time (RFC 3339 only, as the OpenAPI document says)
    r = app.client.get("/v1/monitoring/drift", headers={"X-API-Key": KEY}, params={"until": "0.5"})
    assert r.status_code == 422
    assert [d["field"] for d in r.json()["detail"]] == ["until"]
