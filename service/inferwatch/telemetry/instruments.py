"""Every telemetry name the service emits, in one place.

Metric and span names follow OpenTelemetry naming: dot-separated, the unit in
``unit`` (durations in seconds), never in the name. Metric attributes have bounded
cardinality only (model name, model version, predicted class, outcome, reason);
ids and feature values go on spans and into the audit table, never on metrics.

Each metric's unit and kind are declared once, in ``METRICS``; the code that creates
an instrument takes its unit from there, and ``prometheus_name`` derives from them
the name Prometheus stores it under after OTLP translation. The rule generator
(prometheus/rules/generate.py) and the tests take Prometheus names from
``prometheus_name``, never spell them; tests check the derived names against a live
Prometheus. Nothing here creates an instrument at import or holds global state.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from opentelemetry.metrics import Counter, Histogram, Meter, Observation, UpDownCounter
from opentelemetry.semconv.metrics import http_metrics
from opentelemetry.util.types import Attributes

# --- instrumentation scope ---------------------------------------------------------
SCOPE_NAME: Final = "inferwatch"

# --- span names and attributes -----------------------------------------------------
# The prediction is recorded on the HTTP server span (one span per request, measured
# cheaper than a child span), named "POST /v1/predict" (service/inferwatch/telemetry/http.py).
# HTTP attribute names are the semantic-conventions package's constants.
ATTR_MODEL_NAME: Final = "model.name"
ATTR_MODEL_VERSION: Final = "model.version"
ATTR_PREDICTION_CLASS: Final = "prediction.class"
# inference and micro-batch histograms: "ok" | "error"
ATTR_OUTCOME: Final = "outcome"
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
# adaptive micro-batching (inference/batcher.py): the queueing part of a request's
# inference duration; per batch, its size and its predict_proba time; the queue's depth
INFERENCE_QUEUE_DURATION: Final = "inferwatch.inference.queue.duration"
MICROBATCH_SIZE: Final = "inferwatch.microbatch.size"
MICROBATCH_DURATION: Final = "inferwatch.microbatch.duration"
MICROBATCH_QUEUE_DEPTH: Final = "inferwatch.microbatch.queue.depth"
# the OpenTelemetry SDK's own metric (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED=true): spans
# the batch span processor handled, with error.type="queue_full" for the ones it dropped
SDK_SPANS_PROCESSED: Final = "otel.sdk.processor.span.processed"
REASON_OVERLOADED: Final = "overloaded"  # the rejected counter's reason when load is shed

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
# the quality estimate of the drift window before labels (analysis/estimate.py)
QUALITY_ESTIMATED_PRECISION: Final = "inferwatch.quality.estimated.precision"
QUALITY_ESTIMATED_RECALL: Final = "inferwatch.quality.estimated.recall"
QUALITY_ESTIMATED_ROC_AUC: Final = "inferwatch.quality.estimated.roc_auc"
# shadow scoring (service/inferwatch/inference/shadow.py): live predictions offered to the
# candidate, by outcome (ATTR_OUTCOME): scored | dropped (queue full) | failed
SHADOW_PREDICTIONS: Final = "inferwatch.shadow.predictions"


# --- unit and kind of every metric above ---------------------------------------------
Kind = Literal["counter", "updowncounter", "histogram", "gauge"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """How a metric is created: its UCUM unit and instrument kind (counter = monotonic)."""

    unit: str
    kind: Kind


METRICS: Final[Mapping[str, MetricSpec]] = MappingProxyType(
    {
        INFERENCE_DURATION: MetricSpec("s", "histogram"),
        BATCH_INFERENCE_DURATION: MetricSpec("s", "histogram"),
        PREDICTIONS: MetricSpec("{prediction}", "counter"),
        REJECTED_REQUESTS: MetricSpec("{request}", "counter"),
        HTTP_SERVER_DURATION: MetricSpec("s", "histogram"),
        INFERENCE_QUEUE_DURATION: MetricSpec("s", "histogram"),
        MICROBATCH_SIZE: MetricSpec("{request}", "histogram"),
        MICROBATCH_DURATION: MetricSpec("s", "histogram"),
        MICROBATCH_QUEUE_DEPTH: MetricSpec("{request}", "gauge"),
        SDK_SPANS_PROCESSED: MetricSpec("{span}", "counter"),
        AUDIT_ENQUEUED: MetricSpec("{record}", "counter"),
        AUDIT_WRITTEN: MetricSpec("{record}", "counter"),
        AUDIT_SPOOLED: MetricSpec("{record}", "counter"),
        AUDIT_REPLAYED: MetricSpec("{record}", "counter"),
        AUDIT_DROPPED: MetricSpec("{record}", "counter"),
        AUDIT_QUEUE_DEPTH: MetricSpec("{record}", "gauge"),
        AUDIT_SPOOL_SIZE: MetricSpec("{record}", "gauge"),
        AUDIT_SPOOL_OLDEST_AGE: MetricSpec("s", "gauge"),
        AUDIT_BATCH_DURATION: MetricSpec("s", "histogram"),
        DRIFT_PSI: MetricSpec("", "gauge"),
        DRIFT_STATISTIC: MetricSpec("", "gauge"),
        DRIFT_DETECTED: MetricSpec("", "gauge"),
        DRIFT_DATASET: MetricSpec("", "gauge"),
        QUALITY_PRECISION: MetricSpec("1", "gauge"),
        QUALITY_RECALL: MetricSpec("1", "gauge"),
        QUALITY_ROC_AUC: MetricSpec("1", "gauge"),
        QUALITY_LABEL_COVERAGE: MetricSpec("1", "gauge"),
        ANALYSIS_ROWS: MetricSpec("{prediction}", "gauge"),
        ANALYSIS_LAST_SUCCESS: MetricSpec("s", "gauge"),
        QUALITY_ESTIMATED_PRECISION: MetricSpec("1", "gauge"),
        QUALITY_ESTIMATED_RECALL: MetricSpec("1", "gauge"),
        QUALITY_ESTIMATED_ROC_AUC: MetricSpec("1", "gauge"),
        SHADOW_PREDICTIONS: MetricSpec("{prediction}", "counter"),
    }
)

# Explicit buckets of every duration histogram (unit "s"), given to the SDK as the
# instrument's advisory boundaries: the /metrics pull reader aggregates with them (it
# cannot render exponential histograms; service/inferwatch/telemetry/setup.py), and so
# does OTLP when INFERWATCH_HISTOGRAM_AGGREGATION=explicit. 50 µs .. 10 s, dense below
# a millisecond.
DURATION_BUCKETS_S: Final[tuple[float, ...]] = (
    0.00005,
    0.0001,
    0.0002,
    0.0003,
    0.0004,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# UCUM units as Prometheus spells them in a name (the OTLP translator's table, the part
# we may use); "1" adds no unit word. A unit outside it is refused, not guessed.
_PROMETHEUS_UNITS: Final = MappingProxyType(
    {
        "d": "days",
        "h": "hours",
        "min": "minutes",
        "s": "seconds",
        "ms": "milliseconds",
        "us": "microseconds",
        "ns": "nanoseconds",
        "By": "bytes",
        "KiBy": "kibibytes",
        "MiBy": "mebibytes",
        "%": "percent",
        "1": "",
    }
)


def prometheus_name(name: str, spec: MetricSpec | None = None) -> str:
    """The name Prometheus stores metric ``name`` (of ``METRICS``) under after OTLP translation.

    prometheus.yml's ``translation_strategy: UnderscoreEscapingWithSuffixes``: the name's
    words joined by ``_``, then the unit's word unless the name already has it (an
    annotation such as ``{record}`` adds none), ``total`` for a counter, ``ratio`` for a
    gauge of unit ``1``. The /metrics pull path names its series the same way. ``spec``
    translates a name that is not ours.
    """
    spec = spec or METRICS[name]
    words = [w for w in re.split(r"[^a-zA-Z0-9:]+", name) if w]
    unit = spec.unit
    if unit and "{" not in unit:
        if unit not in _PROMETHEUS_UNITS:
            raise ValueError(f"{name}: unit {unit!r} has no Prometheus spelling here")
        word = _PROMETHEUS_UNITS[unit]
        if word and word not in words:
            words.append(word)
    if spec.kind == "counter":
        words = [w for w in words if w != "total"] + ["total"]
    if unit == "1" and spec.kind == "gauge":
        words = [w for w in words if w != "ratio"] + ["ratio"]
    return "_".join(words)


@dataclass(frozen=True, slots=True)
class ServiceInstruments:
    """The request-path instruments, created once per meter provider (never per request)."""

    inference_duration: Histogram
    queue_duration: Histogram
    batch_inference_duration: Histogram
    microbatch_size: Histogram
    microbatch_duration: Histogram
    predictions: Counter
    rejected: Counter

    @classmethod
    def create(cls, meter: Meter) -> ServiceInstruments:
        return cls(
            inference_duration=meter.create_histogram(
                INFERENCE_DURATION,
                unit=METRICS[INFERENCE_DURATION].unit,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
                description="Inference time one prediction experienced: waiting for its "
                "micro-batch plus that batch's predict_proba.",
            ),
            queue_duration=meter.create_histogram(
                INFERENCE_QUEUE_DURATION,
                unit=METRICS[INFERENCE_QUEUE_DURATION].unit,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
                description="Time one prediction waited in the micro-batch queue.",
            ),
            microbatch_size=meter.create_histogram(
                MICROBATCH_SIZE,
                unit=METRICS[MICROBATCH_SIZE].unit,
                description="Requests served by one micro-batch (one predict_proba call).",
            ),
            microbatch_duration=meter.create_histogram(
                MICROBATCH_DURATION,
                unit=METRICS[MICROBATCH_DURATION].unit,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
                description="Duration of one micro-batch's predict_proba call.",
            ),
            batch_inference_duration=meter.create_histogram(
                BATCH_INFERENCE_DURATION,
                unit=METRICS[BATCH_INFERENCE_DURATION].unit,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
                description="Duration of model inference for one batch request.",
            ),
            predictions=meter.create_counter(
                PREDICTIONS,
                unit=METRICS[PREDICTIONS].unit,
                description="Predictions served, by model version and predicted class.",
            ),
            rejected=meter.create_counter(
                REJECTED_REQUESTS,
                unit=METRICS[REJECTED_REQUESTS].unit,
                description="Requests rejected before inference, by reason.",
            ),
        )


def observe_queue_depth(meter: Meter, depth: Callable[[], int], attrs: Attributes) -> None:
    """The micro-batch queue's depth, read by the SDK at each collection."""
    meter.create_observable_gauge(
        MICROBATCH_QUEUE_DEPTH,
        callbacks=[lambda _: [Observation(depth(), attrs)]],
        unit=METRICS[MICROBATCH_QUEUE_DEPTH].unit,
        description="Predictions waiting in the micro-batch queue.",
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
            return meter.create_counter(name, unit=METRICS[name].unit, description=desc)

        return cls(
            enqueued=c(AUDIT_ENQUEUED, "Audit records handed to the writer."),
            written=c(AUDIT_WRITTEN, "Audit records stored in Postgres."),
            spooled=c(AUDIT_SPOOLED, "Audit records written to the disk spool."),
            replayed=c(AUDIT_REPLAYED, "Spooled audit records replayed into Postgres."),
            dropped=c(AUDIT_DROPPED, "Audit records lost (spool unwritable). Must stay 0."),
            batch_duration=meter.create_histogram(
                AUDIT_BATCH_DURATION,
                unit=METRICS[AUDIT_BATCH_DURATION].unit,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
                description="Duration of one audit batch write.",
            ),
        )


__all__ = [n for n in dir() if n.isupper()] + [
    "AuditInstruments",
    "Kind",
    "MetricSpec",
    "ServiceInstruments",
    "UpDownCounter",
    "observe_queue_depth",
    "prometheus_name",
]
