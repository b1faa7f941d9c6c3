"""Every telemetry name the service emits, in one place.

Metric and span names follow OpenTelemetry naming: dot-separated, the unit in
``unit`` (durations in seconds), never in the name. Metric attributes have bounded
cardinality only (model name, model version, predicted class, outcome, reason);
ids and feature values go on spans and into the audit table, never on metrics.

The ``PROM_*`` constants are the names these instruments get in Prometheus after
OTLP translation (``UnderscoreEscapingWithSuffixes``: dots become underscores, the
unit suffix and ``_total`` for counters are appended). Dashboards, recording rules
and alerts use those; a test checks them against a live Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from opentelemetry.metrics import Counter, Histogram, Meter, UpDownCounter
from opentelemetry.semconv.metrics import http_metrics

if TYPE_CHECKING:
    from inferwatch.telemetry.deferred import DeferredTelemetry

# --- instrumentation scope ---------------------------------------------------------
SCOPE_NAME: Final = "inferwatch"

# --- span names and attributes -----------------------------------------------------
# The prediction is recorded on the HTTP server span (one span per request, measured
# cheaper than a child span), named "POST /v1/predict" (service/inferwatch/telemetry/http.py).
# HTTP attribute names are the semantic-conventions package's constants.
ATTR_MODEL_NAME: Final = "model.name"
ATTR_MODEL_VERSION: Final = "model.version"
ATTR_PREDICTION_CLASS: Final = "prediction.class"
ATTR_OUTCOME: Final = "outcome"  # "ok" | "error"
ATTR_REJECT_REASON: Final = "reason"
ATTR_PREDICTION_ID: Final = "inferwatch.prediction.id"
ATTR_PREDICTION_IDS: Final = "inferwatch.prediction.ids"
ATTR_PROBABILITY: Final = "inferwatch.prediction.probability"
ATTR_ENTITY_TYPE: Final = "inferwatch.entity.type"
ATTR_ENTITY_ID: Final = "inferwatch.entity.id"
ATTR_BATCH_SIZE: Final = "inferwatch.batch.size"
ATTR_FEATURE: Final = "feature"

# --- metric names (OpenTelemetry) --------------------------------------------------
INFERENCE_DURATION: Final = "inferwatch.inference.duration"
BATCH_INFERENCE_DURATION: Final = "inferwatch.inference.batch.duration"
PREDICTIONS: Final = "inferwatch.predictions"
REJECTED_REQUESTS: Final = "inferwatch.requests.rejected"
HTTP_SERVER_DURATION: Final = http_metrics.HTTP_SERVER_REQUEST_DURATION  # telemetry/http.py
# request-path measurements handed to the SDK off the request path (telemetry/deferred.py)
TELEMETRY_DEFERRED: Final = "inferwatch.telemetry.deferred"

AUDIT_ENQUEUED: Final = "inferwatch.audit.enqueued"
AUDIT_WRITTEN: Final = "inferwatch.audit.written"
AUDIT_SPOOLED: Final = "inferwatch.audit.spooled"
AUDIT_REPLAYED: Final = "inferwatch.audit.replayed"
AUDIT_DROPPED: Final = "inferwatch.audit.dropped"
AUDIT_QUEUE_DEPTH: Final = "inferwatch.audit.queue.depth"
AUDIT_SPOOL_SIZE: Final = "inferwatch.audit.spool.size"
AUDIT_SPOOL_OLDEST_AGE: Final = "inferwatch.audit.spool.oldest_age"
AUDIT_BATCH_DURATION: Final = "inferwatch.audit.batch.duration"

DRIFT_PSI: Final = "inferwatch.drift.psi"
DRIFT_DETECTED: Final = "inferwatch.drift.detected"
QUALITY_PRECISION: Final = "inferwatch.quality.precision"
QUALITY_RECALL: Final = "inferwatch.quality.recall"
QUALITY_LABEL_COVERAGE: Final = "inferwatch.quality.label_coverage"
# exported by the analysis job (service/inferwatch/analysis/jobs.py), a separate process
DRIFT_STATISTIC: Final = "inferwatch.drift.statistic"  # Wasserstein / Jensen-Shannon value
DRIFT_DATASET: Final = "inferwatch.drift.dataset_detected"
QUALITY_ROC_AUC: Final = "inferwatch.quality.roc_auc"
ANALYSIS_ROWS: Final = "inferwatch.analysis.window_rows"
ANALYSIS_LAST_SUCCESS: Final = "inferwatch.analysis.last_success"
ATTR_STATISTIC: Final = "statistic"
# As Prometheus stores them (OTLP translation, UnderscoreEscapingWithSuffixes).

# --- the same names as Prometheus stores them (OTLP translation) ------------------
PROM_INFERENCE_DURATION: Final = "inferwatch_inference_duration_seconds"
PROM_BATCH_INFERENCE_DURATION: Final = "inferwatch_inference_batch_duration_seconds"
PROM_PREDICTIONS: Final = "inferwatch_predictions_total"
PROM_REJECTED_REQUESTS: Final = "inferwatch_requests_rejected_total"
PROM_HTTP_SERVER_DURATION: Final = "http_server_request_duration_seconds"
PROM_TELEMETRY_DEFERRED: Final = "inferwatch_telemetry_deferred_total"
PROM_AUDIT_DROPPED: Final = "inferwatch_audit_dropped_total"
PROM_DRIFT_PSI: Final = "inferwatch_drift_psi"
PROM_DRIFT_DETECTED: Final = "inferwatch_drift_detected"
PROM_DRIFT_STATISTIC: Final = "inferwatch_drift_statistic"
PROM_DRIFT_DATASET: Final = "inferwatch_drift_dataset_detected"
PROM_QUALITY_PRECISION: Final = "inferwatch_quality_precision_ratio"
PROM_QUALITY_RECALL: Final = "inferwatch_quality_recall_ratio"
PROM_QUALITY_LABEL_COVERAGE: Final = "inferwatch_quality_label_coverage_ratio"
PROM_ANALYSIS_LAST_SUCCESS: Final = "inferwatch_analysis_last_success_seconds"
PROM_LABEL_MODEL_NAME: Final = "model_name"
PROM_LABEL_MODEL_VERSION: Final = "model_version"


@dataclass(frozen=True, slots=True)
class ServiceInstruments:
    """The request-path instruments, created once per meter provider (never per request)."""

    inference_duration: Histogram
    batch_inference_duration: Histogram
    predictions: Counter
    rejected: Counter

    def deferred(self, by: DeferredTelemetry) -> ServiceInstruments:
        """The same instruments, recording through ``by`` (telemetry/deferred.py)."""
        return ServiceInstruments(
            inference_duration=by.histogram(self.inference_duration),
            batch_inference_duration=by.histogram(self.batch_inference_duration),
            predictions=by.counter(self.predictions),
            rejected=by.counter(self.rejected),
        )

    @classmethod
    def create(cls, meter: Meter) -> ServiceInstruments:
        return cls(
            inference_duration=meter.create_histogram(
                INFERENCE_DURATION,
                unit="s",
                description="Duration of model inference (predict_proba) for one prediction.",
            ),
            batch_inference_duration=meter.create_histogram(
                BATCH_INFERENCE_DURATION,
                unit="s",
                description="Duration of model inference for one batch request.",
            ),
            predictions=meter.create_counter(
                PREDICTIONS,
                unit="{prediction}",
                description="Predictions served, by model version and predicted class.",
            ),
            rejected=meter.create_counter(
                REJECTED_REQUESTS,
                unit="{request}",
                description="Requests rejected before inference, by reason.",
            ),
        )


@dataclass(frozen=True, slots=True)
class AuditInstruments:
    """Counters of the audit writer; gauges are observable callbacks the writer registers."""

    enqueued: Counter
    written: Counter
    spooled: Counter
    replayed: Counter
    dropped: Counter
    batch_duration: Histogram

    @classmethod
    def create(cls, meter: Meter) -> AuditInstruments:
        def c(name: str, desc: str) -> Counter:
            return meter.create_counter(name, unit="{record}", description=desc)

        return cls(
            enqueued=c(AUDIT_ENQUEUED, "Audit records handed to the writer."),
            written=c(AUDIT_WRITTEN, "Audit records stored in Postgres."),
            spooled=c(AUDIT_SPOOLED, "Audit records written to the disk spool."),
            replayed=c(AUDIT_REPLAYED, "Spooled audit records replayed into Postgres."),
            dropped=c(AUDIT_DROPPED, "Audit records lost (spool unwritable). Must stay 0."),
            batch_duration=meter.create_histogram(
                AUDIT_BATCH_DURATION, unit="s", description="Duration of one audit batch write."
            ),
        )


__all__ = [n for n in dir() if n.isupper()] + [
    "AuditInstruments",
    "ServiceInstruments",
    "UpDownCounter",
]
