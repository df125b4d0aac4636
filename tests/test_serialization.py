"""Requests saved in a checkpoint come back as they were scheduled."""

from __future__ import annotations

import pickle
import threading

import pytest
from scrapy import FormRequest, Request, Spider
from scrapy.http import JsonRequest

from scrapy_checkpoint._serialization import RequestSerializer


class ShopSpider(Spider):
    name = "shop"

    def parse_product(self, response):
        pass

    def on_error(self, failure):
        pass


@pytest.fixture
def spider():
    return ShopSpider()


def requests(spider):
    return [
        Request("http://shop.test/p/1", callback=spider.parse_product, errback=spider.on_error,
                meta={"depth": 2, "checkpoint_page": 3}, cb_kwargs={"sku": "A1"}, priority=7,
                dont_filter=True, flags=["x"], cookies={"s": "1"}, headers={"Referer": "http://shop.test/"}),
        Request("http://shop.test/", method="POST", body=b"q=1"),
        FormRequest("http://shop.test/search", formdata={"q": "shoes"}, callback=spider.parse_product),
        JsonRequest("http://shop.test/api", data={"page": 2}, callback=spider.parse_product),
    ]


def test_same_dict_as_scrapy(spider):
    serializer = RequestSerializer(spider)
    for _ in range(2):  # the first sight of each method, then the remembered names
        for request in requests(spider):
            assert pickle.loads(serializer.dumps(request)) == request.to_dict(spider=spider)


def test_round_trip(spider):
    serializer = RequestSerializer(spider)
    for request in requests(spider):
        back = serializer.loads(serializer.dumps(request))
        assert type(back) is type(request)
        assert back.to_dict(spider=spider) == request.to_dict(spider=spider)
        assert back.callback == request.callback


def test_callback_that_is_not_a_spider_method(spider):
    serializer = RequestSerializer(spider)
    for _ in range(2):
        with pytest.raises(ValueError, match="not an instance method"):
            serializer.dumps(Request("http://shop.test/", callback=lambda r: None))


def test_unpicklable_meta(spider):
    with pytest.raises((TypeError, pickle.PicklingError)):
        RequestSerializer(spider).dumps(Request("http://shop.test/", meta={"lock": threading.Lock()}))
