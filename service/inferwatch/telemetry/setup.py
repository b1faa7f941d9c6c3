"""Telemetry providers for one process: built in the app lifespan, shut down with it.

Each process (each uvicorn worker) builds its own TracerProvider and MeterProvider
with a unique ``service.instance.id``; nothing is set globally, so tests build as
many apps as they like and read their own in-memory exporter/reader.

Readers and exporters are injected: ``create_app`` passes in-memory ones in tests;
by default spans go through a BatchSpanProcessor and metrics through a
PeriodicExportingMetricReader to OTLP (endpoint, protocol, headers, export interval:
the standard ``OTEL_*`` variables, read by the SDK), and a Prometheus reader backs
``GET /metrics`` from the same meter provider when OTLP export is off (or when
``INFERWATCH_METRICS_ENDPOINT=on``): the SDK aggregates every measurement once per
reader, so a second reader makes every measurement dearer.

Must never: block or fail a request when the collector is down (the batch
processor drops, bounded), or hang shutdown (every flush is bounded).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry.context import Context
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import Exemplar, ExemplarReservoir, MeterProvider
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import (
    Aggregation,
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NoOpTracerProvider, Tracer
from opentelemetry.trace import TracerProvider as ApiTracerProvider
from opentelemetry.util.types import Attributes
from prometheus_client import CollectorRegistry

from inferwatch import __version__
from inferwatch.settings import Settings
from inferwatch.telemetry.instruments import (
    DURATION_BUCKETS_S,
    INFERENCE_DURATION,
    METRICS,
    SCOPE_NAME,
)

log = logging.getLogger(__name__)


def histogram_aggregation(settings: Settings) -> Aggregation:
    if settings.histogram_aggregation == "exponential":
        return ExponentialBucketHistogramAggregation(
            max_size=settings.exponential_max_size, max_scale=settings.exponential_max_scale
        )
    return ExplicitBucketHistogramAggregation(boundaries=DURATION_BUCKETS_S)


def build_resource(settings: Settings, instance_id: str | None = None) -> Resource:
    """service.* and deployment.* attributes; OTEL_RESOURCE_ATTRIBUTES still merges in."""
    return Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", "inferwatch"),
            "service.version": __version__,
            "service.instance.id": instance_id
            or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            "deployment.environment.name": settings.environment,
            "deployment.environment": settings.environment,
        }
    )


def _otlp_protocol() -> str:
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )


def otlp_span_exporter() -> SpanExporter:
    if _otlp_protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from inferwatch.telemetry.otlp_spans import OtlpHttpSpanExporter

    return OtlpHttpSpanExporter()


def otlp_metric_exporter(settings: Settings) -> MetricExporter:
    temporality: dict[type, AggregationTemporality] = {
        HistogramInstrument: AggregationTemporality.CUMULATIVE
    }
    aggregation: dict[type, Aggregation] = {HistogramInstrument: histogram_aggregation(settings)}
    if _otlp_protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(
            preferred_temporality=temporality, preferred_aggregation=aggregation
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(preferred_temporality=temporality, preferred_aggregation=aggregation)


def prometheus_reader(registry: CollectorRegistry) -> MetricReader:
    """A pull reader for /metrics.

    PrometheusMetricReader takes no preferred aggregation and renders only explicit-bucket
    histograms (it drops an exponential one with a warning), so it keeps the SDK's default
    aggregation, which uses each histogram's advisory boundaries: our duration histograms
    carry ``DURATION_BUCKETS_S`` (service/inferwatch/telemetry/instruments.py). A
    provider-wide View would make the OTLP reader's histograms explicit too when both
    run, and the Prometheus rules need OTLP's native (exponential) ones.
    """
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    return PrometheusMetricReader(registry=registry, disable_target_info=False)


class NoExemplars(ExemplarReservoir):
    """A reservoir that keeps nothing: the measurement is aggregated, no exemplar sampled."""

    def offer(
        self, value: float | int, time_unix_nano: int, attributes: Attributes, context: Context
    ) -> None:
        return None

    def collect(self, point_attributes: Attributes) -> list[Exemplar]:
        return []


def _no_exemplars(aggregation: type) -> Callable[..., ExemplarReservoir]:
    return lambda **_: NoExemplars()


def exemplar_views() -> list[View]:
    """Exemplars on the inference histogram only: the one series whose exemplars a panel
    shows (the latency heatmap links them to traces). Sampling one costs ~1.5 µs per
    measurement on the request path (docs/benchmarks.md), three times per prediction."""
    return [
        View(instrument_name=name, exemplar_reservoir_factory=_no_exemplars)
        for name, spec in METRICS.items()
        if name != INFERENCE_DURATION and spec.kind in ("histogram", "counter")
    ]


def pull_endpoint_enabled(settings: Settings) -> bool:
    """Whether GET /metrics is served (``INFERWATCH_METRICS_ENDPOINT``)."""
    if settings.metrics_endpoint == "auto":
        return not settings.otlp_enabled
    return settings.metrics_endpoint == "on"


@dataclass
class Telemetry:
    """The providers of one process, and how to stop them within a deadline."""

    tracer_provider: ApiTracerProvider
    meter_provider: MeterProvider | None
    tracer: Tracer
    meter: Meter | None
    registry: CollectorRegistry | None
    resource: Resource
    _stopped: bool = field(default=False, repr=False)

    def shutdown(self, timeout_s: float) -> None:
        """Flush and stop, never blocking longer than ``timeout_s`` in total.

        The SDK's shutdown can block for the exporter's retry timeouts when the
        collector is down; it runs on a daemon thread that we stop waiting for.
        """
        if self._stopped:
            return
        self._stopped = True

        def stop() -> None:
            if isinstance(self.tracer_provider, TracerProvider):
                self.tracer_provider.force_flush(int(timeout_s * 1000))
                self.tracer_provider.shutdown()
            if self.meter_provider is not None:
                self.meter_provider.shutdown(timeout_millis=timeout_s * 1000)

        worker = threading.Thread(target=stop, name="telemetry-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            log.warning("telemetry shutdown did not finish within %.1fs; abandoning", timeout_s)


def build_telemetry(
    settings: Settings,
    *,
    span_processors: Sequence[SpanProcessor] | None = None,
    metric_readers: Sequence[MetricReader] | None = None,
    instance_id: str | None = None,
) -> Telemetry:
    """Providers for this process. ``None`` readers/processors mean the defaults."""
    resource = build_resource(settings, instance_id)
    if not settings.telemetry_enabled:
        noop = NoOpTracerProvider()
        return Telemetry(noop, None, noop.get_tracer(SCOPE_NAME), None, None, resource)

    registry: CollectorRegistry | None = None
    if metric_readers is None:
        readers: list[MetricReader] = []
        if pull_endpoint_enabled(settings):
            registry = CollectorRegistry(auto_describe=True)
            readers.append(prometheus_reader(registry))
        if settings.otlp_enabled:
            readers.append(PeriodicExportingMetricReader(otlp_metric_exporter(settings)))
        metric_readers = readers
    meter_provider = MeterProvider(
        resource=resource, metric_readers=list(metric_readers), views=exemplar_views()
    )
    meter = meter_provider.get_meter(SCOPE_NAME, __version__)

    tracer_provider = TracerProvider(resource=resource)
    if span_processors is None:
        # the processor reports what it handled and dropped (queue full) through our own
        # meter provider, when OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED=true (the launcher
        # and compose set it): instruments.SDK_SPANS_PROCESSED
        span_processors = (
            [BatchSpanProcessor(otlp_span_exporter(), meter_provider=meter_provider)]
            if settings.otlp_enabled
            else []
        )
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    return Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        tracer=tracer_provider.get_tracer(SCOPE_NAME, __version__),
        meter=meter,
        registry=registry,
        resource=resource,
    )
