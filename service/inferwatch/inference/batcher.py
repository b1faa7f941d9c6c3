"""Adaptive micro-batching: concurrent requests share one ``predict_proba`` call.

A single-row ``predict_proba`` costs about as much as dozens of rows in one call
(docs/benchmarks.md, bench.model), so serving one call per request throws most of the
CPU away under load. Requests join a bounded queue; one consumer task takes what is
queued (up to ``max_batch_size``) and runs the model on it in a dedicated thread, so
the event loop never waits on the model and keeps parsing, validating and answering
while a batch computes. Requests that arrive during a computation form the next batch:
the batch size follows the load by itself.

Adaptive wait: a request that finds the model idle and the previous batch single is
served at once (no waiting for company when there is none). Only when the previous
batch held more than one request (there is concurrency) does the consumer wait up to
``max_wait_s`` for the batch to fill before it starts the model.

Per batch, in the model thread: one INTERNAL span with a link to the SERVER span of
every request it served (OpenTelemetry's way to model batches: links, not fake
children), and the batch's size and compute time as histograms. Per request, the
caller records what the request experienced (``BatchResult``: queueing and compute).

A model call that raises fails only the requests of that batch (they get the
exception), and the consumer carries on with the next batch. When the queue is full
:meth:`MicroBatcher.predict` raises :class:`Overloaded` at once: bounded latency by
shedding load, never an unbounded queue.

Must never: run the model on the event loop, wait when alone, lose a request
(every queued future is resolved: result, exception, or :class:`Stopped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter
from typing import Any, TypeVar

from opentelemetry.context import Context
from opentelemetry.metrics import Histogram
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, Tracer
from opentelemetry.util.types import Attributes

from inferwatch.inference.predictor import Prediction
from inferwatch.telemetry.instruments import ATTR_BATCH_SIZE

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_SPAN_NAME = "inferwatch.batch predict_proba"


class Overloaded(Exception):
    """The queue is full: the request is shed (503 with Retry-After)."""


class Stopped(Exception):
    """The batcher stopped (shutdown) before the request was served."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    prediction: Prediction
    queued_s: float  # from joining the queue to its batch's start
    compute_s: float  # its batch's predict_proba
    batch_size: int


@dataclass(frozen=True, slots=True)
class BatchTelemetry:
    """What the model thread records per batch; ``tracer=None``: telemetry off."""

    tracer: Tracer | None
    size: Histogram | None
    duration: Histogram | None
    ok_attrs: Attributes
    error_attrs: Attributes
    span_attrs: Mapping[str, Any]


class _Item:
    __slots__ = ("enqueued", "future", "link", "payload")

    def __init__(
        self,
        payload: Mapping[str, Any],
        link: SpanContext | None,
        future: asyncio.Future[BatchResult],
    ) -> None:
        self.payload = payload
        self.link = link
        self.future = future
        self.enqueued = perf_counter()


