"""A child process for the journal's SIGKILL test: commits some records, holds others.

Usage: python -m tests.integration.journal_child DSN SPOOL_DIR IDS_FILE JOURNAL N_COMMITTED N_HELD
With the writer's journal on or off (JOURNAL: 1 or 0), submits N_COMMITTED records one by
one (a full batch: the writer commits them at once) and prints "SUBMITTED"; once the
parent has seen them in Postgres and answered a line on stdin, hands N_HELD more over in
one ``submit_many`` (the batch route's call), prints "HELD" and waits for its SIGKILL. The
held records stay in the writer's memory: the flush interval is an hour and they are
fewer than a batch, so the kill comes before any of them is stored or spooled.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider

from inferwatch.audit.writer import PostgresAuditWriter
from tests.fixtures.audit import make_prediction


def main() -> None:
    dsn, spool_dir, ids_file, journal, n1, n2 = sys.argv[1:7]
    w = PostgresAuditWriter(
        dsn=dsn,
        spool_dir=Path(spool_dir),
        meter=MeterProvider().get_meter("child"),
        batch_size=int(n1),
        flush_interval_s=3600.0,
        journal=journal == "1",
    )
    w.start()
    with open(ids_file, "w") as ids:
        first = [make_prediction(i) for i in range(int(n1))]
        ids.writelines(f"{r.prediction_id}\n" for r in first)
        ids.flush()
        for r in first:
            w.submit(r)
        print("SUBMITTED", flush=True)
        sys.stdin.readline()
        held = [make_prediction(i) for i in range(int(n2))]
        ids.writelines(f"{r.prediction_id}\n" for r in held)
        ids.flush()
        w.submit_many(held)
    print("HELD", flush=True)
    while True:
        signal.pause()  # until the parent's SIGKILL


if __name__ == "__main__":
    main()
