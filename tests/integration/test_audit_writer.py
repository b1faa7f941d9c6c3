"""The audit writer against a real Postgres: round trip, privacy, hostile values, spool."""

from __future__ import annotations

import errno
import logging
import math
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from inferwatch.audit import encoding as enc
from inferwatch.audit.privacy import PrivacyPolicy
from inferwatch.audit.records import AuditRecord, OutcomeRecord
from inferwatch.audit.sink import AuditSink
from inferwatch.audit.spool import Spool
from inferwatch.telemetry import instruments as names
from stack.postgres import AuditDb
from stack.procs import poll
from tests.fixtures.audit import (
    Metrics,
    count_ids,
    make_prediction,
    new_id,
    running_writer,
)

pytestmark = pytest.mark.integration

COLUMNS = ", ".join(enc.PREDICTION_COLUMNS)


def _rows(db: AuditDb, ids: list[object]) -> dict[object, tuple[object, ...]]:
    with psycopg.connect(db.admin_dsn) as conn:
        cur = conn.execute(
            f"SELECT {COLUMNS} FROM predictions WHERE prediction_id = ANY(%s)",  # noqa: S608
            (ids,),
        )
        return {r[0]: r for r in cur.fetchall()}


def test_writer_is_an_audit_sink(tmp_path: Path) -> None:
    with running_writer(None, tmp_path) as w:
        assert isinstance(w, AuditSink)


def test_every_field_round_trips_exactly(audit_db: AuditDb, tmp_path: Path) -> None:
    recs = [make_prediction(i) for i in range(300)]
    recs.append(make_prediction(999, entity_type=None, entity_id=None, request_id=None))
    recs.append(make_prediction(998, trace_id="", span_id="", probability=1.0, latency_s=0.0))
    metrics = Metrics()
    with running_writer(audit_db.writer_dsn, tmp_path, metrics) as w:
        for r in recs:
            w.submit(r)
    got = _rows(audit_db, [r.prediction_id for r in recs])
    assert len(got) == len(recs)
    for r in recs:
        row = got[r.prediction_id]
        expected = (
            r.prediction_id,
            r.ts,
            r.model_name,
            r.model_version,
            r.entity_type,
            r.entity_id,
            r.features,
            r.prediction,
            r.probability,
            r.latency_s,
            r.trace_id,
            r.span_id,
            r.request_id,
        )
        assert row == expected
    v = metrics.values()
    assert v[names.AUDIT_ENQUEUED] == len(recs)
    assert v[names.AUDIT_WRITTEN] == len(recs)
    assert v.get(names.AUDIT_DROPPED, 0) == 0
    assert v.get(names.AUDIT_SPOOLED, 0) == 0


def test_payload_keys_are_sent_in_the_order_postgres_stores_them(audit_db: AuditDb) -> None:
    """``jsonb_order`` must agree with the server, or its sort is not skipped."""
    obj = {f"k{i}": i for i in range(12)} | {"zz": 1, "a": 2, "é": 3, "ab": 4, "ü-long-key": 5}
    with psycopg.connect(audit_db.admin_dsn) as conn:
        cur = conn.execute(
            "SELECT jsonb_object_keys(%s::jsonb)", (enc.encode_json(obj)[0].decode(),)
        )
        stored = [row[0] for row in cur.fetchall()]
    assert list(enc.jsonb_order(obj)) == stored


def test_outcomes_are_stored_once_per_receipt(audit_db: AuditDb, tmp_path: Path) -> None:
    """A record written twice (a retry, a spool replay) is one row; a later receipt of a label
    already seen (a flip back, 1 -> 0 -> 1) is a new row."""
    pid = new_id()
    now = datetime.now(UTC)
    by_id = OutcomeRecord(label=1, ts=now, prediction_id=pid, observed_at=now - timedelta(days=2))
    by_entity = OutcomeRecord(label=0, ts=now, entity_type="txn", entity_id=f"t-{pid}")
    correction = OutcomeRecord(label=0, ts=now + timedelta(seconds=1), prediction_id=pid)
    flip_back = OutcomeRecord(label=1, ts=now + timedelta(seconds=2), prediction_id=pid)
    with running_writer(audit_db.writer_dsn, tmp_path) as w:
        for r in (by_id, by_id, by_entity, by_entity, correction, flip_back, flip_back):
            w.submit(r)
    with psycopg.connect(audit_db.admin_dsn) as conn:
        rows = conn.execute(
            "SELECT prediction_id, entity_type, entity_id, label, received_at, observed_at"
            " FROM outcomes WHERE prediction_id = %s OR entity_id = %s ORDER BY received_at, label",
            (pid, f"t-{pid}"),
        ).fetchall()
    assert rows == [
        (None, "txn", f"t-{pid}", 0, now, None),
        (pid, None, None, 1, now, by_id.observed_at),
        (pid, None, None, 0, correction.ts, None),
        (pid, None, None, 1, flip_back.ts, None),
    ]


