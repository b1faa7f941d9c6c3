"""Benchmark: drift over N audit rows, a raw scan against the drift profiles, and Evidently.

    INFERWATCH_CACHE=... PYTHONPATH=. .venv/bin/python -m bench.drift --rows 1000000 10000000

Starts a throwaway Postgres cluster (stack/postgres.py), applies the migrations, and for
each N fills ``predictions`` with N rows generated inside Postgres (INSERT ... SELECT from
generate_series, realistic JSONB payloads of the 16 card-fraud features) spread evenly
over 30 days, so that the N-row window is also the 30-day window (720 closed hours).
Then, side by side, as the analyst role:

* raw scan: the drift query over the whole window (``drift_histograms.sql``), cold (right
  after a restart of the cluster, OS cache left as it is) and warm (median);
* roll-up: the analysis job's ``profiles.rollup`` building the 720 hourly profiles from
  nothing (the worst case: a backfill), in rows/s against the service's maximum
  prediction rate on this machine (``--max-rate``, docs/benchmarks.md, bench.overhead);
* profiles: drift over the same window from the profiles (aligned on hours: 720 profiles
  merged), and over the window shifted by 17 minutes and shortened by 40 (not aligned:
  719 profiles + a scan of the two partial hours); warm medians; the counts are checked
  identical to the raw scan's;
* the quality query (join with outcomes, 10% labeled), as before.

Finally Evidently's DataDriftPreset (its own virtualenv under ``${INFERWATCH_CACHE}/peers``,
pinned below) on the smallest N's rows against the rows the reference profile was built
from: its time and per-feature verdicts next to ours.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench.common import benchmark_lock
from bench.peers import envs
from inferwatch.analysis import drift, profiles, store
from inferwatch.inference import data
from inferwatch.inference.training import card_fraud_schema, reference_profile
from stack.postgres import create_audit_db, random_passwords, throwaway_cluster

# The service's maximum prediction rate on this machine: bench.overhead, iw-telemetry-off at
# c=32 (docs/benchmarks.md); the roll-up must keep up with ten times it.
MAX_PREDICTION_RATE = 4_036.0
EVIDENTLY = envs.PeerEnv(
    "evidently",
    ("evidently==0.7.23", "pandas==2.2.3"),
    # evidently 0.7.23 imports pandas.core.dtypes.common.infer_dtype_from_object (gone in 3)
    "pandas held at 2.2.3 (evidently 0.7.23 does not import with pandas 3)",
)
SPAN = timedelta(days=30)

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


def median_time(fn: Any, runs: int) -> float:
    return statistics.median(timed(fn) for _ in range(runs))


def raw_scan(dsn: str, refs: list[Any], window: tuple[datetime, datetime]) -> Any:
    with psycopg.connect(dsn) as c:
        return store.drift_histograms(
            c,
            refs,
            model_name=KEY.model_name,
            model_version=KEY.model_version,
            since=window[0],
            until=window[1],
        )


def from_profiles(dsn: str, refs: list[Any], window: tuple[datetime, datetime]) -> Any:
    with psycopg.connect(dsn) as c:
        c.read_only = True
        return profiles.window_histograms(
            c, refs, KEY, since=window[0], until=window[1], settle=timedelta(0)
        )


def quality(dsn: str, window: tuple[datetime, datetime], n: int) -> None:
    with psycopg.connect(dsn) as c:
        q = store.quality_counts(
            c,
            model_name=KEY.model_name,
            model_version=KEY.model_version,
            threshold=0.5,
            since=window[0],
            until=window[1],
        )
        assert q.rows == n, (q.rows, n)


def same_counts(refs: list[Any], a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(
        (a[r.name].bins, a[r.name].grid, a[r.name].missing)
        == (b[r.name].bins, b[r.name].grid, b[r.name].missing)
        for r in refs
    )


KEY = profiles.Key("card-fraud", "bench")


def fill(owner_dsn: str, n: int, t0: datetime) -> tuple[float, float]:
    """N rows over SPAN from t0, 10% labeled; (seconds, MiB)."""
    step_us = SPAN.total_seconds() * 1e6 / n
    spent = 0.0
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE predictions, outcomes, drift_profile_watermarks, drift_profile_buckets,"
            " drift_profiles"
        )
        chunk = 1_000_000
        for lo in range(0, n, chunk):
            params = {"t0": t0, "step_us": step_us, "lo": lo, "hi": min(n, lo + chunk)}
            spent += timed(lambda p=params: conn.execute(_FILL, p))
        spent += timed(
            lambda: conn.execute(
                "INSERT INTO outcomes (prediction_id, label, received_at)"
                " SELECT prediction_id, prediction, ts + interval '3 days' FROM predictions"
                " WHERE random() < 0.1"
            )
        )
        spent += timed(lambda: conn.execute("VACUUM ANALYZE predictions"))
        spent += timed(lambda: conn.execute("VACUUM ANALYZE outcomes"))
        row = conn.execute(
            "SELECT coalesce((SELECT sum(pg_total_relation_size(inhrelid))"
            " FROM pg_inherits WHERE inhparent = 'predictions'::regclass), 0)"
        ).fetchone()
    return spent, float(row[0]) / 2**20 if row else 0.0


_EVIDENTLY_SCRIPT = r"""
import json, sys, time
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

