"""Cost of resuming a large crawl: lookup, time to the first reseeded download, peak memory.

Builds, once per contender, the state a crawl leaves after discovering N URLs and processing
P of them: a checkpoint in each store (written through the store's own ``apply`` in large
batches, with requests serialized by ``RequestSerializer``), and a Scrapy ``JOBDIR`` (written
by Scrapy's own scheduler, dupefilter and disk queues). The URLs are the product pages of a
demo shop this benchmark serves on 127.0.0.1 and that records when each request arrives.

Then, interleaved (a new random order each round), every measurement on a fresh copy of
that state (a copied SQLite file or JOBDIR, a redis-server loaded from a copied RDB dump, a
MongoDB stand-in on a copied data directory):

- ``scrapy crawl products -s CHECKPOINT_RESUME=1 -s CLOSESPIDER_PAGECOUNT=50`` (or with
  ``JOBDIR``): seconds from process start, and from the "Spider opened" log line, to the
  arrival at the shop of the first product page (a reseeded request), and from "Spider
  opened" to the extension's "Resuming checkpoint" (or the scheduler's "Resuming crawl")
  line, i.e. loading; peak RSS of the crawl process (``ru_maxrss``, from ``wait4`` in a small
  launcher);
- the same spider starting afresh on an empty store or JOBDIR (baseline RSS);
- then ``open``, ``find_resumable`` and ``get`` on that store from this process (lookup).

Also measured once: the RSS of a set of P fingerprints as 40-char hex strings (how older
Scrapy's RFPDupeFilter and scrapy-redis keep them) and as 20-byte ``bytes`` (how Scrapy
2.19's RFPDupeFilter and the extension keep them). A store too slow to build N URLs within
--max-build-seconds, or to answer the first page of fingerprints within
CHECKPOINT_STORE_TIMEOUT, is skipped with its write and read rates. Prints medians; last line
``BENCH_JSON {...}``; exits 1 if a measurement failed.

    python bench/recovery.py --discovered 20000 --processed 18000 --rounds 3
    python bench/recovery.py --stores sqlite,jobdir --discovered 1000000 --processed 900000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "example_project"))
sys.path.insert(0, str(ROOT / "bench"))

import _services  # noqa: E402
import demo_shop  # noqa: E402
import demo_support  # noqa: E402

STORES = ("sqlite", "redis", "mongodb", "hybrid")
CONTENDERS = (*STORES, "jobdir")
#: The services each contender needs; "sqlite" is just a CHECKPOINT_DIR.
SERVICES = {
    "sqlite": ("sqlite",),
    "redis": ("sqlite", "redis"),
    "mongodb": ("sqlite", "mongodb"),
    "hybrid": ("sqlite", "redis", "mongodb"),
    "jobdir": ("jobdir",),
}
LOG_FORMAT = "%(created).6f [%(name)s] %(levelname)s: %(message)s"
#: Seconds a build may take before a store's write rate is judged (see --max-build-seconds).
PROBE_SECONDS = 5.0
#: Seconds a store call may take while the state is built (large batches).
BUILD_TIMEOUT = 300.0

#: Runs argv[2:] and writes [start time, exit code, peak RSS in KiB] to argv[1].
_SPAWN = """
import json, os, sys, time
started = time.time()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump([started, os.waitstatus_to_exitcode(status), usage.ru_maxrss], f)
"""

_LINE = re.compile(r"^(\d+\.\d+) \[([\w.]+)\] \w+: (.*)$")
_STAT = re.compile(r"'([\w/]+)': (\d+),?$")


class Skip(Exception):
    """A contender that cannot be measured here; the message says why."""


# The synthetic crawl: id 0 is the start page, ids 1..N-1 product pages; ids below P are
# processed (the start page and products 1..P-1), the others pending.


class Synthetic:
    def __init__(self, base_url: str, discovered: int, processed: int) -> None:
        from scrapy import Request
        from scrapy.utils.test import get_crawler
        from shop.spiders.products import ProductsSpider

        from scrapy_checkpoint._serialization import RequestSerializer

        self.n, self.p, self.base_url = discovered, processed, base_url
        self.crawler = get_crawler(ProductsSpider, {"CHECKPOINT_ENABLED": False})
        self.spider = ProductsSpider.from_crawler(self.crawler, base_url=base_url)
        self.crawler.spider = self.spider
        cls = ProductsSpider
        self.identity = (cls.name, getattr(cls, "checkpoint_site_domain", None)
                         or (getattr(cls, "allowed_domains", None) or [cls.name])[0],
                         getattr(cls, "checkpoint_job_type", None) or "default")
        self.catalog = demo_shop.Catalog(discovered, 20, 5)
        fingerprint = self.crawler.request_fingerprinter.fingerprint
        started = time.perf_counter()
        # 20 bytes per URL in one blob: the same fingerprints serve every contender.
        self.fps = b"".join(fingerprint(Request(self.url(i))) for i in range(self.n))
        self.fingerprint_seconds = time.perf_counter() - started
        request_to_bytes = RequestSerializer(self.spider).dumps
        self._home = request_to_bytes(self.request(0))
        self._template = self.request(1).to_dict(spider=self.spider)
        for i in {1, self.n // 2, self.n - 1} - {0}:
            if self.data(i) != request_to_bytes(self.request(i)):
                raise AssertionError(f"the serialized request of id {i} differs from RequestSerializer's")

    def url(self, i: int) -> str:
        return self.base_url if i == 0 else f"{self.base_url}/product/{i}"

    def fp(self, i: int) -> bytes:
        return self.fps[20 * i:20 * i + 20]

    def referer(self, i: int) -> str:
        """The listing page a real crawl found product *i* on."""
        category = self.catalog.category_of(i)
        page = (i - 1) // len(self.catalog.categories) // self.catalog.per_page + 1
        url = f"{self.base_url}/category/{self.catalog.slugs[category]}"
        return url if page == 1 else f"{url}?page={page}"

    def request(self, i: int) -> Any:
        """The request as the products spider schedules it (Referer and depth from the
        spider middlewares)."""
        from scrapy import Request

        if i == 0:
            return Request(self.base_url, callback=self.spider.parse, meta={"is_start_request": True})
        return Request(self.url(i), callback=self.spider.parse_product,
                       headers={"Referer": self.referer(i)}, meta={"depth": 2})

    def data(self, i: int) -> bytes:
        if i == 0:
            return self._home
        # RequestSerializer's bytes of request(i), without building the Request (checked above).
        fields = {**self._template, "url": self.url(i),
                  "headers": {b"Referer": [self.referer(i).encode()]}}
        return pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)

    def batches(self, size: int) -> Iterator[Any]:
        from scrapy_checkpoint.models import Batch, DiscoveredRequest

        for seq, start in enumerate(range(0, self.n, size), 1):
            ids = range(start, min(start + size, self.n))
            done = [i for i in ids if i < self.p]
            products = sum(1 for i in done if i)
            yield Batch(
                seq=seq,
                discovered=[DiscoveredRequest(self.fp(i), self.url(i), self.data(i), i == 0) for i in ids],
                processed=[self.fp(i) for i in done],
                item_counts={"Product": products} if products else {},
                pipeline_step=4 if products else (1 if done else 0),
            )


# Services


def external_mongodb() -> bool:
    """Whether MongoDB is the external server of CHECKPOINT_TEST_MONGODB_URI: its data cannot
    be copied, so each measurement writes its checkpoint afresh into a new database."""
    return bool(os.environ.get(_services.ENV_URI))


def _wait_until_loaded(url: str) -> None:
    """Wait until a redis-server started on a dump has read it (ten million URLs take a
    while): until then it answers every command with LOADING, and a resume refuses."""
    import redis

    with redis.Redis.from_url(url) as client:
        while True:
            try:
                if not int(client.info("persistence")["loading"]):
                    return
            except redis.BusyLoadingError:
                pass
            time.sleep(0.2)


@contextlib.contextmanager
def services(kinds: tuple[str, ...], directory: Path, seed: Path | None = None) -> Iterator[dict[str, Any]]:
    """Start what *kinds* need in *directory*, from a copy of *seed* (a snapshot) if given;
    yield the crawl settings that point at them. Servers stop on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        settings: dict[str, Any] = {}
        for kind in kinds:
            where = directory / kind
            if seed is not None and (seed / kind).exists():
                shutil.copytree(seed / kind, where)
            else:
                where.mkdir()
            if kind == "sqlite":
                settings["CHECKPOINT_DIR"] = str(where)
            elif kind == "jobdir":
                settings["JOBDIR"] = str(where)
            elif kind == "redis":
                url = stack.enter_context(_services.redis_server(where))
                if url is None:
                    raise Skip("no redis-server binary")
                settings["CHECKPOINT_REDIS_URL"] = url
                _wait_until_loaded(url)
            elif kind == "mongodb":
                uri = stack.enter_context(_services.mongo_server(where))
                if uri is None:
                    raise Skip("no MongoDB endpoint (neither nx-27017 nor CHECKPOINT_TEST_MONGODB_URI)")
                settings["CHECKPOINT_MONGO_URI"] = uri
                if external_mongodb():
                    database = settings["CHECKPOINT_MONGO_DATABASE"] = f"bench_recovery_{uuid.uuid4().hex[:12]}"
                    stack.callback(_drop_database, uri, database)
        yield settings


