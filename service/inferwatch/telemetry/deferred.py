"""Request-path telemetry work handed to the SDK in batches, off the request path.

Why: one synchronous SDK measurement costs far more on the request path, right after
``predict_proba`` has evicted the CPU caches, than in a tight loop;
setting a span's attributes and ending it are the same story (docs/benchmarks.md has
the measurements). So a request only appends ``(call, a, b, c)`` to a deque:
its histogram records and counter increments (with the request's OTel context), the
route's prediction attributes on the server span, and the span's final name,
attributes and end (with the request's end time). A background thread runs the queue
every ``interval_s``, in order, in chunks between which it releases the GIL so a
waiting request is not held up; counter increments of one attribute set are summed.

What stays exact: every value and attribute set, every exemplar's trace and span id,
every span's start and end time. What moves: the metrics SDK stamps a measurement
(and its exemplar) when it is handed over, up to ``interval_s`` after the request;
a span reaches its processors (and the exporter) up to ``interval_s`` later. Every
metric reader sees every measurement made before it collects: an observable
counter's callback, which the SDK runs at the start of each collection, drains the
queue first (the periodic OTLP reader, the ``/metrics`` pull reader and the tests'
in-memory readers alike); shutdown drains before the providers flush. That counter,
``inferwatch.telemetry.deferred``, counts the items run and the items dropped (only
if the queue reaches ``max_pending``, i.e. the drain thread stopped keeping up).

``INFERWATCH_TELEMETRY_BATCH_MS=0`` builds none of this (``Telemetry.deferred`` is
``None``) and everything runs inline on the request thread, as the SDK does it.

Must never: block a request, lose an item silently, or run one twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.context import Context, get_current
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation
from opentelemetry.trace import Span
from opentelemetry.util.types import Attributes

from inferwatch.telemetry.instruments import (
    ATTR_OUTCOME,
    METRICS,
    TELEMETRY_DEFERRED,
)

log = logging.getLogger(__name__)

_Item = tuple[Callable[..., None], Any, Any, Any]
_HANDED: Attributes = {ATTR_OUTCOME: "recorded"}
_DROPPED: Attributes = {ATTR_OUTCOME: "dropped"}


class DeferredTelemetry:
    """The queue, its drain thread, and instrument wrappers that record into it."""

    def __init__(
        self,
        meter: Meter,
        interval_s: float,
        *,
        chunk: int = 32,
        max_pending: int = 100_000,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0; inline telemetry needs no queue")
        self.interval_s = interval_s
        self._chunk = chunk
        self._max_pending = max_pending
        self._q: deque[_Item] = deque()
        self._drain_lock = threading.Lock()  # one drainer at a time: no reordering games
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sum_methods: set[Callable[..., None]] = set()  # counters' add: summable
        self.recorded = 0
        self.dropped = 0
        meter.create_observable_counter(
            TELEMETRY_DEFERRED,
            callbacks=[self._observe],
            unit=METRICS[TELEMETRY_DEFERRED].unit,
            description="Request-path telemetry (measurements, span attributes and ends) "
            "run off the request path, by outcome (recorded, dropped).",
        )

    # -- the request path ----------------------------------------------------------------
    def histogram(self, instrument: Histogram) -> Histogram:
        return _DeferredHistogram(self, instrument)

    def counter(self, instrument: Counter) -> Counter:
        wrapped = _DeferredCounter(self, instrument)
        self._sum_methods.add(wrapped._add)
        return wrapped

    def put(self, fn: Callable[..., None], a: Any, b: Any, c: Any) -> None:
        """Queue ``fn(a, b, c)`` for the next drain (in order, except that counter
        increments are summed)."""
        q = self._q
        if len(q) >= self._max_pending:
            self.dropped += 1
            return
        q.append((fn, a, b, c))

    def end_span(
        self, span: Span, name: str | None, attributes: Attributes, end_time_ns: int
    ) -> None:
        """``update_name``, ``set_attributes`` and ``end`` of a finished request's span,
        at the drain; the end time is the request's. Until then the span is open."""
        self.put(_end_span, span, (name, attributes), end_time_ns)

    def set_span_attributes(self, span: Span, attributes: Attributes) -> None:
        self.put(_set_span_attributes, span, attributes, None)

    # -- the drain -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="telemetry-deferred", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.drain(yield_between_chunks=True)
            except Exception:  # the thread must outlive any one failure
                log.exception("handing measurements to the metrics SDK failed")

    def drain(self, *, yield_between_chunks: bool = False) -> int:
        """Run every queued item (measurements, span calls); returns how many.

        Counter increments with the same instrument and attribute set are summed into
        one ``add`` (a sum is a sum; its exemplar is the last request's): a third of the
        drain's SDK calls at one prediction per request."""
        q = self._q
        n = 0
        with self._drain_lock:
            sums: dict[tuple[Callable[..., None], int], list[Any]] = {}
            while q:
                for _ in range(self._chunk):
                    try:
                        method, value, attributes, context = q.popleft()
                    except IndexError:
                        break
                    n += 1
                    if method in self._sum_methods:
                        key = (method, id(attributes))  # the item keeps `attributes` alive
                        acc = sums.get(key)
                        if acc is None:
                            sums[key] = [value, attributes, context]
                        else:
                            acc[0] += value
                            acc[2] = context
                        continue
                    self._hand(method, value, attributes, context)
                if yield_between_chunks:
                    time.sleep(0)  # release the GIL: a request waiting for it runs now
            for (method, _), (value, attributes, context) in sums.items():
                self._hand(method, value, attributes, context)
            self.recorded += n
        return n

    @staticmethod
    def _hand(method: Callable[..., None], value: Any, attributes: Any, context: Any) -> None:
        try:
            method(value, attributes, context)
        except Exception:
            log.exception("a deferred measurement failed")

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        self.drain()  # the SDK runs this at the start of every collection
        return [Observation(self.recorded, _HANDED), Observation(self.dropped, _DROPPED)]

    def shutdown(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.drain()

    @property
    def pending(self) -> int:
        return len(self._q)


class _DeferredHistogram(Histogram):
    """A Histogram whose ``record`` queues; the SDK instrument records at the drain."""

    def __init__(self, owner: DeferredTelemetry, instrument: Histogram) -> None:
        self._put = owner.put
        self._record = instrument.record
        self.instrument = instrument

    def record(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        self._put(self._record, amount, attributes, context or get_current())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.instrument, name)


class _DeferredCounter(Counter):
    def __init__(self, owner: DeferredTelemetry, instrument: Counter) -> None:
        self._put = owner.put
        self._add = instrument.add
        self.instrument = instrument

    def add(
        self, amount: int | float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        self._put(self._add, amount, attributes, context or get_current())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.instrument, name)


def _end_span(span: Span, name_attributes: tuple[str | None, Attributes], end_time_ns: int) -> None:
    name, attributes = name_attributes
    if name is not None:
        span.update_name(name)
    if attributes:
        span.set_attributes(attributes)
    span.end(end_time_ns)


def _set_span_attributes(span: Span, attributes: Attributes, _: None) -> None:
    if attributes:
        span.set_attributes(attributes)
