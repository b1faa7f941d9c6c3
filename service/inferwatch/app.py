"""The app factory: the only place where the concrete parts meet.

``create_app(settings)`` builds the FastAPI app; its lifespan (once per process)
loads the model, builds the telemetry providers, wires the single HTTP
instrumentation, starts the audit writer, opens the analysts' monitoring pool, and
puts them all in the one :class:`Runtime` that routes reach through ``inferwatch.api.deps``;
on shutdown it closes the pool and flushes the writer and the telemetry within
bounded deadlines. Tests inject an in-memory span processor, metric reader, audit sink
and a small model.

Must never: write the process environment, or make start-up wait for a database.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from opentelemetry.metrics import Meter, NoOpMeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import SpanProcessor
from threadpoolctl import threadpool_limits

from inferwatch import __version__
from inferwatch.analysis.monitoring import MonitoringStore
from inferwatch.api.handlers import install_error_handlers
from inferwatch.api.routes import docs, feedback, health, monitoring, predict
from inferwatch.api.routes import model as model_routes
from inferwatch.api.runtime import Runtime
from inferwatch.api.validation import InstanceValidator, feature_json_schema
from inferwatch.audit.sink import AuditSink
from inferwatch.inference.batcher import BatchTelemetry, MicroBatcher
from inferwatch.inference.loading import LoadedModel, ModelLoadError, find_model, load_model
from inferwatch.inference.predictor import Predictor
from inferwatch.inference.shadow import ShadowScorer, check_compatible
from inferwatch.settings import HttpInstrumentation, Settings
from inferwatch.telemetry import instruments as names
from inferwatch.telemetry.http import HttpInstruments, HttpServerTelemetry
from inferwatch.telemetry.instruments import ServiceInstruments
from inferwatch.telemetry.setup import Telemetry, build_telemetry

log = logging.getLogger(__name__)

# Scrapes and probes make no spans or HTTP metrics: they would drown the signal.
UNTRACED_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in UNTRACED_PATHS


class ModelNotFoundError(RuntimeError):
    pass


def resolve_model(settings: Settings) -> LoadedModel:
    path = find_model(settings.model_dir, settings.model_name, settings.model_version)
    if path is None:
        raise ModelNotFoundError(
            f"no model {settings.model_name!r} version {settings.model_version or '(newest)'} "
            f"under {settings.model_dir}; run `inferwatch train` first"
        )
    return load_model(path)


def _wire_http_instrumentation(
    app: FastAPI, settings: Settings, telemetry: Telemetry, http: HttpInstruments
) -> None:
    """Exactly one HTTP server instrumentation (docs/decisions.md has the measurements)."""
    mode = settings.http_instrumentation
    if not settings.telemetry_enabled:
        return
    if mode == HttpInstrumentation.INFERWATCH and telemetry.meter is not None:
        http.tracer = telemetry.tracer
        http.duration = telemetry.meter.create_histogram(
            names.HTTP_SERVER_DURATION,
            unit=names.METRICS[names.HTTP_SERVER_DURATION].unit,
            explicit_bucket_boundaries_advisory=names.DURATION_BUCKETS_S,
            description="Duration of HTTP server requests.",
        )
    elif mode == HttpInstrumentation.OTEL_CONTRIB:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        warning = contrib_semconv_warning(os.environ)
        if warning is not None:
            log.warning("%s", warning)
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            excluded_urls=",".join(UNTRACED_PATHS),
            # one span per request, as ours: the ASGI receive/send child spans would
            # triple the spans and overstate its cost in the comparison
            exclude_spans=["receive", "send"],
        )
        app.middleware_stack = app.build_middleware_stack()


def contrib_semconv_warning(environ: Mapping[str, str]) -> str | None:
    """Why ``otel-contrib`` mode would not emit the HTTP names the rules read, or None.

    The contrib instrumentation picks its HTTP semantic conventions from
    ``OTEL_SEMCONV_STABILITY_OPT_IN`` alone (no public API sets it), read once per
    process; the service never writes the environment, so the operator sets it.
    """
    opt_in = {part.strip() for part in environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}
    if opt_in & {"http", "http/dup"}:
        return None
    return (
        "INFERWATCH_HTTP_INSTRUMENTATION=otel-contrib without OTEL_SEMCONV_STABILITY_OPT_IN=http: "
        "the contrib instrumentation emits the old HTTP conventions (http.server.duration in "
        "ms), not http.server.request.duration, which the error-budget rules read"
    )


def build_batcher(
    settings: Settings, predictor: Predictor, telemetry: Telemetry, ins: ServiceInstruments
) -> MicroBatcher:
    """The process's micro-batcher (INFERWATCH_MICROBATCH_*; off: batches of one)."""
    meta = predictor.metadata
    base = {names.ATTR_MODEL_NAME: meta.name, names.ATTR_MODEL_VERSION: meta.version}
    on = settings.telemetry_enabled
    return MicroBatcher(
        predictor.predict,
        BatchTelemetry(
            tracer=telemetry.tracer if on else None,
            size=ins.microbatch_size if on else None,
            duration=ins.microbatch_duration if on else None,
            ok_attrs={**base, names.ATTR_OUTCOME: "ok"},
            error_attrs={**base, names.ATTR_OUTCOME: "error"},
            span_attrs=base,
        ),
        max_batch_size=settings.microbatch_max_size if settings.microbatch_enabled else 1,
        max_wait_s=settings.microbatch_max_wait_ms / 1000 if settings.microbatch_enabled else 0,
        max_queue=settings.microbatch_max_queue,
    )


