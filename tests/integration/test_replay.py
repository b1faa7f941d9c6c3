"""Replay and shadow against the real Postgres, through the real service and audit writer.

Predictions are served by ``create_app`` with the Postgres writer (the writer role), then
replayed by ``run_replay`` / ``inferwatch replay`` as the replay role. Each test serves
under a model version of its own, so windows never see another test's rows.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from psycopg import errors as pgerrors
from sklearn.metrics import brier_score_loss, precision_score, recall_score, roc_auc_score
from typer.testing import CliRunner

from inferwatch.analysis.replay import (
    REASON_DROPPED,
    REASON_HASHED,
    ReplayError,
    ReplayReport,
    run_replay,
)
from inferwatch.app import create_app
from inferwatch.cli import app as cli_app
from inferwatch.inference.data import generate_transactions
from inferwatch.inference.loading import LoadedModel, load_model
from inferwatch.inference.predictor import Predictor
from inferwatch.inference.training import train_model
from inferwatch.settings import Settings
from stack.postgres import AuditDb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, LoadedModel]:
    """The served model (hgb) and a different candidate (logreg), same schema."""
    out: Path = tmp_path_factory.mktemp("models")
    served = train_model(out, version="served-1", estimator="hgb", n_rows=5_000, seed=3)
    cand = train_model(out, version="cand-1", estimator="logreg", n_rows=5_000, seed=4)
    return (
        load_model(out / served.name / served.version),
        load_model(out / cand.name / cand.version),
    )


def _as_version(model: LoadedModel, version: str) -> LoadedModel:
    return LoadedModel(
        model.metadata.model_copy(update={"version": version}), model.estimator, model.path
    )


def _serve(
    audit_db: AuditDb,
    model: LoadedModel,
    rows: list[dict[str, Any]],
    tmp_path: Path,
    *,
    shadow: LoadedModel | None = None,
    **settings: Any,
) -> list[UUID]:
    """Serve ``rows`` one by one; the lifespan's end flushes the writer."""
    app = create_app(
        Settings(
            environment="test",
            otlp_enabled=False,
            database_url=audit_db.writer_dsn,
            audit_spool_dir=tmp_path / "spool",
            audit_flush_interval_s=0.05,
            **settings,
        ),
        model=model,
        metric_readers=[InMemoryMetricReader()],
        shadow_model=shadow,
    )
    ids = []
    with TestClient(app) as client:
        for features in rows:
            resp = client.post("/v1/predict", json={"features": features})
            assert resp.status_code == 200, resp.text
            ids.append(UUID(resp.json()["prediction_id"]))
    return ids


def _label(audit_db: AuditDb, labels: dict[UUID, int]) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(audit_db.admin_dsn) as conn:
        for pid, label in labels.items():
            conn.execute(
                "INSERT INTO outcomes (prediction_id, label, received_at) VALUES (%s, %s, %s)",
                (pid, label, now),
            )


def _replay(audit_db: AuditDb, candidate: Predictor, version: str, **kw: Any) -> ReplayReport:
    """``run_replay`` as the replay role over the last hour of ``version``'s rows."""
    now = datetime.now(UTC)
    return run_replay(
        audit_db.replay_dsn,
        candidate,
        since=now - timedelta(hours=1),
        until=now + timedelta(minutes=5),
        model_name="card-fraud",
        model_version=version,
        **kw,
    )


