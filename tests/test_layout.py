"""Layout versions: every store records the layout of what it holds, stamps a store without one,
and refuses, untouched, a store of a layout it cannot read."""

from __future__ import annotations

import sqlite3

import demo_support
import pytest

from scrapy_checkpoint.exceptions import CheckpointError, StoreLayoutError
from scrapy_checkpoint.stores import SQLiteCheckpointStore
from scrapy_checkpoint.stores.sqlite import SCHEMA_VERSION

from . import batch, discovered, fp, new_checkpoint
from . import test_stores as stores
from .test_commands import scrapy_checkpoint
from .test_e2e import crawl

TTL = 3600.0
REDIS_PREFIX = stores.TestRedisStore.PREFIX


@pytest.fixture
def mongo_db(mongo_uri_db):
    from pymongo import MongoClient

    uri, database = mongo_uri_db
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as mongo:
        yield mongo[database]


def redis_contents(redis_client):
    return stores.TestRedisStore.contents(redis_client)


def mongo_contents(db):
    """Every collection of the database, with its documents and its indexes."""
    return {name: (sorted(map(repr, db[name].find())), sorted(db[name].index_information()))
            for name in sorted(db.list_collection_names())}


def fill(store):
    """A checkpoint with pending and processed URLs and an item, as a crawl leaves it."""
    cp = new_checkpoint()
    store.create(cp)
    store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1), discovered(2)], processed=[fp(1)],
                                        items=[("Product", {"sku": "A1"})], item_counts={"Product": 1}), TTL)
    return cp.checkpoint_id


def readable(store, checkpoint_id):
    got = store.get(checkpoint_id)
    assert got.pipeline_data.urls_processed == 1
    assert list(store.processed_fingerprints(checkpoint_id)) == [fp(1)]
    assert store.pending_requests(checkpoint_id, None, 10)[0] == [b"request-2"]
    assert list(store.items(checkpoint_id)) == [("Product", {"sku": "A1"})]


def refused(store, found, layout, *words, where=None):
    """open() raises the layout refusal: the store (*where*: its describe()), the layout
    found, the layout read, what to do."""
    with pytest.raises(StoreLayoutError) as info:
        store.open()
    store.close()
    message = str(info.value)
    assert isinstance(info.value, CheckpointError)
    assert message.startswith(f"{where or store.describe()} holds checkpoints of another scrapy-checkpoint version"), message
    assert f"(layout {found}; this one reads layout {layout})" in message, message
    assert "left as they are" in message and "or use the scrapy-checkpoint version that wrote them." in message
    assert all(word in message for word in words), message
    assert "\n" not in message
    return message


class TestRedisLayout:
    @pytest.fixture
    def make_store(self, redis_url):
        from scrapy_checkpoint.stores.redis import RedisCheckpointStore

        return lambda prefix=REDIS_PREFIX: RedisCheckpointStore(redis_url, prefix, timeout=2.0)

    def test_fresh_store_is_stamped_for_ever(self, make_store, redis_client):
        store = make_store()
        store.open()
        store.close()
        assert redis_contents(redis_client) == {f"{REDIS_PREFIX}:layout".encode(): b"1"}
        assert redis_client.pttl(f"{REDIS_PREFIX}:layout") == -1

    def test_data_without_marker_is_layout_1_and_stamped(self, make_store, redis_client):
        """What the version before the marker wrote: the same keys, no marker."""
        store = make_store()
        store.open()
        checkpoint_id = fill(store)
        store.close()
        redis_client.delete(f"{REDIS_PREFIX}:layout")
        before = redis_contents(redis_client)
        store = make_store()
        store.open()
        try:
            readable(store, checkpoint_id)
        finally:
            store.close()
        assert redis_client.get(f"{REDIS_PREFIX}:layout") == b"1"
        assert redis_contents(redis_client) == {**before, f"{REDIS_PREFIX}:layout".encode(): b"1"}

    @pytest.mark.parametrize(("marker", "found"), [(b"2", "2"), (b"1.5", "'1.5'"), (b"0", "0")])
    def test_other_layout_refused_untouched(self, make_store, redis_client, marker, found):
        store = make_store()
        store.open()
        fill(store)
        store.close()
        redis_client.set(f"{REDIS_PREFIX}:layout", marker)
        before = redis_contents(redis_client)
        refused(make_store(), found, 1, f"Set CHECKPOINT_REDIS_PREFIX (now '{REDIS_PREFIX}') to another prefix")
        assert redis_contents(redis_client) == before
        # Another prefix is another store.
        other = make_store("elsewhere")
        other.open()
        other.close()
        assert redis_client.get("elsewhere:layout") == b"1"

    def test_marker_of_another_type_refused(self, make_store, redis_client):
        redis_client.hset(f"{REDIS_PREFIX}:layout", "layout", "1")
        before = redis_contents(redis_client)
        refused(make_store(), "'a hash key'", 1)
        assert redis_contents(redis_client) == before

    def test_message_hides_the_password(self):
        from scrapy_checkpoint.stores.redis import RedisCheckpointStore

        store = RedisCheckpointStore("redis://scraper:s3cret@cache.test:6390/3", "crawls")
        with pytest.raises(StoreLayoutError) as info:
            store._layout_steps(3, True)
        assert str(info.value).startswith("redis://scraper:***@cache.test:6390/3 holds checkpoints")
        assert "s3cret" not in str(info.value)


