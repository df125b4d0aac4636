"""scrapy-redis workers through a Redis restart: queue, dupefilter, leases and checkpoint on one
AOF-persistent redis-server, SIGKILLed mid-crawl and started again on the same port and data."""

from __future__ import annotations

import time

import demo_support
import pytest
import redis

from .redis_server import running_redis
from .test_distributed import PRODUCTS, Workers, stat

#: How long Redis stays down: a few of the workers' lease heartbeats (every third of their 4 s
#: lease timeout). Not a wait for a state: the outage itself.
DOWNTIME = 2.5
#: A hang guard only: the workers have this long to finish once Redis is back (they need a
#: few seconds).
PATIENCE = 25.0
QUEUE = "products:requests"
LEASE_KEYS = [f"{QUEUE}:lease:{name}" for name in ("deadlines", "requests", "scores")]


@pytest.fixture
def persistent_redis(tmp_path):
    """A redis-server of this test's own, not the session's shared one, with its AOF fsynced
    on every write: a SIGKILL loses nothing it acknowledged."""
    directory = tmp_path / "redis"
    directory.mkdir()
    with running_redis(directory, persistent=True) as server:
        yield server


@pytest.fixture
def outage_workers(tmp_path, persistent_redis):
    log = tmp_path / "shop.log"
    # As test_distributed's `workers`, on this test's Redis.
    with demo_support.running_shop(log, products=PRODUCTS, per_page=20, categories=5, latency=0.05) as url:
        group = Workers(tmp_path, url, f"{persistent_redis.url}/0")
        try:
            yield group, log
        finally:
            group.stop()


def wait_for_listing_request(shop_log):
    """Until the shop is asked for one more listing page than now. The shop logs a request as
    it arrives and answers 50 ms later: Redis stopped at once is down when the callback of
    that page queues its product links and next page."""
    listings = shop_log.read_text().count("/category/")
    deadline = time.monotonic() + PATIENCE
    while shop_log.read_text().count("/category/") == listings:
        assert time.monotonic() < deadline, "no listing page was left to crawl"
        time.sleep(0.002)


def redis_state(url):
    with redis.Redis.from_url(url) as client:
        return {"queue": client.zcard(QUEUE), "leases": client.zcard(LEASE_KEYS[0]),
                "leased requests": client.hlen(LEASE_KEYS[1]), "lease scores": client.hlen(LEASE_KEYS[2])}


def wait_until_all_exit(group, shop_log, deadline):
    """Until every worker has exited; return their exit codes."""
    while any(process.poll() is None for process in group.processes):
        if time.monotonic() > deadline:
            running = [n for n, process in enumerate(group.processes) if process.poll() is None]
            summary = group.summary(set(), shop_log, PRODUCTS)  # so far
            pytest.fail(f"workers {running} never closed; scraped so far: {summary}; Redis: "
                        f"{redis_state(group.redis_url)}\n"
                        + "\n".join(f"--- worker {n}\n{group.log(n)[-3000:]}" for n in running))
        time.sleep(0.05)
    return [process.returncode for process in group.processes]


@pytest.mark.e2e
def test_redis_restarted_mid_crawl_loses_nothing(outage_workers, persistent_redis):
    """Three workers; once they have scraped a tenth of the products, Redis is SIGKILLed just as
    a listing page is downloaded, stays down 2.5 s, and is started again on its port and data.

    No worker dies or closes early: a request a callback yields while Redis is down waits in
    the worker's memory and is queued before the lease of its page is released; pops, flushes
    and lease renewals warn once and retry. A worker that exited non-zero all the same would
    be started again with the same command, as its user would, and its feed read up to the
    length its checkpoint saved.
    """
    group, shop_log = outage_workers
    group.start(3)
    group.wait_for_items([0, 1, 2], PRODUCTS // 10)
    wait_for_listing_request(shop_log)
    persistent_redis.stop()  # SIGKILL: with appendfsync always, every acknowledged write is kept
    time.sleep(DOWNTIME)
    persistent_redis.start()
    deadline = time.monotonic() + PATIENCE
    died = {n for n, code in enumerate(wait_until_all_exit(group, shop_log, deadline)) if code != 0}
    if died:
        group.start(len(died))
        codes = wait_until_all_exit(group, shop_log, time.monotonic() + PATIENCE)
        assert codes[3:] == [0] * len(died), [group.log(n)[-3000:] for n in range(3, len(codes))]
    summary = group.summary(died, shop_log, PRODUCTS)
    assert (summary["lost"], summary["malformed_lines"]) == (0, 0), summary
    # A product is scraped twice only by a page whose lease another worker took back while its
    # save was under way, which the first worker counts as saved late.
    late = sum(stat(group.log(n), "checkpoint/leases/saved_late") for n in range(len(group.processes)))
    assert summary["duplicates"] <= late, summary
    assert redis_state(group.redis_url) == dict.fromkeys(
        ["queue", "leases", "leased requests", "lease scores"], 0)


@pytest.fixture
def volatile_redis(tmp_path):
    """A redis-server of this test's own that keeps nothing on disk: started again, it is empty."""
    directory = tmp_path / "redis"
    directory.mkdir()
    with running_redis(directory, persistent=False) as server:
        yield server


@pytest.mark.e2e
def test_redis_restarted_empty_mid_crawl_loses_nothing_with_the_hybrid_store(tmp_path, volatile_redis, mongo_uri_db):
    """Three workers on the hybrid store; Redis, without persistence, is SIGKILLed mid-crawl and
    started again empty: the queue, the dupefilter, the leases and Redis's copy of the
    checkpoint are gone. MongoDB's copy holds every discovery and processed mark saved: once
    the queue is empty and no lease is out, a worker queues the checkpoint's pending requests
    again, and the crawl finishes with every product. (The dupefilter is gone too: pages done
    before are done again when found again.)"""
    log = tmp_path / "shop.log"
    with demo_support.running_shop(log, products=PRODUCTS, per_page=20, categories=5, latency=0.05) as url:
        group = Workers(tmp_path, url, f"{volatile_redis.url}/0", mongo_uri_db)
        try:
            group.start(3)
            group.wait_for_items([0, 1, 2], PRODUCTS // 5)
            volatile_redis.stop()
            volatile_redis.start()
            died = {n for n, code in enumerate(wait_until_all_exit(group, log, time.monotonic() + 90)) if code}
            assert not died, [group.log(n)[-3000:] for n in died]
            summary = group.summary(set(), log, PRODUCTS)
        finally:
            group.stop()
    assert (summary["lost"], summary["malformed_lines"]) == (0, 0), summary
    text = "".join(group.log(n) for n in range(3))
    assert "pending requests that scrapy-redis's queue lost (Redis restarted empty?): queued again" in text
    # The checkpoint is complete with nothing pending. (Its counters may count a URL twice:
    # after the restart several workers find the same pages again, and MongoDB may apply two
    # of their batches at once; the URL sets themselves are exact.)
    checkpoint, _ = group.checkpoint()
    assert checkpoint.status.value == "completed", checkpoint
    with group.store() as store:
        assert store.pending_requests(checkpoint.checkpoint_id, None, 100)[0] == []
