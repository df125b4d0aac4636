"""The store contract: one mixin of behaviours, one subclass per backend."""

from __future__ import annotations

import importlib
import logging
import re
import socket
import sqlite3
import sys
import threading
import time
import traceback
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError
from scrapy.settings import Settings

from scrapy_checkpoint.exceptions import CheckpointError, CorruptCheckpointError, StoreUnavailable
from scrapy_checkpoint.models import POSITION_BITS, RUN_HISTORY, CheckpointStatus, QuerySession, UserQuery, utcnow
from scrapy_checkpoint.settings import CheckpointSettings
from scrapy_checkpoint.stores import SQLiteCheckpointStore, store_class

from . import batch, discovered, fp, new_checkpoint, run
from .redis_server import RedisServer, find_redis_server
from .server_process import free_port

TTL = 3600.0


class StoreContract:
    """Behaviours every store must have. Subclasses provide the ``make_store`` fixture."""

    @pytest.fixture
    def store(self, make_store):
        store = make_store()
        store.open()
        yield store
        store.close()

    def test_empty_store(self, store):
        assert store.get("no-such-id") is None
        assert store.find_resumable("products", "shop.test", "product_catalog") is None
        assert list(store.list_checkpoints()) == []
        assert store.delete("no-such-id") is False

    def test_create_and_get(self, store):
        cp = new_checkpoint()
        store.create(cp)
        got = store.get(cp.checkpoint_id)
        assert got == cp

    def test_apply_counts_and_pending(self, store):
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(i) for i in range(10)]), TTL)
        store.apply(
            cp.checkpoint_id,
            batch(2, processed=[fp(i) for i in range(4)], item_counts={"Product": 3},
                  pagination={"http://shop.test/c/a": 3}, current_page=3, pipeline_step=2,
                  state={"seen": 4}),
            TTL,
        )
        got = store.get(cp.checkpoint_id)
        data = got.pipeline_data
        assert (data.urls_discovered, data.urls_processed) == (10, 4)
        assert data.extraction_results.items_scraped == 3
        assert data.extraction_results.by_type == {"Product": 3}
        assert data.pagination_state == {"http://shop.test/c/a": 3}
        assert data.current_page == 3
        assert data.state == {"seen": 4}
        assert got.pipeline_step == 2
        assert got.seq == 2
        assert set(store.processed_fingerprints(cp.checkpoint_id)) == {fp(i) for i in range(4)}
        pending, _ = store.pending_requests(cp.checkpoint_id, None, 100)
        assert pending == [f"request-{i}".encode() for i in range(4, 10)]

    def test_outputs_saved_with_their_batch(self, store):
        """A feed's state is part of the batch: created with the record, replaced by a batch
        that carries one, kept by a batch that does not."""
        feed = {"feed": "ftp://user:***@host/a.b/%(batch_id)d.csv", "length": 10, "started": True,
                "exporter": {"fields_to_export": {"pairs": [["a.b", "A"]]}, "first_item": False}}
        cp = new_checkpoint()
        cp.pipeline_data.outputs = [feed]
        store.create(cp)
        assert store.get(cp.checkpoint_id).pipeline_data.outputs == [feed]
        later = {**feed, "length": 99}
        store.apply(cp.checkpoint_id, batch(1, processed=[fp(1)], outputs=[later]), TTL)
        assert store.get(cp.checkpoint_id).pipeline_data.outputs == [later]
        store.apply(cp.checkpoint_id, batch(2, processed=[fp(2)]), TTL)
        assert store.get(cp.checkpoint_id).pipeline_data.outputs == [later]

    def test_runs_saved_by_number(self, store):
        """A batch carries its run as it stands: it replaces the run of its number, keeps the
        others, and the oldest go beyond RUN_HISTORY."""
        cp = new_checkpoint()
        first = run(1)
        cp.runs = [first]
        store.create(cp)
        assert store.get(cp.checkpoint_id).runs == [first]
        ended = first.model_copy(update={"pages": 5, "items": 3, "ended_at": utcnow(),
                                         "close_reason": "shutdown", "status": CheckpointStatus.ACTIVE})
        store.apply(cp.checkpoint_id, batch(1, processed=[fp(1)], run=ended), TTL)
        resumed = run(2, resumed=True, resumed_from_seq=1, pending_at_resume=9, resume_seconds=0.25)
        store.apply(cp.checkpoint_id, batch(2, run=resumed), TTL)
        store.apply(cp.checkpoint_id, batch(3, processed=[fp(2)]), TTL)
        assert store.get(cp.checkpoint_id).runs == [ended, resumed]
        for seq in range(4, RUN_HISTORY + 6):
            store.apply(cp.checkpoint_id, batch(seq, run=run(seq - 1)), TTL)
        runs = store.get(cp.checkpoint_id).runs
        assert [r.number for r in runs] == list(range(5, RUN_HISTORY + 5))

    def test_pending_pages_in_discovery_order(self, store):
        cp = new_checkpoint()
        store.create(cp)
        order = [7, 3, 9, 1, 5]
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(i) for i in order]), TTL)
        page, cursor = store.pending_requests(cp.checkpoint_id, None, 2)
        page2, cursor = store.pending_requests(cp.checkpoint_id, cursor, 2)
        page3, cursor = store.pending_requests(cp.checkpoint_id, cursor, 2)
        page4, _ = store.pending_requests(cp.checkpoint_id, cursor, 2)
        assert page + page2 + page3 == [f"request-{i}".encode() for i in order]
        assert page4 == []

    def test_rediscovery_is_ignored(self, store):
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1)], processed=[fp(1)]), TTL)
        store.apply(cp.checkpoint_id, batch(2, discovered=[discovered(1), discovered(2)]), TTL)
        data = store.get(cp.checkpoint_id).pipeline_data
        assert (data.urls_discovered, data.urls_processed) == (2, 1)
        pending, _ = store.pending_requests(cp.checkpoint_id, None, 10)
        assert pending == [b"request-2"]

    def test_processed_without_record_is_remembered(self, store):
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, processed=[fp(42)]), TTL)
        assert list(store.processed_fingerprints(cp.checkpoint_id)) == [fp(42)]
        assert store.pending_requests(cp.checkpoint_id, None, 10)[0] == []

    def test_batch_applied_once(self, store):
        cp = new_checkpoint()
        store.create(cp)
        b = batch(1, discovered=[discovered(1)], item_counts={"Product": 1})
        store.apply(cp.checkpoint_id, b, TTL)
        store.apply(cp.checkpoint_id, b, TTL)
        data = store.get(cp.checkpoint_id).pipeline_data
        assert data.extraction_results.items_scraped == 1
        assert data.urls_discovered == 1

    def test_pending_start_fingerprints(self, store):
        cp = new_checkpoint()
        store.create(cp)
        store.apply(
            cp.checkpoint_id,
            batch(1, discovered=[discovered(1, start=True), discovered(2, start=True), discovered(3)],
                  processed=[fp(2)]),
            TTL,
        )
        assert set(store.pending_start_fingerprints(cp.checkpoint_id)) == {fp(1)}

    def test_find_resumable_newest_active_or_failed(self, store):
        old = new_checkpoint()
        store.create(old)
        store.apply(old.checkpoint_id, batch(1), TTL)
        new = new_checkpoint()
        store.create(new)
        store.apply(new.checkpoint_id, batch(1), TTL)
        assert store.find_resumable("products", "shop.test", "product_catalog").checkpoint_id == new.checkpoint_id
        store.apply(new.checkpoint_id, batch(2, status=CheckpointStatus.COMPLETED), TTL)
        assert store.find_resumable("products", "shop.test", "product_catalog").checkpoint_id == old.checkpoint_id
        store.apply(old.checkpoint_id, batch(2, status=CheckpointStatus.FAILED), TTL)
        assert store.find_resumable("products", "shop.test", "product_catalog").checkpoint_id == old.checkpoint_id
        assert store.find_resumable("products", "shop.test", "product_detail") is None
        assert store.find_resumable("other", "shop.test", "product_catalog") is None

    def test_items_stored(self, store):
        cp = new_checkpoint()
        store.create(cp)
        items = [("Product", {"sku": "A1", "price": 9.5}), ("Review", {"stars": 4})]
        store.apply(cp.checkpoint_id, batch(1, items=items, item_counts={"Product": 1, "Review": 1}), TTL)
        assert list(store.items(cp.checkpoint_id)) == items

    def test_list_newest_first_with_each_filter(self, store):
        made = {}
        for name, fields in [("a", {}), ("b", {"spider": "reviews"}), ("c", {"site_domain": "other.test"}),
                             ("d", {"job_type": "product_detail"}), ("e", {})]:
            cp = new_checkpoint(**fields)
            store.create(cp)
            made[name] = cp.checkpoint_id
            time.sleep(0.002)  # updated_at is kept to the millisecond
        a, b, c, d, e = made.values()
        store.apply(a, batch(1, discovered=[discovered(1)], status=CheckpointStatus.COMPLETED), TTL)
        time.sleep(0.002)
        store.apply(e, batch(1, status=CheckpointStatus.FAILED), TTL)

        def ids(**filters):
            return [checkpoint.checkpoint_id for checkpoint in store.list_checkpoints(**filters)]

        assert ids() == [e, a, d, c, b]
        assert ids(spider="reviews") == [b]
        assert ids(site_domain="other.test") == [c]
        assert ids(job_type="product_detail") == [d]
        assert ids(status="completed") == [a]
        assert ids(status=CheckpointStatus.FAILED) == [e]
        assert ids(status="active") == [d, c, b]
        assert ids(status=["failed", CheckpointStatus.COMPLETED]) == [e, a]
        assert ids(spider="products", site_domain="shop.test", job_type="product_catalog") == [e, a]
        assert ids(spider="products", site_domain="shop.test", job_type="product_catalog", status="active") == []
        assert ids(spider="nobody") == []
        (listed,) = store.list_checkpoints(status="completed")
        assert listed == store.get(a)
        assert listed.pipeline_data.urls_discovered == 1
        with pytest.raises(ValueError, match="lost"):
            list(store.list_checkpoints(status="lost"))

    def test_delete_removes_everything(self, store):
        old, new = new_checkpoint(), new_checkpoint()
        items = [("Product", {"sku": "A1"})]
        for cp in (old, new):
            store.create(cp)
            store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(i, start=i == 0) for i in range(4)],
                                                processed=[fp(1), fp(9)], items=items,
                                                item_counts={"Product": 1}), TTL)
            time.sleep(0.002)
        cid = new.checkpoint_id
        assert store.find_resumable("products", "shop.test", "product_catalog").checkpoint_id == cid
        assert store.delete(cid) is True
        assert store.get(cid) is None
        assert list(store.processed_fingerprints(cid)) == []
        assert list(store.pending_start_fingerprints(cid)) == []
        assert store.pending_requests(cid, None, 10)[0] == []
        assert list(store.items(cid)) == []
        assert [c.checkpoint_id for c in store.list_checkpoints()] == [old.checkpoint_id]
        assert store.find_resumable("products", "shop.test", "product_catalog").checkpoint_id == old.checkpoint_id
        assert store.delete(cid) is False
        with pytest.raises(KeyError):
            store.apply(cid, batch(2, processed=[fp(2)]), TTL)
        # The other checkpoint is whole.
        kept = old.checkpoint_id
        assert store.get(kept).pipeline_data.urls_processed == 2
        assert store.pending_requests(kept, None, 10)[0] == [b"request-0", b"request-2", b"request-3"]
        assert set(store.pending_start_fingerprints(kept)) == {fp(0)}
        assert list(store.items(kept)) == items
        assert store.delete(kept) is True
        assert store.find_resumable("products", "shop.test", "product_catalog") is None
        assert list(store.list_checkpoints()) == []

    def test_deleted_checkpoint_can_be_written_again(self, store):
        """A crawl still running a deleted checkpoint writes it again (the extension does
        on KeyError): it must start clean, without the old rows."""
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1)], items=[("Product", {})],
                                            item_counts={"Product": 1}), TTL)
        store.delete(cp.checkpoint_id)
        store.create(new_checkpoint(checkpoint_id=cp.checkpoint_id))
        store.apply(cp.checkpoint_id, batch(2, discovered=[discovered(2)]), TTL)
        data = store.get(cp.checkpoint_id).pipeline_data
        assert (data.urls_discovered, data.extraction_results.items_scraped) == (1, 0)
        assert store.pending_requests(cp.checkpoint_id, None, 10)[0] == [b"request-2"]
        assert list(store.items(cp.checkpoint_id)) == []

    def test_close_and_reopen_keeps_state(self, make_store):
        store = make_store()
        store.open()
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1), discovered(2)], processed=[fp(1)]), TTL)
        store.close()
        reopened = make_store()
        reopened.open()
        try:
            got = reopened.get(cp.checkpoint_id)
            assert got.pipeline_data.urls_processed == 1
            assert reopened.pending_requests(cp.checkpoint_id, None, 10)[0] == [b"request-2"]
            assert list(reopened.processed_fingerprints(cp.checkpoint_id)) == [fp(1)]
        finally:
            reopened.close()

    def test_concurrent_writers(self, make_store):
        """Two stores (two crawls) writing different checkpoints at once keep both intact."""
        stores = [make_store(), make_store()]
        for s in stores:
            s.open()
        cps = [new_checkpoint(), new_checkpoint()]
        for s, cp in zip(stores, cps):
            s.create(cp)

        def write(s, cp, offset):
            for seq in range(1, 21):
                base = offset + seq * 10
                s.apply(cp.checkpoint_id, batch(seq, discovered=[discovered(base + i) for i in range(10)],
                                                processed=[fp(base)]), TTL)

        threads = [threading.Thread(target=write, args=(s, cp, k * 100_000))
                   for k, (s, cp) in enumerate(zip(stores, cps))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            for cp in cps:
                data = stores[0].get(cp.checkpoint_id).pipeline_data
                assert (data.urls_discovered, data.urls_processed) == (200, 20)
        finally:
            for s in stores:
                s.close()


class SharedWriters:
    """Batches of several scrapy-redis workers writing one checkpoint: each numbers its own
    from 1 and has its own feeds and spider state (stores that hold such a checkpoint)."""

    def test_batches_of_workers_sharing_a_checkpoint_all_count(self, store):
        checkpoint = new_checkpoint(checkpoint_id="a", runs=[run(1)])
        store.create(checkpoint)
        # Another shared checkpoint beside it, whose batches must not land in this one.
        store.create(new_checkpoint(checkpoint_id="b"))
        store.apply("b", batch(1, writer="w1.host:7", discovered=[discovered(9)]), TTL)
        # Both apply, a repeat of either does not; a worker name may hold dots (a host name).
        store.apply("a", batch(1, writer="w1.host:7", discovered=[discovered(1), discovered(2)],
                               item_counts={"Item": 1}, items=[("Item", {"n": 1})],
                               outputs=[{"path": "one.jsonl", "length": 10}], state={"seen": 1}), TTL)
        store.apply("a", batch(1, writer="w2", discovered=[discovered(3)], processed=[fp(1)],
                               item_counts={"Item": 2}, items=[("Item", {"n": 2}), ("Item", {"n": 3})],
                               outputs=[{"path": "two.jsonl", "length": 20}], state={"other": 2}), TTL)
        store.apply("a", batch(1, writer="w2", processed=[fp(2)]), TTL)
        store.apply("a", batch(2, writer="w1.host:7", processed=[fp(2)], run=run(1, pages=3)), TTL)
        got = store.get("a")
        data = got.pipeline_data
        assert (data.urls_discovered, data.urls_processed, data.extraction_results.items_scraped) == (3, 2, 3)
        assert got.seq == 3  # batches applied, of all workers
        assert sorted((o["worker"], o["path"], o["length"]) for o in data.outputs) == [
            ("w1.host:7", "one.jsonl", 10), ("w2", "two.jsonl", 20)]
        assert data.state == {"seen": 1, "other": 2}
        assert sorted(item["n"] for _, item in store.items("a")) == [1, 2, 3]
        assert list(store.processed_fingerprints("a")) != [] and set(store.processed_fingerprints("a")) == {
            fp(1), fp(2)}
        assert [r.pages for r in got.runs] == [3]
        # A worker that took a dead one's feeds over drops the dead one's saved feed state.
        store.apply("a", batch(1, writer="w3", outputs=[{"path": "two.jsonl", "length": 25}],
                               took_over=["w2"]), TTL)
        assert sorted((o["worker"], o["length"]) for o in store.get("a").pipeline_data.outputs) == [
            ("w1.host:7", 10), ("w3", 25)]
        assert sorted(c.checkpoint_id for c in store.list_checkpoints()) == ["a", "b"]
        other = store.get("b")
        assert (other.seq, other.pipeline_data.urls_discovered, other.pipeline_data.urls_processed) == (1, 1, 0)
        # A crawl on one machine resuming it alone numbers its batches after the record's seq.
        seq = store.get("a").seq
        store.apply("a", batch(seq + 1, processed=[fp(3)]), TTL)
        for _ in range(2):  # the second time, a retried flush: already applied
            store.apply("a", batch(seq + 2, items=[("Item", {"n": 4})], item_counts={"Item": 1}), TTL)
        got = store.get("a")
        assert (got.seq, got.pipeline_data.urls_processed, got.pipeline_data.extraction_results.items_scraped) == (
            seq + 2, 3, 4)
        assert sorted(item["n"] for _, item in store.items("a")) == [1, 2, 3, 4]
        if store.shared:
            assert store.next_run("a") == 2 and store.next_run("a") == 3  # run 1 is the creator's


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path):
        return lambda: SQLiteCheckpointStore(tmp_path / "checkpoints.sqlite3")

    def test_rediscovery_is_ignored(self, store):
        """Nothing is keyed by fingerprint: a URL recorded twice (a twin, found by a resumed
        crawl before its restored record) is pending twice until the extension says which
        record stands (Batch.superseded), and counted once."""
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1), discovered(2)]), TTL)
        store.apply(cp.checkpoint_id, batch(2, discovered=[discovered(1)]), TTL)
        assert store.pending_requests(cp.checkpoint_id, None, 10)[0] == [b"request-1", b"request-2", b"request-1"]
        store.apply(cp.checkpoint_id, batch(3, superseded=[(1 << POSITION_BITS, fp(1))]), TTL)
        store.apply(cp.checkpoint_id, batch(4, processed=[fp(1)], positions={fp(1): 2 << POSITION_BITS}), TTL)
        data = store.get(cp.checkpoint_id).pipeline_data
        assert (data.urls_discovered, data.urls_processed) == (2, 1)
        assert store.pending_requests(cp.checkpoint_id, None, 10)[0] == [b"request-2"]
        assert list(store.processed_fingerprints(cp.checkpoint_id)) == [fp(1)]

    def test_a_processed_mark_deletes_only_the_record_it_names(self, store):
        """A position copied into another request's meta (a request made with meta=response.meta)
        names another fingerprint's record: nothing is deleted by it."""
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1), discovered(2)]), TTL)
        store.apply(cp.checkpoint_id, batch(2, processed=[fp(3)], positions={fp(3): 1 << POSITION_BITS}), TTL)
        assert store.pending_requests(cp.checkpoint_id, None, 10)[0] == [b"request-1", b"request-2"]
        store.apply(cp.checkpoint_id, batch(3, processed=[fp(2), fp(2)]), TTL)  # a repeat counts once
        data = store.get(cp.checkpoint_id).pipeline_data
        assert (data.urls_discovered, data.urls_processed) == (2, 1)
        assert store.pending_requests(cp.checkpoint_id, None, 10)[0] == [b"request-1"]

    def test_items_read_by_pages(self, store, monkeypatch):
        from scrapy_checkpoint.stores import sqlite

        monkeypatch.setattr(sqlite, "ITEMS_PAGE", 2)
        cp, other = new_checkpoint(), new_checkpoint()
        store.create(cp)
        store.create(other)
        store.apply(cp.checkpoint_id, batch(1, items=[("Item", {"n": n}) for n in range(3)]), TTL)
        store.apply(other.checkpoint_id, batch(1, items=[("Item", {"n": 9})]), TTL)
        store.apply(cp.checkpoint_id, batch(2, items=[("Item", {"n": n}) for n in range(3, 5)]), TTL)
        assert [item["n"] for _, item in store.items(cp.checkpoint_id)] == [0, 1, 2, 3, 4]

    def test_corrupt_record_names_checkpoint(self, store):
        cp = new_checkpoint()
        store.create(cp)
        store.db.execute("UPDATE checkpoints SET record = '{\"spider\": 5}'")
        with pytest.raises(CorruptCheckpointError, match=cp.checkpoint_id):
            store.get(cp.checkpoint_id)
        with pytest.raises(CorruptCheckpointError, match=cp.checkpoint_id):
            store.find_resumable("products", "shop.test", "product_catalog")

    def test_processed_requests_drop_their_body(self, store):
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1), discovered(2)], processed=[fp(1)]), TTL)
        bodies = dict(store.db.execute("SELECT fingerprint, request FROM pending"))
        assert bodies == {fp(2): b"request-2"}
        assert store.db.execute("SELECT fingerprint FROM processed").fetchall() == [(fp(1),)]

    def test_resume_scan_reads_through_its_own_connection(self, tmp_path):
        """The scan of processed fingerprints opens the file again, read-only, by URI: a
        directory name that means something in a URI must not send it elsewhere."""
        store = SQLiteCheckpointStore(tmp_path / "crawl #1?mode=rw 100%" / "checkpoints.sqlite3")
        store.open()
        try:
            cp = new_checkpoint()
            store.create(cp)
            store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1, start=True), discovered(2)],
                                                processed=[fp(2)]), TTL)
            scan = store.processed_fingerprints(cp.checkpoint_id)
            assert next(scan) == fp(2)
            # A batch written while the scan is open neither waits for it nor shows up in it.
            store.apply(cp.checkpoint_id, batch(2, processed=[fp(1)]), TTL)
            assert list(scan) == []
            assert sorted(store.processed_fingerprints(cp.checkpoint_id)) == sorted([fp(1), fp(2)])
            assert list(store.pending_start_fingerprints(cp.checkpoint_id)) == []
        finally:
            store.close()

    def test_file_of_another_layout_is_refused(self, tmp_path):
        path = tmp_path / "old.sqlite3"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE checkpoints (checkpoint_id TEXT PRIMARY KEY)")
        store = SQLiteCheckpointStore(path)
        with pytest.raises(CheckpointError, match="another scrapy-checkpoint version"):
            store.open()
        with sqlite3.connect(path) as db:  # left as it was
            assert db.execute("PRAGMA user_version").fetchone()[0] == 0

    def test_file_that_is_no_database_is_named_untouched(self, tmp_path):
        path = tmp_path / "checkpoints.sqlite3"
        junk = b"not a database at all " * 300
        path.write_bytes(junk)
        with pytest.raises(CheckpointError, match=r"checkpoints.sqlite3 is damaged .*Move it away.* \.recover"):
            SQLiteCheckpointStore(path).open()
        assert path.read_bytes() == junk

    def test_damaged_pages_are_named(self, tmp_path):
        path = tmp_path / "checkpoints.sqlite3"
        store = SQLiteCheckpointStore(path)
        store.open()
        store.create(new_checkpoint())
        store.close()
        with sqlite3.connect(path) as db:
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'checkpoints'").fetchone()[0]
        with path.open("r+b") as f:  # the checkpoints table's root page
            f.seek((root - 1) * page_size)
            f.write(b"\xff" * page_size)
        store = SQLiteCheckpointStore(path)
        with pytest.raises(CheckpointError, match="is damaged"):
            store.open()
            store.find_resumable("products", "shop.test", "product_catalog")
        store.close()

    def test_delete_leaves_no_row(self, store):
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1), discovered(2)], processed=[fp(1)],
                                            items=[("Product", {"sku": "A1"})]), TTL)
        assert store.stored_bytes(cp.checkpoint_id) > len(b"request-2") + 2 * 20
        assert store.delete(cp.checkpoint_id)
        for table in ("checkpoints", "pending", "processed", "items"):
            assert store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
        assert store.stored_bytes(cp.checkpoint_id) is None

    def test_unreadable_record_left_out_of_the_list(self, store, caplog):
        bad, good = new_checkpoint(), new_checkpoint()
        store.create(bad)
        store.create(good)
        store.db.execute("UPDATE checkpoints SET record = '{\"spider\": 5}' WHERE checkpoint_id = ?",
                         (bad.checkpoint_id,))
        assert [c.checkpoint_id for c in store.list_checkpoints()] == [good.checkpoint_id]
        assert _logged(caplog, logging.WARNING, bad.checkpoint_id, "unreadable")
        assert store.delete(bad.checkpoint_id)  # how an unreadable one is got rid of

    def test_expired_checkpoints_purged_on_open(self, make_store):
        store = make_store()
        store.open()
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1)]), 1e-6)
        store.close()
        store = make_store()
        store.open()
        try:
            assert store.get(cp.checkpoint_id) is None  # at once; its rows go in the background
            store._purger.join()
            assert store.db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
        finally:
            store.close()