class TestMongoDBLayout:
    @pytest.fixture
    def make_store(self, mongo_uri_db):
        from scrapy_checkpoint.stores.mongodb import MongoDBCheckpointStore

        return lambda: MongoDBCheckpointStore(*mongo_uri_db, timeout=5.0)

    def test_fresh_store_is_stamped(self, make_store, mongo_db):
        store = make_store()
        store.open()
        store.close()
        assert list(mongo_db["checkpoint_layout"].find()) == [{"_id": "layout", "layout": 1}]

    def test_data_without_marker_is_layout_1_and_stamped(self, make_store, mongo_db):
        """What the version before the marker wrote: the same collections, no marker."""
        store = make_store()
        store.open()
        checkpoint_id = fill(store)
        store.close()
        mongo_db.drop_collection("checkpoint_layout")
        store = make_store()
        store.open()
        try:
            readable(store, checkpoint_id)
        finally:
            store.close()
        assert list(mongo_db["checkpoint_layout"].find()) == [{"_id": "layout", "layout": 1}]

    @pytest.mark.parametrize(("marker", "found"), [(2, "2"), ("two", "'two'")])
    def test_other_layout_refused_untouched(self, make_store, mongo_db, marker, found):
        store = make_store()
        store.open()
        fill(store)
        store.close()
        mongo_db["checkpoint_layout"].update_one({"_id": "layout"}, {"$set": {"layout": marker}},
                                                 bypass_document_validation=True)
        before = mongo_contents(mongo_db)
        store = make_store()
        message = refused(store, found, 1, "(database checkpoint_test_",
                          "Set CHECKPOINT_MONGO_DATABASE (now 'checkpoint_test_")
        assert mongo_contents(mongo_db) == before, message

    def test_newer_database_without_collections_gains_none(self, make_store, mongo_db):
        """A newer version's database that holds nothing else: no collection, index or
        validator of this version is added to it."""
        mongo_db["checkpoint_layout"].insert_one({"_id": "layout", "layout": 2})
        before = mongo_contents(mongo_db)
        refused(make_store(), "2", 1)
        assert list(before) == ["checkpoint_layout"]
        assert mongo_contents(mongo_db) == before


class TestHybridLayout:
    PREFIX = stores.HYBRID_PREFIX
    make_store = stores.TestHybridStore.make_store

    def test_fresh_store_stamps_both(self, make_store, redis_client, mongo_db):
        store = make_store()
        store.open()
        store.close()
        assert redis_client.get(f"{self.PREFIX}:layout") == b"1"
        assert list(mongo_db["checkpoint_layout"].find()) == [{"_id": "layout", "layout": 1}]

    @pytest.mark.parametrize("newer", ["redis", "mongodb"])
    def test_one_store_refused_leaves_both_untouched(self, make_store, redis_client, mongo_db, newer):
        """Both start empty but for the newer store's marker: the other is not stamped, no
        collection is made."""
        if newer == "redis":
            redis_client.set(f"{self.PREFIX}:layout", b"2")
        else:
            mongo_db["checkpoint_layout"].insert_one({"_id": "layout", "layout": 2})
        before = redis_contents(redis_client), mongo_contents(mongo_db)
        store = make_store()
        # The one of the two that holds the newer layout, and how to point at another.
        side, advice = ((store.redis.store, "CHECKPOINT_REDIS_PREFIX (now 'test-hybrid')") if newer == "redis"
                        else (store.mongodb.store, "CHECKPOINT_MONGO_DATABASE"))
        refused(store, "2", 1, advice, where=side.describe())
        assert (redis_contents(redis_client), mongo_contents(mongo_db)) == before


class TestSQLiteLayout:
    def test_newer_file_refused_untouched(self, tmp_path):
        path = tmp_path / "checkpoints.sqlite3"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE checkpoints (checkpoint_id TEXT PRIMARY KEY)")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        db.close()
        before = path.read_bytes()
        refused(SQLiteCheckpointStore(path), str(SCHEMA_VERSION + 1), SCHEMA_VERSION,
                f"Point CHECKPOINT_DIR elsewhere, or move {path} away")
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints.sqlite3"]

    def test_fresh_file_is_stamped(self, tmp_path):
        store = SQLiteCheckpointStore(tmp_path / "checkpoints.sqlite3")
        store.open()
        try:
            assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        finally:
            store.close()


