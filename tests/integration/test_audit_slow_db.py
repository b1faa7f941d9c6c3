"""Postgres slow (a lock held on the audit table): the writer's statements time out after
STATEMENT_TIMEOUT_S, its batches go to the durable spool instead of waiting in memory, and
everything lands exactly once after the lock goes."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from inferwatch.audit.writer import STATEMENT_TIMEOUT_S
from inferwatch.telemetry import instruments as names
from stack.postgres import AuditDb
from stack.procs import poll
from tests.fixtures.audit import Metrics, count_ids, make_prediction, running_writer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_table_lock_spools_instead_of_stalling(audit_db: AuditDb, tmp_path: Path) -> None:
    recs = [make_prediction(i) for i in range(2_000)]
    ids = [r.prediction_id for r in recs]
    metrics = Metrics()
    with running_writer(audit_db.writer_dsn, tmp_path, metrics) as w:
        locker = psycopg.connect(audit_db.admin_dsn)
        try:
            locker.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
            t0 = time.monotonic()
            for r in recs:
                w.submit(r)
            poll(
                lambda: w.spool.pending_records == len(recs),
                STATEMENT_TIMEOUT_S * 4,
                "the blocked batch spooled",
            )
            spooled_after = time.monotonic() - t0
            assert w.queue_depth == 0
        finally:
            locker.rollback()  # the lock goes
            locker.close()
        poll(lambda: w.spool.pending_records == 0, 60, "the spool replayed after the lock")
    assert count_ids(audit_db.admin_dsn, ids) == (len(ids), len(ids))
    v = metrics.values()
    assert v[names.AUDIT_SPOOLED] == len(recs)
    assert v.get(names.AUDIT_DROPPED, 0) == 0
    print(f"\n[slow-db] lock held: {len(recs)} records spooled after {spooled_after:.1f}s")
    assert spooled_after >= STATEMENT_TIMEOUT_S * 0.9
