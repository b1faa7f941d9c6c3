"""OTLP/HTTP span export of our own: a direct protobuf encoder and a small HTTP client.

Why this exists: the span export thread shares the GIL (and, in the benchmark, the
core) with the request thread. The SDK's encoder (``encode_spans``) builds one Python
protobuf object per span, attribute and value, so encoding a prediction span costs
several times the rest of its export, and encoding a whole batch holds the GIL long
enough to show in the single-request latency tail. ``SpanEncoder`` writes the same
``ExportTraceServiceRequest`` straight to protobuf wire format: fixed prefixes per
attribute key, cached whole key/value fields for repeated values (method, route,
model version, ...), resource and scope encoded once. Measured against the SDK's
stock exporter by ``bench/spans.py``; figures in docs/benchmarks.md.

Public APIs only: spans are read through ``ReadableSpan``'s properties, the exporter
is a plain ``SpanExporter`` with its own ``httpx`` client and its own shutdown state.

Contract (tests/unit/test_otlp_spans.py): for any batch the SDK can encode,
``ExportTraceServiceRequest.FromString(encode_request(spans))`` equals
``encode_spans(spans)``, attribute for attribute, including the SDK's edge rules (an
attribute whose value cannot be encoded is skipped and logged; ``None`` is an empty
AnyValue). Anything this module does not know falls back to the SDK's encoder for
the whole batch, so a rare shape costs speed, never data.

Transport (``OtlpHttpSpanExporter``): the same ``OTEL_EXPORTER_OTLP_[TRACES_]*``
variables as the SDK's OTLP/HTTP exporter, read the way it reads them (endpoint,
headers, timeout in seconds, gzip/deflate compression, CA and client certificates);
one keep-alive connection; retries with exponential backoff and jitter on 429, 502,
503, 504 and connection errors, honouring ``Retry-After``, all within the timeout.

Must never: raise into the BatchSpanProcessor, retry past the timeout or past
shutdown, or retry a request the collector refused (other 4xx/5xx).
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal

import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_KEY,
    OTEL_EXPORTER_OTLP_COMPRESSION,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY,
    OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_HEADERS,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind
from opentelemetry.trace.span import SpanContext
from opentelemetry.util.re import parse_env_headers

from inferwatch import __version__

log = logging.getLogger(__name__)

_LEN: Final = 2  # wire type: length-delimited
_pack_fixed64: Final = struct.Struct("<Q").pack
_pack_double: Final = struct.Struct("<d").pack
_pack_fixed32: Final = struct.Struct("<I").pack
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_CACHE_MAX: Final = 4096
_CACHEABLE: Final = frozenset({str, int, bool, type(None)})  # value types worth caching

# trace.proto Span.SpanKind values (SDK SpanKind is 0-based, OTLP's 1-based).
_KIND: Final = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_FLAGS_HAS_IS_REMOTE: Final = 0x100
_FLAGS_IS_REMOTE: Final = 0x200


class Unsupported(Exception):
    """A value this encoder does not handle: the batch goes through the SDK's encoder."""


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return _tag(field, _LEN) + _varint(len(payload)) + payload


# Tags used per span, precomputed.
_T_TRACE_ID: Final = _tag(1, _LEN) + b"\x10"  # 16 bytes
_T_SPAN_ID: Final = _tag(2, _LEN) + b"\x08"  # 8 bytes
_T_PARENT_ID: Final = _tag(4, _LEN) + b"\x08"
_T_KIND: Final = _tag(6, 0)
_T_START: Final = _tag(7, 1)
_T_END: Final = _tag(8, 1)
_T_FLAGS: Final = _tag(16, 5)


