"""The interface every checkpoint store implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..models import Batch, Checkpoint
    from ..settings import CheckpointSettings


class CheckpointStore(ABC):
    """A place checkpoints live.

    Methods are blocking and thread-safe: the extension calls them from worker threads,
    never from the reactor thread, and never runs two ``apply`` calls at once for one
    checkpoint. A store holds, per checkpoint, the :class:`~scrapy_checkpoint.Checkpoint`
    record and one entry per request fingerprint (its serialized request, whether it was
    processed, whether it was a start request), plus stored items when asked to.
    """

    #: Short name used in logs and stats keys.
    name: str = "store"
    #: The crawler's stats collector, set by the extension; None outside a crawl.
    stats: Any = None

    @classmethod
    @abstractmethod
    def from_checkpoint_settings(cls, settings: CheckpointSettings) -> CheckpointStore:
        """Build a store from validated settings; no I/O yet."""

    def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and create what is missing (tables, indexes, validators)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Everything applied before stays readable on reopen."""

    @abstractmethod
    def create(self, checkpoint: Checkpoint) -> None:
        """Store a new checkpoint record."""

    @abstractmethod
    def get(self, checkpoint_id: str) -> Checkpoint | None:
        """The record, None if absent; CorruptCheckpointError if unreadable."""

    @abstractmethod
    def find_resumable(self, spider: str, site_domain: str, job_type: str) -> Checkpoint | None:
        """The newest active or failed checkpoint of that spider, site and job."""

    @abstractmethod
    def apply(self, checkpoint_id: str, batch: Batch, ttl: float) -> None:
        """Apply *batch* atomically: all of it or none of it. Idempotent per ``batch.seq``.

        Raises KeyError when the store does not hold the checkpoint (any more)."""

    @abstractmethod
    def processed_fingerprints(self, checkpoint_id: str) -> Iterator[bytes]:
        """Fingerprints of every processed request."""

    @abstractmethod
    def pending_start_fingerprints(self, checkpoint_id: str) -> Iterator[bytes]:
        """Fingerprints of start requests discovered but not processed."""

    @abstractmethod
    def pending_requests(
        self, checkpoint_id: str, after: Any, limit: int
    ) -> tuple[list[bytes], Any]:
        """Up to *limit* serialized pending requests in discovery order, after cursor *after*
        (None for the first page); returns them with the cursor of the next page."""

    @abstractmethod
    def items(self, checkpoint_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Stored items (CHECKPOINT_STORE_ITEMS) as (item type, fields)."""

    def describe(self) -> str:
        """Where the store is, for logs; never includes a credential."""
        return self.name
