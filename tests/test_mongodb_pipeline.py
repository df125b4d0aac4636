"""CheckpointMongoDBPipeline: upserts by item key on a MongoDB wire server; killed crawls write each item once."""

from __future__ import annotations

import asyncio
import importlib
import random
import re
import socket
import sys
import time
from datetime import datetime, timezone

import pytest
from scrapy import Request, Spider
from scrapy.pipelines import ItemPipelineManager
from scrapy.settings import Settings
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from scrapy_checkpoint import SpiderCheckpoint
from scrapy_checkpoint.outputs import keys
from scrapy_checkpoint.settings import MongoItemsSettings

PIPELINE = "scrapy_checkpoint.outputs.mongodb.CheckpointMongoDBPipeline"


class ProductsSpider(Spider):
    name = "products"


def make_crawler(uri, database, **settings):
    crawler = get_crawler(ProductsSpider, {
        "CHECKPOINT_MONGO_ITEMS_URI": uri, "CHECKPOINT_MONGO_ITEMS_DATABASE": database, **settings,
    })
    crawler.spider = crawler._create_spider()
    return crawler


def make_pipeline(uri, database, **settings):
    from scrapy_checkpoint.outputs.mongodb import CheckpointMongoDBPipeline

    return build_from_crawler(CheckpointMongoDBPipeline, make_crawler(uri, database, **settings))


def run(pipeline, *items):
    """Open the pipeline, pass *items* through it in order, close it."""

    async def go():
        await pipeline.open_spider()
        try:
            return [await pipeline.process_item(item) for item in items]
        finally:
            await pipeline.close_spider()

    return asyncio.run(go())


def keyed(pipeline, item, url="http://shop.test/p/1", position=0):
    """*item* as the checkpoint extension leaves it: with the key of its page and position."""
    fingerprint = pipeline.crawler.request_fingerprinter.fingerprint
    keys.remember(item, Request(url), position, fingerprint)
    return item


@pytest.fixture
def db(mongo_server, mongo_uri_db):
    from pymongo import MongoClient

    uri, database = mongo_uri_db
    with MongoClient(uri, tz_aware=True) as client:
        yield client[database]


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once closed


# Writing


def test_same_key_twice_is_one_document(mongo_uri_db, db):
    pipeline = make_pipeline(*mongo_uri_db)
    pipeline.crawler.spider.checkpoint = SpiderCheckpoint("cp-1", resumed=False)
    first = keyed(pipeline, {"sku": "1", "price": 10.0})
    # The page redone after a kill: a new object, the same key.
    again = keyed(pipeline, {"sku": "1", "price": 9.5})
    before = datetime.now(timezone.utc)
    try:
        assert run(pipeline, first, again) == [first, again]
        key = keys.item_key(first)
    finally:
        keys.forget([id(first), id(again)])
    assert re.fullmatch(r"[0-9a-f]{40}-0", key)
    docs = list(db["items"].find())
    assert len(docs) == 1
    doc = docs[0]
    assert {k: v for k, v in doc.items() if k != "scraped_at"} == {
        "_id": key, "item": {"sku": "1", "price": 9.5}, "item_type": "dict",
        "spider": "products", "checkpoint_id": "cp-1",
    }
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= doc["scraped_at"]
    assert doc["scraped_at"].microsecond % 1000 == 0
    stats = pipeline.crawler.stats
    assert stats.get_value("checkpoint/mongodb_items/inserted") == 1
    assert stats.get_value("checkpoint/mongodb_items/replaced") == 1


def test_positions_and_pages_are_separate_documents(mongo_uri_db, db):
    pipeline = make_pipeline(*mongo_uri_db)
    items = [
        keyed(pipeline, {"sku": "1"}, position=0),
        keyed(pipeline, {"sku": "2"}, position=1),
        keyed(pipeline, {"sku": "3"}, url="http://shop.test/p/3"),
    ]
    try:
        run(pipeline, *items)
    finally:
        keys.forget([id(i) for i in items])
    assert sorted(d["item"]["sku"] for d in db["items"].find()) == ["1", "2", "3"]


