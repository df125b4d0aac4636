"""The extension's bookkeeping, driven directly: what goes into a batch, and in which order."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from scrapy import Request, Spider
from scrapy.exceptions import DontCloseSpider, IgnoreRequest
from scrapy.http import HtmlResponse
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from scrapy_checkpoint import (
    CheckpointDownloaderMiddleware,
    CheckpointExtension,
    CheckpointSpiderMiddleware,
    SpiderCheckpoint,
    item_key,
)
from scrapy_checkpoint._fingerprints import FingerprintSet
from scrapy_checkpoint.extension import RECORD_META, track_output
from scrapy_checkpoint.models import POSITION_BITS, Batch


class ShopSpider(Spider):
    name = "shop"
    checkpoint_enabled = True
    checkpoint_steps = {"parse": 1, "parse_product": 4}

    def parse(self, response):
        pass

    def parse_product(self, response):
        pass


@pytest.fixture
def ext(tmp_path):
    crawler = get_crawler(ShopSpider, {"CHECKPOINT_ENABLED": True, "CHECKPOINT_DIR": str(tmp_path)})
    crawler.spider = crawler._create_spider()
    return build_from_crawler(CheckpointExtension, crawler)


def response_for(request: Request) -> HtmlResponse:
    return HtmlResponse(request.url, body=b"<html></html>", request=request)


def fp(ext, request):
    return ext.fingerprint(request)


def test_processed_waits_for_output_and_items(ext):
    spider = ext.crawler.spider
    listing = Request("http://shop.test/c?page=2", callback=spider.parse)
    response = response_for(listing)
    child = Request("http://shop.test/p/1", callback=spider.parse_product)
    item1, item2 = {"sku": "1"}, {"sku": "2"}

    ext.work_started(response, listing)
    ext.request_scheduled(child, spider)
    ext.output_item(response, item1)
    ext.output_item(response, item2)
    ext.item_scraped(item1, response)
    ext.work_finished(response)
    assert ext._batch.processed == []  # an item is still in the pipelines
    # Known to pipelines by the page's fingerprint and its place in the callback's output.
    assert item_key(item2) == f"{fp(ext, listing).hex()}-1"
    ext.item_scraped(item2, response)
    assert item_key(item1) is None  # forgotten once the page is done
    batch = ext._batch
    assert batch.processed == [fp(ext, listing)]
    # Everything the callback produced is in the same batch as, or before, the mark.
    assert [r.fingerprint for r in batch.discovered] == [fp(ext, child)]
    assert batch.item_counts == {"dict": 2}


def test_item_error_leaves_request_pending(ext):
    """A pipeline that raised (a database down) wrote nothing: the page must be done again."""
    spider = ext.crawler.spider
    request = Request("http://shop.test/p/8", callback=spider.parse_product)
    response = response_for(request)
    item = {"sku": "8"}
    ext.work_started(response, request)
    ext.output_item(response, item)
    ext.work_finished(response)
    ext.item_failed(item, response, Failure(ConnectionError("down")))
    assert ext._batch.processed == []
    assert ext.stats.get_value("checkpoint/pending/item_error") == 1
    assert response not in ext._work and item_key(item) is None


def test_dropped_item_also_completes(ext):
    spider = ext.crawler.spider
    request = Request("http://shop.test/p/9", callback=spider.parse_product)
    response = response_for(request)
    ext.work_started(response, request)
    ext.output_item(response, {"sku": "9"})
    ext.work_finished(response)
    ext.item_done(response)
    assert ext._batch.processed == [fp(ext, request)]
    assert ext._batch.item_counts == {}


def test_two_output_chains_for_one_response(ext):
    """A process_spider_exception that returns output starts a second chain."""
    spider = ext.crawler.spider
    request = Request("http://shop.test/p/3", callback=spider.parse_product)
    response = response_for(request)
    ext.work_started(response, request)
    ext.work_started(response, request)
    ext.work_finished(response)
    assert ext._batch.processed == []
    ext.work_finished(response)
    assert ext._batch.processed == [fp(ext, request)]


def test_exception_before_callback_marks_processed(ext):
    request = Request("http://shop.test/p/4")
    ext.work_failed(response_for(request), request)
    assert ext._batch.processed == [fp(ext, request)]


def test_duplicate_dropped_by_scheduler_is_not_recorded(ext):
    spider = ext.crawler.spider
    first = Request("http://shop.test/p/1")
    dup = Request("http://shop.test/p/1")
    ext.request_scheduled(first, spider)
    ext.request_scheduled(dup, spider)
    ext.request_dropped(dup)
    assert len(ext._batch.discovered) == 1
    assert ext._events == 1


def test_a_processed_mark_carries_the_position_its_discovery_was_recorded_at(ext):
    """SQLite keeps requests by position: a request's meta (RECORD_META) says where it is."""
    spider = ext.crawler.spider
    ext._record_tag = "cp-1"
    ext._batch = Batch(seq=7)
    first, second = Request("http://shop.test/p/1"), Request("http://shop.test/p/2")
    ext.request_scheduled(first, spider)
    ext.request_scheduled(second, spider)
    assert second.meta[RECORD_META] == ("cp-1", (7 << POSITION_BITS) + 1, fp(ext, second))
    ext.processed(second)
    assert ext._batch.positions == {fp(ext, second): (7 << POSITION_BITS) + 1}


