"""The store contract of `scrapy query`'s documents (user queries, query sessions): one mixin, one subclass per backend."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError
from scrapy.settings import Settings

from scrapy_checkpoint.exceptions import StoreUnavailable
from scrapy_checkpoint.models import QuerySession, QuerySessionStatus, UserQuery, utcnow
from scrapy_checkpoint.settings import CheckpointSettings
from scrapy_checkpoint.stores.base import query_ttl
from scrapy_checkpoint.stores.sqlite import SCHEMA_VERSION

from . import new_checkpoint
from . import test_stores as stores  # the checkpoint contract's backends: their make_store fixtures

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
TTL = 3600.0


def query(n: int, user: str | None = "user-a", **fields) -> UserQuery:
    """A user query created *n* minutes after T0: a higher *n* is newer."""
    return UserQuery(query_id=f"q{n}", user_id=user, raw_query=f"red dress under ${n}",
                     parsed_intent={"product_type": "dress", "attributes": {"color": "red"},
                                    "price_range": {"max": n, "currency": "USD"}},
                     created_at=T0 + timedelta(minutes=n), **fields)


def session(n: int, query_id: str, **fields) -> QuerySession:
    when = T0 + timedelta(minutes=n)
    fields = {"checkpoint_ids": [f"cp{n}"], "sites_searched": ["shop.test"], "created_at": when,
              "updated_at": when, **fields}
    return QuerySession(session_id=f"s{n}", query_id=query_id, **fields)


def ids(documents) -> list[str]:
    return [getattr(d, "session_id", None) or d.query_id for d in documents]


class QueryStoreContract:
    """What every store does with user queries and query sessions. Subclasses provide the
    ``make_store`` fixture (taken from the checkpoint contract's)."""

    #: Seconds after which a document saved with a TTL of 0.05 s is surely expired.
    EXPIRED_AFTER = 0.2

    store = stores.StoreContract.store  # an open store from make_store, closed after the test

    def test_empty(self, store):
        assert store.get_user_query("q1") is None
        assert store.get_query_session("s1") is None
        assert list(store.list_user_queries()) == []
        assert list(store.list_user_queries("user-a", limit=5)) == []
        assert list(store.list_query_sessions()) == []
        assert list(store.list_query_sessions("q1")) == []
        assert store.delete_user_query("q1") is False

    def test_save_and_get(self, store):
        q = query(1)
        saved = store.save_user_query(q)
        assert saved == q and saved.expires_at is None  # ttl 0: kept
        assert store.get_user_query("q1") == q
        s = session(2, "q1", results={"shop.test": {"items": 3}})
        assert store.save_query_session(s) == s
        assert store.get_query_session("s2") == s

    def test_save_replaces(self, store):
        store.save_query_session(session(1, "q1", status="running"))
        done = session(1, "q1", status="completed", results={"shop.test": {"items": 2}})
        done.completed_at = done.updated_at = T0 + timedelta(hours=1)
        store.save_query_session(done)
        assert store.get_query_session("s1") == done
        assert ids(store.list_query_sessions("q1")) == ["s1"]
        assert store.get_query_session("s1").status is QuerySessionStatus.COMPLETED

    def test_save_takes_a_dict_and_validates_first(self, store):
        saved = store.save_user_query({"query_id": "q9", "raw_query": "shoes"})
        assert store.get_user_query("q9") == saved
        with pytest.raises(ValidationError):
            store.save_user_query({"query_id": "q1", "raw_query": ""})
        with pytest.raises(ValidationError):
            store.save_query_session(QuerySession.model_construct(session_id="s1", query_id=5, status="lost"))
        assert store.get_user_query("q1") is None and store.get_query_session("s1") is None

    def test_lists_newest_first_and_by_owner(self, store):
        for n, user in [(3, "user-a"), (1, "user-b"), (4, None), (2, "user-a"), (5, "user-b")]:
            store.save_user_query(query(n, user))
        assert ids(store.list_user_queries()) == ["q5", "q4", "q3", "q2", "q1"]
        assert ids(store.list_user_queries(limit=2)) == ["q5", "q4"]
        assert ids(store.list_user_queries("user-a")) == ["q3", "q2"]
        assert ids(store.list_user_queries("user-b", limit=1)) == ["q5"]
        assert ids(store.list_user_queries("user-c")) == []
        assert ids(store.list_user_queries(limit=0)) == []
        for n, q in [(7, "q1"), (6, "q2"), (9, "q1"), (8, "q3")]:
            store.save_query_session(session(n, q))
        assert ids(store.list_query_sessions()) == ["s9", "s8", "s7", "s6"]
        assert ids(store.list_query_sessions("q1")) == ["s9", "s7"]

    def test_resaved_with_another_owner_moves(self, store):
        store.save_user_query(query(1, "user-a"))
        store.save_user_query(query(1, "user-b"))
        assert ids(store.list_user_queries("user-a")) == []
        assert ids(store.list_user_queries("user-b")) == ["q1"]
        store.save_query_session(session(2, "q1"))
        store.save_query_session(session(2, "q9"))
        assert ids(store.list_query_sessions("q1")) == []
        assert ids(store.list_query_sessions("q9")) == ["s2"]

    def test_delete_takes_the_sessions(self, store):
        store.save_user_query(query(1))
        store.save_user_query(query(2))
        for n, q in [(3, "q1"), (4, "q1"), (5, "q2")]:
            store.save_query_session(session(n, q))
        assert store.delete_user_query("q1") is True
        assert store.get_user_query("q1") is None
        assert store.get_query_session("s3") is None and store.get_query_session("s4") is None
        assert ids(store.list_user_queries()) == ["q2"]
        assert ids(store.list_user_queries("user-a")) == ["q2"]
        assert ids(store.list_query_sessions()) == ["s5"]
        assert ids(store.list_query_sessions("q1")) == []
        assert store.delete_user_query("q1") is False
        # Sessions of a query the store does not hold (any more) go too.
        store.save_query_session(session(6, "q7"))
        assert store.delete_user_query("q7") is True
        assert store.get_query_session("s6") is None

    def test_ttl_sets_expiry_and_zero_keeps(self, store):
        before = utcnow()
        saved = store.save_user_query(query(1), TTL)
        assert before + timedelta(seconds=TTL) <= saved.expires_at <= utcnow() + timedelta(seconds=TTL)
        assert store.get_user_query("q1") == saved
        kept = store.save_user_query(saved, 0)  # archived
        assert kept.expires_at is None and store.get_user_query("q1").expires_at is None
        s = store.save_query_session(session(2, "q1"), TTL)
        assert store.get_query_session("s2").expires_at == s.expires_at is not None

    def test_expired_are_gone(self, store):
        store.save_user_query(query(1), 0.05)
        store.save_user_query(query(2), TTL)
        store.save_query_session(session(3, "q1"), 0.05)
        store.save_query_session(session(4, "q2"), 0)
        time.sleep(self.EXPIRED_AFTER)
        assert store.get_user_query("q1") is None and store.get_query_session("s3") is None
        assert ids(store.list_user_queries()) == ["q2"]
        assert ids(store.list_user_queries("user-a", limit=5)) == ["q2"]
        assert ids(store.list_query_sessions()) == ["s4"]
        assert ids(store.list_query_sessions("q1")) == []
        store.save_user_query(query(5), TTL)  # a later save, after the expiry, is fine
        assert ids(store.list_user_queries()) == ["q5", "q2"]

    def test_close_and_reopen_keeps_them(self, make_store):
        store = make_store()
        store.open()
        q = store.save_user_query(query(1), TTL)
        s = store.save_query_session(session(2, "q1"), 0)
        store.close()
        store = make_store()
        store.open()
        try:
            assert store.get_user_query("q1") == q
            assert store.get_query_session("s2") == s
            assert ids(store.list_user_queries("user-a")) == ["q1"]
            assert ids(store.list_query_sessions("q1")) == ["s2"]
        finally:
            store.close()

    def test_checkpoints_untouched(self, store):
        cp = new_checkpoint()
        store.create(cp)
        store.save_user_query(query(1))
        store.save_query_session(session(2, "q1", checkpoint_ids=[cp.checkpoint_id]))
        assert [c.checkpoint_id for c in store.list_checkpoints()] == [cp.checkpoint_id]
        store.delete_user_query("q1")
        assert store.get(cp.checkpoint_id) == cp
        assert store.delete(cp.checkpoint_id)
        store.save_user_query(query(3))
        assert ids(store.list_user_queries()) == ["q3"]


class TestSQLiteQueries(QueryStoreContract):
    make_store = stores.TestSQLiteStore.make_store

    def test_old_file_gains_the_tables(self, tmp_path, make_store):
        """A file made before the query tables existed (same layout otherwise) opens, keeps its
        checkpoints, and gains them."""
        path = tmp_path / "checkpoints.sqlite3"
        store = make_store()
        store.open()
        cp = new_checkpoint()
        store.create(cp)
        store.close()
        with sqlite3.connect(path) as db:
            db.executescript("DROP TABLE user_queries; DROP TABLE query_sessions;")
        store = make_store()
        store.open()
        try:
            assert store.get(cp.checkpoint_id) == cp
            assert store.get_user_query("q1") is None
            store.save_user_query(query(1))
            assert ids(store.list_user_queries("user-a")) == ["q1"]
        finally:
            store.close()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"checkpoints", "pending", "processed", "items", "user_queries", "query_sessions"} <= tables

    def test_expired_purged_on_open(self, make_store, tmp_path):
        store = make_store()
        store.open()
        store.save_user_query(query(1), 0.01)
        store.save_query_session(session(2, "q1"), 0.01)
        store.save_user_query(query(3), 0)
        store.close()
        time.sleep(0.05)
        make_store().open()  # the purge happens here, like the checkpoints'
        with sqlite3.connect(tmp_path / "checkpoints.sqlite3") as db:
            assert db.execute("SELECT query_id FROM user_queries").fetchall() == [("q3",)]
            assert db.execute("SELECT COUNT(*) FROM query_sessions").fetchone() == (0,)

    def test_unreadable_document_left_out_of_the_list(self, store, caplog):
        store.save_user_query(query(1))
        store.save_user_query(query(2))
        store.db.execute("UPDATE user_queries SET record = '{' WHERE query_id = 'q1'")
        assert ids(store.list_user_queries()) == ["q2"]
        assert "q1" in caplog.text and "Left out of the list" in caplog.text
        with pytest.raises(ValidationError):
            store.get_user_query("q1")


