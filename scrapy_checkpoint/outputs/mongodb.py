"""An item pipeline that writes each item to MongoDB once, even when its page is redone after a kill."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.utils.asyncio import run_in_thread

from .._redact import redact_uri, scrub, secrets_of
from ..models import utcnow
from ..settings import MongoItemsSettings
from .keys import item_key

try:
    from bson import ObjectId
    from pymongo import MongoClient
    from pymongo.errors import ConfigurationError, ConnectionFailure
except ImportError as exc:
    raise ImportError(
        "CheckpointMongoDBPipeline needs pymongo: pip install 'scrapy-checkpoint[mongodb]'"
    ) from exc

from ..stores.mongodb import connect  # noqa: E402 (needs pymongo: imported once it is known there)

if TYPE_CHECKING:
    from pymongo.collection import Collection
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class CheckpointMongoDBPipeline:
    """Upserts every item into ``CHECKPOINT_MONGO_ITEMS_COLLECTION`` by its idempotency key
    (:func:`~scrapy_checkpoint.outputs.keys.item_key`)::

        {"_id": key, "item": {...}, "item_type": "Product", "spider": "products",
         "checkpoint_id": "...", "scraped_at": datetime}

    Exactly once with checkpoints on: ``process_item`` returns only once MongoDB has
    acknowledged the write, and the checkpoint marks a page processed only after every
    item of the page has left the pipelines. A page redone after a kill yields its items
    again under the same keys, and their documents are replaced, not added. Keys name the
    page, not the crawl nor the spider: a later crawl of the same pages replaces their
    documents too, and so would another spider writing the same pages to this collection.

    At least once with checkpoints off (or for an item yielded by ``start()``): such an
    item has no key and is inserted under a fresh ``_id``, so a rerun adds it again.

    The key is known for the object the callback yielded: after a pipeline that returns a
    different object, this one finds no key and inserts (at least once).

    Writes run in a thread; errors propagate, so the item is not counted as scraped: a
    MongoDB outage (``ConnectionFailure``, after ``CHECKPOINT_STORE_TIMEOUT`` seconds) as
    much as a refused document. The checkpoint then leaves the item's page pending and
    saves the checkpoint as ``failed`` at the end of the crawl: a resume does the page again.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.settings = MongoItemsSettings.from_settings(crawler.settings)
        self._secrets = secrets_of(self.settings.uri)
        self._client: MongoClient | None = None
        self._collection: Collection | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CheckpointMongoDBPipeline:
        return cls(crawler)

    def describe(self) -> str:
        s = self.settings
        return f"{redact_uri(s.uri)} (database {s.database}, collection {s.collection})"

    async def open_spider(self) -> None:
        self._collection = await run_in_thread(self._connect)
        logger.info("Writing items to MongoDB %(where)s", {"where": self.describe()})

    def _connect(self) -> Collection:
        s = self.settings
        try:
            # An SRV URI is resolved here, hence the thread.
            client = connect(s.uri, s.timeout)
        except (ConfigurationError, ValueError) as exc:
            raise ValueError(
                f"{s.uri_setting} ({redact_uri(s.uri)}) is not a valid MongoDB URI: "
                f"{scrub(str(exc), self._secrets)}"
            ) from None
        try:
            # Fail at startup rather than on every item.
            client[s.database].command("ping")
        except ConnectionFailure as exc:
            client.close()
            raise ConnectionFailure(
                f"CheckpointMongoDBPipeline cannot reach MongoDB {self.describe()} within "
                f"CHECKPOINT_STORE_TIMEOUT ({s.timeout:g} s): {scrub(str(exc), self._secrets)}"
            ) from exc
        except BaseException:
            client.close()
            raise
        self._client = client
        return client[s.database][s.collection]

    async def close_spider(self) -> None:
        client, self._client, self._collection = self._client, None, None
        if client is not None:
            await run_in_thread(client.close)

    async def process_item(self, item: Any) -> Any:
        # First: the key is known for the very object the callback yielded.
        key = item_key(item)
        collection = self._collection
        assert collection is not None, "process_item() called before open_spider()"
        spider = self.crawler.spider
        checkpoint = getattr(spider, "checkpoint", None)
        document = {
            "_id": ObjectId() if key is None else key,
            "item": ItemAdapter(item).asdict(),
            "item_type": type(item).__name__,
            "spider": getattr(spider, "name", None),
            "checkpoint_id": getattr(checkpoint, "checkpoint_id", None),
            "scraped_at": utcnow(),
        }
        if key is None:
            await run_in_thread(collection.insert_one, document)
            self.stats.inc_value("checkpoint/mongodb_items/inserted")
        else:
            result = await run_in_thread(collection.replace_one, {"_id": key}, document, upsert=True)
            # No upserted id: the item was written before its page was redone.
            replaced = result.upserted_id is None
            self.stats.inc_value(f"checkpoint/mongodb_items/{'replaced' if replaced else 'inserted'}")
        return item
