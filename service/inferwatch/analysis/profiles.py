"""Mergeable drift profiles: the roll-up of closed buckets and drift over any window from them.

A profile holds, per (model, version, time bucket, feature), exactly what the drift scan
counts (``inferwatch_drift_counts`` in migration 0004): counts per (PSI bin, percentile
cell), per category, the missing values and the exact sums beyond the training range.
Counts add up, so the histograms of a window are the sum of the profiles of its whole
buckets plus a scan of the rest, identical to a scan of the whole window.

* :func:`rollup` (the analysis job, as the analyst role through the SECURITY DEFINER
  function of 0004) profiles every closed bucket of the horizon that has no profile yet,
  and rolls again every bucket that rows ingested since the last run landed in (the spool
  replays an outage's rows hours later with their original ``ts``). Idempotent: a bucket
  is replaced whole, in one transaction.
* :func:`window_histograms` (``inferwatch drift``, the job, the monitoring endpoint):
  read-only. Whole buckets with a current profile come from the profiles; partial
  buckets, buckets not rolled yet and buckets with rows ingested after their roll-up are
  scanned. One REPEATABLE READ snapshot, so the sum equals a scan at that snapshot.

A bucket is *closed* ``settle`` after its end: rows carry ``ingested_at`` = the writer's
transaction start, and a writer transaction lasts less than ``settle``, so a row not yet
visible to a roll-up has ``ingested_at`` > roll-up start - ``settle``: those are the rows
the next run (and every read) looks for.

Privacy: features the audit privacy policy drops or hashes are not profiled (nor scanned):
their verdict is "insufficient data", never a distance computed on hashes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb

from inferwatch.analysis.drift import (
    FeatureHistogram,
    FeatureReference,
    NumericReference,
)

ORIGIN: Final = datetime(2000, 1, 1, tzinfo=UTC)  # date_bin origin in 0004
DEFAULT_WIDTH: Final = timedelta(hours=1)
DEFAULT_SETTLE: Final = timedelta(minutes=5)
DEFAULT_HORIZON: Final = timedelta(days=31)
MAX_BUCKETS_PER_CALL: Final = 24  # one roll-up transaction: at most this many buckets
# the coarse level: whole days of a window cost one profile each (summed from the hours)
DAY: Final = timedelta(days=1)

Conn = psycopg.Connection[Any]


def check_width(width: timedelta) -> timedelta:
    """Whole seconds, at least a minute, dividing a day (buckets align with the partitions)."""
    s = width.total_seconds()
    if s != int(s) or s < 60 or s > 86_400 or 86_400 % int(s):
        raise ValueError(f"bucket width {width} must be whole seconds >= 1 min dividing a day")
    return width


def floor_bucket(t: datetime, width: timedelta) -> datetime:
    return ORIGIN + ((t - ORIGIN) // width) * width


def ceil_bucket(t: datetime, width: timedelta) -> datetime:
    f = floor_bucket(t, width)
    return f if f == t else f + width


def privacy_kept(
    refs: Sequence[FeatureReference], rules: Mapping[str, str]
) -> list[FeatureReference]:
    """The references whose feature the privacy policy stores as sent (``keep``)."""
    default = rules.get("*", "keep")
    return [r for r in refs if rules.get(r.name, default) == "keep"]


def spec(refs: Sequence[FeatureReference]) -> dict[str, Any]:
    """The counting spec of 0004 (its jsonb text is the reference fingerprint)."""
    feats: list[dict[str, Any]] = []
    for r in refs:
        if isinstance(r, NumericReference):
            feats.append(
                {
                    "name": r.name,
                    "kind": "numeric",
                    "edges": [float(e) for e in r.edges],
                    "grid": [float(g) for g in r.grid],
                }
            )
        else:
            feats.append({"name": r.name, "kind": "categorical"})
    return {"features": feats}


def fingerprint(conn: Conn, refs: Sequence[FeatureReference]) -> str:
    """sha256 of the spec's jsonb text, computed by Postgres (jsonb text is canonical)."""
    row = conn.execute(
        "SELECT encode(sha256(convert_to(%s::jsonb::text, 'UTF8')), 'hex')", (Jsonb(spec(refs)),)
    ).fetchone()
    assert row is not None
    return str(row[0])