class TestRedisQueries(QueryStoreContract):
    make_store = stores.TestRedisStore.make_store
    PREFIX = stores.TestRedisStore.PREFIX

    @pytest.fixture
    def client(self, redis_client):
        return redis_client

    def test_keys_under_prefix_and_expiring(self, store, client):
        store.save_user_query(query(1), TTL)
        store.save_query_session(session(2, "q1"), TTL)
        store.save_user_query(query(3, None), 0)
        ttls = {key.decode(): client.pttl(key) for key in client.scan_iter()}
        assert all(key.startswith(f"{self.PREFIX}:") for key in ttls)
        p = self.PREFIX
        for key in (f"{p}:query:q1", f"{p}:session:s2", f"{p}:user-queries:user-a", f"{p}:query-sessions:q1",
                    f"{p}:sessions", f"{p}:sessions:expiry"):
            assert 0 < ttls[key] <= TTL * 1000, key
        # A document kept for ever, and the indexes it is in.
        for key in (f"{p}:query:q3", f"{p}:queries", f"{p}:queries:expiry"):
            assert ttls[key] == -1, key

    def test_expired_entries_leave_the_indexes(self, store, client):
        p = self.PREFIX
        store.save_user_query(query(0, "user-b"), 0)  # keeps the index of all
        store.save_user_query(query(1), TTL)
        store.save_user_query(query(2), 0.05)
        time.sleep(0.15)
        assert client.zcard(f"{p}:queries") == 3  # until a save, or a read, meets them
        store.save_user_query(query(3), TTL)
        assert client.zrange(f"{p}:queries", 0, -1) == [b"q0", b"q1", b"q3"]
        assert client.zrange(f"{p}:queries:expiry", 0, -1) == [b"q1", b"q3", b"q0"]
        assert client.zcard(f"{p}:user-queries:user-a") == 3
        assert ids(store.list_user_queries("user-a")) == ["q3", "q1"]
        assert client.zrange(f"{p}:user-queries:user-a", 0, -1) == [b"q1", b"q3"]
        # An index goes with the last of its documents.
        store.save_user_query(query(4, "user-c"), 0.05)
        time.sleep(0.15)
        assert not client.exists(f"{p}:user-queries:user-c")

    def test_delete_leaves_no_key(self, store, client):
        store.save_user_query(query(1), TTL)
        store.save_query_session(session(2, "q1"), TTL)
        store.delete_user_query("q1")
        layout = f"{store.prefix}:layout".encode()  # the store's layout marker stays
        assert all(client.zcard(k) == 0 for k in client.scan_iter() if k != layout)

    def test_lists_longer_than_a_page(self, store, monkeypatch):
        monkeypatch.setattr("scrapy_checkpoint.stores.redis._PAGE", 3)
        for n in range(1, 11):
            store.save_user_query(query(n), 0.05 if n % 3 == 0 else TTL)
        time.sleep(0.15)
        expected = [f"q{n}" for n in range(10, 0, -1) if n % 3]
        assert ids(store.list_user_queries("user-a")) == expected
        assert ids(store.list_user_queries(limit=4)) == expected[:4]


