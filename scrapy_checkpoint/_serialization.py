"""Requests to bytes and back, in the format of Scrapy's own disk queues."""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from scrapy import Request
from scrapy.utils.request import request_from_dict

if TYPE_CHECKING:
    from scrapy import Spider


class RequestSerializer:
    """``request.to_dict(spider=spider)``, pickled, for every request a crawl schedules.

    ``Request.to_dict`` finds the name of the callback with ``inspect.getmembers(spider)``,
    about 20 microseconds a request: most of what recording a request costs. This builds the
    same dict, and remembers the name of each spider method once ``to_dict`` has found it.
    """

    def __init__(self, spider: Spider) -> None:
        self.spider = spider
        self._names: dict[Any, str] = {}

    def dumps(self, request: Request) -> bytes:
        """Raises ValueError for a callback that is not a spider method, and pickle's errors
        for meta or cb_kwargs values that cannot be pickled."""
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
        return pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Request:
        return request_from_dict(pickle.loads(data), spider=self.spider)  # noqa: S301 - our own store

    def _name(self, method: Any) -> Any:
        if not callable(method):
            return method
        return self._names[getattr(method, "__func__", method)]

    def _remember(self, method: Any, name: Any) -> None:
        if callable(method):
            self._names[getattr(method, "__func__", method)] = name
