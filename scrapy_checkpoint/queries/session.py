"""A query session: the crawls that answer one user query, and the checkpoints that hold their items."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..extension import checkpoint_identity
from ..models import QUERY_JOB_PREFIX, CheckpointStatus

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

    from scrapy import Spider

    from ..models import Checkpoint, ParsedIntent
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


def answering_checkpoint(
    store: CheckpointStore, spidercls: type[Spider], jobs: set[str], after: datetime
) -> Checkpoint | None:
    """The newest completed checkpoint of the spider, of one of *jobs*, updated at or after
    *after*, that holds stored items: it answers for the site without a crawl."""
    name, site, _ = checkpoint_identity(spidercls)
    for checkpoint in store.list_checkpoints(name, site, None, CheckpointStatus.COMPLETED):
        if checkpoint.updated_at < after:
            return None  # newest first: the rest are older still
        if checkpoint.job_type in jobs and next(iter(store.items(checkpoint.checkpoint_id)), None) is not None:
            return checkpoint
    return None


def stored_items(store: CheckpointStore, checkpoint_id: str) -> Iterator[dict[str, Any]]:
    """The fields of every item the checkpoint stored (CHECKPOINT_STORE_ITEMS)."""
    for _, fields in store.items(checkpoint_id):
        yield fields
