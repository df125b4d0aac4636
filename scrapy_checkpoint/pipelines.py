"""The item pipeline that tells the checkpoint extension which items are scraped."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import NotConfigured
from scrapy.utils.conf import build_component_list
from scrapy.utils.misc import load_object

from .middlewares import _extension

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class CheckpointItemPipeline:
    """Last of ``ITEM_PIPELINES``: an item that reaches it has passed every pipeline, so
    it is scraped. The extension learns it here rather than from Scrapy's ``item_scraped``
    signal, whose every receiver runs in an asyncio Task of its own (about 1 % of the CPU
    time of a product page); ``item_dropped`` and ``item_error`` still reach it as signals.

    With a pipeline ordered after it (that one may still drop an item, or fail), it steps
    aside and the extension keeps listening to ``item_scraped``: same result, slower.
    """

    def __init__(self, crawler: Crawler) -> None:
        extension = _extension(crawler)
        later = pipelines_after(type(self), crawler)
        if later:
            logger.info(
                "Item pipelines are ordered after %(ours)s in ITEM_PIPELINES (%(later)s): the "
                "checkpoint extension learns which items are scraped from the item_scraped "
                "signal, which costs about 1 %% more CPU a page. Order them before it to save that.",
                {"ours": type(self).__name__, "later": ", ".join(later)},
            )
            raise NotConfigured
        self.extension = extension
        extension.use_item_pipeline()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CheckpointItemPipeline:
        return cls(crawler)

    def process_item(self, item: Any) -> Any:
        self.extension.item_passed(item)
        return item


def pipelines_after(cls: type, crawler: Crawler) -> list[str]:
    """The import paths of the item pipelines that ITEM_PIPELINES orders after *cls*."""
    paths = build_component_list(crawler.settings.get_component_priority_dict_with_base("ITEM_PIPELINES"))
    classes = [load_object(path) if isinstance(path, str) else path for path in paths]
    if cls not in classes:  # built by hand, or by another item processor: nothing is known
        return []
    return [f"{c.__module__}.{c.__qualname__}" for c in classes[classes.index(cls) + 1:]]
