"""Requests to bytes and back, the way Scrapy's own disk queues do it."""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

from scrapy.utils.request import request_from_dict

if TYPE_CHECKING:
    from scrapy import Request, Spider


def request_to_bytes(request: Request, spider: Spider) -> bytes:
    """Serialize *request* with its callback, errback, meta, cb_kwargs and priority.

    Raises ValueError for a callback that is not a spider method, and pickle's errors
    for meta or cb_kwargs values that cannot be pickled.
    """
    return pickle.dumps(request.to_dict(spider=spider), protocol=pickle.HIGHEST_PROTOCOL)


def request_from_bytes(data: bytes, spider: Spider) -> Request:
    return request_from_dict(pickle.loads(data), spider=spider)  # noqa: S301 - our own store
