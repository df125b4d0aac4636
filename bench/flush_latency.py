"""Latency of one flush (``store.apply``) per store, batch size and checkpoint size.

For every prefill level, each store gets a new checkpoint filled to that many URL records
(through ``apply`` in large batches; for MongoDB, and the MongoDB side of the hybrid store,
by bulk inserts into the store's own collections unless ``--prefill-mode apply``), then the
batch sizes are measured one after the other, the stores interleaved (a new random order
each repeat). Only the ``apply`` call is timed, from the main thread; its batch is built
beforehand.

A batch is a realistic mix for a product crawl: per product page, one discovered request
(a real ``scrapy.Request(...).to_dict()`` pickled as ``_serialization.py`` does, about 300
bytes), one processed fingerprint (of the page discovered ``--lag`` pages earlier) and one
item count. Fingerprints are SHA-1 digests, like Scrapy's. The checkpoint grows by the
measured batches themselves: the table shows its size at the start and at the end of each
cell.

Per store and prefill level it also times the recovery lookup: ``find_resumable`` and
``get`` (median of ``--lookups``), and, once, the full read of the processed fingerprints
and the first page of pending requests that a resume does next.

With ``--delete``, after its cells, each Redis checkpoint is measured for storage (``MEMORY
USAGE ... SAMPLES 0`` of each key: bytes per processed and per pending URL) and then
deleted by ``store.delete`` while Redis logs every command (SLOWLOG with
``slowlog-log-slower-than 0``, and the latency monitor at 1 ms): the slowest single command
of the delete, in Redis's own execution time, is what a crawl on the same server could wait
behind. Before that, a copy of its keys is left to expire, which Redis frees in its main
thread unless ``lazyfree-lazy-expire`` is set (``--lazyfree-expire`` sets it): the latency
monitor's longest expire event.

With ``--delete``, each SQLite checkpoint is measured too: the pages of the ``requests``
table (``dbstat``), shared out between processed and pending rows by their bytes, and of
its pending index (pending rows only); then ``store.delete`` runs while a second store
instance on the same file, as another crawl would, applies batches of ``--probe-size``
events to a checkpoint of its own: the longest of those applies is how long the delete
made that crawl wait. For SQLite every cell also reports the pages each call read from
outside its page cache and wrote to the WAL (``sqlite3_db_status``, through ctypes);
``--sqlite-cache-kib`` and ``--sqlite-page-size`` change the measured connection's cache
and a new file's page size. Every run prints the load average at its start and end.

A prefill that would take longer than ``--prefill-budget`` at the rate measured so far is
abandoned, and its cells are printed as ``n/a (reason)``; a cell stops repeating once a
store has spent ``--cell-budget`` seconds in it. Last line: ``BENCH_JSON {...}``.

    python bench/flush_latency.py --sizes 100,500,5000 --prefill 0,1000000,5000000 --repeats 200
    python bench/flush_latency.py --prefill 0,20000 --repeats 30 --stores sqlite,redis
    python bench/flush_latency.py --stores redis --prefill 2000000 --lag 1000000 --sizes 500 --repeats 20 --delete
    python bench/flush_latency.py --stores sqlite --prefill 1000000 --sizes 500 --sqlite-page-size 8192 --no-scan
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib
import json
import os
import pickle
import random
import sqlite3
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scrapy  # noqa: E402
from scrapy.settings import Settings  # noqa: E402

from _services import mongo_server, redis_server  # noqa: E402
from scrapy_checkpoint.exceptions import StoreUnavailable  # noqa: E402
from scrapy_checkpoint.models import Batch, Checkpoint, DiscoveredRequest  # noqa: E402
from scrapy_checkpoint.settings import CheckpointSettings  # noqa: E402
from scrapy_checkpoint.stores import CheckpointStore, SQLiteCheckpointStore, store_class  # noqa: E402

STORES = ("sqlite", "redis", "mongodb", "hybrid")
SPIDER, SITE, JOB = "products", "shop.example.com", "bench"
ITEM_TYPE = "Product"
# Fixed-width product numbers: the URL is swapped into the pickled template in place.
URL = "https://shop.example.com/product/{:010d}.html"
PLACEHOLDER = URL.format(0).replace("0000000000", "XXXXXXXXXX")
# The timeout of the store instance that prefills: bulk batches are far larger than flushes.
PREFILL_TIMEOUT = 600.0


class BenchSpider(scrapy.Spider):
    name = SPIDER

    def parse_product(self, response: Any) -> None:
        pass


def request_template() -> bytes:
    """A product request as the extension stores it, with PLACEHOLDER as its URL."""
    spider = BenchSpider()
    request = scrapy.Request(
        PLACEHOLDER,
        callback=spider.parse_product,
        headers={"Referer": "https://shop.example.com/c/07?page=3"},
        meta={"depth": 2},
    )
    data = pickle.dumps(request.to_dict(spider=spider), protocol=pickle.HIGHEST_PROTOCOL)
    assert data.count(PLACEHOLDER.encode()) == 1
    return data


class Workload:
    """The pages of one checkpoint, in order: page *i* discovers URL *i*, marks URL
    *i - lag* processed, and scrapes one item: three events (two for the first *lag*)."""

    def __init__(self, template: bytes, lag: int) -> None:
        self.template = template
        self.placeholder = PLACEHOLDER.encode()
        self.lag = lag
        self.seq = 0
        self.page = 0
        self.part = 0  # the next event of the current page: 0 discover, 1 process, 2 item
        #: Where each page not processed yet was discovered, as the extension keeps it in the
        #: request's meta (RECORD_META) and sends it with the processed mark.
        self.positions: dict[int, int] = {}

    @property
    def records(self) -> int:
        """URL records sent so far (each page discovers one new URL)."""
        return self.page + (self.part > 0)

    def url(self, number: int) -> str:
        return URL.format(number)

    def fingerprint(self, number: int) -> bytes:
        return hashlib.sha1(self.url(number).encode()).digest()  # noqa: S324 - like Scrapy's

    def request(self, url: str) -> bytes:
        return self.template.replace(self.placeholder, url.encode())

    def batch(self, events: int, stop_records: int | None = None) -> Batch:
        """The next *events* events, or fewer when *stop_records* URLs are reached."""
        self.seq += 1
        batch = Batch(seq=self.seq, pipeline_step=4)
        count = items = 0
        while count < events:
            page, part = self.page, self.part
            if part == 0:
                if stop_records is not None and page >= stop_records:
                    break
                url = self.url(page)
                self.positions[page] = batch.next_position
                batch.discovered.append(DiscoveredRequest(self.fingerprint(page), url, self.request(url)))
                count += 1
            elif part == 1:
                if page >= self.lag:
                    done = self.fingerprint(page - self.lag)
                    batch.processed.append(done)
                    batch.positions[done] = self.positions.pop(page - self.lag)
                    count += 1
            else:
                items += 1
                count += 1
            self.part = (part + 1) % 3
            if self.part == 0:
                self.page += 1
        if items:
            batch.item_counts[ITEM_TYPE] = items
        return batch


@dataclass
class Services:
    redis_url: str | None
    mongo_uri: str | None


def checkpoint_settings(kind: str, workdir: Path, services: Services, timeout: float, tag: str) -> CheckpointSettings:
    values: dict[str, Any] = {
        "CHECKPOINT_ENABLED": True,
        "CHECKPOINT_DIR": str(workdir / "sqlite"),
        "CHECKPOINT_STORE_TIMEOUT": timeout,
    }
    if kind in ("redis", "hybrid"):
        values["CHECKPOINT_REDIS_URL"] = services.redis_url
        values["CHECKPOINT_REDIS_PREFIX"] = f"bench-{tag}"
    if kind in ("mongodb", "hybrid"):
        values["CHECKPOINT_MONGO_URI"] = services.mongo_uri
        values["CHECKPOINT_MONGO_DATABASE"] = f"bench_{tag}"
    return CheckpointSettings.from_settings(Settings(values))


def unavailable(kind: str, services: Services) -> str | None:
    """Why *kind* cannot run here, or None."""
    if kind in ("redis", "hybrid") and not services.redis_url:
        return "no redis-server"
    if kind in ("mongodb", "hybrid") and not services.mongo_uri:
        return "no MongoDB endpoint"
    if kind == "hybrid":
        try:
            importlib.import_module("scrapy_checkpoint.stores.hybrid")
        except ImportError as exc:
            return f"hybrid store not importable: {exc}"
    return None


def make_store(kind: str, workdir: Path, services: Services, timeout: float, tag: str) -> CheckpointStore:
    """A store built the way the extension builds it (store_class + from_checkpoint_settings)."""
    settings = checkpoint_settings(kind, workdir, services, timeout, tag)
    store = store_class(settings).from_checkpoint_settings(settings)
    if kind != "hybrid" and store.name != kind:
        raise RuntimeError(f"asked for the {kind} store, got {store.name}")
    return store


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was measured."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": round(statistics.median(ms), 3), "p95_ms": round(percentile(ms, 95), 3),
            "p99_ms": round(percentile(ms, 99), 3), "max_ms": round(max(ms), 3)}


@dataclass
class Contender:
    """One store at one prefill level: its own checkpoint and workload."""

    kind: str
    store: CheckpointStore | None = None
    checkpoint_id: str | None = None
    workload: Workload | None = None
    skipped: str | None = None
    ttl: float = 48 * 3600.0
    extra: dict[str, Any] = field(default_factory=dict)

    def records(self) -> int | None:
        """The URL count the store itself reports; None when the store did not answer (the
        stand-in can take longer than CHECKPOINT_STORE_TIMEOUT on a large database)."""
        assert self.store is not None and self.checkpoint_id is not None
        try:
            checkpoint = self.store.get(self.checkpoint_id)
        except StoreUnavailable as exc:
            print(f"  {self.kind}: record count unavailable: {exc}", file=sys.stderr)
            return None
        assert checkpoint is not None
        return checkpoint.pipeline_data.urls_discovered


class Progress:
    """Prefill progress against a time budget: says when to give up, and why."""

    def __init__(self, kind: str, target: int, budget: float) -> None:
        self.kind, self.target, self.budget = kind, target, budget
        self.started = time.perf_counter()
        self.rate = 0.0
        self.reason: str | None = None

    def __call__(self, phase: str, done: int, phase_started: float) -> bool:
        now = time.perf_counter()
        self.rate = done / max(now - phase_started, 1e-9)
        print(f"  prefill {self.kind} ({phase}): {done:,}/{self.target:,} records, {self.rate:,.0f}/s",
              file=sys.stderr)
        projected = (phase_started - self.started) + self.target / self.rate
        if done < self.target and projected > self.budget:
            self.reason = (f"prefill impractical: {phase} at {self.rate:,.0f} records/s (measured over "
                           f"{done:,}) would take {projected / 60:,.0f} min > --prefill-budget {self.budget:g} s")
            return False
        return True


def fill_by_apply(store: CheckpointStore, checkpoint_id: str, workload: Workload, target: int,
                  chunk: int, ttl: float, progress: Progress, phase: str) -> bool:
    started = time.perf_counter()
    while workload.records < target:
        store.apply(checkpoint_id, workload.batch(chunk, stop_records=target), ttl)
        if not progress(phase, workload.records, started):
            return False
    return True


def fill_mongodb_directly(store: CheckpointStore, checkpoint_id: str, workload: Workload, target: int,
                          seq: int, chunk: int, ttl: float, progress: Progress) -> bool:
    """Insert the URL documents the workload's first *target* pages leave, in bulk, and set the
    record's counters as apply would have: the MongoDB store's own collections and shapes."""
    from bson import Binary

    from scrapy_checkpoint.models import expiry, utcnow
    from scrapy_checkpoint.stores import mongodb

    db = store.db  # type: ignore[attr-defined]
    base = seq << mongodb._POS_BITS
    done_below = target - workload.lag  # pages lag.. mark URLs 0..target-lag-1 processed
    started = time.perf_counter()
    for first in range(0, target, chunk):
        docs = []
        for number in range(first, min(target, first + chunk)):
            fp, url = workload.fingerprint(number), workload.url(number)
            docs.append({"_id": mongodb._url_id(checkpoint_id, fp), "checkpoint_id": checkpoint_id,
                         "fingerprint": Binary(fp), "url": url, "request": Binary(workload.request(url)),
                         "processed": number < done_below, "start": False, "pos": base + number})
        db[mongodb.URLS].insert_many(docs, ordered=False)
        if not progress("direct insert", first + len(docs), started):
            return False
    now = utcnow()
    db[mongodb.CHECKPOINTS].update_one({"checkpoint_id": checkpoint_id}, {"$set": {
        "seq": seq, "pipeline_step": 4, "updated_at": now, "expires_at": expiry(now, ttl),
        "pipeline_data.urls_discovered": target,
        "pipeline_data.urls_processed": max(0, done_below),
        "pipeline_data.extraction_results.items_scraped": target,
        f"pipeline_data.extraction_results.by_type.{ITEM_TYPE}": target,
    }})
    return True


def prefill(contender: Contender, target: int, args: argparse.Namespace, slow_rates: dict[str, float],
            workdir: Path, services: Services, tag: str) -> None:
    """Fill the contender's checkpoint to *target* URLs, from a store instance with a long
    timeout: through apply in batches of --prefill-chunk events, or, for MongoDB (and the
    MongoDB side of the hybrid store) with --prefill-mode direct, by bulk inserts. Give up
    when the rate measured so far says it would outlast --prefill-budget."""
    kind, budget = contender.kind, args.prefill_budget
    rate = slow_rates.get(kind)
    if rate and target / rate > budget:
        contender.skipped = (f"prefill impractical: {rate:,.0f} records/s measured at a lower level, "
                             f"{target / rate / 60:,.0f} min > --prefill-budget {budget:g} s")
        return
    if target == 0:
        return
    workload, cid, ttl = contender.workload, contender.checkpoint_id, contender.ttl
    assert workload is not None and cid is not None
    filler = make_store(kind, workdir, services, PREFILL_TIMEOUT, tag)
    filler.open()
    progress = Progress(kind, target, budget)
    chunk = args.prefill_chunk
    try:
        mongo_side = None
        if args.prefill_mode == "direct":
            if kind == "mongodb":
                mongo_side = filler
            elif kind == "hybrid":
                mongo_side = getattr(getattr(filler, "mongodb", None), "store", None)
                redis_side = getattr(getattr(filler, "redis", None), "store", None)
                if mongo_side is None or redis_side is None:
                    mongo_side = None  # another hybrid layout: fill it through apply
        if mongo_side is None:
            ok = fill_by_apply(filler, cid, workload, target, chunk, ttl, progress, "apply")
        elif kind == "mongodb":
            workload.seq += 1
            ok = fill_mongodb_directly(mongo_side, cid, workload, target, workload.seq, chunk // 3, ttl, progress)
            workload.page, workload.part = target, 0
        else:
            ok = (fill_by_apply(redis_side, cid, workload, target, chunk, ttl, progress, "Redis side, apply")
                  and fill_mongodb_directly(mongo_side, cid, workload, target, workload.seq, chunk // 3, ttl,
                                            progress))
    finally:
        filler.close()
    elapsed = time.perf_counter() - progress.started
    contender.extra.update(prefill_s=round(elapsed, 2), prefill_rate=round(target / elapsed),
                           prefill_mode="apply" if mongo_side is None else "direct")
    if not ok:
        slow_rates[kind] = progress.rate
        contender.skipped = progress.reason
        return
    slow_rates[kind] = target / elapsed


def recovery(contender: Contender, lookups: int, scan: bool) -> dict[str, Any]:
    """What a resume asks the store first, timed on the prefilled checkpoint."""
    store, cid = contender.store, contender.checkpoint_id
    assert store is not None and cid is not None
    find, get = [], []
    for _ in range(lookups):
        started = time.perf_counter()
        found = store.find_resumable(SPIDER, SITE, JOB)
        find.append(time.perf_counter() - started)
        if found is None or found.checkpoint_id != cid:
            raise RuntimeError(f"{contender.kind}: find_resumable returned {found and found.checkpoint_id}, "
                               f"not the newest checkpoint {cid}")
        started = time.perf_counter()
        store.get(cid)
        get.append(time.perf_counter() - started)
    result: dict[str, Any] = {
        "find_resumable_ms": round(statistics.median(find) * 1000, 3),
        "get_ms": round(statistics.median(get) * 1000, 3),
        "lookup_ms": round(statistics.median(f + g for f, g in zip(find, get)) * 1000, 3),
    }
    if not scan:
        return result
    # What a resume reads next, with the measured store's timeout: a failure is a result.
    started = time.perf_counter()
    try:
        processed = sum(1 for _ in store.processed_fingerprints(cid))
    except Exception as exc:
        result["load_processed_error"] = failure(exc, started)
    else:
        result["processed_fps"] = processed
        result["load_processed_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    try:
        page, _ = store.pending_requests(cid, None, 1000)
    except Exception as exc:
        result["first_pending_page_error"] = failure(exc, started)
    else:
        result["first_pending_page_ms"] = round((time.perf_counter() - started) * 1000, 3)
        result["first_pending_page_n"] = len(page)
    return result


def failure(exc: Exception, started: float) -> str:
    return f"{type(exc).__name__} after {time.perf_counter() - started:.1f} s: {str(exc)[:160]}"


class SQLitePages:
    """Page counters of one SQLite connection (``sqlite3_db_status``), which the stdlib does
    not expose: cache misses (pages read from the file or the WAL) and pages written (to the
    WAL, in WAL mode). Reached through ctypes, from the same library as ``_sqlite3``."""

    _MISS, _WRITE = 8, 9  # SQLITE_DBSTATUS_CACHE_MISS, SQLITE_DBSTATUS_CACHE_WRITE

    def __init__(self, db: Any, path: Path) -> None:
        import _sqlite3

        lib = ctypes.CDLL(_sqlite3.__file__)  # its symbols resolve to the libsqlite3 it links
        self._status = lib.sqlite3_db_status
        self._status.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                                 ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        filename = lib.sqlite3_db_filename
        filename.restype, filename.argtypes = ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_char_p]
        self._db = db  # kept alive while its handle is used
        # CPython 3.11's pysqlite_Connection: PyObject_HEAD, then the sqlite3 * handle.
        self._handle = ctypes.c_void_p.from_address(id(db) + 16).value
        if filename(self._handle, b"main") != str(path).encode():
            raise RuntimeError("not the sqlite3 handle of this connection")
        self._value, self._high = ctypes.c_int(), ctypes.c_int()

    @classmethod
    def of(cls, store: Any) -> SQLitePages | None:
        try:
            return cls(store.db, store.path.resolve())
        except Exception as exc:  # another Python: the columns print "-"
            print(f"  sqlite page counters unavailable: {exc}", file=sys.stderr)
            return None

    def _get(self, op: int, reset: int = 0) -> int:
        self._status(self._handle, op, ctypes.byref(self._value), ctypes.byref(self._high), reset)
        return self._value.value

    def reset(self) -> None:
        self._get(self._MISS, 1)
        self._get(self._WRITE, 1)

    def read(self) -> tuple[int, int]:
        return self._get(self._MISS), self._get(self._WRITE)


def measure_cell(contenders: list[Contender], size: int, repeats: int, budget: float,
                 rng: random.Random) -> dict[str, dict[str, Any]]:
    """Apply *repeats* batches of *size* events per contender, interleaved."""
    live = [c for c in contenders if c.skipped is None]
    times: dict[str, list[float]] = {c.kind: [] for c in live}
    spent: dict[str, float] = {c.kind: 0.0 for c in live}
    errors: dict[str, list[str]] = {c.kind: [] for c in live}
    cpu: dict[str, list[float]] = {c.kind: [] for c in live}
    start = {c.kind: c.records() for c in live}
    # Redis: the server's own time for each batch's script, from its command statistics.
    redis_clients = {c.kind: c.store.client for c in live if c.kind == "redis"}  # type: ignore[union-attr]
    server: dict[str, list[float]] = {kind: [] for kind in redis_clients}
    # SQLite: pages the call read from outside its cache and wrote to the WAL (sqlite3_db_status).
    counters = {c.kind: SQLitePages.of(c.store) for c in live if c.kind == "sqlite"}
    pages: dict[str, list[tuple[int, int]]] = {kind: [] for kind, counter in counters.items() if counter}
    for _ in range(repeats):
        order = [c for c in live if spent[c.kind] < budget and len(errors[c.kind]) < 5]
        if not order:
            break
        rng.shuffle(order)
        for contender in order:
            assert contender.workload is not None and contender.store is not None
            batch = contender.workload.batch(size)
            client = redis_clients.get(contender.kind)
            server_before = _script_usec(client) if client else 0
            counter = counters.get(contender.kind)
            if counter:
                counter.reset()
            started, cpu_started = time.perf_counter(), time.thread_time()
            try:
                contender.store.apply(contender.checkpoint_id, batch, contender.ttl)
            except Exception as exc:  # a timeout is a result too: counted, reported
                errors[contender.kind].append(f"{type(exc).__name__}: {exc}"[:200])
                # A failed batch is retried with the same seq by the extension; here the
                # workload goes on, and the store skips nothing it did not apply.
            else:
                times[contender.kind].append(time.perf_counter() - started)
                cpu[contender.kind].append(time.thread_time() - cpu_started)
                if client:
                    server[contender.kind].append((_script_usec(client) - server_before) / 1e6)
                if counter:
                    pages[contender.kind].append(counter.read())
            spent[contender.kind] += time.perf_counter() - started
    out: dict[str, dict[str, Any]] = {}
    for contender in live:
        kind = contender.kind
        row: dict[str, Any] = {"n": len(times[kind]), "records_start": start[kind],
                               "records_end": contender.records(), "errors": len(errors[kind])}
        if errors[kind]:
            row["first_error"] = errors[kind][0]
        if len(times[kind]) < repeats:
            row["note"] = (f"stopped after {len(times[kind])} batches "
                           f"({'errors' if len(errors[kind]) >= 5 else '--cell-budget'})")
        if times[kind]:
            row.update(summary(times[kind]))
            row["cpu_p50_ms"] = round(statistics.median(cpu[kind]) * 1000, 3)
            # Was the slowest call working or waiting (for a lock, the disk, a core)?
            slowest = max(range(len(times[kind])), key=times[kind].__getitem__)
            row["cpu_of_max_ms"] = round(cpu[kind][slowest] * 1000, 3)
            if pages.get(kind):
                misses, writes = zip(*pages[kind])
                row["pages"] = {"miss_p50": statistics.median(misses), "write_p50": statistics.median(writes),
                                "miss_at_max": misses[slowest], "write_at_max": writes[slowest],
                                "miss_p99": percentile(list(misses), 99),
                                "write_p99": percentile(list(writes), 99)}
        if server.get(kind):
            row["server"] = {k.replace("_ms", ""): v for k, v in summary(server[kind]).items()}
        row["load"] = round(os.getloadavg()[0], 2)
        out[kind] = row
    return out


#: The checkpoint's keys that grow with its URLs.
_URL_KEYS = ("requests", "pending", "start", "processed", "items")
#: What the measurement itself sends while SLOWLOG logs every command.
_OWN_COMMANDS = (b"SLOWLOG", b"CONFIG", b"LATENCY", b"INFO", b"PING")


def redis_delete(contender: Contender, expire: bool, lazy_expire: bool) -> dict[str, Any]:
    """Storage per URL of the contender's Redis checkpoint, the longest free of an expiring
    copy of it (*expire*; with *lazy_expire*, lazyfree-lazy-expire set first), then its
    delete: the slowest command in Redis's own time."""
    import redis

    store, cid = contender.store, contender.checkpoint_id
    assert store is not None and cid is not None
    # A connection of its own: MEMORY USAGE and COPY of a key of millions take longer than
    # the store's timeout (they run before the measurement).
    client = redis.Redis.from_url(store.url, socket_timeout=PREFILL_TIMEOUT)  # type: ignore[attr-defined]
    key = store._key  # type: ignore[attr-defined]
    data = store.get(cid).pipeline_data  # type: ignore[union-attr]
    processed, pending = data.urls_processed, data.urls_discovered - data.urls_processed
    # SAMPLES 0: every element counted, exact (and O(n) in Redis: before the measurement).
    sizes = {kind: client.memory_usage(key(cid, kind), samples=0) or 0 for kind in ("record", *_URL_KEYS)}
    result: dict[str, Any] = {
        "processed": processed, "pending": pending, "key_bytes": sizes,
        "bytes_per_processed": round(sizes["processed"] / processed, 1) if processed else None,
        "bytes_per_pending": round((sizes["requests"] + sizes["pending"] + sizes["start"]) / pending, 1)
        if pending else None,
        "lazyfree_lazy_expire": client.config_get("lazyfree-lazy-expire").get("lazyfree-lazy-expire"),
    }
    saved = (client.config_get("slowlog-*") | client.config_get("latency-monitor-threshold")
             | client.config_get("lazyfree-lazy-expire"))
    try:
        client.config_set("latency-monitor-threshold", 1)
        if lazy_expire:
            client.config_set("lazyfree-lazy-expire", "yes")
            result["lazyfree_lazy_expire"] = "yes"
        if expire:
            copies = [f"{key(cid, kind)}:expire-probe" for kind in _URL_KEYS if sizes[kind]]
            for kind in _URL_KEYS:
                if sizes[kind]:
                    client.copy(key(cid, kind), f"{key(cid, kind)}:expire-probe", replace=True)
            expired = client.info("stats")["expired_keys"]
            client.execute_command("LATENCY", "RESET")
            for copy in copies:
                client.pexpire(copy, 1)
            deadline = time.monotonic() + 120
            # Never read the copies: a read would expire them in that command instead.
            while client.info("stats")["expired_keys"] < expired + len(copies) and time.monotonic() < deadline:
                time.sleep(0.05)
            events = {e[0].decode(): e[3] for e in client.execute_command("LATENCY", "LATEST")}
            result["expire_max_ms"] = max((ms for name, ms in events.items() if name.startswith("expire")), default=0)
            # Copies freed lazily are gone first: the delete does not share the server with that.
            while client.info("memory").get("lazyfree_pending_objects", 0) and time.monotonic() < deadline:
                time.sleep(0.05)
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 1024)
        client.slowlog_reset()
        client.execute_command("LATENCY", "RESET")
        memory = client.info("memory")
        lazy_before = memory.get("lazyfreed_objects", 0) + memory.get("lazyfree_pending_objects", 0)
        started = time.perf_counter()
        if not store.delete(cid):
            raise RuntimeError(f"redis: delete found no checkpoint {cid}")
        result["delete_ms"] = round((time.perf_counter() - started) * 1000, 3)
        entries = [e for e in client.slowlog_get(1024) if not e["command"].upper().startswith(_OWN_COMMANDS)]
        events = {e[0].decode(): e[3] for e in client.execute_command("LATENCY", "LATEST")}
        slowest = max(entries, key=lambda e: e["duration"])
        result.update(delete_commands=len(entries), delete_max_command_ms=slowest["duration"] / 1000,
                      delete_max_command=slowest["command"].split()[0].decode(errors="replace"),
                      delete_latency_events=events,
                      delete_slowlog=[(e["command"].split()[0].decode(errors="replace"), e["duration"])
                                      for e in reversed(entries)])
        started = time.perf_counter()
        while client.info("memory").get("lazyfree_pending_objects", 0) and time.perf_counter() - started < 120:
            time.sleep(0.01)
        memory = client.info("memory")
        result["lazyfreed_objects"] = (memory.get("lazyfreed_objects", 0)
                                       + memory.get("lazyfree_pending_objects", 0) - lazy_before)
        result["background_free_s"] = round(time.perf_counter() - started, 2)
    finally:
        for name, value in saved.items():
            client.config_set(name, value)
        client.close()
    return result


