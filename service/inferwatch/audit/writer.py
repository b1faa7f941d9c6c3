"""The audit writer: request path enqueues, a background thread COPYs to Postgres.

``submit`` (request threads) appends the record to a bounded in-memory deque and
returns. With the write-ahead journal on (the default, ``inferwatch.audit.journal``) it
first encodes the record and copies it into the journal's memory-mapped file (page
cache, no system call), so a record whose response was sent survives the process being
killed; without it, no I/O, no lock, no encoding. When the deque is full the record
is encoded and appended to the disk spool on the caller's thread (degraded mode: a
page-cache write, still no network), never dropped.

One background thread ("inferwatch-audit") does everything else:
- drains the deque in batches (``batch_size`` records, or whatever arrived within
  ``flush_interval_s``), applies the privacy policy, encodes each record once into
  binary COPY tuples (``inferwatch.audit.encoding``) and COPYs the batch in one
  transaction. Fresh records (never sent before; ids are UUIDv7 minted by this
  process) are COPYed straight into the table; anything that may have reached
  Postgres before (spool replays, retries, outcomes whose duplicates are normal)
  goes through a TEMP staging table and ``INSERT ... SELECT ... ON CONFLICT DO
  NOTHING``, so a prediction_id is never stored twice;
- when Postgres fails (down, slow, refused), spools the batch and backs off
  (exponential, capped) before trying again; a batch whose outcome is unknown is
  spooled too, and its replay is idempotent;
- when Postgres answers and the spool holds records, replays the spool segment by
  segment, oldest first, deleting a segment only once all of it is committed;
- every ``adopt_interval_s``, while Postgres answers, claims a slot of the spool that
  a dead process left behind and no process took over (``Spool.claim_orphan``: its
  ``flock``, so no two processes replay one slot) and replays it the same way, so a
  killed worker's records reach Postgres without anyone running ``inferwatch db replay``;
- a batch Postgres refuses for its data (class 22/23) is bisected down to the
  refused records, which go to the dead-letter file, counted as dropped and logged
  with their ids: one bad record never blocks the others;
- fsyncs the spool at most every flush interval.

``close(timeout_s)`` flushes the queue to Postgres while time remains, spools what
is left when the deadline passes, fsyncs and stops. ``start`` replays what the
previous process left in the spool (the first loop iterations do it).

Without a DSN (spool-only mode) batches go to the spool and stay there until a
process with a database replays them.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import psycopg
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from psycopg import errors as pgerrors
from psycopg_pool import ConnectionPool, PoolTimeout

from inferwatch.audit import encoding as enc
from inferwatch.audit.journal import Journal, JournalFile
from inferwatch.audit.privacy import PrivacyPolicy
from inferwatch.audit.records import AuditRecord, PredictionRecord
from inferwatch.audit.spool import Spool
from inferwatch.telemetry.instruments import (
    AUDIT_QUEUE_DEPTH,
    AUDIT_SPOOL_OLDEST_AGE,
    AUDIT_SPOOL_SIZE,
    METRICS,
    AuditInstruments,
)

log = logging.getLogger(__name__)

_TABLES: Final = {
    enc.KIND_PREDICTION: ("predictions", enc.PREDICTION_COLUMNS, enc.PREDICTION_TYPES),
    enc.KIND_OUTCOME: ("outcomes", enc.OUTCOME_COLUMNS, enc.OUTCOME_TYPES),
    enc.KIND_REPLAY: ("replays", enc.REPLAY_COLUMNS, enc.REPLAY_TYPES),
}
_STAGE: Final = {
    enc.KIND_PREDICTION: "audit_stage_predictions",
    enc.KIND_OUTCOME: "audit_stage_outcomes",
    enc.KIND_REPLAY: "audit_stage_replays",
}
# SQLSTATE classes that mean "this data", not "this server": bisect, don't retry.
_POISON: Final = (pgerrors.DataError, pgerrors.IntegrityError)
_BACKOFF_MIN_S: Final = 0.2
_BACKOFF_MAX_S: Final = 5.0
# A statement of the writer that runs longer than this is cancelled by Postgres (a table
# lock held, a server crawling): its batch goes to the durable spool instead of waiting in
# memory behind it, and InferwatchAuditSpoolGrowing sees the slowness. A batch COPY takes
# tens of milliseconds here (docs/benchmarks.md).
STATEMENT_TIMEOUT_S: Final = 5.0
_REPLAY_SEGMENTS_PER_TURN: Final = 1
# how often a writer looks for orphaned spool slots (a glob of the spool directory)
ADOPT_INTERVAL_S: Final = 5.0


def _copy_sql(table: str, columns: Sequence[str]) -> bytes:
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)".encode()


def configure_connection(conn: psycopg.Connection[Any]) -> None:
    """Per-connection setup: the TEMP staging tables of the idempotent path."""
    for kind, stage in _STAGE.items():
        _, cols, types = _TABLES[kind]
        coldefs = ", ".join(f"{c} {t}" for c, t in zip(cols, types, strict=True))
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} ({coldefs}) ON COMMIT DELETE ROWS")
    conn.commit()


class Journaled:
    """A record already encoded and in the journal: what the queue holds when the journal
    is on (the writer thread copies ``data`` as it is and acknowledges ``file``)."""

    __slots__ = ("data", "file", "kind")

    def __init__(self, kind: int, data: bytes, file: JournalFile | None) -> None:
        self.kind = kind
        self.data = data
        self.file = file


_Entry = AuditRecord | Journaled
_Acks = dict[JournalFile, int]


class DatabaseUnavailable(Exception):
    """Postgres could not take the batch now (down, slow, misconfigured)."""


class PostgresAuditWriter:
    """An ``AuditSink`` that stores records in Postgres, losslessly, off the request path."""

    def __init__(
        self,
        *,
        dsn: str | None,
        spool_dir: Path,
        meter: Meter,
        policy: PrivacyPolicy | None = None,
        queue_size: int = 50_000,
        batch_size: int = 2_000,
        flush_interval_s: float = 0.5,
        connect_timeout_s: float = 2.0,
        segment_bytes: int | None = None,
        copy_workers: int = 2,
        pool_factory: Callable[[str], ConnectionPool[Any]] | None = None,
        adopt_interval_s: float = ADOPT_INTERVAL_S,
        journal: bool = True,
    ) -> None:
        self._dsn = dsn
        self._policy = policy or PrivacyPolicy()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._pool_factory = pool_factory or self._default_pool
        self.spool = Spool(spool_dir) if segment_bytes is None else Spool(spool_dir, segment_bytes)
        self._journal_on = journal
        self._journal: Journal | None = None  # opened by start(), in the spool's slot
        self._q: collections.deque[_Entry] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._pool: ConnectionPool[Any] | None = None
        # batches handed to the COPY workers and not yet committed or spooled
        self._inflight: dict[int, list[_Entry]] = {}
        self._batch_seq = 0
        self._copy_workers = max(1, copy_workers)
        self._slots = threading.BoundedSemaphore(self._copy_workers)
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._retry_at = 0.0
        self._backoff_s = _BACKOFF_MIN_S
        self._adopt_interval_s = adopt_interval_s
        self._next_adopt = 0.0
        self._ins = AuditInstruments.create(meter)
        meter.create_observable_gauge(
            AUDIT_QUEUE_DEPTH,
            [self._observe_queue],
            unit=METRICS[AUDIT_QUEUE_DEPTH].unit,
            description="Audit records waiting in the in-memory queue.",
        )
        meter.create_observable_gauge(
            AUDIT_SPOOL_SIZE,
            [self._observe_spool],
            unit=METRICS[AUDIT_SPOOL_SIZE].unit,
            description="Audit records in the disk spool, not yet in Postgres.",
        )
        meter.create_observable_gauge(
            AUDIT_SPOOL_OLDEST_AGE,
            [self._observe_age],
            unit=METRICS[AUDIT_SPOOL_OLDEST_AGE].unit,
            description="Age of the oldest record in the disk spool (0 when empty).",
        )

    # --- AuditSink ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self.spool.open()
        if self._journal_on:
            assert self.spool.slot is not None
            self._journal = Journal(self.spool.slot)
            self._journal.roll()  # its first file ready before the first request
        if self._dsn is not None:
            self._pool = self._pool_factory(self._dsn)
            self._executor = ThreadPoolExecutor(
                self._copy_workers, thread_name_prefix="inferwatch-audit-copy"
            )
        self._thread = threading.Thread(target=self._run, name="inferwatch-audit", daemon=True)
        self._thread.start()

    def submit(self, record: AuditRecord) -> None:
        try:
            q = self._q
            if len(q) < self._queue_size and not self._closed:
                if self._journal is not None:
                    q.extend(self._journaled([record], self._journal))
                else:
                    q.append(record)
                if len(q) >= self._batch_size:
                    self._wake.set()
                return
            self._ins.enqueued.add(1)
            self._spool_records([record])
        except Exception:  # never reaches the request
            self._drop([record], "submit failed")

    def submit_many(self, records: Sequence[AuditRecord]) -> None:
        """``submit`` for the records of one request: one journal write for all of them."""
        if self._journal is None or len(records) < 2:
            for r in records:
                self.submit(r)
            return
        try:
            q = self._q
            if len(q) + len(records) <= self._queue_size and not self._closed:
                q.extend(self._journaled(records, self._journal))
                if len(q) >= self._batch_size:
                    self._wake.set()
                return
            self._ins.enqueued.add(len(records))
            self._spool_records(list(records))
        except Exception:  # never reaches the request
            self._drop(list(records), "submit failed")

    def _journaled(self, records: Sequence[AuditRecord], journal: Journal) -> list[Journaled]:
        """Encode on the caller's thread and append to the journal: one frame per kind."""
        if len(records) == 1 and type(records[0]) is PredictionRecord:  # /predict's case
            data, dirty = enc.prediction_tuple(records[0], self._policy)
            if not dirty:
                kind = enc.KIND_PREDICTION
                return [Journaled(kind, data, journal.append(kind, [data]))]
        by_kind = self._encode(records)
        out: list[Journaled] = []
        for kind, items in by_kind.items():
            jf = journal.append(kind, items)
            out.extend(Journaled(kind, data, jf) for data in items)
        return out

    def close(self, timeout_s: float) -> None:
        if self._closed:
            return
        self._deadline = time.monotonic() + timeout_s
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.0, timeout_s) + 0.5)
            if self._thread.is_alive():
                # the writer is stuck in Postgres: keep its batch and the queue on disk
                # (replays are idempotent if the stuck batch commits after all); the stuck
                # batch stays unacknowledged in the journal too, replayed at the next start
                log.warning("audit writer did not stop in %.1fs; spooling what is left", timeout_s)
                for batch in list(self._inflight.values()):
                    self._spool_records(batch)
                self._spool_settle(self._take_all())
        else:
            with contextlib.suppress(OSError):
                self.spool.open()
            self._spool_settle(self._take_all())
        with contextlib.suppress(OSError):
            self.spool.sync()
        if self._journal is not None:
            with contextlib.suppress(OSError):
                self._journal.close()
        self.spool.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            self._pool.close(timeout=1.0)

    # --- the background thread ----------------------------------------------------------
    def _run(self) -> None:
        next_sync = time.monotonic() + self._flush_interval_s
        while True:
            try:
                if not self._stop.is_set() and len(self._q) < self._batch_size:
                    self._wake.wait(self._idle_wait())
                    self._wake.clear()
                while self._q:
                    self._handle_batch(self._take(self._batch_size))
                if self._stop.is_set():
                    self._wait_workers()
                    break
                self._maybe_replay()
                self._maybe_adopt()
                now = time.monotonic()
                if now >= next_sync:
                    next_sync = now + self._flush_interval_s
                    if self._journal is not None:
                        self._journal.roll()
                    self.spool.sync()
                    if self.spool.should_roll():
                        self.spool.seal()
            except Exception:
                log.exception("audit writer loop error (continuing)")
                time.sleep(0.05)

    def _idle_wait(self) -> float:
        if self.spool.pending_records and self._pool is not None:
            return max(0.01, min(self._flush_interval_s, self._retry_at - time.monotonic()))
        return self._flush_interval_s

    def _take(self, n: int) -> list[_Entry]:
        out: list[_Entry] = []
        q = self._q
        with contextlib.suppress(IndexError):
            for _ in range(n):
                out.append(q.popleft())
        return out

    def _take_all(self) -> list[_Entry]:
        return self._take(len(self._q) + 1_000_000)

    def _handle_batch(self, batch: list[_Entry]) -> None:
        """Encode on this thread, COPY on a worker: encoding overlaps the server's work."""
        if not batch:
            return
        self._ins.enqueued.add(len(batch))
        if self._pool is None or self._executor is None or not self._db_may_work():
            self._spool_settle(batch)
            return
        self._slots.acquire()  # at most copy_workers batches in flight: back-pressure
        self._batch_seq += 1
        seq = self._batch_seq
        self._inflight[seq] = batch
        try:
            by_kind = self._encode(batch)
            self._executor.submit(self._commit_batch, seq, by_kind, _acks(batch))
        except BaseException:
            self._inflight.pop(seq, None)
            self._slots.release()
            raise

    def _commit_batch(self, seq: int, by_kind: dict[int, list[bytes]], acks: _Acks) -> None:
        """On a COPY worker: one batch into Postgres, or into the spool if it cannot."""
        try:
            t0 = time.perf_counter()
            n = sum(len(items) for items in by_kind.values())
            try:
                for kind, items in by_kind.items():
                    fresh = kind == enc.KIND_PREDICTION
                    self._write(kind, items, idempotent=not fresh)
            except DatabaseUnavailable as exc:
                self._db_failed(exc)
                for kind, items in by_kind.items():
                    self._spool_encoded(kind, items)
                return
            self._db_ok()
            self._ins.batch_duration.record(time.perf_counter() - t0)
            self._ins.written.add(n)
        except Exception:
            log.exception("audit COPY worker error; spooling its batch")
            for kind, items in by_kind.items():
                self._spool_encoded(kind, items)
        finally:
            self._inflight.pop(seq, None)
            self._slots.release()
            self._settle(acks)

    def _wait_workers(self) -> None:
        for _ in range(self._copy_workers):
            self._slots.acquire()
        for _ in range(self._copy_workers):
            self._slots.release()

    def _maybe_replay(self) -> None:
        if self._pool is None or not self.spool.pending_records or not self._db_may_work():
            return
        segments = self.spool.sealed_segments()
        if not segments and self.spool.active_has_records():
            self.spool.seal()
            segments = self.spool.sealed_segments()
        for path in segments[:_REPLAY_SEGMENTS_PER_TURN]:
            frames = self.spool.read(path)
            t0 = time.perf_counter()
            try:
                for fr in frames:
                    self._write(fr.kind, enc.split_tuples(fr.payload), idempotent=True)
            except DatabaseUnavailable as exc:
                self._db_failed(exc)
                return
            self._db_ok()
            self.spool.remove(path)
            n = sum(fr.nrows for fr in frames)
            self._ins.replayed.add(n)
            self._ins.written.add(n)
            self._ins.batch_duration.record(time.perf_counter() - t0)
            log.info("audit spool: replayed %d records from %s", n, path.name)

    def _maybe_adopt(self) -> None:
        """Replay one orphaned slot (another process's, dead), if there is one."""
        now = time.monotonic()
        if self._pool is None or now < self._next_adopt or not self._db_may_work():
            return
        self._next_adopt = now + self._adopt_interval_s
        orphan = self.spool.claim_orphan()
        if orphan is None:
            return
        try:
            for path in orphan.segments():
                frames = orphan.read(path)
                try:
                    for fr in frames:
                        self._write(fr.kind, enc.split_tuples(fr.payload), idempotent=True)
                except DatabaseUnavailable as exc:
                    self._db_failed(exc)
                    return
                self._db_ok()
                orphan.remove(path)
                n = sum(fr.nrows for fr in frames)
                self._ins.replayed.add(n)
                self._ins.written.add(n)
                log.info(
                    "audit spool: adopted %s of a dead process: replayed %d records from %s",
                    orphan.slot.name,
                    n,
                    path.name,
                )
        finally:
            orphan.release()

    # --- Postgres -----------------------------------------------------------------------
    def _default_pool(self, dsn: str) -> ConnectionPool[Any]:
        pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=self._copy_workers,
            max_size=self._copy_workers,
            open=False,
            name="inferwatch-audit",
            kwargs={
                "connect_timeout": max(1, int(self._connect_timeout_s)),
                "application_name": "inferwatch-audit",
                "options": f"-c statement_timeout={int(STATEMENT_TIMEOUT_S * 1000)}",
            },
            configure=configure_connection,
            check=ConnectionPool.check_connection,
            timeout=self._connect_timeout_s,
            reconnect_timeout=3600.0 * 24 * 365,
        )
        pool.open(wait=False)
        return pool

    def _write(self, kind: int, tuples: list[bytes], *, idempotent: bool) -> None:
        """Store tuples in one transaction; bisects data errors. Raises DatabaseUnavailable."""
        if not tuples:
            return
        for start in range(0, len(tuples), self._batch_size):
            chunk = tuples[start : start + self._batch_size]
            try:
                self._copy(kind, chunk, idempotent=idempotent)
            except pgerrors.UniqueViolation as exc:
                if idempotent:  # cannot happen with ON CONFLICT DO NOTHING; never loop
                    self._dead_letter(kind, chunk, exc)
                else:  # a re-sent id in a fresh batch: skip it, keep the rest
                    self._write(kind, chunk, idempotent=True)
            except _POISON as exc:
                if len(chunk) == 1:
                    self._dead_letter(kind, chunk, exc)
                else:
                    mid = len(chunk) // 2
                    self._write(kind, chunk[:mid], idempotent=idempotent)
                    self._write(kind, chunk[mid:], idempotent=idempotent)

    def _copy(self, kind: int, tuples: list[bytes], *, idempotent: bool) -> None:
        assert self._pool is not None
        table, columns, _ = _TABLES[kind]
        timeout = self._connect_timeout_s
        if self._stop.is_set():
            timeout = min(timeout, self._deadline - time.monotonic())
            if timeout <= 0:
                raise DatabaseUnavailable("shutdown deadline passed")
        try:
            with self._pool.connection(timeout=timeout) as conn:
                target = _STAGE[kind] if idempotent else table
                with conn.cursor() as cur:
                    with cur.copy(_copy_sql(target, columns)) as copy:
                        copy.write(enc.copy_stream(tuples))
                    if idempotent:
                        cur.execute(
                            f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
                            f"SELECT {', '.join(columns)} FROM {_STAGE[kind]} "
                            "ON CONFLICT DO NOTHING"
                        )
        except _POISON:
            raise
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _db_may_work(self) -> bool:
        return time.monotonic() >= self._retry_at

    def _db_failed(self, exc: Exception) -> None:
        log.warning(
            "audit writer: Postgres unavailable (%s); spooling, retry in %.1fs",
            exc,
            self._backoff_s,
        )
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)

    def _db_ok(self) -> None:
        self._backoff_s = _BACKOFF_MIN_S
        self._retry_at = 0.0

    # --- spool and drops ----------------------------------------------------------------
    def _encode(self, batch: Iterable[_Entry]) -> dict[int, list[bytes]]:
        """COPY tuples by kind. The per-record loop of the writer: kept lean."""
        preds: list[bytes] = []
        out: dict[int, list[bytes]] = {enc.KIND_PREDICTION: preds}
        policy, prediction_tuple = self._policy, enc.prediction_tuple
        for r in batch:
            if isinstance(r, Journaled):  # encoded by submit
                if r.kind == enc.KIND_PREDICTION:
                    preds.append(r.data)
                else:
                    out.setdefault(r.kind, []).append(r.data)
                continue
            try:
                if type(r) is PredictionRecord:
                    data, dirty = prediction_tuple(r, policy)
                    kind = enc.KIND_PREDICTION
                else:
                    e = enc.encode(r, policy)
                    data, dirty, kind = e.data, e.sanitized, e.kind
            except Exception as exc:  # a record no encoding can store (e.g. class out of int16)
                self._drop([r], f"unencodable: {type(exc).__name__}: {exc}")
                continue
            if dirty:
                key = enc.tuple_key(kind, data)
                log.warning("audit record %s had values Postgres cannot store; replaced", key)
            if kind == enc.KIND_PREDICTION:
                preds.append(data)
            else:
                out.setdefault(kind, []).append(data)
        return {kind: items for kind, items in out.items() if items}

    def _spool_records(self, records: list[_Entry]) -> None:
        if records:
            for kind, items in self._encode(records).items():
                self._spool_encoded(kind, items)

    def _spool_settle(self, entries: list[_Entry]) -> None:
        """Spool entries the writer took (stored or dropped and logged: settled)."""
        try:
            self._spool_records(entries)
        finally:
            self._settle(_acks(entries))

    def _settle(self, acks: _Acks) -> None:
        if acks and self._journal is not None:
            try:
                self._journal.ack(acks)
            except Exception:  # a journal file left behind is replayed idempotently
                log.exception("audit journal acknowledgement failed")

    def _spool_encoded(self, kind: int, items: list[bytes]) -> None:
        try:
            self.spool.append(kind, items)
        except Exception as exc:
            for data in items:
                key = enc.tuple_key(kind, data)
                log.error("audit record %s dropped: spool unwritable (%s)", key, exc)
            self._ins.dropped.add(len(items))
            return
        self._ins.spooled.add(len(items))

    def _dead_letter(self, kind: int, tuples: list[bytes], exc: Exception) -> None:
        key = enc.tuple_key(kind, tuples[0])
        log.error("audit record %s refused by Postgres (%s); dead-lettered", key, exc)
        with contextlib.suppress(Exception):
            self.spool.dead_letter(kind, tuples)
        self._ins.dropped.add(len(tuples))

    def _drop(self, records: Sequence[_Entry], why: str) -> None:
        for r in records:
            key = enc.tuple_key(r.kind, r.data) if isinstance(r, Journaled) else r.prediction_id
            log.error("audit record %s dropped: %s", key, why)
        self._ins.dropped.add(len(records))

    # --- gauges -------------------------------------------------------------------------
    def _observe_queue(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(len(self._q))]

    def _observe_spool(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.spool.pending_records)]

    def _observe_age(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.spool.oldest_age_s())]

    # --- for tests and the benchmark ----------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._q)

    def wait_idle(self, timeout_s: float) -> bool:
        """Poll until the queue and the spool are empty (tests, benchmark)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._q and not self._inflight and not self.spool.pending_records:
                return True
            self._wake.set()
            time.sleep(0.01)
        return False


def _acks(entries: Iterable[_Entry]) -> _Acks:
    """Journal records per journal file among ``entries``."""
    out: _Acks = {}
    for e in entries:
        if type(e) is Journaled and e.file is not None:
            out[e.file] = out.get(e.file, 0) + 1
    return out
