"""One drift + quality run over a window: the CLI and the periodic job both call this.

Reads the reference profile and decision threshold from the model's metadata, asks
Postgres for the window's histograms (the drift profiles of its whole buckets + a scan of
the rest, ``profiles.window_histograms``) and quality counts (as the analyst role), and
evaluates them. No presentation here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from inferwatch.analysis import drift, profiles, store
from inferwatch.analysis.estimate import Calibration, Estimate, estimate_from_cells
from inferwatch.analysis.quality import Quality, quality_from_counts
from inferwatch.inference.metadata import ModelMetadata

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (naive means UTC), ``now``, or relative to now: ``-30m``, ``-2h``, ``-7d``."""
    now = now or datetime.now(UTC)
    text = text.strip()
    if text == "now":
        return now
    m = _RELATIVE.match(text)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    drift: drift.DriftReport
    quality: Quality
    sources: profiles.WindowSources | None = None  # where the drift counts came from
    # the quality estimate of the window (None: the model's metadata has no calibration)
    estimate: Estimate | None = None


Step = Callable[[str], None]


def analyse(
    dsn: str,
    metadata: ModelMetadata,
    *,
    model_version: str,
    since: datetime,
    until: datetime,
    thresholds: drift.DriftThresholds | None = None,
    exclude: Sequence[str] = (),
    step: Step = lambda _: None,
    privacy: Mapping[str, str] | None = None,
    profile_width: timedelta = profiles.DEFAULT_WIDTH,
    profile_settle: timedelta = profiles.DEFAULT_SETTLE,
    use_profiles: bool = True,
) -> AnalysisResult:
    """``privacy``: the audit privacy policy's rules; features it drops or hashes are not
    counted (verdict "insufficient data")."""
    refs = drift.parse_profile(metadata.reference_profile)
    thresholds = thresholds or drift.DriftThresholds()
    kept = profiles.privacy_kept(refs, privacy or {})
    key = profiles.Key(metadata.name, model_version, profile_width)
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.read_only = True
        step("drift histograms (profiles + scan)")
        hists, rows, sources = profiles.window_histograms(
            conn,
            kept,
            key,
            since=since,
            until=until,
            settle=profile_settle,
            use_profiles=use_profiles,
        )
        step("quality on labeled rows (SQL)")
        counts = store.quality_counts(
            conn,
            model_name=metadata.name,
            model_version=model_version,
            since=since,
            until=until,
            threshold=metadata.decision_threshold,
        )
        estimate = _estimate(conn, metadata, model_version, since, until, step)
    step("statistics and verdicts")
    report = drift.evaluate(
        refs,
        hists,
        thresholds,
        model_version=model_version,
        since=since.isoformat(),
        until=until.isoformat(),
        rows=rows,
        exclude=exclude,
    )
    return AnalysisResult(
        report,
        quality_from_counts(counts, metadata.decision_threshold),
        sources=sources,
        estimate=estimate,
    )


def _estimate(
    conn: store.Conn,
    metadata: ModelMetadata,
    model_version: str,
    since: datetime,
    until: datetime,
    step: Step,
) -> Estimate | None:
    if metadata.calibration is None:
        return None
    step("quality estimate (SQL)")
    calibration = Calibration.from_dict(metadata.calibration)
    p, predicted, n = store.estimate_cells(
        conn,
        calibration,
        model_name=metadata.name,
        model_version=model_version,
        since=since,
        until=until,
        threshold=metadata.decision_threshold,
    )
    return estimate_from_cells(
        p, predicted, n, threshold=metadata.decision_threshold, calibration=calibration
    )


def quality_only(
    dsn: str, metadata: ModelMetadata, *, model_version: str, since: datetime, until: datetime
) -> Quality:
    """Quality of a window without its drift (the job looks further back for labels)."""
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.read_only = True
        counts = store.quality_counts(
            conn,
            model_name=metadata.name,
            model_version=model_version,
            since=since,
            until=until,
            threshold=metadata.decision_threshold,
        )
    return quality_from_counts(counts, metadata.decision_threshold)
