"""The audit record of a prediction is built from the route's pieces, field for field."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from inferwatch.api.validation import ValidInstance
from inferwatch.audit.records import PredictionRecord


def test_from_prediction_puts_each_piece_in_its_field() -> None:
    features = {"amount": 12.5, "merchant_category": "grocery"}
    inst = ValidInstance(features, entity_type="account", entity_id="a-1", request_id="req-9")
    pid = UUID("01a20509-e480-72c0-810a-9c0bb09566e3")
    ts = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    record = PredictionRecord.from_prediction(
        prediction_id=pid,
        ts=ts,
        model_name="card-fraud",
        model_version="v7",
        instance=inst,
        label=1,
        probability=0.875,
        latency_s=0.0012,
        trace_id="ab" * 16,
        span_id="cd" * 8,
    )
    assert record == PredictionRecord(
        prediction_id=pid,
        ts=ts,
        model_name="card-fraud",
        model_version="v7",
        features=features,
        prediction=1,
        probability=0.875,
        latency_s=0.0012,
        trace_id="ab" * 16,
        span_id="cd" * 8,
        entity_type="account",
        entity_id="a-1",
        request_id="req-9",
    )
    assert record.features is features  # the validated payload itself: no copy on the hot path


def test_from_prediction_without_entity_or_request_id() -> None:
    inst = ValidInstance({"amount": 1.0}, entity_type=None, entity_id=None, request_id=None)
    record = PredictionRecord.from_prediction(
        prediction_id=UUID(int=1),
        ts=datetime(2026, 11, 20, tzinfo=UTC),
        model_name="m",
        model_version="v",
        instance=inst,
        label=0,
        probability=0.1,
        latency_s=0.001,
        trace_id="",
        span_id="",
    )
    assert (record.entity_type, record.entity_id, record.request_id) == (None, None, None)
    assert (record.trace_id, record.span_id) == ("", "")