def test_privacy_policy_applies_before_write_and_spool(audit_db: AuditDb, tmp_path: Path) -> None:
    policy = PrivacyPolicy({"f00": "drop", "mcc": "hash"}, b"k" * 32)
    rec = make_prediction(1)
    # spool-only first: the spooled bytes must not hold the raw values
    with running_writer(None, tmp_path, policy=policy) as w:
        w.submit(rec)
        poll(lambda: w.spool.pending_records == 1, 10, "the record in the spool")
    spooled = b"".join(p.read_bytes() for p in tmp_path.rglob("seg-*.log"))
    assert b"grocery" not in spooled
    assert b'"f00"' not in spooled
    with running_writer(audit_db.writer_dsn, tmp_path, policy=policy) as w:
        poll(lambda: w.spool.pending_records == 0, 20, "the spool replayed")
    features = _rows(audit_db, [rec.prediction_id])[rec.prediction_id][6]
    assert isinstance(features, dict)
    assert "f00" not in features
    assert features["mcc"] == policy.hash_value("grocery")
    assert features["f01"] == rec.features["f01"]


HOSTILE_STRINGS = [
    "O'Brien; DROP TABLE predictions; --",
    'quote " and \\ backslash \\\\ and \\u0000 literal',
    "tab\tnewline\ncr\r",
    "unicode: żółć 漢字 🦀 \u202e rtl \ufeff",
    "x" * 10_000,
]


def test_hostile_values_never_crash_the_writer(audit_db: AuditDb, tmp_path: Path) -> None:
    normal = [make_prediction(i) for i in range(50)]
    hostile = [
        make_prediction(100 + i, entity_id=s, request_id=s, features={"s": s, "n": 1})
        for i, s in enumerate(HOSTILE_STRINGS)
    ]
    huge = make_prediction(
        200, features={"big": 2**80, "neg": -(2**70), "tiny": 5e-324, "max": 1.7976931348623157e308}
    )
    nul = make_prediction(201, entity_id="a\x00b", features={"s": "c\x00d", "k\x00": 1})
    surrogate = make_prediction(202, entity_id="lone \ud800", features={"s": "\udfff"})
    nonfinite = make_prediction(203, probability=math.nan, features={"x": math.inf})
    metrics = Metrics()
    recs = normal[:25] + hostile + [huge, nul, surrogate, nonfinite] + normal[25:]
    with running_writer(audit_db.writer_dsn, tmp_path, metrics) as w:
        for r in recs:
            w.submit(r)
    got = _rows(audit_db, [r.prediction_id for r in recs])
    assert len(got) == len(recs)  # nothing lost
    for r in normal + hostile + [huge]:
        assert got[r.prediction_id][5] == r.entity_id
        assert got[r.prediction_id][6] == r.features | (
            # jsonb keeps 1.7976931348623157e308 as that decimal; json reads it back as int
            {"max": got[r.prediction_id][6]["max"]} if r is huge else {}  # type: ignore[index]
        )
    assert float(got[huge.prediction_id][6]["max"]) == 1.7976931348623157e308  # type: ignore[index]
    # what Postgres cannot hold is replaced, never fatal
    assert got[nul.prediction_id][5] == "a\ufffdb"
    assert got[nul.prediction_id][6] == {"s": "c\ufffdd", "k\ufffd": 1}
    assert got[surrogate.prediction_id][5] == "lone \ufffd"
    assert got[nonfinite.prediction_id][6] == {"x": None}
    assert math.isnan(float(got[nonfinite.prediction_id][8]))  # type: ignore[arg-type]
    assert metrics.values().get(names.AUDIT_DROPPED, 0) == 0