def to_layout_2(path):
    """Turn a file of this layout back into one the previous release wrote: one row a request,
    keyed by fingerprint, pending or processed, and no position in any request's meta."""
    import pickle

    from scrapy_checkpoint.extension import RECORD_META

    def unmarked(data):
        try:
            request = pickle.loads(data)
        except Exception:  # a test's own bytes
            return data
        request["meta"].pop(RECORD_META, None)
        return pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)

    db = sqlite3.connect(path, isolation_level=None)
    db.create_function("unmarked", 1, unmarked)
    db.executescript("""
        BEGIN;
        CREATE TABLE requests (
            checkpoint INTEGER NOT NULL, fingerprint BLOB NOT NULL, position INTEGER NOT NULL,
            url TEXT, request BLOB, processed INTEGER NOT NULL DEFAULT 0,
            start INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (checkpoint, fingerprint)
        ) WITHOUT ROWID;
        CREATE INDEX requests_pending ON requests (checkpoint, position) WHERE processed = 0;
        INSERT OR IGNORE INTO requests (checkpoint, fingerprint, position, url, request, start)
            SELECT checkpoint, fingerprint, position, url, unmarked(request), start FROM pending;
        INSERT OR REPLACE INTO requests (checkpoint, fingerprint, position, processed)
            SELECT checkpoint, fingerprint, 0, 1 FROM processed;
        DROP TABLE pending;
        DROP TABLE processed;
        PRAGMA user_version = 2;
        COMMIT;
    """)
    db.close()


class TestSQLiteMigration:
    def test_layout_2_file_is_migrated_whole(self, tmp_path):
        path = tmp_path / "checkpoints.sqlite3"
        store = SQLiteCheckpointStore(path)
        store.open()
        cp = new_checkpoint()
        store.create(cp)
        cid = cp.checkpoint_id
        store.apply(cid, batch(1, discovered=[discovered(1), discovered(2), discovered(3, start=True)],
                               processed=[fp(1)], items=[("Product", {"sku": "A1"})],
                               item_counts={"Product": 1}), TTL)
        store.close()
        to_layout_2(path)
        store = SQLiteCheckpointStore(path)
        store.open()
        try:
            assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert {r[0] for r in store.db.execute("SELECT name FROM sqlite_master")} >= {"pending", "processed"}
            assert "requests" not in {r[0] for r in store.db.execute("SELECT name FROM sqlite_master")}
            data = store.get(cid).pipeline_data
            assert (data.urls_discovered, data.urls_processed) == (3, 1)
            assert list(store.processed_fingerprints(cid)) == [fp(1)]
            assert store.pending_requests(cid, None, 10)[0] == [b"request-2", b"request-3"]
            assert set(store.pending_start_fingerprints(cid)) == {fp(3)}
            assert list(store.items(cid)) == [("Product", {"sku": "A1"})]
            # Restored, its meta holds no position: found by its fingerprint.
            store.apply(cid, batch(2, processed=[fp(2)], positions={}), TTL)
            # Restored, then superseded (processed already, or a twin recorded in this run).
            store.apply(cid, batch(3, superseded=[(-1, fp(3))]), TTL)
            data = store.get(cid).pipeline_data
            assert (data.urls_discovered, data.urls_processed) == (2, 2)
            assert store.pending_requests(cid, None, 10)[0] == []
            assert sorted(store.processed_fingerprints(cid)) == sorted([fp(1), fp(2)])
        finally:
            store.close()

    def test_a_failed_migration_leaves_layout_2(self, tmp_path, monkeypatch):
        path = tmp_path / "checkpoints.sqlite3"
        store = SQLiteCheckpointStore(path)
        store.open()
        cid = fill(store)
        store.close()
        to_layout_2(path)
        before = path.read_bytes()
        from scrapy_checkpoint.stores import sqlite as sqlite_store

        monkeypatch.setattr(sqlite_store, "_SCHEMA", sqlite_store._SCHEMA + "; CREATE TABLE broken (")
        with pytest.raises(sqlite3.OperationalError):
            SQLiteCheckpointStore(path).open()
        assert path.read_bytes() == before
        monkeypatch.undo()
        store = SQLiteCheckpointStore(path)
        store.open()
        try:
            readable(store, cid)
        finally:
            store.close()


