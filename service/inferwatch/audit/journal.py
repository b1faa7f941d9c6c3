"""The audit write-ahead journal: every record on disk before its response is sent.

The writer holds records in memory for up to a flush interval, and while Postgres is
retried its in-flight batches wait for a connection; a process killed then (SIGKILL, the
OOM killer, a crash of the interpreter) would lose records whose clients were told
"200". With the journal on (``INFERWATCH_AUDIT_JOURNAL``, the default), ``submit``
encodes the record on the caller's thread and copies it, as one spool frame, into the
active ``wal-<sequence>.log`` file of the process's spool slot before returning. The file
is memory-mapped (``MAP_SHARED``): the copy lands in the kernel's page cache, which
outlives the process, without a system call and without releasing the GIL (a
``write(2)`` per request measured +9.9 µs at P50 and +57 µs at P99 per submit, most of it
waiting to take the GIL back; docs/benchmarks.md). Files are preallocated
(``posix_fallocate``), so a full disk fails the file's creation, never a copy into it
(a write fault on an unbacked page would be SIGBUS), and the writer thread keeps the next
file ready so that a request never creates one unless a file fills within one interval.
The writer thread then takes the already-encoded tuple from its queue (it encodes nothing
twice) and acknowledges each record once its fate is settled: committed in Postgres,
appended to the spool, or dropped and logged. Every flush interval the writer rolls the
active file (truncated to what was written, unmapped); a rolled file whose records are
all acknowledged is deleted, one with records still outstanding is msynced first (so a
machine crash, not only a killed process, loses at most what arrived within the last
flush interval) and deleted by its last acknowledgement.

Nothing is ever read back by the live process. A process that starts on a slot, or a
live process that adopts a dead process's slot (``Spool.claim_orphan``), finds the dead
owner's journal files beside its spool segments and replays them through the idempotent
path (``INSERT ... ON CONFLICT DO NOTHING``): records that had reached Postgres or the
spool are stored once.

A journal file that cannot be created (its disk full) never fails the request: the
record is queued without a journal entry, as it would be with the journal off, and a
warning says how many were not journaled.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from inferwatch.audit.spool import JOURNAL_PREFIX, encode_frame

log = logging.getLogger(__name__)

FILE_BYTES: Final = 4 * 1024 * 1024  # one file's preallocated size (~6,000 predictions)
_WARN_EVERY_S: Final = 10.0


class JournalFile:
    """One ``wal-*.log`` file, mapped: how far it is written and how many of its records
    are not yet acknowledged."""

    __slots__ = ("capacity", "fd", "mm", "path", "pending", "pos", "sealed")

    def __init__(self, path: Path, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(self.fd, 0, capacity)
            self.mm = mmap.mmap(self.fd, capacity, mmap.MAP_SHARED)
        except BaseException:
            os.close(self.fd)
            path.unlink(missing_ok=True)
            raise
        self.pos = 0
        self.pending = 0
        self.sealed = False

    def release(self, *, sync: bool) -> None:
        """Unmap and close (msync first when asked), keeping only the written bytes."""
        try:
            if sync:
                with contextlib.suppress(OSError, ValueError):
                    self.mm.flush()
            self.mm.close()
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.pos)
                if sync:
                    os.fsync(self.fd)
        finally:
            os.close(self.fd)


class Journal:
    """Appends from request threads, acknowledgements from the writer's threads, rolls
    and the next file from the writer thread."""

    def __init__(
        self,
        slot: Path,
        clock: Callable[[], float] = time.time,
        file_bytes: int = FILE_BYTES,
    ) -> None:
        self.slot = slot
        self._clock = clock
        self._file_bytes = file_bytes
        self._lock = threading.Lock()
        self._seq_lock = threading.Lock()
        self._seq = max((_seq_of(p) for p in slot.glob(f"{JOURNAL_PREFIX}*.log")), default=0)
        self._active: JournalFile | None = None
        self._spare: JournalFile | None = None
        self._full: list[JournalFile] = []  # filled between two rolls, released by the next
        self._failed = 0
        self._warned_at = 0.0
        self._closed = False

    def append(self, kind: int, tuples: list[bytes]) -> JournalFile | None:
        """Copy one frame in; the file to acknowledge its records against, or None when no
        journal file could be had (counted, warned about at most every 10 s)."""
        frame = encode_frame(kind, tuples, self._clock())
        n = len(frame)
        with self._lock:
            jf = self._active
            if jf is None or jf.pos + n > jf.capacity:
                try:
                    jf = self._next_file(n)
                except (OSError, ValueError) as exc:
                    self._unjournaled(len(tuples), exc)
                    return None
            jf.mm[jf.pos : jf.pos + n] = frame
            jf.pos += n
            jf.pending += len(tuples)
            return jf

    def ack(self, counts: Mapping[JournalFile, int]) -> None:
        """These records are settled (in Postgres, in the spool, or dropped and logged)."""
        done: list[Path] = []
        with self._lock:
            for jf, n in counts.items():
                jf.pending -= n
                if jf.sealed and jf.pending == 0:
                    done.append(jf.path)
        for path in done:
            path.unlink(missing_ok=True)

    def roll(self) -> None:
        """The writer thread, every flush interval: seal the active file (and any that
        filled), release them (msynced while records are outstanding), delete the settled
        ones, and have the next file ready."""
        with self._lock:
            sealed, self._full = self._full, []
            jf = self._active
            if jf is not None and jf.pos > 0:
                self._active = None
                jf.sealed = True
                sealed.append(jf)
            want_spare = self._spare is None and not self._closed
        for jf in sealed:
            with self._lock:
                outstanding = jf.pending > 0
            jf.release(sync=outstanding)
            if outstanding:
                with contextlib.suppress(OSError):
                    _fsync_dir(self.slot)
            with self._lock:
                settled = jf.pending == 0
            if settled:
                jf.path.unlink(missing_ok=True)
        if want_spare:
            try:
                spare = self._create(self._file_bytes)
            except OSError:
                return  # the next append retries, and warns
            with self._lock:
                taken = self._spare is None and not self._closed
                if taken:
                    self._spare = spare
            if not taken:
                spare.release(sync=False)
                spare.path.unlink(missing_ok=True)

    def close(self) -> None:
        """At shutdown: what is settled goes, the rest is replayed at the next start."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
            active = self._active
            if active is not None and active.pos == 0:
                self._active = None
        self.roll()
        for jf in (spare, active if active is not None and active.pos == 0 else None):
            if jf is not None:
                jf.release(sync=False)
                jf.path.unlink(missing_ok=True)

    # --- internals -----------------------------------------------------------------
    def _next_file(self, frame_bytes: int) -> JournalFile:
        """(With self._lock held.)"""
        if self._active is not None:
            self._active.sealed = True
            self._full.append(self._active)
            self._active = None
        jf = self._spare
        if jf is not None and frame_bytes <= jf.capacity:
            self._spare = None
        else:  # no spare ready (a file filled within one interval) or a huge frame
            jf = self._create(max(self._file_bytes, frame_bytes))
        self._active = jf
        return jf

    def _create(self, capacity: int) -> JournalFile:
        """(With or without self._lock held.)"""
        with self._seq_lock:
            self._seq += 1
            seq = self._seq
        return JournalFile(self.slot / f"{JOURNAL_PREFIX}{seq:016d}.log", capacity)

    def _unjournaled(self, n: int, exc: BaseException) -> None:
        self._failed += n
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            log.warning(
                "audit journal %s unwritable (%s): %d records queued without a journal "
                "entry so far (lost if this process dies before they are stored)",
                self.slot,
                exc,
                self._failed,
            )
            self._warned_at = now


def _seq_of(path: Path) -> int:
    try:
        return int(path.stem[len(JOURNAL_PREFIX) :])
    except ValueError:
        return 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
