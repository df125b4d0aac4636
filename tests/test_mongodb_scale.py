"""The MongoDB store at scale: paged reads of a large checkpoint, lean processed URLs."""

from __future__ import annotations

import functools

import pytest
from bson import Binary
from pymongo import MongoClient, monitoring

from scrapy_checkpoint.stores import mongodb

from . import batch, discovered, fp, new_checkpoint
from .test_stores import TTL

URLS = "checkpoint_urls"


class _Finds(monitoring.CommandListener):
    """The limit of every find on the URL collection."""

    def __init__(self) -> None:
        self.limits: list[int] = []

    def started(self, event):
        if event.command_name == "find" and event.command["find"] == URLS:
            self.limits.append(event.command.get("limit", 0))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


@pytest.fixture
def finds(monkeypatch):
    """The store's client, listened to."""
    listener = _Finds()
    monkeypatch.setattr(mongodb, "MongoClient", functools.partial(MongoClient, event_listeners=[listener]))
    return listener


@pytest.fixture
def store(mongo_uri_db, finds):
    uri, database = mongo_uri_db
    store = mongodb.MongoDBCheckpointStore(uri, database, timeout=5.0)
    store.open()
    yield store
    store.close()


def _insert(store, checkpoint_id, numbers, processed):
    """URL documents as apply leaves them, inserted in bulk (apply writes about 2,000 URLs a
    second to the stand-in)."""
    docs = []
    for pos, n in enumerate(numbers):
        doc = {"_id": mongodb._url_id(checkpoint_id, fp(n)), "checkpoint_id": checkpoint_id,
               "fingerprint": Binary(fp(n)), "processed": processed(n), "start": n % 1000 == 0, "pos": pos}
        if not doc["processed"]:
            doc.update(url=discovered(n).url, request=Binary(discovered(n).data))
        docs.append(doc)
    for start in range(0, len(docs), 2000):  # each insert within the client's timeout
        store.db[URLS].insert_many(docs[start:start + 2000], ordered=False)


def test_processed_read_in_pages_in_order(store, finds, monkeypatch):
    monkeypatch.setattr(mongodb, "_PAGE", 4000)
    big, before, after = new_checkpoint(), new_checkpoint(), new_checkpoint()
    for cp in (big, before, after):
        store.create(cp)
    cid = big.checkpoint_id
    # Checkpoints whose ids sort just before and just after the big one's, in the same index.
    neighbours = {cid[:-1] + chr(ord(cid[-1]) - 1): before, cid[:-1] + chr(ord(cid[-1]) + 1): after}
    for neighbour_id in neighbours:
        _insert(store, neighbour_id, range(50), lambda n: True)
    _insert(store, cid, range(33_000), lambda n: n % 11 != 0)  # 30,000 processed, 3,000 pending
    expected = sorted(fp(n) for n in range(33_000) if n % 11)
    finds.limits.clear()

    got = list(store.processed_fingerprints(cid))

    assert len(got) == 30_000
    assert got == expected  # ascending, each once
    assert finds.limits and max(finds.limits) <= 4001  # every query a page
    assert len(finds.limits) == 30_000 // 4000 + 1
    pending_starts = {fp(n) for n in range(0, 33_000, 1000) if n % 11 == 0}
    assert set(store.pending_start_fingerprints(cid)) == pending_starts


@pytest.mark.parametrize("page", [1, 2, 3])
def test_page_boundaries(store, monkeypatch, page):
    monkeypatch.setattr(mongodb, "_PAGE", page)
    cp = new_checkpoint()
    cid = cp.checkpoint_id
    store.create(cp)
    store.apply(cid, batch(1, discovered=[discovered(n, start=n < 6) for n in range(10)],
                           processed=[fp(n) for n in range(0, 10, 2)]), TTL)
    assert list(store.processed_fingerprints(cid)) == sorted(fp(n) for n in range(0, 10, 2))
    assert sorted(store.pending_start_fingerprints(cid)) == sorted([fp(1), fp(3), fp(5)])
    assert list(store.processed_fingerprints(new_checkpoint().checkpoint_id)) == []


