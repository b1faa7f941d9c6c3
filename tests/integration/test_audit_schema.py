"""Migrations, roles and partitions of the audit database, on real Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import typer
from typer.testing import CliRunner

from inferwatch.audit import migrate as mig
from inferwatch.audit.cli import db_app
from stack.postgres import AuditDb
from tests.fixtures.audit import new_id

pytestmark = pytest.mark.integration

WRITE_SQL = {
    "INSERT": "INSERT INTO predictions (prediction_id, ts, model_name, model_version, features,"
    " prediction, probability, latency_s, trace_id, span_id)"
    " VALUES (gen_random_uuid(), now(), 'm', 'v', '{}', 0, 0.5, 0.001, '', '')",
    "UPDATE": "UPDATE predictions SET model_name = 'x'",
    "DELETE": "DELETE FROM predictions",
}


def _denied(dsn: str, statement: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 1 FROM predictions LIMIT 1",
        "SELECT 1 FROM outcomes LIMIT 1",
        "SELECT 1 FROM predictions_default LIMIT 1",
        WRITE_SQL["UPDATE"],
        WRITE_SQL["DELETE"],
        "DELETE FROM outcomes",
        "TRUNCATE predictions",
        "CREATE TABLE public.x (a int)",
    ],
)
def test_writer_cannot_read_change_or_delete(audit_db: AuditDb, statement: str) -> None:
    assert _denied(audit_db.writer_dsn, statement)


def test_writer_can_insert(audit_db: AuditDb) -> None:
    assert not _denied(audit_db.writer_dsn, WRITE_SQL["INSERT"])


@pytest.mark.parametrize(
    "statement",
    [
        *WRITE_SQL.values(),
        "INSERT INTO outcomes (prediction_id, label, received_at)"
        " VALUES (gen_random_uuid(), 1, now())",
        "TRUNCATE outcomes",
        "CREATE TABLE public.y (a int)",
    ],
)
def test_analyst_cannot_write(audit_db: AuditDb, statement: str) -> None:
    assert _denied(audit_db.analyst_dsn, statement)


def test_analyst_reads_tables_and_future_views(audit_db: AuditDb) -> None:
    with psycopg.connect(audit_db.owner_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE VIEW test_future_view AS SELECT count(*) AS n FROM outcomes"
        )
    with psycopg.connect(audit_db.analyst_dsn) as conn:
        conn.execute("SELECT count(*) FROM predictions").fetchone()
        conn.execute("SELECT count(*) FROM predictions_default").fetchone()
        assert conn.execute("SELECT n FROM test_future_view").fetchone() is not None


def test_migrate_is_idempotent_and_refuses_edited_migrations(
    audit_db: AuditDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    again = mig.migrate(audit_db.owner_dsn)
    assert again.applied == []
    assert again.already == [m.version for m in mig.load_migrations()]
    # a superuser runs it as the owner (SET ROLE): still a no-op
    assert mig.migrate(audit_db.admin_dsn).applied == []
    first = mig.load_migrations()[0]
    edited = mig.Migration(first.version, first.name, first.sql + "\n-- edited\n")
    monkeypatch.setattr(mig, "load_migrations", lambda: [edited])
    with pytest.raises(mig.MigrationError, match="changed after it was applied"):
        mig.migrate(audit_db.owner_dsn)


def test_roles_refuse_empty_passwords(audit_db: AuditDb) -> None:
    with pytest.raises(mig.MigrationError, match="empty password"):
        mig.ensure_roles(
            audit_db.admin_dsn, owner_password="x", writer_password="", analyst_password="y"
        )


def test_partitions_ahead_default_catch_and_retention(audit_db: AuditDb) -> None:
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    far = today + timedelta(days=30)  # beyond the partitions made ahead: lands in DEFAULT
    old = today - timedelta(days=200)
    ids = {"far": new_id(), "old": new_id()}
    with psycopg.connect(audit_db.admin_dsn, autocommit=True) as conn:
        for key, ts in (("far", far), ("old", old)):
            conn.execute(
                "INSERT INTO predictions (prediction_id, ts, model_name, model_version, features,"
                " prediction, probability, latency_s, trace_id, span_id)"
                " VALUES (%s, %s, 'm', 'v', '{}', 0, 0.5, 0.001, '', '')",
                (ids[key], ts),
            )
    with psycopg.connect(audit_db.admin_dsn) as conn:

        def where(pid: object) -> str:
            row = conn.execute(
                "SELECT tableoid::regclass::text FROM predictions WHERE prediction_id = %s", (pid,)
            ).fetchone()
            return str(row[0]) if row else "gone"

        assert where(ids["far"]) == "predictions_default"
        assert where(ids["old"]) == "predictions_default"
        conn.commit()
        made, _dropped = mig.maintain_partitions(
            audit_db.owner_dsn, days_ahead=31, retention_days=90
        )
        assert made >= 24
        # the DEFAULT partition's row moved into the new day's partition
        assert where(ids["far"]) == f"predictions_p{far:%Y%m%d}"
        assert where(ids["old"]) == "gone"  # past retention
        parts = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'predictions'::regclass"
        ).fetchone()
        assert parts is not None
        assert parts[0] >= 33


def test_cli_migrate(audit_db: AuditDb) -> None:
    app = typer.Typer()
    app.add_typer(db_app, name="db")
    res = CliRunner().invoke(app, ["db", "migrate", "--dsn", audit_db.owner_dsn])
    assert res.exit_code == 0, res.output
    assert "migrations applied: none" in res.output
    res = CliRunner().invoke(
        app,
        ["db", "roles", "--dsn", audit_db.admin_dsn],
        env={
            "INFERWATCH_OWNER_PASSWORD": "a",
            "INFERWATCH_WRITER_PASSWORD": "",
            "INFERWATCH_ANALYST_PASSWORD": "c",
        },
    )
    assert res.exit_code == 2
