"""The products spider: home page, category listings (paginated), product pages."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import scrapy

from shop.items import Product

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from scrapy.http import Response


class ProductsSpider(scrapy.Spider):
    name = "products"

    # Read by scrapy_checkpoint: which job this is, and the pipeline step each callback
    # stands for, so a checkpoint can tell how far every branch of the crawl got.
    checkpoint_enabled = True
    checkpoint_job_type = "product_catalog"
    checkpoint_steps = {"parse": 1, "parse_category": 2, "parse_product": 4}

    def __init__(self, *args: Any, base_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base_url = base_url or os.environ.get("DEMO_SHOP_URL")
        if not self.base_url:
            raise ValueError(
                "No shop URL: pass -a base_url=http://127.0.0.1:PORT"
                " or set the DEMO_SHOP_URL environment variable."
            )

    async def start(self) -> AsyncIterator[scrapy.Request]:
        yield scrapy.Request(self.base_url, callback=self.parse)

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        for href in response.css("ul.categories a.category::attr(href)").getall():
            yield response.follow(href, callback=self.parse_category)

    def parse_category(self, response: Response) -> Iterator[scrapy.Request]:
        # A small state dict that survives kills: saved with every checkpoint flush.
        if checkpoint := getattr(self, "checkpoint", None):
            checkpoint.state["listing_pages"] = checkpoint.state.get("listing_pages", 0) + 1
        for href in response.css("ul.products a.product-link::attr(href)").getall():
            yield response.follow(href, callback=self.parse_product)
        next_page = response.css('a[rel="next"]::attr(href)').get()
        if next_page:
            yield response.follow(next_page, callback=self.parse_category)

    def parse_product(self, response: Response) -> Iterator[Product]:
        product = response.css("div.product")
        yield Product(
            sku=product.css(".sku::text").get("").strip(),
            name=product.css("h1.name::text").get("").strip(),
            price=float(product.css(".price::text").get()),
            category=product.css("a.category::text").get("").strip(),
            url=response.url,
        )
