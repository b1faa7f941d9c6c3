"""Drift profiles against the real Postgres (tests/fixtures/pg.py): the sum of the profiles of
whole buckets + a scan of the rest gives the raw scan's counts exactly, for windows aligned
and not aligned on buckets, after late rows, never across a changed reference; privacy and
grants hold."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from inferwatch.analysis import drift, profiles, store
from inferwatch.analysis.jobs import AnalysisGauges, JobConfig, rollup_profiles, run_once
from inferwatch.audit.privacy import PrivacyPolicy
from inferwatch.inference import data
from inferwatch.inference.training import card_fraud_schema, reference_profile
from stack.postgres import AuditDb
from stack.procs import poll
from tests.fixtures.audit import Metrics, make_prediction, model_metadata, running_writer

pytestmark = pytest.mark.integration

HOUR = timedelta(hours=1)
# Every insert here has committed before the roll-up or read that follows starts, so no
# settle margin is needed for in-flight writer transactions (the service's default is 5 min).
SETTLE = timedelta(0)
# closed hours in the past, so the roll-up may profile them
T0 = profiles.floor_bucket(datetime.now(UTC), HOUR) - 8 * HOUR


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    cols, _ = data.generate_arrays(20_000, seed=5)
    return reference_profile(card_fraud_schema(), cols)


@pytest.fixture(scope="module")
def refs(reference: dict[str, Any]) -> list[drift.FeatureReference]:
    return drift.parse_profile(reference)


def payloads(n: int, seed: int, shifted: bool) -> list[dict[str, Any]]:
    """Generator rows with nulls, wrong types and values beyond the training range, so
    that every kind of count (missing, tails) is exercised."""
    rows, _ = data.generate_transactions(n, seed=seed, drift=shifted)
    for i, r in enumerate(rows):
        if i % 50 == 0:
            r["amount"] = None
        if i % 97 == 0:
            r["distance_from_home_km"] = "n/a"
        if i % 31 == 0:
            r["credit_utilization"] = 5.0 + i / 7  # above the training maximum
        if i % 37 == 0:
            r["account_age_days"] = -3 - i  # below the training minimum
    return rows


def fill(dsn: str, version: str, start: datetime, hours: int, per_hour: int, seed: int) -> int:
    """``per_hour`` rows spread evenly over each hour from ``start`` (odd hours shifted)."""
    n = 0
    with (
        psycopg.connect(dsn) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY predictions (prediction_id, ts, model_name, model_version, features,"
            " prediction, probability, latency_s, trace_id, span_id) FROM STDIN"
        ) as copy,
    ):
        for h in range(hours):
            step = HOUR / per_hour
            for i, r in enumerate(payloads(per_hour, seed + h, h % 2 == 1)):
                ts = start + h * HOUR + i * step
                copy.write_row(
                    (uuid.uuid4(), ts, "card-fraud", version, Jsonb(r), 0, 0.1, 1e-4, "", "")
                )
                n += 1
    return n


def raw(
    db: AuditDb, refs: list[drift.FeatureReference], version: str, since: datetime, until: datetime
) -> tuple[dict[str, drift.FeatureHistogram], int]:
    with psycopg.connect(db.analyst_dsn) as conn:
        return store.drift_histograms(
            conn, refs, model_name="card-fraud", model_version=version, since=since, until=until
        )


def merged(
    db: AuditDb, refs: list[drift.FeatureReference], version: str, since: datetime, until: datetime
) -> tuple[dict[str, drift.FeatureHistogram], int, profiles.WindowSources]:
    with psycopg.connect(db.analyst_dsn) as conn:
        conn.read_only = True
        key = profiles.Key("card-fraud", version)
        return profiles.window_histograms(conn, refs, key, since=since, until=until, settle=SETTLE)


def assert_same(
    refs: list[drift.FeatureReference],
    a: dict[str, drift.FeatureHistogram],
    b: dict[str, drift.FeatureHistogram],
) -> None:
    for r in refs:
        x, y = a[r.name], b[r.name]
        assert (x.bins, x.grid, x.missing) == (y.bins, y.grid, y.missing), r.name
        for cell in (0, len(getattr(r, "grid", ()))):
            assert x.grid_sum.get(cell, 0.0) == pytest.approx(y.grid_sum.get(cell, 0.0), rel=1e-14)
    th = drift.DriftThresholds(min_rows=1)
    rep = [
        drift.evaluate(refs, h, th, model_version="v", since="", until="", rows=0) for h in (a, b)
    ]
    for fa, fb in zip(rep[0].features, rep[1].features, strict=True):
        assert fa.verdict == fb.verdict
        for sa, sb in zip(fa.statistics, fb.statistics, strict=True):
            assert sa.value is not None
            assert sb.value is not None
            assert abs(sa.value - sb.value) <= 1e-12, (fa.feature, sa.statistic)


@pytest.fixture(scope="module")
def filled(audit_db: AuditDb, refs: list[drift.FeatureReference]) -> str:
    """Six closed hours of version "p-window" (600 rows each), rolled up."""
    fill(audit_db.writer_dsn, "p-window", T0, 6, 600, seed=100)
    key = profiles.Key("card-fraud", "p-window")
    res = profiles.rollup(audit_db.analyst_dsn, refs, key, settle=SETTLE)
    assert res.rows == 3_600
    return "p-window"


WINDOWS = {
    "aligned 6h": (T0, T0 + 6 * HOUR),
    "aligned 1h": (T0 + 2 * HOUR, T0 + 3 * HOUR),
    "not aligned, both ends": (T0 + timedelta(minutes=17), T0 + 5 * HOUR + timedelta(minutes=41)),
    "not aligned, start": (T0 + timedelta(minutes=59, seconds=59), T0 + 4 * HOUR),
    "inside one hour": (T0 + timedelta(minutes=5), T0 + timedelta(minutes=55)),
    "beyond the data": (T0 - 3 * HOUR, T0 + 9 * HOUR + timedelta(minutes=1)),
}


@pytest.mark.parametrize("window", list(WINDOWS))
def test_profiles_plus_scan_equal_the_raw_scan(
    audit_db: AuditDb, refs: list[drift.FeatureReference], filled: str, window: str
) -> None:
    since, until = WINDOWS[window]
    want, want_rows = raw(audit_db, refs, filled, since, until)
    got, rows, sources = merged(audit_db, refs, filled, since, until)
    assert rows == want_rows > 0
    assert_same(refs, got, want)
    first, last = profiles.ceil_bucket(since, HOUR), profiles.floor_bucket(until, HOUR)
    now = profiles.floor_bucket(datetime.now(UTC), HOUR)  # closed: empty ones rolled too
    assert sources.profiled_buckets == max(0, (min(last, now) - first) // HOUR)


def test_a_changed_reference_is_never_merged(
    audit_db: AuditDb, refs: list[drift.FeatureReference], filled: str
) -> None:
    amount = next(r for r in refs if isinstance(r, drift.NumericReference))
    moved = drift.NumericReference(
        amount.name,
        tuple(e * 1.1 for e in amount.edges),
        amount.proportions,
        amount.quantiles,
        amount.std,
    )
    other = [moved if r is amount else r for r in refs]
    since, until = T0, T0 + 6 * HOUR
    got, _, sources = merged(audit_db, other, filled, since, until)
    assert sources.profiled_buckets == 0  # the profiles of `refs` do not count for `other`
    assert_same(other, got, raw(audit_db, other, filled, since, until)[0])
    key = profiles.Key("card-fraud", filled)
    assert profiles.rollup(audit_db.analyst_dsn, other, key, settle=SETTLE).buckets > 0
    got, _, sources = merged(audit_db, other, filled, since, until)
    assert sources.profiled_buckets == 6
    assert_same(other, got, raw(audit_db, other, filled, since, until)[0])
    # the first reference's profiles are still there, still its own
    got, _, sources = merged(audit_db, refs, filled, since, until)
    assert sources.profiled_buckets == 6
    assert_same(refs, got, raw(audit_db, refs, filled, since, until)[0])


def test_rollup_is_idempotent(
    audit_db: AuditDb, refs: list[drift.FeatureReference], filled: str
) -> None:
    key = profiles.Key("card-fraud", filled)

    def snapshot() -> list[tuple[Any, ...]]:
        with psycopg.connect(audit_db.analyst_dsn) as conn:
            return conn.execute(
                "SELECT fingerprint, bucket_start, feature, bin, cell, n, tail_sum"
                " FROM drift_profiles WHERE model_version = %s ORDER BY 1, 2, 3, 4, 5",
                (filled,),
            ).fetchall()

    before = snapshot()
    assert profiles.rollup(audit_db.analyst_dsn, refs, key, settle=SETTLE).buckets == 0
    assert snapshot() == before
    # forced again over the same buckets: the same rows, not twice as many
    with psycopg.connect(audit_db.analyst_dsn) as conn:
        fp = profiles.fingerprint(conn, refs)
        conn.execute(
            "SELECT inferwatch_rollup_drift_profiles('card-fraud', %s, %s, %s, %s, %s)",
            (filled, HOUR, fp, T0, T0 + 6 * HOUR),
        )
    assert snapshot() == before


def test_grants_analyst_reads_and_rolls_up_only_writer_nothing(
    audit_db: AuditDb, refs: list[drift.FeatureReference], filled: str
) -> None:
    with psycopg.connect(audit_db.analyst_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM drift_profiles").fetchone() != (0,)
        for stmt in (
            "DELETE FROM drift_profiles",
            "UPDATE drift_profile_buckets SET rows = 0",
            "INSERT INTO drift_references VALUES ('x', '{}')",
            "DELETE FROM drift_profile_watermarks",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
        fp = profiles.fingerprint(conn, refs)
        now = profiles.floor_bucket(datetime.now(UTC), HOUR)
        for lo, hi, why in (
            (now, now + HOUR, "not closed"),
            (T0 + timedelta(minutes=1), T0 + HOUR, "not a run of whole buckets"),
        ):
            with pytest.raises(psycopg.errors.RaiseException, match=why):
                conn.execute(
                    "SELECT inferwatch_rollup_drift_profiles('card-fraud', %s, %s, %s, %s, %s)",
                    (filled, HOUR, fp, lo, hi),
                )
    with psycopg.connect(audit_db.writer_dsn, autocommit=True) as conn:
        for stmt in (
            "SELECT count(*) FROM drift_profiles",
            "SELECT inferwatch_drift_reference('{}')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)


def test_dropped_and_hashed_features_get_no_profile(
    audit_db: AuditDb,
    reference: dict[str, Any],
    refs: list[drift.FeatureReference],
    tmp_path: Path,
) -> None:
    """Rows written by the real writer under a policy that drops one feature and hashes
    another; the analysis job's roll-up and drift (same policy) leave both out."""
    rules: dict[str, Any] = {"amount": "drop", "merchant_category": "hash"}
    policy = PrivacyPolicy(rules, hmac_key=b"k" * 32)
    version = "p-privacy"
    start = T0 + HOUR
    recs = [
        make_prediction(i, ts=start + i * timedelta(seconds=3), model_version=version, features=r)
        for i, r in enumerate(payloads(400, seed=7, shifted=False))
    ]
    with running_writer(audit_db.writer_dsn, tmp_path, policy=policy) as w:
        for r in recs:
            w.submit(r)
        poll(lambda: w.queue_depth == 0 and w.spool.pending_records == 0, 30, "flushed")
    meta = model_metadata(version, reference)
    cfg = JobConfig(
        model_version=version, drift_window=3 * HOUR, privacy=rules, profile_settle=SETTLE
    )
    result = run_once(
        audit_db.analyst_dsn,
        meta,
        cfg,
        AnalysisGauges(Metrics().meter),
        now=start + 2 * HOUR,
    )
    with psycopg.connect(audit_db.analyst_dsn) as conn:
        profiled = {
            f
            for (f,) in conn.execute(
                "SELECT DISTINCT feature FROM drift_profiles WHERE model_version = %s", (version,)
            ).fetchall()
        }
    assert profiled == {r.name for r in refs} - set(rules)
    verdicts = {f.feature: (f.verdict, f.n) for f in result.drift.features}
    assert verdicts["amount"] == ("insufficient data", 0)
    assert verdicts["merchant_category"] == ("insufficient data", 0)
    assert result.sources is not None
    assert result.sources.profiled_buckets == 3
    assert verdicts["channel"][1] == 400