def test_a_retry_is_not_recorded_twice_and_a_copied_meta_is_not_taken_for_its_own(ext):
    spider = ext.crawler.spider
    ext._record_tag = "cp-1"
    page = Request("http://shop.test/c/1")
    ext.request_scheduled(page, spider)
    retry = page.replace(dont_filter=True)  # what RetryMiddleware schedules: meta copied
    ext.request_scheduled(retry, spider)
    assert len(ext._batch.discovered) == 1
    child = Request("http://shop.test/p/1", meta=page.meta)  # meta=response.meta
    ext.request_scheduled(child, spider)
    assert [r.url for r in ext._batch.discovered] == [page.url, child.url]
    assert child.meta[RECORD_META][1:] == (ext._batch.next_position - 1, fp(ext, child))
    ext.processed(Request("http://shop.test/p/2", meta=page.meta))  # never recorded here
    assert ext._batch.positions == {}


def test_a_dropped_request_gives_up_its_position(ext):
    spider = ext.crawler.spider
    first, dup = Request("http://shop.test/p/1"), Request("http://shop.test/p/1")
    ext.request_scheduled(first, spider)
    ext.request_scheduled(dup, spider)
    ext.request_dropped(dup)
    assert RECORD_META not in dup.meta
    other = Request("http://shop.test/p/2")
    ext.request_scheduled(other, spider)
    assert other.meta[RECORD_META][1] == ext._batch.next_position - 1


def test_restored_requests_another_record_stands_for_are_superseded(ext):
    """A resume restores a pending record whose URL this run recorded again (the dupefilter
    drops it), or processed already: its own record goes, by its position, or, restored from
    the previous layout (no position), by its fingerprint."""
    spider = ext.crawler.spider
    ext._record_tag = "cp-1"
    done, twin = Request("http://shop.test/p/done"), Request("http://shop.test/p/twin")
    done.meta[RECORD_META] = ("cp-1", 5, fp(ext, done))
    twin.meta[RECORD_META] = ("cp-1", 6, fp(ext, twin))
    legacy = Request("http://shop.test/p/legacy")
    ext._processed_before = FingerprintSet([fp(ext, done)])
    ext._reseeding = True
    with pytest.raises(IgnoreRequest):
        ext.request_scheduled(done, spider)
    ext.request_scheduled(twin, spider)
    ext.request_dropped(twin)
    ext.request_scheduled(legacy, spider)
    ext.request_dropped(legacy)
    ext._reseeding = False
    assert ext._batch.discovered == []
    assert ext._batch.superseded == [(5, fp(ext, done)), (6, fp(ext, twin)), (-1, fp(ext, legacy))]


def test_start_requests_flagged(ext):
    spider = ext.crawler.spider
    ext.request_scheduled(Request("http://shop.test/", meta={"is_start_request": True}), spider)
    ext.request_scheduled(Request("http://shop.test/p/1"), spider)
    assert [r.start for r in ext._batch.discovered] == [True, False]


def test_unserializable_request_counted_and_logged_once(ext, caplog):
    spider = ext.crawler.spider
    for n in range(3):
        ext.request_scheduled(Request(f"http://shop.test/p/{n}", callback=lambda r: None), spider)
    assert ext._batch.discovered == []
    assert ext.crawler.stats.get_value("checkpoint/unserializable/ValueError") == 3
    warnings = [r for r in caplog.records if "cannot be saved" in r.getMessage()]
    assert len(warnings) == 1