class TestRedisStore(StoreContract, SharedWriters):
    PREFIX = "test-cp"

    @pytest.fixture
    def make_store(self, redis_url):
        from scrapy_checkpoint.stores.redis import RedisCheckpointStore

        return lambda: RedisCheckpointStore(redis_url, self.PREFIX, timeout=2.0)

    @pytest.fixture
    def client(self, redis_client):
        return redis_client

    def ttls(self, client):
        """Each key's PTTL, but the layout marker's (kept for ever: tests/test_layout.py)."""
        layout = f"{self.PREFIX}:layout".encode()
        return {key.decode(): client.pttl(key) for key in client.scan_iter() if key != layout}

    def test_keys_under_prefix_and_expiring(self, store, client):
        cp = new_checkpoint()
        store.create(cp)
        store.apply(
            cp.checkpoint_id,
            batch(1, discovered=[discovered(1, start=True), discovered(2)], processed=[fp(1), fp(3)],
                  items=[("Product", {"sku": "A1"})], item_counts={"Product": 1}),
            TTL,
        )
        ttls = self.ttls(client)
        prefix = f"{self.PREFIX}:cp:{cp.checkpoint_id}:"
        assert set(ttls) == {f"{prefix}{kind}" for kind in ("record", "requests", "pending", "processed", "items")} | {
            f"{self.PREFIX}:resumable", f"{self.PREFIX}:checkpoints"
        }
        assert all(0 < ttl <= TTL * 1000 for ttl in ttls.values())
        assert store.get(cp.checkpoint_id).expires_at is not None

    def test_ttl_refreshed_and_zero_persists(self, store, client):
        cp = new_checkpoint()
        store.create(cp)
        index = f"{self.PREFIX}:checkpoints"
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1)]), 10)
        ttls = self.ttls(client)
        # The index of all checkpoints outlives the longest TTL it was given (create's).
        assert 10_000 < ttls.pop(index) <= TTL * 1000
        assert all(0 < ttl <= 10_000 for ttl in ttls.values())
        store.apply(cp.checkpoint_id, batch(2, discovered=[discovered(2)], processed=[fp(3)]), TTL)
        assert all(10_000 < ttl <= TTL * 1000 for ttl in self.ttls(client).values())
        store.apply(cp.checkpoint_id, batch(3, status=CheckpointStatus.COMPLETED), 0)
        ttls = self.ttls(client)
        assert f"{self.PREFIX}:resumable" not in ttls  # its last entry left when completed
        assert index in ttls and all(ttl == -1 for ttl in ttls.values())
        assert store.get(cp.checkpoint_id).expires_at is None

    def test_expired_record_skipped_by_find_resumable(self, store, client):
        old = new_checkpoint()
        store.create(old)
        new = new_checkpoint()
        store.create(new)
        store.apply(new.checkpoint_id, batch(1), TTL)
        client.delete(f"{self.PREFIX}:cp:{new.checkpoint_id}:record")  # as if it had expired
        assert store.find_resumable("products", "shop.test", "product_catalog").checkpoint_id == old.checkpoint_id
        assert client.zcard(f"{self.PREFIX}:resumable") == 1

    def test_index_of_all_checkpoints(self, store, client, monkeypatch):
        """Listing reads one sorted set, scored by expiry: never the keyspace. Completed
        checkpoints stay in it; expired ones are skipped, and go at the next create."""
        index = f"{self.PREFIX}:checkpoints"
        done, kept, expired, lost = (new_checkpoint() for _ in range(4))
        for cp in (done, kept, expired, lost):
            store.create(cp)
        store.apply(done.checkpoint_id, batch(1, status=CheckpointStatus.COMPLETED), 0)
        store.apply(expired.checkpoint_id, batch(1), 0.05)
        client.delete(f"{self.PREFIX}:cp:{lost.checkpoint_id}:record")  # as if evicted
        assert client.zscore(index, done.checkpoint_id) == float("inf")
        time.sleep(0.1)
        assert client.zcard(index) == 4
        calls = []
        execute = store.client.execute_command
        monkeypatch.setattr(store.client, "execute_command", lambda *a, **kw: calls.append(a[0]) or execute(*a, **kw))
        listed = [c.checkpoint_id for c in store.list_checkpoints()]
        # Newest first, by updated_at: kept's creation and done's batch may share a millisecond.
        assert sorted(listed) == sorted([done.checkpoint_id, kept.checkpoint_id])
        assert "SCAN" not in calls and "KEYS" not in calls
        store.create(new_checkpoint())
        assert client.zscore(index, expired.checkpoint_id) is None

    def test_delete_unlinks_keys_and_index_entries(self, store, client):
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1, start=True), discovered(2)],
                                            processed=[fp(3)], items=[("Product", {"sku": "A1"})]), TTL)
        assert store.stored_bytes(cp.checkpoint_id) > 0
        store.apply(cp.checkpoint_id, batch(2, processed=[fp(1)]), TTL)  # the start set goes
        assert store.stored_bytes(cp.checkpoint_id) > 0
        assert store.delete(cp.checkpoint_id)
        # Both indexes emptied, so gone too; the prefix's layout stays.
        assert self.contents(client) == {f"{self.PREFIX}:layout".encode(): b"1"}
        assert store.stored_bytes(cp.checkpoint_id) is None

    def test_delete_gets_rid_of_a_corrupt_record(self, store, client):
        cp = new_checkpoint()
        store.create(cp)
        key = f"{self.PREFIX}:cp:{cp.checkpoint_id}:record"
        client.hset(key, "seq", b"many")
        assert list(store.list_checkpoints()) == []
        client.delete(key)
        client.set(key, b"garbage")
        assert list(store.list_checkpoints()) == []
        assert store.delete(cp.checkpoint_id)
        assert client.zcard(f"{self.PREFIX}:checkpoints") == 0

    def test_apply_to_missing_checkpoint(self, store):
        with pytest.raises(KeyError, match="no-such-id"):
            store.apply("no-such-id", batch(1), TTL)

    @pytest.mark.parametrize(
        ("field", "value"),
        [(None, b"\xff\xfe garbage \x00"), ("spider", b"\xff\xfe"), ("seq", b"many"), ("state", b"{not json")],
    )
    def test_corrupt_record_names_checkpoint(self, store, client, field, value):
        cp = new_checkpoint()
        store.create(cp)
        key = f"{self.PREFIX}:cp:{cp.checkpoint_id}:record"
        if field is None:
            client.set(key, value)
        else:
            client.hset(key, field, value)
        with pytest.raises(CorruptCheckpointError, match=cp.checkpoint_id):
            store.get(cp.checkpoint_id)
        with pytest.raises(CorruptCheckpointError, match=cp.checkpoint_id):
            store.find_resumable("products", "shop.test", "product_catalog")

    @pytest.mark.parametrize(("kind", "command"), [("record", "set"), ("record", "seq"), ("pending", "set")])
    def test_corrupt_keys_leave_batch_unapplied(self, store, client, kind, command):
        cp = new_checkpoint()
        store.create(cp)
        key = f"{self.PREFIX}:cp:{cp.checkpoint_id}:{kind}"
        if command == "set":
            client.delete(key)
            client.set(key, b"garbage")
        else:
            client.hset(key, command, b"x")
        before = self.contents(client)
        with pytest.raises(CorruptCheckpointError, match=cp.checkpoint_id):
            store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1)], processed=[fp(2)]), TTL)
        assert self.contents(client) == before

    @staticmethod
    def contents(client):
        """Every key's value; not DUMP's bytes, which change with a hash table's incremental
        rehashing when a script merely reads the hash."""
        read = {b"string": client.get, b"hash": client.hgetall, b"set": client.smembers,
                b"list": lambda k: client.lrange(k, 0, -1),
                b"zset": lambda k: client.zrange(k, 0, -1, withscores=True)}
        return {k: read[client.type(k)](k) for k in client.scan_iter()}

    def test_batch_is_one_round_trip(self, store, monkeypatch):
        cp = new_checkpoint()
        store.create(cp)
        calls = []
        execute = store.client.execute_command
        monkeypatch.setattr(store.client, "execute_command", lambda *a, **kw: calls.append(a[0]) or execute(*a, **kw))
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(i) for i in range(50)],
                                            processed=[fp(i) for i in range(20)]), TTL)
        assert calls == ["EVALSHA"]

    def test_script_reloaded_after_flush(self, store, client):
        cp = new_checkpoint()
        store.create(cp)
        client.script_flush()
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1)]), TTL)
        assert store.get(cp.checkpoint_id).pipeline_data.urls_discovered == 1

    @pytest.mark.parametrize("password", ["wrong-Pa55", ""])
    def test_refused_login_is_no_outage(self, tmp_path, password):
        """A wrong or missing password will not pass by waiting: the crawl must not run on
        as if the store were down (redis-py makes AuthenticationError a ConnectionError)."""
        from scrapy_checkpoint.stores.redis import RedisCheckpointStore

        server = RedisServer(find_redis_server(), tmp_path, password="right-Pa55")
        server.start()
        try:
            store = RedisCheckpointStore(f"redis://:{password}@127.0.0.1:{server.port}/0", timeout=2.0)
            with pytest.raises(CheckpointError, match="refused the login") as info:
                store.open()
            assert not isinstance(info.value, StoreUnavailable)
            assert "check the user and password in CHECKPOINT_REDIS_URL" in str(info.value)
            assert not password or password not in str(info.value)
        finally:
            server.stop()

    def test_dead_server_is_unavailable_quickly_without_password(self):
        from scrapy_checkpoint.stores.redis import RedisCheckpointStore

        with socket.socket() as listener:  # accepts connections, never answers
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            for port in (free_port(), listener.getsockname()[1]):
                store = RedisCheckpointStore(f"redis://user:s3cret@127.0.0.1:{port}/0", timeout=0.5)
                started = time.monotonic()
                with pytest.raises(StoreUnavailable) as info:
                    store.open()
                assert time.monotonic() - started < 10  # far below waiting for ever, with room for a busy machine
                assert "s3cret" not in str(info.value)
                assert f"redis://user:***@127.0.0.1:{port}/0" in str(info.value)

    def test_server_killed_mid_crawl(self, store, redis_server):
        cp = new_checkpoint()
        store.create(cp)
        redis_server.stop()
        with pytest.raises(StoreUnavailable):
            store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1)]), TTL)
        redis_server.start()  # empty again: it never saves
        with pytest.raises(KeyError):
            store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1)]), TTL)

    def test_describe_redacts(self):
        from scrapy_checkpoint.stores.redis import RedisCheckpointStore

        store = RedisCheckpointStore("rediss://user:s3cret@cache.test:6380/2")
        assert store.describe() == "rediss://user:***@cache.test:6380/2"

    @pytest.mark.parametrize("url", ["http://user:s3cret@cache.test", "redis://user:s3/cret@cache.test:6379"])
    def test_invalid_url_hides_password(self, url):
        from scrapy_checkpoint.stores.redis import RedisCheckpointStore

        with pytest.raises(ValueError, match="CHECKPOINT_REDIS_URL") as info:
            RedisCheckpointStore(url).open()
        assert "s3" not in "".join(traceback.format_exception(info.value))

    def test_from_checkpoint_settings(self, tmp_path):
        from scrapy_checkpoint.stores import store_class

        settings = CheckpointSettings.from_settings(Settings({
            "CHECKPOINT_ENABLED": True, "CHECKPOINT_DIR": str(tmp_path),
            "CHECKPOINT_REDIS_URL": "redis://:pw@localhost:6390/3", "CHECKPOINT_REDIS_PREFIX": "shop",
            "CHECKPOINT_STORE_TIMEOUT": 1.5,
        }))
        store = store_class(settings).from_checkpoint_settings(settings)
        assert (store.name, store.prefix, store.timeout) == ("redis", "shop", 1.5)
        assert store.describe() == "redis://:***@localhost:6390/3"

    def test_missing_redis_py_names_the_extra(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "redis", None)
        monkeypatch.delitem(sys.modules, "scrapy_checkpoint.stores.redis", raising=False)
        with pytest.raises(ImportError, match=re.escape("pip install 'scrapy-checkpoint[redis]'")):
            importlib.import_module("scrapy_checkpoint.stores.redis")


