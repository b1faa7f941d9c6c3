"""Shadow scoring: a candidate model scores a fraction of live traffic off the request path.

The route hands each served prediction to :meth:`ShadowScorer.offer` after it has built
its response: O(µs), never blocks, never raises. A sampled row joins the shadow's own
:class:`~inferwatch.inference.batcher.MicroBatcher` (the same batching code as the served
model, with its own bounded queue and its own model thread, so a slow or failing
candidate never holds up the served model's batches); when the queue is full the row is
dropped and counted, never waited for. Each scored row becomes a
:class:`~inferwatch.audit.records.ReplayRecord` under the live prediction id, handed to
the process's audit writer (lossless, batched COPY into ``replays``).

The candidate sees exactly what the served model saw: the same validated payload, encoded
by the candidate's own ``RowEncoder``. Its feature schema must accept every payload the
served schema accepts (checked when it is loaded), or no row could be scored.

Sampling is deterministic: with fraction f, a running credit grows by f per prediction
and a row is taken each time it reaches 1 (f=0.25: every fourth prediction).

Counted (``inferwatch.shadow.predictions``, by outcome): ``scored``, ``dropped`` (full
queue, or queued at shutdown), ``failed`` (the candidate raised on the row's batch).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any
from uuid import UUID

from opentelemetry.metrics import Counter, Meter

from inferwatch.audit.records import ReplayRecord
from inferwatch.audit.sink import AuditSink
from inferwatch.inference.batcher import (
    BatchResult,
    BatchTelemetry,
    MicroBatcher,
    Overloaded,
    Stopped,
)
from inferwatch.inference.predictor import Predictor
from inferwatch.inference.schema import FeatureSchema
from inferwatch.telemetry import instruments as names

log = logging.getLogger(__name__)

MODE_SHADOW = "shadow"
# at shutdown, how long queued shadow rows may still be scored (the audit writer's own
# flush comes after, bounded by INFERWATCH_AUDIT_SHUTDOWN_TIMEOUT_S)
DRAIN_S = 1.0
# A shadow batch waits up to this long to fill: nobody waits on a shadow row, and one
# predict_proba call costs about as much for dozens of rows as for one (bench.model), so
# fuller, rarer calls take the least CPU and GIL time from the served requests.
FILL_WAIT_S = 0.05


class ShadowConfigError(ValueError):
    """The candidate cannot score the served model's payloads."""


def check_compatible(served: FeatureSchema, candidate: FeatureSchema) -> None:
    """Raise unless every payload valid for ``served`` can be encoded for ``candidate``."""
    have = served.by_name()
    problems = []
    for f in candidate.features:
        s = have.get(f.name)
        if s is None:
            problems.append(f"{f.name}: not in the served model's payloads")
        elif s.type != f.type:
            problems.append(f"{f.name}: {s.type} served, {f.type} expected")
        elif f.type == "category" and not set(s.categories or ()) <= set(f.categories or ()):
            extra = sorted(set(s.categories or ()) - set(f.categories or ()))
            problems.append(f"{f.name}: categories {extra} unknown to the candidate")
    if problems:
        raise ShadowConfigError(
            "the shadow model cannot score live payloads: " + "; ".join(problems)
        )


def shadow_replay_id(predictor: Predictor) -> str:
    """The replay id of a model's shadow run: one per candidate name and version."""
    meta = predictor.metadata
    return f"shadow-{meta.name}-{meta.version}"


def shadow_counter(meter: Meter) -> Counter:
    """The shadow's one instrument (created once per scorer)."""
    return meter.create_counter(
        names.SHADOW_PREDICTIONS,
        unit=names.METRICS[names.SHADOW_PREDICTIONS].unit,
        description="Live predictions offered to the shadow model, by outcome: scored, "
        "dropped (its queue was full, or it was stopping) or failed (it raised).",
    )


class ShadowScorer:
    def __init__(
        self,
        predictor: Predictor,
        sink: AuditSink,
        meter: Meter,
        *,
        fraction: float,
        max_queue: int,
        max_batch_size: int,
        replay_id: str | None = None,
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be within [0, 1]")
        self.predictor = predictor
        self.fraction = fraction
        self.replay_id = replay_id or shadow_replay_id(predictor)
        self._sink = sink
        self._credit = 0.0
        self._outstanding = 0  # queued or computing
        meta = predictor.metadata
        self._name, self._version = meta.name, meta.version
        base = {names.ATTR_MODEL_NAME: meta.name, names.ATTR_MODEL_VERSION: meta.version}
        self._attrs = {o: {**base, names.ATTR_OUTCOME: o} for o in ("scored", "dropped", "failed")}
        self._counter = shadow_counter(meter)
        # no spans, no batch histograms: those describe the served model's path
        self._batcher = MicroBatcher(
            predictor.predict,
            BatchTelemetry(None, None, None, {}, {}, {}),
            max_batch_size=max_batch_size,
            max_wait_s=FILL_WAIT_S,
            max_queue=max_queue,
            wait_when_alone=True,
        )

    @property
    def depth(self) -> int:
        return self._batcher.depth

    def start(self) -> None:
        """Start the shadow's consumer on the running loop (the app lifespan)."""
        self._batcher.start()

    async def stop(self, drain_s: float = DRAIN_S) -> None:
        """Let queued rows finish for up to ``drain_s``, then stop; the rest count as dropped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while self._outstanding and loop.time() < deadline:
            await asyncio.sleep(0.005)
        await self._batcher.stop()
        await asyncio.sleep(0)  # let the done callbacks of the failed futures run

    def offer(self, prediction_id: UUID, ts: datetime, features: Mapping[str, Any]) -> None:
        """Hand over one served prediction (on the event loop). Never blocks or raises."""
        credit = self._credit + self.fraction
        if credit < 1.0:
            self._credit = credit
            return
        self._credit = credit - 1.0
        try:
            future = self._batcher.enqueue(features, None)
        except (Overloaded, Stopped):
            self._counter.add(1, self._attrs["dropped"])
            return
        except Exception:  # never reaches the request
            log.exception("shadow: could not queue prediction %s", prediction_id)
            self._counter.add(1, self._attrs["failed"])
            return
        self._outstanding += 1
        future.add_done_callback(partial(self._done, prediction_id, ts))

    def _done(self, prediction_id: UUID, ts: datetime, future: asyncio.Future[BatchResult]) -> None:
        self._outstanding -= 1
        try:
            if future.cancelled():
                self._counter.add(1, self._attrs["dropped"])
                return
            exc = future.exception()
            if exc is not None:
                self._counter.add(
                    1, self._attrs["dropped" if isinstance(exc, Stopped) else "failed"]
                )
                return
            pred = future.result().prediction
            self._sink.submit(
                ReplayRecord(
                    replay_id=self.replay_id,
                    prediction_id=prediction_id,
                    ts=ts,
                    mode=MODE_SHADOW,
                    model_name=self._name,
                    model_version=self._version,
                    prediction=pred.label,
                    probability=pred.probability,
                    scored_at=datetime.now(UTC),
                )
            )
            self._counter.add(1, self._attrs["scored"])
        except Exception:  # a callback must not raise into the loop
            log.exception("shadow: could not record prediction %s", prediction_id)