class TestMongoDBQueries(QueryStoreContract):
    make_store = stores.TestMongoDBStore.make_store
    EXPIRED_AFTER = 1.2  # nx-27017 compares dates to the second

    def test_indexes(self, store):
        for name, fields in [("user_queries", [("created_at",), ("user_id", "created_at"), ("expires_at",)]),
                             ("query_sessions", [("created_at",), ("query_id", "created_at"), ("expires_at",)])]:
            # nx-27017 renames indexes and drops key directions: compare fields and options.
            found = {tuple(f for f, _ in spec["key"]): spec for spec in store.db[name].index_information().values()}
            for key in fields:
                assert key in found, f"{name} lacks an index on {key}"
            assert found[("expires_at",)].get("expireAfterSeconds") == 0, name

    def test_documents_match_validators(self, store):
        from scrapy_checkpoint.stores.mongodb import SCHEMAS

        store.save_user_query(query(1), TTL)
        store.save_user_query(query(2, None), 0)
        done = session(3, "q1", status="completed", completed_at=T0)
        store.save_query_session(done, TTL)
        store.save_query_session(session(4, "q1"), 0)
        for name in ("user_queries", "query_sessions"):
            documents = list(store.db[name].find())
            assert len(documents) == 2
            for doc in documents:
                assert stores._schema_errors(doc, SCHEMAS[name]) == [], name
        # Documents stored before expires_at and completed_at existed stay valid.
        old = {k: v for k, v in store.db["query_sessions"].find_one({"session_id": "s4"}).items()
               if k not in ("expires_at", "completed_at")}
        assert stores._schema_errors(old, SCHEMAS["query_sessions"]) == []

    def test_document_without_expiry_is_kept(self, store):
        """A document written before expires_at existed has none: it never expires."""
        store.db["user_queries"].insert_one({k: v for k, v in query(1).model_dump().items() if k != "expires_at"})
        assert store.get_user_query("q1") == query(1)
        assert ids(store.list_user_queries("user-a")) == ["q1"]

    def test_expired_purged_on_open(self, make_store):
        store = make_store()
        store.open()
        store.save_user_query(query(1), 0.01)
        store.save_query_session(session(2, "q1"), 0.01)
        store.save_user_query(query(3), 0)
        time.sleep(self.EXPIRED_AFTER)
        store.close()
        store = make_store()
        store.open()  # the TTL monitor runs once a minute (nx-27017 has none)
        try:
            assert store.db["user_queries"].distinct("query_id") == ["q3"]
            assert store.db["query_sessions"].count_documents({}) == 0
        finally:
            store.close()