def _doc(store, checkpoint_id, n):
    return store.db[URLS].find_one({"_id": mongodb._url_id(checkpoint_id, fp(n))})


def _lean(doc):
    return doc["processed"] and "request" not in doc and "url" not in doc


def test_processed_url_keeps_no_request(store):
    cp = new_checkpoint()
    cid = cp.checkpoint_id
    store.create(cp)
    store.apply(cid, batch(1, discovered=[discovered(1), discovered(2), discovered(3)]), TTL)
    # 1: processed in a later batch; 4: discovered and processed in one; 5: processed with no
    # record; 3: discovered again after it was processed.
    store.apply(cid, batch(2, discovered=[discovered(4)], processed=[fp(1), fp(4), fp(5), fp(3)]), TTL)
    store.apply(cid, batch(3, discovered=[discovered(3), discovered(6)]), TTL)
    for n in (1, 3, 4, 5):
        assert _lean(_doc(store, cid, n)), _doc(store, cid, n)
    for n in (2, 6):
        doc = _doc(store, cid, n)
        assert (doc["processed"], doc["request"], doc["url"]) == (False, discovered(n).data, discovered(n).url)
    data = store.get(cid).pipeline_data
    assert (data.urls_discovered, data.urls_processed) == (6, 4)
    assert list(store.processed_fingerprints(cid)) == sorted(fp(n) for n in (1, 3, 4, 5))


def test_pending_requests_in_discovery_order(store, monkeypatch):
    monkeypatch.setattr(mongodb, "_PAGE", 2)
    cp = new_checkpoint()
    cid = cp.checkpoint_id
    store.create(cp)
    store.apply(cid, batch(1, discovered=[discovered(n) for n in (9, 3, 7, 1)]), TTL)
    store.apply(cid, batch(2, discovered=[discovered(n) for n in (8, 2, 6)], processed=[fp(3), fp(8)]), TTL)
    store.apply(cid, batch(3, discovered=[discovered(n) for n in (5, 4)], processed=[fp(1)]), TTL)
    pages, after = [], None
    while True:
        requests, after = store.pending_requests(cid, after, 2)
        if not requests:
            break
        pages.append(requests)
    assert pages == [[b"request-9", b"request-7"], [b"request-2", b"request-6"], [b"request-5", b"request-4"]]


def test_journal_replay_of_a_killed_apply(store, mongo_uri_db):
    cp = new_checkpoint()
    cid = cp.checkpoint_id
    store.create(cp)
    store.apply(cid, batch(1, discovered=[discovered(1), discovered(2)]), TTL)
    b = batch(2, discovered=[discovered(3)], processed=[fp(1), fp(3), fp(9)])
    # Killed mid-apply: journaled, the discovered upsert done, no processed one, no record update.
    store.db["checkpoint_journal"].insert_one(store._journal(cid, b, TTL))
    store._bulk(URLS, mongodb._url_updates(cid, 2, [{"fingerprint": fp(3), "url": discovered(3).url,
                                                     "request": discovered(3).data, "start": False}], []))
    assert not _lean(_doc(store, cid, 3))
    store.close()
    uri, database = mongo_uri_db
    reopened = mongodb.MongoDBCheckpointStore(uri, database, timeout=5.0)
    reopened.open()  # replays the journal
    try:
        for n in (1, 3, 9):
            assert _lean(_doc(reopened, cid, n))
        data = reopened.get(cid).pipeline_data
        assert (data.urls_discovered, data.urls_processed) == (4, 3)
        assert list(reopened.processed_fingerprints(cid)) == sorted([fp(1), fp(3), fp(9)])
        assert reopened.pending_requests(cid, None, 10)[0] == [b"request-2"]
        reopened.apply(cid, b, TTL)  # the retried flush: a no-op
        assert (reopened.get(cid).pipeline_data.urls_processed, _lean(_doc(reopened, cid, 3))) == (3, True)
    finally:
        reopened.close()