def test_rows_the_spool_replays_after_an_outage_are_counted(
    outage_db: AuditDb, refs: list[drift.FeatureReference], tmp_path: Path
) -> None:
    """Hour H is profiled; Postgres stops; the writer spools rows stamped in H and H+1
    (both closed: explicit timestamps instead of waiting for an hour to pass); Postgres
    restarts and the spool replays them. Until the roll-up runs again the reads scan those
    buckets instead of using their outdated profiles; after it, the profiles equal the
    scan."""
    db, version = outage_db, "p-outage"
    h = profiles.floor_bucket(datetime.now(UTC), HOUR) - 3 * HOUR
    key = profiles.Key("card-fraud", version)
    rows = payloads(600, seed=9, shifted=False)

    def rec(i: int, ts: datetime) -> Any:
        return make_prediction(i, ts=ts, model_version=version, features=rows[i])

    before = [rec(i, h + i * timedelta(seconds=6)) for i in range(300)]  # H, first 30 min
    late = [rec(300 + i, h + timedelta(minutes=40) + i * timedelta(seconds=12)) for i in range(300)]
    with running_writer(db.writer_dsn, tmp_path, connect_timeout_s=1.0) as w:
        for r in before:
            w.submit(r)
        poll(lambda: w.queue_depth == 0 and w.spool.pending_records == 0, 30, "flushed")
        first = profiles.rollup(db.analyst_dsn, refs, key, settle=SETTLE)
        assert first.rows == 300
        db.cluster.stop("fast")
        for r in late:  # H's last 20 minutes and H+1's first 40
            w.submit(r)
        poll(lambda: w.spool.pending_records == len(late), 30, "the late rows spooled")
        db.cluster.start()
        poll(lambda: w.spool.pending_records == 0 and w.queue_depth == 0, 60, "spool replayed")
    since, until = h, h + 2 * HOUR
    want, want_rows = raw(db, refs, version, since, until)
    assert want_rows == 600
    got, n, sources = merged(db, refs, version, since, until)
    assert sources.profiled_buckets == 0  # both profiles are outdated: scanned instead
    assert (n, got.keys()) == (600, want.keys())
    assert_same(refs, got, want)
    again = profiles.rollup(db.analyst_dsn, refs, key, settle=SETTLE)
    assert (again.buckets, again.rows) == (2, 600)  # exactly the two touched buckets
    got, n, sources = merged(db, refs, version, since, until)
    assert (sources.profiled_buckets, sources.scanned, n) == (2, [], 600)
    assert_same(refs, got, want)
    assert profiles.rollup(db.analyst_dsn, refs, key, settle=SETTLE).buckets == 0