def _drop_database(uri: str, database: str) -> None:
    from pymongo import MongoClient

    with MongoClient(uri, serverSelectionTimeoutMS=10_000) as client:
        client.drop_database(database)


def store_settings(settings: dict[str, Any]) -> Any:
    from scrapy.settings import Settings

    from scrapy_checkpoint.settings import CheckpointSettings

    return CheckpointSettings.from_settings(Settings({**settings, "CHECKPOINT_ENABLED": True}))


def open_store(settings: dict[str, Any]) -> Any:
    from scrapy_checkpoint.stores import store_class

    checkpoint_settings = store_settings(settings)
    return store_class(checkpoint_settings).from_checkpoint_settings(checkpoint_settings)


# Building the state


def write_checkpoint(settings: dict[str, Any], synthetic: Synthetic, batch_size: int,
                     max_seconds: float, probe: bool = True, data_dir: Path | None = None) -> dict[str, Any]:
    """Write the synthetic checkpoint through the store's ``apply``; return its write rate and,
    with *probe*, how fast the store hands back the processed fingerprints (as a resume reads
    them) and, for MongoDB, its storage per URL (*data_dir*: where the stand-in keeps its files).
    Raises Skip, with the store's rates, when writing would take over *max_seconds*."""
    from scrapy_checkpoint.models import Checkpoint

    store = open_store({**settings, "CHECKPOINT_STORE_TIMEOUT": BUILD_TIMEOUT})
    store.open()
    try:
        ttl = store_settings(settings).ttl
        spider, site, job = synthetic.identity
        checkpoint = Checkpoint.new(ttl=ttl, spider=spider, site_domain=site, job_type=job)
        store.create(checkpoint)
        written, started = 0, time.perf_counter()
        for batch in synthetic.batches(batch_size):
            store.apply(checkpoint.checkpoint_id, batch, ttl)
            written += len(batch.discovered)
            elapsed = time.perf_counter() - started
            estimate = elapsed / written * synthetic.n
            if written < synthetic.n and elapsed >= PROBE_SECONDS and estimate > max_seconds:
                first, count, reading = read_probe(store, checkpoint.checkpoint_id)
                raise Skip(
                    f"writes {written / elapsed:,.0f} URLs/s through apply ({written:,} in {elapsed:.1f} s):"
                    f" ~{estimate:,.0f} s for {synthetic.n:,} > --max-build-seconds {max_seconds:g};"
                    f" reads processed fingerprints at {count / reading:,.0f}/s"
                    f" (first after {first:.2f} s, {count:,} in {reading:.2f} s)")
        seconds = time.perf_counter() - started
        stored = store.get(checkpoint.checkpoint_id).pipeline_data
        if (stored.urls_discovered, stored.urls_processed) != (synthetic.n, synthetic.p):
            raise AssertionError(f"the checkpoint holds {stored.urls_discovered} discovered,"
                                 f" {stored.urls_processed} processed")
        info = {"build_s": round(seconds, 2), "write_urls_per_s": round(synthetic.n / seconds)}
        if probe:
            first, count, reading = read_probe(store, checkpoint.checkpoint_id)
            info.update(read_first_s=round(first, 3), read_fps_per_s=round(count / reading))
            if store.name == "mongodb" and data_dir is not None:
                info["storage"] = mongodb_storage(store, checkpoint.checkpoint_id, data_dir)
    finally:
        store.close()
    return info