def test_migration_steps_run_in_order_and_stamp_each(redis_url, redis_client, monkeypatch):
    """The place for the next change of layout: a step from each layout to the next, run at
    open() on a store of an older layout, each stamped as it is reached."""
    from scrapy_checkpoint.stores.redis import RedisCheckpointStore

    ran = []

    def step(n):
        def run(store, handle):
            ran.append((n, handle.get(f"{REDIS_PREFIX}:layout")))
        return run

    monkeypatch.setattr(RedisCheckpointStore, "layout", 3)
    monkeypatch.setattr(RedisCheckpointStore, "migrations", {1: step(1), 2: step(2)})
    redis_client.set(f"{REDIS_PREFIX}:checkpoints", b"an index of the version before the marker")
    store = RedisCheckpointStore(redis_url, REDIS_PREFIX)
    store.open()
    store.close()
    assert ran == [(1, None), (2, b"2")]
    assert redis_client.get(f"{REDIS_PREFIX}:layout") == b"3"
    # A layout no step leads from is refused.
    monkeypatch.setattr(RedisCheckpointStore, "layout", 4)
    redis_client.set(f"{REDIS_PREFIX}:layout", b"0")
    refused(RedisCheckpointStore(redis_url, REDIS_PREFIX), "0", 4)


# -- real processes ------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("store", ["redis", "mongodb"])
def test_command_prints_the_refusal_and_exits_1(tmp_path, store, redis_url, redis_client, mongo_uri_db, mongo_db):
    if store == "redis":
        extra = {"CHECKPOINT_REDIS_URL": redis_url}
        redis_client.set("checkpoint:layout", b"9")
        where = f"{redis_url} holds checkpoints"
    else:
        uri, database = mongo_uri_db
        extra = {"CHECKPOINT_MONGO_URI": uri, "CHECKPOINT_MONGO_DATABASE": database}
        mongo_db["checkpoint_layout"].insert_one({"_id": "layout", "layout": 9})
        where = f"(database {database}) holds checkpoints"
    run = scrapy_checkpoint(tmp_path, "list", extra=extra)
    line = run.failure()
    assert run.returncode == 1
    assert where in line and "(layout 9; this one reads layout 1)" in line, line


@pytest.mark.e2e
def test_crawl_on_a_refused_redis_store_ends_with_the_error(tmp_path, shop, redis_url, redis_client):
    """`scrapy crawl` on a Redis prefix of a newer layout: the crawl closes at once
    (checkpoint_error, exit 1), its log says why and what to do, the store is left as it was."""
    url, _, _ = shop
    redis_client.set("checkpoint:layout", b"2")
    redis_client.zadd("checkpoint:checkpoints", {"newer-checkpoint": float("inf")})
    before = redis_contents(redis_client)
    code, _, crawl_log = crawl(url, tmp_path, extra={"CHECKPOINT_REDIS_URL": redis_url})
    text = crawl_log.read_text()
    errors = [line for line in text.splitlines() if " ERROR: " in line]
    assert len(errors) == 1, text[-3000:]
    assert (f"{redis_url} holds checkpoints of another scrapy-checkpoint version (layout 2; this one "
            "reads layout 1), left as they are. Set CHECKPOINT_REDIS_PREFIX (now 'checkpoint') to another "
            "prefix, or use the scrapy-checkpoint version that wrote them.") in errors[0], errors
    assert "Traceback" not in text, text[-3000:]
    assert "'finish_reason': 'checkpoint_error'" in text and code == 1, text[-3000:]
    assert demo_support.count_lines(tmp_path / "items.jsonl") == 0
    assert redis_contents(redis_client) == before


@pytest.mark.e2e
def test_a_crawl_killed_under_the_previous_layout_resumes_after_the_upgrade(tmp_path):
    """`scrapy crawl` killed half way, its file turned into the previous release's (layout 2,
    no positions in the saved requests), then resumed: migrated at open, nothing lost or done
    twice, and no request of the old layout left pending at the end."""
    products = 600
    log = tmp_path / "shop.log"
    with demo_support.running_shop(log, products=products, latency=0.002) as url:
        _, killed, crawl_log = crawl(url, tmp_path, kill_when_items=products // 2)
        assert killed, crawl_log.read_text()[-3000:]
        path = tmp_path / "checkpoints" / "checkpoints.sqlite3"
        to_layout_2(path)
        code, killed, crawl_log = crawl(url, tmp_path, resume=True)
        assert (code, killed) == (0, False), crawl_log.read_text()[-3000:]
    assert "from layout 2 to layout 3" in crawl_log.read_text()
    summary = demo_support.summarize(tmp_path / "items.jsonl", log, products)
    assert summary["lost"] == 0 and summary["duplicates"] == 0, summary
    store = SQLiteCheckpointStore(path)
    store.open()
    try:
        (checkpoint,) = store.list_checkpoints()
        data = checkpoint.pipeline_data
        assert data.urls_processed == data.urls_discovered > products, data
        assert store.db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
    finally:
        store.close()
