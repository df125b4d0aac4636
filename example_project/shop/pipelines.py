"""Item pipelines of the demo shop project."""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class JsonLinesPipeline:
    """Append every item to ``DEMO_ITEMS_FILE`` as one JSON line.

    Each line goes to the kernel with a single ``os.write`` before ``process_item``
    returns, so a SIGKILL of the crawl never loses an item the pipeline has accepted,
    and never leaves half a line behind. The file is only appended to: a resumed crawl
    adds its items after those of the killed one, which is what lets the demo count
    losses and duplicates across runs.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._count = 0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JsonLinesPipeline:
        return cls(crawler.settings.get("DEMO_ITEMS_FILE") or "items.jsonl")

    def open_spider(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        logger.info("Appending items to %s", os.path.abspath(self.path))

    def close_spider(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        logger.info("Wrote %d items to %s", self._count, os.path.abspath(self.path))

    def process_item(self, item: Any) -> Any:
        assert self._fd is not None, "process_item() called before open_spider()"
        line = json.dumps(ItemAdapter(item).asdict(), ensure_ascii=False) + "\n"
        # No fsync: the kernel keeps written data when the process dies, and the demo
        # kills processes, not machines.
        os.write(self._fd, line.encode("utf-8"))
        self._count += 1
        return item