def sqlite_delete(contender: Contender, probe_size: int, probe_pause: float) -> dict[str, Any]:
    """Storage per URL of the contender's SQLite checkpoint (``dbstat``), then its delete
    while another store instance on the same file (another crawl) applies batches of
    *probe_size* events to a checkpoint of its own, one every *probe_pause* seconds: the
    longest of those applies is how long the delete made a crawl wait."""
    store, cid = contender.store, contender.checkpoint_id
    assert store is not None and cid is not None
    path, own = store.path, store.db  # type: ignore[attr-defined]
    key = own.execute("SELECT id FROM checkpoints WHERE checkpoint_id = ?", (cid,)).fetchone()[0]
    result: dict[str, Any] = {"file_bytes": sum(p.stat().st_size for p in path.parent.glob(path.name + "*")
                                                if not p.name.endswith("-shm"))}
    # Each table's pages (dbstat) shared out among checkpoints by their rows' bytes (cell and
    # page overhead in proportion); 12 bytes a row stand for the record header and the integers.
    tables = {"pending": "12 + LENGTH(fingerprint) + LENGTH(CAST(url AS BLOB)) + LENGTH(request)",
              "processed": "12 + LENGTH(fingerprint)"}
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        for table, row_bytes in tables.items():
            rows = dict(((mine, (n, size)) for mine, n, size in db.execute(
                f"SELECT checkpoint = ?, COUNT(*), SUM({row_bytes}) FROM {table} GROUP BY 1", (key,))))
            pages, table_bytes = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = ?", (table,)).fetchone()
            n, size = rows.get(1, (0, 0))
            total = sum(size for _, size in rows.values()) or 1
            result[table] = n
            result[f"{table}_pages"] = pages
            result[f"{table}_row_bytes"] = round(size / n, 1) if n else None
            result[f"bytes_per_{table}"] = round(table_bytes * size / total / n, 1) if n else None
    result["page_size"] = page_size
    prober = SQLiteCheckpointStore(path, timeout=PREFILL_TIMEOUT)
    prober.open()
    waits: list[tuple[float, float]] = []  # (start, seconds) of each probe apply
    stop = threading.Event()
    probe_error: list[str] = []

    def probe() -> None:
        checkpoint = Checkpoint.new(ttl=contender.ttl, spider=SPIDER, site_domain=SITE, job_type="probe")
        prober.create(checkpoint)
        workload = Workload(request_template(), 50)
        try:
            while not stop.is_set():
                batch = workload.batch(probe_size)
                started = time.perf_counter()
                prober.apply(checkpoint.checkpoint_id, batch, contender.ttl)
                waits.append((started, time.perf_counter() - started))
                time.sleep(probe_pause)
        except Exception as exc:  # reported in the row
            probe_error.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            prober.delete(checkpoint.checkpoint_id)

    thread = threading.Thread(target=probe, name="delete-probe", daemon=True)
    thread.start()
    try:
        time.sleep(2.0)  # the probe's own times, before the delete
        started = time.perf_counter()
        if not store.delete(cid):
            raise RuntimeError(f"sqlite: delete found no checkpoint {cid}")
        ended = time.perf_counter()
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join()
        prober.close()
    before = [s for t, s in waits if t + s < started]
    # A probe apply waits behind the delete when it overlaps it at all.
    during = [s for t, s in waits if t < ended and t + s > started]
    left = sum(own.execute(f"SELECT COUNT(*) FROM {table} WHERE checkpoint = ?", (key,)).fetchone()[0]
               for table in tables)
    result.update(
        delete_s=round(ended - started, 3), rows_left=left, gone=store.get(cid) is None,
        probe_n=len(during), probe_before_max_ms=round(max(before) * 1000, 2) if before else None,
        probe_p50_ms=round(statistics.median(during) * 1000, 2) if during else None,
        probe_p99_ms=round(percentile(during, 99) * 1000, 2) if during else None,
        probe_max_ms=round(max(during) * 1000, 2) if during else None,
    )
    if probe_error:
        result["probe_error"] = probe_error[0]
    return result