def test_replaying_the_served_model_reproduces_every_prediction_exactly(
    audit_db: AuditDb, models: tuple[LoadedModel, LoadedModel], tmp_path: Path
) -> None:
    served = _as_version(models[0], "replay-self")
    rows, y = generate_transactions(300, seed=41)
    ids = _serve(audit_db, served, rows, tmp_path)
    _label(audit_db, {pid: int(v) for pid, v in zip(ids[:120], y[:120], strict=True)})
    totals: list[int] = []
    progress: list[int] = []
    report = _replay(
        audit_db,
        Predictor(served),
        "replay-self",
        batch_size=64,  # several batches of the server-side cursor
        on_total=totals.append,
        on_progress=progress.append,
    )
    assert totals == [300]
    assert progress == [64, 128, 192, 256, 300]  # streamed: one batch in memory at a time
    assert (report.logged, report.replayed, report.not_replayable) == (300, 300, 0)
    assert (report.agree, report.agreement) == (300, 1.0)
    assert report.served_versions == ["replay-self"]
    with psycopg.connect(audit_db.analyst_dsn) as conn:
        diff = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE served_prediction = candidate_prediction"
            " AND served_probability = candidate_probability) FROM replay_comparison"
            " WHERE replay_id = %s",
            (report.replay_id,),
        ).fetchone()
    assert diff == (300, 300)  # bit for bit (float8 equality)
    s = report.shift
    assert (s.mean_delta, s.max_abs_delta, s.psi) == (0.0, 0.0, 0.0)
    assert s.served_histogram == s.candidate_histogram
    assert sum(s.served_histogram) == 300
    q_served, q_cand = report.served_quality, report.candidate_quality
    assert q_served is not None
    assert q_cand is not None
    assert q_cand.labeled == q_served.labeled == 120
    for metric in ("precision", "recall", "roc_auc", "brier", "tp", "fp", "tn", "fn"):
        assert getattr(q_cand, metric) == getattr(q_served, metric), metric
    assert math.isnan(q_served.threshold)
    assert q_cand.threshold == served.metadata.decision_threshold


def test_a_different_candidate_gets_the_right_agreement_and_quality(
    audit_db: AuditDb, models: tuple[LoadedModel, LoadedModel], tmp_path: Path
) -> None:
    served = _as_version(models[0], "replay-diff")
    candidate = Predictor(models[1])
    rows, y = generate_transactions(400, seed=43)
    ids = _serve(audit_db, served, rows, tmp_path)
    labeled = {pid: int(v) for pid, v in zip(ids[::2], y[::2], strict=True)}
    _label(audit_db, labeled)
    report = _replay(audit_db, candidate, "replay-diff")
    mine = candidate.predict(rows)
    theirs = Predictor(served).predict(rows)
    agree = sum(a.label == b.label for a, b in zip(mine, theirs, strict=True))
    assert agree < 400  # the two models do disagree somewhere: the check below means something
    assert (report.replayed, report.agree) == (400, agree)
    assert report.agreement == agree / 400
    deltas = [a.probability - b.probability for a, b in zip(mine, theirs, strict=True)]
    assert report.shift.mean_delta == pytest.approx(sum(deltas) / 400, abs=1e-12)
    assert report.shift.max_abs_delta == pytest.approx(max(map(abs, deltas)), abs=1e-15)
    # the candidate's quality on the labeled rows, as scikit-learn computes it
    idx = list(range(0, 400, 2))
    truth = [int(y[i]) for i in idx]
    probs = [mine[i].probability for i in idx]
    labels = [mine[i].label for i in idx]
    q = report.candidate_quality
    assert q is not None
    assert q.labeled == 200
    assert q.precision == pytest.approx(precision_score(truth, labels), abs=1e-12)
    assert q.recall == pytest.approx(recall_score(truth, labels), abs=1e-12)
    assert q.roc_auc == pytest.approx(roc_auc_score(truth, probs), abs=1e-12)
    assert q.brier == pytest.approx(brier_score_loss(truth, probs), abs=1e-12)
    served_q = report.served_quality
    assert served_q is not None
    served_probs = [theirs[i].probability for i in idx]
    assert served_q.roc_auc == pytest.approx(roc_auc_score(truth, served_probs), abs=1e-12)
    # a replay id is used once
    with pytest.raises(ReplayError, match="exists already"):
        _replay(audit_db, candidate, "replay-diff", replay_id=report.replay_id)


def test_payloads_the_privacy_policy_changed_are_not_replayable(
    audit_db: AuditDb, models: tuple[LoadedModel, LoadedModel], tmp_path: Path
) -> None:
    served = _as_version(models[0], "replay-private")
    rows, _ = generate_transactions(50, seed=47)
    policy = {"amount": "drop", "merchant_category": "hash"}
    _serve(audit_db, served, rows[:30], tmp_path / "a", audit_privacy=policy, audit_hmac_key="k")
    _serve(audit_db, served, rows[30:], tmp_path / "b")  # kept whole
    report = _replay(audit_db, Predictor(served), "replay-private", privacy_rules=policy)
    assert (report.logged, report.replayed, report.not_replayable) == (50, 20, 30)
    assert report.not_replayable_by_feature == {
        "amount": {REASON_DROPPED: 30},
        "merchant_category": {REASON_HASHED: 30},
    }
    assert report.agree == 20
    with psycopg.connect(audit_db.analyst_dsn) as conn:
        n = conn.execute(
            "SELECT count(*) FROM replays WHERE replay_id = %s", (report.replay_id,)
        ).fetchone()
    assert n == (20,)  # nothing imputed, nothing written for them
    # without the rules at hand the hash is still recognised, the missing feature named
    bare = _replay(audit_db, Predictor(served), "replay-private")
    assert bare.not_replayable_by_feature == {
        "amount": {"missing from the logged payload": 30},
        "merchant_category": {REASON_HASHED: 30},
    }


