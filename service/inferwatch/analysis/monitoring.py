"""Queries behind GET /v1/monitoring/*: latency, recent predictions, distribution, drift.

Runs as the analyst role (SELECT only) through a small pool that the app's lifespan
opens and closes (:meth:`MonitoringStore.open`, :meth:`MonitoringStore.close`). All SQL
of the monitoring routes lives here; the routes only check the key and the parameters.
Every query is bounded: a time window on the partition key, a LIMIT, or both.

Must never: make start-up wait for Postgres or fail when it is down (the pool connects
when a query needs a connection), or write.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from inferwatch.analysis import drift as drift_stats
from inferwatch.analysis import profiles
from inferwatch.inference.metadata import ModelMetadata

MAX_WINDOW: Final = timedelta(days=31)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Keyset position: the (ts, prediction_id) of the last row of the previous page."""

    ts: datetime
    prediction_id: uuid.UUID

    def encode(self) -> str:
        return f"{self.ts.isoformat()}_{self.prediction_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        ts, _, pid = text.rpartition("_")
        stamp = datetime.fromisoformat(ts)
        if stamp.tzinfo is None:
            raise ValueError("cursor timestamp without timezone")
        return cls(stamp, uuid.UUID(pid))


class MonitoringStore:
    def __init__(self, dsn: str, *, max_size: int = 4, timeout_s: float = 5.0) -> None:
        # min_size=0: no connection until a query needs one, so opening the pool neither
        # waits for Postgres nor fails when it is down; a query then waits at most
        # timeout_s (PoolTimeout: the routes answer 503 database_unavailable).
        self._pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=0,
            max_size=max_size,
            timeout=timeout_s,
            open=False,
            kwargs={"options": "-c statement_timeout=15000 -c default_transaction_read_only=on"},
        )

    def open(self) -> None:
        """Start the pool's workers (the lifespan, once per process); connects nothing."""
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    def _fetch(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query.encode(), params)
            return list(cur.fetchall())

    def latency(
        self, since: datetime, until: datetime, model_name: str, model_version: str | None
    ) -> dict[str, Any]:
        rows = self._fetch(
            "SELECT count(*) AS n,"
            " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_s) AS q,"
            " max(latency_s) AS max"
            " FROM predictions WHERE ts >= %(since)s AND ts < %(until)s"
            " AND model_name = %(m)s AND (%(v)s::text IS NULL OR model_version = %(v)s)",
            {"since": since, "until": until, "m": model_name, "v": model_version},
        )
        row = rows[0]
        q = row["q"] or [None, None, None]
        return {
            "count": int(row["n"]),
            "p50_s": q[0],
            "p95_s": q[1],
            "p99_s": q[2],
            "max_s": row["max"],
        }

    def recent(
        self,
        *,
        limit: int,
        cursor: Cursor | None,
        model_name: str,
        model_version: str | None,
        entity_type: str | None,
        entity_id: str | None,
        lookback: timedelta,
        now: datetime,
    ) -> tuple[list[dict[str, Any]], Cursor | None]:
        """Newest first, keyset-paginated on (ts, prediction_id); bounded by ``lookback``."""
        rows = self._fetch(
            "SELECT prediction_id, ts, model_name, model_version, entity_type, entity_id,"
            " features, prediction, probability, latency_s, trace_id, request_id"
            " FROM predictions"
            " WHERE ts >= %(floor)s AND ts < %(now)s"
            " AND (%(cts)s::timestamptz IS NULL OR (ts, prediction_id) < (%(cts)s, %(cid)s::uuid))"
            " AND model_name = %(m)s AND (%(v)s::text IS NULL OR model_version = %(v)s)"
            " AND (%(et)s::text IS NULL OR entity_type = %(et)s)"
            " AND (%(ei)s::text IS NULL OR entity_id = %(ei)s)"
            " ORDER BY ts DESC, prediction_id DESC LIMIT %(limit)s",
            {
                "floor": now - lookback,
                "now": now,
                "cts": cursor.ts if cursor else None,
                "cid": cursor.prediction_id if cursor else None,
                "m": model_name,
                "v": model_version,
                "et": entity_type,
                "ei": entity_id,
                "limit": limit,
            },
        )
        out = [
            {**r, "prediction_id": str(r["prediction_id"]), "ts": r["ts"].isoformat()} for r in rows
        ]
        nxt = Cursor(rows[-1]["ts"], rows[-1]["prediction_id"]) if len(rows) == limit else None
        return out, nxt

    def distribution(
        self,
        since: datetime,
        until: datetime,
        model_name: str,
        model_version: str | None,
        bins: int,
    ) -> dict[str, Any]:
        rows = self._fetch(
            # a NaN probability (stored as served) counts in its class but in no bin:
            # width_bucket refuses NaN
            "SELECT prediction, CASE WHEN probability = 'NaN' THEN NULL"
            " ELSE least(width_bucket(probability, 0, 1, %(bins)s), %(bins)s) END AS b,"
            " count(*) AS n FROM predictions"
            " WHERE ts >= %(since)s AND ts < %(until)s"
            " AND model_name = %(m)s AND (%(v)s::text IS NULL OR model_version = %(v)s)"
            " GROUP BY 1, 2",
            {"since": since, "until": until, "m": model_name, "v": model_version, "bins": bins},
        )
        classes: dict[str, int] = {}
        hist = [0] * bins
        for r in rows:
            classes[str(r["prediction"])] = classes.get(str(r["prediction"]), 0) + int(r["n"])
            if r["b"] is not None:
                hist[max(int(r["b"]), 1) - 1] += int(r["n"])
        total = sum(classes.values())
        return {
            "count": total,
            "classes": {k: {"count": v, "share": v / total} for k, v in sorted(classes.items())},
            "probability_histogram": [
                {"lower": i / bins, "upper": (i + 1) / bins, "count": hist[i]} for i in range(bins)
            ],
        }

    def drift(
        self,
        meta: ModelMetadata,
        since: datetime,
        until: datetime,
        *,
        privacy: dict[str, str],
        width: timedelta,
        thresholds: drift_stats.DriftThresholds,
    ) -> dict[str, Any]:
        """Drift of the served version over any window up to MAX_WINDOW: the drift profiles
        of its whole buckets + a scan of the rest (``profiles.window_histograms``)."""
        refs = drift_stats.parse_profile(meta.reference_profile)
        kept = profiles.privacy_kept(refs, privacy)
        key = profiles.Key(meta.name, meta.version, width)
        with self._pool.connection() as conn:
            hists, rows, sources = profiles.window_histograms(
                conn, kept, key, since=since, until=until
            )
        report = drift_stats.evaluate(
            refs,
            hists,
            thresholds,
            model_version=meta.version,
            since=since.isoformat(),
            until=until.isoformat(),
            rows=rows,
        )
        return {**report.to_dict(), "sources": sources.to_dict()}