def test_refused_record_is_dead_lettered_without_losing_others(
    audit_db: AuditDb, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    good = [OutcomeRecord(label=1, ts=now, prediction_id=new_id()) for _ in range(40)]
    bad = OutcomeRecord(label=1, ts=now)  # no key: violates outcomes_key_present
    unencodable = make_prediction(1, prediction=70_000)  # beyond smallint
    metrics = Metrics()
    with (
        caplog.at_level(logging.ERROR),
        running_writer(audit_db.writer_dsn, tmp_path, metrics) as w,
    ):
        records: list[AuditRecord] = [*good[:20], bad, unencodable, *good[20:]]
        for r in records:
            w.submit(r)
    with psycopg.connect(audit_db.admin_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outcomes WHERE prediction_id = ANY(%s)",
            ([g.prediction_id for g in good],),
        ).fetchone()
    assert row == (40,)
    assert metrics.values()[names.AUDIT_DROPPED] == 2
    assert str(unencodable.prediction_id) in caplog.text
    assert list(tmp_path.rglob("deadletter.log"))


def test_full_queue_spills_to_spool_not_the_floor(audit_db: AuditDb, tmp_path: Path) -> None:
    metrics = Metrics()
    from inferwatch.audit.writer import PostgresAuditWriter

    w = PostgresAuditWriter(
        dsn=audit_db.writer_dsn,
        spool_dir=tmp_path,
        meter=metrics.meter,
        queue_size=10,
        flush_interval_s=0.05,
    )
    recs = [make_prediction(i) for i in range(500)]
    w.spool.open()  # not started yet: the queue cannot drain, so 490 overflow
    for r in recs:
        w.submit(r)
    assert w.queue_depth == 10
    assert w.spool.pending_records == 490
    w.spool.close()
    w.start()
    poll(lambda: w.spool.pending_records == 0 and w.queue_depth == 0, 30, "spool and queue empty")
    w.close(10)
    assert count_ids(audit_db.admin_dsn, [r.prediction_id for r in recs]) == (500, 500)
    v = metrics.values()
    assert v[names.AUDIT_SPOOLED] == 490
    assert v[names.AUDIT_REPLAYED] == 490
    assert v.get(names.AUDIT_DROPPED, 0) == 0


def test_unwritable_spool_counts_and_logs_each_drop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics()
    recs = [make_prediction(i) for i in range(7)]

    def disk_full(self: Spool, kind: int, tuples: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Spool, "append", disk_full)
    with caplog.at_level(logging.ERROR), running_writer(None, tmp_path, metrics) as w:
        for r in recs:
            w.submit(r)
        poll(lambda: metrics.values().get(names.AUDIT_DROPPED, 0) == 7, 10, "7 drops counted")
    for r in recs:
        assert str(r.prediction_id) in caplog.text


def test_replays_are_idempotent(audit_db: AuditDb, tmp_path: Path) -> None:
    recs = [make_prediction(i) for i in range(1000)]
    with running_writer(None, tmp_path / "a") as w:  # spool-only
        for r in recs:
            w.submit(r)
        poll(lambda: w.spool.pending_records == len(recs), 10, "every record spooled")
    # the same spool replayed twice (as after a crash between commit and delete),
    # and half of the records already stored by a first, direct write
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with running_writer(audit_db.writer_dsn, tmp_path / "c") as w:
        for r in recs[:500]:
            w.submit(r)
    for d in ("a", "b"):
        with running_writer(audit_db.writer_dsn, tmp_path / d) as w:
            poll(lambda w=w: w.spool.pending_records == 0, 30, f"spool {d} replayed")  # type: ignore[misc]
    assert count_ids(audit_db.admin_dsn, [r.prediction_id for r in recs]) == (1000, 1000)


def test_gauges_report_queue_spool_and_age(tmp_path: Path) -> None:
    clock = [1000.0]
    metrics = Metrics()
    from inferwatch.audit.writer import PostgresAuditWriter

    w = PostgresAuditWriter(dsn=None, spool_dir=tmp_path, meter=metrics.meter, queue_size=3)
    w.spool._clock = lambda: clock[0]
    w.spool.open()
    for i in range(5):
        w.submit(make_prediction(i))
    clock[0] += 42.0
    v = metrics.values()
    assert v[names.AUDIT_QUEUE_DEPTH] == 3
    assert v[names.AUDIT_SPOOL_SIZE] == 2
    assert v[names.AUDIT_SPOOL_OLDEST_AGE] == pytest.approx(42.0)
    w.close(1.0)