def _script_usec(client: Any) -> int:
    """Microseconds Redis has spent running EVALSHA since it started."""
    return client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0)


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def print_deletes(deletes: list[dict[str, Any]], request_bytes: int) -> None:
    print(f"\nRedis storage (MEMORY USAGE ... SAMPLES 0; pending = requests + pending + start keys, "
          f"request body {request_bytes} bytes) and delete of the prefilled checkpoint")
    print("max cmd: the slowest command of the delete (SLOWLOG, Redis's own time); expire max: the longest "
          "expire event (latency monitor) freeing an expiring copy of the checkpoint's keys")
    print(f"{'store':<9}{'prefill':>10}{'processed':>11}{'B/proc':>8}{'pending':>10}{'B/pend':>8}"
          f"{'delete ms':>11}{'max cmd ms':>12}{'  max cmd':<16}{'freed bg':>9}{'bg free s':>10}"
          f"{'expire max ms':>15}{'lazy-expire':>13}")
    for row in deletes:
        head = f"{row['store']:<9}{row['prefill']:>10,}"
        if "error" in row:
            print(f"{head}  n/a ({row['error']})")
            continue
        print(f"{head}{row['processed']:>11,}{fmt_ms(row['bytes_per_processed']):>8}{row['pending']:>10,}"
              f"{fmt_ms(row['bytes_per_pending']):>8}{fmt_ms(row['delete_ms']):>11}"
              f"{row['delete_max_command_ms']:>12.3f}  {row['delete_max_command']:<14}"
              f"{row['lazyfreed_objects']:>9}{row['background_free_s']:>10.2f}"
              f"{row.get('expire_max_ms', '-'):>15}{row['lazyfree_lazy_expire']:>13}")


