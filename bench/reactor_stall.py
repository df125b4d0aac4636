"""The longest event-loop stall while checkpoints are flushed, per store, up and down.

What runs: Twisted's asyncio reactor, as in a Scrapy 2.19 crawl, and in it a real
``CheckpointExtension`` (built from a crawler by ``build_from_crawler``, opened through its
``spider_opened`` handler, so its store, checkpoint and flush looping call are the real
ones). Every ``--interval`` seconds (0.1) a batch of ``--events`` events (500; the
realistic mix of flush_latency.py: per product page one discovered request of about 300
pickled bytes, one processed fingerprint, one item count) is added to the extension's
pending batch and the extension's own trigger (``_added``) is pulled, so that what happens
next is the product's code path: ``_flush_soon`` -> ``_flush`` -> ``_take_batch`` ->
``run_in_thread(store.apply)``, with its error handling, retries and buffer limit. A
sampler task sleeps ``--tick`` seconds (1 ms) in a loop and records its lag (actual minus
expected wake-up); a stall of the loop shows as a lag of its length.

Why not a ``scrapy crawl`` of the demo shop: downloading and parsing would stall the loop
too (HTML parsing, the items), and the flush's share of a stall could not be told apart.
Here the only work on the loop is the extension's flush path and the sampler. What this
leaves out is the recording (``request_scheduled``, ``processed``...: fingerprinting and
pickling each request as it is scheduled), which bench/overhead.py measures in real crawls.
The injected events are built before the window and then frozen out of the garbage
collector (``gc.freeze``), so that the collector does not scan what a crawl would not hold.

States:
  up        the store answers.
  down      redis-server SIGKILLed / the nx-27017 stand-in stopped (Redis refuses the
            connection at once; pymongo waits CHECKPOINT_STORE_TIMEOUT for a server);
            SQLite: another connection holds the write lock (BEGIN IMMEDIATE) for the window.
  hung      the server is SIGSTOPped: connections open, nothing answers, every call times
            out after CHECKPOINT_STORE_TIMEOUT. Not for SQLite.
  blocking-control  the store up, but ``store.apply`` called directly on the loop thread,
            timed: the sampler must see a stall as long as the longest call, or the run
            fails (exit 1).
  idle      the sampler alone: the floor of the measurement.

The hybrid store's outage takes down ``--hybrid-outage`` (both servers by default).
Last line: ``BENCH_JSON {...}``.

    python bench/reactor_stall.py --duration 15 --rounds 3
    python bench/reactor_stall.py --stores sqlite,redis --states up,down --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scrapy.utils.reactor import install_reactor  # noqa: E402

install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")

import scrapy  # noqa: E402
from scrapy.utils.asyncio import run_in_thread  # noqa: E402
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future  # noqa: E402
from scrapy.utils.misc import build_from_crawler  # noqa: E402
from scrapy.utils.test import get_crawler  # noqa: E402

from _services import mongo_instance, redis_instance  # noqa: E402
from flush_latency import STORES, Workload, percentile, request_template  # noqa: E402
from scrapy_checkpoint import CheckpointExtension  # noqa: E402
from scrapy_checkpoint.models import Batch  # noqa: E402
from scrapy_checkpoint.stores.sqlite import FILENAME  # noqa: E402

STATES = ("up", "down", "hung")
#: Seconds to wait, past the store timeout, for a flush in flight when a window ends.
SETTLE = 10.0


class StallSpider(scrapy.Spider):
    name = "products"
    checkpoint_enabled = True
    checkpoint_site_domain = "shop.example.com"
    checkpoint_job_type = "stall"

    def parse_product(self, response: Any) -> None:
        pass


@dataclass
class Servers:
    redis: Any = None  # tests.redis_server.RedisServer
    mongo: Any = None  # tests.mongo_server.MongoServer


@dataclass
class Run:
    """One window: a store in a state (or the idle floor)."""

    store: str
    state: str
    note: str = ""
    skipped: str | None = None
    lags: list[float] = field(default_factory=list)
    applies: list[tuple[float, bool, int]] = field(default_factory=list)  # (seconds, ok, events)
    injected: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


class Outage:
    """Takes a store's backend down for a window and brings it back. Blocking: run in a thread."""

    def __init__(self, kind: str, state: str, servers: Servers, sqlite_path: Path, hybrid: str) -> None:
        self.kind, self.state, self.servers = kind, state, servers
        self.sqlite_path = sqlite_path
        self.targets: list[str] = []
        if kind == "hybrid":
            self.targets = ["redis", "mongodb"] if hybrid == "both" else [hybrid]
        elif kind in ("redis", "mongodb"):
            self.targets = [kind]
        self._lock: sqlite3.Connection | None = None

    def unsupported(self) -> str | None:
        if self.state == "up":
            return None
        if self.kind == "sqlite":
            return "no server to hang" if self.state == "hung" else None
        if "mongodb" in self.targets and self.servers.mongo.directory is None:
            return "the external MongoDB of CHECKPOINT_TEST_MONGODB_URI is not stopped by a benchmark"
        return None

    def note(self) -> str:
        if self.state == "up":
            return ""
        if self.kind == "sqlite":
            return "write lock held by another connection"
        if self.state == "hung":
            return " + ".join(self.targets) + " SIGSTOPped"
        down = {"redis": "redis-server SIGKILLed", "mongodb": "MongoDB stand-in stopped"}
        return " + ".join(down[t] for t in self.targets)

    def _pids(self) -> list[int]:
        pids = []
        if "redis" in self.targets:
            pids.append(self.servers.redis._process.pid)
        if "mongodb" in self.targets:
            pids.append(self.servers.mongo.process.pid)
        return pids

    def begin(self) -> None:
        if self.state == "up":
            return
        if self.kind == "sqlite":
            self._lock = sqlite3.connect(self.sqlite_path, isolation_level=None, check_same_thread=False)
            self._lock.execute("BEGIN IMMEDIATE")
        elif self.state == "hung":
            for pid in self._pids():
                os.kill(pid, signal.SIGSTOP)
        else:
            if "redis" in self.targets:
                self.servers.redis.stop()
            if "mongodb" in self.targets:
                self.servers.mongo.stop()

    def end(self) -> None:
        if self.state == "up":
            return
        if self.kind == "sqlite":
            if self._lock is not None:
                self._lock.execute("ROLLBACK")
                self._lock.close()
                self._lock = None
        elif self.state == "hung":
            for pid in self._pids():
                os.kill(pid, signal.SIGCONT)
        else:
            if "redis" in self.targets and not self.servers.redis.running:
                self.servers.redis.start()
            if "mongodb" in self.targets and self.servers.mongo.process is None:
                self.servers.mongo.start()


