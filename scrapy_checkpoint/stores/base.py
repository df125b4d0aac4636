"""The interface every checkpoint store implements."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel

from ..exceptions import StoreLayoutError
from ..models import CheckpointStatus, QuerySession, QuerySessionStatus, UserQuery, expiry, utcnow

if TYPE_CHECKING:
    from ..models import Batch, Checkpoint
    from ..settings import CheckpointSettings

logger = logging.getLogger(__name__)

_Q = TypeVar("_Q", UserQuery, QuerySession)

#: The layout of what a store holds without a layout marker: Redis and MongoDB stores
#: written before they recorded one hold layout 1.
UNMARKED_LAYOUT = 1

#: A status filter: one status, or any of several; None for every status.
StatusFilter = CheckpointStatus | str | Iterable[CheckpointStatus | str] | None


def statuses(status: StatusFilter) -> tuple[str, ...] | None:
    """A status filter as status values (ValueError for an unknown one); None for all."""
    if status is None:
        return None
    if isinstance(status, (str, CheckpointStatus)):
        status = [status]
    return tuple(dict.fromkeys(CheckpointStatus(s).value for s in status))


def query_ttl(settings: CheckpointSettings, status: QuerySessionStatus | str) -> float:
    """The TTL to save a query session (and its user query) with, as checkpoints get theirs:
    ``CHECKPOINT_ARCHIVE_TTL`` once it completed (0 keeps it for ever), else ``CHECKPOINT_TTL``."""
    if QuerySessionStatus(status) is QuerySessionStatus.COMPLETED:
        return settings.archive_ttl
    return settings.ttl


def query_record(model: type[_Q], value: _Q | Mapping[str, Any], ttl: float) -> _Q:
    """*value* validated as *model* (again: a model built with ``model_construct``, or a dict,
    may be invalid), with ``expires_at`` *ttl* seconds from now (None for a TTL of 0)."""
    data = value.model_dump(warnings=False) if isinstance(value, BaseModel) else dict(value)
    data["expires_at"] = expiry(utcnow(), ttl)
    return model.model_validate(data)


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
    #: Whether scrapy-redis workers can share one checkpoint in it (see RedisCheckpointStore's
    #: claim, beat, next_run and workers); in a store that cannot, each worker has its own.
    shared: bool = False
    #: Whether it finds a processed request's record by its position (Batch.positions) rather
    #: than by its fingerprint: the extension then saves each request's position in its meta
    #: (RECORD_META), and leaves the store no duplicate to ignore (see Batch.superseded).
    by_position: ClassVar[bool] = False
    #: The layout of the data this version of the store reads and writes, recorded in the store
    #: itself when it is opened. A change of what the store holds that the version before cannot
    #: read raises it, and adds the step from the layout before to ``migrations``.
    layout: ClassVar[int] = 1
    #: How to bring data of layout N to N + 1, by N: ``step(store, handle)``, the handle being
    #: what ``_settle_layout`` was given (a connection, a client, a database). A store of an
    #: older layout that these steps bring to ``layout`` is migrated at open(); one of any other
    #: layout is refused. None yet.
    migrations: ClassVar[Mapping[int, Callable[[Any, Any], None]]] = MappingProxyType({})

    @classmethod
    @abstractmethod
    def from_checkpoint_settings(cls, settings: CheckpointSettings) -> CheckpointStore:
        """Build a store from validated settings; no I/O yet."""

    def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and create what is missing (tables, indexes, validators)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Everything applied before stays readable on reopen."""

    def check_layout(self) -> None:  # noqa: B027 - optional hook
        """Raise the StoreLayoutError open() would raise, writing nothing (the hybrid store
        checks both of its stores before either writes)."""

    def _layout_steps(self, marker: Any, holds_data: bool) -> range:
        """The migration steps that bring the store to ``layout`` (none for the current one),
        from its *marker* (None when it has none) and whether it *holds data*; reads and writes
        nothing. Raises StoreLayoutError for a layout no steps lead from."""
        found = marker if marker is not None else UNMARKED_LAYOUT if holds_data else self.layout
        if type(found) is int and found <= self.layout and all(
            n in self.migrations for n in range(found, self.layout)
        ):
            return range(found, self.layout)
        raise StoreLayoutError(self.describe(), found, self.layout, self._layout_advice())

    def _settle_layout(self, marker: Any, holds_data: bool, handle: Any,
                       stamp: Callable[[int], None]) -> None:
        """At open(), before anything else is written: refuse the store (StoreLayoutError,
        nothing written), or migrate it step by step, recording each layout reached with
        *stamp*, or record the current layout in a store without a marker."""
        steps = self._layout_steps(marker, holds_data)
        for n in steps:
            logger.info("Migrating %(store)s from layout %(from)d to layout %(to)d",
                        {"store": self.describe(), "from": n, "to": n + 1})
            self.migrations[n](self, handle)
            stamp(n + 1)
        if not steps and marker != self.layout:
            stamp(self.layout)

    def _layout_advice(self) -> str:
        """What to change to use this version with a store of another layout."""
        return "Point this version at another store"

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

    def matching_items(
        self, checkpoint_id: str, contains: Sequence[Sequence[str]]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Items that may match: each group of *contains* has a substring in the item's stored
        text; a store that cannot filter returns every item. As :meth:`items`."""
        return self.items(checkpoint_id)

    @abstractmethod
    def list_checkpoints(
        self,
        spider: str | None = None,
        site_domain: str | None = None,
        job_type: str | None = None,
        status: StatusFilter = None,
    ) -> Iterator[Checkpoint]:
        """The checkpoints that match every filter given, newest first (by ``updated_at``).

        Without scanning the store: an index or a query. A record that cannot be read is
        logged (with its id) and left out, so that one bad record does not hide the rest.
        """

    @abstractmethod
    def delete(self, checkpoint_id: str) -> bool:
        """Remove the checkpoint and everything stored with it (its requests, processed
        marks, items, journal and index entries); False when the store holds none of it.

        A crawl still writing the checkpoint writes it again from its next batch on."""

    def stored_bytes(self, checkpoint_id: str) -> int | None:
        """About how many bytes the checkpoint takes in the store, if the store can tell
        cheaply; None otherwise."""
        return None

    # -- user queries and query sessions (``scrapy query``) --------------------------------
    #
    # Stored as given: a user id is already a keyed hash (queries.privacy.user_key) and the
    # query text already masked (queries.privacy.mask_query) when they reach a store. A save
    # replaces the document of the same id. *ttl*: seconds it is kept from now, 0 for ever
    # (see query_ttl); it expires like a checkpoint. Expired documents are never returned.

    def save_user_query(self, query: UserQuery | Mapping[str, Any], ttl: float = 0.0) -> UserQuery:
        """Validate and insert or replace *query*; returns it as stored (with ``expires_at``).
        Raises pydantic's ValidationError, writing nothing, for an invalid one."""
        record = query_record(UserQuery, query, ttl)
        self._save_query_record(record, ttl)
        return record

    @abstractmethod
    def get_user_query(self, query_id: str) -> UserQuery | None:
        """The user query, None if absent or expired."""

    @abstractmethod
    def list_user_queries(self, user_id: str | None = None, limit: int | None = None) -> Iterator[UserQuery]:
        """User queries, newest first (by ``created_at``): those of *user_id* (compared as
        stored, i.e. already hashed) or of everyone; *limit* at most. Through an index, never a
        scan of the store; a document that cannot be read is logged and left out."""

    @abstractmethod
    def delete_user_query(self, query_id: str) -> bool:
        """Remove the user query and its sessions; False when the store holds none of them."""

    def save_query_session(self, session: QuerySession | Mapping[str, Any], ttl: float = 0.0) -> QuerySession:
        """Validate and insert or replace *session*; returns it as stored (with ``expires_at``).
        Set its ``updated_at`` when it changes: a store that holds two copies keeps the newer."""
        record = query_record(QuerySession, session, ttl)
        self._save_query_record(record, ttl)
        return record

    @abstractmethod
    def _save_query_record(self, record: UserQuery | QuerySession, ttl: float) -> None:
        """Insert or replace *record* (valid, its ``expires_at`` set) as it is, to expire in
        *ttl* seconds (0: never)."""

    @abstractmethod
    def get_query_session(self, session_id: str) -> QuerySession | None:
        """The query session, None if absent or expired."""

    @abstractmethod
    def list_query_sessions(self, query_id: str | None = None) -> Iterator[QuerySession]:
        """The sessions of *query_id* (of every query when None), newest first (by
        ``created_at``); like :meth:`list_user_queries`, through an index."""

    def describe(self) -> str:
        """Where the store is, for logs; never includes a credential."""
        return self.name
