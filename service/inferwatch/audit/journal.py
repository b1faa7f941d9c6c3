"""The audit write-ahead journal: every record on disk before its response is sent.

The writer holds records in memory for up to a flush interval, and while Postgres is
retried its in-flight batches wait for a connection; a process killed then (SIGKILL, the
OOM killer, a crash of the interpreter) would lose records whose clients were told
"200". With the journal on (``INFERWATCH_AUDIT_JOURNAL``, the default), ``submit``
encodes the record on the caller's thread and appends it, as one spool frame, to the
active ``wal-<sequence>.log`` file of the process's spool slot with one ``write(2)``
before returning: the bytes are in the kernel's page cache, which outlives the process.
The writer thread then takes the already-encoded tuple from its queue (it encodes nothing
twice) and acknowledges each record once its fate is settled: committed in Postgres,
appended to the spool, or dropped and logged. Every flush interval the writer rolls the
active file; a rolled file whose records are all acknowledged is deleted, one with
records still outstanding is fsynced first (so a machine crash, not only a killed
process, loses at most what arrived within the last flush interval).

Nothing is ever read back by the live process. A process that starts on a slot, or a
live process that adopts a dead process's slot (``Spool.claim_orphan``), finds the dead
owner's journal files beside its spool segments and replays them through the idempotent
path (``INSERT ... ON CONFLICT DO NOTHING``): records that had reached Postgres or the
spool are stored once.

A journal file that cannot be written (its disk full) never fails the request: the
record is queued without a journal entry, as it would be with the journal off, and a
warning says how many were not journaled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from inferwatch.audit.spool import JOURNAL_PREFIX, encode_frame, write_frame

log = logging.getLogger(__name__)

_WARN_EVERY_S: Final = 10.0


class JournalFile:
    """One ``wal-*.log`` file: how many of its records are not yet acknowledged."""

    __slots__ = ("path", "pending", "sealed")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending = 0
        self.sealed = False


class Journal:
    """Appends from request threads, acknowledgements from the writer's threads."""

    def __init__(self, slot: Path, clock: Callable[[], float] = time.time) -> None:
        self.slot = slot
        self._clock = clock
        self._lock = threading.Lock()
        self._seq = max((_seq_of(p) for p in slot.glob(f"{JOURNAL_PREFIX}*.log")), default=0)
        self._fd: int | None = None
        self._active: JournalFile | None = None
        self._size = 0
        self._failed = 0
        self._warned_at = 0.0

    def append(self, kind: int, tuples: list[bytes]) -> JournalFile | None:
        """Write one frame; the file to acknowledge its records against, or None when the
        journal could not be written (counted, warned about at most every 10 s)."""
        frame = encode_frame(kind, tuples, self._clock())
        with self._lock:
            try:
                if self._fd is None:
                    self._open_active()
                assert self._fd is not None
                assert self._active is not None
                write_frame(self._fd, frame, self._size)
            except OSError as exc:
                self._failed += len(tuples)
                now = time.monotonic()
                if now - self._warned_at >= _WARN_EVERY_S:
                    log.warning(
                        "audit journal %s unwritable (%s): %d records queued without a "
                        "journal entry so far (lost if this process dies before they are "
                        "stored)",
                        self.slot,
                        exc,
                        self._failed,
                    )
                    self._warned_at = now
                return None
            self._size += len(frame)
            self._active.pending += len(tuples)
            return self._active

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
        """Close the active file (the writer thread, every flush interval): deleted when
        all its records are settled, else fsynced (outside the lock) and deleted by the
        last acknowledgement."""
        with self._lock:
            jf, fd = self._active, self._fd
            if jf is None or fd is None:
                return
            self._active, self._fd, self._size = None, None, 0
            jf.sealed = True
            outstanding = jf.pending > 0
        try:
            if outstanding:
                with contextlib.suppress(OSError):
                    os.fsync(fd)
                    _fsync_dir(self.slot)
        finally:
            os.close(fd)
        with self._lock:
            settled = jf.pending == 0
        if settled:
            jf.path.unlink(missing_ok=True)

    close = roll  # at shutdown: what is settled goes, the rest is replayed at the next start

    def _open_active(self) -> None:
        self._seq += 1
        path = self.slot / f"{JOURNAL_PREFIX}{self._seq:016d}.log"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._active = JournalFile(path)
        self._size = 0


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
