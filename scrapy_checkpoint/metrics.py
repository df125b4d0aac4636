"""Metrics of a checkpointed crawl: in-process alert checks, and Prometheus's /metrics."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy.utils.asyncio import run_in_thread

from .models import QUERY_JOB_PREFIX

if TYPE_CHECKING:
    from scrapy.statscollectors import StatsCollector

    from .settings import CheckpointSettings
    from .stores import CheckpointStore

logger = logging.getLogger(__name__)

#: The design's alert thresholds, also in prometheus/alerts.yml: refused recoveries over all
#: recoveries, one store apply (seconds), and used over available storage.
RECOVERY_FAILURE_RATIO = 0.05
SAVE_LATENCY_SECONDS = 0.2
STORAGE_USED_RATIO = 0.8

#: Seconds between two measures of the storage used: a disk or Redis INFO query, off the reactor.
STORAGE_CHECK_INTERVAL = 10.0

#: Buckets of scrapy_checkpoint_flush_seconds: 0.2 is one, so that the latency alert is exact.
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))

INSTALL_HINT = "pip install 'scrapy-checkpoint[prometheus]'"


class CheckpointMetrics:
    """What the extension reports, checked against the alert thresholds.

    The extension calls these hooks per flush or per crawl-level event, never per request.
    This class only runs the alert checks; :class:`PrometheusCheckpointMetrics` also keeps
    the Prometheus metrics.
    """

    def __init__(self, stats: StatsCollector, storage_limit: int | None = None) -> None:
        self.stats = stats
        self.storage_limit = storage_limit
        self._alerted: set[str] = set()
        self._recoveries = 0
        self._refused = 0
        self._storage_checked = float("-inf")

    @classmethod
    def from_settings(cls, settings: CheckpointSettings, stats: StatsCollector) -> CheckpointMetrics:
        """Prometheus metrics when CHECKPOINT_PROMETHEUS_PORT is set, else the alerts only."""
        if settings.prometheus_port is None:
            return cls(stats, settings.storage_limit)
        return PrometheusCheckpointMetrics(
            stats, settings.storage_limit, settings.prometheus_port, settings.prometheus_address,
            settings.prometheus_pushgateway,
        )

    # Hooks

    def opened(self, spider: str, site: str, job_type: str, store: str) -> None:
        """The spider opened; its labels are known."""

    def recovery(self, resumed: bool) -> None:
        """A resume was asked for: it resumed a checkpoint, or was refused."""
        self._recoveries += 1
        self._refused += not resumed
        # One crawl per process makes this 0 or 1: a refused recovery alerts at once.
        # The rate across crawls is the Prometheus rule's job.
        ratio = self._refused / self._recoveries
        if ratio > RECOVERY_FAILURE_RATIO:
            self._alert("recovery_failure_rate",
                        "%(refused)d of %(total)d recoveries refused (over %(limit)g %%)",
                        {"refused": self._refused, "total": self._recoveries,
                         "limit": RECOVERY_FAILURE_RATIO * 100})

    def checkpoint_created(self) -> None:
        """A new checkpoint was started."""

    def pending_changed(self, delta: int) -> None:
        """Requests discovered minus processed changed by *delta*."""

    def buffered(self, events: int) -> None:
        """*events* wait for the store."""

    def store_state(self, up: bool) -> None:
        """The store answered (True) or failed (False)."""

    def leases(self, event: str, count: int) -> None:
        """scrapy-redis leases: *count* were granted, reclaimed (expired ones put back in the
        queue), lost (this worker's own, expired before it renewed them), fenced (requests done
        under a lost lease, not recorded) or saved_late (recorded while it was lost). Any thread."""

    def flushed(self, seconds: float, storage_ratio: float | None) -> None:
        """A batch was applied in *seconds*; *storage_ratio* from :meth:`measure_storage`."""
        if seconds > SAVE_LATENCY_SECONDS:
            self._alert("save_latency", "a flush took %(seconds).3f s (over %(limit)g s)",
                        {"seconds": seconds, "limit": SAVE_LATENCY_SECONDS})
        if storage_ratio is not None and storage_ratio > STORAGE_USED_RATIO:
            self._alert("storage_used", "the store uses %(ratio).0f %% of its storage (over %(limit)g %%)",
                        {"ratio": storage_ratio * 100, "limit": STORAGE_USED_RATIO * 100})

    def measure_storage(self, store: CheckpointStore) -> float | None:
        """Used over available storage, at most every STORAGE_CHECK_INTERVAL seconds (None
        between, or when unknown). Blocking: call it from the flush thread."""
        now = time.monotonic()
        if now - self._storage_checked < STORAGE_CHECK_INTERVAL:
            return None
        self._storage_checked = now
        try:
            return storage_used_ratio(store, self.storage_limit)
        except Exception as exc:  # metrics never break a flush
            logger.debug("Storage of %s not measured: %r", store.describe(), exc)
            return None

    async def close(self) -> None:
        """The crawl ended."""

    def _alert(self, name: str, message: str, args: dict[str, Any]) -> None:
        """Count every occurrence in ``checkpoint/alerts/<name>``; log the first."""
        key = f"checkpoint/alerts/{name}"
        self.stats.inc_value(key)
        if name not in self._alerted:
            self._alerted.add(name)
            logger.warning("Checkpoint alert %(name)s: " + message + " (logged once, counted in %(key)s)",
                           {"name": name, "key": key, **args})


class PrometheusCheckpointMetrics(CheckpointMetrics):
    """The alert checks, and Prometheus metrics in a registry of this crawl's own, served on
    ``http://ADDRESS:PORT/metrics`` by a thread of prometheus_client."""

    def __init__(
        self,
        stats: StatsCollector,
        storage_limit: int | None,
        port: int,
        address: str = "127.0.0.1",
        pushgateway: str | None = None,
    ) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise ImportError(
                f"CHECKPOINT_PROMETHEUS_PORT ({port!r}) needs prometheus-client: {INSTALL_HINT}"
            ) from exc
        super().__init__(stats, storage_limit)
        self.port = port
        self.address = address
        self.pushgateway = pushgateway
        self._server: Any = None
        self._labels: dict[str, str] = {}
        self._store = ""
        # Not the global registry: several crawls (or tests) in one process do not clash.
        self.registry = registry = prom.CollectorRegistry()
        job = ("spider", "site", "job_type")
        store = (*job, "store")
        self.flush_seconds = prom.Histogram(
            "scrapy_checkpoint_flush_seconds", "Time to apply one batch to the checkpoint store.",
            store, buckets=FLUSH_BUCKETS, registry=registry,
        )
        # prometheus_client adds _total to counter names.
        self.flushes = prom.Counter(
            "scrapy_checkpoint_flushes", "Batches applied to the checkpoint store.", store, registry=registry,
        )
        self.recoveries = prom.Counter(
            "scrapy_checkpoint_recoveries", "Resumes asked for, by outcome: resumed or refused.",
            (*job, "outcome"), registry=registry,
        )
        self.created = prom.Counter(
            "scrapy_checkpoint_checkpoints_created", "New checkpoints started.", job, registry=registry,
        )
        self.pending = prom.Gauge(
            "scrapy_checkpoint_pending_requests", "Requests discovered and not processed yet.", job,
            registry=registry,
        )
        self.buffered_events = prom.Gauge(
            "scrapy_checkpoint_buffered_events", "Events waiting for a checkpoint store that is down.",
            job, registry=registry,
        )
        self.store_up = prom.Gauge(
            "scrapy_checkpoint_store_up", "1 when the checkpoint store answered last, else 0.", store,
            registry=registry,
        )
        self.storage_used = prom.Gauge(
            "scrapy_checkpoint_storage_used_ratio",
            "Storage the checkpoint store uses, over what it may use (CHECKPOINT_STORAGE_LIMIT, "
            "the disk, or Redis maxmemory).", store, registry=registry,
        )
        self.lease_events = prom.Counter(
            "scrapy_checkpoint_leases",
            "Leases of a shared scrapy-redis queue, by event: granted, reclaimed (expired ones put "
            "back in the queue), lost (this worker's own, expired before it renewed them), fenced "
            "(requests done under a lost lease, not recorded) or saved_late (recorded as the "
            "lease was lost).",
            (*job, "event"), registry=registry,
        )
        self._push = prom.push_to_gateway
        self._serve = prom.start_http_server

    def opened(self, spider: str, site: str, job_type: str, store: str) -> None:
        # The crawls of `scrapy query` have a job type per query: one label value for all.
        job_type = "query" if job_type.startswith(QUERY_JOB_PREFIX) else job_type
        self._labels = {"spider": spider, "site": site, "job_type": job_type}
        self._store = store
        job, with_store = self._labels, self._store_labels()
        # Every series from the start, at 0: rate() and absent() work from the first scrape.
        self.flush_seconds.labels(**with_store)
        self.flushes.labels(**with_store)
        for outcome in ("resumed", "refused"):
            self.recoveries.labels(**job, outcome=outcome)
        self.created.labels(**job)
        self.pending.labels(**job)
        self.buffered_events.labels(**job)
        self.store_up.labels(**with_store)
        try:
            self._server = self._serve(self.port, self.address, registry=self.registry)
        except OSError as exc:  # a port taken: the crawl and its checkpoints go on
            self.stats.inc_value(f"checkpoint/metrics_error/{type(exc).__name__}")
            logger.warning("Prometheus metrics not served on %(address)s:%(port)d: %(error)s",
                           {"address": self.address, "port": self.port, "error": exc})
            return
        logger.info("Prometheus metrics on http://%(address)s:%(port)d/metrics",
                    {"address": self.address, "port": self.port})

    def _store_labels(self) -> dict[str, str]:
        return {**self._labels, "store": self._store}

    def recovery(self, resumed: bool) -> None:
        if self._labels:
            self.recoveries.labels(**self._labels, outcome="resumed" if resumed else "refused").inc()
        super().recovery(resumed)

    def checkpoint_created(self) -> None:
        if self._labels:
            self.created.labels(**self._labels).inc()

    def pending_changed(self, delta: int) -> None:
        if self._labels and delta:
            self.pending.labels(**self._labels).inc(delta)

    def buffered(self, events: int) -> None:
        if self._labels:
            self.buffered_events.labels(**self._labels).set(events)

    def leases(self, event: str, count: int) -> None:
        if self._labels:
            self.lease_events.labels(**self._labels, event=event).inc(count)

    def store_state(self, up: bool) -> None:
        if self._labels:
            self.store_up.labels(**self._store_labels()).set(1 if up else 0)

    def flushed(self, seconds: float, storage_ratio: float | None) -> None:
        if self._labels:
            labels = self._store_labels()
            self.flush_seconds.labels(**labels).observe(seconds)
            self.flushes.labels(**labels).inc()
            self.store_up.labels(**labels).set(1)
            if storage_ratio is not None:
                self.storage_used.labels(**labels).set(storage_ratio)
        super().flushed(seconds, storage_ratio)

    async def close(self) -> None:
        # Both block (a push is an HTTP request; shutdown waits for the serving loop).
        await run_in_thread(self._stop)

    def _stop(self) -> None:
        if self.pushgateway and self._labels:
            try:
                self._push(self.pushgateway, job="scrapy_checkpoint", registry=self.registry,
                           grouping_key=self._labels, timeout=10)
            except Exception as exc:
                logger.warning("Metrics not pushed to CHECKPOINT_PROMETHEUS_PUSHGATEWAY: %(error)r",
                               {"error": exc})
        server, self._server = self._server, None
        if server is not None:
            httpd, thread = server
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)