class TestHybridQueries(QueryStoreContract):
    make_store = stores.TestHybridStore.make_store
    EXPIRED_AFTER = TestMongoDBQueries.EXPIRED_AFTER

    def test_saved_to_both(self, store):
        q = store.save_user_query(query(1), TTL)
        s = store.save_query_session(session(2, "q1"), TTL)
        for side in (store.redis.store, store.mongodb.store):
            assert side.get_user_query("q1") == q
            assert side.get_query_session("s2") == s

    def test_reads_the_newer_copy_and_merges_lists(self, store):
        store.save_query_session(session(1, "q1", status="running"))
        newer = session(1, "q1", status="completed")
        newer.updated_at = newer.completed_at = T0 + timedelta(hours=1)
        store.redis.store.save_query_session(newer)  # as if MongoDB had missed the save
        assert store.get_query_session("s1") == newer
        assert list(store.list_query_sessions("q1")) == [newer]
        store.mongodb.store.save_query_session(session(2, "q1"))  # as if Redis had missed it
        store.redis.store.save_user_query(query(3))
        assert ids(store.list_query_sessions()) == ["s2", "s1"]
        assert store.get_query_session("s2") is not None
        assert ids(store.list_user_queries()) == ["q3"]

    def test_delete_from_both(self, store):
        store.save_user_query(query(1))
        store.save_query_session(session(2, "q1"))
        assert store.delete_user_query("q1") is True
        for side in (store.redis.store, store.mongodb.store):
            assert side.get_user_query("q1") is None and side.get_query_session("s2") is None
        assert store.delete_user_query("q1") is False


