"""The checkpoint extension: records a crawl's progress in batches and resumes it."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit, urlencode

from itemadapter import ItemAdapter
from scrapy import Request, signals
from scrapy.exceptions import CloseSpider, DontCloseSpider, IgnoreRequest, NotConfigured
from scrapy.extensions.feedexport import FeedExporter
from scrapy.utils.asyncio import create_looping_call, run_in_thread, sleep
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ._fingerprints import FingerprintSet
from ._redact import redact_uri, scrub, secrets_of
from ._serialization import RequestSerializer
from .exceptions import CheckpointError, CheckpointNotFound, StoreUnavailable
from .metrics import CheckpointMetrics
from .models import Batch, Checkpoint, CheckpointStatus, DiscoveredRequest, live_workers
from .outputs.feeds import CheckpointFeedExporter
from .outputs.keys import forget, remember
from .runs import CheckpointRunRecorder
from .settings import CheckpointSettings, checkpoints_on, is_enabled, object_path, shares_a_scheduler
from .stores import store_class

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from .stores import CheckpointStore

logger = logging.getLogger(__name__)

#: Pending requests rebuilt first on resume, before full CHECKPOINT_RESEED_CHUNKs.
FIRST_RESEED_CHUNK = 50

#: Further tries of the final flush, CHECKPOINT_STORE_TIMEOUT apart, when the store is down.
CLOSE_RETRIES = 2

#: The close reason of a crawl that refuses to run as asked (no store, a bad checkpoint).
CHECKPOINT_ERROR = "checkpoint_error"

#: The request meta key of a scrapy-redis lease (distributed.LEASE_META, which needs scrapy-redis).
LEASE_META = "checkpoint_lease"

#: The request meta key of where a request is recorded: (checkpoint id, position, fingerprint).
#: Saved with the request, so a restored one has it too; copies (a retry, or a request made
#: with ``meta=response.meta``) carry it along, and the fingerprint tells whether it is theirs.
RECORD_META = "_checkpoint_record"

#: Close reasons after which a checkpoint stays ``active``: the crawl was stopped, not broken.
STOPPED_REASONS = frozenset({
    "shutdown",
    "cancelled",
    "closespider_timeout",
    "closespider_timeout_no_item",
    "closespider_itemcount",
    "closespider_pagecount",
    "closespider_pagecount_no_item",
})


@dataclass
class SpiderCheckpoint:
    """What a spider sees of its checkpoint, as ``self.checkpoint``; with checkpoints off, one
    whose ``checkpoint_id`` is None and whose state lives in memory only."""

    checkpoint_id: str | None
    resumed: bool
    #: A small dict the spider may read and write; saved with every flush, restored on resume.
    state: dict[str, Any] = field(default_factory=dict)
    #: The last page processed of each paginated listing (URL without its page parameter).
    pagination: dict[str, int] = field(default_factory=dict)
    #: True holds a resume's restored requests back, e.g. until a login's response is in:
    #: set it in ``start()`` before yielding the login, and back to False in its callback.
    #: A crawl with nothing else to do releases them (and logs a warning).
    hold_restored: bool = False


@dataclass(slots=True)
class _Work:
    """A request whose callback or errback is running: processed once its output is
    consumed and every item it produced has left the item pipelines."""

    request: Request
    running: int = 0
    items: int = 0
    ran: bool = False
    #: Items yielded so far: the position of the next one, for its idempotency key.
    yielded: int = 0
    #: The items this work's callback yielded, known to item_key() until the work ends.
    item_ids: list[int] = field(default_factory=list)
    #: Scraped items, recorded and written to the feeds when the work ends.
    scraped: list[Any] = field(default_factory=list)
    #: An item pipeline raised on one of its items: the request stays pending.
    failed: bool = False
    #: The crawl closed before its output could be recorded: the request stays pending.
    abandoned: bool = False


class CheckpointExtension:
    """Records discovered and processed requests, items, pagination and spider state, and
    reseeds the scheduler on ``CHECKPOINT_RESUME``.

    Events are buffered in a :class:`~scrapy_checkpoint.models.Batch` and flushed to the
    store from a worker thread every ``CHECKPOINT_FLUSH_INTERVAL`` seconds, every
    ``CHECKPOINT_BATCH_SIZE`` events, and at close.
    """

    def __init__(self, crawler: Crawler) -> None:
        if not checkpoints_on(crawler):
            if is_enabled(crawler.settings):
                logger.info(
                    "Checkpoints are on, but spider %(spider)s does not opt in "
                    "(checkpoint_enabled = True): it runs without them",
                    {"spider": crawler.spidercls.name},
                )
            # Code written for checkpoints (self.checkpoint.state) runs without them too.
            crawler.signals.connect(give_spider_a_checkpoint, signals.spider_opened)
            raise NotConfigured
        self.crawler = crawler
        try:
            self.settings = CheckpointSettings.from_settings(crawler.settings)
            self.store: CheckpointStore = store_class(self.settings).from_checkpoint_settings(self.settings)
            self.metrics = CheckpointMetrics.from_settings(self.settings, crawler.stats)
        except (ValueError, ImportError) as exc:
            # One line that names the setting, rather than Scrapy's traceback of a crawl that
            # failed to start. The crawl closes at once, without a store or a feed opened
            # (a file given with -O keeps its content), and `scrapy crawl` exits 1.
            logger.error("%s", exc)
            self.misconfigured = True
            crawler.signals.connect(self._refuse_to_start, signals.spider_opened)
            crawler.signals.connect(self._exit_non_zero, signals.spider_closed)
            return
        self.stats = crawler.stats
        self.fingerprint = crawler.request_fingerprinter.fingerprint
        self.serializer = RequestSerializer(
            crawler.spider, self.settings.private_headers, self.settings.private_meta
        )
        self._secrets = secrets_of(self.settings.redis_url) | secrets_of(self.settings.mongo_uri)
        self.store.stats = crawler.stats
        self.runs = CheckpointRunRecorder(crawler.stats)
        self.checkpoint: Checkpoint | None = None
        self.spider_checkpoint: SpiderCheckpoint | None = None
        self._steps: dict[str, int] = dict(getattr(crawler.spidercls, "checkpoint_steps", {}) or {})
        self._page_needles = tuple(f"{p}=" for p in self.settings.page_params)
        self._batch = Batch(seq=1)
        self._events = 0
        self._unflushed: deque[Batch] = deque()
        self._uncreated = False
        self._flushing: Any = None
        self._loop: Any = None
        self._progress_loop: Any = None
        #: The scrapy-redis queue that leases what it pops (distributed.LeaseMixin), if any.
        self.leases: Any = None
        #: This process as one of the workers sharing the checkpoint (distributed.CheckpointWorker),
        #: when the queue leases and the store can share one.
        self.worker: Any = None
        #: Dead workers whose feeds this one took over, for the next batch.
        self._took_over: list[str] = []
        #: Leased requests done since the last flush, with the items they scraped: recorded
        #: by the flush if their leases are still this worker's (_confirm_leased).
        self._unconfirmed: list[tuple[Request, Sequence[Any]]] = []
        self._work: dict[Any, _Work] = {}
        self._last_discovered: Request | None = None
        #: The first part of RECORD_META: the checkpoint (and worker) whose positions it gives.
        self._record_tag: str | None = None
        self._warned: set[str] = set()
        self._saved_state: dict[str, Any] = {}
        #: The feeds written in step with the checkpoint, when FEEDS has any.
        self._feeds: CheckpointFeedExporter | None = None
        #: Requests left pending because an item pipeline raised on one of their items.
        self._unfinished = 0
        self._last_taken = time.monotonic()
        # Resume state.
        self._processed_before: FingerprintSet | None = None
        self._pending_start: set[bytes] = set()
        #: While the processed fingerprints load (in a thread, the crawl going on meanwhile):
        #: the load itself, what waits for it, and the requests scheduled meanwhile.
        self._loading: Any = None
        self._load_waiters: list[Any] = []
        self._held: list[Request] = []
        self._load_failed = False
        self._reseed_cursor: Any = None
        self._reseed_chunk: list[bytes] | None = None
        self._reseed_wanted = False
        self._reseed_done = True
        self._reseed_left = 0
        self._reseeding = False
        #: A worker's look for pending requests the shared queue lost, once it has nothing to
        #: do: None (not under way), "looking", or "clear" (none: the crawl may close).
        self._requeue_state: str | None = None
        self._requeue_seen = 0
        crawler.signals.connect(self.spider_opened, signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signals.spider_closed)
        crawler.signals.connect(self.request_scheduled, signals.request_scheduled)
        crawler.signals.connect(self.request_dropped, signals.request_dropped)
        crawler.signals.connect(self.item_scraped, signals.item_scraped)
        crawler.signals.connect(self.item_done, signals.item_dropped)
        crawler.signals.connect(self.item_failed, signals.item_error)
        crawler.signals.connect(self.scheduler_empty, signals.scheduler_empty)
        crawler.signals.connect(self.spider_idle, signals.spider_idle)

    #: The checkpoint settings are invalid: the crawl is refused (nothing else is set up).
    misconfigured = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CheckpointExtension:
        return cls(crawler)

    def use_leases(self, queue: Any) -> None:
        """Called by a leasing scrapy-redis queue: its leases are released by the batch that
        marks their requests processed, and renewed while this worker lives."""
        queue.lease_ms = round(self.settings.lease_timeout * 1000)
        queue.counted = self._count_leases
        queue.renew_failed = lambda exc: self._warn_once(
            "lease_error", exc, "Leases of the scrapy-redis queue were not renewed")
        queue.unreachable = lambda exc: self._warn_once(
            "queue_error", exc, "The scrapy-redis queue is unreachable; requests wait in memory until it is back")
        self.leases = queue

    def _count_leases(self, event: str, count: int) -> None:
        self.stats.inc_value(f"checkpoint/leases/{event}", count)
        self.metrics.leases(event, count)
        if event == "fenced":
            logger.warning(
                "%(n)d requests this worker did were not recorded: their leases had moved on to "
                "other workers, which do them again",
                {"n": count},
            )
        elif event == "saved_late":
            logger.warning(
                "%(n)d requests were saved after their leases moved on (this worker was stopped "
                "or cut off while saving them): other workers do them again, and their items "
                "may be in two feeds",
                {"n": count},
            )
        elif event == "lost":
            logger.warning(
                "%(n)d leases of this worker expired before it renewed or released them (it was "
                "stopped or cut off longer than CHECKPOINT_LEASE_TIMEOUT, %(timeout)g s): other "
                "workers do those requests again",
                {"n": count, "timeout": self.settings.lease_timeout},
            )

    def _refuse_to_start(self) -> None:
        raise CloseSpider(CHECKPOINT_ERROR)

    def _exit_non_zero(self) -> None:
        # `scrapy crawl` exits 1 only for a crawler that ends without a spider (its test of
        # a failed start); a crawl that refused to run without its checkpoint is one, and
        # cron or an orchestrator must see it.
        self.crawler.spider = None  # type: ignore[assignment]

    # Opening and resuming

    async def spider_opened(self, spider: Spider) -> None:
        started = time.perf_counter()
        site = checkpoint_identity(spider)[1]
        if site in self.settings.site_limits:
            self.settings = self.settings.for_site(site)
            logger.info(
                "Checkpoint writes for %(site)s: every %(interval)g s or %(batch)d events "
                "(CHECKPOINT_SITE_LIMITS)",
                {"site": site, "interval": self.settings.flush_interval, "batch": self.settings.batch_size},
            )
        self._feeds = self._find_feeds()
        self.metrics.opened(*checkpoint_identity(spider), self.store.name)
        try:
            try:
                await run_in_thread(self.store.open)
                self.metrics.store_state(True)
                checkpoint, resumed = await self._load_or_create(spider)
                if resumed and self._feeds is not None:
                    try:
                        self._feeds.resume(spider, checkpoint.checkpoint_id, self.settings.directory,
                                           checkpoint.pipeline_data.outputs)
                    except CheckpointError as exc:
                        await self._record_refusal(checkpoint, exc)
                        raise
                if resumed:
                    self.runs.begin(checkpoint, resume_seconds=time.perf_counter() - started)
            except StoreUnavailable as exc:
                if self.settings.resume:
                    raise CheckpointError(f"{exc}: cannot resume until it is back.") from exc
                # A new crawl goes on: its checkpoint is written once the store returns.
                checkpoint, resumed = self._new_checkpoint(spider), False
                self._uncreated = True
                self._store_error("open", exc)
        except CheckpointError as exc:
            logger.error("%s", self._scrub(exc))
            if self.settings.resume:
                self.metrics.recovery(resumed=False)
            raise CloseSpider(CHECKPOINT_ERROR) from exc
        except Exception as exc:  # a refused login, a broken store: no checkpoint, no crawl
            logger.error("Checkpoint store %(store)s failed to open: %(error)s",
                         {"store": self.store.describe(), "error": self._scrub(exc)})
            if self.settings.resume:
                self.metrics.recovery(resumed=False)
            raise CloseSpider(CHECKPOINT_ERROR) from exc
        if resumed:
            self.metrics.recovery(resumed=True)
        else:
            self.metrics.checkpoint_created()
        self.checkpoint = checkpoint
        self._record_tag = self._writer_key(checkpoint)
        if resumed:
            self._restore_started(checkpoint)
        data = checkpoint.pipeline_data
        self._saved_state = dict(data.state)
        self.spider_checkpoint = SpiderCheckpoint(
            checkpoint.checkpoint_id, resumed, dict(data.state), dict(data.pagination_state)
        )
        spider.checkpoint = self.spider_checkpoint  # type: ignore[attr-defined]
        self.stats.set_value("checkpoint/id", checkpoint.checkpoint_id)
        if resumed or self.worker is not None:
            # The run is in the history at once (a run killed before its first flush too),
            # and a failed checkpoint is active again.
            self._flush_soon()
        self._loop = create_looping_call(self._flush_soon)
        self._loop.start(self.settings.flush_interval, now=False)
        if self.settings.log_interval:
            self._progress_loop = create_looping_call(self._log_progress)
            self._progress_loop.start(self.settings.log_interval, now=False)
        if self.leases is not None:
            self.leases.start_heartbeat(self.settings.lease_timeout / 3)
            if self.worker is not None:
                self.worker.beat_failed = lambda exc: self._warn_once(
                    "worker_error", exc, "This worker could not tell the checkpoint store it is alive")
                self.worker.start(checkpoint, self.runs.run.number, self.settings.lease_timeout, self.settings.ttl)
            if self.leases.dupefilter is None:
                logger.warning(
                    "DUPEFILTER_CLASS %(filter)s marks a request seen apart from queueing it: a "
                    "worker killed between the two loses that request. Use "
                    "scrapy_redis.dupefilter.RFPDupeFilter, with the add-on.",
                    {"filter": object_path(self.crawler.settings.get("DUPEFILTER_CLASS"))},
                )
        elif shares_a_scheduler(self.crawler.settings):
            logger.warning(
                "SCHEDULER_QUEUE_CLASS %(queue)s is not a queue scrapy-checkpoint can lease: a worker "
                "that dies loses the requests it had popped. Use one of scrapy_redis.queue's "
                "PriorityQueue, FifoQueue or LifoQueue, with the add-on.",
                {"queue": self.crawler.settings.get("SCHEDULER_QUEUE_CLASS")},
            )

    async def _record_refusal(self, checkpoint: Checkpoint, exc: Exception) -> None:
        """Record in the checkpoint's runs that a resume of it was refused, and why: the
        recoveries that fail are part of its history (best effort: the crawl ends anyway)."""
        self.runs.begin(checkpoint, refused=self._scrub(exc))
        batch = Batch(seq=checkpoint.seq + 1)
        self.runs.taken(batch)
        try:
            await run_in_thread(self.store.apply, checkpoint.checkpoint_id, batch, self.settings.ttl)
        except Exception as error:
            logger.debug("The refused resume of %s is not recorded: %r", checkpoint.checkpoint_id, error)

    def _log_progress(self) -> None:
        assert self.checkpoint is not None
        self.runs.log_progress(
            self.checkpoint.checkpoint_id, self._batch, sum(len(b) for b in self._unflushed)
        )

    async def _load_or_create(self, spider: Spider) -> tuple[Checkpoint, bool]:
        if self.worker is not None:
            return await self._join(spider), False
        name, site, job = checkpoint_identity(spider)
        settings = self.settings
        found: Checkpoint | None
        if settings.checkpoint_id:
            found = await run_in_thread(self.store.get, settings.checkpoint_id)
            if found is None:
                raise CheckpointNotFound(
                    f"CHECKPOINT_ID ({settings.checkpoint_id!r}) names no checkpoint in "
                    f"{self.store.describe()}; check the id, or drop CHECKPOINT_ID to start anew."
                )
            if not found.resumable:
                raise CheckpointError(
                    f"Checkpoint {found.checkpoint_id} is {found.status.value} and cannot be resumed."
                )
        else:
            found = await run_in_thread(self.store.find_resumable, name, site, job)
        if found is not None and settings.resume:
            loading = deferred_from_coro(self._load_fingerprints(found))
            if not loading.called:
                self._loading = loading
            return found, True
        if found is not None:
            logger.info(
                "Checkpoint %(id)s of %(spider)s (%(site)s, %(job)s) can be resumed: run again with "
                "-s CHECKPOINT_RESUME=1 (or -s CHECKPOINT_ID=%(id)s). Starting a new checkpoint.",
                {"id": found.checkpoint_id, "spider": name, "site": site, "job": job},
            )
        elif settings.resume:
            logger.info(
                "No resumable checkpoint of %(spider)s (%(site)s, %(job)s) in %(store)s: starting a new one.",
                {"spider": name, "site": site, "job": job, "store": self.store.describe()},
            )
        checkpoint = self._new_checkpoint(spider)
        await run_in_thread(self.store.create, checkpoint)
        logger.info(
            "Checkpoint %(id)s started in %(store)s",
            {"id": checkpoint.checkpoint_id, "store": self.store.describe()},
        )
        return checkpoint, False

    def _new_checkpoint(self, spider: Spider, checkpoint_id: str | None = None) -> Checkpoint:
        name, site, job = checkpoint_identity(spider)
        fields = {} if checkpoint_id is None else {"checkpoint_id": checkpoint_id}
        checkpoint = Checkpoint.new(ttl=self.settings.ttl, spider=name, site_domain=site, job_type=job, **fields)
        self.runs.begin(checkpoint)
        if self._feeds is not None:
            outputs = self._feeds.initial_state(spider, self._writer_key(checkpoint), self.settings.directory)
            if self.worker is None:
                checkpoint.pipeline_data.outputs = outputs
        return checkpoint

    def _writer_key(self, checkpoint: Checkpoint) -> str:
        """This process's own name in *checkpoint*: the checkpoint id, with the worker's name
        when several share it. Feeds held for delivery live under CHECKPOINT_DIR/feeds/<it>,
        and RECORD_META names whose positions it gives."""
        if self.worker is None:
            return checkpoint.checkpoint_id
        return f"{checkpoint.checkpoint_id}/{self.worker.name.replace(':', '-')}"

    async def _join(self, spider: Spider) -> Checkpoint:
        """One of scrapy-redis's workers: the checkpoint the job's live workers write to, else
        (CHECKPOINT_RESUME) the newest resumable one of the job, else a new one. Its requests
        are in scrapy-redis's queue: nothing is restored; this worker's feeds start anew."""
        started = time.perf_counter()
        name, site, job = checkpoint_identity(spider)
        settings = self.settings
        take = None
        if settings.resume:
            found = await run_in_thread(self.store.find_resumable, name, site, job)
            take = None if found is None else found.checkpoint_id
        checkpoint_id, how = await run_in_thread(
            self.store.claim, name, site, job, str(uuid.uuid4()), take, settings.lease_timeout
        )
        if how == "created":
            checkpoint = self._new_checkpoint(spider, checkpoint_id)
            await run_in_thread(self.store.create, checkpoint)
            logger.info(
                "Checkpoint %(id)s started in %(store)s by worker %(worker)s; workers of %(spider)s "
                "(%(site)s, %(job)s) that start while it runs share it",
                {"id": checkpoint_id, "store": self.store.describe(), "worker": self.worker.name,
                 "spider": name, "site": site, "job": job},
            )
            return checkpoint
        # The worker that created it may still be writing its record.
        deadline = time.monotonic() + settings.lease_timeout
        while (checkpoint := await run_in_thread(self.store.get, checkpoint_id)) is None:
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"Checkpoint {checkpoint_id}, claimed by a worker of {name} ({site}, {job}), was not "
                    f"written to {self.store.describe()} within CHECKPOINT_LEASE_TIMEOUT "
                    f"({settings.lease_timeout:g} s): that worker died as it started. Start this one again."
                )
            await sleep(0.05)
        number = await run_in_thread(self.store.next_run, checkpoint_id)
        if self._feeds is not None:
            await self._take_over_feeds(spider, checkpoint)
        self.runs.begin(checkpoint, number=number,
                        resume_seconds=time.perf_counter() - started if how == "taken" else None)
        logger.info(
            "Worker %(worker)s %(how)s checkpoint %(id)s in %(store)s (run %(run)d)",
            {"worker": self.worker.name, "how": "joined" if how == "joined" else "took over",
             "id": checkpoint_id, "store": self.store.describe(), "run": number},
        )
        return checkpoint

    async def _take_over_feeds(self, spider: Spider, checkpoint: Checkpoint) -> None:
        """This worker's feeds, for a checkpoint it joins: where a dead worker of this host
        left a feed of the same FEEDS entry (a worker started again with the same ``-o``),
        the file is cut back to what the checkpoint saved of it and goes on from there, as a
        resume does; the others start anew. A worker of this host is dead when its process
        is gone, without waiting for its heartbeats to lapse (a restart can be quick)."""
        assert self._feeds is not None
        host = socket.gethostname()
        workers = await run_in_thread(self.store.workers, checkpoint.checkpoint_id)
        alive = live_workers(workers, self.settings.lease_timeout)
        ours = {redact_uri(template) for template in self._feeds.feeds}
        left = {}
        for entry in checkpoint.pipeline_data.outputs:
            writer = entry.get("worker", "")
            info = workers.get(writer)
            if info is None or info.get("host") != host or entry["feed"] not in ours:
                continue
            if not (alive[writer] and _process_exists(info.get("pid", 0))):
                left[entry["feed"]] = entry
        key = self._writer_key(checkpoint)
        if not left:
            self._feeds.initial_state(spider, key, self.settings.directory)
            return
        self._feeds.resume(spider, key, self.settings.directory, list(left.values()))
        self._took_over = sorted({entry["worker"] for entry in left.values()})
        logger.info("Worker %(worker)s goes on with the feeds %(feeds)s of dead worker(s) %(dead)s",
                    {"worker": self.worker.name, "feeds": ", ".join(sorted(left)),
                     "dead": ", ".join(self._took_over)})

    def _find_feeds(self) -> CheckpointFeedExporter | None:
        exporter = self.crawler.get_extension(FeedExporter)
        if exporter is None:
            return None
        if isinstance(exporter, CheckpointFeedExporter):
            return exporter
        logger.warning(
            "FEEDS are written by %(cls)s, not in step with the checkpoint: a kill loses or "
            "repeats items in them. The add-on sets this up; by hand, replace "
            "scrapy.extensions.feedexport.FeedExporter with "
            "scrapy_checkpoint.CheckpointFeedExporter in EXTENSIONS.",
            {"cls": type(exporter).__name__},
        )
        return None

    async def _load_fingerprints(self, checkpoint: Checkpoint) -> None:
        """Read what the checkpoint has processed, while the first pending requests, which
        need no look at it, are downloaded: at ten million URLs the read takes seconds. What
        would need the look waits for it: start requests (process_start), a page's requests
        (track_output, so the page is not processed before they are recorded), and any other
        request scheduled meanwhile (held, and scheduled again once the read is done)."""
        cid = checkpoint.checkpoint_id

        def load() -> tuple[FingerprintSet, set[bytes]]:
            processed = FingerprintSet(self.store.processed_fingerprints(cid))
            return processed, set(self.store.pending_start_fingerprints(cid))

        started = time.perf_counter()
        try:
            processed, pending_start = await run_in_thread(load)
        except Exception as exc:
            self._not_loaded(exc)
            return
        logger.info(
            "Checkpoint %(id)s: %(count)d processed requests read in %(seconds).2f s, the crawl going on meanwhile",
            {"id": cid, "count": len(processed), "seconds": time.perf_counter() - started},
        )
        self._loaded(processed, pending_start)

    def _loaded(self, processed: FingerprintSet, pending_start: set[bytes]) -> None:
        self._processed_before, self._pending_start, self._loading = processed, pending_start, None
        self.stats.set_value("checkpoint/restored/processed", len(processed))
        self._release_waiters(True)
        held, self._held = self._held, []
        for request in held:
            self.crawler.engine.crawl(request)

    def _not_loaded(self, exc: Exception) -> None:
        self._loading, self._load_failed, self._held = None, True, []
        logger.error(
            "Reading the processed requests of the checkpoint from %(store)s failed (%(error)s); "
            "closing the crawl: a resume reads them again",
            {"store": self.store.describe(), "error": self._scrub(exc)},
        )
        self._release_waiters(False)
        engine = self.crawler.engine
        if engine is not None and engine.spider is not None:
            deferred_from_coro(engine.close_spider_async(reason=CHECKPOINT_ERROR))

    def _release_waiters(self, loaded: bool) -> None:
        waiters, self._load_waiters = self._load_waiters, []
        for waiter in waiters:
            waiter.callback(loaded)

    @property
    def loading(self) -> bool:
        """Whether the resumed checkpoint's processed requests are still being read."""
        return self._loading is not None

    async def processed_loaded(self) -> bool:
        """Wait until the processed requests are read; False if the read failed (the crawl
        is closing)."""
        if self._loading is None:
            return not self._load_failed
        waiter: Deferred[bool] = Deferred()
        self._load_waiters.append(waiter)
        return await maybe_deferred_to_future(waiter)

    def _restore_started(self, checkpoint: Checkpoint) -> None:
        cid = checkpoint.checkpoint_id
        self._batch = Batch(seq=checkpoint.seq + 1)
        data = checkpoint.pipeline_data
        pending = data.urls_discovered - data.urls_processed
        self.metrics.pending_changed(pending)
        # Only what was pending at the start: requests this run discovers are in the store
        # after them, and in the scheduler already.
        self._reseed_left = pending
        self._reseed_done = pending <= 0
        if not self._reseed_done:
            # A small first chunk: the first downloads need not wait for a thousand rebuilds.
            self._load_reseed_chunk(min(FIRST_RESEED_CHUNK, self.settings.reseed_chunk))
        if checkpoint.status is CheckpointStatus.FAILED:
            self._batch.status = CheckpointStatus.ACTIVE
        logger.info(
            "Resuming checkpoint %(id)s: %(pending)d requests pending, %(processed)d processed, "
            "%(items)d items so far",
            {"id": cid, "pending": pending, "processed": data.urls_processed,
             "items": data.extraction_results.items_scraped},
        )

    def skip_start_request(self, request: Request) -> bool:
        """On resume, a start request already recorded is not redone: processed ones are
        done, pending ones come back from the store. One with ``meta["checkpoint_redo"]`` (a
        login) is sent on every run."""
        if self._processed_before is None or request.meta.get("checkpoint_redo"):
            return False
        fp = self.fingerprint(request)
        if fp in self._processed_before or fp in self._pending_start:
            self.stats.inc_value("checkpoint/skipped/start")
            return True
        return False

    # Reseeding, lazily: one chunk at a time, when the scheduler runs dry.

    def _load_reseed_chunk(self, size: int | None = None) -> None:
        assert self.checkpoint is not None
        cid = self.checkpoint.checkpoint_id

        async def load() -> None:
            try:
                chunk, self._reseed_cursor = await run_in_thread(
                    self.store.pending_requests, cid, self._reseed_cursor, size or self.settings.reseed_chunk
                )
            except Exception as exc:  # retried at the next scheduler_empty
                self._store_error("reseed", exc)
                chunk = []
            else:
                chunk = chunk[: self._reseed_left]
                self._reseed_left -= len(chunk)
                if not chunk or self._reseed_left <= 0:
                    self._reseed_done = True
            self._reseed_chunk = chunk
            if self._reseed_wanted:
                self.scheduler_empty()

        deferred_from_coro(load())

    def scheduler_empty(self) -> None:
        if self._reseed_done and not self._reseed_chunk:
            return
        if self.spider_checkpoint is not None and self.spider_checkpoint.hold_restored:
            return
        if self._reseed_chunk is None:  # still loading: reseed as soon as it is there
            self._reseed_wanted = True
            return
        self._reseed_wanted = False
        chunk, self._reseed_chunk = self._reseed_chunk, None
        self._reseeding = True
        try:
            for data in chunk:
                request = self._rebuild(data)
                if request is not None:
                    self.crawler.engine.crawl(request)
        finally:
            self._reseeding = False
        self.stats.inc_value("checkpoint/restored/requests", len(chunk))
        if not self._reseed_done:
            self._load_reseed_chunk()

    def spider_idle(self) -> None:
        if self._loading is not None:
            raise DontCloseSpider  # what was held comes once the processed requests are read
        if self.leases is not None:
            # Released leases need their batch saved first; and while another worker holds
            # a lease, its request may yet come back to the queue.
            self._flush_soon()
            try:
                waiting = bool(self.leases.unpushed) or self.leases.outstanding() > 0
            except Exception:  # Redis is unreachable: the crawl is not over
                waiting = True
            if waiting:
                raise DontCloseSpider
            if self.worker is not None and self.leases.dupefilter is not None:
                # The queue is empty and no lease is out: before the crawl closes, the
                # checkpoint's pending requests that the queue lost go back to it.
                if self._requeue_state == "clear":
                    self._requeue_state = None  # looked again if the crawl goes on (a RedisSpider)
                else:
                    if self._requeue_state is None:
                        self._requeue_state = "looking"
                        deferred_from_coro(self._requeue_lost())
                    raise DontCloseSpider
        if not self._reseed_done or self._reseed_chunk:
            held = self.spider_checkpoint
            if held is not None and held.hold_restored:
                # Nothing else will release them: waiting would never end.
                logger.warning(
                    "Checkpoint %(id)s: the crawl has nothing left to do while the spider holds its "
                    "restored requests back (self.checkpoint.hold_restored); releasing them",
                    {"id": held.checkpoint_id},
                )
                held.hold_restored = False
            self.scheduler_empty()
            raise DontCloseSpider

    async def _requeue_lost(self) -> None:
        """Before a worker closes the crawl: requests the checkpoint holds pending that the
        shared queue lost go back to it (see CheckpointWorker.requeue_lost)."""
        assert self.worker is not None and self.checkpoint is not None
        try:
            queued, seen = await run_in_thread(self.worker.requeue_lost, self._rebuild)
        except Exception as exc:
            self._warn_once("requeue", exc, "This worker could not look for pending requests the queue lost")
            self._requeue_state = None  # looked for again at the next idle
            return
        if queued:
            self.stats.inc_value("checkpoint/restored/requests", queued)
            logger.warning(
                "Checkpoint %(id)s holds %(count)d pending requests that scrapy-redis's queue lost "
                "(Redis restarted empty?): queued again",
                {"id": self.checkpoint.checkpoint_id, "count": queued},
            )
        # Seen: another worker may have queued them just now; the same number seen twice in a
        # row, with nothing queued or leased in between, are stuck.
        stuck, self._requeue_seen = seen and seen == self._requeue_seen, seen
        if stuck:
            logger.warning(
                "Checkpoint %(id)s holds %(count)d pending requests that scrapy-redis's dupefilter has "
                "seen though none is queued or leased: they are not done in this crawl",
                {"id": self.checkpoint.checkpoint_id, "count": seen},
            )
        self._requeue_state = "clear" if not (queued or seen) or stuck else None

    def _rebuild(self, data: bytes) -> Request | None:
        try:
            return self.serializer.loads(data)
        except Exception as exc:
            self._warn_once("reseed", exc, "A pending request could not be rebuilt and is skipped")
            return None

    # Recording

    def request_scheduled(self, request: Request, spider: Spider) -> None:
        if self.leases is not None and LEASE_META in request.meta:
            # A retry or a redirect of a leased request: once this one is in the queue, the
            # lease of the one it replaces is released.
            self._batch.leases.append(request.meta.pop(LEASE_META))
        if request.meta.get("checkpoint_redo"):
            return  # sent by every run: never pending in the store
        if self._loading is not None and not self._reseeding and not request.dont_filter:
            # Not knowable yet whether it was processed (a redirect, a request of another
            # component): scheduled again once it is; nothing recorded depends on it.
            self._held.append(request)
            self.stats.inc_value("checkpoint/held_while_loading")
            raise IgnoreRequest
        fp = self.fingerprint(request)
        if self._processed_before is not None and fp in self._processed_before and not request.dont_filter:
            self.stats.inc_value("checkpoint/skipped/processed")
            if self._reseeding:
                self._supersede(request, fp)
            raise IgnoreRequest
        if self._reseeding or self._recorded_at(request, fp) is not None:
            return  # restored, or a retry: pending in the store already
        batch = self._batch
        meta = request.meta
        if self.store.by_position:
            meta[RECORD_META] = (self._record_tag, batch.next_position, fp)
        try:
            data = self.serializer.dumps(request)
        except Exception as exc:
            meta.pop(RECORD_META, None)  # never recorded: its processed mark says so
            self._warn_once(
                "unserializable", exc,
                "A request cannot be saved in the checkpoint (it will not survive a kill)",
            )
            return
        batch.discovered.append(DiscoveredRequest(fp, request.url, data, bool(meta.get("is_start_request"))))
        self._last_discovered = request
        self._added()

    def _recorded_at(self, request: Request, fp: bytes) -> int | None:
        """The position of *request*'s record in this checkpoint, None if it has none."""
        mark = request.meta.get(RECORD_META)
        if mark is None or mark[2] != fp or mark[0] != self._record_tag:
            return None
        return mark[1]

    def _supersede(self, request: Request, fp: bytes) -> None:
        """A restored request another record stands for (its twin, recorded in this run, or
        its processed mark): its own record goes, from a store that keeps twins apart."""
        if not self.store.by_position:
            return
        position = self._recorded_at(request, fp)
        self._batch.superseded.append((-1 if position is None else position, fp))
        self._added()

    def request_dropped(self, request: Request) -> None:
        # The dupefilter refused it: its twin is recorded already.
        if self._reseeding:
            self._supersede(request, self.fingerprint(request))
            return
        discovered = self._batch.discovered
        if request is self._last_discovered and discovered:
            discovered.pop()
            self._events -= 1
            request.meta.pop(RECORD_META, None)  # its position goes to the next one
        self._last_discovered = None

    def work_started(self, key: Any, request: Request) -> None:
        """A callback (key: its response) or errback (key: its failure) started."""
        work = self._work.get(key)
        if work is None:
            work = self._work[key] = _Work(request)
        work.running += 1

    def work_failed(self, key: Any, request: Request) -> None:
        """An exception ended a callback; if it never started, nothing else will end it."""
        if key not in self._work:
            self.processed(request)

    def output_item(self, key: Any, item: Any) -> None:
        work = self._work[key]
        work.items += 1
        remember(item, work.request, work.yielded, self.fingerprint)
        work.item_ids.append(id(item))
        work.yielded += 1
        yielded = self._yielded
        if yielded is None:
            return
        entry = yielded.get(id(item))
        if entry is None:
            if len(yielded) >= self._sweep_at:
                # Entries of pages done already: objects an earlier pipeline replaced (the
                # pipeline and the signals then name the new object, not this one).
                live = self._work
                for stale in [i for i, (_, k, _) in yielded.items() if k is not None and k() not in live]:
                    del yielded[stale]
                self._sweep_at = max(1024, 2 * len(yielded))
            yielded[id(item)] = [item, weakref.ref(key), 1]
            return
        page = entry[1]
        if page is not None and page() is key:
            entry[2] += 1
        elif page is not None and page() not in self._work:
            entry[1], entry[2] = weakref.ref(key), 1  # left by a page done already
        else:
            entry[1] = None  # in flight from two pages: the item_scraped signal tells which
            entry[2] += 1

    def work_abandoned(self, key: Any) -> None:
        """The crawl closes before a page's output could be recorded: the page stays pending."""
        self._work[key].abandoned = True
        self.work_finished(key)

    def work_finished(self, key: Any) -> None:
        work = self._work[key]
        work.running -= 1
        work.ran = True
        self._maybe_processed(key, work)

    #: While CheckpointItemPipeline (last in ITEM_PIPELINES) says which items are scraped, in
    #: place of the item_scraped signal: id(item) -> [item, a weak reference to its page's
    #: key (None: in flight from two pages), passes to come], for the items callbacks
    #: yielded. Holding the item keeps its id its own; the entry of an object a pipeline
    #: replaced stays until a sweep, and must not hold its response. None: the signal says it.
    _yielded: dict[int, list[Any]] | None = None
    #: id(item) -> passes, for the items the pipeline could not match to a page: the
    #: item_scraped signal, heard from the first one on, ends their work.
    _unmatched: dict[int, int] | None = None
    #: Size of _yielded at which output_item drops the entries of pages done already.
    _sweep_at = 1024

    def use_item_pipeline(self) -> None:
        """Called by CheckpointItemPipeline, last of the item pipelines: it says which items
        are scraped (item_passed), so the extension leaves the item_scraped signal, whose
        every receiver Scrapy runs in an asyncio Task of its own."""
        self._yielded = {}
        self.crawler.signals.disconnect(self.item_scraped, signals.item_scraped)

    def item_passed(self, item: Any) -> None:
        """*item* passed every item pipeline (CheckpointItemPipeline is the last): it is scraped."""
        yielded = self._yielded
        assert yielded is not None
        entry = yielded.get(id(item))
        key = None
        if entry is not None:
            key = None if entry[1] is None else entry[1]()
            entry[2] -= 1
            if not entry[2]:
                del yielded[id(item)]
        work = None if key is None else self._work.get(key)
        if work is None:
            # Not the object a callback yielded (an earlier pipeline returned another one, or
            # start() yielded it), or one that two pages yielded: the response the
            # item_scraped signal carries tells its page.
            unmatched = self._unmatched
            if unmatched is None:
                logger.debug("An item reached CheckpointItemPipeline that no page in progress yielded "
                             "(from start(), or a new object from a pipeline): listening to item_scraped")
                unmatched = self._unmatched = {}
                self.crawler.signals.connect(self.item_scraped, signals.item_scraped)
            unmatched[id(item)] = unmatched.get(id(item), 0) + 1
            return
        work.scraped.append(item)
        work.items -= 1
        self._maybe_processed(key, work)
        self._added()

    def item_scraped(self, item: Any, response: Response | Failure | None) -> None:
        if self._yielded is not None:
            # The pipeline ended the work of the others.
            unmatched = self._unmatched
            left = unmatched.get(id(item)) if unmatched else None
            if left is None:
                return
            if left > 1:
                unmatched[id(item)] = left - 1
            else:
                del unmatched[id(item)]
        work = self._work.get(response)
        if work is None:  # no page to wait for (an item yielded by start())
            self._record_items((item,))
        else:
            # A page's items are counted, stored and written to the feeds once the page is
            # processed, in the batch of its mark: a page redone after a kill adds them once.
            work.scraped.append(item)
        self.item_done(response)

    def _record_items(self, items: Iterable[Any]) -> None:
        batch = self._batch
        counts = batch.item_counts
        for item in items:
            item_type = type(item).__name__
            counts[item_type] = counts.get(item_type, 0) + 1
            if self.settings.store_items:
                fields = ItemAdapter(item).asdict()  # a copy: the feeds still get every field
                for name in self.settings.item_exclude_fields:
                    fields.pop(name, None)
                batch.items.append((item_type, fields))
        if self._feeds is not None:
            self._feeds.export(items)

    def item_done(self, response: Response | Failure | None, item: Any = None) -> None:
        """An item left the item pipelines (item_dropped, or from item_scraped and item_failed)."""
        yielded = self._yielded
        if yielded and item is not None:
            entry = yielded.get(id(item))
            if entry is not None and (entry[1] is None or entry[1]() is response):
                entry[2] -= 1
                if not entry[2]:
                    del yielded[id(item)]
        work = self._work.get(response)
        if work is not None:
            work.items -= 1
            self._maybe_processed(response, work)
        self._added()

    def item_failed(self, item: Any, response: Response | Failure | None, failure: Failure) -> None:
        """An item pipeline raised (a database down, a bug): the item reached no output, so
        its page is not marked processed, and a resume does it again."""
        work = self._work.get(response)
        if work is not None:
            work.failed = True
        self.item_done(response, item)

    def _maybe_processed(self, key: Any, work: _Work) -> None:
        if work.running or work.items or not work.ran:
            return
        del self._work[key]
        forget(work.item_ids)
        if work.abandoned:
            return
        if work.failed:
            self._unfinished += 1
            self.stats.inc_value("checkpoint/pending/item_error")
            return
        self.processed(work.request, work.scraped)

    def processed(self, request: Request, scraped: Sequence[Any] = ()) -> None:
        """Record *request* as done with the items it *scraped*: everything else it produced
        is recorded already. A leased request waits for the next flush, which records it only
        if its lease is still this worker's."""
        if self.leases is not None and LEASE_META in request.meta:
            self._unconfirmed.append((request, scraped))
            self._added()
            return
        self._record_processed(request, scraped)

    def _record_processed(self, request: Request, scraped: Sequence[Any]) -> None:
        if scraped:
            self._record_items(scraped)
        batch = self._batch
        fp = self.fingerprint(request)
        batch.processed.append(fp)
        position = self._recorded_at(request, fp)
        if position is not None:
            batch.positions[fp] = position
        if self.leases is not None and LEASE_META in request.meta:
            batch.leases.append(request.meta[LEASE_META])
        step = request.meta.get("checkpoint_step") or self._steps.get(
            getattr(request.callback, "__name__", None) or "parse", 0
        )
        if step > batch.pipeline_step:
            batch.pipeline_step = step
        page = self._page(request)
        if page is not None:
            listing, number = page
            batch.pagination[listing] = number
            batch.current_page = number
            if self.spider_checkpoint is not None:
                self.spider_checkpoint.pagination[listing] = number
        self._added()

    def _page(self, request: Request) -> tuple[str, int] | None:
        page = request.meta.get("checkpoint_page")
        url = request.url
        if page is None and ("?" not in url or not any(needle in url for needle in self._page_needles)):
            return None
        params = self.settings.page_params
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        rest = [(k, v) for k, v in query if k not in params]
        if page is None:
            page = next((v for k, v in query if k in params), None)
        try:
            number = int(page)
        except (TypeError, ValueError):
            return None
        return urlunsplit(parts._replace(query=urlencode(rest), fragment="")), number

    # Flushing

    def _added(self) -> None:
        self._events += 1
        if self._events >= self.settings.batch_size and self._flushing is None and self.checkpoint:
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flushing is None:
            self._flushing = deferred_from_coro(self._flush())

    def _take_batch(self, status: CheckpointStatus | None = None) -> None:
        batch = self._batch
        if status is not None:
            batch.status = status
        if self.worker is not None:
            batch.writer = self.worker.name
            batch.took_over, self._took_over = self._took_over, []
        batch.state = self._state_snapshot()
        if self._feeds is not None:
            batch.outputs = self._feeds.snapshot()
        # An idle crawl still sends an empty batch now and then: it refreshes the TTLs.
        idle = time.monotonic() - self._last_taken < self.settings.ttl / 4
        if not (len(batch) or batch.leases or batch.status or batch.state is not None or self.runs.unsaved) and idle:
            return
        self.runs.taken(batch)
        self._last_taken = time.monotonic()
        self.metrics.pending_changed(len(batch.discovered) - len(batch.processed))
        self._unflushed.append(batch)
        self._batch = Batch(seq=batch.seq + 1)
        # Leased requests waiting for a flush to confirm them are events not taken yet.
        self._events = len(self._unconfirmed)
        self._limit_buffer()

    def _limit_buffer(self) -> None:
        """Keep at most CHECKPOINT_BUFFER_LIMIT events waiting for a store that is down,
        dropping the oldest batches, and say exactly what each drop costs."""
        buffered = sum(len(b) for b in self._unflushed)
        while buffered > self.settings.buffer_limit and len(self._unflushed) > 1:
            batch = self._unflushed.popleft()
            buffered -= len(batch)
            items = sum(batch.item_counts.values())
            for key, count in (("requests", len(batch.discovered)), ("processed", len(batch.processed)),
                               ("items", items)):
                self.stats.inc_value(f"checkpoint/dropped/{key}", count)
            logger.error(
                "Checkpoint %(id)s: the store has been unreachable for %(buffered)d events "
                "(CHECKPOINT_BUFFER_LIMIT %(limit)d); dropped batch %(seq)d: %(discovered)d "
                "discovered requests, not restorable if the crawl dies before they are done; "
                "%(processed)d processed marks, redone on resume; %(items)d item counts. "
                "Dropped requests:\n%(urls)s",
                {"id": self.checkpoint.checkpoint_id if self.checkpoint else "?",
                 "buffered": buffered + len(batch), "limit": self.settings.buffer_limit,
                 "seq": batch.seq, "discovered": len(batch.discovered),
                 "processed": len(batch.processed), "items": items,
                 "urls": "\n".join(r.url for r in batch.discovered) or "(none)"},
            )

    def _state_snapshot(self) -> dict[str, Any] | None:
        sc = self.spider_checkpoint
        if sc is None or sc.state == self._saved_state:
            return None
        try:
            snapshot = json.loads(json.dumps(sc.state))
        except (TypeError, ValueError) as exc:
            self._warn_once("state", exc, "spider.checkpoint.state must hold JSON values; it is not saved")
            return None
        self._saved_state = snapshot
        return snapshot

    async def _flush(self, ttl: float | None = None) -> bool:
        """Apply every unflushed batch in order; stop at the first failure (kept for the
        next try: a later batch never lands before an earlier one)."""
        assert self.checkpoint is not None
        cid = self.checkpoint.checkpoint_id
        try:
            while True:
                await self._confirm_leased()
                self._take_batch()
                if not self._unflushed:
                    return True
                if self._uncreated:
                    try:
                        await run_in_thread(self._create, self.checkpoint)
                    except Exception as exc:
                        self._store_error("create", exc)
                        return False
                    self._uncreated = False
                while self._unflushed:
                    batch = self._unflushed[0]
                    try:
                        seconds, storage_ratio, lost = await run_in_thread(
                            self._apply, cid, batch, ttl or self.settings.ttl
                        )
                    except KeyError:
                        self._lost_by_store()
                        return False
                    except Exception as exc:
                        self._store_error("flush", exc)
                        return False
                    self._unflushed.popleft()
                    if lost:
                        self._count_leases("lost", len(lost))
                        self._count_leases("saved_late", len(lost))
                    self.metrics.flushed(seconds, storage_ratio)
                    self.runs.flushed(seconds)
                    self.stats.inc_value("checkpoint/flushes")
                    self.stats.inc_value("checkpoint/flushed/requests", len(batch.discovered))
                    self.stats.inc_value("checkpoint/flushed/processed", len(batch.processed))
                if self._events < self.settings.batch_size:
                    return True
        finally:
            self._flushing = None
            self.metrics.buffered(sum(len(b) for b in self._unflushed))

    async def _confirm_leased(self) -> None:
        """Fencing: record the leased requests done since the last flush whose leases are
        still this worker's, their deadlines pushed back so that they stay so until the apply
        releases them. The others (this worker was stopped or cut off past its lease timeout)
        are another worker's now: their processed marks and items are dropped, not recorded
        twice."""
        pages, self._unconfirmed = self._unconfirmed, []
        if not pages:
            return
        try:
            lost = set(await run_in_thread(self.leases.confirm, [r.meta[LEASE_META] for r, _ in pages]))
        except Exception as exc:
            self._unconfirmed[:0] = pages  # recorded by a later flush, or done by another worker
            self._warn_once("lease_error", exc, "Leases of the scrapy-redis queue were not renewed")
            return
        self._events -= len(pages)  # counted again as they are recorded
        for request, scraped in pages:
            if request.meta[LEASE_META] not in lost:
                self._record_processed(request, scraped)
        if lost:
            self._count_leases("fenced", len(lost))

    def _apply(self, cid: str, batch: Batch, ttl: float) -> tuple[float, float | None, list[str]]:
        """Apply *batch*, then release its leases; return how long the store took, its storage
        used ratio (measured here, in the flush thread: a disk or INFO query never blocks the
        reactor), and the leases lost before their release."""
        if self.leases is not None:
            # What the batch's pages yielded is queued before their leases are released.
            self.leases.push_pending()
        # The feeds reach the disk before the lengths that describe them reach the store.
        CheckpointFeedExporter.sync(batch.outputs)
        started = time.perf_counter()
        self.store.apply(cid, batch, ttl)
        seconds = time.perf_counter() - started
        # After the apply: a worker killed between the two leaves leases that expire, and
        # their requests are done again (their processed marks are saved already).
        lost = self.leases.ack(batch.leases) if batch.leases else []
        return seconds, self.metrics.measure_storage(self.store), lost

    def _lost_by_store(self) -> None:
        """The store no longer has the record (a Redis restarted without persistence):
        write it again, and say that what the store held before is gone."""
        assert self.checkpoint is not None
        self.stats.inc_value("checkpoint/store_lost_checkpoint")
        logger.error(
            "Checkpoint %(id)s is gone from %(store)s (restarted without persistence?): writing it "
            "again from batch %(seq)d on; progress saved before that is lost from the store",
            {"id": self.checkpoint.checkpoint_id, "store": self.store.describe(),
             "seq": self._unflushed[0].seq},
        )
        self._uncreated = True

    def _create(self, checkpoint: Checkpoint) -> None:
        self.store.open()
        self.store.create(checkpoint)
        logger.info("Checkpoint %(id)s written to %(store)s: the store is back",
                    {"id": checkpoint.checkpoint_id, "store": self.store.describe()})

    async def spider_closed(self, spider: Spider, reason: str) -> None:
        for loop in (self._loop, self._progress_loop):
            if loop is not None and loop.running:
                loop.stop()
        if self.leases is not None:
            self.leases.stop_heartbeat()
        if self.worker is not None:
            self.worker.stop()
        if reason == CHECKPOINT_ERROR:
            self._exit_non_zero()
        if self.checkpoint is None:
            await run_in_thread(self.store.close)
            await self.metrics.close()
            return
        if self._loading is not None:  # the store is still being read: it must not close under it
            await maybe_deferred_to_future(self._loading)
        while self._flushing is not None:
            await maybe_deferred_to_future(self._flushing)
        await self._confirm_leased()
        if reason == "finished" and self._unfinished:
            logger.error(
                "Checkpoint %(id)s: %(n)d requests stay pending because an item pipeline raised on "
                "one of their items (see the errors above); the checkpoint is saved as failed, and "
                "-s CHECKPOINT_RESUME=1 does them again",
                {"id": self.checkpoint.checkpoint_id, "n": self._unfinished},
            )
            status, ttl = CheckpointStatus.FAILED, self.settings.ttl
        elif reason == "finished":
            status, ttl = CheckpointStatus.COMPLETED, self.settings.archive_ttl
        elif reason in STOPPED_REASONS:
            status, ttl = CheckpointStatus.ACTIVE, self.settings.ttl
        else:
            status, ttl = CheckpointStatus.FAILED, self.settings.ttl
        if self._feeds is not None:
            # The last processed marks with the feed lengths they match; then the feeds close
            # (a "]" or "</items>" written now is cut off again by a resume).
            self._take_batch()
            if not await self._feeds.close(completed=status is CheckpointStatus.COMPLETED):
                status, ttl = CheckpointStatus.FAILED, self.settings.ttl
        self.runs.closing(reason, status)
        self._take_batch(status)
        saved = await self._flush(ttl=ttl)
        for _ in range(CLOSE_RETRIES):
            if saved:
                break
            await sleep(self.settings.store_timeout)
            saved = await self._flush(ttl=ttl)
        if saved and status is CheckpointStatus.COMPLETED and self._feeds is not None:
            self._feeds.discard_held()
        if saved:
            logger.info(
                "Checkpoint %(id)s saved as %(status)s (%(reason)s)",
                {"id": self.checkpoint.checkpoint_id, "status": status.value, "reason": reason},
            )
        else:
            lost = sum(len(b) for b in self._unflushed)
            logger.error(
                "Checkpoint %(id)s: %(lost)d events could not be saved to %(store)s; a resume "
                "will redo the requests they describe",
                {"id": self.checkpoint.checkpoint_id, "lost": lost, "store": self.store.describe()},
            )
        if self.worker is not None:
            try:
                await run_in_thread(self.worker.beat, self.settings.lease_timeout, ttl, reason)
            except Exception as exc:
                self._warn_once("worker_error", exc, "This worker could not tell the checkpoint store it closed")
        await run_in_thread(self.store.close)
        await self.metrics.close()

    # Errors

    def _store_error(self, action: str, exc: Exception) -> None:
        self.metrics.store_state(False)
        self.runs.store_failed()
        self._warn_once(
            "store_error", exc, f"Checkpoint store {self.store.describe()} failed to {action}; will retry"
        )

    def _warn_once(self, kind: str, exc: Exception, message: str) -> None:
        """Count every occurrence in ``checkpoint/<kind>/<exception>``; log the first."""
        key = f"checkpoint/{kind}/{type(exc).__name__}"
        self.stats.inc_value(key)
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%(message)s: %(error)s (logged once, counted in %(key)s)",
                           {"message": message, "error": self._scrub(exc), "key": key})

    def _scrub(self, exc: Exception) -> str:
        """The exception, named, with any credential of the store URLs hidden."""
        return scrub(f"{type(exc).__name__}: {exc}", self._secrets)