def mongodb_storage(store: Any, checkpoint_id: str, data_dir: Path) -> dict[str, Any]:
    """Bytes per processed and per pending URL of the checkpoint: its URL documents' share of
    the collection's storage plus an equal share per URL of the collection's indexes. From
    ``collStats`` and ``$bsonSize`` on a MongoDB; the nx-27017 stand-in has neither, so from
    its SQLite file (``dbstat``: the pages of the URL table and of its indexes), the table's
    pages shared out by the length of each row's ``_id`` and JSON text. (The stand-in answers
    ``collStats``, with no index sizes and a storage size of its own making.)"""
    import sqlite3

    from scrapy_checkpoint.stores.mongodb import URLS

    if store.db.client.admin.command("buildInfo").get("process") != "nx_27017":
        stats = store.db.command("collStats", URLS)
        sizes = {d["_id"]: (d["n"], d["bytes"]) for d in store.db[URLS].aggregate([
            {"$match": {"checkpoint_id": checkpoint_id}},
            {"$group": {"_id": "$processed", "n": {"$sum": 1}, "bytes": {"$sum": {"$bsonSize": "$$ROOT"}}}},
        ])}
        table, indexes, method = stats["storageSize"], stats["totalIndexSize"], "collStats storageSize, $bsonSize"
        data_bytes = stats["size"]
    else:
        files = list(data_dir.rglob(f"{store.database}.db"))
        if not files:
            return {"method": f"none: no collStats and no {store.database}.db under {data_dir}"}
        with contextlib.closing(sqlite3.connect(f"file:{files[0]}?mode=ro", uri=True)) as db:
            sizes = {bool(kind): (n, size) for kind, n, size in db.execute(
                f"SELECT json_extract(data, '$.processed'), count(*), sum(length(_id) + length(data))"
                f" FROM {URLS} WHERE json_extract(data, '$.checkpoint_id') = ? GROUP BY 1", (checkpoint_id,))}
            pages = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
        table = pages.get(URLS, 0)
        indexes = sum(size for name, size in pages.items() if name.startswith(f"idx_{URLS}_"))
        data_bytes = sum(size for _, size in sizes.values())
        method = "the stand-in's SQLite file (dbstat)"
    urls = sum(n for n, _ in sizes.values()) or 1
    per = {}
    for kind, name in ((True, "processed"), (False, "pending")):
        n, size = sizes.get(kind, (0, 0))
        if n:
            per[f"{name}_bytes"] = round(table * size / max(data_bytes, 1) / n + indexes / urls)
            per[f"{name}_document_bytes"] = round(size / n)
    return {**per, "urls": urls, "table_bytes": table, "index_bytes": indexes, "method": method}