ref_path, cur_path, numeric, categorical = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
numeric, categorical = numeric.split(","), categorical.split(",")
t = time.perf_counter()
ref = pd.read_json(ref_path, lines=True)
cur = pd.read_json(cur_path, lines=True)
for c in categorical:
    ref[c] = ref[c].astype(str)
    cur[c] = cur[c].astype(str)
load_s = time.perf_counter() - t
definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
t = time.perf_counter()
snap = Report([DataDriftPreset()]).run(
    Dataset.from_pandas(cur, data_definition=definition),
    Dataset.from_pandas(ref, data_definition=definition),
)
report_s = time.perf_counter() - t
print(json.dumps({"load_s": load_s, "report_s": report_s, "snapshot": snap.dict()}, default=str))
"""


def evidently_side_by_side(
    analyst_dsn: str, refs: list[Any], ref_cols: dict[str, np.ndarray], ours: drift.DriftReport
) -> None:
    log = Path(tempfile.gettempdir()) / "inferwatch-bench-evidently.log"
    bin_dir = envs.ensure(EVIDENTLY, log)
    version = envs.installed(bin_dir).get("evidently", "?")
    numeric = [r.name for r in refs if isinstance(r, drift.NumericReference)]
    categorical = [r.name for r in refs if not isinstance(r, drift.NumericReference)]
    with tempfile.TemporaryDirectory(prefix="inferwatch-evidently-") as tmp:
        ref_path, cur_path = Path(tmp) / "reference.jsonl", Path(tmp) / "current.jsonl"
        with ref_path.open("w") as f:
            for i in range(len(next(iter(ref_cols.values())))):
                f.write(json.dumps({k: _plain(v[i]) for k, v in ref_cols.items()}) + "\n")
        with (
            psycopg.connect(analyst_dsn) as c,
            cur_path.open("wb") as f,
            c.cursor().copy(
                "COPY (SELECT features FROM predictions WHERE model_version = 'bench') TO STDOUT"
            ) as copy,
        ):
            for chunk in copy:
                f.write(chunk)
        script = Path(tmp) / "run.py"
        script.write_text(_EVIDENTLY_SCRIPT)
        proc = subprocess.run(
            [
                str(bin_dir / "python"),
                str(script),
                str(ref_path),
                str(cur_path),
                ",".join(numeric),
                ",".join(categorical),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
    if proc.returncode != 0:
        print(f"evidently {version} failed: {proc.stderr[-2000:]}")
        return
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    verdicts = evidently_verdicts(out["snapshot"])
    print(
        f"\nEvidently {version} DataDriftPreset on the same {ours.rows:,} rows "
        f"(reference: the {len(next(iter(ref_cols.values()))):,} training rows the profile "
        f"was built from): report {out['report_s']:.1f} s (+ {out['load_s']:.1f} s loading "
        "JSON into pandas)"
    )
    print(
        f"{'feature':<28} {'ours':<10} {'PSI':>7} {'W/JS':>7}   "
        f"{'Evidently':<10} {'method':<34} {'value':>8}"
    )
    for feat in ours.features:
        psi, second = feat.statistics
        ev = verdicts.get(feat.feature, ("?", "?", float("nan")))
        print(
            f"{feat.feature:<28} {feat.verdict:<10} {psi.value or 0:>7.3f} "
            f"{second.value or 0:>7.3f}   "
            f"{ev[0]:<10} {ev[1]:<34} {ev[2]:>8.4f}"
        )


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def evidently_verdicts(snapshot: dict[str, Any]) -> dict[str, tuple[str, str, float]]:
    """feature -> (verdict, method and threshold, value) from a snapshot's ValueDrift metrics."""
    out: dict[str, tuple[str, str, float]] = {}
    for m in snapshot.get("metrics", []):
        cfg = m.get("config", {}) or {}
        column = cfg.get("column")
        if not column or "ValueDrift" not in str(cfg.get("type", m.get("metric_id", ""))):
            continue
        value = m.get("value")
        value = float(value) if isinstance(value, (int, float)) else float("nan")
        method = str(cfg.get("method") or "?")
        threshold = float(cfg.get("threshold") or 0.0)
        is_pvalue = "p_value" in method or "test" in method.lower()
        drifted = value < threshold if is_pvalue else value >= threshold
        out[column] = ("drift" if drifted else "ok", f"{method} (thr {threshold})", value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--warm-runs", type=int, default=3)
    ap.add_argument("--max-rate", type=float, default=MAX_PREDICTION_RATE)
    ap.add_argument("--no-evidently", action="store_true")
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
        hour = timedelta(hours=1)
        t0 = profiles.floor_bucket(datetime.now(UTC), hour) - SPAN - hour
        aligned = (t0, t0 + SPAN)
        shifted = (t0 + timedelta(minutes=17), t0 + SPAN - timedelta(minutes=23))
        print(
            f"window: 30 days = 720 hourly buckets; roll-up target >= 10 x {args.max_rate:,.0f}"
            " predictions/s (the service's max on this machine); drift target <= 1 s"
        )
        print(
            f"{'rows':>12} {'fill s':>7} {'MB':>6} {'raw cold s':>10} {'raw warm s':>10} "
            f"{'rollup s':>9} {'rollup rows/s':>13} {'x max rate':>10} {'profiles s':>11} "
            f"{'prof unaligned s':>16} {'per prof. ms':>13} {'speed-up':>8} {'same':>5} "
            f"{'quality s':>9}"
        )
        first_report = None
        for n in sorted(args.rows):
            warm = args.warm_runs if n <= 2_000_000 else 1
            fill_s, size = fill(db.owner_dsn, n, t0)
            cluster.stop()
            cluster.start()
            raw_fn = functools.partial(raw_scan, db.analyst_dsn, refs, aligned)
            cold = timed(raw_fn)
            times = [timed(raw_fn) for _ in range(warm - 1)]
            t = time.perf_counter()
            want, want_rows = raw_fn()  # the last warm run: its counts are the reference
            raw_warm = statistics.median([*times, time.perf_counter() - t])
            roll = profiles.rollup(
                db.analyst_dsn, refs, KEY, settle=timedelta(0), horizon=SPAN + 2 * hour
            )
            assert roll.rows == n, roll
            prof_fn = functools.partial(from_profiles, db.analyst_dsn, refs, aligned)
            prof_warm = median_time(prof_fn, max(3, warm))
            got, rows, sources = prof_fn()
            assert not sources.scanned, sources
            same = same_counts(refs, got, want) and rows == want_rows == n
            un_fn = functools.partial(from_profiles, db.analyst_dsn, refs, shifted)
            un_warm = median_time(un_fn, max(3, warm))
            un_got, _, un_sources = un_fn()
            assert len(un_sources.scanned) == 2, un_sources
            if n == min(args.rows):  # one more raw scan: checked once
                un_want, _ = raw_scan(db.analyst_dsn, refs, shifted)
                same = same and same_counts(refs, un_got, un_want)
            q = median_time(functools.partial(quality, db.analyst_dsn, aligned, n), warm)
            print(
                f"{n:>12,} {fill_s:>7.0f} {size:>6.0f} {cold:>10.2f} {raw_warm:>10.2f} "
                f"{roll.seconds:>9.1f} {n / roll.seconds:>13,.0f} "
                f"{n / roll.seconds / args.max_rate:>10.1f} {prof_warm:>11.3f} {un_warm:>16.3f} "
                f"{prof_warm / sources.profiled_buckets * 1e3:>13.3f} "
                f"{raw_warm / prof_warm:>7.0f}x {same!s:>5} {q:>9.2f}",
                flush=True,
            )
            print(
                f"{'':>12} roll-up: {roll.buckets} hours + {roll.coarse_buckets} days summed;"
                f" aligned window: profiles {sources.profiled}; unaligned: profiles "
                f"{un_sources.profiled} + {len(un_sources.scanned)} partial hours scanned",
                flush=True,
            )
            if first_report is None:
                first_report = drift.evaluate(
                    refs,
                    got,
                    drift.DriftThresholds(),
                    model_version="bench",
                    since=aligned[0].isoformat(),
                    until=aligned[1].isoformat(),
                    rows=rows,
                )
                if not args.no_evidently:
                    evidently_side_by_side(db.analyst_dsn, refs, cols, first_report)
    finally:
        cluster.destroy()


if __name__ == "__main__":
    with benchmark_lock("bench.drift"):
        main()
