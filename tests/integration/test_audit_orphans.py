"""A dead process's spool slot is replayed by the live ones, by exactly one of them, without
`inferwatch db replay` (``Spool.claim_orphan`` and the writer's adoption turn)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferwatch.telemetry import instruments as names
from stack.postgres import AuditDb
from stack.procs import poll
from tests.fixtures.audit import Metrics, count_ids, make_prediction, running_writer

pytestmark = pytest.mark.integration


def test_an_orphaned_slot_is_adopted_once_by_two_live_writers(
    audit_db: AuditDb, tmp_path: Path
) -> None:
    recs = [make_prediction(i) for i in range(3_000)]
    ids = [r.prediction_id for r in recs]
    spool_dir = tmp_path / "spool"
    # the "dead" process: spool-only, three sealed segments in its slot
    with running_writer(None, spool_dir) as dead:
        for k in range(3):
            for r in recs[k * 1000 : (k + 1) * 1000]:
                dead.submit(r)
            want = (k + 1) * 1000
            poll(lambda w=want: dead.spool.pending_records == w, 30, f"{want} records spooled")  # type: ignore[misc]
            dead.spool.seal()
        assert dead.spool.slot is not None
        orphan_slot = dead.spool.slot
        segments = sorted(orphan_slot.glob("seg-*.log"))
        assert len(segments) == 3
        # while its owner lives, the slot is nobody else's
        m1, m2 = Metrics(), Metrics()
        with (
            running_writer(audit_db.writer_dsn, spool_dir, m1, adopt_interval_s=0.05) as a,
            running_writer(audit_db.writer_dsn, spool_dir, m2, adopt_interval_s=0.05) as b,
        ):
            assert {a.spool.slot, b.spool.slot}.isdisjoint({orphan_slot})
            assert a.spool.claim_orphan() is None
            assert count_ids(audit_db.admin_dsn, ids) == (0, 0)
            dead.spool.close()  # its lock goes, as when the kernel reaps a killed process
            dead.spool.slot = None  # (so the context's close does not reopen it)
            poll(
                lambda: count_ids(audit_db.admin_dsn, ids) == (len(ids), len(ids)),
                60,
                "the orphaned slot replayed by a live writer",
            )
            poll(lambda: not list(orphan_slot.glob("seg-*.log")), 10, "its segments deleted")
        replayed = [m.values().get(names.AUDIT_REPLAYED, 0) for m in (m1, m2)]
    # each record replayed by exactly one writer (ON CONFLICT would hide a double replay in
    # the row count, not in the counters)
    assert sum(replayed) == len(recs), replayed
    assert count_ids(audit_db.admin_dsn, ids) == (len(ids), len(ids))


def test_a_live_slot_is_never_claimed(tmp_path: Path) -> None:
    with running_writer(None, tmp_path) as w, running_writer(None, tmp_path) as other:
        w.submit(make_prediction(1))
        poll(lambda: w.spool.pending_records == 1, 10, "one record spooled")
        w.spool.seal()
        assert other.spool.claim_orphan() is None
        assert w.spool.claim_orphan() is None  # nor its own
