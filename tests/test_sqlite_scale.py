"""The SQLite store at scale: a large checkpoint goes a chunk at a time, and a kill half way
never brings it back."""

from __future__ import annotations

import threading

import pytest

from scrapy_checkpoint.models import CheckpointStatus
from scrapy_checkpoint.stores import SQLiteCheckpointStore
from scrapy_checkpoint.stores import sqlite as sqlite_store

from . import batch, discovered, fp, new_checkpoint

TTL = 3600.0
URLS = 20


class Killed(BaseException):
    """A kill between two chunks of a delete."""


@pytest.fixture
def path(tmp_path):
    return tmp_path / "checkpoints.sqlite3"


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(sqlite_store, "DELETE_CHUNK", 3)
    monkeypatch.setattr(sqlite_store, "DELETE_PAUSE_MIN", 0.0)


def _filled(store: SQLiteCheckpointStore, status: CheckpointStatus = CheckpointStatus.COMPLETED) -> str:
    cp = new_checkpoint()
    store.create(cp)
    store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(n) for n in range(URLS)],
                                        processed=[fp(n) for n in range(URLS // 2)],
                                        items=[("Product", {"n": n}) for n in range(7)]), TTL)
    cp = store.get(cp.checkpoint_id)
    cp.status = status
    store.create(cp)
    return cp.checkpoint_id


def _rows(store: SQLiteCheckpointStore) -> tuple[int, int, int, int]:
    return tuple(store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                 for table in ("checkpoints", "pending", "processed", "items"))


def _kill_after(monkeypatch, chunks: int) -> None:
    """Kill the delete in the pause after its *chunks*-th chunk."""
    done = []

    def sleep(seconds):
        done.append(seconds)
        if len(done) == chunks:
            raise Killed

    monkeypatch.setattr(sqlite_store.time, "sleep", sleep)