def test_no_key_inserts_every_time(mongo_uri_db, db):
    from bson import ObjectId

    pipeline = make_pipeline(*mongo_uri_db)
    item = {"sku": "1"}
    assert keys.item_key(item) is None  # checkpoints off: nobody remembered it
    run(pipeline, item, item)
    docs = list(db["items"].find())
    assert len(docs) == 2
    assert all(isinstance(d["_id"], ObjectId) for d in docs)
    assert [d["checkpoint_id"] for d in docs] == [None, None]  # the spider has no checkpoint
    assert pipeline.crawler.stats.get_value("checkpoint/mongodb_items/inserted") == 2


def test_item_classes(mongo_uri_db, db):
    from dataclasses import dataclass

    @dataclass
    class Product:
        sku: str
        price: float

    pipeline = make_pipeline(*mongo_uri_db)
    run(pipeline, Product("7", 1.5))
    doc = db["items"].find_one()
    assert (doc["item"], doc["item_type"]) == ({"sku": "7", "price": 1.5}, "Product")


def test_collection_setting(mongo_uri_db, db):
    pipeline = make_pipeline(*mongo_uri_db, CHECKPOINT_MONGO_ITEMS_COLLECTION="catalog")
    run(pipeline, {"sku": "1"})
    assert db["catalog"].count_documents({}) == 1
    assert db["items"].count_documents({}) == 0


def test_falls_back_to_the_store_settings(mongo_uri_db, db):
    uri, database = mongo_uri_db
    crawler = get_crawler(ProductsSpider, {"CHECKPOINT_MONGO_URI": uri, "CHECKPOINT_MONGO_DATABASE": database})
    crawler.spider = crawler._create_spider()
    from scrapy_checkpoint.outputs.mongodb import CheckpointMongoDBPipeline

    run(build_from_crawler(CheckpointMongoDBPipeline, crawler), {"sku": "1"})
    assert db["items"].count_documents({}) == 1


def test_scrapy_calls_it_without_warnings(mongo_uri_db, db):
    """Scrapy 2.19's own manager: no spider argument, no deprecation (filterwarnings=error)."""
    crawler = make_crawler(*mongo_uri_db, ITEM_PIPELINES={PIPELINE: 400})
    manager = ItemPipelineManager.from_crawler(crawler)
    item = {"sku": "1"}

    async def go():
        await manager.open_spider_async()
        try:
            return await manager.process_item_async(item)
        finally:
            await manager.close_spider_async()

    assert asyncio.run(go()) is item
    assert db["items"].count_documents({}) == 1


# Failing loudly


def test_write_error_propagates(mongo_uri_db, db):
    from bson.errors import InvalidDocument

    pipeline = make_pipeline(*mongo_uri_db)
    with pytest.raises(InvalidDocument):
        run(pipeline, {"sku": "1", "when": object()})
    assert db["items"].count_documents({}) == 0


def test_unreachable_at_startup_fails_fast_without_password():
    from pymongo.errors import ConnectionFailure

    port = unused_port()
    pipeline = make_pipeline(f"mongodb://scraper:s3cret@127.0.0.1:{port}/?authSource=admin", "db",
                             CHECKPOINT_STORE_TIMEOUT=0.5)
    started = time.monotonic()
    with pytest.raises(ConnectionFailure, match=rf"cannot reach MongoDB mongodb://scraper:\*\*\*@127\.0\.0\.1:{port}") as info:
        run(pipeline)
    assert time.monotonic() - started < 10  # far below pymongo's default 30 s, with room for a busy machine
    assert "s3cret" not in str(info.value)


def test_invalid_uri_fails_without_password():
    pipeline = make_pipeline("mongodb://scraper:s3cret@db.test:port/", "db")
    with pytest.raises(ValueError, match=r"CHECKPOINT_MONGO_ITEMS_URI \(.*\) is not a valid MongoDB URI") as info:
        run(pipeline)
    assert "s3cret" not in str(info.value)


def test_outage_propagates(mongo_server, mongo_uri_db, db):
    """An outage fails the item after CHECKPOINT_STORE_TIMEOUT; the next write after it works."""
    from pymongo.errors import ConnectionFailure

    pipeline = make_pipeline(*mongo_uri_db, CHECKPOINT_STORE_TIMEOUT=1.0)

    async def go():
        await pipeline.open_spider()
        try:
            await pipeline.process_item({"sku": "1"})
            mongo_server.stop()
            try:
                started = time.monotonic()
                with pytest.raises(ConnectionFailure):
                    await pipeline.process_item({"sku": "2"})
                assert time.monotonic() - started < 10
            finally:
                mongo_server.start()
            await pipeline.process_item({"sku": "3"})
        finally:
            await pipeline.close_spider()

    asyncio.run(go())
    assert sorted(d["item"]["sku"] for d in db["items"].find()) == ["1", "3"]