def read_probe(store: Any, checkpoint_id: str) -> tuple[float, int, float]:
    """Seconds to the first processed fingerprint, how many, seconds to read them all."""
    first = None
    count = 0
    started = time.perf_counter()
    for _ in store.processed_fingerprints(checkpoint_id):
        if first is None:
            first = time.perf_counter() - started
        count += 1
    total = time.perf_counter() - started
    return first or total, count, max(total, 1e-9)


def build_checkpoint(name: str, synthetic: Synthetic, snapshot: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write the checkpoint once and snapshot the services' data into *snapshot* (left
    absent when MongoDB is external: then each measurement writes its own)."""
    from scrapy_checkpoint.settings import DEFAULTS

    if name == "hybrid":
        try:
            import scrapy_checkpoint.stores.hybrid  # noqa: F401
        except ImportError as exc:
            raise Skip(f"scrapy_checkpoint.stores.hybrid is not importable ({exc})") from None
    work = snapshot.parent / f"build-{name}"
    try:
        with services(SERVICES[name], work) as settings:
            info = write_checkpoint(settings, synthetic, args.batch, args.max_build_seconds, data_dir=work)
            # A store call of the crawl gives up after CHECKPOINT_STORE_TIMEOUT: a store that
            # answers the first page of fingerprints later cannot be resumed from at all.
            timeout = args.store_timeout or DEFAULTS["CHECKPOINT_STORE_TIMEOUT"]
            if info["read_first_s"] > timeout:
                raise Skip(
                    f"answers the processed-fingerprints query after {info['read_first_s']:.1f} s"
                    f" > CHECKPOINT_STORE_TIMEOUT {timeout:g} s: the resume would close with"
                    f" checkpoint_error (reads {info['read_fps_per_s']:,}/s once started; writes"
                    f" {info['write_urls_per_s']:,} URLs/s; --store-timeout raises the limit)")
            if "CHECKPOINT_REDIS_URL" in settings:
                import redis

                with redis.Redis.from_url(settings["CHECKPOINT_REDIS_URL"]) as client:
                    # The dump.rdb a fresh server loads; in the background, waited for: a
                    # SAVE of ten million URLs outlasts a socket timeout.
                    client.bgsave()
                    while (persistence := client.info("persistence"))["rdb_bgsave_in_progress"]:
                        time.sleep(0.5)
                    if persistence["rdb_last_bgsave_status"] != "ok":
                        raise RuntimeError(f"redis BGSAVE failed: {persistence}")
        if not ("mongodb" in SERVICES[name] and external_mongodb()):
            snapshot.mkdir(parents=True)
            for kind in SERVICES[name]:
                shutil.copytree(work / kind, snapshot / kind)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def build_jobdir(synthetic: Synthetic, snapshot: Path, seen: str) -> dict[str, Any]:
    """A JOBDIR as Scrapy's scheduler leaves it: processed requests only in requests.seen,
    pending ones in requests.seen (unless *seen* is "processed") and in the disk queue."""
    from scrapy.core.downloader import Downloader
    from scrapy.core.scheduler import Scheduler
    from scrapy.utils.test import get_crawler
    from shop.spiders.products import ProductsSpider

    jobdir = snapshot / "jobdir"
    crawler = get_crawler(ProductsSpider, {"CHECKPOINT_ENABLED": False, "JOBDIR": str(jobdir)})
    crawler.spider = ProductsSpider.from_crawler(crawler, base_url=synthetic.base_url)
    # DownloaderAwarePriorityQueue asks the downloader for a request's slot (its host).
    slots = types.SimpleNamespace(DOWNLOAD_SLOT=Downloader.DOWNLOAD_SLOT, ip_concurrency=False)
    crawler.engine = types.SimpleNamespace(downloader=types.SimpleNamespace(
        slots={}, get_slot_key=lambda request: Downloader.get_slot_key(slots, request)))
    started = time.perf_counter()
    scheduler = Scheduler.from_crawler(crawler)
    scheduler.open(crawler.spider)
    for i in range(synthetic.n):
        request = synthetic.request(i)
        if i < synthetic.p:
            scheduler.df.request_seen(request)
        elif seen == "processed":
            scheduler._dqpush(request)  # noqa: SLF001 - past the dupefilter on purpose
        elif not scheduler.enqueue_request(request):
            raise AssertionError(f"Scrapy's dupefilter refused {request}")
    queued = len(scheduler)
    scheduler.close("shutdown")
    seconds = time.perf_counter() - started
    if queued != synthetic.n - synthetic.p:
        raise AssertionError(f"JOBDIR queue holds {queued}, not {synthetic.n - synthetic.p}")
    return {"build_s": round(seconds, 2), "write_urls_per_s": round(synthetic.n / seconds),
            "requests_seen": synthetic.n if seen == "discovered" else synthetic.p}


# One crawl


def crawl(url: str, settings: dict[str, Any], log: Path, shop: _services.RecordingShop,
          timeout: float) -> dict[str, Any]:
    """Run the products spider; return its timings (epoch seconds), peak RSS and log facts."""
    command = demo_support.crawl_command(url, log.with_suffix(".jsonl"), {
        "LOG_LEVEL": "INFO", "LOG_FORMAT": LOG_FORMAT, **settings})
    shop.take()
    result_file = log.with_suffix(".rusage")
    with log.open("wb") as out:
        # Through a small helper: a child forked from this (large) process would inherit its
        # RSS high-water mark in ru_maxrss, which survives exec.
        process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _SPAWN, str(result_file), *command],
                                   cwd=demo_support.PROJECT_DIR, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        process.wait(timeout)
    except BaseException as exc:  # a timeout, or Ctrl-C (the crawl has its own session)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise RuntimeError(f"crawl still running after {timeout:g} s, killed; log: {log}") from None
        raise
    started, returncode, max_rss_kib = json.loads(result_file.read_text())
    text = log.read_text(errors="replace")
    if returncode != 0:
        raise RuntimeError(f"crawl exited with {returncode}:\n{text[-3000:]}")
    moments: dict[str, float] = {}
    stats: dict[str, int] = {}
    finish = None
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            created, message = float(match[1]), match[3]
            if message == "Spider opened":
                moments["opened"] = created
            elif message.startswith("Resuming checkpoint"):
                moments["resumed"] = created
            elif "processed requests read in" in message:
                moments["loaded"] = created  # read in the background since the resume began
            elif message.startswith("Resuming crawl ("):
                moments["resumed"] = created
                stats["jobdir/queued"] = int(re.search(r"\((\d+) requests", message)[1])
            continue
        stat = _STAT.search(line.strip())
        if stat:
            stats[stat[1]] = int(stat[2])
        if "'finish_reason':" in line:
            finish = line.split(":", 1)[1].strip(" ',")
    arrivals = shop.take()
    products = [(t, p) for t, p in arrivals if p.startswith("/product/")]
    return {
        "started": started, "moments": moments, "stats": stats, "finish_reason": finish,
        "paths": [p for _, p in arrivals], "first_product": products[0] if products else None,
        "max_rss_mb": max_rss_kib / 1024,  # KiB on Linux
        "log": text,
    }


def crawl_settings(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Settings of every crawl of *name*, resumed or baseline (which finds nothing to resume)."""
    settings: dict[str, Any] = {"CLOSESPIDER_PAGECOUNT": args.pagecount}
    if name == "jobdir":
        settings["CHECKPOINT_ENABLED"] = False
    else:
        settings["CHECKPOINT_RESUME"] = True
        if args.store_timeout:
            settings["CHECKPOINT_STORE_TIMEOUT"] = args.store_timeout
    return settings


