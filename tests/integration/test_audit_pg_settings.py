"""The audit database's write settings: one list, run by every Postgres we start."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import yaml

from stack.postgres import PG_AUDIT_SETTINGS, AuditDb
from stack.procs import ROOT

pytestmark = pytest.mark.integration


def test_compose_postgres_runs_the_audit_settings() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    argv = [str(a) for a in compose["services"]["postgres"]["command"]]
    assert argv[0] == "postgres"
    assert argv[1::2] == ["-c"] * len(PG_AUDIT_SETTINGS)
    assert dict(a.split("=", 1) for a in argv[2::2]) == PG_AUDIT_SETTINGS


def test_test_cluster_runs_the_audit_settings(audit_db: AuditDb) -> None:
    durable = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
    with psycopg.connect(audit_db.admin_dsn) as conn:  # durability is not traded for speed
        cur = conn.execute(
            "SELECT name, current_setting(name) FROM unnest(%s::text[]) AS name",
            (list(PG_AUDIT_SETTINGS) + list(durable),),
        )
        assert dict(cur.fetchall()) == PG_AUDIT_SETTINGS | durable