def build_shadow(
    settings: Settings,
    served: Predictor,
    sink: AuditSink,
    meter: Meter,
    model: LoadedModel | None = None,
) -> ShadowScorer | None:
    """The shadow scorer (INFERWATCH_SHADOW_*), or None when no shadow model is set.

    A candidate that cannot score the served model's payloads stops start-up: it is a
    configuration error, not something to discover row by row.
    """
    if model is None:
        if settings.shadow_model_dir is None:
            return None
        model = load_model(settings.shadow_model_dir)
    predictor = Predictor(model)
    check_compatible(served.metadata.feature_schema, predictor.metadata.feature_schema)
    log.info(
        "shadow model %s version %s scores %.0f%% of live predictions",
        predictor.metadata.name,
        predictor.metadata.version,
        settings.shadow_fraction * 100,
    )
    return ShadowScorer(
        predictor,
        sink,
        meter,
        fraction=settings.shadow_fraction,
        max_queue=settings.shadow_max_queue,
        max_batch_size=settings.shadow_max_batch_size,
    )


def create_app(
    settings: Settings | None = None,
    *,
    model: LoadedModel | None = None,
    audit_sink: AuditSink | None = None,
    span_processors: Sequence[SpanProcessor] | None = None,
    metric_readers: Sequence[MetricReader] | None = None,
    shadow_model: LoadedModel | None = None,
) -> FastAPI:
    """Build the app. Nothing is loaded or started until the lifespan runs."""
    settings = settings or Settings()
    http = HttpInstruments()  # filled in by the lifespan (INFERWATCH_HTTP_INSTRUMENTATION)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threadpool_limits(limits=settings.inference_threads)
        try:
            loaded = model or resolve_model(settings)
        except (ModelLoadError, ModelNotFoundError) as exc:  # no half-loaded model, ever
            log.error("refusing to start: %s", exc)
            raise
        telemetry = build_telemetry(
            settings, span_processors=span_processors, metric_readers=metric_readers
        )
        _wire_http_instrumentation(app, settings, telemetry, http)
        meter = telemetry.meter or NoOpMeterProvider().get_meter(names.SCOPE_NAME)
        sink: AuditSink
        if audit_sink is not None:
            sink = audit_sink
        else:
            from inferwatch.audit.factory import build_audit_sink

            sink = build_audit_sink(settings, meter)
        sink.start()
        instruments = ServiceInstruments.create(meter)
        predictor = Predictor(loaded)
        batcher = build_batcher(settings, predictor, telemetry, instruments)
        batcher.start()
        shadow = build_shadow(settings, predictor, sink, meter, shadow_model)
        if shadow is not None:
            shadow.start()
        analyst_dsn = settings.analyst_database_url  # unset or empty: /v1/monitoring/* 503
        store = MonitoringStore(analyst_dsn.get_secret_value()) if analyst_dsn else None
        if store is not None:
            store.open()  # connects nothing yet: start-up never waits for Postgres
        runtime = Runtime(
            settings=settings,
            predictor=predictor,
            validator=InstanceValidator(loaded.metadata.feature_schema, settings.max_string_length),
            telemetry=telemetry,
            instruments=instruments,
            audit=sink,
            batcher=batcher,
            monitoring=store,
            shadow=shadow,
        )
        names.observe_queue_depth(meter, lambda: batcher.depth, runtime.model_attrs)
        app.state.runtime = runtime  # read only by inferwatch.api.deps
        _install_openapi(app, runtime)
        log.info(
            "serving model %s version %s (instance %s)",
            loaded.metadata.name,
            loaded.metadata.version,
            telemetry.resource.attributes.get("service.instance.id"),
        )
        # Everything alive now lives as long as the process: move it out of the GC's
        # reach, so full collections (triggered by records and spans awaiting flush)
        # scan only request-time objects, and their pauses shrink (docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            runtime.ready = False
            await batcher.stop()  # fails what is still queued with 503; ends the model thread
            if shadow is not None:
                await shadow.stop()  # before the writer closes: its last rows get flushed
            if store is not None:
                store.close()
            try:
                sink.close(settings.audit_shutdown_timeout_s)
            finally:
                http.tracer = http.duration = None
                telemetry.shutdown(settings.telemetry_shutdown_timeout_s)

    app = FastAPI(
        title="inferwatch",
        version=__version__,
        summary="Card-fraud scoring, observable by construction",
        lifespan=lifespan,
        # /docs is ours (api/routes/docs.py: Swagger UI served offline); no ReDoc
        docs_url=None,
        redoc_url=None,
        # One HTTP instrumentation (INFERWATCH_HTTP_INSTRUMENTATION): ours by default,
        # service/inferwatch/telemetry/http.py, measured cheapest (docs/decisions.md). FastAPI's
        # own stays off. Never operation spans or log records.
        telemetry={
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
            "exclude": _untraced,
        },
    )
    if settings.http_instrumentation == HttpInstrumentation.INFERWATCH:
        app.add_middleware(HttpServerTelemetry, instruments=http, untraced=UNTRACED_PATHS)
    install_error_handlers(app)
    # predictions first: routing tries routers in order, and /v1/predict is the hot path
    app.include_router(predict.router)
    app.include_router(health.router)
    app.include_router(model_routes.router)
    app.include_router(feedback.router)
    app.include_router(monitoring.router)
    app.include_router(docs.router)
    return app


def _install_openapi(app: FastAPI, runtime: Runtime) -> None:
    """Request bodies in the OpenAPI document come from the model's feature schema."""
    schema = feature_json_schema(
        runtime.predictor.metadata.feature_schema, runtime.settings.max_string_length
    )
    bodies = predict.openapi_request_bodies(schema, runtime.settings.max_batch_size)
    bodies["/v1/feedback"] = feedback.openapi_request_body(
        runtime.settings.max_string_length,
        runtime.predictor.metadata.classes,
        runtime.settings.max_batch_size,
    )
    original = FastAPI.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = original(app)
            for path, body in bodies.items():
                doc["paths"][path]["post"]["requestBody"] = body
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi_schema = None
    app.openapi = openapi  # type: ignore[method-assign]
