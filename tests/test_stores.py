"""The store contract: one mixin of behaviours, one subclass per backend."""

from __future__ import annotations

import threading

import pytest

from scrapy_checkpoint.exceptions import CorruptCheckpointError
from scrapy_checkpoint.models import CheckpointStatus
from scrapy_checkpoint.stores import SQLiteCheckpointStore

from . import batch, discovered, fp, new_checkpoint

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
        store.set_status(new.checkpoint_id, CheckpointStatus.COMPLETED, 2, TTL)
        assert store.find_resumable("products", "shop.test", "product_catalog").checkpoint_id == old.checkpoint_id
        store.set_status(old.checkpoint_id, CheckpointStatus.FAILED, 2, TTL)
        assert store.find_resumable("products", "shop.test", "product_catalog").checkpoint_id == old.checkpoint_id
        assert store.find_resumable("products", "shop.test", "product_detail") is None
        assert store.find_resumable("other", "shop.test", "product_catalog") is None

    def test_items_stored(self, store):
        cp = new_checkpoint()
        store.create(cp)
        items = [("Product", {"sku": "A1", "price": 9.5}), ("Review", {"stars": 4})]
        store.apply(cp.checkpoint_id, batch(1, items=items, item_counts={"Product": 1, "Review": 1}), TTL)
        assert list(store.items(cp.checkpoint_id)) == items

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


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path):
        return lambda: SQLiteCheckpointStore(tmp_path / "checkpoints.sqlite3")

    def test_corrupt_record_names_checkpoint(self, store):
        cp = new_checkpoint()
        store.create(cp)
        store.db.execute("UPDATE checkpoints SET record = '{\"spider\": 5}'")
        with pytest.raises(CorruptCheckpointError, match=cp.checkpoint_id):
            store.get(cp.checkpoint_id)
        with pytest.raises(CorruptCheckpointError, match=cp.checkpoint_id):
            store.find_resumable("products", "shop.test", "product_catalog")

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
            assert store.get(cp.checkpoint_id) is None
            assert store.db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0
        finally:
            store.close()
