"""The audit records: what the request path hands to the audit writer.

Pure data, built on the request path in O(µs). Nothing here does I/O. The writer
(``inferwatch.audit.writer``) serialises, batches, spools and COPYs these; the API
tests use :class:`inferwatch.audit.sink.InMemoryAuditSink`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID


class ServedInstance(Protocol):
    """What a record takes from a validated request (``api.validation.ValidInstance``)."""

    @property
    def features(self) -> dict[str, Any]: ...
    @property
    def entity_type(self) -> str | None: ...
    @property
    def entity_id(self) -> str | None: ...
    @property
    def request_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One served prediction: one row of the ``predictions`` audit table."""

    prediction_id: UUID  # UUIDv7: unique and time-ordered
    ts: datetime  # UTC, when the prediction was served
    model_name: str
    model_version: str
    # the full, validated feature payload (the writer applies the privacy policy)
    features: dict[str, Any]
    prediction: int  # predicted class
    probability: float  # probability of the positive class
    latency_s: float  # inference latency (predict_proba), seconds
    trace_id: str  # 32 lowercase hex chars, "" when tracing is off
    span_id: str  # 16 lowercase hex chars, "" when tracing is off
    entity_type: str | None = None
    entity_id: str | None = None
    request_id: str | None = None  # the client-supplied request id, if any

    @classmethod
    def from_prediction(
        cls,
        *,
        prediction_id: UUID,
        ts: datetime,
        model_name: str,
        model_version: str,
        instance: ServedInstance,
        label: int,
        probability: float,
        latency_s: float,
        trace_id: str,
        span_id: str,
    ) -> PredictionRecord:
        """The record of one served prediction, from the pieces the route holds.

        On the request path: it builds the record and nothing else (no copy of the
        features, no other object).
        """
        return cls(
            prediction_id=prediction_id,
            ts=ts,
            model_name=model_name,
            model_version=model_version,
            features=instance.features,
            prediction=label,
            probability=probability,
            latency_s=latency_s,
            trace_id=trace_id,
            span_id=span_id,
            entity_type=instance.entity_type,
            entity_id=instance.entity_id,
            request_id=instance.request_id,
        )


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """A ground-truth label arriving later: one row of the ``outcomes`` table.

    Keyed by ``prediction_id``, or by (entity_type, entity_id) when the caller only
    knows its own entity; exactly one of the two keys is set.
    """

    label: int
    ts: datetime  # UTC, when the outcome was received
    prediction_id: UUID | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    observed_at: datetime | None = None  # when the truth happened, if the caller knows


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """A candidate model's prediction for a served one: one row of the ``replays`` table.

    Made by the shadow scorer (``inference/shadow.py``) for a live prediction, and by
    ``inferwatch replay`` for a logged one; ``replay_id`` names the run.
    """

    replay_id: str
    prediction_id: UUID  # the served prediction's id
    ts: datetime  # the served prediction's ts
    mode: str  # "shadow" | "replay"
    model_name: str  # the candidate's
    model_version: str
    prediction: int
    probability: float
    scored_at: datetime


AuditRecord = PredictionRecord | OutcomeRecord | ReplayRecord
