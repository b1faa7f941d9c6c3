"""The HTTP server instrumentation: one SERVER span and one duration sample per request.

A pure-ASGI middleware, the default (``INFERWATCH_HTTP_INSTRUMENTATION=inferwatch``).
It does what FastAPI's built-in telemetry does for a request, minus what we measured
and do not need on every prediction (docs/decisions.md): per request it makes one span
``METHOD route`` (current while the route runs, so the route's prediction attributes,
its exemplars and the response's ``trace_id`` all land on it) and records
``http.server.request.duration`` in seconds inside that span. Stable HTTP semantic
conventions: method (unknown methods become ``_OTHER``), ``url.scheme``,
``http.route``, ``http.response.status_code``, ``network.protocol.version``,
``error.type`` on failure; ``url.path`` on the span only. W3C trace context is
extracted (with the configured ``OTEL_PROPAGATORS``) only when the caller sends a
``traceparent`` header.

Why not FastAPI's own: it costs more CPU per request (bench/cpu; docs/benchmarks.md):
it extracts context on every request, keeps a per-request telemetry object, an
active-requests up/down counter, more span attributes, context managers.

Must never: create an instrument per request, put an id or a path with ids on a metric
attribute (only the route template), or fail a request because telemetry failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.metrics import Histogram
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
)
from opentelemetry.semconv.attributes.network_attributes import NETWORK_PROTOCOL_VERSION
from opentelemetry.semconv.attributes.url_attributes import URL_PATH, URL_SCHEME
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_KNOWN_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_MAX_ATTRIBUTE_SETS: Final = 1024  # methods x routes x statuses x errors: bounded anyway


@dataclass
class HttpInstruments:
    """Filled in by the app's lifespan once the providers exist; ``None``: telemetry off."""

    tracer: Tracer | None = None
    duration: Histogram | None = None


class HttpServerTelemetry:
    def __init__(self, app: ASGIApp, instruments: HttpInstruments, untraced: frozenset[str]):
        self.app = app
        self._ins = instruments
        self._untraced = untraced
        # metric attributes, span attributes and span name, shared by every request with the
        # same key: no per-request dict
        self._sets: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any], str | None]] = {}
        self._by_endpoint: dict[Any, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ins = self._ins
        tracer, duration = ins.tracer, ins.duration
        if (
            tracer is None
            or duration is None
            or scope["type"] != "http"
            or scope["path"] in self._untraced
        ):
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        method = scope["method"]
        if method not in _KNOWN_METHODS:
            method = "_OTHER"
        parent = None
        for key, _ in scope["headers"]:
            if key == b"traceparent":
                parent = propagate.extract(
                    {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                )
                break
        scheme = scope.get("scheme", "http")
        version = scope.get("http_version", "1.1")
        # what a sampler may look at; the rest is set once, at the end, from a cached dict
        span = tracer.start_span(
            "HTTP" if method == "_OTHER" else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={HTTP_REQUEST_METHOD: method, URL_PATH: scope["path"]},
        )
        if method == "_OTHER":
            span.set_attribute(HTTP_REQUEST_METHOD_ORIGINAL, scope["method"])
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_status)
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                self._finish(scope, span, duration, started, method, scheme, version, status, error)
            except Exception:  # telemetry never fails the request
                log.exception("HTTP telemetry failed to finish a span")
            finally:
                otel_context.detach(token)

    def _route(self, scope: Scope) -> str | None:
        """The matched route template: FastAPI's APIRoutes put themselves in the scope;
        plain Starlette routes (the OpenAPI document, docs) are found by endpoint."""
        route = scope.get("route")
        if route is None:
            endpoint = scope.get("endpoint")
            if endpoint is None:
                return None
            route = self._by_endpoint.get(endpoint)
            if route is None:
                router = scope.get("router")
                for candidate in getattr(router, "routes", ()):
                    if getattr(candidate, "endpoint", None) is endpoint:
                        route = self._by_endpoint[endpoint] = candidate
                        break
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        return path if isinstance(path, str) else None

    def _finish(
        self,
        scope: Scope,
        span: trace.Span,
        duration: Histogram,
        started: float,
        method: str,
        scheme: str,
        version: str,
        status: int | None,
        error: BaseException | None,
    ) -> None:
        route = self._route(scope)
        if error is not None and status is None:
            status = 500  # what the server error middleware answers
        error_type = None
        if error is not None:
            error_type = type(error).__qualname__
        elif status is None:
            error_type = "incomplete_response"
        elif status >= 500:
            error_type = str(status)
        key = (method, route, status, scheme, version, error_type)
        sets = self._sets.get(key)
        if sets is None:
            attrs: dict[str, Any] = {HTTP_REQUEST_METHOD: method, URL_SCHEME: scheme}
            if route:
                attrs[HTTP_ROUTE] = route
            if status is not None:
                attrs[HTTP_RESPONSE_STATUS_CODE] = status
            attrs[NETWORK_PROTOCOL_VERSION] = version
            if error_type is not None:
                attrs[ERROR_TYPE] = error_type
            name = f"{'HTTP' if method == '_OTHER' else method} {route}" if route else None
            span_attrs = {k: v for k, v in attrs.items() if k != HTTP_REQUEST_METHOD}
            sets = (attrs, span_attrs, name)
            if len(self._sets) < _MAX_ATTRIBUTE_SETS:
                self._sets[key] = sets
        attrs, span_attrs, name = sets
        duration.record(perf_counter() - started, attrs)  # inside the span: exemplars
        if name is not None:
            span.update_name(name)
        span.set_attributes(span_attrs)
        if error is not None:
            span.record_exception(error)
        if error_type is not None:
            span.set_status(StatusCode.ERROR)
        span.end()
