"""The fashion shops of the query example: their catalogs, their search, and their spiders
crawling them through `scrapy crawl`, whole or for a query's intent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import urlopen

import demo_support
import fashion_shop
import pytest
from fashion_shop import Catalog
from shop.spiders.fashion import LumiereSpider, NorthwindSpider

from scrapy_checkpoint.models import ParsedIntent

PRODUCTS = 200
PER_PAGE = 10
RED_DRESS_UNDER_50 = '{"product_type": "dress", "attributes": {"color": "red"}, "price_range": {"max": 50}}'


@pytest.fixture(scope="module")
def northwind(tmp_path_factory):
    """A Northwind shop; yields (url, its log)."""
    log = tmp_path_factory.mktemp("northwind") / "shop.log"
    with demo_support.running_fashion_shop("northwind", log, PRODUCTS, per_page=PER_PAGE) as url:
        yield url, log


@pytest.fixture(scope="module")
def lumiere(tmp_path_factory):
    log = tmp_path_factory.mktemp("lumiere") / "shop.log"
    with demo_support.running_fashion_shop("lumiere", log, PRODUCTS, per_page=PER_PAGE) as url:
        yield url, log


def get(url: str) -> str:
    with urlopen(url) as response:
        return response.read().decode()


def search_skus(url: str, query: dict | list) -> list[str]:
    """Every sku the shop's search lists, following its pages."""
    skus, page = [], f"{url}/search?{urlencode(query, doseq=True)}"
    while page:
        text = get(page)
        skus += re.findall(r'href="/product/([^"]+)"', text)
        next_page = re.search(r'rel="next" href="([^"]+)"', text)
        page = next_page and url + next_page.group(1).replace("&amp;", "&")
    return skus


def skus(products: list[dict]) -> list[str]:
    return [product["sku"] for product in products]


# -- catalogs ---------------------------------------------------------------------------------


def test_catalog_is_deterministic_and_scales():
    catalog = Catalog("lumiere", PRODUCTS)
    assert catalog.products == Catalog("lumiere", PRODUCTS).products
    # A bigger shop adds products; it does not change the first ones.
    assert Catalog("lumiere", 2 * PRODUCTS).products[:PRODUCTS] == catalog.products
    # Nor does another process, whatever its hash seed.
    script = f"import fashion_shop, json; print(json.dumps(fashion_shop.Catalog('lumiere', {PRODUCTS}).products))"
    for seed in ("1", "2"):
        output = subprocess.run(
            [sys.executable, "-c", script], cwd=demo_support.PROJECT_DIR, check=True,
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert json.loads(output) == catalog.products


def test_shops_differ_and_share_every_third_model():
    northwind, lumiere = Catalog("northwind", PRODUCTS), Catalog("lumiere", PRODUCTS)
    assert {p["currency"] for p in northwind.products} == {"USD"}
    assert {p["currency"] for p in lumiere.products} == {"EUR"}
    for catalog in (northwind, lumiere):
        names = [(p["brand"], p["title"]) for p in catalog.products]
        assert len(set(names)) == len(names), "a brand and title names one product per shop"
    shared = [(a, b) for a, b in zip(northwind.products, lumiere.products) if a["title"] == b["title"]]
    assert len(shared) == PRODUCTS // 3
    for a, b in shared:
        model = ("brand", "title", "type", "color", "material")
        assert [a[key] for key in model] == [b[key] for key in model]
        assert a["sku"] != b["sku"]
    assert sum(a["price"] != b["price"] for a, b in shared) > len(shared) * 0.9
    # Different mixes: Lumière sells more dresses, Northwind more jeans.
    assert len(lumiere.listing("dress")) > len(northwind.listing("dress"))
    assert len(northwind.listing("jeans")) > len(lumiere.listing("jeans"))


@pytest.mark.parametrize(
    ("shop", "price", "text"),
    [
        ("northwind", 49.99, "$49.99"),
        ("northwind", 1249.0, "$1,249.00"),
        ("lumiere", 49.99, "49,99\u00a0€"),
        ("lumiere", 1249.0, "1.249,00\u00a0€"),
    ],
)
def test_prices_are_written_as_each_shop_does(shop, price, text):
    assert fashion_shop.SHOPS[shop].format_price(price) == text


@pytest.mark.parametrize("spider_class", [NorthwindSpider, LumiereSpider])
def test_spiders_read_back_every_price(spider_class):
    spider = spider_class(base_url="http://127.0.0.1:1")
    shop = fashion_shop.SHOPS[spider.name]
    prices = [p["price"] for p in Catalog(spider.name, 1000).products]
    assert any(price >= 1000 for price in prices)
    assert [spider.parse_price(shop.format_price(price)) for price in prices] == prices


# -- the search endpoint ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"type": "dress", "color": "red", "max_price": "50"},
        {"type": "t-shirt"},
        {"color": "navy blue"},  # a word of it: navy, or blue
        {"color": "gray"},  # grey
        {"color": ["red", "pink"], "min_price": "20.5", "max_price": "99.99"},
        {"q": "WRAP dress"},
        {"min_price": "300"},
        {"type": "laptop"},
    ],
    ids=lambda query: urlencode(query, doseq=True) or "everything",
)
def test_search_filters_as_the_catalog_says(northwind, query):
    url, _ = northwind
    expected = Catalog("northwind", PRODUCTS).search(
        type=query.get("type"), color=query.get("color"), q=query.get("q"),
        **{name: float(query[name]) for name in ("min_price", "max_price") if name in query},
    )
    assert search_skus(url, query) == skus(expected)
    if query in ({}, {"type": "dress", "color": "red", "max_price": "50"}, {"type": "t-shirt"}):
        assert expected, "the test means something only with products to find"