def test_whole_days_come_from_day_profiles(
    audit_db: AuditDb, refs: list[drift.FeatureReference]
) -> None:
    """Days are summed from their hours: a window over a day and a half merges one day
    profile, the hours around it, and scans the partial hours at both ends."""
    day = profiles.floor_bucket(datetime.now(UTC), profiles.DAY) - 2 * profiles.DAY
    fill(audit_db.writer_dsn, "p-days", day - 3 * HOUR, 30, 40, seed=300)
    key = profiles.Key("card-fraud", "p-days")
    res = profiles.rollup(audit_db.analyst_dsn, refs, key, settle=SETTLE)
    assert res.coarse_buckets >= 2
    since, until = day - 2 * HOUR - timedelta(minutes=13), day + 26 * HOUR + timedelta(minutes=7)
    want, want_rows = raw(audit_db, refs, "p-days", since, until)
    got, rows, sources = merged(audit_db, refs, "p-days", since, until)
    assert sources.profiled == {"1d": 1, "1h": 4}
    assert rows == want_rows == 8 + 28 * 40 + 5  # rows every 1.5 min: from :47, 28 h, to :07
    assert_same(refs, got, want)


def test_the_summary_view_counts_values_beyond_the_training_range(
    audit_db: AuditDb, refs: list[drift.FeatureReference], filled: str
) -> None:
    """drift_profile_summary (0102), as the analyst reads it, against the raw scan's cells."""
    since, until = T0 + 2 * HOUR, T0 + 3 * HOUR
    want, _ = raw(audit_db, refs, filled, since, until)
    with psycopg.connect(audit_db.analyst_dsn) as conn:
        fp = profiles.fingerprint(conn, refs)
        got = {
            f: (n, missing, below, above)
            for f, n, missing, below, above in conn.execute(
                "SELECT feature, n, missing, below_training_min, above_training_max"
                " FROM drift_profile_summary WHERE model_version = %s AND fingerprint = %s"
                " AND bucket_width = '1 hour' AND bucket_start = %s",
                (filled, fp, since),
            ).fetchall()
        }
    for r in refs:
        h = want[r.name]
        m = len(r.grid) if isinstance(r, drift.NumericReference) else -1
        expected = (h.n, h.missing, h.grid.get(0, 0), h.grid.get(m, 0))
        assert got[r.name] == expected, r.name
    assert got["credit_utilization"][3] > 0  # the rows above the training maximum
    assert got["account_age_days"][2] > 0  # and below the minimum


