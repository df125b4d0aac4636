"""Data models: the stored checkpoint record (pydantic) and the batch of events a flush applies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .exceptions import CorruptCheckpointError


def utcnow() -> datetime:
    """Now, to the millisecond: what every store (BSON dates included) keeps exactly."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def expiry(now: datetime, ttl: float) -> datetime | None:
    """When a record written at *now* expires; a TTL of 0 means never."""
    return now + timedelta(seconds=ttl) if ttl > 0 else None


#: Job types of the crawls `scrapy query` runs start with it; the rest is a digest of the
#: query's intent, so that the same query, asked again, resumes or reuses the same crawls.
QUERY_JOB_PREFIX = "query-"


class CheckpointStatus(str, Enum):
    """``active`` and ``failed`` checkpoints can be resumed; ``completed`` ones are archived."""

    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


RESUMABLE = (CheckpointStatus.ACTIVE, CheckpointStatus.FAILED)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExtractionResults(_Model):
    """Counts of scraped items, in all and per item class name."""

    items_scraped: int = Field(0, ge=0)
    by_type: dict[str, int] = Field(default_factory=dict)


class PipelineData(_Model):
    """Progress of a checkpoint.

    The URL sets themselves live outside this record (one row or document per URL), so
    that the record stays small however large the crawl grows; here are their sizes.
    """

    urls_discovered: int = Field(0, ge=0)
    urls_processed: int = Field(0, ge=0)
    current_page: int | None = Field(None, ge=0)
    pagination_state: dict[str, int] = Field(default_factory=dict)
    extraction_results: ExtractionResults = Field(default_factory=ExtractionResults)
    state: dict[str, Any] = Field(default_factory=dict)
    #: Each exactly-once feed where the saved processed marks leave it (file, length,
    #: batch, exporter state): what a resume cuts it back to.
    outputs: list[dict[str, Any]] = Field(default_factory=list)


#: Runs a checkpoint record keeps, the newest: a crawl resumed more often forgets its oldest.
RUN_HISTORY = 50


class CheckpointRun(_Model):
    """One run of a checkpoint: a ``scrapy crawl`` process, from its start to its close or its
    death. Saved with every batch, so that a killed run keeps what it did up to its last one."""

    number: int = Field(ge=1)
    started_at: datetime
    #: When its last batch was saved: about when a killed run died.
    updated_at: datetime
    #: None while it runs, and for ever when it was killed.
    ended_at: datetime | None = None
    close_reason: str | None = None
    #: The status its close saved (None until it closes).
    status: CheckpointStatus | None = None
    host: str = ""
    pid: int = Field(0, ge=0)
    resumed: bool = False
    #: The batch it resumed from, what was pending then, and how long the resume took
    #: (store opened, processed set loaded, feeds checked), in seconds.
    resumed_from_seq: int | None = Field(None, ge=0)
    pending_at_resume: int | None = Field(None, ge=0)
    resume_seconds: float | None = Field(None, ge=0)
    #: Why a resume was refused (the checkpoint was found but could not be resumed).
    refused: str | None = None
    requests: int = Field(0, ge=0)
    pages: int = Field(0, ge=0)
    items: int = Field(0, ge=0)

    def outcome(self, last: bool, alive: bool | None = None) -> str:
        """How the run ended: its close reason, ``killed`` when a later run started without it
        closing, ``running`` for the last run with no end recorded (or killed, until resumed).
        Runs of workers sharing a checkpoint run side by side: *alive* says whether its
        worker still is."""
        if self.ended_at is not None:
            return self.close_reason or "closed"
        if alive is not None:
            return "running" if alive else "killed"
        return "running" if last else "killed"


class Checkpoint(_Model):
    """One crawl's checkpoint record (the ``checkpoints`` document)."""

    checkpoint_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    spider: str = Field(min_length=1)
    site_domain: str = Field(min_length=1)
    job_type: str = Field(min_length=1)
    pipeline_step: int = Field(0, ge=0, le=4)
    pipeline_data: PipelineData = Field(default_factory=PipelineData)
    status: CheckpointStatus = CheckpointStatus.ACTIVE
    #: Sequence number of the last batch applied; stores compare it, never clocks.
    seq: int = Field(0, ge=0)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    #: None keeps the record for ever (CHECKPOINT_ARCHIVE_TTL = 0 on a completed crawl).
    expires_at: datetime | None
    #: Its runs, oldest first; RUN_HISTORY at most.
    runs: list[CheckpointRun] = Field(default_factory=list)

    @classmethod
    def new(cls, *, ttl: float, **fields: Any) -> Checkpoint:
        now = utcnow()
        return cls(created_at=now, updated_at=now, expires_at=expiry(now, ttl), **fields)

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE

    @classmethod
    def parse(cls, data: Any, *, checkpoint_id: str, where: str) -> Checkpoint:
        """Validate a stored record; a bad one raises CorruptCheckpointError naming it."""
        try:
            if isinstance(data, (str, bytes)):
                return cls.model_validate_json(data)
            return cls.model_validate(data)
        except ValidationError as exc:
            raise CorruptCheckpointError(checkpoint_id, where, str(exc)) from exc


#: Bits of a request's position that number it within its batch: a request's position is
#: ``seq << POSITION_BITS`` plus its place in ``Batch.discovered``, unique in a checkpoint.
POSITION_BITS = 32


@dataclass(slots=True)
class DiscoveredRequest:
    """A request that reached the scheduler, ready to be rebuilt on resume."""

    fingerprint: bytes
    url: str
    data: bytes
    start: bool = False


