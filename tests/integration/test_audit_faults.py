"""Fault tests on a cluster of their own: Postgres stopped under load; SIGKILL with a spool.

Each prints one summary line (sent, stored, duplicates, drops) for the issue's
closing note; run with ``-s`` to see them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from uuid import UUID

import pytest

from inferwatch.telemetry import instruments as names
from stack.postgres import AuditDb
from stack.procs import poll
from tests.fixtures.audit import Metrics, WriterChild, count_ids, make_prediction, running_writer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_postgres_stopped_under_load_loses_and_duplicates_nothing(
    outage_db: AuditDb, tmp_path: Path
) -> None:
    n, rate = 6_000, 2_000.0  # records, records per second: ~3 s of load
    recs = [make_prediction(i) for i in range(n)]
    metrics = Metrics()
    submitted = 0
    errors: list[BaseException] = []
    with running_writer(outage_db.writer_dsn, tmp_path, metrics, connect_timeout_s=1.0) as w:

        def produce() -> None:
            nonlocal submitted
            t0 = time.perf_counter()
            for i, r in enumerate(recs):
                try:
                    w.submit(r)
                except BaseException as exc:  # submit must never raise
                    errors.append(exc)
                submitted = i + 1
                ahead = (i + 1) / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)  # not synchronisation: paces the load at `rate`

        producer = threading.Thread(target=produce)
        producer.start()
        poll(lambda: submitted >= 1_500, 30, "1500 records submitted")
        outage_db.cluster.stop("fast")
        poll(lambda: submitted >= 4_500, 30, "4500 records submitted")
        assert w.spool.pending_records > 0  # the outage really sent records to the spool
        outage_db.cluster.start()
        producer.join(30)
        poll(lambda: w.queue_depth == 0 and w.spool.pending_records == 0, 60, "drained")
    rows, distinct = count_ids(outage_db.admin_dsn, [r.prediction_id for r in recs])
    v = metrics.values()
    print(
        f"\n[outage] sent={n} submit_errors={len(errors)} stored={rows} "
        f"duplicates={rows - distinct} spooled={v.get(names.AUDIT_SPOOLED, 0):.0f} "
        f"replayed={v.get(names.AUDIT_REPLAYED, 0):.0f} dropped={v.get(names.AUDIT_DROPPED, 0):.0f}"
    )
    assert errors == []
    assert (rows, distinct) == (n, n)
    assert v.get(names.AUDIT_DROPPED, 0) == 0
    assert v[names.AUDIT_SPOOLED] > 0
    assert v[names.AUDIT_SPOOLED] == v[names.AUDIT_REPLAYED]


def test_sigkill_with_spooled_records_replays_all_once(outage_db: AuditDb, tmp_path: Path) -> None:
    n_written, n_spooled = 1_000, 3_000
    spool_dir, ids_file = tmp_path / "spool", tmp_path / "ids.txt"
    args = (outage_db.writer_dsn, str(spool_dir), str(ids_file), str(n_written), str(n_spooled))
    try:
        with WriterChild("audit_child", *args) as child:
            child.expect("SUBMITTED")
            written = [UUID(line) for line in ids_file.read_text().split()]
            assert len(written) == n_written
            want = (n_written, n_written)
            poll(lambda: count_ids(outage_db.admin_dsn, written) == want, 60, "phase 1 committed")
            outage_db.cluster.stop("fast")
            child.go()
            child.expect("SPOOLED")
            child.sigkill()
    finally:
        if not outage_db.cluster.running:
            outage_db.cluster.start()
    ids = [UUID(line) for line in ids_file.read_text().split()]
    assert len(ids) == n_written + n_spooled
    assert count_ids(outage_db.admin_dsn, ids) == (n_written, n_written)
    metrics = Metrics()
    with running_writer(outage_db.writer_dsn, spool_dir, metrics) as w:
        assert w.spool.pending_records == n_spooled  # what the killed process left
        poll(lambda: w.spool.pending_records == 0, 60, "the spool replayed")
    rows, distinct = count_ids(outage_db.admin_dsn, ids)
    v = metrics.values()
    print(
        f"\n[sigkill] sent={len(ids)} written_before_kill={n_written} spooled_at_kill={n_spooled} "
        f"stored={rows} duplicates={rows - distinct} replayed={v.get(names.AUDIT_REPLAYED, 0):.0f} "
        f"dropped={v.get(names.AUDIT_DROPPED, 0):.0f}"
    )
    assert (rows, distinct) == (len(ids), len(ids))
    assert v[names.AUDIT_REPLAYED] == n_spooled
