"""Requests saved in a checkpoint come back as they were scheduled, less their credentials."""

from __future__ import annotations

import os
import pickle
import threading

import pytest
from scrapy import FormRequest, Request, Spider
from scrapy.downloadermiddlewares.httpproxy import HttpProxyMiddleware
from scrapy.http import JsonRequest

from scrapy_checkpoint._redact import strip_userinfo
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


@pytest.fixture
def no_proxy_env(monkeypatch):
    """No proxy from this machine's environment in HttpProxyMiddleware."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def requests(spider):
    return [
        Request("http://shop.test/p/1", callback=spider.parse_product, errback=spider.on_error,
                meta={"depth": 2, "checkpoint_page": 3}, cb_kwargs={"sku": "A1"}, priority=7,
                dont_filter=True, flags=["x"], cookies={"s": "1"}, headers={"Referer": "http://shop.test/"}),
        Request("http://shop.test/", method="POST", body=b"q=1"),
        FormRequest("http://shop.test/search", formdata={"q": "shoes"}, callback=spider.parse_product),
        JsonRequest("http://shop.test/api", data={"page": 2}, callback=spider.parse_product),
    ]


def everything(spider) -> RequestSerializer:
    """A serializer that keeps every header, cookie and meta key."""
    return RequestSerializer(spider, private_headers=(), private_meta=())


def test_same_dict_as_scrapy(spider):
    serializer = everything(spider)
    for _ in range(2):  # the first sight of each method, then the remembered names
        for request in requests(spider):
            assert pickle.loads(serializer.dumps(request)) == request.to_dict(spider=spider)


def test_round_trip(spider):
    serializer = everything(spider)
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


# Credentials: left out of what is stored, never taken from the live request.


def test_request_without_credentials_stored_as_scrapy_would(spider):
    serializer = RequestSerializer(spider)
    for request in requests(spider)[1:]:  # the first one has cookies
        assert pickle.loads(serializer.dumps(request)) == request.to_dict(spider=spider)


def test_request_without_credentials_is_not_copied(spider, monkeypatch):
    def no_copy(*args, **kwargs):
        raise AssertionError("the request was copied")

    monkeypatch.setattr(Request, "replace", no_copy)
    monkeypatch.setattr(Request, "copy", no_copy)
    request = Request("http://shop.test/p/1", callback=spider.parse_product,
                      meta={"depth": 2, "proxy": "http://proxy.test:8080", "http_auth_domain": "shop.test"},
                      headers={"Referer": "http://shop.test/"})
    d = RequestSerializer(spider).as_dict(request)
    assert d["meta"] is request.meta
    assert d["cookies"] is request.cookies
    assert d["headers"] == dict(request.headers)


def stored(serializer: RequestSerializer, request: Request) -> tuple[bytes, Request]:
    data = serializer.dumps(request)
    return data, serializer.loads(data)


@pytest.mark.parametrize("name", ["Authorization", "authorization", "PROXY-AUTHORIZATION", "Cookie"])
def test_private_headers_left_out(spider, name):
    request = Request("http://shop.test/p/1", headers={name: "SECRET-1", "Referer": "http://shop.test/"})
    data, back = stored(RequestSerializer(spider), request)
    assert b"SECRET-1" not in data
    assert name not in back.headers
    assert back.headers["Referer"] == b"http://shop.test/"
    assert request.headers[name] == b"SECRET-1"  # the request itself goes out as it was


@pytest.mark.parametrize(
    "cookies", [{"sid": "SECRET-2"}, [{"name": "sid", "value": "SECRET-2", "domain": "shop.test"}]], ids=["dict", "list"]
)
def test_request_cookies_left_out(spider, cookies):
    request = Request("http://shop.test/", cookies=cookies)
    data, back = stored(RequestSerializer(spider), request)
    assert b"SECRET-2" not in data
    assert back.cookies == {}
    assert request.cookies == cookies


@pytest.mark.parametrize(
    ("proxy", "kept"),
    [
        ("http://puser:SECRET-3@proxy.test:8080", "http://proxy.test:8080"),
        ("https://puser:SEC%40RET-3@proxy.test", "https://proxy.test"),
        ("http://puser:SECRET-3@with@at@proxy.test:3128", "http://proxy.test:3128"),
        ("puser:SECRET-3@proxy.test:3128", "proxy.test:3128"),
        ("http://SECRET-3@proxy.test:8080", "http://proxy.test:8080"),
    ],
)
def test_proxy_credentials_left_out(spider, proxy, kept):
    request = Request("http://shop.test/", meta={"proxy": proxy, "depth": 1})
    data, back = stored(RequestSerializer(spider), request)
    assert b"puser" not in data and b"SEC" not in data
    assert back.meta == {"proxy": kept, "depth": 1}
    assert request.meta["proxy"] == proxy
    assert strip_userinfo(proxy) == kept


def test_private_meta_left_out(spider):
    meta = {"http_user": "huser", "http_pass": "SECRET-4", "http_auth_domain": "shop.test", "depth": 1}
    request = Request("http://shop.test/", meta=meta)
    data, back = stored(RequestSerializer(spider), request)
    assert b"SECRET-4" not in data and b"huser" not in data
    assert back.meta == {"http_auth_domain": "shop.test", "depth": 1}
    assert request.meta == meta


def test_settings_choose_what_is_private(spider):
    request = Request("http://shop.test/", cookies={"sid": "1"}, meta={"proxy": "http://u:p@proxy.test", "api_key": "k"},
                      headers={"Authorization": "Bearer t", "X-Api-Key": "k"})
    _, back = stored(RequestSerializer(spider, private_headers=["x-api-key"], private_meta=["api_key"]), request)
    assert "X-Api-Key" not in back.headers and "api_key" not in back.meta
    # Neither Cookie nor Proxy-Authorization is private here: what carries them stays.
    assert back.headers["Authorization"] == b"Bearer t"
    assert back.cookies == {"sid": "1"}
    assert back.meta["proxy"] == "http://u:p@proxy.test"


def test_proxy_from_environment_comes_back_with_its_credentials(spider, monkeypatch, no_proxy_env):
    """HttpProxyMiddleware sets meta["proxy"] and Proxy-Authorization from http_proxy; a
    retried or redirected request is scheduled with both. Stored without them, the restored
    request gets both from the environment again."""
    monkeypatch.setenv("http_proxy", "http://puser:SECRET-5@proxy.test:3128")
    proxies = HttpProxyMiddleware()
    request = Request("http://shop.test/p/1")
    proxies.process_request(request)
    sent = request.headers["Proxy-Authorization"]
    retried = request.copy()
    data, back = stored(RequestSerializer(spider), retried)
    assert b"SECRET-5" not in data and sent not in data
    assert not {"proxy", "_auth_proxy", "_scheme_proxy"} & back.meta.keys()
    proxies.process_request(back)
    assert back.headers["Proxy-Authorization"] == sent
    assert back.meta["proxy"] == "http://proxy.test:3128"


def test_proxy_from_meta_comes_back_without_credentials(spider, no_proxy_env):
    """Credentials in meta["proxy"] are not stored: HttpProxyMiddleware sends the restored
    request to the same proxy without Proxy-Authorization (the README says how to add it)."""
    proxies = HttpProxyMiddleware()
    request = Request("http://shop.test/p/1", meta={"proxy": "http://puser:SECRET-6@proxy.test:3128"})
    data, back = stored(RequestSerializer(spider), request)
    proxies.process_request(request)
    assert b"Proxy-Authorization" in request.headers
    retried = request.copy()  # scheduled again with the header, and meta["_auth_proxy"]
    for restored in (back, stored(RequestSerializer(spider), retried)[1]):
        proxies.process_request(restored)
        assert restored.meta["proxy"] == "http://proxy.test:3128"
        assert b"Proxy-Authorization" not in restored.headers