def _any_value(value: Any) -> bytes:
    """AnyValue payload (not framed). Raises ValueError/UnicodeError like the SDK's PB2."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _ld(1, value.encode("utf-8"))
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"Value out of range: {value}")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _ld(7, value)
    if isinstance(value, Sequence):
        return _ld(5, b"".join(_ld(1, _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _ld(6, b"".join(_ld(1, _key_value(str(k), v)) for k, v in value.items()))
    raise Unsupported(f"attribute value of type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return _ld(1, key.encode("utf-8")) + _ld(2, _any_value(value))


class SpanEncoder:
    """Encodes batches of finished SDK spans; caches what repeats between spans."""

    def __init__(self) -> None:
        self._kv: dict[tuple[str, type, Any], bytes] = {}
        self._key: dict[str, bytes] = {}
        self._prefix: dict[
            tuple[int, InstrumentationScope | None],
            tuple[Resource, tuple[bytes, bytes, bytes, bytes]],
        ] = {}

    # -- attributes ----------------------------------------------------------------------
    def _span_attribute(self, key: str, value: Any) -> bytes:
        """One Span `attributes` entry (field 9), framed, and cached when its value may
        repeat (the caller looks the cache up); b"" when skipped, like the SDK."""
        try:
            prefix = self._key.get(key)
            if prefix is None:
                prefix = self._key[key] = _ld(1, key.encode("utf-8"))
            kv = prefix + _ld(2, _any_value(value))
        except (ValueError, UnicodeError, TypeError) as exc:
            # the SDK's _encode_attributes logs and skips an attribute it cannot encode
            log.error("Failed to encode key %s: %s", key, exc)
            return b""
        framed = b"\x4a" + _varint(len(kv)) + kv  # field 9, length-delimited
        if type(value) in _CACHEABLE:
            if len(self._kv) >= _CACHE_MAX:
                self._kv.clear()
            self._kv[(key, type(value), value)] = framed
        return framed

    def _attribute_fields(self, field: int, attributes: Mapping[str, Any] | None) -> bytes:
        if not attributes:
            return b""
        # the public Mapping: ~3 µs per prediction span, the dict underneath it would be
        # 0.4 µs but is the SDK's private member (docs/benchmarks.md)
        items = attributes.items()
        if field == 9:
            cache = self._kv
            parts = []
            for k, v in items:
                hit = cache.get((k, type(v), v)) if type(v) in _CACHEABLE else None
                parts.append(hit if hit is not None else self._span_attribute(k, v))
            return b"".join(parts)
        parts = []
        for k, v in items:
            try:
                parts.append(_ld(field, _key_value(k, v)))
            except (ValueError, UnicodeError, TypeError) as exc:
                log.error("Failed to encode key %s: %s", k, exc)
        return b"".join(parts)

    # -- one span ------------------------------------------------------------------------
    def _span(self, span: ReadableSpan) -> bytes:
        ctx = span.get_span_context()
        if ctx is None:
            raise Unsupported("span without a context")
        parent = span.parent
        parts = [
            _T_TRACE_ID,
            ctx.trace_id.to_bytes(16, "big"),
            _T_SPAN_ID,
            ctx.span_id.to_bytes(8, "big"),
        ]
        if ctx.trace_state:
            parts.append(_ld(3, ",".join(f"{k}={v}" for k, v in ctx.trace_state.items()).encode()))
        if parent is not None:
            parts += [_T_PARENT_ID, parent.span_id.to_bytes(8, "big")]
        if span.name:
            parts.append(_ld(5, span.name.encode("utf-8")))
        parts += [_T_KIND, _varint(_KIND[span.kind])]
        if span.start_time:
            parts += [_T_START, _pack_fixed64(span.start_time)]
        if span.end_time:
            parts += [_T_END, _pack_fixed64(span.end_time)]
        parts.append(self._attribute_fields(9, span.attributes))
        if span.dropped_attributes:
            parts += [_tag(10, 0), _varint(span.dropped_attributes)]
        for event in span.events:
            ev = []
            if event.timestamp:
                ev.append(_tag(1, 1) + _pack_fixed64(event.timestamp))
            if event.name:
                ev.append(_ld(2, event.name.encode("utf-8")))
            ev.append(self._attribute_fields(3, event.attributes))
            if event.dropped_attributes:
                ev.append(_tag(4, 0) + _varint(event.dropped_attributes))
            parts.append(_ld(11, b"".join(ev)))
        if span.dropped_events:
            parts += [_tag(12, 0), _varint(span.dropped_events)]
        for link in span.links:
            lk = [
                _ld(1, link.context.trace_id.to_bytes(16, "big")),
                _ld(2, link.context.span_id.to_bytes(8, "big")),
                self._attribute_fields(4, link.attributes),
            ]
            if link.dropped_attributes:
                lk.append(_tag(5, 0) + _varint(link.dropped_attributes))
            lk.append(_tag(6, 5) + _pack_fixed32(_flags(link.context)))
            parts.append(_ld(13, b"".join(lk)))
        if span.dropped_links:
            parts += [_tag(14, 0), _varint(span.dropped_links)]
        status = span.status
        if status is not None:
            st = b""
            if status.description:
                st += _ld(2, status.description.encode("utf-8"))
            if status.status_code.value:
                st += _tag(3, 0) + _varint(status.status_code.value)
            parts.append(_ld(15, st))
        parts += [_T_FLAGS, _pack_fixed32(_flags(parent))]
        return b"".join(parts)

    # -- resource and scope --------------------------------------------------------------
    def _prefixes(
        self, resource: Resource, scope: InstrumentationScope | None
    ) -> tuple[bytes, bytes, bytes, bytes]:
        """Encoded once per (resource, scope): the ``resource`` field and the schema_url
        tail of ResourceSpans, the ``scope`` field and the schema_url tail of ScopeSpans."""
        key = (id(resource), scope)
        cached = self._prefix.get(key)
        if cached is not None and cached[0] is resource:  # the same object, not a reused id
            return cached[1]
        res = _ld(1, self._attribute_fields(1, resource.attributes))
        res_tail = _ld(3, resource.schema_url.encode()) if resource.schema_url else b""
        scope_msg = b""
        scope_tail = b""
        if scope is not None:
            scope_msg = (
                (_ld(1, scope.name.encode("utf-8")) if scope.name else b"")
                + (_ld(2, scope.version.encode("utf-8")) if scope.version else b"")
                + self._attribute_fields(3, scope.attributes)
            )
            scope_tail = _ld(3, scope.schema_url.encode()) if scope.schema_url else b""
        hit = (res, res_tail, _ld(1, scope_msg), scope_tail)
        if len(self._prefix) >= 64:
            self._prefix.clear()
        self._prefix[key] = (resource, hit)
        return hit

    def encode_request(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The serialized ExportTraceServiceRequest for these spans."""
        # grouped by resource identity (Resource.__hash__ serialises its attributes to
        # JSON on every call); equal resources built twice become two ResourceSpans,
        # which OTLP allows
        groups: dict[int, tuple[Resource, dict[InstrumentationScope | None, list[bytes]]]] = {}
        span_ = self._span
        for span in spans:
            resource = span.resource
            group = groups.get(id(resource))
            if group is None:
                group = groups[id(resource)] = (resource, {})
            scope = span.instrumentation_scope or None
            data = span_(span)
            group[1].setdefault(scope, []).append(b"\x12" + _varint(len(data)) + data)
        merged: list[tuple[Resource, dict[InstrumentationScope | None, list[bytes]]]] = []
        for resource, scopes in groups.values():  # equal resources: one ResourceSpans
            for other, other_scopes in merged:
                if other == resource:
                    for scope, encoded_spans in scopes.items():
                        other_scopes.setdefault(scope, []).extend(encoded_spans)
                    break
            else:
                merged.append((resource, scopes))
        out = []
        for resource, scopes in merged:
            body = []
            res = res_tail = b""
            for scope, scope_spans in scopes.items():
                res, res_tail, scope_field, scope_tail = self._prefixes(resource, scope)
                body.append(_ld(2, scope_field + b"".join(scope_spans) + scope_tail))
            out.append(_ld(1, res + b"".join(body) + res_tail))
        return b"".join(out)