def test_processed_before_is_filtered_unless_dont_filter(ext):
    spider = ext.crawler.spider
    done = Request("http://shop.test/p/1")
    ext._processed_before = FingerprintSet([fp(ext, done)])
    with pytest.raises(IgnoreRequest):
        ext.request_scheduled(done, spider)
    ext.request_scheduled(done.replace(dont_filter=True), spider)
    assert len(ext._batch.discovered) == 1
    assert ext.crawler.stats.get_value("checkpoint/skipped/processed") == 1


def test_start_requests_skipped_on_resume(ext):
    done, pending, new = (Request(f"http://shop.test/{n}") for n in ("done", "pending", "new"))
    ext._processed_before = FingerprintSet([fp(ext, done)])
    ext._pending_start = {fp(ext, pending)}
    assert [ext.skip_start_request(r) for r in (done, pending, new)] == [True, True, False]


@pytest.mark.parametrize(
    ("url", "meta", "expected"),
    [
        ("http://shop.test/c/shoes?page=3&sort=price", {}, ("http://shop.test/c/shoes?sort=price", 3)),
        ("http://shop.test/c/shoes", {"checkpoint_page": 7}, ("http://shop.test/c/shoes", 7)),
        ("http://shop.test/c/shoes?page=x", {}, None),
        ("http://shop.test/p/1", {}, None),
    ],
)
def test_pagination(ext, url, meta, expected):
    ext.spider_checkpoint = SpiderCheckpoint("id", False)
    ext.processed(Request(url, meta=meta))
    batch = ext._batch
    if expected is None:
        assert batch.pagination == {} and batch.current_page is None
    else:
        assert batch.pagination == {expected[0]: expected[1]}
        assert batch.current_page == expected[1]
        assert ext.spider_checkpoint.pagination == batch.pagination


def test_pipeline_step_from_callback_and_meta(ext):
    spider = ext.crawler.spider
    ext.processed(Request("http://shop.test/", callback=spider.parse))
    assert ext._batch.pipeline_step == 1
    ext.processed(Request("http://shop.test/p/1", callback=spider.parse_product))
    assert ext._batch.pipeline_step == 4
    ext.processed(Request("http://shop.test/x", meta={"checkpoint_step": 2}))
    assert ext._batch.pipeline_step == 4  # the furthest step reached


def test_state_saved_only_when_changed(ext):
    ext.spider_checkpoint = SpiderCheckpoint("id", False, state={"n": 1})
    ext._take_batch()
    assert ext._unflushed[-1].state == {"n": 1}
    ext._take_batch()
    assert len(ext._unflushed) == 1  # nothing new: no batch
    ext.spider_checkpoint.state["n"] = 2
    ext._take_batch()
    assert ext._unflushed[-1].state == {"n": 2}
    assert [b.seq for b in ext._unflushed] == [1, 2]


def test_state_that_is_not_json_is_reported(ext, caplog):
    ext.spider_checkpoint = SpiderCheckpoint("id", False, state={"when": object()})
    ext._take_batch()
    assert not ext._unflushed
    assert ext.crawler.stats.get_value("checkpoint/state/TypeError") == 1


def test_buffer_limit_drops_oldest_batches_and_says_what(ext, caplog):
    spider = ext.crawler.spider
    ext.settings = ext.settings.__class__(**{**ext.settings.__dict__, "buffer_limit": 5})
    for n in range(4):
        ext.request_scheduled(Request(f"http://shop.test/p/{n}"), spider)
        ext.processed(Request(f"http://shop.test/q/{n}"))
        ext._take_batch()
    # Batches of 2 events each; a limit of 5 keeps the newest 2 batches.
    assert [b.seq for b in ext._unflushed] == [3, 4]
    stats = ext.crawler.stats
    assert stats.get_value("checkpoint/dropped/requests") == 2
    assert stats.get_value("checkpoint/dropped/processed") == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "dropped batch 1: 1 discovered requests" in errors[0]
    assert "http://shop.test/p/0" in errors[0]


def test_batch_length_counts_events():
    batch = Batch(seq=1, processed=[b"x", b"y"], item_counts={"Product": 3})
    assert len(batch) == 5


def test_idle_crawl_refreshes_ttl(ext):
    ext._take_batch()
    assert not ext._unflushed  # nothing happened, recently
    ext._last_taken -= ext.settings.ttl / 4 + 1
    ext._take_batch()
    assert len(ext._unflushed) == 1 and len(ext._unflushed[0]) == 0