class TestHybridQueryFaults:
    """Real servers stopped under a hybrid store: the other store goes on alone."""

    servers = stores.TestHybridFaults.servers
    make_hybrid = stores.TestHybridFaults.make_hybrid

    def test_redis_down(self, make_hybrid, servers, caplog):
        redis_server, _ = servers
        store = make_hybrid()
        redis_server.stop()
        q = store.save_user_query(query(1), TTL)
        s = store.save_query_session(session(2, "q1"), TTL)
        assert "UserQuery q1 was not saved to Redis" in caplog.text
        assert store.get_user_query("q1") == q and store.get_query_session("s2") == s
        assert ids(store.list_user_queries("user-a")) == ["q1"]
        redis_server.start()
        assert store.get_user_query("q1") == q  # Redis lacks it; MongoDB's answer is sure
        assert ids(store.list_query_sessions("q1")) == ["s2"]
        assert store.delete_user_query("q1") is True

    def test_mongodb_down(self, make_hybrid, servers):
        redis_server, mongo_server = servers
        store = make_hybrid()
        mongo_server.stop()
        q = store.save_user_query(query(1), TTL)
        assert store.get_user_query("q1") == q  # Redis holds it
        with pytest.raises(StoreUnavailable):
            store.get_user_query("q2")  # Redis's "none" is not sure
        with pytest.raises(StoreUnavailable):
            list(store.list_user_queries())  # Redis alone may have lost some
        with pytest.raises(StoreUnavailable, match="User query q1 may still be in MongoDB"):
            store.delete_user_query("q1")
        redis_server.stop()
        with pytest.raises(StoreUnavailable, match="Neither store"):
            store.save_user_query(query(3))


def test_query_ttl_follows_the_checkpoints():
    settings = CheckpointSettings.from_settings(Settings({
        "CHECKPOINT_ENABLED": True, "CHECKPOINT_TTL": 60, "CHECKPOINT_ARCHIVE_TTL": 0}))
    assert query_ttl(settings, "completed") == 0  # archived: kept for ever
    for status in ("pending", "running", QuerySessionStatus.FAILED):
        assert query_ttl(settings, status) == 60
    with pytest.raises(ValueError):
        query_ttl(settings, "lost")