def _flags(parent: SpanContext | None) -> int:
    flags = _FLAGS_HAS_IS_REMOTE
    if parent is not None and parent.is_remote:
        flags |= _FLAGS_IS_REMOTE
    return flags


# --- transport ---------------------------------------------------------------------

# The SDK's defaults (opentelemetry-exporter-otlp-proto-http).
DEFAULT_ENDPOINT: Final = "http://localhost:4318"
TRACES_PATH: Final = "v1/traces"
DEFAULT_TIMEOUT_S: Final = 10.0
RETRYABLE_STATUS: Final = frozenset({429, 502, 503, 504})
Compression = Literal["none", "gzip", "deflate"]


def _env(signal_var: str, general_var: str) -> str | None:
    """The signal's own variable wins over the general one; empty means unset."""
    return os.environ.get(signal_var) or os.environ.get(general_var) or None


@dataclass(frozen=True)
class OtlpHttpConfig:
    """Where and how to send spans; ``from_env`` reads what the SDK's exporter reads."""

    endpoint: str = f"{DEFAULT_ENDPOINT}/{TRACES_PATH}"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S
    compression: Compression = "none"
    certificate_file: str | None = None
    client_certificate_file: str | None = None
    client_key_file: str | None = None

    @classmethod
    def from_env(cls) -> OtlpHttpConfig:
        # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the full URL; the general one is a base
        # to which the signal path is appended (the OTLP exporter specification)
        endpoint = os.environ.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or (
            (os.environ.get(OTEL_EXPORTER_OTLP_ENDPOINT) or DEFAULT_ENDPOINT).removesuffix("/")
            + "/"
            + TRACES_PATH
        )
        raw_headers = _env(OTEL_EXPORTER_OTLP_TRACES_HEADERS, OTEL_EXPORTER_OTLP_HEADERS) or ""
        headers = {k.lower(): v for k, v in parse_env_headers(raw_headers, liberal=True).items()}
        # seconds, as the Python SDK reads it (the specification says milliseconds)
        raw_timeout = _env(OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, OTEL_EXPORTER_OTLP_TIMEOUT)
        timeout_s = DEFAULT_TIMEOUT_S
        if raw_timeout is not None:
            try:
                timeout_s = float(raw_timeout)
            except ValueError:
                log.warning("invalid OTLP timeout %r; using %ss", raw_timeout, DEFAULT_TIMEOUT_S)
        raw = (
            (_env(OTEL_EXPORTER_OTLP_TRACES_COMPRESSION, OTEL_EXPORTER_OTLP_COMPRESSION) or "none")
            .strip()
            .lower()
        )
        compression: Compression = "none"
        if raw in ("gzip", "deflate"):
            compression = "gzip" if raw == "gzip" else "deflate"
        elif raw != "none":
            log.warning("unsupported OTLP compression %r; sending uncompressed", raw)
        return cls(
            endpoint=endpoint,
            headers=headers,
            timeout_s=timeout_s,
            compression=compression,
            certificate_file=_env(
                OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE, OTEL_EXPORTER_OTLP_CERTIFICATE
            ),
            client_certificate_file=_env(
                OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE
            ),
            client_key_file=_env(
                OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY, OTEL_EXPORTER_OTLP_CLIENT_KEY
            ),
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What httpx verifies an https endpoint with (the system CAs unless a file is set)."""
        if not (self.certificate_file or self.client_certificate_file):
            return True
        context = ssl.create_default_context(cafile=self.certificate_file)
        if self.client_certificate_file:
            context.load_cert_chain(self.client_certificate_file, self.client_key_file)
        return context


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP-date (RFC 9110)."""
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


class OtlpHttpSpanExporter(SpanExporter):
    """Spans over OTLP/HTTP (protobuf), encoded by ``SpanEncoder``.

    The BatchSpanProcessor calls ``export`` from its worker thread (and from a flushing
    thread); one export runs at a time, over one keep-alive connection.
    """

    def __init__(
        self,
        config: OtlpHttpConfig | None = None,
        *,
        backoff_s: float = 1.0,
        jitter: float = 0.2,
    ) -> None:
        self.config = config or OtlpHttpConfig.from_env()
        # the SDK's schedule: 1 s, 2 s, 4 s, ... each +-20%, while the timeout allows
        self.backoff_s = backoff_s
        self.jitter = jitter
        self.encoder = SpanEncoder()
        headers = {
            "content-type": "application/x-protobuf",
            "user-agent": f"inferwatch/{__version__} (OTLP/HTTP span exporter)",
            **self.config.headers,
        }
        if self.config.compression != "none":
            headers["content-encoding"] = self.config.compression
        # httpx (a dependency already): a POST of a 512-span batch costs ~0.4 ms of CPU,
        # under 1 µs per span (docs/benchmarks.md)
        self.client = httpx.Client(
            headers=headers,
            verify=self.config.ssl_context(),
            timeout=self.config.timeout_s,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            trust_env=True,  # HTTP(S)_PROXY, NO_PROXY, SSL_CERT_FILE: as the SDK's session
        )
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    # -- SpanExporter ----------------------------------------------------------------------
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.stopping.is_set():
            log.warning("span exporter already shut down; dropping %d spans", len(spans))
            return SpanExportResult.FAILURE
        try:
            with self.lock:  # the encoder's caches and the connection: one export at a time
                return self.send(self.compress(self.encode(spans)), len(spans))
        except Exception:  # never into the BatchSpanProcessor: the batch is lost, logged
            log.exception("span export failed; dropping %d spans", len(spans))
            return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()  # an export waiting to retry gives up now
        with self.lock:  # an export in flight ends within its timeout
            self.client.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing is buffered here

    # -- steps -----------------------------------------------------------------------------
    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        try:
            return self.encoder.encode_request(spans)
        except Unsupported:
            data: bytes = encode_spans(spans).SerializePartialToString()
            return data

    def compress(self, data: bytes) -> bytes:
        if self.config.compression == "gzip":
            return gzip.compress(data, compresslevel=6, mtime=0)
        if self.config.compression == "deflate":
            return zlib.compress(data)
        return data

    def send(self, body: bytes, n_spans: int) -> SpanExportResult:
        """POST with retries until success, a refusal, the deadline or shutdown."""
        deadline = time.monotonic() + self.config.timeout_s
        waits = 0  # backoff waits so far
        reconnected = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stopping.is_set():
                break
            retry_after: float | None = None
            try:
                response = self.client.post(self.config.endpoint, content=body, timeout=remaining)
            except httpx.TransportError as exc:  # connect, read, write, protocol, timeout
                reason = f"{type(exc).__name__}: {exc}"
                if not reconnected and not isinstance(exc, httpx.TimeoutException):
                    # a keep-alive connection the collector closed: retry once at once
                    reconnected = True
                    continue
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return SpanExportResult.SUCCESS
                # (an error body is a binary google.rpc.Status: not logged)
                reason = f"HTTP {status} {response.reason_phrase}"
                if status not in RETRYABLE_STATUS:
                    log.error("collector refused %d spans (%s); not retried", n_spans, reason)
                    return SpanExportResult.FAILURE
                retry_after = _retry_after_s(response.headers.get("retry-after"))
            delay = retry_after
            if delay is None:
                delay = self.backoff_s * 2**waits * random.uniform(1 - self.jitter, 1 + self.jitter)
            if delay >= deadline - time.monotonic():
                log.error(
                    "span export gave up within its timeout (%s); dropping %d spans",
                    reason,
                    n_spans,
                )
                return SpanExportResult.FAILURE
            log.warning("span export failed (%s); retrying in %.2fs", reason, delay)
            if self.stopping.wait(delay):
                break
            waits += 1
        log.error("span export stopped (timeout or shutdown); dropping %d spans", n_spans)
        return SpanExportResult.FAILURE
