"""The durable disk spool: append-only segment files of encoded audit tuples.

Where records go when Postgres is down or slow, when the in-memory queue is full,
or when no database is configured; replayed in order once Postgres answers.

Layout: ``<spool_dir>/slot-N/`` (one slot per live process, held by an exclusive
``flock`` on ``slot-N/lock``, so several workers never share segments; a restarted
process takes the first free slot and replays what it holds) containing
``seg-<16-digit sequence>.log`` segments, the write-ahead journal's ``wal-<sequence>.log``
files (``inferwatch.audit.journal``: a live process's own; a dead one's are replayed like
segments) and ``deadletter.log``. A slot whose owner died
and that no new process took (a worker killed while the others live, a service restarted
with fewer workers) is an orphan: a live process claims it with the same non-blocking
``flock`` (``claim_orphan``), replays it and lets go, so two processes never replay one
slot and a process starting meanwhile simply takes another slot.

A segment is a sequence of frames, each one ``write(2)`` call::

    magic b"IWS1" | kind u8 | nrows u32 | payload_len u32 | spooled_at f64 | crc32 u32 | payload

big-endian; ``payload`` is ``nrows`` binary COPY tuples (``inferwatch.audit.encoding``)
and the CRC covers the header fields before it and the payload. A frame torn by a
crash fails its length or CRC check; the reader skips to the next valid magic.

fsync policy (see docs/audit.md): a frame is in the kernel's page cache when
``append`` returns, so it survives the process being killed (SIGKILL, OOM); the
writer thread fsyncs the active segment at most every flush interval, and every
segment before it is sealed, so a machine crash loses at most one flush interval
of spooled records. No fsync ever runs under the lock that ``append`` takes: request
threads append when the in-memory queue is full, and an fsync of a sealed 8 MB segment
(or of the directory) must not stall them (``tests/integration/test_audit_spool_latency.py``
measures the bound). A segment is deleted only after all its frames are committed
in Postgres; replays are idempotent, so a crash in between only replays it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

MAGIC: Final = b"IWS1"
_HEAD = struct.Struct(">4sBIId")  # magic, kind, nrows, payload_len, spooled_at
_CRC = struct.Struct(">I")
HEADER_SIZE: Final = _HEAD.size + _CRC.size
MAX_SLOTS: Final = 256
DEFAULT_SEGMENT_BYTES: Final = 8 * 1024 * 1024
JOURNAL_PREFIX: Final = "wal-"  # the journal's files in a slot (inferwatch.audit.journal)


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    nrows: int
    spooled_at: float
    payload: bytes


def encode_frame(kind: int, tuples: list[bytes], spooled_at: float) -> bytes:
    payload = b"".join(tuples)
    head = _HEAD.pack(MAGIC, kind, len(tuples), len(payload), spooled_at)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + _CRC.pack(crc) + payload


def write_frame(fd: int, frame: bytes, size_before: int) -> None:
    """Write one frame at the end of a segment opened with O_APPEND. On failure (ENOSPC,
    EIO) the segment is truncated back to ``size_before`` so that no torn frame sits in
    front of later ones, and the OSError is raised."""
    try:
        view = memoryview(frame)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size_before)
        raise


def _torn(fd: int, size_before: int) -> bool:
    """Whether the segment behind ``fd`` is longer than it was before a failed write."""
    try:
        return os.fstat(fd).st_size != size_before
    except OSError:
        return True


def iter_frames(data: bytes) -> Iterator[Frame]:
    """Valid frames of a segment, in order; corrupt or torn stretches are skipped, and a
    tail of zero bytes (a journal file's preallocated space) ends it quietly."""
    pos, end = 0, len(data)
    while pos + HEADER_SIZE <= end:
        if data[pos] == 0 and data.count(0, pos) == end - pos:
            return  # the unwritten, preallocated tail of a journal file
        magic, kind, nrows, plen, at = _HEAD.unpack_from(data, pos)
        (crc,) = _CRC.unpack_from(data, pos + _HEAD.size)
        start = pos + HEADER_SIZE
        if (
            magic == MAGIC
            and start + plen <= end
            and zlib.crc32(data[start : start + plen], zlib.crc32(data[pos : pos + _HEAD.size]))
            == crc
        ):
            yield Frame(kind, nrows, at, data[start : start + plen])
            pos = start + plen
            continue
        nxt = data.find(MAGIC, pos + 1)
        log.warning("audit spool: skipping %d corrupt bytes", (nxt if nxt >= 0 else end) - pos)
        if nxt < 0:
            return
        pos = nxt


@dataclass(slots=True)
class _SegInfo:
    records: int
    oldest: float | None


class Spool:
    """Thread-safe appends (request threads overflow into it); one replaying thread."""

    def __init__(
        self,
        directory: Path,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(directory)
        self.segment_bytes = segment_bytes
        self._clock = clock
        self._lock = threading.Lock()  # appends (request threads): never held over an fsync
        self._sync_lock = threading.Lock()
        self._dead_lock = threading.Lock()
        self._dir_dirty = False  # a segment was created since the directory's last fsync
        self.slot: Path | None = None
        self._lock_fd: int | None = None
        self._fd: int | None = None  # the active segment
        self._active: Path | None = None
        self._active_size = 0
        self._dirty = False
        self._seq = 0
        self._segments: dict[Path, _SegInfo] = {}

    # --- lifecycle ------------------------------------------------------------------
    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for n in range(MAX_SLOTS):
            slot = self.root / f"slot-{n}"
            slot.mkdir(exist_ok=True)
            fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.slot, self._lock_fd = slot, fd
            break
        else:
            raise OSError(f"all {MAX_SLOTS} spool slots under {self.root} are locked")
        for path in pending_segments(self.slot):
            if path.name.startswith("seg-"):
                self._seq = max(self._seq, int(path.stem[4:]))
            records, oldest = 0, None
            for fr in iter_frames(path.read_bytes()):
                records += fr.nrows
                oldest = fr.spooled_at if oldest is None else min(oldest, fr.spooled_at)
            if records:
                self._segments[path] = _SegInfo(records, oldest)
            else:
                path.unlink()
        if self._segments:
            log.info(
                "audit spool %s: %d records left by a previous process",
                self.slot,
                self.pending_records,
            )

    def close(self) -> None:
        with self._sync_lock:
            with self._lock:
                fd = self._detach_active()
            _fsync_close(fd)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # --- writing --------------------------------------------------------------------
    def append(self, kind: int, tuples: list[bytes]) -> None:
        """Append one frame. Raises OSError when the spool cannot be written."""
        now = self._clock()
        frame = encode_frame(kind, tuples, now)
        with self._lock:
            if self.slot is None:
                raise OSError("audit spool is not open")
            if self._fd is None:
                self._open_active()
            assert self._fd is not None
            assert self._active is not None
            before = self._active_size
            try:
                write_frame(self._fd, frame, before)
            except OSError:
                # the segment could not even be truncated back: drop its descriptor (no
                # fsync under this lock); the next append starts a new segment
                if self._fd is not None and _torn(self._fd, before):
                    fd = self._detach_active()
                    if fd is not None:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                raise
            self._active_size = before + len(frame)
            self._dirty = True
            info = self._segments.setdefault(self._active, _SegInfo(0, None))
            info.records += len(tuples)
            if info.oldest is None:
                info.oldest = now

    def dead_letter(self, kind: int, tuples: list[bytes]) -> None:
        """Keep tuples Postgres refused, for forensics (they are counted as dropped)."""
        assert self.slot is not None
        frame = encode_frame(kind, tuples, self._clock())
        with self._dead_lock, open(self.slot / "deadletter.log", "ab") as f:
            f.write(frame)
            f.flush()
            os.fsync(f.fileno())

    def sync(self) -> None:
        """fsync the active segment if anything was appended since the last sync (and the
        directory if a segment was created since)."""
        with self._sync_lock:
            with self._lock:
                fd, dirty, self._dirty = self._fd, self._dirty, False
                dir_dirty, self._dir_dirty = self._dir_dirty, False
            if fd is not None and dirty:
                os.fsync(fd)
            if dir_dirty:
                self._fsync_dir()

    def seal(self) -> None:
        """Close the active segment so it can be replayed; the next append starts anew.
        The fsync runs after the lock is released: appends go to the next segment."""
        with self._sync_lock:
            with self._lock:
                fd = self._detach_active()
                dir_dirty, self._dir_dirty = self._dir_dirty, False
            _fsync_close(fd)
            if dir_dirty:
                self._fsync_dir()

    # --- replaying ------------------------------------------------------------------
    def sealed_segments(self) -> list[Path]:
        with self._lock:
            return sorted(p for p in self._segments if p != self._active)

    def active_has_records(self) -> bool:
        with self._lock:
            return self._active is not None and self._active in self._segments

    def read(self, path: Path) -> list[Frame]:
        return list(iter_frames(path.read_bytes()))

    def remove(self, path: Path) -> None:
        """Forget a segment whose frames are all committed in Postgres."""
        path.unlink(missing_ok=True)
        self._fsync_dir()
        with self._lock:
            self._segments.pop(path, None)

    def claim_orphan(self) -> OrphanSlot | None:
        """Another slot with segments whose owner is gone (its lock is free), now locked by
        us; None when there is none. The caller replays it and calls ``release``."""
        own = self.slot
        for slot in sorted(self.root.glob("slot-*")):
            if slot == own or not pending_segments(slot):
                continue
            try:
                fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live process owns it (or another adopter got there first)
                os.close(fd)
                continue
            return OrphanSlot(slot, fd)
        return None

    # --- gauges ---------------------------------------------------------------------
    @property
    def pending_records(self) -> int:
        with self._lock:
            return sum(i.records for i in self._segments.values())

    def oldest_age_s(self) -> float:
        with self._lock:
            oldest = [i.oldest for i in self._segments.values() if i.oldest is not None]
        return max(0.0, self._clock() - min(oldest)) if oldest else 0.0

    # --- internals (called with self._lock held) ------------------------------------
    def _open_active(self) -> None:
        assert self.slot is not None
        self._seq += 1
        self._active = self.slot / f"seg-{self._seq:016d}.log"
        self._fd = os.open(self._active, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._active_size = 0
        self._dir_dirty = True  # the next sync or seal fsyncs the directory, not this call

    def _detach_active(self) -> int | None:
        """Forget the active segment; its descriptor, for the caller to fsync and close
        once the lock is released."""
        fd = self._fd
        self._fd, self._active, self._active_size, self._dirty = None, None, 0, False
        return fd

    def should_roll(self) -> bool:
        with self._lock:
            return self._active_size >= self.segment_bytes

    def _fsync_dir(self) -> None:
        if self.slot is None:
            return
        try:
            fd = os.open(self.slot, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def pending_segments(slot: Path) -> list[Path]:
    """What a slot holds for Postgres: its spool segments, oldest first, then the journal
    files its owner left (``inferwatch.audit.journal``; replayed idempotently, so records
    a journal shares with Postgres or the spool are stored once)."""
    return sorted(slot.glob("seg-*.log")) + sorted(slot.glob(f"{JOURNAL_PREFIX}*.log"))


def _fsync_close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.fsync(fd)
        os.close(fd)


class OrphanSlot:
    """A dead process's spool slot, its lock held by us until ``release``."""

    def __init__(self, slot: Path, lock_fd: int) -> None:
        self.slot = slot
        self._lock_fd: int | None = lock_fd

    def segments(self) -> list[Path]:
        """Its segments and journal files (read after the lock was taken: complete)."""
        return pending_segments(self.slot)

    def read(self, path: Path) -> list[Frame]:
        return list(iter_frames(path.read_bytes()))

    def remove(self, path: Path) -> None:
        """Delete a segment whose frames are all committed in Postgres."""
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            fd = os.open(self.slot, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