@dataclass(slots=True)
class Batch:
    """Everything recorded since the last flush, applied to a store atomically.

    Events keep their order: a URL is marked processed in the same batch as, or a later
    one than, every request and item its callback produced. That is what makes a kill at
    any moment safe.
    """

    seq: int
    discovered: list[DiscoveredRequest] = field(default_factory=list)
    processed: list[bytes] = field(default_factory=list)
    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    item_counts: dict[str, int] = field(default_factory=dict)
    pagination: dict[str, int] = field(default_factory=dict)
    current_page: int | None = None
    pipeline_step: int = 0
    state: dict[str, Any] | None = None
    #: The feeds' state after this batch's processed marks (None: no feeds).
    outputs: list[dict[str, Any]] | None = None
    #: The run that wrote this batch, as it stands after it.
    run: CheckpointRun | None = None
    #: Leases of a shared scrapy-redis queue released once the batch is applied (stores
    #: ignore them): the requests they hold are processed, or back in the queue.
    leases: list[str] = field(default_factory=list)
    status: CheckpointStatus | None = None
    #: The worker that wrote it, when several share the checkpoint (stores that can share
    #: one keep its seq, feeds and spider state apart from the others').
    writer: str | None = None
    #: Dead workers whose feeds the writer took over (their saved feed states go).
    took_over: list[str] = field(default_factory=list)
    #: Where processed requests were recorded, by fingerprint, when known: the position of
    #: the record their discovery wrote (a store that keeps requests in discovery order
    #: finds them by it; the others go by fingerprint).
    positions: dict[bytes, int] = field(default_factory=dict)
    #: Records of restored requests that another record stands for (a twin found in this
    #: run, or the request processed already): (position, fingerprint). Stores that key
    #: requests by fingerprint have one record for both and ignore them.
    superseded: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def next_position(self) -> int:
        """The position of the next request added to ``discovered``."""
        return (self.seq << POSITION_BITS) + len(self.discovered)

    def __len__(self) -> int:
        return len(self.discovered) + len(self.processed) + sum(self.item_counts.values())

    def apply_to(self, checkpoint: Checkpoint, *, discovered: int, processed: int, ttl: float) -> None:
        """Fold this batch's counters into *checkpoint* (stores that keep the record whole)."""
        data = checkpoint.pipeline_data
        data.urls_discovered += discovered
        data.urls_processed += processed
        results = data.extraction_results
        for item_type, count in self.item_counts.items():
            results.by_type[item_type] = results.by_type.get(item_type, 0) + count
            results.items_scraped += count
        data.pagination_state.update(self.pagination)
        if self.current_page is not None:
            data.current_page = self.current_page
        if self.state is not None:
            data.state = self.state
        if self.outputs is not None:
            data.outputs = self.outputs
        if self.run is not None:
            checkpoint.runs = merge_run(checkpoint.runs, self.run)
        checkpoint.pipeline_step = max(checkpoint.pipeline_step, self.pipeline_step)
        if self.status is not None:
            checkpoint.status = self.status
        checkpoint.seq = self.seq
        checkpoint.updated_at = utcnow()
        checkpoint.expires_at = expiry(checkpoint.updated_at, ttl)


def live_workers(workers: dict[str, dict[str, Any]], timeout: float) -> dict[str, bool]:
    """Which workers sharing a checkpoint are alive: running, and seen within the lease
    *timeout* (a dead one stops saying so)."""
    return {name: info.get("status") == "running" and info.get("age", timeout + 1) <= timeout
            for name, info in workers.items()}


def merge_run(runs: list[CheckpointRun], run: CheckpointRun) -> list[CheckpointRun]:
    """*runs* with *run* in place of the one of its number, in order, RUN_HISTORY at most."""
    merged = [r for r in runs if r.number != run.number] + [run]
    merged.sort(key=lambda r: r.number)
    return merged[-RUN_HISTORY:]


class PriceRange(_Model):
    """Bounds of a price filter; either side may be open."""

    min: float | None = Field(None, ge=0)
    max: float | None = Field(None, ge=0)
    #: ISO 4217 code of the bounds (None: the query named no currency).
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")

    @model_validator(mode="after")
    def _ordered(self) -> PriceRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"price_range min ({self.min}) is above max ({self.max})")
        return self


#: How a query asks its results ordered: cheapest or dearest first, newest, best rated, best selling.
QueryOrder = Literal["price_asc", "price_desc", "newest", "rating", "popular"]


class ParsedIntent(_Model):
    """What a user query asks for, once parsed."""

    product_type: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    price_range: PriceRange = Field(default_factory=PriceRange)
    order: QueryOrder | None = None
    #: Words of the query it did not understand: results must still contain them.
    keywords: list[str] = Field(default_factory=list)


class UserQuery(_Model):
    """A user's search request (the ``user_queries`` document)."""

    query_id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1)
    user_id: str | None = None
    raw_query: str = Field(min_length=1)
    parsed_intent: ParsedIntent = Field(default_factory=ParsedIntent)
    created_at: datetime = Field(default_factory=utcnow)
    #: Set by the store from the TTL it is saved with; None keeps it for ever.
    expires_at: datetime | None = None


class QuerySessionStatus(str, Enum):
    """Where the crawls answering a user query stand."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class QuerySession(_Model):
    """The crawls run to answer one user query (the ``query_sessions`` document).

    ``results`` is a summary (e.g. per-site counts); the items themselves stay with their
    checkpoints, so that the document stays small.
    """

    session_id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1)
    query_id: str = Field(min_length=1)
    checkpoint_ids: list[str] = Field(default_factory=list)
    sites_searched: list[str] = Field(default_factory=list)
    results: dict[str, Any] = Field(default_factory=dict)
    status: QuerySessionStatus = QuerySessionStatus.PENDING
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = None
    #: Set by the store from the TTL it is saved with; None keeps it for ever.
    expires_at: datetime | None = None
