"""Benchmark: the SQL drift query (histograms + PSI for every feature) on N audit rows.

    PYTHONPATH=. .venv/bin/python bench/drift.py --rows 1000000 10000000

Starts a throwaway Postgres cluster (stack/postgres.py), applies the migrations,
fills ``predictions`` with N rows generated inside Postgres (INSERT ... SELECT from
generate_series, realistic JSONB payloads of the 16 card-fraud features), then runs
the drift query over the whole window as the analyst role: one cold run (right
after a restart of the cluster, OS cache left as it is) and three warm runs, and
prints the timings beside the machine's description. The quality query (join with
outcomes, 10% labeled) is timed the same way.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.common import benchmark_lock
from inferwatch.analysis import drift, store
from inferwatch.inference import data
from inferwatch.inference.training import card_fraud_schema, reference_profile
from stack.postgres import create_audit_db, random_passwords, throwaway_cluster

# Realistic payloads generated in SQL (Box-Muller for normals; same shapes as data.py),
# time-ordered UUIDv7-style ids and distinct trace ids as the service writes them (all-equal
# trace ids would make the hash index on trace_id degenerate and the fill quadratic).
_FILL = """
INSERT INTO predictions (prediction_id, ts, model_name, model_version, entity_type, entity_id,
                         features, prediction, probability, latency_s, trace_id, span_id)
SELECT (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7'
            || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,  -- UUIDv7 layout, as served
       ts, 'card-fraud', 'bench', 'transaction', 'b-' || g,
       jsonb_build_object(
         'amount', round((avg_amt * exp(0.6 * n2))::numeric, 2),
         'amount_avg_30d', round(avg_amt::numeric, 2),
         'hour_of_day', floor(random() * 24)::int,
         'day_of_week', floor(random() * 7)::int,
         'merchant_category', (ARRAY['grocery','gas','restaurant','travel','electronics',
             'online_retail','entertainment','health','utilities','jewelry','atm_cash','other'])
             [1 + floor(random() * 12)::int],
         'channel', (ARRAY['pos','pos','pos','ecommerce','ecommerce','atm','phone'])
             [1 + floor(random() * 7)::int],
         'card_present', random() < 0.67,
         'is_foreign', random() < 0.04,
         'distance_from_home_km', round((-10 * ln(1 - random()))::numeric, 3),
         'distance_from_last_txn_km', round((-6 * ln(1 - random()))::numeric, 3),
         'seconds_since_last_txn', round((1 - 30000 * ln(1 - random()))::numeric, 1),
         'txn_count_1h', floor(-ln(1 - random()) * 0.4)::int,
         'txn_count_24h', floor(-ln(1 - random()) * 3.4)::int,
         'account_age_days', 1 + floor(random() * 7299)::int,
         'failed_pin_attempts_24h', (random() < 0.05)::int,
         'credit_utilization', round((random() * random())::numeric, 4)),
       (random() < 0.02)::int, random() * random() * random(), 0.0003,
       md5(h), substr(h, 17, 16)  -- distinct trace/span ids, like real ones
FROM (
    SELECT g,
           %(t0)s::timestamptz + (g * %(step_us)s) * interval '1 microsecond' AS ts,
           md5(g::text || 'x') AS h,
           exp(3.8 + 0.7 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())) AS avg_amt,
           sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS n2
    FROM generate_series(%(lo)s, %(hi)s - 1) g
) s
"""


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = os.cpu_count()
    return f"{platform.node()}: {cpu}, {cores} cores, {mem:.0f} GiB RAM, {platform.platform()}"


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _drift_once(dsn: str, refs: list[Any], window: dict[str, datetime], n: int) -> None:
    with psycopg.connect(dsn) as c:
        _, rows = store.drift_histograms(c, refs, model_version="bench", **window)
        assert rows == n, (rows, n)


def _quality_once(dsn: str, window: dict[str, datetime], n: int) -> None:
    with psycopg.connect(dsn) as c:
        q = store.quality_counts(c, model_version="bench", threshold=0.5, **window)
        assert q.rows == n, (q.rows, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--warm-runs", type=int, default=3)
    args = ap.parse_args()
    cols, _ = data.generate_arrays(50_000, seed=7)
    refs = drift.parse_profile(reference_profile(card_fraud_schema(), cols))
    cluster = throwaway_cluster()
    print(machine())
    try:
        db = create_audit_db(cluster, "bench", random_passwords())
        with psycopg.connect(db.admin_dsn) as conn:
            print(conn.execute("SELECT version()").fetchone()[0])  # type: ignore[index]
            settings = conn.execute(
                "SELECT string_agg(name || '=' || setting, ', ') FROM pg_settings WHERE name IN"
                " ('shared_buffers', 'work_mem', 'max_parallel_workers_per_gather', 'jit')"
            ).fetchone()
            print("postgres settings:", settings[0] if settings else "?")
        t0 = datetime.now(UTC) - timedelta(hours=12)
        span = timedelta(hours=11)
        print(
            f"{'rows':>12} {'fill s':>8} {'table MB':>9} {'drift cold s':>13} "
            f"{'drift warm s':>13} {'rows/s warm':>12} {'quality warm s':>15}"
        )
        for n in sorted(args.rows):
            fill = 0.0
            step_us = span.total_seconds() * 1e6 / n
            with psycopg.connect(db.owner_dsn, autocommit=True) as conn:
                conn.execute("TRUNCATE predictions, outcomes")
                chunk = 1_000_000
                for lo in range(0, n, chunk):
                    params = {"t0": t0, "step_us": step_us, "lo": lo, "hi": min(n, lo + chunk)}
                    fill += timed(lambda p=params: conn.execute(_FILL, p))
                fill += timed(
                    lambda: conn.execute(
                        "INSERT INTO outcomes (prediction_id, label, received_at)"
                        " SELECT prediction_id, prediction, ts + interval '3 days' FROM predictions"
                        " WHERE random() < 0.1"
                    )
                )
                fill += timed(lambda: conn.execute("VACUUM ANALYZE predictions"))
                fill += timed(lambda: conn.execute("VACUUM ANALYZE outcomes"))
                size = conn.execute(
                    "SELECT pg_total_relation_size('predictions_default') +"
                    " coalesce((SELECT sum(pg_total_relation_size(inhrelid))"
                    " FROM pg_inherits WHERE inhparent = 'predictions'::regclass),"
                    " 0)"
                ).fetchone()[0]  # type: ignore[index]
            cluster.stop()
            cluster.start()

            window = {"since": t0, "until": t0 + span + timedelta(minutes=1)}
            run_drift = functools.partial(_drift_once, db.analyst_dsn, refs, window, n)
            run_quality = functools.partial(_quality_once, db.analyst_dsn, window, n)
            cold = timed(run_drift)
            warm = statistics.median(timed(run_drift) for _ in range(args.warm_runs))
            qwarm = statistics.median(timed(run_quality) for _ in range(args.warm_runs))
            print(
                f"{n:>12,} {fill:>8.1f} {int(size) / 2**20:>9.0f} {cold:>13.2f} {warm:>13.2f} "
                f"{n / warm:>12,.0f} {qwarm:>15.2f}",
                flush=True,
            )
    finally:
        cluster.destroy()


if __name__ == "__main__":
    with benchmark_lock("bench.drift"):
        main()
