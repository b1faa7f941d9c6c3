"""Replay a candidate model on the audit log: what would it have answered, and how well?

``run_replay`` streams the logged payloads of a window out of ``predictions`` through a
server-side cursor (bounded memory: one batch in Python at a time), checks each against
the candidate's feature schema, scores the replayable ones in batches with the
candidate's :class:`~inferwatch.inference.predictor.Predictor` (the service's own
encoding and decision rule, so a replay of the served model reproduces every logged
prediction and probability exactly), and COPYs the results into ``replays`` under a new
replay id, in one transaction: a replay that fails leaves no rows.

A payload is *not replayable* when a feature the candidate needs is absent (the privacy
policy dropped it, or the payload never had it), hashed by the privacy policy, or not a
value the candidate's schema accepts. Such rows are counted per feature and reason and
never imputed. The policy's rules (``INFERWATCH_AUDIT_PRIVACY``) name the reason; a
64-hex-digit string where the schema wants something else is a hash whatever the rules.

The report is computed by Postgres over ``replay_comparison`` (migration 0103) once the
rows are committed: agreement with the served predictions, the shift of the score
distribution, and, on the rows with outcomes, both models' quality by the quality
report's arithmetic (``analysis/quality.py``), on the same rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import numpy as np
import psycopg
from psycopg import sql
from uuid_utils.compat import uuid7

from inferwatch.analysis.drift import psi_from_proportions
from inferwatch.analysis.quality import Quality, QualityCounts, quality_from_counts
from inferwatch.audit import encoding as enc
from inferwatch.audit.privacy import DEFAULT_KEY
from inferwatch.audit.records import ReplayRecord
from inferwatch.inference.predictor import Predictor
from inferwatch.inference.schema import FeatureSchema, FeatureSpec

MODE_REPLAY: Final = "replay"
SCORE_BINS: Final = 20  # equal-width bins of [0, 1] for the score distributions
REASON_DROPPED: Final = "dropped by the privacy policy"
REASON_HASHED: Final = "hashed by the privacy policy"
REASON_MISSING: Final = "missing from the logged payload"
REASON_INVALID: Final = "not a value the candidate accepts"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[int], None]  # rows read so far


class ReplayError(RuntimeError):
    pass


def _rule(rules: Mapping[str, str], name: str) -> str:
    return rules.get(name, rules.get(DEFAULT_KEY, "keep"))


def _value_ok(spec: FeatureSpec, value: Any) -> bool:
    if spec.type == "category":
        return isinstance(value, str) and value in (spec.categories or ())
    if spec.type == "bool":
        return isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def unreplayable(
    schema: FeatureSchema, rules: Mapping[str, str], payload: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """(feature, reason) for every feature of ``schema`` the payload cannot give; [] if none."""
    out: list[tuple[str, str]] = []
    for spec in schema.features:
        if spec.name not in payload:
            dropped = _rule(rules, spec.name) == "drop"
            out.append((spec.name, REASON_DROPPED if dropped else REASON_MISSING))
            continue
        value = payload[spec.name]
        if _value_ok(spec, value):
            continue
        hashed = _rule(rules, spec.name) == "hash" or (
            isinstance(value, str) and _HEX64.match(value) is not None
        )
        out.append((spec.name, REASON_HASHED if hashed else REASON_INVALID))
    return out


@dataclass(frozen=True, slots=True)
class ScoreShift:
    """The served and the candidate's score (probability) distributions on the same rows."""

    served_mean: float | None
    candidate_mean: float | None
    served_p50_p90_p99: list[float] | None
    candidate_p50_p90_p99: list[float] | None
    mean_delta: float | None  # candidate - served
    mean_abs_delta: float | None
    max_abs_delta: float | None
    psi: float | None  # PSI of the candidate's scores against the served ones (SCORE_BINS)
    served_histogram: list[int] = field(default_factory=list)  # SCORE_BINS counts
    candidate_histogram: list[int] = field(default_factory=list)
    # SCORE_BINS x SCORE_BINS counts: [served bin][candidate bin]
    joint_histogram: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReplayReport:
    replay_id: str
    candidate_name: str
    candidate_version: str
    model_name: str
    served_versions: list[str]
    since: datetime
    until: datetime
    logged: int  # rows of the window
    replayed: int
    not_replayable: int
    # feature -> reason -> rows (a row may fail on several features)
    not_replayable_by_feature: dict[str, dict[str, int]]
    agree: int
    agreement: float | None
    # "served class -> candidate class" -> rows
    transitions: dict[str, int]
    shift: ScoreShift
    served_quality: Quality | None  # None: no replayed row has an outcome
    candidate_quality: Quality | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_replay_id(candidate: Predictor, now: datetime | None = None) -> str:
    """``replay-<name>-<version>-<UTC time>-<4 hex>``: unique per run, readable."""
    now = now or datetime.now(UTC)
    meta = candidate.metadata
    return f"replay-{meta.name}-{meta.version}-{now:%Y%m%dT%H%M%SZ}-{uuid7().hex[-4:]}"


