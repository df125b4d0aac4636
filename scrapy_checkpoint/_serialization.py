"""Requests to bytes and back, in the format of Scrapy's own disk queues, less their credentials."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from scrapy import Request
from scrapy.http import Headers
from scrapy.utils.request import request_from_dict

from ._redact import strip_userinfo
from .settings import DEFAULTS

if TYPE_CHECKING:
    from scrapy import Spider

#: Meta keys HttpProxyMiddleware sets along with a Proxy-Authorization header: the proxy
#: that header is for, and that the proxy came from the environment.
_PROXY_AUTH_META = frozenset({"_auth_proxy", "_scheme_proxy"})


def _has_userinfo(proxy: Any) -> bool:
    return isinstance(proxy, str) and "@" in proxy


class RequestSerializer:
    """``request.to_dict(spider=spider)``, pickled, for every request a crawl schedules,
    without its credentials.

    ``Request.to_dict`` finds the name of the callback with ``inspect.getmembers(spider)``,
    about 20 microseconds a request: most of what recording a request costs. This builds the
    same dict, and remembers the name of each spider method once ``to_dict`` has found it.

    Left out (CHECKPOINT_PRIVATE_HEADERS, CHECKPOINT_PRIVATE_META): the *private_headers*;
    with ``Cookie`` among them, ``Request.cookies`` too; with ``Proxy-Authorization``, the
    credentials in ``meta["proxy"]`` (and a proxy that came from the environment, so that
    HttpProxyMiddleware sets it again with its credentials); the *private_meta* keys. The
    request itself is never changed, and its meta is copied only when it holds one of them.
    """

    def __init__(
        self,
        spider: Spider,
        private_headers: Iterable[str] = DEFAULTS["CHECKPOINT_PRIVATE_HEADERS"],
        private_meta: Iterable[str] = DEFAULTS["CHECKPOINT_PRIVATE_META"],
    ) -> None:
        self.spider = spider
        self._names: dict[Any, str] = {}
        # Keys as Headers stores them (b"Proxy-Authorization"): one set lookup per header.
        self._headers = frozenset(Headers().normkey(name) for name in private_headers)
        self._cookies = b"Cookie" in self._headers
        self._proxy = b"Proxy-Authorization" in self._headers
        self._meta = frozenset(private_meta) | (_PROXY_AUTH_META if self._proxy else frozenset())

    def dumps(self, request: Request) -> bytes:
        """Raises ValueError for a callback that is not a spider method, and pickle's errors
        for meta or cb_kwargs values that cannot be pickled."""
        return pickle.dumps(self.as_dict(request), protocol=pickle.HIGHEST_PROTOCOL)

    def as_dict(self, request: Request) -> dict[str, Any]:
        """What :meth:`dumps` pickles: ``request.to_dict()`` without the private parts."""
        try:
            d = {
                "url": request.url,
                "callback": self._name(request.callback),
                "errback": self._name(request.errback),
                "headers": dict(request.headers),
            }
        except KeyError:  # a method not seen yet, or no spider method at all
            d = request.to_dict(spider=self.spider)
            self._remember(request.callback, d["callback"])
            self._remember(request.errback, d["errback"])
        else:
            for attr in request.attributes:
                d.setdefault(attr, getattr(request, attr))
            if type(request) is not Request:
                d["_class"] = f"{type(request).__module__}.{type(request).__name__}"
        headers = d["headers"]
        if headers and not self._headers.isdisjoint(headers):
            d["headers"] = {k: v for k, v in headers.items() if k not in self._headers}
        if self._cookies and d["cookies"]:
            d["cookies"] = {}
        meta = d["meta"]
        if meta and (not self._meta.isdisjoint(meta)
                     or (self._proxy and "proxy" in meta and _has_userinfo(meta["proxy"]))):
            d["meta"] = self._public_meta(meta)
        return d

    def _public_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        public = {k: v for k, v in meta.items() if k not in self._meta}
        if self._proxy and "proxy" in public:
            if meta.get("_scheme_proxy"):
                # HttpProxyMiddleware put it there from http_proxy/https_proxy: without it, the
                # restored request gets the proxy and its credentials from the environment again.
                del public["proxy"]
            elif _has_userinfo(public["proxy"]):
                public["proxy"] = strip_userinfo(public["proxy"])
        return public

    def loads(self, data: bytes) -> Request:
        return request_from_dict(pickle.loads(data), spider=self.spider)  # noqa: S301 - our own store

    def _name(self, method: Any) -> Any:
        if not callable(method):
            return method
        return self._names[getattr(method, "__func__", method)]

    def _remember(self, method: Any, name: Any) -> None:
        if callable(method):
            self._names[getattr(method, "__func__", method)] = name