def test_search_bounds_are_inclusive_and_prices_shown_as_the_shop_writes_them(lumiere):
    url, _ = lumiere
    product = Catalog("lumiere", PRODUCTS).products[7]
    price = f"{product['price']:.2f}"
    assert product["sku"] in search_skus(url, {"min_price": price, "max_price": price})
    listing = get(f"{url}/search?{urlencode({'q': product['title']})}")
    assert f"{product['price']:.2f}".replace(".", ",") + "\u00a0€" in listing


@pytest.mark.parametrize("path", ["/search?max_price=cheap", "/search?page=99", "/category/dress?page=0",
                                  "/category/laptop", "/product/NW-00001"])
def test_bad_pages_are_not_found(lumiere, path):
    url, _ = lumiere
    with pytest.raises(HTTPError) as error:
        get(url + path)
    error.value.close()
    assert error.value.code == 404


# -- the spiders and the intent ---------------------------------------------------------------


def test_intent_becomes_the_shop_search():
    intent = {"product_type": "dress", "attributes": {"color": ["red", "navy blue"], "size": "M"},
              "price_range": {"min": 20, "max": 49.99, "currency": "USD"}, "keywords": ["wrap"]}
    northwind = NorthwindSpider(base_url="http://nw.test/", query_intent=json.dumps(intent))
    assert northwind.search_url(northwind.query_intent) == (
        "http://nw.test/search?type=dress&color=red&color=navy+blue&min_price=20.00&max_price=49.99"
    )
    assert northwind.checkpoint_job_type == "search"
    # Dollar bounds mean nothing to a shop in euros: it searches without them.
    lumiere = LumiereSpider(base_url="http://lm.test", query_intent=ParsedIntent.model_validate(intent))
    assert lumiere.search_url(lumiere.query_intent) == "http://lm.test/search?type=dress&color=red&color=navy+blue"
    # A price in no currency is taken to be in the shop's.
    no_currency = ParsedIntent(price_range={"max": 50})
    assert lumiere.search_url(no_currency) == "http://lm.test/search?max_price=50.00"


def test_spider_without_intent_crawls_the_catalog():
    spider = LumiereSpider(base_url="http://lm.test")
    assert spider.query_intent is None
    assert spider.checkpoint_job_type == "catalog"
    assert spider.checkpoint_site_domain == "lumiere.test"


def test_spider_arguments_are_checked(monkeypatch):
    monkeypatch.delenv("NORTHWIND_URL", raising=False)
    with pytest.raises(ValueError, match="-a base_url=.* or set the NORTHWIND_URL environment variable"):
        NorthwindSpider()
    monkeypatch.setenv("NORTHWIND_URL", "http://nw.test")
    assert NorthwindSpider().base_url == "http://nw.test"
    with pytest.raises(ValueError, match="query_intent is not a parsed intent"):
        NorthwindSpider(query_intent='{"product_type": "dress", "colour": "red"}')


# -- end to end: `scrapy crawl` -----------------------------------------------------------------


def crawl(spider: str, tmp_path, *args: str, env: dict | None = None) -> list[dict]:
    """The items of ``scrapy crawl SPIDER -O items.jsonl ARGS`` in the example project."""
    items = tmp_path / f"{spider}.jsonl"
    command = [
        sys.executable, "-m", "scrapy", "crawl", spider, "-O", str(items),
        "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}", *args,
    ]  # fmt: skip
    result = subprocess.run(command, check=False, cwd=demo_support.PROJECT_DIR, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in items.read_text().splitlines()]


def served_since(log, offset: int) -> list[str]:
    return log.read_text()[offset:].splitlines()


def log_size(log) -> int:
    return len(log.read_text()) if log.exists() else 0


def as_catalog(items: list[dict], url: str) -> list[dict]:
    """The items as the catalog has them: by sku, without their url (checked here)."""
    for item in items:
        assert item["url"] == f"{url}/product/{item['sku']}"
    return sorted(({k: v for k, v in item.items() if k != "url"} for item in items), key=lambda p: p["sku"])


@pytest.mark.e2e
def test_crawl_whole_catalog(northwind, tmp_path):
    url, _ = northwind
    items = crawl("northwind", tmp_path, "-a", f"base_url={url}")
    assert as_catalog(items, url) == Catalog("northwind", PRODUCTS).products


@pytest.mark.e2e
def test_crawl_for_an_intent_reads_only_its_search(northwind, tmp_path):
    url, log = northwind
    offset = log_size(log)
    items = crawl("northwind", tmp_path, "-a", f"base_url={url}", "-a", f"query_intent={RED_DRESS_UNDER_50}")
    expected = Catalog("northwind", PRODUCTS).search(type="dress", color="red", max_price=50)
    assert expected
    assert as_catalog(items, url) == expected
    served = served_since(log, offset)
    assert served[0] == "/search?type=dress&color=red&max_price=50.00"
    assert sorted(path for path in served if not path.startswith("/search")) == [
        f"/product/{sku}" for sku in skus(expected)
    ]


@pytest.mark.e2e
def test_crawl_in_another_currency_leaves_the_price_to_the_query(lumiere, tmp_path):
    url, _ = lumiere
    intent = '{"product_type": "dress", "attributes": {"color": "red"}, "price_range": {"max": 50, "currency": "USD"}}'
    items = crawl("lumiere", tmp_path, "-a", f"query_intent={intent}", env={"LUMIERE_URL": url})
    expected = Catalog("lumiere", PRODUCTS).search(type="dress", color="red")
    assert any(product["price"] > 50 for product in expected)
    assert as_catalog(items, url) == expected