def print_sqlite_deletes(deletes: list[dict[str, Any]]) -> None:
    print("\nSQLite storage (dbstat: pages of the pending and processed tables, shared out by row bytes) "
          "and delete of the prefilled checkpoint while another store instance on the same file applies "
          "small batches")
    print("probe: those applies that overlapped the delete (max = the longest a crawl waited); before max: "
          "the longest in the 2 s before it")
    print(f"{'store':<9}{'prefill':>11}{'processed':>12}{'B/proc':>8}{'pending':>11}{'B/pend':>9}{'file MB':>9}"
          f"{'delete s':>10}{'probe n':>9}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'before max':>11}{'left':>6}")
    for row in deletes:
        head = f"{row['store']:<9}{row['prefill']:>11,}"
        if "error" in row:
            print(f"{head}  n/a ({row['error']})")
            continue
        print(f"{head}{row['processed']:>12,}{fmt_ms(row['bytes_per_processed']):>8}{row['pending']:>11,}"
              f"{fmt_ms(row['bytes_per_pending']):>9}{row['file_bytes'] / 1e6:>9,.0f}"
              f"{row['delete_s']:>10.2f}{row['probe_n']:>9}"
              f"{fmt_ms(row['probe_p50_ms']):>10}{fmt_ms(row['probe_p99_ms']):>10}{fmt_ms(row['probe_max_ms']):>10}"
              f"{fmt_ms(row['probe_before_max_ms']):>11}{row['rows_left']:>6}"
              + (f"  probe error: {row['probe_error']}" if "probe_error" in row else ""))