def test_processed_requests_keep_only_their_fingerprint(path):
    store = SQLiteCheckpointStore(path)
    store.open()
    try:
        cid = _filled(store)
        pending = store.db.execute("SELECT fingerprint FROM pending").fetchall()
        assert {f for (f,) in pending} == {fp(n) for n in range(URLS // 2, URLS)}
        assert store.db.execute("SELECT COUNT(*) FROM processed").fetchone()[0] == URLS // 2
        assert set(store.processed_fingerprints(cid)) == {fp(n) for n in range(URLS // 2)}
    finally:
        store.close()


def test_delete_goes_in_chunks_and_leaves_nothing(path):
    store = SQLiteCheckpointStore(path)
    store.open()
    try:
        kept, gone = _filled(store), _filled(store)
        assert store.delete(gone)
        assert store.get(gone) is None
        assert [c.checkpoint_id for c in store.list_checkpoints()] == [kept]
        assert _rows(store) == (1, URLS // 2, URLS // 2, 7)
        assert not store.delete(gone)
    finally:
        store.close()


def test_another_crawl_writes_between_chunks(path, monkeypatch):
    """A second store on the same file, with no patience at all (busy timeout 0), gets the
    write lock in the pause between two chunks of the delete."""
    store, crawl = SQLiteCheckpointStore(path), SQLiteCheckpointStore(path, timeout=0.0)
    store.open()
    crawl.open()
    try:
        gone = _filled(store)
        running = new_checkpoint()
        crawl.create(running)
        pauses = []

        def sleep(seconds):
            pauses.append(seconds)
            crawl.apply(running.checkpoint_id, batch(len(pauses), discovered=[discovered(1000 + len(pauses))]), TTL)

        monkeypatch.setattr(sqlite_store.time, "sleep", sleep)
        assert store.delete(gone)
        assert len(pauses) == 2 * (URLS // 2 // sqlite_store.DELETE_CHUNK) + 7 // sqlite_store.DELETE_CHUNK
        assert crawl.get(running.checkpoint_id).seq == len(pauses)
        assert store.get(gone) is None
    finally:
        crawl.close()
        store.close()


@pytest.mark.parametrize("status", [CheckpointStatus.ACTIVE, CheckpointStatus.FAILED])
def test_killed_half_way_is_never_resumed(path, monkeypatch, status):
    store = SQLiteCheckpointStore(path)
    store.open()
    try:
        cid = _filled(store, status)
        assert store.find_resumable("products", "shop.test", "product_catalog").checkpoint_id == cid
        _kill_after(monkeypatch, 2)
        with pytest.raises(Killed):
            store.delete(cid)
        assert 0 < _rows(store)[1] < URLS // 2  # half deleted
        assert store.get(cid) is None
        assert store.find_resumable("products", "shop.test", "product_catalog") is None
        assert list(store.list_checkpoints()) == []
        assert store.stored_bytes(cid) is None
        assert not store.delete(cid)
    finally:
        monkeypatch.undo()
        store.close()


def test_new_checkpoint_never_gets_rows_of_a_half_deleted_one(path, monkeypatch):
    """Its integer key stays taken until its last row is gone: a new checkpoint does not
    inherit the processed marks of one whose delete was killed."""
    store = SQLiteCheckpointStore(path)
    store.open()
    try:
        cid = _filled(store)
        _kill_after(monkeypatch, 1)
        with pytest.raises(Killed):
            store.delete(cid)
        monkeypatch.undo()
        fresh = new_checkpoint()
        store.create(fresh)
        assert list(store.processed_fingerprints(fresh.checkpoint_id)) == []
        assert store.pending_requests(fresh.checkpoint_id, None, 100) == ([], None)
        assert list(store.items(fresh.checkpoint_id)) == []
    finally:
        store.close()


def test_next_open_finishes_a_killed_delete(path, monkeypatch):
    store = SQLiteCheckpointStore(path)
    store.open()
    try:
        kept, cid = _filled(store), _filled(store)
        _kill_after(monkeypatch, 2)
        with pytest.raises(Killed):
            store.delete(cid)
        monkeypatch.undo()
    finally:
        store.close()
    store = SQLiteCheckpointStore(path)
    store.open()
    try:
        store._purger.join()  # in the background: the crawl that opened the store goes on
        assert _rows(store) == (1, URLS // 2, URLS // 2, 7)
        assert store.get(kept) is not None
        assert store.get(cid) is None
    finally:
        store.close()


def _expired(path) -> str:
    """A file holding one filled checkpoint that has expired: the next open() purges it."""
    store = SQLiteCheckpointStore(path)
    store.open()
    try:
        cid = _filled(store)
        store.apply(cid, batch(2), 1e-6)
    finally:
        store.close()
    return cid


def test_expired_checkpoint_purged_in_chunks_on_open(path, monkeypatch):
    _expired(path)
    pauses = []
    monkeypatch.setattr(sqlite_store.time, "sleep", pauses.append)
    store = SQLiteCheckpointStore(path)
    store.open()
    try:
        store._purger.join()
        assert pauses  # more than one transaction
        assert _rows(store) == (0, 0, 0, 0)
    finally:
        store.close()


def test_a_crawl_opening_the_store_does_not_wait_for_the_purge(path, monkeypatch):
    cid = _expired(path)
    paused, go_on = threading.Event(), threading.Event()

    def sleep(seconds):
        paused.set()
        go_on.wait(60)

    monkeypatch.setattr(sqlite_store.time, "sleep", sleep)
    store = SQLiteCheckpointStore(path)
    store.open()  # returns with the expired checkpoint's rows still there
    try:
        assert paused.wait(60)
        assert store.get(cid) is None and store.db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] > 0
        fresh = new_checkpoint()
        store.create(fresh)  # the crawl writes between the purge's chunks
        store.apply(fresh.checkpoint_id, batch(1, discovered=[discovered(1000)]), TTL)
        go_on.set()
        store._purger.join()
        assert _rows(store) == (1, 1, 0, 0)
    finally:
        go_on.set()
        store.close()