def push_query_answer(pushgateway: str, seconds: float, outcome: str, results: int,
                      sites: dict[str, int]) -> None:
    """Push what one `scrapy query` took to CHECKPOINT_PROMETHEUS_PUSHGATEWAY: its response
    time (a key metric of query support), the results it printed and its sites by how they
    answered (crawled, reused, failed). Gauges of the last query, as for any batch job.
    Blocking; a failure is a warning, never the command's."""
    try:
        import prometheus_client as prom
    except ImportError:
        logger.warning("CHECKPOINT_PROMETHEUS_PUSHGATEWAY is set, but metrics need prometheus-client: %s",
                       INSTALL_HINT)
        return
    registry = prom.CollectorRegistry()
    prom.Gauge("scrapy_checkpoint_query_response_seconds",
               "Time from the start of the last `scrapy query` to its answer, by outcome.",
               ("outcome",), registry=registry).labels(outcome=outcome).set(seconds)
    prom.Gauge("scrapy_checkpoint_query_results", "Results the last query printed.",
               registry=registry).set(results)
    answered = prom.Gauge("scrapy_checkpoint_query_sites",
                          "Sites of the last query, by how they answered: crawled, reused (fresh stored "
                          "items) or failed.", ("answer",), registry=registry)
    for answer in ("crawled", "reused", "failed"):
        answered.labels(answer=answer).set(sites.get(answer, 0))
    prom.Gauge("scrapy_checkpoint_query_last_answered_timestamp_seconds",
               "When the last query was answered (Unix time).", registry=registry).set_to_current_time()
    try:
        prom.push_to_gateway(pushgateway, job="scrapy_checkpoint_query", registry=registry, timeout=10)
    except Exception as exc:
        logger.warning("Query metrics not pushed to CHECKPOINT_PROMETHEUS_PUSHGATEWAY: %(error)r", {"error": exc})


