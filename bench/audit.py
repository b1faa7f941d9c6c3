"""bench/audit: the audit writer's COPY path vs one autocommit INSERT per row, one run.

    .venv/bin/python -m bench.audit [--rows 200000] [--insert-rows 5000]

Starts a throwaway Postgres cluster (stack/postgres.py: Debian's Postgres
binaries, as the postgres user, loopback), creates the audit schema with the
migrations, then measures on the same machine, same table, same 20-float JSONB
payload (plus a categorical and an entity id):

1. the request-path cost of ``submit`` (P50/P99 µs, while the writer drains), with the
   write-ahead journal (as shipped: encode + one ``write(2)`` per submit) and without it,
   alternated (off, on, on, off; each keeps its better run);
2. rows/s through the writer, the same two ways: submit N records, time until all are
   committed (fresh batches: binary COPY straight into the partitioned table);
3. rows/s of a spool replay (the idempotent path: COPY into a TEMP staging table,
   then INSERT ... SELECT ... ON CONFLICT DO NOTHING);
4. rows/s of the common practice: one INSERT per prediction, autocommit;
5. the server's ceiling for the same rows: pre-encoded binary COPY streams (no
   Python encoding in the timed part) on two connections, batches as the writer's,
   into a fresh copy of the schema: what Postgres alone takes on this machine;

and prints the ratios, the absolute figures and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import orjson
import psycopg
import uuid_utils
from opentelemetry.sdk.metrics import MeterProvider

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import benchmark_lock, pct
from inferwatch.audit import encoding as enc
from inferwatch.audit.privacy import PrivacyPolicy
from inferwatch.audit.records import PredictionRecord
from inferwatch.audit.writer import PostgresAuditWriter
from stack.postgres import create_audit_db, random_passwords, throwaway_cluster

FEATURES = [f"feature_{i:02d}" for i in range(20)]


def make_records(n: int, seed: int = 1) -> list[PredictionRecord]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(
            PredictionRecord(
                prediction_id=UUID(bytes=uuid_utils.uuid7().bytes),
                ts=datetime.now(UTC),
                model_name="card-fraud",
                model_version="2026.11.22",
                features={f: rnd.uniform(0, 5000) for f in FEATURES} | {"mcc": "grocery"},
                prediction=rnd.random() < 0.02,
                probability=rnd.random(),
                latency_s=rnd.uniform(5e-5, 5e-4),
                trace_id=f"{rnd.getrandbits(128):032x}",
                span_id=f"{rnd.getrandbits(64):016x}",
                entity_type="account",
                entity_id=f"acct-{rnd.randrange(1_000_000)}",
                request_id=None,
            )
        )
    return out


def machine() -> str:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def bench_writer(
    dsn: str, records: list[PredictionRecord], spool: Path, *, journal: bool
) -> tuple[float, list[float]]:
    """(rows/s through the writer, per-submit costs in µs)."""
    w = PostgresAuditWriter(
        dsn=dsn,
        spool_dir=spool,
        meter=MeterProvider().get_meter("bench"),
        queue_size=len(records) + 1,
        batch_size=2_000,
        flush_interval_s=0.05,
        journal=journal,
    )
    w.start()
    time.sleep(0.5)  # pool connected
    costs = []
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    for r in records:
        a = clock()
        w.submit(r)
        costs.append((clock() - a) / 1000)
    if not w.wait_idle(600):
        raise RuntimeError("writer did not drain")
    elapsed = time.perf_counter() - t0
    spooled = w.spool.pending_records
    w.close(30)
    if spooled:
        raise RuntimeError(f"{spooled} records were spooled during the run")
    return len(records) / elapsed, costs


def bench_replay(dsn: str, records: list[PredictionRecord], spool: Path) -> float:
    meter = MeterProvider().get_meter("bench")
    w = PostgresAuditWriter(dsn=None, spool_dir=spool, meter=meter, queue_size=len(records) + 1)
    w.start()
    for r in records:
        w.submit(r)
    w.close(600)  # everything goes to the spool
    w = PostgresAuditWriter(dsn=dsn, spool_dir=spool, meter=meter, flush_interval_s=0.05)
    t0 = time.perf_counter()
    w.start()
    if not w.wait_idle(600):
        raise RuntimeError("replay did not finish")
    elapsed = time.perf_counter() - t0
    w.close(30)
    return len(records) / elapsed


def bench_insert(dsn: str, records: list[PredictionRecord]) -> tuple[float, float]:
    """(rows/s, p50 µs) of one autocommit INSERT per row (stdlib-free: orjson payloads)."""
    lat = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        sql = (
            "INSERT INTO predictions (prediction_id, ts, model_name, model_version, entity_type,"
            " entity_id, features, prediction, probability, latency_s, trace_id, span_id,"
            " request_id) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s)"
        )
        conn.execute("SELECT 1")
        t0 = time.perf_counter()
        for r in records:
            a = time.perf_counter()
            conn.execute(
                sql,
                (
                    r.prediction_id,
                    r.ts,
                    r.model_name,
                    r.model_version,
                    r.entity_type,
                    r.entity_id,
                    orjson.dumps(r.features).decode(),
                    int(r.prediction),
                    r.probability,
                    r.latency_s,
                    r.trace_id,
                    r.span_id,
                    r.request_id,
                ),
            )
            lat.append((time.perf_counter() - a) * 1e6)
        elapsed = time.perf_counter() - t0
    return len(records) / elapsed, statistics.median(lat)


def bench_ceiling(dsn: str, records: list[PredictionRecord], batch: int = 2_000) -> float:
    """rows/s of Postgres alone: pre-encoded COPY streams, two connections, no encoding."""
    policy = PrivacyPolicy()
    tuples = [enc.prediction_tuple(r, policy)[0] for r in records]
    streams = [enc.copy_stream(tuples[i : i + batch]) for i in range(0, len(tuples), batch)]
    sql = f"COPY predictions ({', '.join(enc.PREDICTION_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    conns = [psycopg.connect(dsn) for _ in range(2)]

    def copy_all(conn: psycopg.Connection[tuple[object, ...]], mine: list[bytes]) -> None:
        for stream in mine:
            with conn.cursor().copy(sql) as copy:
                copy.write(stream)
            conn.commit()

    try:
        threads = [
            threading.Thread(target=copy_all, args=(c, streams[i :: len(conns)]))
            for i, c in enumerate(conns)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        for c in conns:
            c.close()
    return len(records) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="records through the writer")
    ap.add_argument("--insert-rows", type=int, default=5_000, help="rows for the per-row INSERT")
    args = ap.parse_args()

    cluster = throwaway_cluster()
    passwords = random_passwords()
    try:
        db = create_audit_db(cluster, "inferwatch_bench", passwords)
        with psycopg.connect(db.admin_dsn) as conn:
            pg = conn.execute("SHOW server_version").fetchone()
        print(f"machine: {machine()}; Postgres {pg[0] if pg else '?'} on loopback (fsync on)")
        print(
            f"payload: {len(FEATURES)} floats + 1 string as JSONB; table: predictions "
            "(partitioned by day, PK, BRIN(ts), entity and trace_id indexes)"
        )
        runs: dict[bool, list[tuple[float, list[float]]]] = {True: [], False: []}
        with tempfile.TemporaryDirectory() as tmp:
            for i, journal in enumerate((False, True, True, False)):
                runs[journal].append(
                    bench_writer(
                        db.writer_dsn,
                        make_records(args.rows, 10 + i),
                        Path(tmp) / f"w{i}",
                        journal=journal,
                    )
                )
            replay_rps = bench_replay(
                db.writer_dsn, make_records(args.rows // 2, 2), Path(tmp) / "r"
            )
        insert_rps, insert_p50 = bench_insert(db.writer_dsn, make_records(args.insert_rows, 3))
        fresh = create_audit_db(cluster, "inferwatch_bench_ceiling", passwords)
        ceiling_rps = bench_ceiling(fresh.writer_dsn, make_records(args.rows, 4))
    finally:
        cluster.destroy()

    best = {j: max(r, key=lambda run: run[0]) for j, r in runs.items()}
    writer_rps, costs = best[True]
    plain_rps, plain_costs = best[False]
    p50, p99 = pct(costs, 0.50), pct(costs, 0.99)
    print()
    print(f"{'path':58s} {'rows/s':>10s}")
    print(f"{'writer: submit -> journal + queue -> binary COPY':58s} {writer_rps:>10,.0f}")
    print(f"{'writer without the journal: submit -> queue -> COPY':58s} {plain_rps:>10,.0f}")
    print(f"{'writer: spool replay, staging + ON CONFLICT DO NOTHING':58s} {replay_rps:>10,.0f}")
    print(f"{f'one INSERT per row, autocommit (p50 {insert_p50:.0f} us)':58s} {insert_rps:>10,.0f}")
    print(f"{'Postgres alone: pre-encoded binary COPY, 2 connections':58s} {ceiling_rps:>10,.0f}")
    print()
    print(f"ratio writer / per-row INSERT:  {writer_rps / insert_rps:6.1f}x   (target >= 30x)")
    print(f"ratio replay / per-row INSERT:  {replay_rps / insert_rps:6.1f}x")
    print(f"writer rows/s vs 150k target:   {writer_rps / 150_000:6.2f}")
    print(f"Postgres alone vs 150k target:  {ceiling_rps / 150_000:6.2f}")
    print(f"writer / Postgres alone:        {writer_rps / ceiling_rps:6.2f}")
    print(f"writer with / without journal:  {writer_rps / plain_rps:6.2f}")
    for name, c in (("with the journal", costs), ("without the journal", plain_costs)):
        print(
            f"submit() on the request path, {name}: P50 {pct(c, 0.50):.2f} us, "
            f"P99 {pct(c, 0.99):.2f} us, max {max(c):.0f} us over {len(c):,} calls"
        )
    print(
        f"journal's cost per submit: P50 +{p50 - pct(plain_costs, 0.50):.2f} us, "
        f"P99 +{p99 - pct(plain_costs, 0.99):.2f} us"
    )
    for j, r in runs.items():
        label = "with" if j else "without"
        print(f"rows/s per run {label} the journal: " + ", ".join(f"{x[0]:,.0f}" for x in r))


if __name__ == "__main__":
    with benchmark_lock("bench.audit"):
        main()