async def sample(tick: float, stop: asyncio.Event, lags: list[float]) -> None:
    clock = time.perf_counter
    while not stop.is_set():
        before = clock()
        await asyncio.sleep(tick)
        lags.append(max(0.0, clock() - before - tick))


def inject(extension: CheckpointExtension, events: Batch) -> None:
    """Add *events* to the extension's pending batch and pull its own flush trigger."""
    batch = extension._batch
    batch.discovered.extend(events.discovered)
    batch.processed.extend(events.processed)
    for item_type, count in events.item_counts.items():
        batch.item_counts[item_type] = batch.item_counts.get(item_type, 0) + count
    extension._events += len(events) - 1
    extension._added()


def timed_apply(store: Any, applies: list[tuple[float, bool, int]]) -> None:
    """Record how long each apply takes in its worker thread (the instance attribute shadows
    the method: the store itself is untouched)."""
    original = store.apply

    def apply(checkpoint_id: str, batch: Batch, ttl: float) -> None:
        started = time.perf_counter()
        try:
            original(checkpoint_id, batch, ttl)
        except BaseException:
            applies.append((time.perf_counter() - started, False, len(batch)))
            raise
        applies.append((time.perf_counter() - started, True, len(batch)))

    store.apply = apply


def crawler_settings(kind: str, args: argparse.Namespace, workdir: Path, servers: Servers, tag: str) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "CHECKPOINT_ENABLED": True,
        "CHECKPOINT_DIR": str(workdir / "sqlite"),
        "CHECKPOINT_STORE_TIMEOUT": args.store_timeout,
        "CHECKPOINT_BATCH_SIZE": args.events,
        "CHECKPOINT_BUFFER_LIMIT": args.buffer_limit,
    }
    if kind in ("redis", "hybrid"):
        settings["CHECKPOINT_REDIS_URL"] = f"{servers.redis.url}/0"
        settings["CHECKPOINT_REDIS_PREFIX"] = f"stall-{tag}-{kind}"
    if kind in ("mongodb", "hybrid"):
        settings["CHECKPOINT_MONGO_URI"] = servers.mongo.uri
        settings["CHECKPOINT_MONGO_DATABASE"] = f"stall_{tag}_{kind}"
    return settings