def measure(name: str, synthetic: Synthetic, url: str, snapshot: Path, run_dir: Path,
            shop: _services.RecordingShop, args: argparse.Namespace) -> dict[str, Any]:
    """One resumed crawl on a fresh copy of the snapshot, then the lookup on that store."""
    extra = crawl_settings(name, args)
    with services(SERVICES[name], run_dir, seed=snapshot) as settings:
        if not snapshot.exists():  # external MongoDB: written afresh for each measurement
            write_checkpoint(settings, synthetic, args.batch, float("inf"), probe=False)
        result = crawl(url, {**settings, **extra}, run_dir / "resume.log", shop, args.crawl_timeout)
        _check_resumed(name, synthetic, result)
        if name != "jobdir":
            result["lookup"] = lookup(settings, synthetic.identity)
    first_t, first_path = result["first_product"]
    moments = result["moments"]
    out = {
        "first_request_s": first_t - result["started"],
        "startup_s": moments["opened"] - result["started"],
        "first_request_from_open_s": first_t - moments["opened"],
        "resume_s": moments["resumed"] - moments["opened"],
        "load_s": moments.get("loaded", moments["resumed"]) - moments["opened"],
        "max_rss_mb": result["max_rss_mb"],
        "first_path": first_path,
    }
    if "lookup" in result:
        out.update(result["lookup"])
    return out


