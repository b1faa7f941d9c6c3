"""The periodic analysis job: drift and quality of the last window, as OTel gauges.

Runs as its own process (``inferwatch analysis-job``), not inside the service:

* one instance computes each window once; N service workers would each scan the
  audit table for the same answer and export duplicate, conflicting gauges;
* the drift query costs seconds of Postgres time per million rows and the quality
  join more; none of that may compete with predictions for CPU or the GIL;
* least privilege: it connects as the analyst role (SELECT, and EXECUTE on the drift
  profile roll-up of migration 0004, the only way anyone but the owner writes profiles),
  which the serving process neither has nor needs;
* it can crash, be rescheduled or lag without touching request latency, and its
  staleness is itself a metric (``inferwatch.analysis.last_success``).

Each run first rolls up the drift profiles of closed buckets (``profiles.rollup``: new
ones, and those late rows landed in), then computes drift over the window from them
(docs/decisions.md, "Drift profiles", says why the roll-up runs here).

Gauges are observable: each export reports the latest completed run. Attributes are
bounded: model name and version, feature (from the model's schema, ~16) and
statistic. OTLP export is configured by the standard ``OTEL_*`` variables.

Realized quality covers the quality window (labels arrive late); the quality estimate
(:mod:`inferwatch.analysis.estimate`) covers the drift window, whose recent predictions
mostly have no label yet.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

import psycopg
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from inferwatch.analysis import profiles
from inferwatch.analysis.drift import DriftThresholds, parse_profile
from inferwatch.analysis.runner import AnalysisResult, analyse, quality_only
from inferwatch.inference.metadata import ModelMetadata
from inferwatch.telemetry import instruments as names
from inferwatch.telemetry.instruments import (
    ANALYSIS_LAST_SUCCESS,
    ANALYSIS_ROWS,
    ATTR_STATISTIC,
    DRIFT_DATASET,
    DRIFT_STATISTIC,
    QUALITY_ROC_AUC,
)

log = logging.getLogger(__name__)

SERVICE_NAME: Final = "inferwatch-analysis"


@dataclass(frozen=True, slots=True)
class JobConfig:
    model_version: str
    drift_window: timedelta = timedelta(hours=1)
    quality_window: timedelta = timedelta(days=7)  # labels arrive late: look further back
    interval: timedelta = timedelta(minutes=5)
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    exclude: Sequence[str] = ()
    # drift profiles: bucket width, how far back the roll-up looks, the settle margin
    profile_width: timedelta = profiles.DEFAULT_WIDTH
    profile_horizon: timedelta = profiles.DEFAULT_HORIZON
    profile_settle: timedelta = profiles.DEFAULT_SETTLE
    privacy: Mapping[str, str] = field(default_factory=dict)  # audit policy: no profile
    # buckets never profiled (a backfill) rolled per run at most, newest first: bounds a run
    profile_backfill_per_run: int = 24


class AnalysisGauges:
    """Observable gauges over the latest results; thread-safe, callbacks never raise."""

    def __init__(self, meter: Meter) -> None:
        self._lock = threading.Lock()
        self._obs: dict[str, list[tuple[float, dict[str, str]]]] = {}
        specs = (
            (names.DRIFT_PSI, "PSI of a feature's window against the training profile."),
            (DRIFT_STATISTIC, "Wasserstein (numeric) or Jensen-Shannon (categorical)."),
            (names.DRIFT_DETECTED, "1 when the feature's drift verdict is drift."),
            (DRIFT_DATASET, "1 when the dataset's drift verdict is drift."),
            (names.QUALITY_PRECISION, "Precision on labeled predictions."),
            (names.QUALITY_RECALL, "Recall on labeled predictions."),
            (QUALITY_ROC_AUC, "ROC AUC on labeled predictions."),
            (names.QUALITY_LABEL_COVERAGE, "Share of predictions with an outcome."),
            (ANALYSIS_ROWS, "Predictions in the drift window."),
            (ANALYSIS_LAST_SUCCESS, "Unix time of the last completed analysis run."),
            (names.QUALITY_ESTIMATED_PRECISION, "Estimated precision of the drift window."),
            (names.QUALITY_ESTIMATED_RECALL, "Estimated recall of the drift window."),
            (names.QUALITY_ESTIMATED_ROC_AUC, "Estimated ROC AUC of the drift window."),
        )
        for name, desc in specs:
            meter.create_observable_gauge(
                name, [self._callback(name)], unit=names.METRICS[name].unit, description=desc
            )

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                return [Observation(v, a) for v, a in self._obs.get(name, ())]

        return observe

    def update(self, meta: ModelMetadata, model_version: str, result: AnalysisResult) -> None:
        base = {
            names.ATTR_MODEL_NAME: meta.name,
            names.ATTR_MODEL_VERSION: model_version,
        }
        obs: dict[str, list[tuple[float, dict[str, str]]]] = {}

        def put(name: str, value: float | None, **attrs: str) -> None:
            if value is not None:
                obs.setdefault(name, []).append((float(value), {**base, **attrs}))

        for f in result.drift.features:
            if f.verdict == "insufficient data":
                continue
            psi, second = f.statistics
            put(names.DRIFT_PSI, psi.value, feature=f.feature)
            put(
                DRIFT_STATISTIC,
                second.value,
                feature=f.feature,
                **{ATTR_STATISTIC: second.statistic},
            )
            put(names.DRIFT_DETECTED, float(f.verdict == "drift"), feature=f.feature)
        put(DRIFT_DATASET, float(result.drift.dataset_drift))
        q = result.quality
        put(names.QUALITY_PRECISION, q.precision)
        put(names.QUALITY_RECALL, q.recall)
        put(QUALITY_ROC_AUC, q.roc_auc)
        put(names.QUALITY_LABEL_COVERAGE, q.label_coverage)
        if result.estimate is not None:
            put(names.QUALITY_ESTIMATED_PRECISION, result.estimate.precision)
            put(names.QUALITY_ESTIMATED_RECALL, result.estimate.recall)
            put(names.QUALITY_ESTIMATED_ROC_AUC, result.estimate.roc_auc)
        put(ANALYSIS_ROWS, float(result.drift.rows))
        put(ANALYSIS_LAST_SUCCESS, time.time())
        with self._lock:
            self._obs = obs


def meter_provider(readers: Sequence[MetricReader] | None = None) -> MeterProvider:
    """The job's own provider: OTLP (``OTEL_*`` env) unless readers are given (tests)."""
    if readers is None:
        from inferwatch.settings import Settings
        from inferwatch.telemetry.setup import otlp_metric_exporter

        readers = [PeriodicExportingMetricReader(otlp_metric_exporter(Settings()))]
    resource = Resource.create(
        {"service.name": SERVICE_NAME, "service.instance.id": str(uuid.uuid4())}
    )
    return MeterProvider(metric_readers=list(readers), resource=resource)