async def window(run: Run, args: argparse.Namespace, batches: list[Batch],
                 act: Any) -> None:
    """Sample the loop's lag while *act* is called with each batch, one every --interval."""
    loop = asyncio.get_running_loop()
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(sample(args.tick, stop, run.lags))
    try:
        start = loop.time()
        for number, batch in enumerate(batches):
            await asyncio.sleep(max(0.0, start + number * args.interval - loop.time()))
            act(batch)
            run.injected += len(batch)
        await asyncio.sleep(max(0.0, start + len(batches) * args.interval - loop.time()))
    finally:
        stop.set()
        await sampler
        gc.unfreeze()


async def run_store(run: Run, args: argparse.Namespace, workdir: Path, servers: Servers, tag: str,
                    template: bytes) -> None:
    kind, state = run.store, run.state
    control = state == "blocking-control"
    outage = Outage(kind, "up" if control else state, servers, workdir / "sqlite" / FILENAME, args.hybrid_outage)
    run.skipped = outage.unsupported()
    if run.skipped:
        return
    run.note = outage.note()
    crawler = get_crawler(StallSpider, crawler_settings(kind, args, workdir, servers, tag))
    crawler.spider = crawler._create_spider()
    extension = build_from_crawler(CheckpointExtension, crawler)
    store = extension.store
    await extension.spider_opened(crawler.spider)
    if extension.checkpoint is None or extension._uncreated:
        raise RuntimeError(f"{kind}: the checkpoint was not created; is the store up?")
    checkpoint_id = extension.checkpoint.checkpoint_id
    workload = Workload(template, args.lag)
    count = round(args.duration / args.interval)
    batches = [workload.batch(args.events) for _ in range(count)]
    if control:
        extension._loop.stop()  # nothing but the control writes
        seq = extension.checkpoint.seq
        ttl = extension.settings.ttl

        def act(events: Batch) -> None:
            nonlocal seq
            seq += 1
            events.seq = seq
            started = time.perf_counter()
            store.apply(checkpoint_id, events, ttl)  # on the loop thread, on purpose
            run.applies.append((time.perf_counter() - started, True, len(events)))
    else:
        timed_apply(store, run.applies)

        def act(events: Batch) -> None:
            inject(extension, events)

    await run_in_thread(outage.begin)
    try:
        await window(run, args, batches, act)
    finally:
        await run_in_thread(outage.end)
        if extension._loop is not None and extension._loop.running:
            extension._loop.stop()
        if extension._flushing is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(maybe_deferred_to_future(extension._flushing)),
                                       args.store_timeout * 2 + SETTLE)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run_in_thread(store.close), args.store_timeout * 3 + SETTLE)
    run.stats = {k: v for k, v in crawler.stats.get_stats().items() if k.startswith("checkpoint/")}


async def run_idle(run: Run, args: argparse.Namespace) -> None:
    await window(run, args, [Batch(seq=0)] * round(args.duration / args.interval), lambda _: None)
    run.injected = 0