_BSON_TYPES = {"string": str, "int": int, "long": int, "double": float, "bool": bool, "object": dict,
               "array": list, "binData": bytes, "date": datetime, "null": type(None)}


def _schema_errors(value, schema, path="$"):
    """Where *value* breaks a $jsonSchema (the subset the MongoDB store uses)."""
    from bson import ObjectId

    types = schema.get("bsonType", [])
    types = [types] if isinstance(types, str) else types
    if types and not any(
        isinstance(value, ObjectId if t == "objectId" else _BSON_TYPES[t])
        and not (isinstance(value, bool) and t in ("int", "long")) for t in types
    ):
        return [f"{path}: {value!r} is not {types}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errors.append(f"{path}: {value} out of range")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        errors.append(f"{path}: too short")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        errors += [f"{path}.{k}: missing" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            if key in properties:
                errors += _schema_errors(item, properties[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}.{key}: not allowed")
            elif isinstance(extra, dict):
                errors += _schema_errors(item, extra, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


#: Index keys (fields in order), and options, the MongoDB store must create.
MONGO_INDEXES = {
    "checkpoints": {
        ("checkpoint_id",): {"unique": True},
        ("site_domain", "job_type", "spider", "status", "updated_at"): {},
        ("expires_at",): {"expireAfterSeconds": 0},
    },
    "checkpoint_urls": {
        ("checkpoint_id", "fingerprint"): {"unique": True},
        ("checkpoint_id", "processed", "pos"): {},
    },
    "checkpoint_items": {("checkpoint_id", "seq", "index"): {"unique": True}},
    "checkpoint_journal": {("checkpoint_id", "seq", "part"): {"unique": True}},
    "user_queries": {("query_id",): {"unique": True}},
    "query_sessions": {("session_id",): {"unique": True}, ("query_id",): {}},
}


class TestMongoDBStore(StoreContract, SharedWriters):
    @pytest.fixture
    def make_store(self, mongo_uri_db):
        from scrapy_checkpoint.stores.mongodb import MongoDBCheckpointStore

        uri, database = mongo_uri_db
        return lambda: MongoDBCheckpointStore(uri, database, timeout=5.0)

    def test_from_settings(self, mongo_uri_db):
        uri, database = mongo_uri_db
        settings = CheckpointSettings.from_settings(Settings({
            "CHECKPOINT_ENABLED": True, "CHECKPOINT_MONGO_URI": uri,
            "CHECKPOINT_MONGO_DATABASE": database, "CHECKPOINT_STORE_TIMEOUT": 2.5,
        }))
        store = store_class(settings).from_checkpoint_settings(settings)
        assert (store.name, store.uri, store.database, store.timeout) == ("mongodb", uri, database, 2.5)

    def test_describe_hides_password(self):
        from scrapy_checkpoint.stores.mongodb import MongoDBCheckpointStore

        store = MongoDBCheckpointStore("mongodb://scraper:s3cret@db.test:27017/?authSource=admin", "crawls")
        assert "s3cret" not in store.describe()
        assert "scraper" in store.describe() and "db.test:27017" in store.describe()
        assert "crawls" in store.describe()

    def test_needs_pymongo(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "pymongo", None)
        monkeypatch.delitem(sys.modules, "scrapy_checkpoint.stores.mongodb", raising=False)
        with pytest.raises(ImportError, match=r"pip install 'scrapy-checkpoint\[mongodb\]'"):
            importlib.import_module("scrapy_checkpoint.stores.mongodb")

    def test_indexes(self, store, make_store, mongo_server):
        def indexes():
            return {name: store.db[name].index_information() for name in MONGO_INDEXES}

        before = indexes()
        again = make_store()
        again.open()  # creating everything a second time is fine
        again.close()
        assert indexes() == before
        for name, expected in MONGO_INDEXES.items():
            # nx-27017 renames indexes and drops key directions: compare fields and options.
            found = {tuple(f for f, _ in spec["key"]): spec for spec in before[name].values()}
            for fields, options in expected.items():
                assert fields in found, f"{name} lacks an index on {fields}"
                spec = found[fields]
                assert spec.get("unique", False) == options.get("unique", False), (name, fields)
                assert spec.get("expireAfterSeconds") == options.get("expireAfterSeconds"), (name, fields)
        if mongo_server.real:
            assert before["checkpoints"]["expires_at_ttl"]["key"] == [("expires_at", 1)]
            assert before["checkpoints"]["resumable"]["key"][-1] == ("updated_at", -1)

    @pytest.mark.real_mongodb
    def test_validators_read_back(self, store, make_store):
        from scrapy_checkpoint.stores.mongodb import SCHEMAS

        def validators():
            return {c["name"]: c["options"].get("validator") for c in store.db.list_collections()}

        assert validators() == {name: {"$jsonSchema": schema} for name, schema in SCHEMAS.items()}
        store.db.command("collMod", "checkpoints", validator={"$jsonSchema": {"bsonType": "object"}})
        again = make_store()
        again.open()  # an outdated validator is updated
        again.close()
        assert validators()["checkpoints"] == {"$jsonSchema": SCHEMAS["checkpoints"]}

    def test_documents_match_validators(self, store):
        """What the store writes passes its own validators (which nx-27017 does not enforce).

        Documents are checked as inserted: nx-27017 stores a ``$set`` datetime as a string and
        a ``$set`` True as 1 (a real server enforces the validators on updates too).
        """
        from scrapy_checkpoint.stores.mongodb import SCHEMAS

        cp = new_checkpoint()
        cp.runs = [run(1)]
        store.create(cp)
        checkpoint_doc = store.db["checkpoints"].find_one()
        b = batch(1, discovered=[discovered(1, start=True), discovered(2)], processed=[fp(3)], run=run(2),
                  items=[("Product", {"sku": "A1"})], item_counts={"Product": 1},
                  pagination={"http://shop.test/c/a?x=1": 2}, current_page=2, pipeline_step=1,
                  state={"k": [1]}, status=CheckpointStatus.FAILED)
        journal = store._journal(cp.checkpoint_id, b, 0)
        store.apply(cp.checkpoint_id, b, TTL)
        store.save_user_query(UserQuery(raw_query="cheapest red shoes under $50", parsed_intent={
            "price_range": {"max": 50, "currency": "USD"}, "order": "price_asc", "keywords": ["trail"]}))
        store.save_query_session(QuerySession(query_id="q1", sites_searched=["shop.test"]))
        # A batch of one of several workers sharing a checkpoint, and what it adds to the record.
        shared = new_checkpoint()
        store.create(shared)
        b = batch(1, writer="w1.host:7", took_over=["w0.host:3"], state={"k": 1},
                  outputs=[{"path": "a.jsonl", "length": 3}])
        shared_journal = store._journal(shared.checkpoint_id, b, 0, slot=1)
        store.apply(shared.checkpoint_id, b, TTL)
        record = store.db["checkpoints"].find_one({"checkpoint_id": shared.checkpoint_id})
        added = {k: record[k] for k in ("seqs", "writers", "slots")}
        assert _schema_errors(added, {**SCHEMAS["checkpoints"], "required": []}) == []
        documents = [("checkpoints", checkpoint_doc), ("checkpoint_journal", journal),
                     ("checkpoint_journal", shared_journal)]
        for name in ("checkpoint_urls", "checkpoint_items", "user_queries", "query_sessions", "checkpoint_layout"):
            documents += [(name, doc) for doc in store.db[name].find()]
        assert len(documents) == 10
        for name, doc in documents:
            assert _schema_errors(doc, SCHEMAS[name]) == [], name

    @pytest.mark.real_mongodb
    def test_server_rejects_invalid_document(self, store):
        from pymongo.errors import WriteError

        for name, doc in [("checkpoints", {"checkpoint_id": "x", "spider": 5}),
                          ("checkpoint_urls", {"_id": "x", "checkpoint_id": "x", "fingerprint": "not bytes"}),
                          ("user_queries", {"query_id": "q", "raw_query": ""})]:
            with pytest.raises(WriteError) as info:
                store.db[name].insert_one(doc)
            assert info.value.code == 121  # DocumentValidationFailure

    @pytest.mark.real_mongodb
    def test_ttl_index_deletes_expired(self, store):
        from pymongo.errors import OperationFailure

        try:  # the TTL monitor runs every 60 s unless told otherwise
            store.db.client.admin.command("setParameter", 1, ttlMonitorSleepSecs=1)
        except OperationFailure:
            pass  # not allowed: wait for the default period
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, status=CheckpointStatus.COMPLETED), 0.001)
        kept = new_checkpoint()
        store.create(kept)
        store.apply(kept.checkpoint_id, batch(1, status=CheckpointStatus.COMPLETED), 0)  # archive TTL 0: kept
        deadline = time.monotonic() + 130
        while store.db["checkpoints"].count_documents({"checkpoint_id": cp.checkpoint_id}):
            assert time.monotonic() < deadline, "the TTL monitor did not delete the expired checkpoint"
            time.sleep(1)
        assert store.get(kept.checkpoint_id).expires_at is None

    @pytest.mark.parametrize("writer", [None, "w1.host:7"])  # alone, or one of several workers
    def test_killed_apply_is_replayed_once(self, make_store, writer):
        store = make_store()
        store.open()
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, writer=writer, discovered=[discovered(1), discovered(2)]), TTL)
        b = batch(2, writer=writer, discovered=[discovered(3)], processed=[fp(1), fp(9)],
                  items=[("Product", {"sku": "A1"})], item_counts={"Product": 1},
                  pagination={"http://shop.test/c/a": 2}, pipeline_step=1)
        # Killed mid-apply: the batch journaled, one URL of it written, the record not updated.
        from scrapy_checkpoint.stores.mongodb import _encode_key

        slot = None if writer is None else store._slot(cid, store._record_seqs(cid), _encode_key(writer))
        entry = store._journal(cid, b, TTL, slot)
        store.db["checkpoint_journal"].insert_one(dict(entry))
        store.db["checkpoint_urls"].update_one({"_id": f"{cid}/{fp(1).hex()}"}, {"$set": {"processed": True}})
        assert store.db["checkpoints"].find_one({"checkpoint_id": cid})["seq"] == 1
        store.close()

        store = make_store()
        store.open()  # replays the journal
        try:
            def state():
                got = store.get(cid)
                data = got.pipeline_data
                return (got.seq, got.pipeline_step, data.urls_discovered, data.urls_processed,
                        data.extraction_results.by_type, data.pagination_state,
                        sorted(store.processed_fingerprints(cid)), list(store.items(cid)))

            expected = (2, 1, 4, 2, {"Product": 1}, {"http://shop.test/c/a": 2}, sorted([fp(1), fp(9)]),
                        [("Product", {"sku": "A1"})])
            assert store.db["checkpoint_journal"].count_documents({}) == 0
            assert state() == expected
            assert store.pending_requests(cid, None, 10)[0] == [b"request-2", b"request-3"]
            # An entry left after its record update (killed before the delete) is a no-op.
            store.db["checkpoint_journal"].insert_one(dict(entry))
            assert state() == expected
            assert store.db["checkpoint_journal"].count_documents({}) == 0
            store.apply(cid, b, TTL)  # and so is the retried flush
            assert state() == expected
        finally:
            store.close()

    def test_write_error_keeps_the_batch_journaled(self, store):
        """The server's write errors come back in the update command's reply, not as an
        exception: the store raises them, and the committed batch is replayed once the
        cause is gone."""
        from pymongo.errors import WriteError

        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        urls = store.db["checkpoint_urls"]
        urls.create_index("url", unique=True, name="test_unique_url")
        urls.insert_one({"_id": "in-the-way", "url": discovered(2).url})
        with pytest.raises(WriteError, match="checkpoint_urls") as info:
            store.apply(cid, batch(1, discovered=[discovered(1), discovered(2), discovered(3)]), TTL)
        assert info.value.code == 11000
        # Ordered: the statement after the failing one did not run.
        assert [d["url"] for d in urls.find({"checkpoint_id": cid})] == [discovered(1).url]
        urls.delete_one({"_id": "in-the-way"})
        assert store.get(cid).pipeline_data.urls_discovered == 3  # replayed from the journal
        assert store.pending_requests(cid, None, 10)[0] == [b"request-1", b"request-2", b"request-3"]

    def test_large_batch_journaled_in_parts(self, store, monkeypatch):
        from scrapy_checkpoint.stores import mongodb

        monkeypatch.setattr(mongodb, "_PART_BYTES", 500)
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        journal = store.db["checkpoint_journal"]
        # Killed before its commit (the header): the parts are ignored, then overwritten.
        store._journal(cid, batch(1, discovered=[discovered(i) for i in range(100, 140)]), TTL)
        assert journal.count_documents({}) > 1
        assert store.get(cid).seq == 0
        assert store.pending_requests(cid, None, 100)[0] == []
        # Killed after its commit: replayed whole.
        b = batch(1, discovered=[discovered(i) for i in range(20)], processed=[fp(i) for i in range(5)],
                  items=[("Product", {"n": i}) for i in range(10)], item_counts={"Product": 10})
        header = store._journal(cid, b, TTL)
        assert header["parts"] > 2
        journal.insert_one(header)
        got = store.get(cid)
        data = got.pipeline_data
        counts = data.urls_discovered, data.urls_processed, data.extraction_results.items_scraped
        assert (got.seq, *counts) == (1, 20, 5, 10)
        assert store.pending_requests(cid, None, 100)[0] == [f"request-{i}".encode() for i in range(5, 20)]
        assert [item["n"] for _, item in store.items(cid)] == list(range(10))
        assert journal.count_documents({}) == 0

    def test_journal_replayed_before_a_read(self, store):
        cp = new_checkpoint()
        store.create(cp)
        entry = store._journal(cp.checkpoint_id, batch(1, discovered=[discovered(1)]), TTL)
        store.db["checkpoint_journal"].insert_one(entry)
        assert store.pending_requests(cp.checkpoint_id, None, 10)[0] == [b"request-1"]
        assert store.get(cp.checkpoint_id).pipeline_data.urls_discovered == 1

    def test_wrong_type_is_corrupt(self, store):
        cp = new_checkpoint()
        store.create(cp)
        store.db["checkpoints"].update_one(
            {"checkpoint_id": cp.checkpoint_id}, {"$set": {"pipeline_step": "two"}},
            bypass_document_validation=True,
        )
        for read in (lambda: store.get(cp.checkpoint_id),
                     lambda: store.find_resumable("products", "shop.test", "product_catalog")):
            with pytest.raises(CorruptCheckpointError, match=cp.checkpoint_id) as info:
                read()
            assert "collection checkpoints" in str(info.value)
        store.apply(cp.checkpoint_id, batch(1, processed=[fp(1)]), TTL)
        store.db["checkpoint_urls"].update_one(
            {}, {"$set": {"fingerprint": "abc"}}, bypass_document_validation=True
        )
        with pytest.raises(CorruptCheckpointError, match="collection checkpoint_urls"):
            list(store.processed_fingerprints(cp.checkpoint_id))

    def test_expired_and_orphaned_purged_on_open(self, make_store):
        store = make_store()
        store.open()
        expired, orphaned, kept = new_checkpoint(), new_checkpoint(), new_checkpoint()
        for cp in (expired, orphaned, kept):
            store.create(cp)
            store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1)], items=[("Product", {})]), TTL)
        store.db["checkpoints"].update_one(
            {"checkpoint_id": expired.checkpoint_id},
            {"$set": {"expires_at": datetime(2000, 1, 1, tzinfo=timezone.utc)}},
        )
        # As the TTL monitor does: the record goes, its URLs and items stay.
        store.db["checkpoints"].delete_one({"checkpoint_id": orphaned.checkpoint_id})
        store.close()
        store = make_store()
        store.open()
        try:
            assert store.get(expired.checkpoint_id) is None
            assert store.get(kept.checkpoint_id) is not None
            for name in ("checkpoint_urls", "checkpoint_items"):
                assert store.db[name].distinct("checkpoint_id") == [kept.checkpoint_id]
        finally:
            store.close()

    def test_delete_leaves_no_document(self, store):
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, discovered=[discovered(1), discovered(2)], processed=[fp(1)],
                               items=[("Product", {"sku": "A1"})]), TTL)
        # A batch committed to the journal and not replayed yet (its crawl was killed).
        store.db["checkpoint_journal"].insert_one(store._journal(cid, batch(2, processed=[fp(2)]), TTL))
        assert store.delete(cid)
        for name in ("checkpoints", "checkpoint_urls", "checkpoint_items", "checkpoint_journal"):
            assert store.db[name].count_documents({"checkpoint_id": cid}) == 0, name
        assert store.stored_bytes(cid) is None  # MongoDB cannot tell cheaply

    def test_user_query_and_session_round_trip(self, store):
        created = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
        query = UserQuery(raw_query="red running shoes under 50", user_id="u1", created_at=created,
                          parsed_intent={"product_type": "shoes", "attributes": {"color": "red"},
                                         "price_range": {"min": None, "max": 50, "currency": "USD"},
                                         "order": "price_asc", "keywords": ["trail"]})
        store.save_user_query(query)
        assert store.get_user_query(query.query_id) == query
        session = QuerySession(
            query_id=query.query_id, checkpoint_ids=["c1", "c2"], sites_searched=["shop.test"],
            results={"shop.test": {"items": 3}}, status="running", created_at=created, updated_at=created,
        )
        store.save_query_session(session)
        session.status = "completed"
        store.save_query_session(session)
        assert store.get_query_session(session.session_id) == session
        assert store.get_user_query("missing") is None and store.get_query_session("missing") is None

    def test_invalid_query_rejected_before_writing(self, store):
        with pytest.raises(ValidationError):
            store.save_user_query({"query_id": "q1", "raw_query": ""})
        with pytest.raises(ValidationError):
            store.save_user_query({"raw_query": "shoes",
                                   "parsed_intent": {"price_range": {"min": 9, "max": 1}}})
        with pytest.raises(ValidationError):
            store.save_query_session(QuerySession.model_construct(session_id="s1", query_id=5, status="lost"))
        assert store.db["user_queries"].count_documents({}) == 0
        assert store.db["query_sessions"].count_documents({}) == 0

    def test_unreachable_server(self):
        from scrapy_checkpoint.stores.mongodb import MongoDBCheckpointStore

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # nothing listens there once closed
        uri = f"mongodb://scraper:s3cret@127.0.0.1:{port}/?authSource=admin"
        store = MongoDBCheckpointStore(uri, "db", 0.5)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            store.open()
        assert time.monotonic() - started < 10  # far below pymongo's default 30 s, with room for a busy machine
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "s3cret" not in str(info.value)

    def test_server_outage(self, mongo_server, mongo_uri_db):
        from scrapy_checkpoint.stores.mongodb import MongoDBCheckpointStore

        store = MongoDBCheckpointStore(*mongo_uri_db, timeout=1.0)
        store.open()
        try:
            cp = new_checkpoint()
            store.create(cp)
            mongo_server.stop()
            try:
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1)]), TTL)
                assert time.monotonic() - started < 10
            finally:
                mongo_server.start()
            store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1)]), TTL)
            assert store.get(cp.checkpoint_id).pipeline_data.urls_discovered == 1
        finally:
            store.close()


