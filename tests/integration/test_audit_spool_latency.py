"""The audit queue full: ``submit`` then encodes and appends to the spool on the request
thread. What that adds, and that it stays bounded while the writer thread seals and fsyncs
segments on a slow disk (every fsync made to take SLOW_FSYNC_S): no fsync runs under the
lock an append takes (service/inferwatch/audit/spool.py), so a request never waits for one.

Prints one figure line (run with ``-s``) for docs/reliability.md.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from inferwatch.audit.records import PredictionRecord
from inferwatch.audit.writer import PostgresAuditWriter
from tests.fixtures.audit import Metrics, make_prediction

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 5_000  # distinct records, submitted over and over (the spool takes duplicates)
MAX_SUBMITS = 1_000_000  # at most; the run stops once SEALS segments were sealed
SEALS = 3
SLOW_FSYNC_S = 0.2  # a disk under write pressure; each seal and sync waits this long
# bounds, generous for a shared 2-core CI host (a page-cache append is tens of µs): both
# well below one fsync, which is what a request waited for when fsync ran under the lock
P99_BOUND_S = 0.005
MAX_BOUND_S = 0.1


def _submit_latencies(
    w: PostgresAuditWriter, records: list[PredictionRecord], until: Callable[[], bool]
) -> list[float]:
    """Submit records (cycling) until `until()` says enough (checked every 100); each
    one's time."""
    out = []
    for i in range(MAX_SUBMITS):
        r = records[i % len(records)]
        t0 = time.perf_counter()
        w.submit(r)
        out.append(time.perf_counter() - t0)
        if i % 100 == 0 and until():
            break
    return out


def test_submit_with_a_full_queue_is_bounded_while_segments_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    fsyncs = [0]

    def slow_fsync(fd: int) -> None:
        fsyncs[0] += 1
        time.sleep(SLOW_FSYNC_S)  # not synchronisation: the slow disk itself
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    w = PostgresAuditWriter(dsn=None, spool_dir=tmp_path, meter=Metrics().meter, queue_size=1)
    w.spool.open()  # the writer thread is not running: the queue stays full
    w.submit(make_prediction(-1))
    records = [make_prediction(i) for i in range(N)]
    stop = threading.Event()
    seals = [0]

    def sealer() -> None:  # the writer thread's fsync work: a sync and a seal per turn
        while not stop.wait(0.01):
            w.spool.sync()
            w.spool.seal()
            seals[0] += 1

    t = threading.Thread(target=sealer)
    t.start()
    try:
        lat = _submit_latencies(w, records, lambda: seals[0] >= SEALS)
    finally:
        stop.set()
        t.join()
    assert w.spool.pending_records == len(lat)
    w.spool.close()
    lat.sort()
    p50, p99, worst = lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]
    print(
        f"\n[spool-latency] submit with a full queue: n={len(lat)} p50={p50 * 1e6:.0f}us "
        f"p99={p99 * 1e6:.0f}us max={worst * 1e3:.1f}ms mean={statistics.mean(lat) * 1e6:.0f}us "
        f"while {seals[0]} segments were sealed and {fsyncs[0]} fsyncs took "
        f"{SLOW_FSYNC_S * 1e3:.0f} ms each"
    )
    assert seals[0] >= SEALS  # the fsyncs did happen meanwhile
    assert p99 < P99_BOUND_S
    assert worst < MAX_BOUND_S
