"""A child process for the SIGKILL test: writes, then spools, then waits to be killed.

Usage: python -m tests.integration.audit_child DSN SPOOL_DIR IDS_FILE N_WRITTEN N_SPOOLED
Submits N_WRITTEN records and prints "SUBMITTED" (the parent waits until they are
committed, then stops Postgres), reads one line from stdin, submits N_SPOOLED more,
prints "SPOOLED" once they are all in the spool and fsynced, and waits for its SIGKILL.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider

from inferwatch.audit.writer import PostgresAuditWriter
from stack.procs import poll
from tests.fixtures.audit import journal_records, make_prediction


def main() -> None:
    dsn, spool_dir, ids_file, n1, n2 = sys.argv[1:6]
    meter = MeterProvider().get_meter("child")
    w = PostgresAuditWriter(
        dsn=dsn, spool_dir=Path(spool_dir), meter=meter, flush_interval_s=0.05, connect_timeout_s=1
    )
    w.start()
    with open(ids_file, "w") as ids:
        first = [make_prediction(i) for i in range(int(n1))]
        for r in first:
            ids.write(f"{r.prediction_id}\n")
            w.submit(r)
        ids.flush()
        print("SUBMITTED", flush=True)
        sys.stdin.readline()
        second = [make_prediction(i) for i in range(int(n2))]
        for r in second:
            ids.write(f"{r.prediction_id}\n")
            w.submit(r)
        ids.flush()
    poll(lambda: w.spool.pending_records == int(n2), 60, f"phase 2: {n2} records spooled")
    assert w.spool.slot is not None
    slot = w.spool.slot  # and their journal files settled (rolled and deleted)
    poll(lambda: journal_records(slot) == 0, 60, "the journal settled")
    w.spool.sync()
    print("SPOOLED", flush=True)
    while True:
        signal.pause()  # until the parent's SIGKILL


if __name__ == "__main__":
    main()