class ErrbackSpider(ShopSpider):
    def on_error(self, failure):
        yield Request("http://shop.test/fallback", callback=self.parse_product)
        yield {"sku": "from-errback"}


def downloader_middleware(ext):
    ext.crawler.extensions.middlewares = (ext,)  # what crawler.get_extension() looks through
    return build_from_crawler(CheckpointDownloaderMiddleware, ext.crawler)


def test_failed_download_without_errback_is_processed(ext):
    mw = downloader_middleware(ext)
    request = Request("http://shop.test/down")
    mw.process_exception(request, ConnectionRefusedError())
    assert ext._batch.processed == [fp(ext, request)]


def test_failed_download_with_errback_waits_for_its_output(tmp_path):
    crawler = get_crawler(ErrbackSpider, {"CHECKPOINT_ENABLED": True, "CHECKPOINT_DIR": str(tmp_path)})
    crawler.spider = spider = crawler._create_spider()
    ext = build_from_crawler(CheckpointExtension, crawler)
    mw = downloader_middleware(ext)
    request = Request("http://shop.test/down", errback=spider.on_error)
    assert ext.serializer.dumps(request)  # saved with its errback, before the failure
    mw.process_exception(request, ConnectionRefusedError())
    assert ext._batch.processed == []
    failure = Failure(ConnectionRefusedError())

    async def consume():
        output = []
        async for element in request.errback(failure):
            if isinstance(element, Request):
                ext.request_scheduled(element, spider)
            output.append(element)
        return output

    output = asyncio.run(consume())
    assert len(output) == 2 and ext._batch.processed == []  # the item is still in the pipelines
    ext.item_scraped(output[1], failure)
    assert ext._batch.processed == [fp(ext, request)]
    assert [r.url for r in ext._batch.discovered] == ["http://shop.test/fallback"]


def extension_with(tmp_path, **settings) -> CheckpointExtension:
    crawler = get_crawler(ShopSpider, {"CHECKPOINT_ENABLED": True, "CHECKPOINT_DIR": str(tmp_path), **settings})
    crawler.spider = crawler._create_spider()
    return build_from_crawler(CheckpointExtension, crawler)


def test_scheduled_request_recorded_without_private_parts(tmp_path):
    ext = extension_with(tmp_path, CHECKPOINT_PRIVATE_HEADERS=["X-Api-Key"], CHECKPOINT_PRIVATE_META=["api_token"])
    request = Request("http://shop.test/p/1", headers={"X-Api-Key": "SECRET-1", "Authorization": "Bearer kept"},
                      meta={"api_token": "SECRET-2"})
    ext.request_scheduled(request, ext.crawler.spider)
    (recorded,) = ext._batch.discovered
    assert b"SECRET" not in recorded.data
    back = ext.serializer.loads(recorded.data)
    assert back.headers["Authorization"] == b"Bearer kept"
    assert request.headers["X-Api-Key"] == b"SECRET-1" and request.meta["api_token"] == "SECRET-2"


def test_stored_items_leave_out_excluded_fields(tmp_path):
    ext = extension_with(tmp_path, CHECKPOINT_STORE_ITEMS=True, CHECKPOINT_ITEM_EXCLUDE_FIELDS=["email", "phone"])
    item = {"sku": "1", "email": "a@example.com", "phone": "555"}
    ext.item_scraped(item, None)
    assert ext._batch.items == [("dict", {"sku": "1"})]
    assert item == {"sku": "1", "email": "a@example.com", "phone": "555"}  # the feeds get it whole
    assert ext._batch.item_counts == {"dict": 1}