def _check_resumed(name: str, synthetic: Synthetic, result: dict[str, Any]) -> None:
    """The crawl really resumed: it fetched a pending product first and not the start page."""
    problems = []
    if result["finish_reason"] != "closespider_pagecount":
        problems.append(f"finish reason {result['finish_reason']!r}")
    if result["first_product"] is None:
        problems.append("no product page was requested")
    else:
        product = int(result["first_product"][1].rsplit("/", 1)[1])
        if not synthetic.p <= product < synthetic.n:
            problems.append(f"first product {product} is not a pending one")
    if "/" in result["paths"]:
        problems.append("the start page was fetched again")
    for moment in ("opened", "resumed"):
        if moment not in result["moments"]:
            problems.append(f"no {moment!r} log line")
    stats = result["stats"]
    if name == "jobdir":
        if stats.get("jobdir/queued") != synthetic.n - synthetic.p:
            problems.append(f"Scrapy resumed {stats.get('jobdir/queued')} queued requests")
        if not stats.get("scheduler/dequeued/disk"):
            problems.append("nothing was dequeued from the disk queue")
    elif stats.get("checkpoint/restored/processed") != synthetic.p:
        problems.append(f"restored {stats.get('checkpoint/restored/processed')} processed fingerprints")
    if problems:
        raise RuntimeError(f"{name} did not resume as expected: {'; '.join(problems)}\n"
                           + result["log"][-3000:])