def row(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {"store": run.store, "state": run.state}
    if run.note:
        out["note"] = run.note
    if run.skipped:
        out["skipped"] = run.skipped
        return out
    ms = [lag * 1000 for lag in run.lags]
    out.update(samples=len(ms), lag_p50_ms=round(statistics.median(ms), 3),
               lag_p99_ms=round(percentile(ms, 99), 3), lag_max_ms=round(max(ms), 3),
               stalls_over_10ms=sum(1 for v in ms if v > 10), injected_events=run.injected)
    if run.store != "idle":
        ok = [seconds * 1000 for seconds, good, _ in run.applies if good]
        failed = [seconds * 1000 for seconds, good, _ in run.applies if not good]
        out.update(applies_ok=len(ok), applies_failed=len(failed),
                   events_applied=sum(n for _, good, n in run.applies if good))
        if ok:
            out.update(apply_p50_ms=round(statistics.median(ok), 3), apply_max_ms=round(max(ok), 3))
        if failed:
            out.update(failed_apply_max_ms=round(max(failed), 3))
        out["stats"] = run.stats
    return out


def merge(runs: list[Run]) -> Run:
    """The rounds of one (store, state), pooled."""
    first = runs[0]
    merged = Run(first.store, first.state, first.note, first.skipped)
    for run in runs:
        merged.lags += run.lags
        merged.applies += run.applies
        merged.injected += run.injected
        for key, value in run.stats.items():
            if isinstance(value, (int, float)):
                merged.stats[key] = merged.stats.get(key, 0) + value
    return merged


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nevent-loop lag while flushing (ms): batches of {args.events} events every {args.interval:g} s "
          f"for {args.duration:g} s x {args.rounds} round(s), sampler tick {args.tick * 1000:g} ms, "
          f"CHECKPOINT_STORE_TIMEOUT {args.store_timeout:g} s, CHECKPOINT_BUFFER_LIMIT {args.buffer_limit:,}, "
          "GIL switch interval "
          f"{sys.getswitchinterval() * 1000:g} ms")
    print("lag: how late a 1 ms sleep woke (p50/p99/max, and wake-ups later than 10 ms); apply: the "
          "extension's store.apply calls in their worker thread (or on the loop, for blocking-control)")
    print(f"{'store':<9}{'state':<18}{'samples':>8}{'p50':>8}{'p99':>8}{'max':>9}{'>10ms':>7}"
          f"{'applies ok/failed':>19}{'ok p50':>10}{'ok max':>10}{'failed max':>12}  note")
    for r in rows:
        head = f"{r['store']:<9}{r['state']:<18}"
        if "skipped" in r:
            print(f"{head}  n/a ({r['skipped']})")
            continue
        applies = f"{r.get('applies_ok', '-')}/{r.get('applies_failed', '-')}" if r["store"] != "idle" else "-"
        ap50 = f"{r['apply_p50_ms']:,.1f}" if "apply_p50_ms" in r else "-"
        amax = f"{r['apply_max_ms']:,.1f}" if "apply_max_ms" in r else "-"
        fmax = f"{r['failed_apply_max_ms']:,.1f}" if "failed_apply_max_ms" in r else "-"
        note = r.get("note", "")
        if r.get("stats", {}).get("checkpoint/dropped/requests"):
            note += f"; dropped {r['stats']['checkpoint/dropped/requests']:,} requests (buffer limit)"
        if "control_caught" in r:
            note += "; sampler caught the longest call" if r["control_caught"] else "; SAMPLER MISSED IT"
        print(f"{head}{r['samples']:>8,}{r['lag_p50_ms']:>8.2f}{r['lag_p99_ms']:>8.2f}{r['lag_max_ms']:>9.2f}"
              f"{r['stalls_over_10ms']:>7}{applies:>19}{ap50:>10}{amax:>10}{fmax:>12}  {note.lstrip('; ')}")


async def main_async(args: argparse.Namespace, servers: Servers, workdir: Path) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    template = request_template()
    tag = uuid.uuid4().hex[:8]
    plan: list[tuple[str, str]] = [("idle", "-")]
    for kind in args.store_list:
        plan += [(kind, state) for state in args.state_list]
        if args.control:
            plan.append((kind, "blocking-control"))
    results: dict[tuple[str, str], list[Run]] = {key: [] for key in plan}
    for round_ in range(args.rounds):
        order = list(plan)
        rng.shuffle(order)
        for kind, state in order:
            run = Run(kind, state)
            print(f"round {round_ + 1}/{args.rounds}: {kind} {state}", file=sys.stderr)
            if kind == "idle":
                await run_idle(run, args)
            else:
                await run_store(run, args, workdir, servers, tag, template)
            results[(kind, state)].append(run)
    rows = []
    for key in plan:
        r = row(merge(results[key]))
        if key[1] == "blocking-control" and "skipped" not in r:
            longest = r.get("apply_max_ms", 0.0)
            r["control_caught"] = r["lag_max_ms"] >= 0.9 * longest
        rows.append(r)
    return rows


