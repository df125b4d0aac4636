"""The SQLite store names a WAL that SQLite would replay only in part, and keeps a copy."""

from __future__ import annotations

import logging
import shutil
import struct

import pytest

from scrapy_checkpoint.stores import SQLiteCheckpointStore

from . import batch, discovered, fp, new_checkpoint

TTL = 3600.0
BATCHES = 6


def _batch(seq: int):
    return batch(seq, discovered=[discovered(seq * 10 + i) for i in range(5)], processed=[fp(seq * 10)])


@pytest.fixture
def crashed(tmp_path):
    """A copy of the store's files taken while it was open, as a killed crawl leaves them: every
    batch still in the WAL. Yields the copy's path, the checkpoint id and the WAL's size after
    each batch (where the next batch's frames start)."""
    store = SQLiteCheckpointStore(tmp_path / "live" / "checkpoints.sqlite3")
    store.open()
    try:
        cp = new_checkpoint()
        store.create(cp)
        sizes = {}
        for seq in range(1, BATCHES + 1):
            store.apply(cp.checkpoint_id, _batch(seq), TTL)
            sizes[seq] = store._wal.stat().st_size
        copy = tmp_path / "copy" / "checkpoints.sqlite3"
        copy.parent.mkdir()
        shutil.copyfile(store.path, copy)
        shutil.copyfile(store._wal, f"{copy}-wal")
    finally:
        store.close()
    return copy, cp.checkpoint_id, sizes


def _open_at(path, checkpoint_id: str) -> tuple[int, set[bytes]]:
    store = SQLiteCheckpointStore(path)
    store.open()
    try:
        return store.get(checkpoint_id).seq, set(store.processed_fingerprints(checkpoint_id))
    finally:
        store.close()


def _processed(batches: int) -> set[bytes]:
    return {fp(seq * 10) for seq in range(1, batches + 1)}


def test_intact_wal_keeps_every_batch(crashed):
    path, checkpoint_id, _ = crashed
    assert _open_at(path, checkpoint_id) == (BATCHES, _processed(BATCHES))


def test_torn_last_frame_resumes_before_the_last_batch(crashed):
    """A power cut in the middle of the last frame is normal: its batch is lost, no error."""
    path, checkpoint_id, sizes = crashed
    wal = path.with_name(path.name + "-wal")
    page_size = struct.unpack(">I", wal.read_bytes()[8:12])[0]
    with wal.open("r+b") as f:
        f.truncate(sizes[BATCHES] - page_size // 2)
    assert _open_at(path, checkpoint_id) == (BATCHES - 1, _processed(BATCHES - 1))


def _kept(wal):
    (kept,) = wal.parent.glob(wal.name + ".damaged-*")
    return kept


def test_damaged_early_frame_is_named(crashed, caplog):
    """Bytes flipped in the first frame of batch 4: SQLite silently replays batches 1-3 only.
    The store says so, naming the WAL and where the replay stops, keeps the WAL whole, and
    goes on from the older state."""
    path, checkpoint_id, sizes = crashed
    wal = path.with_name(path.name + "-wal")
    data = bytearray(wal.read_bytes())
    page_size = struct.unpack(">I", data[8:12])[0]
    middle = sizes[3] + 24 + page_size // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    wal.write_bytes(data)
    assert _open_at(path, checkpoint_id) == (3, _processed(3))
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert error.startswith(f"{wal} is damaged (a disk error, or a power cut while it was written): "
                            f"SQLite replays it only up to byte {sizes[3]} and drops the batches"), error
    assert f"kept as {_kept(wal)}" in error
    assert _kept(wal).read_bytes() == data


def test_damaged_header_is_named(crashed, caplog):
    """A header that fails its checksum makes SQLite ignore the whole WAL, every batch in it."""
    path, checkpoint_id, _ = crashed
    wal = path.with_name(path.name + "-wal")
    data = bytearray(wal.read_bytes())
    data[15] ^= 0x01  # the checkpoint sequence number, covered by the header's checksum
    wal.write_bytes(data)
    store = SQLiteCheckpointStore(path)
    store.open()
    try:
        assert store.get(checkpoint_id) is None
    finally:
        store.close()
    assert any("-wal is damaged" in r.getMessage() and "up to byte 0 " in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)
    assert _kept(wal).read_bytes() == data


def test_intact_and_torn_wal_log_nothing(crashed, caplog):
    path, checkpoint_id, _ = crashed
    _open_at(path, checkpoint_id)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not list(path.parent.glob("*.damaged-*"))


def test_the_wal_stays_bounded_when_its_checkpointing_thread_falls_behind(tmp_path, monkeypatch):
    """A writer that never pauses leaves the checkpointing thread no moment to copy the whole
    WAL back: apply() then empties it itself, past WAL_LIMIT_BYTES."""
    limit = 256 * 1024
    monkeypatch.setattr("scrapy_checkpoint.stores.sqlite.WAL_LIMIT_BYTES", limit)
    # The checkpointing thread as far behind as it gets: it never checkpoints.
    monkeypatch.setattr(SQLiteCheckpointStore, "_checkpoint_wal", lambda store: None)
    store = SQLiteCheckpointStore(tmp_path / "checkpoints.sqlite3")
    store.open()
    try:
        cp = new_checkpoint()
        store.create(cp)
        sizes = []
        for seq in range(1, 41):
            store.apply(cp.checkpoint_id, batch(seq, discovered=[discovered(seq * 1000 + i) for i in range(200)]),
                        TTL)
            sizes.append(store._wal.stat().st_size)
        assert len(set(store.processed_fingerprints(cp.checkpoint_id))) == 0
        assert store.get(cp.checkpoint_id).pipeline_data.urls_discovered == 40 * 200
    finally:
        store.close()
    assert sum(sizes) / len(sizes) < limit and 0 in sizes, sizes  # emptied, again and again
