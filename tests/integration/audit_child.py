"""A child process for the SIGKILL test: writes, then spools, then waits to be killed.

Usage: python -m tests.integration.audit_child DSN SPOOL_DIR IDS_FILE N_WRITTEN N_SPOOLED
Prints "WRITTEN" once the first N_WRITTEN records are in Postgres, then reads one
line from stdin (the parent stops Postgres meanwhile), submits N_SPOOLED more,
prints "SPOOLED" once they are all in the spool and fsynced, and sleeps.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider

from inferwatch.audit.writer import PostgresAuditWriter
from tests.fixtures.pg import wait_until
from tests.integration.audit_helpers import make_prediction


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
        if not wait_until(lambda: w.queue_depth == 0 and not w.spool.pending_records, 60):
            sys.exit("phase 1 did not drain")
        time.sleep(0.2)  # let the last batch's commit finish (it is off the queue already)
        print("WRITTEN", flush=True)
        sys.stdin.readline()
        second = [make_prediction(i) for i in range(int(n2))]
        for r in second:
            ids.write(f"{r.prediction_id}\n")
            w.submit(r)
        ids.flush()
    if not wait_until(lambda: w.spool.pending_records == int(n2), 60):
        sys.exit(f"phase 2 spooled only {w.spool.pending_records}")
    w.spool.sync()
    print("SPOOLED", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