HYBRID_PREFIX = "test-hybrid"


class TestHybridStore(StoreContract, SharedWriters):
    @pytest.fixture
    def make_store(self, redis_url, mongo_uri_db):
        from scrapy_checkpoint.stores.hybrid import HybridCheckpointStore
        from scrapy_checkpoint.stores.mongodb import MongoDBCheckpointStore
        from scrapy_checkpoint.stores.redis import RedisCheckpointStore

        uri, database = mongo_uri_db
        return lambda: HybridCheckpointStore(
            RedisCheckpointStore(redis_url, HYBRID_PREFIX, timeout=2.0),
            MongoDBCheckpointStore(uri, database, timeout=5.0),
        )

    def test_from_checkpoint_settings_and_describe(self, tmp_path):
        settings = CheckpointSettings.from_settings(Settings({
            "CHECKPOINT_ENABLED": True, "CHECKPOINT_DIR": str(tmp_path),
            "CHECKPOINT_REDIS_URL": "redis://:pw@cache.test:6390/3",
            "CHECKPOINT_MONGO_URI": "mongodb://scraper:s3cret@db.test:27017/?authSource=admin",
            "CHECKPOINT_MONGO_DATABASE": "crawls", "CHECKPOINT_STORE_TIMEOUT": 1.5, "CHECKPOINT_BUFFER_LIMIT": 7,
        }))
        store = store_class(settings).from_checkpoint_settings(settings)
        assert (store.name, store.buffer_limit, store.retry_interval) == ("hybrid", 7, 1.5)
        assert store.describe() == (
            "hybrid(redis:redis://:***@cache.test:6390/3, "
            "mongodb:mongodb://scraper:***@db.test:27017/?authSource=admin (database crawls))"
        )
    def test_a_shared_checkpoint_one_store_behind_is_not_stale(self, store):
        """Another worker's batch reaches MongoDB, then Redis: a worker of the checkpoint
        reading between the two keeps writing both."""
        checkpoint_id, how = store.claim("products", "shop.test", "product_catalog", "a", None, 60)
        assert (checkpoint_id, how) == ("a", "created")
        store.create(new_checkpoint(checkpoint_id="a", runs=[run(1)]))
        other = batch(1, writer="w2", discovered=[discovered(1)])
        store.mongodb.store.apply("a", other, TTL)
        assert store.get("a").seq == 1  # MongoDB's copy, the newer
        store.redis.store.apply("a", other, TTL)
        store.apply("a", batch(1, writer="w1", processed=[fp(1)]), TTL)
        assert not store.redis.stale and not store.mongodb.stale
        assert _agreed(store.redis.store, "a") == _agreed(store.mongodb.store, "a")
        assert store.get("a").pipeline_data.urls_processed == 1
        # Workers and their runs are in Redis, as with the Redis store alone.
        assert store.beat(store.get("a"), "w1", {"leases": 1}, 60, TTL)
        assert set(store.workers("a")) == {"w1"}