def test_held_restored_requests_wait_then_go_when_idle(ext, caplog):
    """Held (a login on its way), restored requests stay out of the scheduler; a crawl with
    nothing else to do releases them rather than wait for ever."""
    ext.spider_checkpoint = SpiderCheckpoint("cp-1", resumed=True, hold_restored=True)
    ext._reseed_done, ext._reseed_chunk = True, [b"not a request"]
    ext.scheduler_empty()
    assert ext._reseed_chunk == [b"not a request"]
    with pytest.raises(DontCloseSpider):
        ext.spider_idle()
    assert ext._reseed_chunk is None and not ext.spider_checkpoint.hold_restored
    assert any("holds its restored requests back" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


# Resuming: the processed requests are read while the first pending ones are downloaded.


def _scheduling(ext, outcomes):
    """An engine whose crawl() schedules as Scrapy's does: the extension may refuse."""

    def crawl(request):
        try:
            ext.request_scheduled(request, ext.crawler.spider)
        except IgnoreRequest:
            outcomes.append(("skipped", request.url))
        else:
            outcomes.append(("scheduled", request.url))

    ext.crawler.engine = SimpleNamespace(crawl=crawl, spider=ext.crawler.spider)


def test_requests_scheduled_while_the_processed_ones_load_are_held_then_checked(ext):
    spider = ext.crawler.spider
    outcomes = []
    _scheduling(ext, outcomes)
    ext._loading = Deferred()
    done, new = Request("http://shop.test/p/done"), Request("http://shop.test/p/new")
    for request in (done, new):  # a redirect, a request of another component
        with pytest.raises(IgnoreRequest):
            ext.request_scheduled(request, spider)
    ext._reseeding = True
    ext.request_scheduled(Request("http://shop.test/p/restored"), spider)  # pending in the store
    ext._reseeding = False
    ext.request_scheduled(Request("http://shop.test/p/always", dont_filter=True), spider)
    assert outcomes == [] and [r.url for r in ext._batch.discovered] == ["http://shop.test/p/always"]

    ext._loaded(FingerprintSet([fp(ext, done)]), set())
    assert outcomes == [("skipped", done.url), ("scheduled", new.url)]
    assert [r.url for r in ext._batch.discovered] == ["http://shop.test/p/always", new.url]
    assert ext.crawler.stats.get_value("checkpoint/held_while_loading") == 2
    assert ext.crawler.stats.get_value("checkpoint/restored/processed") == 1


def _consume_while_loading(ext, output, finish):
    """Consume *output* while the processed requests load; *finish* ends the load once the
    consumer waits for it. What was consumed before and after."""

    async def scenario():
        ext._loading = Deferred()
        consumed = []

        async def consume():
            async for element in output:
                consumed.append(element)

        task = asyncio.ensure_future(consume())
        while not ext._load_waiters and not task.done():
            await asyncio.sleep(0)
        before = list(consumed)
        finish()
        await task
        return before, consumed

    return asyncio.run(scenario())


def test_a_page_is_processed_only_once_its_requests_pass_the_loaded_processed_ones(ext):
    spider = ext.crawler.spider
    listing = Request("http://shop.test/c?page=2", callback=spider.parse)
    response = response_for(listing)
    item, child = {"sku": "1"}, Request("http://shop.test/p/1", callback=spider.parse_product)
    output = track_output(ext, response, listing, [item, child])
    before, after = _consume_while_loading(ext, output, lambda: ext._loaded(FingerprintSet(), set()))
    assert before == [item] and after == [item, child]
    ext.item_scraped(item, response)
    assert ext._batch.processed == [fp(ext, listing)]


def test_a_failed_read_of_the_processed_ones_leaves_the_page_pending(ext, caplog):
    spider = ext.crawler.spider
    listing = Request("http://shop.test/c?page=2", callback=spider.parse)
    response = response_for(listing)
    item, child = {"sku": "1"}, Request("http://shop.test/p/1", callback=spider.parse_product)
    closed = []

    async def close_spider_async(reason):
        closed.append(reason)

    ext.crawler.engine = SimpleNamespace(spider=spider, close_spider_async=close_spider_async)
    output = track_output(ext, response, listing, [item, child])
    before, after = _consume_while_loading(ext, output, lambda: ext._not_loaded(ConnectionError("gone")))
    assert before == after == [item] and closed == ["checkpoint_error"]
    ext.item_scraped(item, response)
    assert ext._batch.processed == [] and not ext._work
    assert any("processed requests of the checkpoint" in r.getMessage() for r in caplog.records
               if r.levelno == logging.ERROR)


def test_start_requests_wait_for_the_processed_ones(ext):
    done, new = Request("http://shop.test/done"), Request("http://shop.test/new")

    async def start():
        for request in (done, new):
            yield request

    ext.crawler.get_extension = lambda cls: ext  # the middleware finds this extension
    middleware = CheckpointSpiderMiddleware(ext.crawler)
    before, after = _consume_while_loading(
        ext, middleware.process_start(start()), lambda: ext._loaded(FingerprintSet([fp(ext, done)]), set())
    )
    assert before == [] and after == [new]
