"""The journal's bookkeeping: a file lives exactly as long as one of its records is unsettled,
and a dead process's journal is what the next owner of its slot (or an adopter) replays."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

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
    assert len(_files(tmp_path)) == 1  # one record outstanding: kept (and fsynced)
    j.ack({a: 1})
    assert _files(tmp_path) == []


def test_a_settled_file_goes_at_the_roll_and_an_idle_journal_writes_nothing(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path)
    j.roll()
    assert _files(tmp_path) == []  # nothing appended: no file at all
    a = j.append(enc.KIND_OUTCOME, [b"x"])
    assert a is not None
    j.ack({a: 1})
    assert len(_files(tmp_path)) == 1  # still the active file
    j.roll()
    assert _files(tmp_path) == []
    c = j.append(enc.KIND_OUTCOME, [b"y"])
    assert c is not None
    assert c is not a  # the next append opens a new file


def test_journal_frames_are_spool_frames(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append(enc.KIND_PREDICTION, [b"aa", b"bb"])
    j.append(enc.KIND_OUTCOME, [b"cc"])
    (path,) = _files(tmp_path)
    frames = list(iter_frames(path.read_bytes()))
    assert [(f.kind, f.nrows, f.payload) for f in frames] == [
        (enc.KIND_PREDICTION, 2, b"aabb"),
        (enc.KIND_OUTCOME, 1, b"cc"),
    ]


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