@dataclass(frozen=True, slots=True)
class Key:
    model_name: str
    model_version: str
    width: timedelta = DEFAULT_WIDTH

    def params(self, fp: str) -> dict[str, Any]:
        return {"name": self.model_name, "version": self.model_version, "w": self.width, "fp": fp}

    def levels(self) -> list[Key]:
        """The widths profiles exist at, coarse first: a day (summed from the buckets of
        ``width``) when ``width`` is shorter, then ``width``."""
        if self.width >= DAY:
            return [self]
        return [Key(self.model_name, self.model_version, DAY), self]


# Buckets of [lo, hi) that have no profile under the reference, or whose rows include some
# ingested after the watermark and after (their roll-up - settle): those a profile may miss.
_OUTDATED = """
WITH touched AS (
    SELECT date_bin(%(w)s, p.ts, %(origin)s) AS b, max(p.ingested_at) AS mi
    FROM predictions p
    WHERE p.model_name = %(name)s AND p.model_version = %(version)s
      AND p.ts >= %(lo)s AND p.ts < %(hi)s
      AND p.ingested_at > coalesce((
          SELECT w.ingested_through FROM drift_profile_watermarks w
          WHERE w.model_name = %(name)s AND w.model_version = %(version)s
            AND w.bucket_width = %(w)s AND w.fingerprint = %(fp)s), '-infinity')
    GROUP BY 1
)
SELECT g.b
FROM generate_series(%(lo)s::timestamptz, %(hi)s::timestamptz - %(w)s, %(w)s) AS g (b)
LEFT JOIN drift_profile_buckets s
       ON s.model_name = %(name)s AND s.model_version = %(version)s
      AND s.bucket_width = %(w)s AND s.fingerprint = %(fp)s AND s.bucket_start = g.b
LEFT JOIN touched t ON t.b = g.b
WHERE s.bucket_start IS NULL OR t.mi > s.rolled_at - %(settle)s
ORDER BY 1
"""


def outdated_buckets(
    conn: Conn, key: Key, fp: str, lo: datetime, hi: datetime, settle: timedelta
) -> list[datetime]:
    if hi <= lo:
        return []
    params = {**key.params(fp), "lo": lo, "hi": hi, "settle": settle, "origin": ORIGIN}
    return [r[0] for r in conn.execute(_OUTDATED.encode(), params).fetchall()]


def runs(
    buckets: Sequence[datetime], width: timedelta, limit: int
) -> list[tuple[datetime, datetime]]:
    """Contiguous runs [lo, hi) of sorted bucket starts, each at most ``limit`` buckets."""
    out: list[tuple[datetime, datetime]] = []
    for b in buckets:
        if out and out[-1][1] == b and (out[-1][1] - out[-1][0]) < limit * width:
            out[-1] = (out[-1][0], b + width)
        else:
            out.append((b, b + width))
    return out


@dataclass(slots=True)
class RollupResult:
    fingerprint: str
    buckets: int = 0
    rows: int = 0
    seconds: float = 0.0
    coarse_buckets: int = 0  # days summed from their buckets
    closed_through: datetime | None = None


