"""Idempotency keys: the same key for an item whenever its page is redone after a kill."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Request

#: id(item) -> (item, request, position in its callback's output, fingerprint function), for
#: items between their callback and the end of their page's work. The item itself is held so
#: that its id cannot be reused by another object while the entry exists.
_origins: dict[int, tuple[Any, Request, int, Callable[[Request], bytes]]] = {}


def item_key(item: Any) -> str | None:
    """The idempotency key of *item*: ``<request fingerprint hex>-<position>``, where the
    position counts the items its callback (or errback) yielded before it.

    A page redone after a kill yields its items again in the same order, so they get the
    same keys: a pipeline that upserts by this key writes each item once. It is known from
    the moment the callback yields the item until every item of its page has left the item
    pipelines, for the object the callback yielded (a pipeline that returns a new object
    should take the key first). None when checkpoints are off for the crawl, or for an item
    that no callback yielded (one yielded by ``start()``).
    """
    origin = _origins.get(id(item))
    if origin is None:
        return None
    _, request, position, fingerprint = origin
    return f"{fingerprint(request).hex()}-{position}"


def remember(item: Any, request: Request, position: int, fingerprint: Callable[[Request], bytes]) -> None:
    _origins[id(item)] = (item, request, position, fingerprint)


def forget(item_ids: list[int]) -> None:
    for item_id in item_ids:
        _origins.pop(item_id, None)