def test_shadow_rows_land_in_replays_under_the_live_ids(
    audit_db: AuditDb, models: tuple[LoadedModel, LoadedModel], tmp_path: Path
) -> None:
    served = _as_version(models[0], "shadow-live")
    rows, _ = generate_transactions(60, seed=53)
    ids = _serve(audit_db, served, rows, tmp_path, shadow=models[1])
    expected = Predictor(models[1]).predict(rows)
    with psycopg.connect(audit_db.analyst_dsn) as conn:
        got = conn.execute(
            "SELECT prediction_id, candidate_prediction, candidate_probability, mode,"
            " served_version FROM replay_comparison WHERE replay_id = 'shadow-card-fraud-cand-1'"
            " AND served_version = 'shadow-live'"
        ).fetchall()
    by_id = {r[0]: r for r in got}
    assert set(by_id) == set(ids)
    for pid, want in zip(ids, expected, strict=True):
        assert by_id[pid][1] == want.label
        # a linear model's BLAS sums depend on the batch's shape (last-ulp differences
        # between the shadow's micro-batches and this one batch); tree models are exact
        assert by_id[pid][2] == pytest.approx(want.probability, rel=1e-12)
        assert by_id[pid][3:] == ("shadow", "shadow-live")


def test_the_roles_hold_least_privilege(audit_db: AuditDb) -> None:
    pid = UUID("01930000-0000-7000-8000-000000000001")
    now = datetime.now(UTC)
    insert_replay = (
        "INSERT INTO replays (replay_id, prediction_id, ts, mode, model_name, model_version,"
        " prediction, probability, scored_at) VALUES ('x', %s, %s, 'replay', 'm', 'v', 0, 0.5, %s)"
    )
    denied = [
        (
            audit_db.replay_dsn,
            "INSERT INTO outcomes (prediction_id, label, received_at) VALUES (%s, 1, now())",
            (pid,),
        ),
        (audit_db.replay_dsn, "DELETE FROM predictions WHERE prediction_id = %s", (pid,)),
        (
            audit_db.replay_dsn,
            "UPDATE replays SET probability = 1 WHERE prediction_id = %s",
            (pid,),
        ),
        (audit_db.writer_dsn, "SELECT count(*) FROM replays WHERE prediction_id = %s", (pid,)),
        (audit_db.analyst_dsn, insert_replay, (pid, now, now)),
    ]
    for dsn, query, params in denied:
        with psycopg.connect(dsn) as conn, pytest.raises(pgerrors.InsufficientPrivilege):
            conn.execute(query, params)
    for dsn in (audit_db.replay_dsn, audit_db.writer_dsn):
        with psycopg.connect(dsn) as conn:
            conn.execute(insert_replay, (pid, now, now))
            conn.rollback()


def test_the_replay_command(
    audit_db: AuditDb, models: tuple[LoadedModel, LoadedModel], tmp_path: Path
) -> None:
    served = _as_version(models[0], "replay-cli")
    rows, _ = generate_transactions(40, seed=59)
    _serve(audit_db, served, rows, tmp_path)
    res = CliRunner().invoke(
        cli_app,
        [
            "replay",
            "--candidate",
            str(models[1].path),
            "--since",
            "-1h",
            "--model-version",
            "replay-cli",
            "--json",
            "--out-dir",
            str(tmp_path / "out"),
        ],
        env={"INFERWATCH_REPLAY_DATABASE_URL": audit_db.replay_dsn},
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["logged"], doc["replayed"], doc["candidate_version"]) == (40, 40, "cand-1")
    png = Path(doc["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.name == f"{doc['replay_id']}.png"