def measure_baseline(name: str, url: str, run_dir: Path, shop: _services.RecordingShop,
                     args: argparse.Namespace) -> float:
    """Peak RSS of the same spider starting afresh on an empty store (or empty JOBDIR)."""
    extra = crawl_settings(name, args)
    with services(SERVICES[name], run_dir) as settings:
        result = crawl(url, {**settings, **extra}, run_dir / "baseline.log", shop, args.crawl_timeout)
    if result["first_product"] is None:
        raise RuntimeError(f"{name} baseline crawl fetched no product:\n{result['log'][-3000:]}")
    return result["max_rss_mb"]


def lookup(settings: dict[str, Any], identity: tuple[str, str, str]) -> dict[str, float]:
    """Milliseconds of open, find_resumable and get, the way the extension calls them."""
    store = open_store(settings)
    started = time.perf_counter()
    store.open()
    opened = time.perf_counter()
    found = store.find_resumable(*identity)
    searched = time.perf_counter()
    if found is None:
        raise RuntimeError("find_resumable found no checkpoint")
    store.get(found.checkpoint_id)
    got = time.perf_counter()
    store.close()
    return {"open_ms": (opened - started) * 1e3, "find_ms": (searched - opened) * 1e3,
            "get_ms": (got - searched) * 1e3, "lookup_ms": (got - opened) * 1e3}


# A set of P fingerprints


_SET_PROBE = """
import gc, hashlib, sys, psutil
count, kind = int(sys.argv[1]), sys.argv[2]
process = psutil.Process()
gc.collect()
before = process.memory_info().rss
if kind == "hex":
    fps = {hashlib.sha1(i.to_bytes(8, "big")).hexdigest() for i in range(count)}
else:
    fps = {hashlib.sha1(i.to_bytes(8, "big")).digest() for i in range(count)}
gc.collect()
print(process.memory_info().rss - before)
"""


def fingerprint_set_mb(count: int, kind: str) -> float:
    """RSS growth of a fresh interpreter that builds a set of *count* fingerprints."""
    out = subprocess.run([sys.executable, "-c", _SET_PROBE, str(count), kind], check=True,
                         capture_output=True, text=True, timeout=600).stdout
    return int(out.strip()) / 2**20


