"""Records to Postgres binary COPY tuples: the one wire form for COPY and spool.

Pure. A record is encoded once (privacy policy applied first) into the bytes of
one tuple of Postgres' binary COPY format; those bytes go to the server as they
are, or into a spool frame, and a replay sends the spooled bytes unchanged. So a
replay costs no re-serialisation, and what is replayed is exactly what would have
been written.

Values Postgres cannot store are made storable here, never left to fail a whole
batch: NUL characters (text and jsonb reject them) and unpaired surrogates (not
UTF-8) become U+FFFD, non-finite floats in the payload become JSON null (orjson's
rule), integers beyond 64 bits are kept exactly (jsonb numeric). Such a record is
reported through ``Encoded.sanitized`` so the writer can log it with its id.
The API should reject these with a 4xx first; this is the writer's safety net.

Speed (the writer encodes every record on one thread, sharing two cores with the
server): a prediction takes one fast path (``prediction_tuple``, no per-row objects
beyond the tuple's bytes) that falls back to the careful path above only when a value
needs attention; model name/version fields are cached; and the payload's keys are
sent in jsonb's storage order (``jsonb_order``), which makes the server's per-row key
sort a single pass (more COPY rows/s: docs/audit.md). jsonb stores
an object's keys in that order whatever order they arrive in, so the stored value
is the same.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import orjson

from inferwatch.audit.privacy import PrivacyPolicy
from inferwatch.audit.records import AuditRecord, OutcomeRecord, PredictionRecord, ReplayRecord

KIND_PREDICTION: Final = 1
KIND_OUTCOME: Final = 2
KIND_REPLAY: Final = 3

PREDICTION_COLUMNS: Final = (
    "prediction_id",
    "ts",
    "model_name",
    "model_version",
    "entity_type",
    "entity_id",
    "features",
    "prediction",
    "probability",
    "latency_s",
    "trace_id",
    "span_id",
    "request_id",
)
PREDICTION_TYPES: Final = (
    "uuid",
    "timestamptz",
    "text",
    "text",
    "text",
    "text",
    "jsonb",
    "smallint",
    "double precision",
    "double precision",
    "text",
    "text",
    "text",
)
OUTCOME_COLUMNS: Final = (
    "prediction_id",
    "entity_type",
    "entity_id",
    "label",
    "received_at",
    "observed_at",
)
OUTCOME_TYPES: Final = ("uuid", "text", "text", "smallint", "timestamptz", "timestamptz")

COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER: Final = b"\xff\xff"

_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_NULL: Final = b"\xff\xff\xff\xff"
_pack_i4 = struct.Struct(">i").pack
_pack_ts = struct.Struct(">iq").pack  # length 8 + int64 microseconds since 2000-01-01
_pack_i2 = struct.Struct(">ih").pack  # length 2 + int16
_pack_f8 = struct.Struct(">id").pack  # length 8 + float8
# features (length, jsonb version 1), then prediction, probability, latency_s
_pack_jsonb_head = struct.Struct(">iB").pack
_pack_pred_tail = struct.Struct(">ihidid").pack
_PRED_HEAD: Final = b"\x00\x0d\x00\x00\x00\x10"  # 13 fields, then a 16-byte uuid
_OUT_HEAD: Final = b"\x00\x06"
_NUL_JSON: Final = b"\\u0000"
_unpack_i2 = struct.Struct(">h").unpack_from
_unpack_i4 = struct.Struct(">i").unpack_from


@dataclass(frozen=True, slots=True)
class Encoded:
    kind: int
    data: bytes  # one binary COPY tuple
    sanitized: bool = False

    @property
    def key(self) -> str:
        """The prediction_id (or the outcome's key), for logs: computed only when logged."""
        return tuple_key(self.kind, self.data)


def _ts(value: datetime) -> bytes:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    d = value - _PG_EPOCH
    return _pack_ts(8, (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds)


def _clean_str(s: str) -> str:
    s = s.replace("\x00", "\ufffd")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return s


def _text(s: str) -> tuple[bytes, bool]:
    try:
        if "\x00" not in s:
            b = s.encode("utf-8")
            return _pack_i4(len(b)) + b, False
    except UnicodeEncodeError:
        pass
    b = _clean_str(s).encode("utf-8")
    return _pack_i4(len(b)) + b, True


def _opt_text(s: str | None) -> tuple[bytes, bool]:
    """A nullable text field: SQL NULL for None."""
    return (_NULL, False) if s is None else _text(s)


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return _clean_str(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_clean_str(str(k)): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean_json(v) for v in value]
    try:  # anything else orjson can natively serialise (datetime, UUID, numpy, ...)
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
    except (TypeError, orjson.JSONEncodeError):
        return _clean_str(str(value))


def encode_json(value: Any) -> tuple[bytes, bool]:
    """JSON text for a jsonb column, and whether anything had to be changed."""
    try:
        out = orjson.dumps(value)
        if _NUL_JSON not in out:
            return out, False
    except (TypeError, orjson.JSONEncodeError):
        pass
    cleaned = _clean_json(value)
    text = json.dumps(cleaned, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8"), cleaned != value


_UNSEEN: Final[Any] = object()
_KEY_ORDERS: dict[tuple[Any, ...], tuple[str, ...] | None] = {}
_FIELDS: dict[str, bytes] = {}  # model name/version -> its text field
_CACHE_MAX: Final = 4096


def _jsonb_key(key: str) -> tuple[int, bytes]:
    b = key.encode("utf-8", "surrogatepass")
    return len(b), b


def jsonb_order(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with its keys in jsonb's storage order: shorter first, then bytewise.

    Postgres sorts every jsonb object's keys on input; keys that arrive in that
    order cost it one pass instead of a sort (its qsort checks for sorted input).
    The order of a payload's key set is computed once and cached (a model's
    payloads share their keys); a payload already in order is returned as it is.
    """
    keys = tuple(obj)
    order = _KEY_ORDERS.get(keys, _UNSEEN)
    if order is _UNSEEN:
        try:
            ordered = tuple(sorted(keys, key=_jsonb_key))
            order = None if ordered == keys else ordered
        except (TypeError, AttributeError):  # a non-str key: the careful path handles it
            order = None
        if len(_KEY_ORDERS) < _CACHE_MAX:
            _KEY_ORDERS[keys] = order
    if order is None:
        return obj
    return {k: obj[k] for k in order}


def _clean_field(s: str) -> bytes:
    """A text field with no NUL and valid UTF-8 (else ValueError/UnicodeEncodeError)."""
    b = s.encode("utf-8")
    if b"\x00" in b:
        raise ValueError("NUL in text")
    return _pack_i4(len(b)) + b


def _const_field(s: str) -> bytes:
    """A model name/version field: few distinct values, cached."""
    f = _FIELDS.get(s)
    if f is None:
        f = _clean_field(s)
        if len(_FIELDS) < _CACHE_MAX:
            _FIELDS[s] = f
    return f


def prediction_tuple(r: PredictionRecord, policy: PrivacyPolicy) -> tuple[bytes, bool]:
    """One prediction's COPY tuple, and whether a value had to be made storable."""
    features = jsonb_order(policy.apply(r.features))
    try:
        js = orjson.dumps(features)
        et, ei, rq, tr, sp = r.entity_type, r.entity_id, r.request_id, r.trace_id, r.span_id
        # orjson writes a NUL as \u0000; a payload with no backslash has none (fast check)
        if (b"\\" in js and _NUL_JSON in js) or "\x00" in f"{et}{ei}{rq}{tr}{sp}":
            raise ValueError("NUL")
        # str.encode raises on unpaired surrogates: the careful path replaces them
        tb, sb = tr.encode(), sp.encode()
        eb = None if et is None else et.encode()
        ib = None if ei is None else ei.encode()
        qb = None if rq is None else rq.encode()
        return b"".join(
            (
                _PRED_HEAD,
                r.prediction_id.bytes,
                _ts(r.ts),
                _const_field(r.model_name),
                _const_field(r.model_version),
                _NULL if eb is None else _pack_i4(len(eb)),
                eb or b"",
                _NULL if ib is None else _pack_i4(len(ib)),
                ib or b"",
                _pack_jsonb_head(len(js) + 1, 1),
                js,
                _pack_pred_tail(2, r.prediction, 8, r.probability, 8, r.latency_s),
                _pack_i4(len(tb)),
                tb,
                _pack_i4(len(sb)),
                sb,
                _NULL if qb is None else _pack_i4(len(qb)),
                qb or b"",
            )
        ), False
    except Exception:  # a value needs the careful path (or cannot be stored at all)
        return _careful_prediction_tuple(r, features)


def _careful_prediction_tuple(r: PredictionRecord, features: dict[str, Any]) -> tuple[bytes, bool]:
    payload, dirty = encode_json(features)
    t_name, d1 = _text(r.model_name)
    t_ver, d2 = _text(r.model_version)
    t_trace, d3 = _text(r.trace_id)
    t_span, d4 = _text(r.span_id)
    dirty = dirty or d1 or d2 or d3 or d4
    parts = [_PRED_HEAD, r.prediction_id.bytes, _ts(r.ts), t_name, t_ver]
    for opt in (r.entity_type, r.entity_id):
        b, d = _opt_text(opt)
        parts.append(b)
        dirty = dirty or d
    parts += [
        _pack_i4(len(payload) + 1),
        b"\x01",
        payload,
        _pack_i2(2, r.prediction),
        _pack_f8(8, r.probability),
        _pack_f8(8, r.latency_s),
        t_trace,
        t_span,
    ]
    b, d = _opt_text(r.request_id)
    parts.append(b)
    dirty = dirty or d
    return b"".join(parts), dirty


def encode_prediction(r: PredictionRecord, policy: PrivacyPolicy) -> Encoded:
    data, dirty = prediction_tuple(r, policy)
    return Encoded(KIND_PREDICTION, data, dirty)


def encode_outcome(r: OutcomeRecord) -> Encoded:
    parts = [_OUT_HEAD]
    dirty = False
    parts.append(_NULL if r.prediction_id is None else b"\x00\x00\x00\x10" + r.prediction_id.bytes)
    for opt in (r.entity_type, r.entity_id):
        b, d = _opt_text(opt)
        parts.append(b)
        dirty = dirty or d
    parts += [_pack_i2(2, r.label), _ts(r.ts)]
    parts.append(_NULL if r.observed_at is None else _ts(r.observed_at))
    return Encoded(KIND_OUTCOME, b"".join(parts), dirty)


def encode(record: AuditRecord, policy: PrivacyPolicy) -> Encoded:
    if isinstance(record, PredictionRecord):
        return encode_prediction(record, policy)
    if isinstance(record, ReplayRecord):
        return encode_replay(record)
    return encode_outcome(record)


# A replay row (table ``replays``, migration 0005). The prediction id comes first, so
# ``tuple_key`` finds it as it does for the other kinds.
REPLAY_COLUMNS: Final = (
    "prediction_id",
    "replay_id",
    "ts",
    "mode",
    "model_name",
    "model_version",
    "prediction",
    "probability",
    "scored_at",
)
REPLAY_TYPES: Final = (
    "uuid",
    "text",
    "timestamptz",
    "text",
    "text",
    "text",
    "smallint",
    "double precision",
    "timestamptz",
)
_REPLAY_HEAD: Final = b"\x00\x09\x00\x00\x00\x10"  # 9 fields, then a 16-byte uuid


def encode_replay(r: ReplayRecord) -> Encoded:
    rid, d1 = _text(r.replay_id)
    mode, d2 = _text(r.mode)
    name, d3 = _text(r.model_name)
    ver, d4 = _text(r.model_version)
    data = b"".join(
        (
            _REPLAY_HEAD,
            r.prediction_id.bytes,
            rid,
            _ts(r.ts),
            mode,
            name,
            ver,
            _pack_i2(2, r.prediction),
            _pack_f8(8, r.probability),
            _ts(r.scored_at),
        )
    )
    return Encoded(KIND_REPLAY, data, d1 or d2 or d3 or d4)


def copy_stream(tuples: Sequence[bytes]) -> bytes:
    """A complete binary COPY stream (signature, tuples, trailer)."""
    return b"".join((COPY_SIGNATURE, *tuples, COPY_TRAILER))


def split_tuples(data: bytes) -> list[bytes]:
    """Split concatenated binary COPY tuples (no signature/trailer) into single tuples.

    Used to bisect a batch that Postgres refused, without decoding the values.
    """
    out: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        (nfields,) = _unpack_i2(data, pos)
        pos += 2
        for _ in range(nfields):
            (length,) = _unpack_i4(data, pos)
            pos += 4 + max(length, 0)
        if pos > end:
            raise ValueError("truncated COPY tuple")
        out.append(data[start:pos])
    return out


def tuple_key(kind: int, data: bytes) -> str:
    """The id in an encoded tuple, for logging (the first field is a uuid or NULL)."""
    (length,) = _unpack_i4(data, 2)
    if length == 16:
        return str(UUID(bytes=bytes(data[6:22])))
    if kind != KIND_OUTCOME or length != -1:
        return "(unknown)"
    texts, pos = [], 6  # an entity-keyed outcome: entity_type, entity_id follow
    for _ in range(2):
        (n,) = _unpack_i4(data, pos)
        texts.append(bytes(data[pos + 4 : pos + 4 + max(n, 0)]).decode("utf-8", "replace"))
        pos += 4 + max(n, 0)
    return ":".join(texts)