def rollup(
    dsn: str,
    refs: Sequence[FeatureReference],
    key: Key,
    *,
    settle: timedelta = DEFAULT_SETTLE,
    horizon: timedelta = DEFAULT_HORIZON,
    max_new: int | None = None,
) -> RollupResult:
    """Profile the closed buckets of the last ``horizon`` that need it; advance the watermark.

    Outdated profiles are always rebuilt; of the buckets never profiled (a backfill) at
    most ``max_new``, newest first, so that one call stays bounded: the rest are scanned
    by reads until a later call profiles them (the watermark covers profiled buckets only).

    Each run of contiguous buckets is one transaction (REPEATABLE READ: the bucket's row
    count and its counts come from one snapshot); a failure leaves earlier runs committed
    and the watermark where it was, so the next call redoes only what is missing.
    """
    check_width(key.width)
    started = time.perf_counter()
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
        row = conn.execute(
            "SELECT inferwatch_drift_reference(%s), now()", (Jsonb(spec(refs)),)
        ).fetchone()
        assert row is not None
        fp, now = str(row[0]), row[1]
        # everything ingested up to here is visible now (writer transactions < settle)
        through = now - settle
        closed = floor_bucket(through, key.width)
        lo = floor_bucket(now - horizon, key.width)
        todo = outdated_buckets(conn, key, fp, lo, closed, settle)
        if max_new is not None:
            todo = _bounded(conn, key, fp, todo, lo, closed, max_new)
        result = RollupResult(fp, closed_through=closed)
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        for a, b in runs(todo, key.width, MAX_BUCKETS_PER_CALL):
            with conn.transaction():
                r = conn.execute(
                    "SELECT inferwatch_rollup_drift_profiles(%s, %s, %s, %s, %s, %s)",
                    (key.model_name, key.model_version, key.width, fp, a, b),
                ).fetchone()
            assert r is not None
            result.rows += int(r[0])
            result.buckets += int((b - a) / key.width)
        with conn.transaction():
            conn.execute(
                "SELECT inferwatch_drift_profile_watermark(%s, %s, %s, %s, %s)",
                (key.model_name, key.model_version, key.width, fp, through),
            )
        # days: every bucket of a closed day in the horizon is current now; sum them
        for coarse in key.levels()[:-1]:
            c_lo, c_hi = ceil_bucket(lo, coarse.width), floor_bucket(through, coarse.width)
            conn.autocommit = True
            days = outdated_buckets(conn, coarse, fp, c_lo, c_hi, settle)
            complete = _complete(conn, key, coarse, fp, c_lo, c_hi)
            days = [d for d in days if d in complete]
            conn.autocommit = False
            for a, b in runs(days, coarse.width, 7):
                with conn.transaction():
                    conn.execute(
                        "SELECT inferwatch_merge_drift_profiles(%s, %s, %s, %s, %s, %s, %s)",
                        (key.model_name, key.model_version, key.width, coarse.width, fp, a, b),
                    )
                result.coarse_buckets += int((b - a) / coarse.width)
            with conn.transaction():
                conn.execute(
                    "SELECT inferwatch_drift_profile_watermark(%s, %s, %s, %s, %s)",
                    (key.model_name, key.model_version, coarse.width, fp, through),
                )
    result.seconds = time.perf_counter() - started
    return result


def _bounded(
    conn: Conn,
    key: Key,
    fp: str,
    todo: list[datetime],
    lo: datetime,
    hi: datetime,
    max_new: int,
) -> list[datetime]:
    """All outdated buckets that have a profile, and the newest ``max_new`` that have none."""
    have = {
        r[0]
        for r in conn.execute(
            "SELECT bucket_start FROM drift_profile_buckets WHERE model_name = %(name)s"
            " AND model_version = %(version)s AND bucket_width = %(w)s AND fingerprint = %(fp)s"
            " AND bucket_start >= %(lo)s AND bucket_start < %(hi)s",
            {**key.params(fp), "lo": lo, "hi": hi},
        ).fetchall()
    }
    new = [b for b in todo if b not in have]
    newest = new[max(0, len(new) - max_new) :] if max_new > 0 else []
    return sorted([b for b in todo if b in have] + newest)


def _complete(
    conn: Conn, fine: Key, coarse: Key, fp: str, lo: datetime, hi: datetime
) -> set[datetime]:
    """The coarse buckets of [lo, hi) whose fine buckets all have a profile."""
    per = int(coarse.width / fine.width)
    return {
        r[0]
        for r in conn.execute(
            "SELECT date_bin(%(cw)s, bucket_start, %(origin)s) FROM drift_profile_buckets"
            " WHERE model_name = %(name)s AND model_version = %(version)s"
            " AND bucket_width = %(w)s AND fingerprint = %(fp)s"
            " AND bucket_start >= %(lo)s AND bucket_start < %(hi)s"
            " GROUP BY 1 HAVING count(*) = %(per)s",
            {
                **fine.params(fp),
                "cw": coarse.width,
                "origin": ORIGIN,
                "lo": lo,
                "hi": hi,
                "per": per,
            },
        ).fetchall()
    }


# --- reading ---------------------------------------------------------------------


@dataclass(slots=True)
class WindowSources:
    """Where a window's counts came from."""

    profiled: dict[str, int] = field(default_factory=dict)  # width -> profiles merged
    scanned: list[tuple[datetime, datetime]] = field(default_factory=list)

    @property
    def profiled_buckets(self) -> int:
        return sum(self.profiled.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "profiles": self.profiled,
            "scanned": [[a.isoformat(), b.isoformat()] for a, b in self.scanned],
        }