# Main


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--discovered", type=int, default=1_000_000, help="URLs discovered (N)")
    parser.add_argument("--processed", type=int, default=900_000, help="URLs processed (P < N)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per contender (R)")
    parser.add_argument("--stores", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--batch", type=int, default=20_000, help="URLs per apply when building")
    parser.add_argument("--pagecount", type=int, default=50, help="CLOSESPIDER_PAGECOUNT of each crawl")
    parser.add_argument("--max-build-seconds", type=float, default=900.0,
                        help="skip a store whose write rate needs longer to build the checkpoint")
    parser.add_argument("--crawl-timeout", type=float, default=900.0)
    parser.add_argument("--store-timeout", type=float, default=None,
                        help="CHECKPOINT_STORE_TIMEOUT of the resumed crawls (default: the extension's)")
    parser.add_argument("--jobdir-seen", choices=("discovered", "processed"), default="discovered",
                        help="what JOBDIR's requests.seen holds: every request that passed the "
                             "dupefilter, as Scrapy writes it (default), or only processed ones")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.processed < args.discovered:
        parser.error("need 1 <= --processed < --discovered")
    names = [n for n in args.stores.split(",") if n]
    if unknown := set(names) - set(CONTENDERS):
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    report: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}
    try:
        with _services.recording_shop(args.discovered) as (shop, url):
            synthetic = Synthetic(url, args.discovered, args.processed)
            print(f"{args.discovered:,} fingerprints in {synthetic.fingerprint_seconds:.1f} s",
                  file=sys.stderr)
            builds: dict[str, dict[str, Any]] = {}
            for name in names:
                snapshot = workdir / "snapshots" / name
                try:
                    if name == "jobdir":
                        builds[name] = build_jobdir(synthetic, snapshot, args.jobdir_seen)
                    else:
                        builds[name] = build_checkpoint(name, synthetic, snapshot, args)
                except Skip as exc:
                    skipped[name] = str(exc)
                    print(f"{name}: skipped: {exc}", file=sys.stderr)
                    continue
                print(f"{name}: state built in {builds[name]['build_s']} s", file=sys.stderr)
            runs: dict[str, list[dict[str, Any]]] = {n: [] for n in builds}
            for round_ in range(args.rounds):
                order = [n for n in builds if n not in errors]
                rng.shuffle(order)
                for name in order:
                    snapshot = workdir / "snapshots" / name
                    run_dir = workdir / f"run-{name}-{round_}"
                    try:
                        # Resumed crawl and baseline in a random order too.
                        legs = ["resumed", "baseline"]
                        rng.shuffle(legs)
                        run: dict[str, Any] = {}
                        for leg in legs:
                            leg_dir = run_dir / leg
                            if leg == "resumed":
                                run.update(measure(name, synthetic, url, snapshot, leg_dir, shop, args))
                            else:
                                run["baseline_rss_mb"] = measure_baseline(name, url, leg_dir, shop, args)
                        run["extra_rss_mb"] = run["max_rss_mb"] - run["baseline_rss_mb"]
                        runs[name].append(run)
                    except Skip as exc:
                        skipped[name] = str(exc)
                        errors.pop(name, None)
                    except Exception as exc:  # noqa: BLE001 - reported, the others go on
                        errors[name] = f"{type(exc).__name__}: {exc}"
                        print(f"{name}: FAILED: {errors[name][:4000]}", file=sys.stderr)
                    finally:
                        shutil.rmtree(run_dir, ignore_errors=True)
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        dupefilter = {"hex_mb": fingerprint_set_mb(args.processed, "hex"),
                      "bytes_mb": fingerprint_set_mb(args.processed, "bytes")}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    keys = ("lookup_ms", "open_ms", "find_ms", "get_ms", "first_request_s", "first_request_from_open_s",
            "startup_s", "load_s", "max_rss_mb", "baseline_rss_mb", "extra_rss_mb")
    for name, measured in runs.items():
        if not measured or name in skipped:
            continue
        report[name] = {**builds[name], **{k: _round(_median(measured, k)) for k in keys},
                        "runs": [{k: _round(v) if isinstance(v, float) else v for k, v in r.items()}
                                 for r in measured]}
    print(f"\nResume of a crawl with {args.discovered:,} discovered / {args.processed:,} processed URLs,"
          f" {args.rounds} interleaved rounds (medians)")
    header = (f"{'store':<9}{'build s':>9}{'lookup ms':>11}{'1st req s':>11}{'from open s':>13}"
              f"{'load s':>9}{'peak RSS MB':>13}{'extra MB':>10}{'dupefilter MB':>15}")
    print(header)
    for name in names:
        row = report.get(name)
        if row is None:
            why = skipped.get(name) or errors.get(name, "not run").splitlines()[0]
            print(f"{name:<9}  skipped: {why}" if name in skipped else f"{name:<9}  FAILED: {why}")
            continue
        print(f"{name:<9}{row['build_s']:>9.1f}{_fmt(row['lookup_ms'], 11, 2)}"
              f"{_fmt(row['first_request_s'], 11, 2)}{_fmt(row['first_request_from_open_s'], 13, 2)}"
              f"{_fmt(row['load_s'], 9, 2)}{_fmt(row['max_rss_mb'], 13, 1)}"
              f"{_fmt(row['extra_rss_mb'], 10, 1)}{dupefilter['hex_mb']:>15.1f}")
    for name in names:
        storage = (report.get(name) or {}).get("storage")
        if storage and "processed_bytes" in storage:
            print(f"{name} storage per URL: processed {storage['processed_bytes']:,} B, pending"
                  f" {storage.get('pending_bytes', 0):,} B (documents alone {storage['processed_document_bytes']:,}"
                  f" and {storage.get('pending_document_bytes', 0):,} B; {storage['method']})")
    print(f"dupefilter MB: a set of {args.processed:,} 40-char hex fingerprints; the same as 20-byte "
          f"bytes (what RFPDupeFilter and the extension keep in Scrapy 2.19): {dupefilter['bytes_mb']:.1f} MB")
    print("BENCH_JSON " + json.dumps({
        "bench": "recovery", "discovered": args.discovered, "processed": args.processed,
        "rounds": args.rounds, "pagecount": args.pagecount, "batch": args.batch,
        "jobdir_seen": args.jobdir_seen,
        "dupefilter_mb": {k: round(v, 1) for k, v in dupefilter.items()},
        "results": report, "skipped": skipped, "errors": errors,
    }))
    return 1 if errors else 0


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
