"""CheckpointItemPipeline: items that pass every pipeline end their page's work without the
item_scraped signal; dropped and failed ones, through their signals, as before."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from pydispatch.dispatcher import getAllReceivers, liveReceivers
from scrapy import Request, Spider, signals
from scrapy.core.scraper import Scraper, Slot
from scrapy.exceptions import DropItem, NotConfigured
from scrapy.http import HtmlResponse
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from scrapy_checkpoint import CheckpointExtension, CheckpointItemPipeline, item_key

OURS = "scrapy_checkpoint.CheckpointItemPipeline"


class ShopSpider(Spider):
    name = "shop"
    checkpoint_enabled = True


class DropFlagged:
    def process_item(self, item):
        if item.get("drop"):
            raise DropItem("flagged")
        return item


class FailFlagged:
    def process_item(self, item):
        if item.get("fail"):
            raise ConnectionError("database down")
        return item


class Copy:
    """Returns a new object, as a pipeline that converts items does."""

    def process_item(self, item):
        return dict(item)


class KeySeen:
    """Records the idempotency key each item has while it is in the pipelines."""

    keys: list[str | None] = []

    def process_item(self, item):
        self.keys.append(item_key(item))
        return item


def scraper_with(tmp_path, pipelines: dict) -> tuple[CheckpointExtension, Scraper]:
    """An extension, and Scrapy's scraper with its item pipelines: ours last unless
    *pipelines* order it otherwise."""
    crawler = get_crawler(ShopSpider, {
        "CHECKPOINT_ENABLED": True, "CHECKPOINT_DIR": str(tmp_path),
        "ITEM_PIPELINES": {OURS: 10_000, **pipelines},
    })
    crawler._apply_settings()
    crawler.spider = crawler._create_spider()
    ext = build_from_crawler(CheckpointExtension, crawler)
    crawler.extensions.middlewares = (ext,)  # what crawler.get_extension() looks through
    scraper = Scraper(crawler)
    scraper.slot = Slot()
    return ext, scraper


def hears(ext: CheckpointExtension, signal) -> bool:
    return ext.item_scraped in liveReceivers(getAllReceivers(ext.crawler.signals.sender, signal))


def crawl_page(ext, scraper, url: str, items: list, *, key=None) -> tuple[Request, HtmlResponse]:
    """What Scrapy does with one page whose callback yields *items*: each goes through the
    item pipelines as the spider middleware passes it on."""
    request = Request(url)
    response = HtmlResponse(url, body=b"<html></html>", request=request)
    key = response if key is None else key

    async def run():
        ext.work_started(key, request)
        for item in items:
            ext.output_item(key, item)
            await scraper.start_itemproc_async(item, response=key)
        ext.work_finished(key)
        await asyncio.sleep(0)  # the signals' receivers run in Tasks of their own

    asyncio.run(run())
    return request, response


def test_scraped_items_end_their_page_without_the_signal(tmp_path):
    ext, scraper = scraper_with(tmp_path, {KeySeen: 100})
    KeySeen.keys = []
    assert not hears(ext, signals.item_scraped)
    request, _ = crawl_page(ext, scraper, "http://shop.test/p/1", [{"sku": "1"}, {"sku": "2"}])
    fingerprint = ext.fingerprint(request).hex()
    assert KeySeen.keys == [f"{fingerprint}-0", f"{fingerprint}-1"]
    assert ext._batch.processed == [ext.fingerprint(request)]
    assert ext._batch.item_counts == {"dict": 2}
    assert not ext._work and not ext._yielded and not hears(ext, signals.item_scraped)


def test_dropped_item_ends_its_page_uncounted(tmp_path):
    ext, scraper = scraper_with(tmp_path, {DropFlagged: 100})
    request, _ = crawl_page(ext, scraper, "http://shop.test/p/2", [{"sku": "2", "drop": True}, {"sku": "3"}])
    assert ext._batch.processed == [ext.fingerprint(request)]
    assert ext._batch.item_counts == {"dict": 1}
    assert not ext._work and not ext._yielded


def test_failing_pipeline_leaves_its_page_pending(tmp_path, caplog):
    ext, scraper = scraper_with(tmp_path, {FailFlagged: 100})
    with caplog.at_level(logging.ERROR):
        crawl_page(ext, scraper, "http://shop.test/p/4", [{"sku": "4"}, {"sku": "5", "fail": True}])
    assert ext._batch.processed == [] and ext._batch.item_counts == {}
    assert ext.stats.get_value("checkpoint/pending/item_error") == 1
    assert not ext._work and not ext._yielded


def test_pipeline_ordered_after_ours_keeps_the_signal(tmp_path, caplog):
    """A later pipeline may still drop or fail an item that reached ours: ours steps aside."""
    with caplog.at_level(logging.INFO, logger="scrapy_checkpoint.pipelines"):
        ext, scraper = scraper_with(tmp_path, {f"{__name__}.DropFlagged": 20_000})
    assert "Item pipelines are ordered after CheckpointItemPipeline in ITEM_PIPELINES " \
           f"({__name__}.DropFlagged)" in caplog.text
    assert [type(p) for p in scraper.itemproc.middlewares] == [DropFlagged]
    assert hears(ext, signals.item_scraped) and ext._yielded is None
    request, _ = crawl_page(ext, scraper, "http://shop.test/p/6", [{"sku": "6", "drop": True}, {"sku": "7"}])
    assert ext._batch.processed == [ext.fingerprint(request)]
    assert ext._batch.item_counts == {"dict": 1}


def test_items_from_start_are_recorded_at_once(tmp_path):
    """No page to wait for: the item_scraped signal's response (None) says so, and the
    extension listens to it from the first such item on."""
    ext, scraper = scraper_with(tmp_path, {})
    asyncio.run(scraper.start_itemproc_async({"sku": "s"}, response=None))
    assert ext._batch.item_counts == {"dict": 1}
    assert hears(ext, signals.item_scraped) and not ext._unmatched
    # Items of pages still end their page once, by the pipeline.
    request, _ = crawl_page(ext, scraper, "http://shop.test/p/8", [{"sku": "8"}])
    assert ext._batch.processed == [ext.fingerprint(request)]
    assert ext._batch.item_counts == {"dict": 2}


def test_item_replaced_by_an_earlier_pipeline_ends_its_page_by_the_signal(tmp_path):
    ext, scraper = scraper_with(tmp_path, {Copy: 100, DropFlagged: 200})
    request, _ = crawl_page(ext, scraper, "http://shop.test/p/9", [{"sku": "9"}, {"sku": "10", "drop": True}])
    assert ext._batch.processed == [ext.fingerprint(request)]
    assert ext._batch.item_counts == {"dict": 1}
    assert not ext._work and not ext._unmatched


def test_objects_a_pipeline_replaced_are_swept_and_keep_no_response(tmp_path):
    ext, scraper = scraper_with(tmp_path, {Copy: 100})
    ext._sweep_at = 2
    for n in range(3):
        crawl_page(ext, scraper, f"http://shop.test/p/{20 + n}", [{"sku": str(n)}])
    assert len(ext._batch.processed) == 3 and ext._batch.item_counts == {"dict": 3}
    # The signal ended their pages; the originals' entries are left to the sweep, which ran
    # before the third page's item was added.
    assert [entry[0] for entry in ext._yielded.values()] == [{"sku": "2"}]
    gc.collect()
    assert all(entry[1]() is None for entry in ext._yielded.values())


def test_one_object_yielded_by_two_pages(tmp_path):
    ext, scraper = scraper_with(tmp_path, {})
    shared = {"sku": "shared"}
    first, second = Request("http://shop.test/p/11"), Request("http://shop.test/p/12")
    responses = [HtmlResponse(r.url, body=b"", request=r) for r in (first, second)]

    async def run():
        for response in responses:
            ext.work_started(response, response.request)
            ext.output_item(response, shared)
        for response in responses:
            ext.work_finished(response)
        await scraper.start_itemproc_async(shared, response=responses[1])
        await asyncio.sleep(0)
        assert ext._batch.processed == [ext.fingerprint(second)]
        await scraper.start_itemproc_async(shared, response=responses[0])
        await asyncio.sleep(0)

    asyncio.run(run())
    assert ext._batch.processed == [ext.fingerprint(second), ext.fingerprint(first)]
    assert not ext._work and not ext._yielded and not ext._unmatched


def test_needs_the_extension():
    crawler = get_crawler(ShopSpider)
    with pytest.raises(NotConfigured):
        build_from_crawler(CheckpointItemPipeline, crawler)
