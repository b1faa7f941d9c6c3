"""The audit database's write settings: one list, run by every Postgres we start (compose's:
tests/integration/test_compose.py)."""

from __future__ import annotations

import psycopg
import pytest

from stack.postgres import PG_AUDIT_SETTINGS, AuditDb

pytestmark = pytest.mark.integration


def test_test_cluster_runs_the_audit_settings(audit_db: AuditDb) -> None:
    durable = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
    with psycopg.connect(audit_db.admin_dsn) as conn:  # durability is not traded for speed
        cur = conn.execute(
            "SELECT name, current_setting(name) FROM unnest(%s::text[]) AS name",
            (list(PG_AUDIT_SETTINGS) + list(durable),),
        )
        assert dict(cur.fetchall()) == PG_AUDIT_SETTINGS | durable