def test_a_backfill_is_bounded_per_call_newest_first(
    audit_db: AuditDb, refs: list[drift.FeatureReference]
) -> None:
    # the 8 hours before the current one (not T0: a long run may have crossed an hour)
    start = profiles.floor_bucket(datetime.now(UTC), HOUR) - 8 * HOUR
    fill(audit_db.writer_dsn, "p-backfill", start, 8, 30, seed=500)
    key = profiles.Key("card-fraud", "p-backfill")
    horizon = datetime.now(UTC) - start
    since, until = start, start + 8 * HOUR
    want, _ = raw(audit_db, refs, "p-backfill", since, until)
    for profiled, rolled in ((3, 3), (6, 3), (8, 2)):  # newest first, 3 at most per call
        res = profiles.rollup(
            audit_db.analyst_dsn, refs, key, settle=SETTLE, horizon=horizon, max_new=3
        )
        assert (res.buckets, res.rows) == (rolled, 30 * rolled)
        got, _, sources = merged(audit_db, refs, "p-backfill", since, until)
        assert sources.profiled == {"1h": profiled}
        assert_same(refs, got, want)


def test_the_job_rolls_up_a_bounded_backfill(audit_db: AuditDb, reference: dict[str, Any]) -> None:
    """A first run on a version with no profiles rolls 24 hours, not the 31-day horizon."""
    cfg = JobConfig(model_version="p-fresh", profile_settle=SETTLE)
    res = rollup_profiles(audit_db.analyst_dsn, model_metadata("p-fresh", reference), cfg)
    assert res.buckets == cfg.profile_backfill_per_run == 24
    again = rollup_profiles(audit_db.analyst_dsn, model_metadata("p-fresh", reference), cfg)
    assert again.buckets == 24  # the next 24, older