def run_once(
    dsn: str,
    meta: ModelMetadata,
    cfg: JobConfig,
    gauges: AnalysisGauges,
    now: datetime | None = None,
) -> AnalysisResult:
    now = now or datetime.now(UTC)
    try:
        rolled = rollup_profiles(dsn, meta, cfg)
        log.info(
            "drift profiles of %s: %d buckets rolled up (%d rows) in %.2fs",
            cfg.model_version,
            rolled.buckets,
            rolled.rows,
            rolled.seconds,
        )
    except psycopg.Error:
        # reads scan what has no current profile: a failed roll-up costs time, not results
        log.exception("drift profile roll-up failed; drift scans the buckets instead")
    drift_part = analyse(
        dsn,
        meta,
        model_version=cfg.model_version,
        since=now - cfg.drift_window,
        until=now,
        thresholds=cfg.thresholds,
        exclude=cfg.exclude,
        privacy=cfg.privacy,
        profile_width=cfg.profile_width,
        profile_settle=cfg.profile_settle,
    )
    quality = (
        drift_part.quality
        if cfg.quality_window == cfg.drift_window
        else quality_only(
            dsn, meta, model_version=cfg.model_version, since=now - cfg.quality_window, until=now
        )
    )
    result = AnalysisResult(
        drift_part.drift, quality, sources=drift_part.sources, estimate=drift_part.estimate
    )
    gauges.update(meta, cfg.model_version, result)
    return result


def rollup_profiles(dsn: str, meta: ModelMetadata, cfg: JobConfig) -> profiles.RollupResult:
    """Profiles of the watched version's closed buckets, of the features the privacy
    policy keeps."""
    refs = profiles.privacy_kept(parse_profile(meta.reference_profile), cfg.privacy)
    key = profiles.Key(meta.name, cfg.model_version, cfg.profile_width)
    return profiles.rollup(
        dsn,
        refs,
        key,
        settle=cfg.profile_settle,
        horizon=cfg.profile_horizon,
        max_new=cfg.profile_backfill_per_run,
    )


def run_forever(
    dsn: str,
    meta: ModelMetadata,
    cfg: JobConfig,
    gauges: AnalysisGauges,
    stop: threading.Event,
) -> None:
    """Every ``interval``: analyse, publish. A failed run is logged; the gauges keep
    the last good values and ``last_success`` ages, which the staleness alert sees."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            result = run_once(dsn, meta, cfg, gauges)
            log.info(
                "analysis of %s: %d rows, drifted %s, label coverage %s",
                cfg.model_version,
                result.drift.rows,
                list(result.drift.drifted),
                result.quality.label_coverage,
            )
        except Exception:
            log.exception("analysis run failed")
        stop.wait(max(1.0, cfg.interval.total_seconds() - (time.monotonic() - started)))