class MicroBatcher:
    """The queue, its consumer task and the model thread. Built and started per process."""

    def __init__(
        self,
        predict: Callable[[Sequence[Mapping[str, Any]]], list[Prediction]],
        telemetry: BatchTelemetry,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        wait_when_alone: bool = False,
    ) -> None:
        """``wait_when_alone``: always wait up to ``max_wait_s`` for a batch to fill, even
        after a batch of one (for work nobody waits on, e.g. shadow scoring: fewer, fuller
        model calls cost the process less CPU)."""
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_s >= 0")
        self._predict = predict
        self._tel = telemetry
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.wait_when_alone = wait_when_alone
        self._queue: deque[_Item] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # one thread: the model is CPU-bound and holds the GIL; more threads would only
        # interleave batches, never speed them up (inference_threads sets BLAS threads)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inferwatch-model")
        self._last_batch = 1
        self._stopped = False

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not counting the one computing)."""
        return len(self._queue)

    def start(self) -> None:
        """Start the consumer on the running loop (the app lifespan calls this)."""
        self._loop = loop = asyncio.get_running_loop()
        self._arrived = arrived = asyncio.Event()
        self._task = loop.create_task(self._consume(loop, arrived), name="inferwatch-batcher")

    async def predict(self, payload: Mapping[str, Any], link: SpanContext | None) -> BatchResult:
        """Queue one request's features; resolves with its prediction, or raises.

        ``link``: the request's span context, linked from the batch span.
        Raises :class:`Overloaded` (queue full), :class:`Stopped`, or the model's exception.
        """
        return await self.enqueue(payload, link)

    def enqueue(
        self, payload: Mapping[str, Any], link: SpanContext | None
    ) -> asyncio.Future[BatchResult]:
        """Queue one request's features without waiting (on the loop's thread): the future
        resolves as :meth:`predict` does. Raises :class:`Overloaded` or :class:`Stopped` at
        once. The shadow scorer uses it (fire and forget, a done callback per row)."""
        if self._stopped or self._loop is None or self._arrived is None:
            raise Stopped("the batcher is not running")
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"{len(self._queue)} requests already queued")
        future: asyncio.Future[BatchResult] = self._loop.create_future()
        self._queue.append(_Item(payload, link, future))
        self._arrived.set()
        return future

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a whole batch request's model call) in the model thread."""
        if self._loop is None:
            raise Stopped("the batcher is not running")
        return await self._loop.run_in_executor(self._executor, fn)

    async def _consume(self, loop: asyncio.AbstractEventLoop, arrived: asyncio.Event) -> None:
        queue = self._queue
        while True:
            if not queue:
                arrived.clear()
                await arrived.wait()
            busy = self._last_batch > 1 or self.wait_when_alone
            if self.max_wait_s > 0 and busy and len(queue) < self.max_batch_size:
                await self._fill(loop, arrived, loop.time() + self.max_wait_s)
            n = min(len(queue), self.max_batch_size)
            batch = [queue.popleft() for _ in range(n)]
            self._last_batch = n
            try:
                preds, started, compute_s = await loop.run_in_executor(
                    self._executor, self._compute, batch
                )
            except asyncio.CancelledError:  # stop() while this batch computes
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(Stopped("the service is shutting down"))
                raise
            except Exception as exc:  # the model raised: this batch's requests fail, only
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, pred in zip(batch, preds, strict=True):
                if not item.future.done():  # a client that went away cancelled its future
                    item.future.set_result(BatchResult(pred, started - item.enqueued, compute_s, n))

    async def _fill(
        self, loop: asyncio.AbstractEventLoop, arrived: asyncio.Event, deadline: float
    ) -> None:
        """Wait until the queue holds a full batch or the deadline passes."""
        while len(self._queue) < self.max_batch_size:
            left = deadline - loop.time()
            if left <= 0:
                return
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), left)
            except TimeoutError:
                return

    def _compute(self, batch: list[_Item]) -> tuple[list[Prediction], float, float]:
        """In the model thread: one predict_proba for the batch, its span and metrics."""
        tel = self._tel
        span = None
        if tel.tracer is not None:
            links = [Link(i.link) for i in batch if i.link is not None and i.link.is_valid]
            span = tel.tracer.start_span(
                BATCH_SPAN_NAME,
                context=Context(),  # a root: the batch belongs to no single request's trace
                kind=SpanKind.INTERNAL,
                links=links,
                attributes={**tel.span_attrs, ATTR_BATCH_SIZE: len(batch)},
            )
        started = perf_counter()
        try:
            preds = self._predict([i.payload for i in batch])
        except Exception as exc:
            compute_s = perf_counter() - started
            if tel.duration is not None:
                tel.duration.record(compute_s, tel.error_attrs)
            if span is not None:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, type(exc).__qualname__)
                span.end()
            log.exception("the model failed on a batch of %d", len(batch))
            raise
        compute_s = perf_counter() - started
        if tel.size is not None:
            tel.size.record(len(batch), tel.ok_attrs)
        if tel.duration is not None:
            tel.duration.record(compute_s, tel.ok_attrs)
        if span is not None:
            span.end()
        return preds, started, compute_s

    async def stop(self) -> None:
        """Stop taking requests, fail what is queued with :class:`Stopped`, end the thread."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(Stopped("the service is shutting down"))
        self._executor.shutdown(wait=True, cancel_futures=True)
