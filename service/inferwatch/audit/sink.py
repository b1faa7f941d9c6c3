"""The seam between the request path and audit storage.

``AuditSink`` is the role the API depends on. ``submit`` must never block or raise,
and does no I/O on the caller's thread but one page-cache write: the Postgres writer
journals and enqueues (and spools when its queue is full); the in-memory sink appends
to a list for tests.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from inferwatch.audit.records import AuditRecord, OutcomeRecord, PredictionRecord


@runtime_checkable
class AuditSink(Protocol):
    def start(self) -> None:
        """Start background work (called from the app lifespan, once per process)."""

    def submit(self, record: AuditRecord) -> None:
        """Hand one record over. O(µs), never blocks, never raises."""

    def submit_many(self, records: Sequence[AuditRecord]) -> None:
        """``submit`` for the records of one request (one journal write for all)."""

    def close(self, timeout_s: float) -> None:
        """Flush what is pending (bounded by ``timeout_s``) and stop."""


class InMemoryAuditSink:
    """Keeps every submitted record in memory; for tests and for the no-database demo."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[AuditRecord] = []
        self.started = False
        self.closed = False

    def start(self) -> None:
        self.started = True

    def submit(self, record: AuditRecord) -> None:
        with self._lock:
            self.records.append(record)

    def submit_many(self, records: Sequence[AuditRecord]) -> None:
        with self._lock:
            self.records.extend(records)

    def close(self, timeout_s: float) -> None:
        self.closed = True

    @property
    def predictions(self) -> list[PredictionRecord]:
        with self._lock:
            return [r for r in self.records if isinstance(r, PredictionRecord)]

    @property
    def outcomes(self) -> list[OutcomeRecord]:
        with self._lock:
            return [r for r in self.records if isinstance(r, OutcomeRecord)]