def storage_used_ratio(store: CheckpointStore, limit: int | None = None) -> float | None:
    """Used over available bytes of *store*: over *limit* if given, else over the disk
    (SQLite) or maxmemory (Redis); None when unknown. Blocking."""
    name = getattr(store, "name", "")
    if name == "hybrid":
        sides = (store.redis, store.mongodb)  # type: ignore[attr-defined]
        ratios = [storage_used_ratio(side.store, limit) for side in sides]
        known = [r for r in ratios if r is not None]
        return max(known) if known else None
    if name == "sqlite":
        path = Path(store.path)  # type: ignore[attr-defined]
        used = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
        if limit:
            return used / limit
        free = shutil.disk_usage(path.parent).free
        return used / (used + free) if used + free else None
    if name == "redis":
        client = getattr(store, "_client", None)
        if client is None:
            return None
        info = client.info("memory")
        used, maxmemory = int(info["used_memory"]), int(info.get("maxmemory", 0))
        if limit:
            return used / limit
        return used / maxmemory if maxmemory > 0 else None
    if name == "mongodb" and limit:
        db = getattr(store, "_db", None)
        if db is None:
            return None
        stats = db.command("dbStats")
        return (int(stats.get("storageSize", 0)) + int(stats.get("indexSize", 0))) / limit
    return None
