"""The journal's bookkeeping: a file lives exactly as long as one of its records is unsettled,
and a dead process's journal is what the next owner of its slot (or an adopter) replays."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from inferwatch.audit import encoding as enc
from inferwatch.audit.journal import Journal
from inferwatch.audit.spool import JOURNAL_PREFIX, Spool, iter_frames


def _files(slot: Path) -> list[Path]:
    return sorted(slot.glob(f"{JOURNAL_PREFIX}*"))


def test_a_rolled_file_stays_until_its_last_record_is_settled(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    a = j.append(enc.KIND_PREDICTION, [b"t1", b"t2"])
    b = j.append(enc.KIND_PREDICTION, [b"t3"])
    assert a is not None
    assert a is b  # one active file
    j.ack({a: 2})
    j.roll()
    assert a.path.exists()  # one record outstanding: kept (and msynced)
    assert a.path.stat().st_size == a.pos  # truncated to what was written
    j.ack({a: 1})
    assert not a.path.exists()
    j.close()
    assert _files(tmp_path) == []


def test_a_settled_file_goes_at_the_roll_and_an_idle_journal_keeps_one_empty_file(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path, file_bytes=64 * 1024)
    j.roll()
    j.roll()
    (spare,) = _files(tmp_path)  # the next file, ready, preallocated, holding nothing
    assert spare.stat().st_size == 64 * 1024
    assert list(iter_frames(spare.read_bytes())) == []
    a = j.append(enc.KIND_OUTCOME, [b"x"])
    assert a is not None
    assert a.path == spare  # a request never creates a file while one is ready
    j.ack({a: 1})
    assert a.path.exists()  # still the active file
    j.roll()
    assert not a.path.exists()
    c = j.append(enc.KIND_OUTCOME, [b"y"])
    assert c is not None
    assert c is not a
    j.close()
    assert c.path.exists()  # its record is not settled: replayed at the next start
    assert len(_files(tmp_path)) == 1


def test_a_file_that_fills_is_sealed_and_the_next_one_taken(tmp_path: Path) -> None:
    j = Journal(tmp_path, file_bytes=4096)
    j.roll()
    first = j.append(enc.KIND_PREDICTION, [b"r" * 3000])
    second = j.append(enc.KIND_PREDICTION, [b"s" * 3000])  # does not fit: a new file
    huge = j.append(enc.KIND_PREDICTION, [b"h" * 10_000])  # bigger than a file
    assert first is not None
    assert second is not None
    assert huge is not None
    assert len({first.path, second.path, huge.path}) == 3
    j.ack({first: 1, second: 1})
    j.roll()
    assert not first.path.exists()
    assert not second.path.exists()
    (frame,) = iter_frames(huge.path.read_bytes())
    assert frame.payload == b"h" * 10_000


def test_journal_frames_are_spool_frames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    j = Journal(tmp_path)
    a = j.append(enc.KIND_PREDICTION, [b"aa", b"bb"])
    j.append(enc.KIND_OUTCOME, [b"cc"])
    assert a is not None
    # as a killed process leaves it: mapped, preallocated, the rest of the file zeros
    frames = list(iter_frames(a.path.read_bytes()))
    assert [(f.kind, f.nrows, f.payload) for f in frames] == [
        (enc.KIND_PREDICTION, 2, b"aabb"),
        (enc.KIND_OUTCOME, 1, b"cc"),
    ]
    assert "corrupt" not in caplog.text  # the zero tail is not damage


def _dead_slot_with_journal(root: Path, n: int) -> Path:
    """slot-0 as a killed process leaves it: an unlocked lock file and a journal."""
    slot = root / "slot-0"
    slot.mkdir(parents=True)
    (slot / "lock").touch()
    j = Journal(slot)
    j.append(enc.KIND_PREDICTION, [b"r"] * n)
    return slot


def test_the_next_owner_of_a_slot_replays_its_dead_journal(tmp_path: Path) -> None:
    slot = _dead_slot_with_journal(tmp_path, 7)
    spool = Spool(tmp_path)
    spool.open()
    try:
        assert spool.slot == slot
        assert spool.pending_records == 7
        assert [p.name for p in spool.sealed_segments()] == [p.name for p in _files(slot)]
        # the new owner's own journal never reuses a pending file's name
        assert spool.slot is not None
        mine = Journal(spool.slot)
        mine.append(enc.KIND_PREDICTION, [b"s"])
        assert len(_files(slot)) == 2
    finally:
        spool.close()


def test_a_live_process_adopts_a_dead_slot_that_holds_only_a_journal(tmp_path: Path) -> None:
    live = tmp_path / "slot-0"
    live.mkdir()
    fd = os.open(live / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # slot-0: another live process's
    (live / f"{JOURNAL_PREFIX}0000000000000001.log").write_bytes(b"")
    spool = Spool(tmp_path)
    spool.open()  # takes slot-1
    try:
        assert spool.slot == tmp_path / "slot-1"
        assert spool.claim_orphan() is None  # a live process's journal is its own
        dead = tmp_path / "slot-2"  # a worker that started after us and was killed
        dead.mkdir()
        (dead / "lock").touch()
        Journal(dead).append(enc.KIND_PREDICTION, [b"r"] * 3)
        orphan = spool.claim_orphan()
        assert orphan is not None
        assert orphan.slot == dead
        (seg,) = orphan.segments()
        assert sum(f.nrows for f in orphan.read(seg)) == 3
        orphan.release()
    finally:
        spool.close()
        os.close(fd)