def unavailable(kind: str, servers: Servers) -> str | None:
    if kind in ("redis", "hybrid") and servers.redis is None:
        return "no redis-server"
    if kind in ("mongodb", "hybrid") and servers.mongo is None:
        return "no MongoDB endpoint"
    if kind == "hybrid":
        try:
            import scrapy_checkpoint.stores.hybrid  # noqa: F401
        except ImportError as exc:
            return f"hybrid store not importable: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated subset of " + ",".join(STORES))
    parser.add_argument("--states", default=",".join(STATES), help="comma-separated subset of " + ",".join(STATES))
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="skip the blocking-control runs")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=1, help="windows per (store, state), interleaved")
    parser.add_argument("--events", type=int, default=500, help="events per injected batch (and CHECKPOINT_BATCH_SIZE)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between batches")
    parser.add_argument("--tick", type=float, default=0.001, help="sampler sleep, seconds")
    parser.add_argument("--store-timeout", type=float, default=5.0, help="CHECKPOINT_STORE_TIMEOUT")
    parser.add_argument("--buffer-limit", type=int, default=100_000,
                        help="CHECKPOINT_BUFFER_LIMIT (lower it to reach the dropping path in a short window)")
    parser.add_argument("--lag", type=int, default=1000, help="pages between a URL's discovery and processing")
    parser.add_argument("--hybrid-outage", choices=("both", "redis", "mongodb"), default="both",
                        help="what the hybrid store's down and hung states take down")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given (the log is there)")
    args = parser.parse_args(argv)
    args.store_list = [k for k in args.stores.split(",") if k]
    args.state_list = [s for s in args.states.split(",") if s]
    for kind in args.store_list:
        if kind not in STORES:
            parser.error(f"unknown store {kind!r}; choose from {','.join(STORES)}")
    for state in args.state_list:
        if state not in STATES:
            parser.error(f"unknown state {state!r}; choose from {','.join(STATES)}")
    if {"down", "hung"} & set(args.state_list) and args.duration < 2 * args.store_timeout:
        print(f"note: --duration {args.duration:g} s is under twice --store-timeout {args.store_timeout:g} s: "
              "the down and hung windows end before calls have timed out more than once", file=sys.stderr)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-stall-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log = logging.FileHandler(workdir / "reactor_stall.log")
    log.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[log], force=True)
    from twisted.internet import reactor

    outcome: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            kinds = set(args.store_list)
            (workdir / "redis").mkdir(exist_ok=True)
            servers = Servers(
                stack.enter_context(redis_instance(workdir / "redis")) if kinds & {"redis", "hybrid"} else None,
                stack.enter_context(mongo_instance(workdir)) if kinds & {"mongodb", "hybrid"} else None,
            )
            skipped = {kind: unavailable(kind, servers) for kind in args.store_list}
            args.store_list = [k for k in args.store_list if not skipped[k]]

            def done(result: Any) -> None:
                outcome["result"] = result
                reactor.stop()

            def failed(failure: Any) -> None:
                outcome["error"] = failure
                reactor.stop()

            deferred = deferred_from_coro(main_async(args, servers, workdir))
            deferred.addCallbacks(done, failed)
            reactor.run(installSignalHandlers=False)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if "error" in outcome:
        print("".join(traceback.format_exception(outcome["error"].value)), file=sys.stderr)
        return 1
    rows = outcome["result"]
    rows += [{"store": kind, "state": "*", "skipped": reason} for kind, reason in skipped.items() if reason]
    print_table(rows, args)
    caught = all(r.get("control_caught", True) for r in rows)
    print("BENCH_JSON " + json.dumps({
        "bench": "reactor_stall", "duration": args.duration, "rounds": args.rounds, "events": args.events,
        "interval": args.interval, "tick": args.tick, "store_timeout": args.store_timeout,
        "buffer_limit": args.buffer_limit, "switch_interval": sys.getswitchinterval(), "hybrid_outage": args.hybrid_outage,
        "controls_caught": caught, "rows": rows,
    }, default=str))
    if not caught:
        print("a blocking-control stall was not caught by the sampler: the measurement is broken",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
