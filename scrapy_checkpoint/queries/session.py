"""A query session: the crawls that answer one user query, and the checkpoints that hold their items."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..extension import checkpoint_identity
from ..models import QUERY_JOB_PREFIX, CheckpointStatus

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from datetime import datetime

    from scrapy import Spider

    from ..models import Checkpoint, ParsedIntent
    from ..settings import MongoItemsSettings
    from ..stores import CheckpointStore



def job_type_of(intent: ParsedIntent) -> str:
    """The job type of the crawls answering *intent* (the same for an equal intent)."""
    canonical = json.dumps(intent.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return QUERY_JOB_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass
class SiteAnswer:
    """What one spider contributes to a session."""

    spider: str
    site: str
    #: The checkpoint whose stored items answer for the site, once known.
    checkpoint_id: str | None = None
    #: "reused" (a fresh checkpoint answered without a crawl), "finished", "resumed and
    #: finished"... the crawl's finish reason, or "failed: <why>".
    outcome: str = "pending"
    items: int = 0

    def document(self) -> dict[str, Any]:
        return asdict(self)


class ItemSource:
    """Where the items of a crawl's checkpoint are read from: the checkpoint store itself
    (CHECKPOINT_STORE_ITEMS)."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    def items(self, checkpoint_id: str, contains: Sequence[Sequence[str]] = ()) -> Iterator[dict[str, Any]]:
        """The fields of every item of the checkpoint; with *contains* (results.prefilter),
        only those that may match (the store's ``matching_items``). Blocking."""
        stored = self.store.matching_items(checkpoint_id, contains) if contains else self.store.items(checkpoint_id)
        for _, fields in stored:
            yield fields

    def close(self) -> None:
        """Release what reading took."""


class MongoDBPipelineItems(ItemSource):
    """The documents CheckpointMongoDBPipeline wrote for the checkpoint (its items
    collection), for crawls that do not store items in the checkpoint. A page a later crawl
    wrote again carries that crawl's checkpoint id."""

    def __init__(self, settings: MongoItemsSettings) -> None:
        from ..stores.mongodb import connect

        self.settings = settings
        self._client = connect(settings.uri, settings.timeout)
        self._collection = self._client[settings.database][settings.collection]

    def items(self, checkpoint_id: str, contains: Sequence[Sequence[str]] = ()) -> Iterator[dict[str, Any]]:
        # *contains* is not used: the documents are filtered once read, like every item
        with self._collection.find({"checkpoint_id": checkpoint_id}, {"item": 1}) as cursor:
            for document in cursor:
                yield document.get("item") or {}

    def close(self) -> None:
        self._client.close()


def answering_checkpoint(
    store: CheckpointStore, source: ItemSource, spidercls: type[Spider], jobs: set[str], after: datetime
) -> Checkpoint | None:
    """The newest completed checkpoint of the spider, of one of *jobs*, updated at or after
    *after*, whose items *source* holds: it answers for the site without a crawl."""
    name, site, _ = checkpoint_identity(spidercls)
    for checkpoint in store.list_checkpoints(name, site, None, CheckpointStatus.COMPLETED):
        if checkpoint.updated_at < after:
            return None  # newest first: the rest are older still
        if checkpoint.job_type in jobs and next(iter(source.items(checkpoint.checkpoint_id)), None) is not None:
            return checkpoint
    return None
