"""OTLP/HTTP span export with a direct protobuf encoder: the SDK's wire bytes, cheaper.

Why this exists: the span export thread shares the GIL (and, in the benchmark, the
core) with the request thread. The SDK's encoder (``encode_spans``) builds one Python
protobuf object per span, attribute and value, so encoding a prediction span costs
more CPU than the rest of its export, and encoding a whole batch holds the GIL long
enough to show in the single-request latency tail. ``encode_request`` writes the same
``ExportTraceServiceRequest`` straight to protobuf wire format: fixed prefixes per
attribute key, cached whole key/value fields for repeated values (method, route,
model version, ...), resource and scope encoded once. Measurements:
docs/benchmarks.md.

Contract (tests/unit/test_otlp_spans.py): for any batch the SDK can encode,
``ExportTraceServiceRequest.FromString(encode_request(spans))`` equals
``encode_spans(spans)``, attribute for attribute, including the SDK's edge rules (an
attribute whose value cannot be encoded is skipped and logged; ``None`` is an empty
AnyValue). Anything this module does not know falls back to the SDK's encoder for
the whole batch, so a rare shape costs speed, never data.

Only the transport is reused from the SDK's OTLP/HTTP exporter (endpoint, headers,
compression, timeouts and retries all come from the same ``OTEL_*`` variables).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http._common import (
    RequestPayloadTooLargeError,
    _is_request_too_large,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import SpanKind
from opentelemetry.trace.span import SpanContext

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

    def _attributes(self, field: int, attributes: Mapping[str, Any] | None) -> bytes:
        if not attributes:
            return b""
        # BoundedAttributes is a Mapping whose ABC iteration is slow per item; its
        # plain dict (same items, same order) is read directly when there is one.
        items = getattr(attributes, "_dict", attributes).items()
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
        # the span's own BoundedAttributes, not the MappingProxy `attributes` wraps it in
        parts.append(self._attributes(9, getattr(span, "_attributes", None) or span.attributes))
        if span.dropped_attributes:
            parts += [_tag(10, 0), _varint(span.dropped_attributes)]
        for event in span.events if getattr(span, "_events", True) else ():
            ev = []
            if event.timestamp:
                ev.append(_tag(1, 1) + _pack_fixed64(event.timestamp))
            if event.name:
                ev.append(_ld(2, event.name.encode("utf-8")))
            ev.append(self._attributes(3, event.attributes))
            if event.dropped_attributes:
                ev.append(_tag(4, 0) + _varint(event.dropped_attributes))
            parts.append(_ld(11, b"".join(ev)))
        if span.dropped_events:
            parts += [_tag(12, 0), _varint(span.dropped_events)]
        for link in span.links if getattr(span, "_links", True) else ():
            lk = [
                _ld(1, link.context.trace_id.to_bytes(16, "big")),
                _ld(2, link.context.span_id.to_bytes(8, "big")),
                self._attributes(4, link.attributes),
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
        res = _ld(1, self._attributes(1, resource.attributes))
        res_tail = _ld(3, resource.schema_url.encode()) if resource.schema_url else b""
        scope_msg = b""
        scope_tail = b""
        if scope is not None:
            scope_msg = (
                (_ld(1, scope.name.encode("utf-8")) if scope.name else b"")
                + (_ld(2, scope.version.encode("utf-8")) if scope.version else b"")
                + self._attributes(3, scope.attributes)
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


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter with ``SpanEncoder`` as its serializer.

    Everything but the encoding is the SDK's: transport, retries, headers, compression,
    timeouts, its self-metrics, and its request-size limit.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = SpanEncoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            log.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                try:
                    data = self._encoder.encode_request(spans)
                except Unsupported:
                    data = encode_spans(spans).SerializePartialToString()
            except Exception as error:  # the SDK's rule: a batch that cannot encode fails
                log.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE
            if _is_request_too_large(data, self._max_request_size):
                log.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size %d",
                    len(data),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(data)} bytes exceeds "
                    f"max_request_size {self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                result.error_attrs = (
                    {HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                    if sent.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
