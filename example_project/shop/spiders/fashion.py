"""Spiders of the fashion shops (fashion_shop.py): the whole catalog, or with a query's
intent only the shop's search pages for it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode

import scrapy
from pydantic import ValidationError

from scrapy_checkpoint.models import ParsedIntent
from shop.items import FashionProduct

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from scrapy.http import Response


def as_intent(value: ParsedIntent | str | dict[str, Any] | None) -> ParsedIntent | None:
    """A ParsedIntent from itself, its JSON (as ``-a query_intent='{...}'`` passes it) or its dict."""
    if not value or isinstance(value, ParsedIntent):
        return value or None
    try:
        if isinstance(value, str):
            return ParsedIntent.model_validate_json(value)
        return ParsedIntent.model_validate(value)
    except ValidationError as exc:
        raise ValueError(f"query_intent is not a parsed intent (ParsedIntent JSON): {exc}") from exc


class FashionSpider(scrapy.Spider):
    """What the shops' spiders share. A subclass names its shop, the environment variable
    holding its URL, and its currency and decimal mark."""

    checkpoint_enabled = True
    checkpoint_job_type = "catalog"
    checkpoint_steps: ClassVar[dict[str, int]] = {"parse": 1, "parse_listing": 2, "parse_product": 4}

    url_variable: str
    currency: str
    decimal_mark: str
    #: What to look for; None crawls the whole catalog.
    query_intent: ParsedIntent | None = None

    def __init__(self, *args: Any, base_url: str | None = None,
                 query_intent: ParsedIntent | str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base_url = (base_url or os.environ.get(self.url_variable, "")).rstrip("/")
        if not self.base_url:
            raise ValueError(
                f"No URL for the {self.name} shop: pass -a base_url=http://127.0.0.1:PORT"
                f" or set the {self.url_variable} environment variable."
            )
        self.query_intent = as_intent(query_intent or self.query_intent)
        if self.query_intent is not None and "checkpoint_job_type" not in kwargs:
            # A search is another job than the catalog: CHECKPOINT_RESUME=1 must not mix them.
            # (scrapy query gives each query's crawls a job type of their own.)
            self.checkpoint_job_type = "search"

    async def start(self) -> AsyncIterator[scrapy.Request]:
        if self.query_intent is None:
            yield scrapy.Request(self.base_url + "/", callback=self.parse)
        else:
            yield scrapy.Request(self.search_url(self.query_intent), callback=self.parse_listing)

    def search_url(self, intent: ParsedIntent) -> str:
        """The shop's search for *intent*: its type, colours and, when they are in this
        shop's currency (or in none), its price bounds. What the search cannot narrow is
        left to the query's own filtering of the items."""
        params = []
        if intent.product_type:
            params.append(("type", intent.product_type))
        colors = intent.attributes.get("color") or []
        params += [("color", color) for color in ([colors] if isinstance(colors, str) else colors)]
        prices = intent.price_range
        if prices.currency in (None, self.currency):
            for name, bound in (("min_price", prices.min), ("max_price", prices.max)):
                if bound is not None:
                    params.append((name, f"{bound:.2f}"))
        return f"{self.base_url}/search?{urlencode(params)}"

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        for href in response.css("ul.categories a.category::attr(href)").getall():
            yield response.follow(href, callback=self.parse_listing)

    def parse_listing(self, response: Response) -> Iterator[scrapy.Request]:
        """A category or search results page."""
        for href in response.css("ul.products a.product-link::attr(href)").getall():
            yield response.follow(href, callback=self.parse_product)
        next_page = response.css('a[rel="next"]::attr(href)').get()
        if next_page:
            yield response.follow(next_page, callback=self.parse_listing)

    def parse_product(self, response: Response) -> Iterator[FashionProduct]:
        product = response.css("div.product")

        def text(css: str) -> str:
            return product.css(f"{css}::text").get("").strip()

        yield FashionProduct(
            sku=text(".sku"),
            title=text("h1.title"),
            brand=text(".brand"),
            type=text("a.type").lower(),
            color=text(".color").lower(),
            material=text(".material").lower(),
            size=product.css(".size::text").getall(),
            price=self.parse_price(text(".price")),
            currency=product.css('[itemprop="priceCurrency"]::attr(content)').get(),
            listed=product.css("time.listed::attr(datetime)").get(),
            rating=float(text('[itemprop="ratingValue"]')),
            reviews=int(text('[itemprop="reviewCount"]')),
            url=response.url,
        )

    def parse_price(self, text: str) -> float:
        """The amount of a price as this shop writes it ("$1,249.00", "1.249,00 €")."""
        kept = "".join(char for char in text if char.isdigit() or char == self.decimal_mark)
        return float(kept.replace(self.decimal_mark, "."))


class NorthwindSpider(FashionSpider):
    name = "northwind"
    checkpoint_site_domain = "northwind.test"
    url_variable = "NORTHWIND_URL"
    currency = "USD"
    decimal_mark = "."


class LumiereSpider(FashionSpider):
    name = "lumiere"
    checkpoint_site_domain = "lumiere.test"
    url_variable = "LUMIERE_URL"
    currency = "EUR"
    decimal_mark = ","
