"""scrapy-redis queues that lease what they pop: real scrapy-redis classes on a real redis-server."""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager

import pytest
import redis
from scrapy import Request, Spider
from scrapy.utils.test import get_crawler

from scrapy_checkpoint import Addon
from scrapy_checkpoint.models import CheckpointStatus
from scrapy_checkpoint.distributed import (
    LEASE_META,
    LeasedFifoQueue,
    LeasedLifoQueue,
    LeasedPriorityQueue,
    LeasedRFPDupeFilter,
)

#: Seconds a test waits for a state (a lease to expire) before it fails.
PATIENCE = 30.0


class ShopSpider(Spider):
    name = "shop"
    checkpoint_enabled = True


@pytest.fixture
def server(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def make_queue(server, cls=LeasedPriorityQueue, lease_ms=60_000):
    """A queue as one worker's scheduler opens it, leasing as if a checkpoint acknowledged
    its leases."""
    crawler = get_crawler(ShopSpider)
    spider = crawler._create_spider()
    queue = cls(server, spider, "%(spider)s:requests")
    queue.leasing, queue.lease_ms = True, lease_ms
    return queue


def wait_until_expired(queue):
    """Until every lease of *queue* is past its deadline, on the Redis server's clock."""
    deadline = time.monotonic() + PATIENCE
    while True:
        seconds, micros = queue.server.time()
        now_ms = seconds * 1000 + micros // 1000
        if not queue.server.zcount(queue.lease_keys[0], f"({now_ms}", "+inf"):
            return
        assert time.monotonic() < deadline, "the lease did not expire"
        time.sleep(0.01)


def test_pop_leases_and_ack_releases(server):
    queue = make_queue(server)
    for n in range(3):
        queue.push(Request(f"http://shop.test/p/{n}"))
    request = queue.pop()
    token = request.meta[LEASE_META]
    assert token.startswith(queue.worker + "/")
    assert (len(queue), queue.outstanding(), queue.held) == (2, 1, {token})
    assert server.hget(f"{queue.key}:lease:requests", token) is not None
    assert queue.ack([token]) == []
    assert (len(queue), queue.outstanding(), queue.held) == (2, 0, set())
    assert server.hlen(f"{queue.key}:lease:requests") == 0


def test_a_lease_after_redis_restarted_empty_never_takes_a_held_token(server):
    """A worker still holds the lease of a page popped before Redis lost everything: the
    lease of the next page it pops has another token, so that renewing or releasing one never
    touches the other."""
    queue = make_queue(server)
    queue.push(Request("http://shop.test/p/1"))
    before = queue.pop().meta[LEASE_META]
    server.flushdb()
    queue.push(Request("http://shop.test/p/2"))
    after = queue.pop().meta[LEASE_META]
    assert after != before and queue.held == {before, after}
    assert queue.confirm([before]) == [before]  # lost with Redis's data: fenced, not renewed
    assert queue.ack([after]) == []


def test_expired_lease_goes_to_another_worker_and_fences_the_first(server):
    dead, alive = make_queue(server, lease_ms=1), make_queue(server)
    events = []
    alive.counted = lambda event, count: events.append((event, count))
    dead.push(Request("http://shop.test/p/1"))
    first = dead.pop()
    wait_until_expired(dead)
    # Expired is not over: until a pop takes it back, no worker may close for want of work.
    assert alive.outstanding() == 1
    again = alive.pop()
    assert again.url == first.url and again.meta[LEASE_META] != first.meta[LEASE_META]
    assert events == [("reclaimed", 1), ("granted", 1)] and len(alive) == 0
    # The first worker comes back: its lease is gone, and it is told so.
    assert dead.ack([first.meta[LEASE_META]]) == [first.meta[LEASE_META]]
    assert dead.renew() == []  # the lost lease is no longer held
    assert alive.ack([again.meta[LEASE_META]]) == []


def test_renew_pushes_the_deadline_and_reports_lost_leases(server):
    queue = make_queue(server, lease_ms=60_000)
    queue.push(Request("http://shop.test/p/1"))
    queue.push(Request("http://shop.test/p/2"))
    kept, lost = queue.pop(), queue.pop()
    deadlines = f"{queue.key}:lease:deadlines"
    before = server.zscore(deadlines, kept.meta[LEASE_META])
    server.zrem(deadlines, lost.meta[LEASE_META])  # as another worker's reclaim would
    time.sleep(0.002)
    assert queue.renew() == [lost.meta[LEASE_META]]
    assert server.zscore(deadlines, kept.meta[LEASE_META]) > before
    assert server.zscore(deadlines, lost.meta[LEASE_META]) is None  # not leased again
    assert queue.held == {kept.meta[LEASE_META]}


def test_reclaimed_request_keeps_its_priority(server):
    queue = make_queue(server, lease_ms=1)
    queue.push(Request("http://shop.test/low", priority=1))
    queue.push(Request("http://shop.test/high", priority=5))
    assert queue.pop().url == "http://shop.test/high"
    wait_until_expired(queue)
    queue.lease_ms = 60_000
    assert [queue.pop().url, queue.pop().url] == ["http://shop.test/high", "http://shop.test/low"]


@pytest.mark.parametrize("cls", [LeasedFifoQueue, LeasedLifoQueue])
def test_reclaimed_request_is_popped_next(server, cls):
    queue = make_queue(server, cls, lease_ms=1)
    for n in range(3):
        queue.push(Request(f"http://shop.test/p/{n}"))
    first = queue.pop()
    wait_until_expired(queue)
    queue.lease_ms = 60_000
    assert queue.pop().url == first.url
    assert len(queue) == 2


def test_without_a_checkpoint_the_queue_is_scrapy_redis_own(server):
    crawler = get_crawler(ShopSpider)
    queue = LeasedPriorityQueue(server, crawler._create_spider(), "%(spider)s:requests")
    assert not queue.leasing
    queue.push(Request("http://shop.test/p/1"))
    request = queue.pop()
    assert LEASE_META not in request.meta and queue.outstanding() == 0


def filtered_scheduler(server, cls=LeasedPriorityQueue):
    """scrapy-redis's own Scheduler, with a leasing queue and the dupefilter that leaves
    the mark of a request seen to it (as the add-on sets them up)."""
    from scrapy_redis.scheduler import Scheduler

    queue = make_queue(server, cls)
    dupefilter = LeasedRFPDupeFilter(server, "shop:dupefilter")
    dupefilter.queue, queue.dupefilter = queue, dupefilter
    scheduler = Scheduler(server, persist=True, dupefilter=dupefilter)
    scheduler.spider, scheduler.queue = queue.spider, queue
    return scheduler


@pytest.mark.parametrize("cls", [LeasedPriorityQueue, LeasedFifoQueue, LeasedLifoQueue])
def test_a_request_is_marked_seen_in_the_step_that_queues_it(server, cls):
    scheduler = filtered_scheduler(server, cls)
    request = Request("http://shop.test/p/1")
    # Looking marks nothing: a worker killed after the dupefilter looked leaves no mark.
    assert not scheduler.df.request_seen(request) and not scheduler.df.request_seen(request)
    assert server.scard("shop:dupefilter") == 0
    fingerprint, computed = scheduler.df.request_fingerprint, []
    scheduler.df.request_fingerprint = lambda r: computed.append(r) or fingerprint(r)
    assert scheduler.enqueue_request(request)
    assert len(computed) == 1  # the look and the push share it
    assert (server.scard("shop:dupefilter"), len(scheduler.queue)) == (1, 1)
    # Seen: the scheduler refuses it (request_dropped), as with scrapy-redis's filter.
    assert not scheduler.enqueue_request(Request("http://shop.test/p/1"))
    assert scheduler.enqueue_request(Request("http://shop.test/p/1", dont_filter=True))
    assert len(scheduler.queue) == 2
    assert [scheduler.next_request().url for _ in range(2)] == ["http://shop.test/p/1"] * 2


def test_a_request_queued_by_another_worker_meanwhile_is_not_queued_twice(server):
    one, other = filtered_scheduler(server), filtered_scheduler(server)
    request = Request("http://shop.test/p/1", priority=3)
    assert not one.df.request_seen(request)  # one worker looks; the other queues it first
    assert other.enqueue_request(Request("http://shop.test/p/1"))
    one.queue.push(request)
    assert len(one.queue) == 1
    assert server.zrange(one.queue.key, 0, -1, withscores=True)[0][1] == 0  # the other's priority


def test_requests_yielded_while_redis_is_down_wait_and_are_queued_in_order(redis_server, server):
    scheduler = filtered_scheduler(server, LeasedFifoQueue)
    queue, events = scheduler.queue, []
    queue.unreachable = lambda exc: events.append(type(exc).__name__)
    urls = [f"http://shop.test/p/{n}" for n in range(3)]
    redis_server.stop()
    try:
        # Scrapy would drop a request its scheduler raised on: the queue keeps it instead.
        assert all(scheduler.enqueue_request(Request(url)) for url in urls)
        assert [r.url for r in queue.unpushed] == urls and events[0] == "ConnectionError"
        assert queue.pop() is None and len(queue) == 0  # nothing to do for now, no traceback
        with pytest.raises(redis.ConnectionError):
            queue.push_pending()
        assert len(queue.unpushed) == 3
    finally:
        redis_server.start()
    queue.push_pending()
    assert queue.unpushed == [] and [queue.pop().url for _ in urls] == urls
    assert not scheduler.enqueue_request(Request(urls[0]))  # marked seen as it was queued


def test_without_a_checkpoint_the_dupefilter_is_scrapy_redis_own(server):
    dupefilter = LeasedRFPDupeFilter(server, "shop:dupefilter")
    assert not dupefilter.request_seen(Request("http://shop.test/p/1"))
    assert dupefilter.request_seen(Request("http://shop.test/p/1"))


def test_clear_removes_the_leases_too(server):
    queue = make_queue(server)
    queue.push(Request("http://shop.test/p/1"))
    queue.push(Request("http://shop.test/p/2"))
    queue.pop()
    queue.clear()
    assert server.keys(f"{queue.key}*") == []


@pytest.mark.parametrize(
    ("configured", "leased"),
    [
        (None, "scrapy_checkpoint.distributed.LeasedPriorityQueue"),
        ("scrapy_redis.queue.FifoQueue", "scrapy_checkpoint.distributed.LeasedFifoQueue"),
        ("scrapy_redis.queue.SpiderStack", "scrapy_checkpoint.distributed.LeasedLifoQueue"),
        ("myproject.queues.Custom", "myproject.queues.Custom"),
    ],
)
def test_addon_leases_scrapy_redis_queues(configured, leased):
    settings = {"ADDONS": {Addon: 100}, "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
                "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter"}
    if configured:
        settings["SCHEDULER_QUEUE_CLASS"] = configured
    crawler = get_crawler(ShopSpider, settings)
    crawler._apply_settings()
    assert crawler.settings["SCHEDULER_QUEUE_CLASS"] == leased
    assert crawler.settings["DUPEFILTER_CLASS"] == "scrapy_checkpoint.distributed.LeasedRFPDupeFilter"


def test_addon_keeps_a_project_dupefilter():
    settings = {"ADDONS": {Addon: 100}, "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
                "DUPEFILTER_CLASS": "myproject.filters.Custom"}
    crawler = get_crawler(ShopSpider, settings)
    crawler._apply_settings()
    assert crawler.settings["DUPEFILTER_CLASS"] == "myproject.filters.Custom"


def test_shared_scheduler_needs_a_shared_store():
    from scrapy.settings import Settings

    from scrapy_checkpoint.settings import CheckpointSettings

    settings = Settings({"CHECKPOINT_ENABLED": True, "SCHEDULER": "scrapy_redis.scheduler.Scheduler"})
    with pytest.raises(ValueError, match=r"CHECKPOINT_REDIS_URL \(None\) must be set when SCHEDULER is "
                                         r"scrapy_redis\.scheduler\.Scheduler"):
        CheckpointSettings.from_settings(settings)


# One checkpoint shared by the workers: the Redis store's side of it (the batches of several
# writers are in tests/test_stores.py, SharedWriters, for every store that holds them).


@pytest.fixture
def store(redis_url):
    from scrapy_checkpoint.stores.redis import RedisCheckpointStore

    store = RedisCheckpointStore(redis_url)
    store.open()
    yield store
    store.close()


def test_workers_of_a_job_claim_one_checkpoint(store):
    from tests import new_checkpoint

    job = ("products", "shop.test", "product_catalog")
    assert store.claim(*job, "a", None, 60) == ("a", "created")
    # A worker starting before the first has written the record joins it all the same.
    assert store.claim(*job, "b", None, 60) == ("a", "joined")
    assert store.claim("products", "other.test", "product_catalog", "c", None, 60) == ("c", "created")
    first = new_checkpoint(checkpoint_id="a")
    store.create(first)
    assert store.claim(*job, "d", "old", 60) == ("a", "joined")  # live workers come first
    first.status = CheckpointStatus.COMPLETED
    store.create(first)
    assert store.claim(*job, "e", None, 60) == ("e", "created")  # a finished crawl is not joined


def test_without_a_live_worker_the_claim_lapses_and_can_be_taken_over(store):
    from tests import new_checkpoint

    job = ("products", "shop.test", "product_catalog")
    checkpoint = new_checkpoint(checkpoint_id="a")
    store.create(checkpoint)
    assert store.claim(*job, "a", None, 0.001) == ("a", "created")
    deadline = time.monotonic() + PATIENCE
    while store.client.exists(store._pointer(*job)):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert store.claim(*job, "b", "a", 60) == ("a", "taken")
    # Beats keep it: a worker starting now joins.
    assert store.beat(checkpoint, "w1", {"leases": 2}, 60, 3600)
    assert store.claim(*job, "c", None, 60) == ("a", "joined")
    (info,) = store.workers("a").values()
    assert info["leases"] == 2 and 0 <= info["age"] < 5
    # Another checkpoint took the job's claim: a worker of the old one is told so.
    store.client.set(store._pointer(*job), "z")
    assert not store.beat(checkpoint, "w1", {"leases": 0}, 60, 3600)


def test_runs_of_live_workers_side_by_side_are_not_killed():
    from scrapy_checkpoint.analytics import CheckpointStats
    from scrapy_checkpoint.commands.checkpoint import _alive_runs
    from scrapy_checkpoint.models import live_workers
    from tests import new_checkpoint, run

    checkpoint = new_checkpoint(runs=[run(1), run(2), run(3)])
    workers = {"w1": {"run": 1, "status": "running", "age": 1.0},
               "w2": {"run": 2, "status": "running", "age": 90.0},  # not seen for long: dead
               "w3": {"run": 3, "status": "running", "age": 0.5}}
    alive = _alive_runs(workers, live_workers(workers, 60.0))
    assert alive == {1: True, 2: False, 3: True}
    stats = CheckpointStats()
    stats.add(checkpoint, None, alive)
    assert stats.killed == 1
    assert [r.outcome(last=r.number == 3, alive=alive[r.number]) for r in checkpoint.runs] == [
        "running", "killed", "running"]


# End to end: scrapy-redis workers, real `scrapy crawl` processes.

PRODUCTS = 300
#: Short, so that a dead worker's leases come back soon; several heartbeats long, so that a
#: live worker on a loaded machine keeps its own.
LEASE_TIMEOUT = 4.0


def worker_command(url, redis_url, items_file, **extra):
    import demo_support

    settings = {
        "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
        "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
        "SCHEDULER_PERSIST": True,
        "REDIS_URL": redis_url,
        "CHECKPOINT_REDIS_URL": redis_url,
        "CHECKPOINT_LEASE_TIMEOUT": LEASE_TIMEOUT,
        "CHECKPOINT_FLUSH_INTERVAL": 0.5,
        "CHECKPOINT_BATCH_SIZE": 100,
        "CONCURRENT_REQUESTS": 4,
        **extra,
    }
    return demo_support.crawl_command(url, items_file, settings)


class Workers:
    """``scrapy crawl products`` workers on one scrapy-redis queue, each with its own feed
    ``items-<n>.jsonl`` and log ``worker-<n>.log`` in *directory*; their checkpoint in Redis,
    or in the hybrid store with *mongo* (uri, database)."""

    def __init__(self, directory, url, redis_url, mongo=None):
        self.directory, self.url, self.redis_url = directory, url, redis_url
        self.store_settings = {"CHECKPOINT_REDIS_URL": redis_url}
        if mongo is not None:
            self.store_settings.update(CHECKPOINT_MONGO_URI=mongo[0], CHECKPOINT_MONGO_DATABASE=mongo[1])
        self.processes = []
        #: The feed of each worker: items-<n>.jsonl, n its own number or the one it replaced.
        self.feeds = []

    def start(self, count, replacing=None, **settings):
        """Start *count* workers, or one with the feed of worker *replacing* (the same
        command again)."""
        import subprocess

        import demo_support

        for _ in range(count):
            n = len(self.processes)
            feed = self.directory / f"items-{n if replacing is None else replacing}.jsonl"
            with open(self.directory / f"worker-{n}.log", "wb") as out:
                self.processes.append(subprocess.Popen(
                    worker_command(self.url, self.redis_url, feed, **self.store_settings, **settings),
                    cwd=demo_support.PROJECT_DIR, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                ))
            self.feeds.append(feed)

    def items(self, n):
        import demo_support

        return demo_support.count_lines(self.feeds[n])

    def wait_for_items(self, ns, count):
        """Until the feeds of workers *ns* hold *count* items together."""
        deadline = time.monotonic() + 120
        while sum(self.items(n) for n in ns) < count:
            assert all(self.processes[n].poll() is None for n in ns), "a worker ended too soon"
            assert time.monotonic() < deadline, "the workers scraped too little"
            time.sleep(0.02)

    def leases_of(self, n, server):
        mark = f":{self.processes[n].pid}:".encode()
        return [token for token in server.zrange("products:requests:lease:deadlines", 0, -1) if mark in token]

    def stop_one_holding_leases(self, server):
        """SIGSTOP a worker that has scraped a few items (the crawl is surely under way in it)
        at a moment it holds leases; return its number. Stopped so, it keeps the crawl from
        ending: the others wait for its leases."""
        import signal

        deadline = time.monotonic() + PATIENCE
        while True:
            for n in range(len(self.processes)):
                if self.processes[n].poll() is not None or self.items(n) < 5:
                    continue
                self.processes[n].send_signal(signal.SIGSTOP)
                if self.leases_of(n, server):
                    return n
                self.processes[n].send_signal(signal.SIGCONT)
            assert time.monotonic() < deadline, "no worker held a lease"
            assert any(p.poll() is None for p in self.processes), "the crawl ended first"
            time.sleep(0.01)

    def kill(self, ns):
        for n in ns:
            self.processes[n].kill()
            self.processes[n].wait()

    def finish(self, ns):
        for n in ns:
            assert self.processes[n].wait(timeout=180) == 0, self.log(n)[-3000:]

    def log(self, n):
        return (self.directory / f"worker-{n}.log").read_text()

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def checkpoint_of(self, n):
        """The id of the checkpoint worker *n* wrote to, and the worker's id."""
        found = re.search(r"Checkpoint (\S+) started in .+? by worker (\S+);", self.log(n))
        if found:
            return found.groups()
        worker, checkpoint_id = re.search(r"Worker (\S+) (?:joined|took over) checkpoint (\S+) ", self.log(n)).groups()
        return checkpoint_id, worker

    @contextmanager
    def store(self):
        """The workers' checkpoint store, open."""
        from scrapy.settings import Settings

        from scrapy_checkpoint.settings import CheckpointSettings
        from scrapy_checkpoint.stores import store_class

        settings = CheckpointSettings.from_settings(Settings({"CHECKPOINT_ENABLED": True, **self.store_settings}))
        store = store_class(settings).from_checkpoint_settings(settings)
        store.open()
        try:
            yield store
        finally:
            store.close()

    def checkpoint(self):
        """The checkpoint every worker wrote to, and its workers; in the hybrid store, what
        MongoDB holds (Redis's copy may have been left behind at a kill between the two
        writes of a batch, and is stale from then on)."""
        (checkpoint_id,) = {self.checkpoint_of(n)[0] for n in range(len(self.processes))}
        with self.store() as store:
            if store.name == "hybrid":
                copies = [s.get(checkpoint_id) for s in (store, store.mongodb.store)]
                read, mongodb_copy = (
                    (c.seq, c.status, c.pipeline_data.model_dump(exclude={"outputs"}), [r.number for r in c.runs],
                     sorted(json.dumps(o, sort_keys=True) for o in c.pipeline_data.outputs)) for c in copies)
                assert read == mongodb_copy
                redis_copy = store.redis.store.get(checkpoint_id)  # None: Redis restarted empty
                assert redis_copy is None or redis_copy.seq <= mongodb_copy[0]
            return store.get(checkpoint_id), store.workers(checkpoint_id)

    def saved_feed(self, n):
        """What a killed worker's feed holds up to the length its checkpoint saved: a tail
        after it belongs to pages it did not save, which other workers did again."""
        checkpoint, _ = self.checkpoint()
        worker = self.checkpoint_of(n)[1]
        saved = [entry["length"] for entry in checkpoint.pipeline_data.outputs if entry["worker"] == worker]
        # None: it was killed before its first batch was saved (and all its pages are redone).
        return self.feeds[n].read_bytes()[: saved[0] if saved else 0]

    def check_shared_checkpoint(self, killed):
        """The workers' one checkpoint completed with nothing pending; it lists them all, the
        killed ones as last seen running."""
        checkpoint, workers = self.checkpoint()
        data = checkpoint.pipeline_data
        assert checkpoint.status is CheckpointStatus.COMPLETED, checkpoint
        assert data.urls_discovered == data.urls_processed > PRODUCTS, data
        assert data.extraction_results.items_scraped >= PRODUCTS
        statuses = {workers[self.checkpoint_of(n)[1]]["status"] for n in killed}
        assert statuses <= {"running"}, workers
        closed = [n for n in range(len(self.processes)) if n not in killed]
        assert {workers[self.checkpoint_of(n)[1]]["status"] for n in closed} == {"finished"}, workers
        assert len({run.number for run in checkpoint.runs}) == len(self.processes)
        # `scrapy checkpoint show` lists the workers; the runs of the killed ones were killed.
        from tests.test_commands import scrapy_checkpoint

        extra = {**self.store_settings, "CHECKPOINT_LEASE_TIMEOUT": LEASE_TIMEOUT}
        shown = scrapy_checkpoint(self.directory, "show", checkpoint.checkpoint_id, "--json", extra=extra).json()
        assert {w["worker"]: w["alive"] for w in shown["workers"]} == {
            self.checkpoint_of(n)[1]: False for n in range(len(self.processes))}
        killed_runs = {workers[self.checkpoint_of(n)[1]]["run"] for n in killed}
        assert {r["number"]: r["outcome"] for r in shown["runs"]} == {
            r.number: "killed" if r.number in killed_runs else "finished" for r in checkpoint.runs}
        text = scrapy_checkpoint(self.directory, "show", checkpoint.checkpoint_id, extra=extra).stdout
        assert f"{len(self.processes)} workers, 0 alive" in text, text
        assert text.count(" gone ") == len(killed), text

    def summary(self, killed, shop_log, products):
        import demo_support

        last = {feed: n for n, feed in enumerate(self.feeds)}  # a feed's last writer
        merged = self.directory / "all.jsonl"
        merged.write_bytes(b"".join(
            self.saved_feed(n) if n in killed else self.feeds[n].read_bytes() for n in last.values()
        ))
        return demo_support.summarize(merged, shop_log, products)


@pytest.fixture
def workers(request, tmp_path, redis_url):
    """Workers of a crawl; parametrize indirectly with "hybrid" for the hybrid store."""
    import demo_support

    mongo = request.getfixturevalue("mongo_uri_db") if getattr(request, "param", "redis") == "hybrid" else None
    log = tmp_path / "shop.log"
    # Slow enough that the last worker to start still finds work.
    with demo_support.running_shop(log, products=PRODUCTS, per_page=20, categories=5, latency=0.05) as url:
        group = Workers(tmp_path, url, redis_url, mongo)
        try:
            yield group, log
        finally:
            group.stop()


@pytest.mark.e2e
def test_a_killed_worker_loses_nothing(workers, server):
    """Three workers share one scrapy-redis queue; one is SIGKILLed mid-crawl and started again
    with the same command (its -o file). Its leased requests come back to the queue; the new
    worker cuts the dead one's feed back to what the checkpoint saved of it and goes on with
    it: every product is in the feeds, read whole."""
    import signal

    group, shop_log = workers
    group.start(3)
    dead = group.stop_one_holding_leases(server)
    group.kill([dead])
    # What a kill in the middle of writing leaves after the saved length: cut off again.
    with group.feeds[dead].open("ab") as feed:
        feed.write(b'{"sku": "torn')
    # The two others wait (stopped) until the new worker has joined: the crawl must not be
    # over before it starts. Their claim on the checkpoint and their leases may lapse
    # meanwhile: CHECKPOINT_RESUME takes it over then, and they are fenced.
    alive = [n for n in range(3) if n != dead]
    for n in alive:
        group.processes[n].send_signal(signal.SIGSTOP)
    try:
        group.start(1, replacing=dead, CHECKPOINT_RESUME=True)
        deadline = time.monotonic() + PATIENCE
        while not re.search("joined checkpoint|took over checkpoint", group.log(3)):
            assert group.processes[3].poll() is None and time.monotonic() < deadline, group.log(3)[-3000:]
            time.sleep(0.05)
    finally:
        for n in alive:
            group.processes[n].send_signal(signal.SIGCONT)
    others = [n for n in range(4) if n != dead]
    group.finish(others)
    summary = group.summary({dead}, shop_log, PRODUCTS)
    assert (summary["lost"], summary["malformed_lines"]) == (0, 0), summary
    # A page saved by the dead worker, which died before releasing its lease, is done again.
    assert summary["duplicates"] <= 100, summary
    assert "'checkpoint/leases/reclaimed'" in "".join(group.log(n) for n in others)
    assert (server.zcard("products:requests:lease:deadlines"), server.zcard("products:requests")) == (0, 0)
    group.check_shared_checkpoint({dead})
    dead_id = group.checkpoint_of(dead)[1]
    assert f"goes on with the feeds {group.feeds[dead]} of dead worker(s) {dead_id}" in group.log(3)
    assert re.search(rf"{re.escape(str(group.feeds[dead]))} cut back from \d+ to \d+ bytes", group.log(3))
    checkpoint, _ = group.checkpoint()
    assert [o["worker"] for o in checkpoint.pipeline_data.outputs if o["path"].endswith(f"items-{dead}.jsonl")] == [
        group.checkpoint_of(3)[1]]


@pytest.mark.e2e
@pytest.mark.parametrize("workers", ["redis", "hybrid"], indirect=True)
def test_all_workers_killed_then_started_again_lose_nothing(workers, server):
    """All three SIGKILLed mid-crawl, three new ones started with CHECKPOINT_RESUME: the queue,
    the dupefilter and the dead workers' leases are in Redis; the new workers go on with the
    same checkpoint (in Redis, or in both stores of the hybrid one) and finish the crawl."""
    group, shop_log = workers
    group.start(3)
    group.wait_for_items([0, 1, 2], PRODUCTS // 5)
    group.stop_one_holding_leases(server)  # so that some work is surely in flight
    group.kill([0, 1, 2])
    assert server.zcard("products:requests:lease:deadlines") > 0
    # Until the dead workers' claim on their checkpoint lapses: no live worker writes to it,
    # and only CHECKPOINT_RESUME takes it over.
    deadline = time.monotonic() + PATIENCE
    while server.keys("checkpoint:crawl:*"):
        assert time.monotonic() < deadline, "the claim of the dead workers did not lapse"
        time.sleep(0.05)
    group.start(3, CHECKPOINT_RESUME=True)
    group.finish([3, 4, 5])
    summary = group.summary({0, 1, 2}, shop_log, PRODUCTS)
    assert (summary["lost"], summary["malformed_lines"]) == (0, 0), summary
    assert summary["duplicates"] <= 300, summary
    assert (server.zcard("products:requests:lease:deadlines"), server.zcard("products:requests")) == (0, 0)
    group.check_shared_checkpoint({0, 1, 2})
    assert sum("took over checkpoint" in group.log(n) for n in (3, 4, 5)) == 1


def stat(log, name):
    """A stat of the dump a crawl logs as it closes; 0 when it is not there."""
    found = re.search(rf"'{re.escape(name)}': (\d+)", log)
    return int(found.group(1)) if found else 0


@pytest.mark.e2e
def test_a_stopped_worker_loses_its_leases_and_is_told(workers, server):
    """A worker SIGSTOPped past its lease timeout: the others take its requests back; once
    continued, it learns that its leases are gone (counted, and logged), records none of the
    pages it finishes under them (fencing) and still closes."""
    import signal

    group, shop_log = workers
    group.start(3)
    stopped = group.stop_one_holding_leases(server)
    try:
        # Until no lease of the stopped worker is left: the others put them back in the queue.
        deadline = time.monotonic() + PATIENCE + LEASE_TIMEOUT
        while group.leases_of(stopped, server):
            assert time.monotonic() < deadline, "the stopped worker's leases were not taken back"
            time.sleep(0.05)
    finally:
        group.processes[stopped].send_signal(signal.SIGCONT)
    group.finish([0, 1, 2])
    summary = group.summary(set(), shop_log, PRODUCTS)
    assert (summary["lost"], summary["malformed_lines"]) == (0, 0), summary
    text = group.log(stopped)
    assert "leases of this worker expired before it renewed or released them" in text, text[-3000:]
    assert stat(text, "checkpoint/leases/lost") > 0
    # Its pages under the lost leases were dropped, not recorded; only one stopped in the
    # middle of its save (a few ms) is recorded late, and said so.
    fenced, late = stat(text, "checkpoint/leases/fenced"), stat(text, "checkpoint/leases/saved_late")
    assert fenced + late > 0, text[-3000:]
    assert summary["duplicates"] <= late, summary
    group.check_shared_checkpoint(set())
    assert "'checkpoint/leases/reclaimed'" in "".join(group.log(n) for n in range(3) if n != stopped)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"CHECKPOINT_ID": "abc"}, r"CHECKPOINT_ID \('abc'\) cannot be used when SCHEDULER is "
                                   r"scrapy_redis\.scheduler\.Scheduler: .* CHECKPOINT_RESUME=1"),
    ],
)
def test_shared_scheduler_refuses_what_it_cannot_share(settings, message):
    from scrapy.settings import Settings

    from scrapy_checkpoint.settings import CheckpointSettings

    settings = Settings({"CHECKPOINT_ENABLED": True, "CHECKPOINT_REDIS_URL": "redis://h",
                         "SCHEDULER": "scrapy_redis.scheduler.Scheduler", **settings})
    with pytest.raises(ValueError, match=message):
        CheckpointSettings.from_settings(settings)