def test_needs_pymongo(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymongo", None)
    monkeypatch.delitem(sys.modules, "scrapy_checkpoint.outputs.mongodb", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'scrapy-checkpoint\[mongodb\]'"):
        importlib.import_module("scrapy_checkpoint.outputs.mongodb")


# Settings: one test per rule


def items_settings(**values) -> MongoItemsSettings:
    return MongoItemsSettings.from_settings(Settings(values))


def test_settings_defaults_and_fallbacks(monkeypatch):
    monkeypatch.delenv("ENABLE_CHECKPOINTS", raising=False)
    # Checkpoints off (the default): the pipeline does not care.
    s = items_settings(CHECKPOINT_MONGO_URI="mongodb://db.test")
    assert (s.uri, s.uri_setting, s.database, s.collection, s.timeout) == (
        "mongodb://db.test", "CHECKPOINT_MONGO_URI", "scrapy_checkpoint", "items", 5.0)
    s = items_settings(CHECKPOINT_MONGO_URI="mongodb://store.test", CHECKPOINT_MONGO_DATABASE="crawls",
                       CHECKPOINT_MONGO_ITEMS_URI="mongodb+srv://items.test",
                       CHECKPOINT_MONGO_ITEMS_DATABASE="out", CHECKPOINT_MONGO_ITEMS_COLLECTION="products",
                       CHECKPOINT_STORE_TIMEOUT=2)
    assert (s.uri, s.uri_setting, s.database, s.collection, s.timeout) == (
        "mongodb+srv://items.test", "CHECKPOINT_MONGO_ITEMS_URI", "out", "products", 2.0)
    assert items_settings(CHECKPOINT_MONGO_URI="mongodb://h", CHECKPOINT_MONGO_DATABASE="crawls").database == "crawls"


def test_settings_need_a_uri():
    with pytest.raises(ValueError, match=r"CHECKPOINT_MONGO_ITEMS_URI \(None\) and CHECKPOINT_MONGO_URI \(None\) "
                                         r"are both unset"):
        items_settings()


def test_settings_uri_is_a_string():
    with pytest.raises(ValueError, match=r"CHECKPOINT_MONGO_ITEMS_URI \(27017\) must be a string"):
        items_settings(CHECKPOINT_MONGO_ITEMS_URI=27017)


def test_settings_uri_is_a_mongodb_uri_and_stays_secret():
    with pytest.raises(ValueError, match=r"CHECKPOINT_MONGO_ITEMS_URI \('redis://u:\*\*\*@h'\) must be a MongoDB "
                                         r"URI starting with 'mongodb://' or 'mongodb\+srv://'") as info:
        items_settings(CHECKPOINT_MONGO_ITEMS_URI="redis://u:s3cret@h")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("value", ["my.db", "a/b", "a b", "$x", "x" * 64])
def test_settings_database_name(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_MONGO_ITEMS_DATABASE \(.*\) must be a MongoDB database name"):
        items_settings(CHECKPOINT_MONGO_ITEMS_URI="mongodb://h", CHECKPOINT_MONGO_ITEMS_DATABASE=value)


@pytest.mark.parametrize("value", ["$items", "system.items", "a\0b"])
def test_settings_collection_name(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_MONGO_ITEMS_COLLECTION \(.*\) must be a MongoDB collection name"):
        items_settings(CHECKPOINT_MONGO_ITEMS_URI="mongodb://h", CHECKPOINT_MONGO_ITEMS_COLLECTION=value)


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_settings_timeout(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_STORE_TIMEOUT \(.*\) must be a positive number of seconds"):
        items_settings(CHECKPOINT_MONGO_ITEMS_URI="mongodb://h", CHECKPOINT_STORE_TIMEOUT=value)


def test_pipeline_validates_at_startup():
    from scrapy_checkpoint.outputs.mongodb import CheckpointMongoDBPipeline

    crawler = get_crawler(ProductsSpider, {})
    with pytest.raises(ValueError, match="are both unset"):
        build_from_crawler(CheckpointMongoDBPipeline, crawler)


# End to end


def crawl_settings(uri, database, **more):
    """Settings of a demo crawl that writes its items through the pipeline."""
    return {"ITEM_PIPELINES": {PIPELINE: 400}, "CHECKPOINT_MONGO_ITEMS_URI": uri,
            "CHECKPOINT_MONGO_ITEMS_DATABASE": database, **more}


@pytest.mark.e2e
def test_hard_kills_write_each_item_once(tmp_path, shop, mongo_uri_db, db, request):
    """SIGKILL 3 times at random item counts, resume to the end: one document per product."""
    import demo_support

    from tests.test_e2e import SEED, checkpoint_id_of, crawl

    rng = random.Random(SEED)
    url, log, products = shop
    uri, database = mongo_uri_db
    extra = crawl_settings(uri, database)
    kills = 3
    points = sorted(rng.sample(range(50, products - 50), kills))
    logs = []
    for n, point in enumerate(points):
        code, killed, crawl_log = crawl(url, tmp_path, resume=n > 0, kill_when_items=point, extra=dict(extra))
        assert killed, f"run {n} ended before its kill point {point} (seed {SEED}): {crawl_log}"
        logs.append(crawl_log)
    checkpoint_id = checkpoint_id_of(logs[0])
    code, killed, crawl_log = crawl(url, tmp_path, resume=True, extra=dict(extra))
    logs.append(crawl_log)
    text = crawl_log.read_text()
    assert (code, killed) == (0, False), text[-3000:]
    assert f"Resuming checkpoint {checkpoint_id}" in text
    summary = demo_support.summarize(tmp_path / "items.jsonl", log, products)
    print(f"mongodb pipeline, hard kills (seed {SEED}, kill points {points}): {summary}")
    assert summary["lost"] == 0, summary
    for path in logs:
        text = path.read_text()
        assert "Error processing" not in text, path  # no item failed in the pipelines
        assert not re.search(r"\w+Warning:", text), path  # no deprecation or other warning

    docs = list(db["items"].find())
    skus = [d["item"]["sku"] for d in docs]
    assert len(docs) == products, (len(docs), len(set(skus)), summary)
    assert len(set(skus)) == products
    assert all(re.fullmatch(r"[0-9a-f]{40}-0", d["_id"]) for d in docs)
    assert all(d["checkpoint_id"] is not None for d in docs)
    assert {d["checkpoint_id"] for d in docs} == {checkpoint_id}  # every run resumed the first
    assert {(d["item_type"], d["spider"]) for d in docs} == {("Product", "products")}


@pytest.mark.e2e
def test_outage_leaves_pages_pending_for_a_resume(tmp_path, shop, mongo_server, mongo_uri_db, db):
    """MongoDB down under the pipeline (not the checkpoint store): the items it failed on
    leave their pages pending, the crawl ends with its checkpoint failed, and a resume
    writes them: one document per product."""
    import demo_support

    from tests.test_e2e import crawl
    from tests.test_faults import Outage, crawl_through

    url, log, products = shop
    uri, database = mongo_uri_db
    extra = crawl_settings(uri, database, CHECKPOINT_STORE_TIMEOUT=0.5)
    outage = Outage([mongo_server], tmp_path / "items.jsonl", tmp_path / "crawl-outage.log",
                    seen="Error processing", at_items=products // 4)
    code, _, first_log = crawl_through(outage, url, tmp_path, extra=dict(extra))
    text = first_log.read_text()
    assert code == 0, text[-3000:]
    assert "stay pending because an item pipeline raised" in text and "saved as failed" in text, text[-3000:]
    assert db["items"].count_documents({}) < products
    code, _, last_log = crawl(url, tmp_path, resume=True, extra=dict(extra))
    text = last_log.read_text()
    assert code == 0 and "Resuming checkpoint" in text and "saved as completed" in text, text[-3000:]
    skus = [d["item"]["sku"] for d in db["items"].find()]
    assert len(skus) == len(set(skus)) == products, demo_support.summarize(tmp_path / "items.jsonl", log, products)
