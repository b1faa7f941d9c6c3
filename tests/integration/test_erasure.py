"""``inferwatch db erase``: one entity's predictions, outcomes and replays are deleted, as
the owner role, logged, and nothing of any other entity is touched."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from stack.postgres import AuditDb, PgCluster
from stack.procs import venv_bin
from tests.fixtures.pg import make_audit_db

pytestmark = pytest.mark.integration

# The columns of the replays table (migration 0005); created here when that migration is
# not in this tree, so the erasure's replays branch runs either way.
REPLAYS_IF_MISSING = """
CREATE TABLE IF NOT EXISTS replays (
    replay_id text NOT NULL, prediction_id uuid NOT NULL, ts timestamptz NOT NULL,
    mode text NOT NULL, model_name text NOT NULL, model_version text NOT NULL,
    prediction smallint NOT NULL, probability double precision NOT NULL,
    scored_at timestamptz NOT NULL)
"""


@pytest.fixture(scope="module")
def erase_db(pg_cluster: PgCluster) -> AuditDb:
    db = make_audit_db(pg_cluster, "inferwatch_erase_test")
    with psycopg.connect(db.owner_dsn) as conn:
        conn.execute(REPLAYS_IF_MISSING)
    return db


def _seed(db: AuditDb, entity_type: str, entity_id: str, days_ago: list[int]) -> list[uuid.UUID]:
    """Predictions of one entity (over several daily partitions), an outcome per id and
    one by entity, a replay row per prediction."""
    ids = [uuid.uuid4() for _ in days_ago]
    now = datetime.now(UTC)
    with psycopg.connect(db.admin_dsn) as conn, conn.cursor() as cur:
        for pid, ago in zip(ids, days_ago, strict=True):
            ts = now - timedelta(days=ago)
            cur.execute(
                "INSERT INTO predictions (prediction_id, ts, model_name, model_version,"
                " entity_type, entity_id, features, prediction, probability, latency_s,"
                " trace_id, span_id) VALUES (%s, %s, 'card-fraud', 'v1', %s, %s, %s, 1, 0.9,"
                " 0.001, '', '')",
                (pid, ts, entity_type, entity_id, Jsonb({"amount": 12.5})),
            )
            cur.execute(
                "INSERT INTO outcomes (prediction_id, label, received_at) VALUES (%s, 1, now())",
                (pid,),
            )
            cur.execute(
                "INSERT INTO replays VALUES ('replay-t', %s, %s, 'replay', 'card-fraud', 'v2',"
                " 1, 0.8, now())",
                (pid, ts),
            )
        cur.execute(
            "INSERT INTO outcomes (entity_type, entity_id, label, received_at)"
            " VALUES (%s, %s, 0, now())",
            (entity_type, entity_id),
        )
    return ids


def _left(db: AuditDb, entity_type: str, entity_id: str, ids: list[uuid.UUID]) -> tuple[Any, ...]:
    with psycopg.connect(db.admin_dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM predictions WHERE entity_type = %(t)s"
            "        AND entity_id = %(i)s),"
            " (SELECT count(*) FROM outcomes WHERE prediction_id = ANY(%(ids)s)"
            "        OR (entity_type = %(t)s AND entity_id = %(i)s)),"
            " (SELECT count(*) FROM replays WHERE prediction_id = ANY(%(ids)s))",
            {"t": entity_type, "i": entity_id, "ids": ids},
        ).fetchone()
    assert row is not None
    return tuple(row)


def _erase(dsn: str, entity_type: str, entity_id: str) -> subprocess.CompletedProcess[str]:
    argv = [str(venv_bin("inferwatch")), "db", "erase", "--dsn", dsn]
    argv += ["--entity-type", entity_type, "--entity-id", entity_id]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_erase_deletes_one_entity_everywhere_and_nothing_else(erase_db: AuditDb) -> None:
    tag = uuid.uuid4().hex[:8]
    target = ("account", f"acct-{tag}")
    same_id_other_type = ("card", f"acct-{tag}")
    other = ("account", f"acct-{tag}-2")
    ids = _seed(erase_db, *target, days_ago=[0, 1, 3])
    kept = {e: _seed(erase_db, *e, days_ago=[0, 2]) for e in (same_id_other_type, other)}
    assert _left(erase_db, *target, ids) == (3, 4, 3)

    # the writer (INSERT only) cannot erase, and nothing is deleted by trying
    refused = _erase(erase_db.writer_dsn, *target)
    assert refused.returncode == 2, refused.stderr
    assert "inferwatch_owner" in refused.stderr
    assert _left(erase_db, *target, ids) == (3, 4, 3)

    done = _erase(erase_db.owner_dsn, *target)
    assert done.returncode == 0, done.stderr
    assert "erased: 3 predictions, 4 outcomes, 3 replays" in done.stdout
    # logged: what was erased, with counts, without the entity id
    log = [line for line in done.stderr.splitlines() if "erasure of entity" in line]
    assert len(log) == 1, done.stderr
    assert "3 predictions, 4 outcomes, 3 replays" in log[0]
    assert target[1] not in done.stderr
    assert _left(erase_db, *target, ids) == (0, 0, 0)
    for entity, their_ids in kept.items():
        assert _left(erase_db, *entity, their_ids) == (2, 3, 2), entity

    again = _erase(erase_db.owner_dsn, *target)  # idempotent
    assert again.returncode == 0, again.stderr
    assert "erased: 0 predictions, 0 outcomes, 0 replays" in again.stdout