def _window_filter(model_name: str, model_version: str | None) -> sql.Composable:
    parts = [sql.SQL("ts >= %(since)s AND ts < %(until)s AND model_name = %(model_name)s")]
    if model_version is not None:
        parts.append(sql.SQL("model_version = %(model_version)s"))
    return sql.SQL(" AND ").join(parts)


def _stream(
    conn: psycopg.Connection[Any], where: sql.Composable, params: dict[str, Any], batch_size: int
) -> Iterator[list[tuple[UUID, datetime, dict[str, Any]]]]:
    """Batches of (prediction_id, ts, features) through a server-side cursor."""
    query = sql.SQL("SELECT prediction_id, ts, features FROM predictions WHERE {}").format(where)
    with conn.cursor(name="inferwatch_replay") as cur:
        cur.itersize = batch_size
        cur.execute(query, params)
        while rows := cur.fetchmany(batch_size):
            yield rows


def _copy(conn: psycopg.Connection[Any], tuples: Sequence[bytes]) -> None:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in enc.REPLAY_COLUMNS)
    stmt = sql.SQL("COPY replays ({}) FROM STDIN (FORMAT BINARY)").format(cols)
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        copy.write(enc.copy_stream(tuples))


def run_replay(
    dsn: str,
    candidate: Predictor,
    *,
    since: datetime,
    until: datetime,
    model_name: str,
    model_version: str | None = None,
    replay_id: str | None = None,
    privacy_rules: Mapping[str, str] | None = None,
    batch_size: int = 2_000,
    on_total: Callable[[int], None] | None = None,
    on_progress: Progress | None = None,
) -> ReplayReport:
    """Replay the window on ``candidate``; rows land in ``replays``; returns the report."""
    import time

    started = time.perf_counter()
    rules = dict(privacy_rules or {})
    replay_id = replay_id or new_replay_id(candidate)
    meta = candidate.metadata
    schema = meta.feature_schema
    where = _window_filter(model_name, model_version)
    params: dict[str, Any] = {
        "since": since,
        "until": until,
        "model_name": model_name,
        "model_version": model_version,
    }
    reasons: dict[str, dict[str, int]] = {}
    logged = replayed = skipped = 0
    with (
        psycopg.connect(dsn, application_name="inferwatch-replay") as reader,
        psycopg.connect(dsn, application_name="inferwatch-replay") as writer,
    ):
        reader.read_only = True
        taken = writer.execute(
            "SELECT 1 FROM replays WHERE replay_id = %s LIMIT 1", (replay_id,)
        ).fetchone()
        if taken is not None:
            raise ReplayError(f"replay id {replay_id!r} exists already; choose another")
        # one pass for the progress bar's total and the served versions in the window
        count_q = sql.SQL(
            "SELECT model_version, count(*) FROM predictions WHERE {} GROUP BY 1 ORDER BY 1"
        ).format(where)
        per_version = reader.execute(count_q, params).fetchall()
        total = sum(int(r[1]) for r in per_version)
        served_versions = [str(r[0]) for r in per_version]
        if on_total is not None:
            on_total(total)
        for rows in _stream(reader, where, params, batch_size):
            logged += len(rows)
            ok_rows = []
            for pid, ts, features in rows:
                bad = unreplayable(schema, rules, features)
                if bad:
                    skipped += 1
                    for feature, reason in bad:
                        by = reasons.setdefault(feature, {})
                        by[reason] = by.get(reason, 0) + 1
                else:
                    ok_rows.append((pid, ts, features))
            if ok_rows:
                preds = candidate.predict([r[2] for r in ok_rows])
                now = datetime.now(UTC)
                tuples = [
                    enc.encode_replay(
                        ReplayRecord(
                            replay_id=replay_id,
                            prediction_id=pid,
                            ts=ts,
                            mode=MODE_REPLAY,
                            model_name=meta.name,
                            model_version=meta.version,
                            prediction=p.label,
                            probability=p.probability,
                            scored_at=now,
                        )
                    ).data
                    for (pid, ts, _), p in zip(ok_rows, preds, strict=True)
                ]
                _copy(writer, tuples)
                replayed += len(ok_rows)
            if on_progress is not None:
                on_progress(logged)
        reader.rollback()  # closes the cursor's read-only transaction
        writer.commit()
        agree, transitions, shift = _comparison(writer, replay_id)
        served_q, candidate_q = _qualities(writer, replay_id, meta.decision_threshold)
    return ReplayReport(
        replay_id=replay_id,
        candidate_name=meta.name,
        candidate_version=meta.version,
        model_name=model_name,
        served_versions=served_versions,
        since=since,
        until=until,
        logged=logged,
        replayed=replayed,
        not_replayable=skipped,
        not_replayable_by_feature=reasons,
        agree=agree,
        agreement=agree / replayed if replayed else None,
        transitions=transitions,
        shift=shift,
        served_quality=served_q,
        candidate_quality=candidate_q,
        seconds=time.perf_counter() - started,
    )


