"""The audit records: what the request path hands to the audit writer.

Pure data, built on the request path in O(µs). Nothing here does I/O. The writer
(``inferwatch.audit.writer``) serialises, batches, spools and COPYs these; the API
tests use :class:`inferwatch.audit.sink.InMemoryAuditSink`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID


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


AuditRecord = PredictionRecord | OutcomeRecord