def hybrid_store(redis_url, mongo_uri_db, **kwargs):
    """A hybrid store with short timeouts that retries a store that failed at every write
    (retry_interval 0), with a stats collector; not opened yet."""
    from scrapy.utils.test import get_crawler

    from scrapy_checkpoint.stores.hybrid import HybridCheckpointStore
    from scrapy_checkpoint.stores.mongodb import MongoDBCheckpointStore
    from scrapy_checkpoint.stores.redis import RedisCheckpointStore

    kwargs.setdefault("retry_interval", 0.0)
    store = HybridCheckpointStore(
        RedisCheckpointStore(redis_url, HYBRID_PREFIX, timeout=0.5),
        MongoDBCheckpointStore(*mongo_uri_db, timeout=0.5),
        **kwargs,
    )
    store.stats = get_crawler().stats
    return store


def _agreed(store, checkpoint_id):
    """What two stores holding the same batches agree on (not their timestamps)."""
    got = store.get(checkpoint_id)
    return (got.seq, got.status, got.pipeline_step, got.pipeline_data,
            sorted(store.processed_fingerprints(checkpoint_id)),
            sorted(store.pending_start_fingerprints(checkpoint_id)),
            store.pending_requests(checkpoint_id, None, 1000)[0], list(store.items(checkpoint_id)))