_SUMMARY: Final = """
SELECT count(*) FILTER (WHERE agree),
       avg(served_probability), avg(candidate_probability),
       avg(probability_delta), avg(abs(probability_delta)), max(abs(probability_delta)),
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY served_probability),
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY candidate_probability)
FROM replay_comparison WHERE replay_id = %(replay_id)s
"""
# 1-based bins of [0, 1]; a probability of exactly 1 goes to the last bin
_JOINT: Final = """
SELECT least(width_bucket(served_probability, 0, 1, %(bins)s), %(bins)s),
       least(width_bucket(candidate_probability, 0, 1, %(bins)s), %(bins)s),
       count(*)
FROM replay_comparison WHERE replay_id = %(replay_id)s
GROUP BY 1, 2
"""
_TRANSITIONS: Final = """
SELECT served_prediction, candidate_prediction, count(*)
FROM replay_comparison WHERE replay_id = %(replay_id)s
GROUP BY 1, 2 ORDER BY 1, 2
"""


def _comparison(
    conn: psycopg.Connection[Any], replay_id: str
) -> tuple[int, dict[str, int], ScoreShift]:
    params = {"replay_id": replay_id, "bins": SCORE_BINS}
    row = conn.execute(_SUMMARY, params).fetchone()
    assert row is not None
    agree = int(row[0] or 0)
    joint = np.zeros((SCORE_BINS, SCORE_BINS), dtype=np.int64)
    for s_bin, c_bin, n in conn.execute(_JOINT, params).fetchall():
        joint[int(s_bin) - 1, int(c_bin) - 1] += int(n)
    served_h, cand_h = joint.sum(axis=1), joint.sum(axis=0)
    n_rows = int(joint.sum())
    psi = psi_from_proportions(served_h / n_rows, cand_h / n_rows) if n_rows else None
    transitions = {
        f"{s} -> {c}": int(n) for s, c, n in conn.execute(_TRANSITIONS, params).fetchall()
    }

    def opt(v: Any) -> float | None:
        return None if v is None else float(v)

    shift = ScoreShift(
        served_mean=opt(row[1]),
        candidate_mean=opt(row[2]),
        served_p50_p90_p99=None if row[6] is None else [float(v) for v in row[6]],
        candidate_p50_p90_p99=None if row[7] is None else [float(v) for v in row[7]],
        mean_delta=opt(row[3]),
        mean_abs_delta=opt(row[4]),
        max_abs_delta=opt(row[5]),
        psi=psi,
        served_histogram=[int(v) for v in served_h],
        candidate_histogram=[int(v) for v in cand_h],
        joint_histogram=[[int(v) for v in r] for r in joint],
    )
    return agree, transitions, shift


# quality.sql's arithmetic over the replayed rows with an outcome, for one model's columns.
# The confusion counts use each model's own predicted class (the served model's is its
# logged class, decided at its threshold when it served; the candidate's at its own).
_QUALITY: Final = """
WITH win AS (
    SELECT {prob} AS probability, {pred} AS prediction, label
    FROM replay_comparison WHERE replay_id = %(replay_id)s
),
labeled AS (
    SELECT probability, prediction, label,
           rank() OVER (ORDER BY probability)
             + (count(*) OVER (PARTITION BY probability) - 1) / 2.0 AS avg_rank
    FROM win
    WHERE label IS NOT NULL
)
SELECT (SELECT count(*) FROM win) AS rows,
       count(*) AS labeled,
       count(*) FILTER (WHERE prediction = 1 AND label = 1) AS tp,
       count(*) FILTER (WHERE prediction = 1 AND label = 0) AS fp,
       count(*) FILTER (WHERE prediction <> 1 AND label = 0) AS tn,
       count(*) FILTER (WHERE prediction <> 1 AND label = 1) AS fn,
       coalesce(sum((probability - label) ^ 2), 0) AS brier_sum,
       coalesce(sum(avg_rank) FILTER (WHERE label = 1), 0) AS positive_rank_sum
FROM labeled
"""


def _quality(
    conn: psycopg.Connection[Any], replay_id: str, who: str, threshold: float
) -> Quality | None:
    query = sql.SQL(_QUALITY).format(
        prob=sql.Identifier(f"{who}_probability"), pred=sql.Identifier(f"{who}_prediction")
    )
    row = conn.execute(query, {"replay_id": replay_id}).fetchone()
    assert row is not None
    counts = QualityCounts(
        rows=int(row[0]),
        labeled=int(row[1]),
        tp=int(row[2]),
        fp=int(row[3]),
        tn=int(row[4]),
        fn=int(row[5]),
        brier_sum=float(row[6]),
        positive_rank_sum=float(row[7]),
    )
    return quality_from_counts(counts, threshold) if counts.labeled else None


def _qualities(
    conn: psycopg.Connection[Any], replay_id: str, candidate_threshold: float
) -> tuple[Quality | None, Quality | None]:
    # the served threshold is whatever each served version used: its logged classes carry it
    served = _quality(conn, replay_id, "served", math.nan)
    return served, _quality(conn, replay_id, "candidate", candidate_threshold)