def print_tables(cells: list[dict[str, Any]], recoveries: list[dict[str, Any]], prefills: list[dict[str, Any]],
                 request_bytes: int) -> None:
    print("\nprefill (not a result: how the checkpoints were filled)")
    print(f"{'store':<9}{'prefill':>10}{'mode':>8}{'seconds':>10}{'records/s':>11}")
    for row in prefills:
        if row["prefill"] == 0:
            continue
        line = f"{row['store']:<9}{row['prefill']:>10,}{row.get('prefill_mode', '-'):>8}"
        if "prefill_s" in row:
            line += f"{row['prefill_s']:>10,.1f}{row['prefill_rate']:>11,}"
        print(line + (f"  {row['skipped']}" if row.get("skipped") else ""))
    print(f"\nstore.apply latency per batch (ms); request body {request_bytes} bytes; "
          "records = URL records of the checkpoint at the start -> end of the cell")
    print("cpu p50: CPU time of the calling thread (the client's work; all of SQLite's); cpu@max: that of the "
          "slowest call; server p50/p99: Redis's own execution time of the batch's script (INFO commandstats)")
    print("SQLite pages per call (sqlite3_db_status): miss = read from outside the page cache, wr = written "
          "to the WAL; @max: of the slowest call; load: 1-minute load average at the end of the cell")
    print(f"{'store':<9}{'prefill':>11}{'size':>7}{'n':>6}{'records':>27}"
          f"{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}{'cpu p50':>10}{'cpu@max':>10}{'server p50':>12}"
          f"{'server p99':>12}{'miss p50':>10}{'miss@max':>10}{'wr p50':>8}{'wr p99':>8}{'wr@max':>8}{'load':>7}")
    for cell in cells:
        head = f"{cell['store']:<9}{cell['prefill']:>11,}{cell['size']:>7,}"
        if "skipped" in cell:
            print(f"{head}  n/a ({cell['skipped']})")
            continue
        records = " -> ".join("?" if n is None else f"{n:,}" for n in (cell["records_start"], cell["records_end"]))
        print(f"{head}{cell['n']:>6}{records:>27}{fmt_ms(cell.get('p50_ms')):>10}"
              f"{fmt_ms(cell.get('p95_ms')):>10}{fmt_ms(cell.get('p99_ms')):>10}{fmt_ms(cell.get('max_ms')):>10}"
              f"{fmt_ms(cell.get('cpu_p50_ms')):>10}{fmt_ms(cell.get('cpu_of_max_ms')):>10}"
              f"{fmt_ms(cell.get('server', {}).get('p50')):>12}"
              f"{fmt_ms(cell.get('server', {}).get('p99')):>12}"
              + "".join(f"{pages.get(k, '-'):>{w}}" for k, w in (
                  ("miss_p50", 10), ("miss_at_max", 10), ("write_p50", 8), ("write_p99", 8), ("write_at_max", 8))
                  for pages in [cell.get("pages", {})])
              + f"{cell.get('load', '-'):>7}"
              + (f"  {cell['note']}" if "note" in cell else "")
              + (f"  errors: {cell['errors']} ({cell['first_error']})" if cell.get("errors") else ""))
    print("\nrecovery lookup on the prefilled checkpoint (medians); load = every processed "
          "fingerprint (once), page = first 1000 pending requests (once)")
    print(f"{'store':<9}{'prefill':>10}{'find ms':>10}{'get ms':>10}{'both ms':>10}"
          f"{'processed':>12}{'load s':>9}{'page ms':>10}")
    for rec in recoveries:
        head = f"{rec['store']:<9}{rec['prefill']:>10,}"
        if "skipped" in rec:
            print(f"{head}  n/a ({rec['skipped']})")
            continue
        if "lookup_error" in rec:
            print(f"{head}  n/a ({rec['lookup_error']})")
            continue
        load = f"{rec['load_processed_s']:.2f}" if "load_processed_s" in rec else "-"
        errors = "; ".join(f"{what}: {rec[key]}" for what, key in (
            ("load", "load_processed_error"), ("page", "first_pending_page_error")) if key in rec)
        print(f"{head}{fmt_ms(rec['find_resumable_ms']):>10}{fmt_ms(rec['get_ms']):>10}"
              f"{fmt_ms(rec['lookup_ms']):>10}{rec.get('processed_fps', 0):>12,}"
              f"{load:>9}{fmt_ms(rec.get('first_pending_page_ms')):>10}" + (f"  {errors}" if errors else ""))


