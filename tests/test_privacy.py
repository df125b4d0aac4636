"""End to end: no credential or excluded item field reaches any store, and a crawl killed
with SIGKILL still resumes whole, its restored requests authenticated again."""

from __future__ import annotations

import base64
import json
import pickle
import re
import signal
from urllib.parse import urlsplit

import demo_support
import pymongo
import pytest
import redis
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from scrapy.settings import Settings

from scrapy_checkpoint.models import CheckpointStatus
from scrapy_checkpoint.settings import CheckpointSettings
from scrapy_checkpoint.stores import store_class

from . import RECORD_SENT, write_project
from .test_e2e import store_settings  # noqa: F401 (a fixture: every store)

pytestmark = pytest.mark.e2e

PRODUCTS = 300
KILL_AT = 100

BEARER = "Bearer SECRET-TOKEN-1"
PROXY_BASIC = "Basic " + base64.b64encode(b"puser:SECRET-PROXY-4").decode()
#: Every secret the spider puts on its requests and items, and the encoded forms
#: HttpAuthMiddleware and HttpProxyMiddleware would derive from them.
SECRETS = [
    b"SECRET-TOKEN-1",   # Authorization header
    b"SECRET-COOKIE-2",  # Cookie header
    b"SECRET-COOKIE-3",  # Request.cookies
    b"SECRET-PROXY-4",   # user:password in meta["proxy"]
    PROXY_BASIC.split()[1].encode(),
    b"SECRET-PROXYAUTH-5",  # Proxy-Authorization header
    b"SECRET-HTTPPASS-6",   # meta["http_pass"]
    base64.b64encode(b"huser:SECRET-HTTPPASS-6"),
    b"SECRET-PII-7",        # an item field in CHECKPOINT_ITEM_EXCLUDE_FIELDS
]
#: A header that is not private: seen in the raw data, it proves the scan reads the requests.
KEPT = b"KEPT-HEADER-8"

SETTINGS = """
BOT_NAME = "privacy"
SPIDER_MODULES = ["privacy_spider"]
ROBOTSTXT_OBEY = False
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False
LOG_LEVEL = "INFO"
ADDONS = {"scrapy_checkpoint.Addon": 100}
CHECKPOINT_ENABLED = True
CHECKPOINT_STORE_ITEMS = True
CHECKPOINT_ITEM_EXCLUDE_FIELDS = ["email"]
# Where a restored request gets its Authorization header back from.
DEFAULT_REQUEST_HEADERS = {"Authorization": "Bearer SECRET-TOKEN-1"}
DOWNLOADER_MIDDLEWARES = {
    "privacy_spider.ProxyCredentials": 740,  # before HttpProxyMiddleware (750)
    "privacy_spider.RecordSent": 950,        # what goes out, after every built-in middleware
}
SENT_HEADERS = ["Authorization", "Proxy-Authorization"]
"""

SPIDER = RECORD_SENT + '''
from urllib.parse import urlsplit

import scrapy

HEADERS = {
    "Authorization": "Bearer SECRET-TOKEN-1",
    "Cookie": "session=SECRET-COOKIE-2",
    "Proxy-Authorization": "Basic SECRET-PROXYAUTH-5",
    "X-Kept": "KEPT-HEADER-8",
}
COOKIES = {"sid": "SECRET-COOKIE-3"}


class ProxyCredentials:
    """Puts the proxy credentials, never stored, back into meta["proxy"]."""

    def process_request(self, request):
        proxy = request.meta.get("proxy")
        if proxy and "@" not in proxy:
            request.meta["proxy"] = proxy.replace("://", "://puser:SECRET-PROXY-4@", 1)


class ProductsSpider(scrapy.Spider):
    """The demo spider, its requests carrying every kind of credential."""

    name = "products"
    checkpoint_enabled = True

    def __init__(self, *args, base_url=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_url = base_url
        # The shop serves absolute-form requests too: it is its own HTTP proxy.
        self.proxy_meta = {
            "proxy": f"http://puser:SECRET-PROXY-4@{urlsplit(base_url).netloc}",
            "http_user": "huser",
            "http_pass": "SECRET-HTTPPASS-6",
        }

    async def start(self):
        yield scrapy.Request(self.base_url, headers=HEADERS, cookies=COOKIES)

    def parse(self, response):
        for href in response.css("ul.categories a.category::attr(href)").getall():
            yield response.follow(href, self.parse_category, headers=HEADERS, cookies=COOKIES)

    def parse_category(self, response):
        for href in response.css("ul.products a.product-link::attr(href)").getall():
            yield response.follow(href, self.parse_product, headers=HEADERS, meta=dict(self.proxy_meta))
        next_page = response.css('a[rel="next"]::attr(href)').get()
        if next_page:
            yield response.follow(next_page, self.parse_category, headers=HEADERS, cookies=COOKIES)

    def parse_product(self, response):
        yield {
            "sku": response.css("div.product .sku::text").get("").strip(),
            "url": response.url,
            "email": "SECRET-PII-7",
        }
'''


@pytest.fixture
def small_shop(tmp_path):
    log = tmp_path / "shop.log"
    with demo_support.running_shop(log, products=PRODUCTS, per_page=20, categories=3, latency=0.002) as url:
        yield url, log


