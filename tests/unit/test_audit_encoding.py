"""Pure parts of the audit writer: privacy policy, tuple encoding, spool frames."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import orjson
import pytest

from inferwatch.audit import encoding as enc
from inferwatch.audit.privacy import PrivacyPolicy
from inferwatch.audit.records import OutcomeRecord, PredictionRecord
from inferwatch.audit.spool import Spool, encode_frame, iter_frames

PID = UUID("01890a5d-ac96-774b-bcce-b302099a8057")


def _rec(**over: object) -> PredictionRecord:
    fields: dict[str, object] = {
        "prediction_id": PID,
        "ts": datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC),
        "model_name": "m",
        "model_version": "1",
        "features": {"amount": 12.5, "mcc": "grocery", "card_present": True},
        "prediction": 1,
        "probability": 0.75,
        "latency_s": 0.0002,
        "trace_id": "a" * 32,
        "span_id": "b" * 16,
    }
    fields.update(over)
    return PredictionRecord(**fields)  # type: ignore[arg-type]


def test_privacy_keep_drop_hash_and_default() -> None:
    key = b"secret-key-0123456789"
    p = PrivacyPolicy({"mcc": "hash", "amount": "drop"}, key)
    out = p.apply({"amount": 1.0, "mcc": "grocery", "hour": 3})
    assert out == {
        "mcc": hmac.new(key, b'"grocery"', hashlib.sha256).hexdigest(),
        "hour": 3,
    }
    allow = PrivacyPolicy({"*": "drop", "hour": "keep"})
    assert allow.apply({"amount": 1.0, "hour": 3}) == {"hour": 3}
    assert p.hash_value(1) != p.hash_value("1")


def test_privacy_identity_is_free_and_hash_needs_a_key() -> None:
    feats = {"a": 1}
    assert PrivacyPolicy().apply(feats) is feats
    with pytest.raises(ValueError, match="HMAC key"):
        PrivacyPolicy({"a": "hash"})


def test_prediction_tuple_layout() -> None:
    e = enc.encode(_rec(), PrivacyPolicy())
    assert e.kind == enc.KIND_PREDICTION
    assert e.key == str(PID)
    assert not e.sanitized
    assert e.data[:2] == b"\x00\x0d"  # 13 fields
    assert enc.tuple_key(e.kind, e.data) == str(PID)
    assert orjson.dumps(enc.jsonb_order(_rec().features)) in e.data
    assert enc.split_tuples(e.data * 3) == [e.data] * 3


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"entity_type": "acct", "entity_id": "é-1", "request_id": "r-1"},
        {"trace_id": "", "span_id": "", "model_name": "ünï"},
        {"features": {"z": [1, {"b": None}], "aa": 'x\\y"', "": 2**70}},
    ],
)
def test_fast_path_bytes_equal_the_careful_path(over: dict[str, object]) -> None:
    r = _rec(**over)
    fast, dirty = enc.prediction_tuple(r, PrivacyPolicy())
    careful, careful_dirty = enc._careful_prediction_tuple(r, enc.jsonb_order(r.features))
    assert (fast, dirty) == (careful, careful_dirty)
    assert not dirty


@pytest.mark.parametrize(
    "over",
    [
        {"entity_id": "a\x00b"},
        {"trace_id": "\ud800"},
        {"features": {"s": "a\x00"}},
        {"model_version": "v\x00"},
    ],
)
def test_fast_path_hands_unclean_values_to_the_careful_path(over: dict[str, object]) -> None:
    data, dirty = enc.prediction_tuple(_rec(**over), PrivacyPolicy())
    assert dirty
    assert enc.split_tuples(data) == [data]


def test_jsonb_order_is_length_then_bytes_and_keeps_the_object() -> None:
    obj = {"feature_10": 1, "mcc": "x", "b": 2, "é": 3, "ab": 4, "feature_02": 5}
    ordered = enc.jsonb_order(obj)
    assert list(ordered) == ["b", "ab", "é", "mcc", "feature_02", "feature_10"]  # "é" is 2 bytes
    assert ordered == obj
    assert enc.jsonb_order(ordered) is ordered  # already in order: no copy


def test_outcome_tuple_layout() -> None:
    by_entity = enc.encode(
        OutcomeRecord(label=1, ts=datetime.now(UTC), entity_type="t", entity_id="x"),
        PrivacyPolicy(),
    )
    assert by_entity.data[:6] == b"\x00\x06\xff\xff\xff\xff"  # 6 fields, NULL prediction_id
    assert by_entity.key == "t:x"
    by_id = enc.encode(
        OutcomeRecord(label=0, ts=datetime.now(UTC), prediction_id=PID), PrivacyPolicy()
    )
    assert by_id.key == str(PID)


@pytest.mark.parametrize(
    ("value", "expected", "sanitized"),
    [
        ({"a": 1.5}, {"a": 1.5}, False),
        ({"big": 2**80}, {"big": 2**80}, False),
        ({"nul": "a\x00b"}, {"nul": "a\ufffdb"}, True),
        ({"lone": "\ud800"}, {"lone": "\ufffd"}, True),
        ({"literal": "\\u0000"}, {"literal": "\\u0000"}, False),
    ],
)
def test_encode_json_makes_values_storable(
    value: object, expected: object, sanitized: bool
) -> None:
    text, changed = enc.encode_json(value)
    assert orjson.loads(text) == expected
    assert changed is sanitized
    assert b"\\u0000" not in text or not sanitized


def test_frames_round_trip_and_skip_torn_or_corrupt_bytes() -> None:
    a = encode_frame(1, [b"x" * 10, b"y" * 5], 100.0)
    b = encode_frame(2, [b"z"], 101.0)
    corrupt = bytearray(encode_frame(1, [b"q" * 8], 102.0))
    corrupt[-1] ^= 0xFF  # payload no longer matches its CRC
    torn = encode_frame(1, [b"w" * 50], 103.0)[:30]  # the process died mid-write
    frames = list(iter_frames(a + bytes(corrupt) + b + torn))
    assert [(f.kind, f.nrows, f.payload) for f in frames] == [
        (1, 2, b"x" * 10 + b"y" * 5),
        (2, 1, b"z"),
    ]


def test_spool_slots_segments_and_counts(tmp_path: Path) -> None:
    first = Spool(tmp_path, segment_bytes=64)
    first.open()
    second = Spool(tmp_path)
    second.open()  # another live process gets another slot
    assert first.slot != second.slot
    first.append(1, [b"a" * 40])
    first.append(1, [b"b" * 40, b"c" * 40])
    assert first.pending_records == 3
    assert first.should_roll()
    first.seal()
    assert len(first.sealed_segments()) == 1
    first.close()
    second.close()
    again = Spool(tmp_path)
    again.open()  # a restarted process finds what was left
    assert again.pending_records == 3
    (seg,) = again.sealed_segments()
    assert [f.nrows for f in again.read(seg)] == [1, 2]
    again.remove(seg)
    assert again.pending_records == 0
    again.close()