def ints(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=ints, default=[100, 500, 5000], help="events per batch")
    parser.add_argument("--prefill", type=ints, default=[0, 1_000_000, 5_000_000],
                        help="URL records in the checkpoint before measuring")
    parser.add_argument("--repeats", type=int, default=200, help="batches per store and cell")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated subset of " + ",".join(STORES))
    parser.add_argument("--lag", type=int, default=1000, help="pages between a URL's discovery and processing")
    parser.add_argument("--lookups", type=int, default=20, help="recovery lookups per store and level (median)")
    parser.add_argument("--no-scan", action="store_true", help="skip the full read of processed fingerprints")
    parser.add_argument("--timeout", type=float, default=5.0, help="CHECKPOINT_STORE_TIMEOUT of the measured stores")
    parser.add_argument("--prefill-chunk", type=int, default=60_000, help="events per prefill batch")
    parser.add_argument("--prefill-mode", choices=("direct", "apply"), default="direct",
                        help="direct: bulk inserts into the MongoDB collections (MongoDB and the MongoDB "
                             "side of hybrid; the others always prefill through apply)")
    parser.add_argument("--prefill-budget", type=float, default=600.0,
                        help="seconds a store may take to prefill one level; slower is skipped")
    parser.add_argument("--cell-budget", type=float, default=600.0,
                        help="seconds a store may spend in one (size, prefill) cell")
    parser.add_argument("--delete", action="store_true",
                        help="Redis and SQLite: after each level's cells, storage per URL and the delete of its "
                             "checkpoint (SQLite: while another store instance applies --probe-size batches)")
    parser.add_argument("--probe-size", type=int, default=100, help="with --delete, SQLite: events per probe batch")
    parser.add_argument("--probe-pause", type=float, default=0.01,
                        help="with --delete, SQLite: seconds between probe batches")
    parser.add_argument("--sqlite-cache-kib", type=int, default=None,
                        help="PRAGMA cache_size of the measured SQLite connection, KiB (default: the store's); "
                             "its cache is warmed by a read of the table before measuring")
    parser.add_argument("--sqlite-page-size", type=int, default=None,
                        help="page size of a new SQLite file (default: SQLite's, 4096)")
    parser.add_argument("--no-expire", action="store_true",
                        help="with --delete, skip the expiry of a copy of the checkpoint's keys")
    parser.add_argument("--lazyfree-expire", action="store_true",
                        help="with --delete, CONFIG SET lazyfree-lazy-expire yes before that expiry")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores live (default: a temp dir)")
    args = parser.parse_args(argv)
    kinds = [k for k in args.stores.split(",") if k]
    for kind in kinds:
        if kind not in STORES:
            parser.error(f"unknown store {kind!r}; choose from {','.join(STORES)}")
    rng = random.Random(args.seed)
    load_start = os.getloadavg()
    template = request_template()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-flush-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    recoveries: list[dict[str, Any]] = []
    prefills: list[dict[str, Any]] = []
    deletes: list[dict[str, Any]] = []
    run = uuid.uuid4().hex[:8]
    try:
        with contextlib.ExitStack() as stack:
            redis_url = stack.enter_context(redis_server(workdir)) if {"redis", "hybrid"} & set(kinds) else None
            mongo_uri = stack.enter_context(mongo_server(workdir)) if {"mongodb", "hybrid"} & set(kinds) else None
            services = Services(redis_url, mongo_uri)
            if args.sqlite_page_size and "sqlite" in kinds:
                # Set before the first table is made: a WAL file's page size is fixed from then on.
                (workdir / "sqlite").mkdir(parents=True, exist_ok=True)
                with contextlib.closing(sqlite3.connect(workdir / "sqlite" / "checkpoints.sqlite3",
                                                        isolation_level=None)) as db:
                    db.execute(f"PRAGMA page_size={int(args.sqlite_page_size)}")
                    db.execute("PRAGMA journal_mode=WAL")
            slow_rates: dict[str, float] = {}
            for level in args.prefill:
                contenders = []
                for kind in kinds:
                    contender = Contender(kind)
                    contenders.append(contender)
                    contender.skipped = unavailable(kind, services)
                    if contender.skipped:
                        continue
                    tag = f"{run}_{kind}"
                    contender.store = make_store(kind, workdir, services, args.timeout, tag)
                    contender.store.open()
                    stack.callback(contender.store.close)
                    if kind == "sqlite" and args.sqlite_cache_kib:
                        contender.store.db.execute(  # type: ignore[attr-defined]
                            f"PRAGMA cache_size=-{int(args.sqlite_cache_kib)}")
                    checkpoint = Checkpoint.new(ttl=contender.ttl, spider=SPIDER, site_domain=SITE, job_type=JOB)
                    contender.store.create(checkpoint)
                    contender.checkpoint_id = checkpoint.checkpoint_id
                    contender.workload = Workload(template, args.lag)
                    print(f"prefill {kind} to {level:,} records", file=sys.stderr)
                    prefill(contender, level, args, slow_rates, workdir, services, tag)
                    if kind == "sqlite" and level and not contender.skipped:
                        # A prefill writes hundreds of MB back to back, as no crawl does: its WAL
                        # is copied back first, not by the checkpointing thread during the cell.
                        contender.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
                    if kind == "sqlite" and args.sqlite_cache_kib and not contender.skipped:
                        # A cache larger than the default is measured warm, as a long crawl's
                        # would be: the table read once through the measured connection.
                        contender.store.db.execute(  # type: ignore[attr-defined]
                            "SELECT (SELECT SUM(LENGTH(request)) FROM pending), (SELECT COUNT(*) FROM processed)"
                        ).fetchone()
                    prefills.append({"store": kind, "prefill": level, "skipped": contender.skipped,
                                     **contender.extra})
                    if contender.skipped:
                        print(f"  {kind}: {contender.skipped}", file=sys.stderr)
                for contender in contenders:
                    rec: dict[str, Any] = {"store": contender.kind, "prefill": level}
                    if contender.skipped:
                        rec["skipped"] = contender.skipped
                    else:
                        try:
                            rec.update(recovery(contender, args.lookups, not args.no_scan))
                        except Exception as exc:  # a store that cannot answer: reported, not fatal
                            rec["lookup_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    recoveries.append(rec)
                for size in args.sizes:
                    print(f"measure prefill {level:,}, size {size:,}", file=sys.stderr)
                    rows = measure_cell(contenders, size, args.repeats, args.cell_budget, rng)
                    for contender in contenders:
                        cell: dict[str, Any] = {"store": contender.kind, "prefill": level, "size": size}
                        if contender.skipped:
                            cell["skipped"] = contender.skipped
                        else:
                            cell.update(rows[contender.kind])
                        cells.append(cell)
                for contender in contenders:
                    if args.delete and contender.kind == "redis" and contender.skipped is None:
                        print(f"delete redis at {level:,}", file=sys.stderr)
                        row = {"store": contender.kind, "prefill": level}
                        try:
                            row.update(redis_delete(contender, not args.no_expire, args.lazyfree_expire))
                        except Exception as exc:  # reported, not fatal
                            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                        deletes.append(row)
                    if args.delete and contender.kind == "sqlite" and contender.skipped is None:
                        print(f"delete sqlite at {level:,}", file=sys.stderr)
                        row = {"store": contender.kind, "prefill": level}
                        try:
                            row.update(sqlite_delete(contender, args.probe_size, args.probe_pause))
                        except Exception as exc:  # reported, not fatal
                            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                        deletes.append(row)
                for contender in contenders:
                    if contender.store is not None:
                        contender.store.close()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_tables(cells, recoveries, prefills, len(template))
    if args.delete and any(row["store"] == "redis" for row in deletes):
        print_deletes([row for row in deletes if row["store"] == "redis"], len(template))
    if args.delete and any(row["store"] == "sqlite" for row in deletes):
        print_sqlite_deletes([row for row in deletes if row["store"] == "sqlite"])
    load = os.getloadavg()
    print(f"\nload average at the end (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"at the start: {' '.join(f'{v:.2f}' for v in load_start)}; {os.cpu_count()} cores")
    print("BENCH_JSON " + json.dumps({
        "bench": "flush_latency", "sizes": args.sizes, "prefill": args.prefill, "repeats": args.repeats,
        "stores": kinds, "lag": args.lag, "timeout": args.timeout, "request_bytes": len(template),
        "cells": cells, "recovery": recoveries, "prefills": prefills, "deletes": deletes,
        "load_start": load_start, "load_end": os.getloadavg(), "sqlite_cache_kib": args.sqlite_cache_kib,
        "sqlite_page_size": args.sqlite_page_size,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
