"""The write-ahead journal against real Postgres: a killed process loses no answered record.

A child process (``tests.integration.journal_child``) commits some records, then holds
others in its writer's memory and is SIGKILLed. With the journal on, a new writer on the
same spool finds the dead process's journal and stores every record exactly once (those
already committed included); with it off, the same kill loses every held record, which
is what the journal is for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path
from uuid import UUID

import pytest

from inferwatch.audit.spool import JOURNAL_PREFIX
from inferwatch.telemetry import instruments as names
from stack.postgres import AuditDb
from stack.procs import poll
from tests.fixtures.audit import (
    Metrics,
    WriterChild,
    count_ids,
    journal_records,
    make_prediction,
    running_writer,
)

pytestmark = [pytest.mark.integration]
N_COMMITTED, N_HELD = 1_000, 300


def _kill_holding_child(dsn: str, admin_dsn: str, spool: Path, journal: bool) -> list[UUID]:
    """Run the child until it holds N_HELD records in memory, SIGKILL it; all its ids."""
    ids_file = spool.parent / "ids.txt"
    args = (dsn, str(spool), str(ids_file), "1" if journal else "0")
    with WriterChild("journal_child", *args, str(N_COMMITTED), str(N_HELD)) as child:
        child.expect("SUBMITTED")
        first = [UUID(line) for line in ids_file.read_text().split()]
        want = (N_COMMITTED, N_COMMITTED)
        poll(lambda: count_ids(admin_dsn, first) == want, 60, "the first batch committed")
        child.go()
        child.expect("HELD")
        child.sigkill()
    ids = [UUID(line) for line in ids_file.read_text().split()]
    assert len(ids) == N_COMMITTED + N_HELD
    # the held records were in the writer's memory only: none reached Postgres
    assert count_ids(admin_dsn, ids) == (N_COMMITTED, N_COMMITTED)
    return ids


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
def test_records_held_in_memory_at_a_sigkill(
    audit_db: AuditDb, tmp_path: Path, journal: bool
) -> None:
    spool = tmp_path / "spool"
    ids = _kill_holding_child(audit_db.writer_dsn, audit_db.admin_dsn, spool, journal)
    metrics = Metrics()
    with running_writer(audit_db.writer_dsn, spool, metrics, journal=journal) as w:
        # what the killed process left: its journal, committed records included
        assert w.spool.pending_records == (N_COMMITTED + N_HELD if journal else 0)
        poll(lambda: w.spool.pending_records == 0, 60, "the dead process's journal replayed")
    rows, distinct = count_ids(audit_db.admin_dsn, ids)
    assert rows == distinct  # never an id twice
    if journal:
        assert rows == N_COMMITTED + N_HELD
        assert metrics.values()[names.AUDIT_REPLAYED] == N_COMMITTED + N_HELD
    else:
        assert rows == N_COMMITTED  # every held record lost
    assert not list(spool.glob(f"slot-*/{JOURNAL_PREFIX}*"))


def test_journal_files_go_once_their_records_are_stored(audit_db: AuditDb, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    recs = [make_prediction(i) for i in range(3_000)]
    with running_writer(audit_db.writer_dsn, spool, flush_interval_s=0.2) as w:
        assert w.spool.slot is not None
        slot = w.spool.slot
        w.submit_many(recs[:1_000])
        for r in recs[1_000:]:
            w.submit(r)
        # the journal holds each record from its submit until it is stored
        assert journal_records(slot) > 0
        poll(lambda: journal_records(slot) == 0, 30, "the journal's files with records deleted")
        assert len(list(slot.glob(f"{JOURNAL_PREFIX}*"))) == 1  # the next one, ready
        ids = [r.prediction_id for r in recs]
        assert count_ids(audit_db.admin_dsn, ids) == (3_000, 3_000)
        assert w.spool.pending_records == 0


def test_an_unwritable_journal_never_fails_a_submit(
    audit_db: AuditDb, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal's disk full: records are queued without it, stored, and a warning
    says how many were not journaled."""
    if os.geteuid() != 0:
        pytest.fail("mounting the journal's tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        recs = [make_prediction(i) for i in range(500)]  # ~0.5 MB of journal frames
        with running_writer(audit_db.writer_dsn, mnt, flush_interval_s=3600.0) as w:
            assert w.spool.slot is not None
            filler = mnt / "filler"  # fill what the slot's files left free
            with open(filler, "wb", buffering=0) as f, caplog.at_level(logging.WARNING):
                with contextlib.suppress(OSError):  # ENOSPC: full
                    while True:
                        f.write(b"\0" * 4096)
                for r in recs:
                    w.submit(r)
            assert "audit journal" in caplog.text
            assert "queued without a journal entry" in caplog.text
            filler.unlink()
            assert w.queue_depth == len(recs)
            assert w.wait_idle(30)
        assert count_ids(audit_db.admin_dsn, [r.prediction_id for r in recs]) == (500, 500)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