def raw_data(tmp_path, extra) -> dict[str, list[bytes]]:
    """Everything the stores hold, as stored, by store: every file under CHECKPOINT_DIR (the
    SQLite database with its -wal and -shm), every Redis value, every MongoDB document as BSON."""
    found = {"files": [p.read_bytes() for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()]}
    if "CHECKPOINT_REDIS_URL" in extra:
        chunks = found["redis"] = []
        with redis.Redis.from_url(extra["CHECKPOINT_REDIS_URL"]) as client:
            keys = list(client.scan_iter(count=1000))
            assert any(k.startswith(b"checkpoint") for k in keys), keys
            for key in keys:
                chunks += [key, client.dump(key)]
                kind = client.type(key)
                if kind == b"string":
                    chunks.append(client.get(key))
                elif kind == b"hash":
                    chunks += [b for pair in client.hgetall(key).items() for b in pair]
                elif kind == b"list":
                    chunks += client.lrange(key, 0, -1)
                elif kind == b"set":
                    chunks += client.smembers(key)
                elif kind == b"zset":
                    chunks += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
                else:
                    raise AssertionError(f"Redis key {key!r} of type {kind!r} is not read")
    if "CHECKPOINT_MONGO_URI" in extra:
        chunks = found["mongodb"] = []
        raw = CodecOptions(document_class=RawBSONDocument)
        with pymongo.MongoClient(extra["CHECKPOINT_MONGO_URI"], serverSelectionTimeoutMS=5000) as client:
            db = client[extra["CHECKPOINT_MONGO_DATABASE"]]
            names = db.list_collection_names()
            assert "checkpoint_urls" in names, names
            for name in names:
                chunks += [doc.raw for doc in db.get_collection(name, codec_options=raw).find()]
    return found


def assert_no_secrets(stores, when):
    found = {(store, s.decode()) for store, chunks in stores.items() for s in SECRETS
             if any(s in chunk for chunk in chunks)}
    assert not found, f"{when}: stored in the checkpoint: {sorted(found)}"


def open_store(tmp_path, extra):
    values = {"CHECKPOINT_ENABLED": True, "CHECKPOINT_DIR": str(tmp_path / "checkpoints"), **extra}
    checkpoint_settings = CheckpointSettings.from_settings(Settings(values))
    store = store_class(checkpoint_settings).from_checkpoint_settings(checkpoint_settings)
    store.open()
    return store


def test_no_credentials_in_any_store(tmp_path, small_shop, store_settings):
    url, shop_log = small_shop
    project = write_project(tmp_path / "project", "privacy", SETTINGS, SPIDER)
    items = tmp_path / "items.jsonl"

    def crawl(run, **kwargs):
        extra = {
            "CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
            "CHECKPOINT_FLUSH_INTERVAL": 0.3,
            "CHECKPOINT_BATCH_SIZE": 50,
            "SENT_LOG": str(tmp_path / f"headers-{run}.jsonl"),
            **store_settings,
            **kwargs.pop("extra", {}),
        }
        return demo_support.run_crawl(project, url, items, extra, log_path=tmp_path / f"crawl-{run}.log",
                                      timeout=60, **kwargs)

    code, killed, log = crawl(1, kill_when_items=KILL_AT)
    assert (code, killed) == (-signal.SIGKILL, True), log.read_text()[-3000:]
    stores = raw_data(tmp_path, store_settings)
    for store, chunks in stores.items():
        if store != "files" or len(stores) == 1:  # with Redis or MongoDB, no SQLite database
            assert any(KEPT in chunk for chunk in chunks), f"the scan of {store} found no stored request"
    assert_no_secrets(stores, "after the kill")

    checkpoint_id = re.search(r"Checkpoint (\S+) started in", log.read_text()).group(1)
    store = open_store(tmp_path, store_settings)
    try:
        pending = [pickle.loads(data) for data in store.pending_requests(checkpoint_id, None, 10_000)[0]]
    finally:
        store.close()
    assert pending, "nothing pending at the kill"
    for stored in pending:
        assert not {b"Authorization", b"Cookie", b"Proxy-Authorization"} & stored["headers"].keys()
        assert stored["headers"][b"X-Kept"] == [KEPT]
        assert stored["cookies"] == {}
        assert "http_user" not in stored["meta"] and "http_pass" not in stored["meta"]
    pending_products = {s["url"]: s for s in pending if "/product/" in s["url"]}
    assert pending_products, "no product request pending at the kill"
    # The proxy stays, without its user and password.
    assert {s["meta"]["proxy"] for s in pending_products.values()} == {f"http://{urlsplit(url).netloc}"}

    code, killed, log = crawl(2, extra={"CHECKPOINT_RESUME": True})
    text = log.read_text()
    assert (code, killed) == (0, False), text[-3000:]
    assert f"Resuming checkpoint {checkpoint_id}" in text
    assert_no_secrets(raw_data(tmp_path, store_settings), "after the resume")

    summary = demo_support.summarize(items, shop_log, PRODUCTS)
    assert (summary["lost"], summary["duplicates"], summary["malformed_lines"]) == (0, 0, 0), summary
    store = open_store(tmp_path, store_settings)
    try:
        checkpoint = store.get(checkpoint_id)
        assert checkpoint.status is CheckpointStatus.COMPLETED
        assert checkpoint.pipeline_data.urls_processed == checkpoint.pipeline_data.urls_discovered
        stored_items = [item for _, item in store.items(checkpoint_id)]
    finally:
        store.close()
    assert stored_items and all("email" not in item and item["sku"] for item in stored_items)

    # The restored requests went out authenticated again: Authorization from
    # DEFAULT_REQUEST_HEADERS, the proxy's credentials from the ProxyCredentials middleware.
    sent = [json.loads(line) for line in (tmp_path / "headers-2.jsonl").read_text().splitlines()]
    restored = [line for line in sent if line["url"] in {s["url"] for s in pending}]
    assert restored, "no restored request was downloaded"
    for line in restored:
        assert line["Authorization"] == BEARER, line
        if line["url"] in pending_products:
            assert line["Proxy-Authorization"] == PROXY_BASIC, line