def checkpoint_identity(spider: Spider | type[Spider]) -> tuple[str, str, str]:
    """The spider, site and job type a spider's checkpoints are found by (a class gives
    what its instances will, unless their arguments change the attributes)."""
    domains = getattr(spider, "allowed_domains", None) or []
    site = getattr(spider, "checkpoint_site_domain", None) or (domains[0] if domains else spider.name)
    job = getattr(spider, "checkpoint_job_type", None) or "default"
    return str(spider.name), str(site), str(job)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's
    return True


def give_spider_a_checkpoint(spider: Spider) -> None:
    """An in-memory checkpoint for a spider that runs without checkpoints."""
    if getattr(spider, "checkpoint", None) is None:
        spider.checkpoint = SpiderCheckpoint(None, False)  # type: ignore[attr-defined]


async def track_output(
    extension: CheckpointExtension, key: Any, request: Request, output: AsyncIterator[Any] | Iterable[Any]
) -> AsyncIterator[Any]:
    """Pass a callback's or errback's output through, counting its items, and tell the
    extension when it has all been consumed."""
    extension.work_started(key, request)
    try:
        if isinstance(output, AsyncIterator):
            async for element in output:
                if not isinstance(element, Request):
                    extension.output_item(key, element)
                elif extension.loading and not await extension.processed_loaded():
                    extension.work_abandoned(key)
                    return
                yield element
        else:
            for element in output:
                if not isinstance(element, Request):
                    extension.output_item(key, element)
                elif extension.loading and not await extension.processed_loaded():
                    extension.work_abandoned(key)
                    return
                yield element
    except Exception:
        extension.work_finished(key)
        raise
    extension.work_finished(key)
