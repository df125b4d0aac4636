"""End to end: a spider that logs in resumes with its restored requests sent after the login,
with the session cookie, never before it (the cookie jar is not part of a checkpoint)."""

from __future__ import annotations

import json

import demo_support
import pytest

from . import RECORD_SENT, write_project

pytestmark = pytest.mark.e2e

PRODUCTS = 200
#: Seconds the shop takes to answer the login: restored requests sent before it has answered
#: would go out without the session cookie.
LOGIN_DELAY = 1.0

SETTINGS = """
BOT_NAME = "login"
SPIDER_MODULES = ["login_spider"]
ROBOTSTXT_OBEY = False
TELNETCONSOLE_ENABLED = False
LOG_LEVEL = "INFO"
ADDONS = {"scrapy_checkpoint.Addon": 100}
CHECKPOINT_ENABLED = True
DOWNLOADER_MIDDLEWARES = {"login_spider.RecordSent": 950}  # after CookiesMiddleware (700)
SENT_HEADERS = ["Cookie"]
"""

SPIDER = RECORD_SENT + '''
import scrapy


class ProductsSpider(scrapy.Spider):
    name = "products"
    checkpoint_enabled = True

    def __init__(self, *args, base_url=None, login_delay="0", **kwargs):
        super().__init__(*args, **kwargs)
        self.base_url = base_url
        self.login_delay = login_delay

    async def start(self):
        # On a resume, the restored requests wait for the session.
        self.checkpoint.hold_restored = True
        yield scrapy.Request(f"{self.base_url}/login?delay={self.login_delay}", self.logged_in,
                             dont_filter=True, meta={"checkpoint_redo": True})

    def logged_in(self, response):
        self.checkpoint.hold_restored = False
        yield response.follow("/", self.parse)

    def parse(self, response):
        for href in response.css("ul.categories a.category::attr(href)").getall():
            yield response.follow(href, self.parse_category)

    def parse_category(self, response):
        for href in response.css("ul.products a.product-link::attr(href)").getall():
            yield response.follow(href, self.parse_product)
        next_page = response.css('a[rel="next"]::attr(href)').get()
        if next_page:
            yield response.follow(next_page, self.parse_category)

    def parse_product(self, response):
        yield {"sku": response.css("div.product .sku::text").get("").strip(), "url": response.url}
'''


@pytest.fixture
def shop(tmp_path):
    log = tmp_path / "shop.log"
    with demo_support.running_shop(log, products=PRODUCTS, per_page=20, categories=3, latency=0.002) as url:
        yield url, log


def test_restored_requests_wait_for_the_login(tmp_path, shop):
    url, shop_log = shop
    project = write_project(tmp_path / "project", "login", SETTINGS, SPIDER)
    items = tmp_path / "items.jsonl"

    def crawl(run, **kwargs):
        extra = {"CHECKPOINT_DIR": str(tmp_path / "checkpoints"), "CHECKPOINT_FLUSH_INTERVAL": 0.3,
                 "CHECKPOINT_BATCH_SIZE": 50, "SENT_LOG": str(tmp_path / f"sent-{run}.jsonl"),
                 **kwargs.pop("extra", {})}
        return demo_support.run_crawl(project, url, items, extra, log_path=tmp_path / f"crawl-{run}.log",
                                      timeout=60, args=["-a", f"login_delay={LOGIN_DELAY}"], **kwargs)

    _, killed, log = crawl(1, kill_when_items=PRODUCTS // 3)
    assert killed, log.read_text()[-3000:]
    code, _, log = crawl(2, extra={"CHECKPOINT_RESUME": True})
    text = log.read_text()
    assert code == 0 and "Resuming checkpoint" in text, text[-3000:]
    restored = int(text.split("'checkpoint/restored/requests': ")[1].split(",")[0])
    assert restored > 0, text[-3000:]

    login, *after = [json.loads(line) for line in (tmp_path / "sent-2.jsonl").read_text().splitlines()]
    assert login["url"].startswith(f"{url}/login") and login["Cookie"] == ""
    assert len(after) >= restored
    assert [s["url"] for s in after if s["Cookie"] != "session=demo"] == []
    summary = demo_support.summarize(items, shop_log, PRODUCTS)
    assert (summary["lost"], summary["duplicates"]) == (0, 0), summary