def _logged(caplog, level, *words):
    return [r.getMessage() for r in caplog.records
            if r.levelno == level and all(w in r.getMessage() for w in words)]


class TestHybridFaults:
    """Real servers stopped and started again under a hybrid store with short timeouts."""

    @pytest.fixture
    def servers(self, redis_server, redis_url, mongo_server, mongo_uri_db):
        yield redis_server, mongo_server
        # Restored even when the test failed, for the tests that follow.
        (redis_server.directory / "dump.rdb").unlink(missing_ok=True)
        if not redis_server.running:
            redis_server.start()
        if not mongo_server.running:
            mongo_server.start()

    @pytest.fixture
    def make_hybrid(self, servers, redis_url, mongo_uri_db):
        made = []

        def make(**kwargs):
            store = hybrid_store(redis_url, mongo_uri_db, **kwargs)
            made.append(store)
            store.open()
            return store

        yield make
        for store in made:
            store.close()

    @pytest.fixture
    def client(self, redis_client):
        return redis_client

    def stat(self, store, name):
        return store.stats.get_value(f"checkpoint/hybrid/{name}", 0)

    def test_redis_down_then_back_with_its_data(self, make_hybrid, servers, client, caplog):
        redis_server, _ = servers
        store = make_hybrid()
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, discovered=[discovered(i, start=i < 2) for i in range(5)]), TTL)
        client.save()  # so that it comes back with its data
        redis_server.stop()
        store.apply(cid, batch(2, discovered=[discovered(5)], processed=[fp(0), fp(3)]), TTL)
        store.apply(cid, batch(3, processed=[fp(1)], items=[("Product", {"sku": "A1"})],
                               item_counts={"Product": 1}), TTL)
        assert store.mongodb.store.get(cid).seq == 3
        redis_server.start()
        store.apply(cid, batch(4, processed=[fp(5)]), TTL)
        agreed = _agreed(store.redis.store, cid)
        assert agreed == _agreed(store.mongodb.store, cid)
        assert agreed[0] == 4 and agreed[3].urls_processed == 4
        assert (self.stat(store, "redis_unavailable"), self.stat(store, "replayed")) == (1, 2)
        assert len(_logged(caplog, logging.WARNING, "Redis at", "is unavailable")) == 1
        assert not _logged(caplog, logging.WARNING, "stale")

    def test_redis_restarted_empty_is_stale(self, make_hybrid, servers, client, caplog):
        redis_server, _ = servers
        store = make_hybrid()
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, discovered=[discovered(i) for i in range(4)]), TTL)
        redis_server.stop()
        store.apply(cid, batch(2, processed=[fp(0)]), TTL)
        redis_server.start()  # empty: it never saves
        store.apply(cid, batch(3, processed=[fp(1)], discovered=[discovered(4)]), TTL)
        store.apply(cid, batch(4, processed=[fp(2)]), TTL)
        assert client.keys("*") == []  # nothing written to it once stale
        stale = _logged(caplog, logging.WARNING, cid, "stale", "MongoDB")
        assert len(stale) == 1 and "no longer holds it" in stale[0]
        assert self.stat(store, "redis_stale") == 1
        got = store.get(cid)
        assert (got.seq, got.pipeline_data.urls_discovered, got.pipeline_data.urls_processed) == (4, 5, 3)
        assert set(store.processed_fingerprints(cid)) == {fp(0), fp(1), fp(2)}
        assert store.pending_requests(cid, None, 10)[0] == [b"request-3", b"request-4"]

    def test_redis_down_at_open_gets_the_create_first(self, make_hybrid, servers, caplog):
        redis_server, _ = servers
        redis_server.stop()
        store = make_hybrid()
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, discovered=[discovered(1), discovered(2)]), TTL)
        store.apply(cid, batch(2, processed=[fp(1)]), TTL)
        redis_server.start()
        store.apply(cid, batch(3, processed=[fp(2)]), TTL)
        assert _agreed(store.redis.store, cid) == _agreed(store.mongodb.store, cid)
        assert store.redis.store.get(cid).seq == 3
        assert self.stat(store, "replayed") == 3
        assert len(_logged(caplog, logging.WARNING, "Redis at", "is unavailable")) == 1

    def test_mongodb_down_then_back(self, make_hybrid, servers, monkeypatch, caplog):
        _, mongo_server = servers
        store = make_hybrid()
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, discovered=[discovered(i) for i in range(5)]), TTL)
        landed = []
        apply = store.mongodb.store.apply
        monkeypatch.setattr(store.mongodb.store, "apply",
                            lambda cid, b, ttl: (apply(cid, b, ttl), landed.append(b.seq)))
        mongo_server.stop()
        store.apply(cid, batch(2, discovered=[discovered(5)], processed=[fp(0), fp(3)]), TTL)
        store.apply(cid, batch(3, processed=[fp(1)], items=[("Product", {"sku": "A1"})],
                               item_counts={"Product": 1}, pagination={"http://shop.test/c": 2}), TTL)
        assert store.redis.store.get(cid).seq == 3
        mongo_server.start()
        store.apply(cid, batch(4, processed=[fp(5)]), TTL)
        assert landed == [2, 3, 4]
        agreed = _agreed(store.mongodb.store, cid)
        assert agreed == _agreed(store.redis.store, cid)
        assert agreed[0] == 4 and agreed[3].extraction_results.items_scraped == 1
        assert (self.stat(store, "mongodb_unavailable"), self.stat(store, "replayed")) == (1, 2)
        assert len(_logged(caplog, logging.WARNING, "MongoDB at", "is unavailable")) == 1
        assert not _logged(caplog, logging.ERROR)

    def test_mongodb_backlog_overflow_says_which_batches(self, make_hybrid, servers, caplog):
        _, mongo_server = servers
        store = make_hybrid(buffer_limit=5, retry_interval=60.0)
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, discovered=[discovered(i) for i in range(8)]), TTL)
        mongo_server.stop()
        for seq in (2, 3, 4, 5):
            store.apply(cid, batch(seq, processed=[fp(2 * seq - 4), fp(2 * seq - 3)]), TTL)
        mongo_server.start()
        store.apply(cid, batch(6, processed=[fp(7)]), TTL)
        errors = _logged(caplog, logging.ERROR, cid)
        assert len(errors) == 1
        assert "lacks batches 2-4," in errors[0] and "CHECKPOINT_BUFFER_LIMIT (5)" in errors[0]
        assert "s3cret" not in errors[0]
        assert self.stat(store, "mongodb_stale") == 1
        assert store.mongodb.store.get(cid).seq == 1  # no later batch: it would hide the gap
        got = store.get(cid)
        assert (got.seq, got.pipeline_data.urls_processed) == (6, 8)
        assert store.pending_requests(cid, None, 10)[0] == []

    def test_both_down_then_the_retry_lands_once(self, make_hybrid, servers, client):
        redis_server, mongo_server = servers
        store = make_hybrid()
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, discovered=[discovered(i) for i in range(3)], item_counts={"Product": 1}), TTL)
        client.save()
        redis_server.stop()
        mongo_server.stop()
        b2 = batch(2, discovered=[discovered(3)], processed=[fp(0)], item_counts={"Product": 1})
        with pytest.raises(StoreUnavailable, match="Neither store"):
            store.apply(cid, b2, TTL)
        with pytest.raises(StoreUnavailable):
            store.get(cid)
        assert not store.redis.backlog and not store.mongodb.backlog
        with pytest.raises(StoreUnavailable):
            make_hybrid()
        redis_server.start()
        mongo_server.start()
        store.apply(cid, b2, TTL)  # the extension's retry
        store.apply(cid, b2, TTL)  # and a retry of a flush that landed: a no-op
        for side in (store.redis, store.mongodb):
            got = side.store.get(cid)
            data = got.pipeline_data
            assert (got.seq, data.urls_discovered, data.urls_processed, data.extraction_results.items_scraped) == (
                2, 4, 1, 2), side.label

    @pytest.mark.parametrize("ahead", ["redis", "mongodb"])
    def test_higher_seq_wins_and_serves_the_url_sets(self, make_hybrid, servers, ahead, caplog):
        store = make_hybrid()
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, discovered=[discovered(i, start=i == 0) for i in range(4)]), TTL)
        getattr(store, ahead).store.apply(cid, batch(2, processed=[fp(0), fp(1)], discovered=[discovered(4)]), TTL)
        got = store.get(cid)
        assert (got.seq, got.pipeline_data.urls_processed) == (2, 2)
        assert set(store.processed_fingerprints(cid)) == {fp(0), fp(1)}
        assert set(store.pending_start_fingerprints(cid)) == set()
        assert store.pending_requests(cid, None, 10)[0] == [b"request-2", b"request-3", b"request-4"]
        assert store.find_resumable("products", "shop.test", "product_catalog").seq == 2
        behind = "MongoDB" if ahead == "redis" else "Redis"
        assert len(_logged(caplog, logging.ERROR if behind == "MongoDB" else logging.WARNING,
                           cid, behind, "up to batch 1")) == 1
        # The store behind gets no more writes: it would look current, with a gap.
        store.apply(cid, batch(3, processed=[fp(2)]), TTL)
        assert getattr(store, "mongodb" if ahead == "redis" else "redis").store.get(cid).seq == 1
        assert store.get(cid).seq == 3

    def test_list_takes_the_newer_copy(self, make_hybrid):
        store = make_hybrid()
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1), TTL)
        store.redis.store.apply(cid, batch(2, status=CheckpointStatus.COMPLETED), TTL)  # MongoDB behind
        assert [(c.checkpoint_id, c.seq) for c in store.list_checkpoints()] == [(cid, 2)]
        assert list(store.list_checkpoints(status="active")) == []
        assert [c.checkpoint_id for c in store.list_checkpoints(status="completed")] == [cid]

    def test_list_and_delete_need_mongodb(self, make_hybrid, servers, client):
        """MongoDB is the durable copy: a list without it may lack checkpoints, and a delete
        without it leaves a copy that would come back."""
        redis_server, mongo_server = servers
        store = make_hybrid()
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, discovered=[discovered(1)]), TTL)
        client.save()
        redis_server.stop()
        assert [c.checkpoint_id for c in store.list_checkpoints()] == [cid]
        redis_server.start()
        mongo_server.stop()
        with pytest.raises(StoreUnavailable, match="MongoDB"):
            list(store.list_checkpoints())
        with pytest.raises(StoreUnavailable, match=f"Checkpoint {cid} may still be in MongoDB"):
            store.delete(cid)
        assert store.redis.store.get(cid) is None
        mongo_server.start()
        assert store.delete(cid) is True
        assert store.get(cid) is None
        assert list(store.list_checkpoints()) == []

    def test_corrupt_redis_record_uses_mongodb(self, make_hybrid, servers, client, caplog):
        store = make_hybrid()
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        store.apply(cid, batch(1, discovered=[discovered(1), discovered(2)], processed=[fp(1)]), TTL)
        client.hset(f"{HYBRID_PREFIX}:cp:{cid}:record", "spider", b"\xff\xfe")
        assert store.get(cid) == store.mongodb.store.get(cid)
        assert store.find_resumable("products", "shop.test", "product_catalog").checkpoint_id == cid
        assert list(store.processed_fingerprints(cid)) == [fp(1)]
        assert store.pending_requests(cid, None, 10)[0] == [b"request-2"]
        warnings = _logged(caplog, logging.WARNING, cid, "Redis")
        assert len(warnings) == 1 and "Ignoring" in warnings[0]
        assert self.stat(store, "redis_corrupt") == 1
        store.mongodb.store.db["checkpoints"].update_one(
            {"checkpoint_id": cid}, {"$set": {"pipeline_step": "two"}}, bypass_document_validation=True)
        with pytest.raises(CorruptCheckpointError, match=cid):
            store.get(cid)

    def test_absence_is_sure_only_from_mongodb_and_close_reports_what_it_lacks(
        self, make_hybrid, servers, client, caplog
    ):
        redis_server, mongo_server = servers
        store = make_hybrid()
        cp = new_checkpoint()
        cid = cp.checkpoint_id
        store.create(cp)
        client.save()
        redis_server.stop()
        assert store.get("no-such-id") is None  # MongoDB says so
        redis_server.start()
        mongo_server.stop()
        with pytest.raises(StoreUnavailable, match="MongoDB"):
            store.get("no-such-id")  # Redis may have lost what MongoDB holds
        store.apply(cid, batch(1, discovered=[discovered(1)]), TTL)
        store.apply(cid, batch(2, processed=[fp(1)]), TTL)
        store.close()  # tries MongoDB a last time
        errors = _logged(caplog, logging.ERROR, cid, "still unreachable when the store closed")
        assert len(errors) == 1 and "lacks batches 1-2," in errors[0]
