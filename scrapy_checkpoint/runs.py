"""The run history of a checkpoint, and the periodic progress line of the running crawl."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from .models import Batch, Checkpoint, CheckpointRun, CheckpointStatus, merge_run, utcnow

if TYPE_CHECKING:
    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)


class CheckpointRunRecorder:
    """Keeps this process's :class:`~scrapy_checkpoint.models.CheckpointRun` up to date: each
    batch carries it, so the store knows what every run did up to its last batch, and how it
    ended. Also logs, every ``CHECKPOINT_LOG_INTERVAL`` seconds, where the checkpoint stands.
    """

    def __init__(self, stats: StatsCollector) -> None:
        self.stats = stats
        self.run: CheckpointRun | None = None
        #: The run changed since a batch last carried it.
        self.unsaved = False
        # What the record held when this run began, for the progress line.
        self._discovered = self._processed = self._items = 0
        self._flushed_at: float | None = None
        self._flush_seconds = 0.0
        self._down_since: float | None = None
        self._logged_processed = 0
        self._logged_at = time.monotonic()

    def begin(
        self, checkpoint: Checkpoint, resume_seconds: float | None = None, refused: str | None = None,
        number: int | None = None,
    ) -> CheckpointRun:
        """Start this process's run of *checkpoint* (resumed when *resume_seconds* is given)
        and add it to the record's runs, numbered one more than the last (or *number*: the
        store's, for one of several workers beginning at once)."""
        now = utcnow()
        data = checkpoint.pipeline_data
        resumed = resume_seconds is not None or refused is not None
        if number is None:
            number = checkpoint.runs[-1].number + 1 if checkpoint.runs else 1
        run = CheckpointRun(
            number=number,
            started_at=now,
            updated_at=now,
            host=socket.gethostname(),
            pid=os.getpid(),
            resumed=resumed,
            resumed_from_seq=checkpoint.seq if resumed else None,
            pending_at_resume=max(data.urls_discovered - data.urls_processed, 0) if resumed else None,
            resume_seconds=None if resume_seconds is None else round(resume_seconds, 3),
            refused=refused,
        )
        if refused is not None:
            run.ended_at, run.close_reason = now, "checkpoint_error"
        checkpoint.runs = merge_run(checkpoint.runs, run)
        self.run, self.unsaved = run, True
        self._discovered, self._processed = data.urls_discovered, data.urls_processed
        self._items = data.extraction_results.items_scraped
        self._logged_processed = data.urls_processed
        self.stats.set_value("checkpoint/run", run.number)
        return run

    def taken(self, batch: Batch) -> None:
        """*batch* leaves for the store: it carries the run, as it stands with it."""
        run = self.run
        if run is None:
            return
        run.requests += len(batch.discovered)
        run.pages += len(batch.processed)
        run.items += sum(batch.item_counts.values())
        run.updated_at = utcnow()
        batch.run = run.model_copy()
        self.unsaved = False

    def closing(self, reason: str, status: CheckpointStatus) -> None:
        """The crawl closes with *reason*, saving the checkpoint as *status*."""
        if self.run is not None:
            self.run.ended_at = utcnow()
            self.run.close_reason = reason
            self.run.status = status
            self.unsaved = True

    # The progress line

    def flushed(self, seconds: float) -> None:
        self._flushed_at = time.monotonic()
        self._flush_seconds = seconds
        self._down_since = None

    def store_failed(self) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()

    def log_progress(self, checkpoint_id: str, batch: Batch, buffered: int) -> None:
        """One INFO line: where the checkpoint stands, counting *batch* (not taken yet)."""
        run = self.run
        if run is None:
            return
        now = time.monotonic()
        discovered = self._discovered + run.requests + len(batch.discovered)
        processed = self._processed + run.pages + len(batch.processed)
        items = self._items + run.items + sum(batch.item_counts.values())
        minutes = max(now - self._logged_at, 1e-9) / 60
        rate = (processed - self._logged_processed) / minutes
        self._logged_processed, self._logged_at = processed, now
        if self._flushed_at is None:
            flush = "no flush yet"
        else:
            flush = f"last flush {now - self._flushed_at:.1f} s ago, took {self._flush_seconds * 1000:.0f} ms"
        if self._down_since is None:
            store = "store up"
        else:
            store = f"store DOWN for {now - self._down_since:.0f} s"
        logger.info(
            "Checkpoint %(id)s: %(discovered)d requests, %(processed)d processed (at %(rate).0f/min), "
            "%(pending)d pending, %(items)d items; %(flush)s; %(store)s, %(buffered)d events waiting",
            {"id": checkpoint_id, "discovered": discovered, "processed": processed, "rate": rate,
             "pending": max(discovered - processed, 0), "items": items, "flush": flush,
             "store": store, "buffered": buffered + len(batch)},
        )