def _add(hists: dict[str, FeatureHistogram], feature: str, bin_: Any, cell: Any, n: Any) -> None:
    h = hists[feature]
    if bin_ is None:
        h.missing += int(n)
        return
    h.bins[bin_] = h.bins.get(bin_, 0) + int(n)
    if cell is not None:
        h.grid[int(cell)] = h.grid.get(int(cell), 0) + int(n)


_MERGE = b"""
SELECT feature, bin, cell, sum(n), sum(tail_sum)
FROM drift_profiles
WHERE model_name = %(name)s AND model_version = %(version)s AND bucket_width = %(w)s
  AND fingerprint = %(fp)s AND bucket_start >= %(lo)s AND bucket_start < %(hi)s
  AND bucket_start <> ALL(%(skip)s::timestamptz[])
GROUP BY 1, 2, 3
"""
_COUNTS = b"""
SELECT feature, bin, cell, n, tail_sum FROM inferwatch_drift_counts(%s, %s, %s, NULL, %s, %s)
"""


def window_histograms(
    conn: Conn,
    refs: Sequence[FeatureReference],
    key: Key,
    *,
    since: datetime,
    until: datetime,
    settle: timedelta = DEFAULT_SETTLE,
    use_profiles: bool = True,
) -> tuple[dict[str, FeatureHistogram], int, WindowSources]:
    """Histograms of ``[since, until)``: profiles of whole, current buckets + scans of the rest.

    Same shape as :func:`inferwatch.analysis.store.drift_histograms` (PSI is left to
    Python). ``use_profiles=False`` scans the whole window through the same counting.
    """
    check_width(key.width)
    hists = {r.name: FeatureHistogram(r.name) for r in refs}
    # tail sums add up exactly (numeric), and become one float per cell at the end
    tails: dict[tuple[str, int], Decimal] = {}
    sources = WindowSources()

    def put(feature: str, bin_: Any, cell: Any, n: Any, tail: Decimal | None) -> None:
        _add(hists, feature, bin_, cell, n)
        if tail is not None and cell is not None:
            k = (feature, int(cell))
            tails[k] = tails.get(k, Decimal(0)) + tail

    prev_iso = conn.isolation_level
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            ranges = [(since, until)]
            if use_profiles:
                fp = fingerprint(conn, refs)
                for level in key.levels():  # coarse first; what is left goes one level down
                    ranges = _from_profiles(conn, level, fp, ranges, settle, sources, put)
            sources.scanned = _merge(ranges)
            the_spec = Jsonb(spec(refs))
            for a, b in sources.scanned:
                cur = conn.execute(_COUNTS, (the_spec, key.model_name, key.model_version, a, b))
                for row in cur.fetchall():
                    put(*row)
    finally:
        conn.isolation_level = prev_iso
    for (feature, cell), total in tails.items():
        hists[feature].grid_sum[cell] = float(total)
    rows = max((h.n + h.missing for h in hists.values()), default=0)
    return hists, rows, sources


def _from_profiles(
    conn: Conn,
    key: Key,
    fp: str,
    ranges: list[tuple[datetime, datetime]],
    settle: timedelta,
    sources: WindowSources,
    put: Any,
) -> list[tuple[datetime, datetime]]:
    """Add the current profiles of ``key``'s whole buckets in ``ranges``; the rest of them."""
    rest: list[tuple[datetime, datetime]] = []
    for since, until in ranges:
        first, last = ceil_bucket(since, key.width), floor_bucket(until, key.width)
        if first >= last:
            rest.append((since, until))
            continue
        skip = outdated_buckets(conn, key, fp, first, last, settle)
        n = int((last - first) / key.width) - len(skip)
        if n:
            label = _width_label(key.width)
            sources.profiled[label] = sources.profiled.get(label, 0) + n
            params = {**key.params(fp), "lo": first, "hi": last, "skip": skip}
            for row in conn.execute(_MERGE, params).fetchall():
                put(*row)
        rest += [(since, first), *runs(skip, key.width, 10**9), (last, until)]
    return _merge(rest)


def _width_label(width: timedelta) -> str:
    s = int(width.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _merge(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for a, b in sorted(r for r in ranges if r[0] < r[1]):
        if out and out[-1][1] >= a:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
