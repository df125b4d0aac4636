"""Fault injection: stores killed and restarted under a live crawl, corrupt records on resume."""

from __future__ import annotations

import re
import threading
import time

import demo_support
import pytest
import redis

from .redis_server import RedisServer, find_redis_server
from .test_e2e import crawl

pytestmark = pytest.mark.e2e

PRODUCTS = 1200
OUTAGE_AT, KILL_AT = 200, 900
#: A hang guard only: a wait on the crawl that lasts this long fails the test. No test
#: waits a duration and hopes the crawl did something meanwhile: a busy machine breaks that.
PATIENCE = 120.0
FLUSH_FAILED = "failed to flush; will retry"


@pytest.fixture
def big_shop(tmp_path):
    log = tmp_path / "shop.log"
    with demo_support.running_shop(log, products=PRODUCTS, latency=0.002) as url:
        yield url, log


@pytest.fixture
def persistent_redis(tmp_path):
    server = RedisServer(find_redis_server(), tmp_path, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Outage(threading.Thread):
    """Stops *servers* once the crawl has scraped *at_items*, and starts them again once
    *crawl_log* shows *seen*: the crawl has met the outage, however slow the machine."""

    def __init__(self, servers, items_file, crawl_log, seen=FLUSH_FAILED, at_items=OUTAGE_AT):
        super().__init__(daemon=True)
        self.servers, self.items_file, self.crawl_log = servers, items_file, crawl_log
        self.seen, self.at_items = seen, at_items
        #: Set once the crawl has ended: what it has not done by then, it never will.
        self.crawl_over = threading.Event()
        self.error = None
        self.ended = False

    def run(self):
        try:
            self._wait_for(lambda: demo_support.count_lines(self.items_file) >= self.at_items,
                           f"{self.at_items} items scraped")
            for server in self.servers:
                server.stop()
            self._wait_for(lambda: self.seen in self.log_text(), f"{self.seen!r} in {self.crawl_log}")
        except BaseException as exc:
            self.error = exc
        finally:
            for server in self.servers:
                server.start()
            self.ended = True

    def log_text(self):
        try:
            return self.crawl_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _wait_for(self, condition, what):
        deadline = time.monotonic() + PATIENCE
        while True:
            over = self.crawl_over.is_set()  # before the look: the crawl may end during it
            if condition():
                return
            if over:
                raise AssertionError(f"the crawl ended before {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {PATIENCE:g} s")
            time.sleep(0.02)


def crawl_through(outage, url, tmp_path, **kwargs):
    """Run a crawl, logging to the file *outage* watches; fail if the outage went wrong."""
    outage.start()
    try:
        result = crawl(url, tmp_path, log_path=outage.crawl_log, **kwargs)
    finally:
        outage.crawl_over.set()
        outage.join(PATIENCE)
    assert outage.ended and outage.error is None, (
        f"{outage.error}\n{outage.log_text()[-3000:]}")
    return result


def run_with_outage(tmp_path, url, log, extra, servers, **outage):
    """Crawl through an outage, SIGKILL after it, resume to the end; return the summary."""
    extra = {"CHECKPOINT_STORE_TIMEOUT": 0.5, **extra}
    outage_thread = Outage(servers, tmp_path / "items.jsonl", tmp_path / "crawl-outage.log", **outage)
    code, killed, first_log = crawl_through(outage_thread, url, tmp_path, kill_when_items=KILL_AT,
                                            extra=dict(extra))
    assert killed, first_log.read_text()[-3000:]
    code, killed, last_log = crawl(url, tmp_path, resume=True, extra=dict(extra))
    assert code == 0, last_log.read_text()[-3000:]
    assert "saved as completed" in last_log.read_text(), last_log.read_text()[-3000:]
    return demo_support.summarize(tmp_path / "items.jsonl", log, PRODUCTS), first_log.read_text()


def test_redis_outage_mid_crawl(tmp_path, big_shop, persistent_redis):
    url, log = big_shop
    summary, text = run_with_outage(
        tmp_path, url, log, {"CHECKPOINT_REDIS_URL": persistent_redis.url}, [persistent_redis]
    )
    print(f"redis outage: {summary}")
    assert "failed to flush; will retry" in text
    assert summary["lost"] == 0 and summary["duplicates"] == 0, summary


def test_mongodb_outage_mid_crawl(tmp_path, big_shop, mongo_server, mongo_uri_db):
    url, log = big_shop
    uri, database = mongo_uri_db
    summary, text = run_with_outage(
        tmp_path, url, log, {"CHECKPOINT_MONGO_URI": uri, "CHECKPOINT_MONGO_DATABASE": database},
        [mongo_server],
    )
    print(f"mongodb outage: {summary}")
    assert "failed to flush; will retry" in text
    assert summary["lost"] == 0 and summary["duplicates"] == 0, summary


def test_store_down_at_start(tmp_path, big_shop, persistent_redis):
    """A new crawl starts while its store is down; the checkpoint is written once it is back."""
    url, log = big_shop
    persistent_redis.stop()
    summary, text = run_with_outage(
        tmp_path, url, log, {"CHECKPOINT_REDIS_URL": persistent_redis.url}, [persistent_redis],
        at_items=0, seen="failed to open; will retry",
    )
    assert "written to redis" in text and "the store is back" in text, text[-3000:]
    assert summary["lost"] == 0 and summary["duplicates"] == 0, summary


def test_redis_restarted_empty_recreates_checkpoint(tmp_path, big_shop, redis_server, redis_url):
    """A Redis that comes back without its data loses the checkpoint: the crawl says so and
    writes it again, instead of failing every flush."""
    url, log = big_shop
    extra = {"CHECKPOINT_REDIS_URL": redis_url, "CHECKPOINT_STORE_TIMEOUT": 0.5}
    outage_thread = Outage([redis_server], tmp_path / "items.jsonl", tmp_path / "crawl-outage.log")
    code, killed, crawl_log = crawl_through(outage_thread, url, tmp_path, extra=extra)
    text = crawl_log.read_text()
    assert code == 0, text[-3000:]
    assert "is gone from redis" in text and "written to redis" in text, text[-3000:]
    assert "saved as completed" in text


@pytest.mark.parametrize("store", ["redis", "mongodb"])
def test_corrupt_record_refused_on_resume(tmp_path, shop, store, request):
    url, _, products = shop
    if store == "redis":
        extra = {"CHECKPOINT_REDIS_URL": request.getfixturevalue("redis_url")}
    else:
        uri, database = request.getfixturevalue("mongo_uri_db")
        extra = {"CHECKPOINT_MONGO_URI": uri, "CHECKPOINT_MONGO_DATABASE": database}
    _, _, crawl_log = crawl(url, tmp_path, kill_when_items=products // 3, extra=dict(extra))
    checkpoint_id = re.search(r"Checkpoint (\S+) started in", crawl_log.read_text()).group(1)
    if store == "redis":
        with redis.Redis.from_url(extra["CHECKPOINT_REDIS_URL"]) as client:
            (key,) = client.keys(f"*{checkpoint_id}*record*")
            client.delete(key)
            client.set(key, b"\x00\xffgarbage")
    else:
        from pymongo import MongoClient

        with MongoClient(extra["CHECKPOINT_MONGO_URI"]) as client:
            client[extra["CHECKPOINT_MONGO_DATABASE"]].checkpoints.update_one(
                {"checkpoint_id": checkpoint_id}, {"$set": {"pipeline_step": "x"}},
                bypass_document_validation=True,
            )
    items_before = demo_support.count_lines(tmp_path / "items.jsonl")
    code, _, crawl_log = crawl(url, tmp_path, resume=True, extra=dict(extra))
    text = crawl_log.read_text()
    assert f"Checkpoint {checkpoint_id} in {store}" in text and "unreadable" in text, text[-3000:]
    assert "'finish_reason': 'checkpoint_error'" in text and code == 1, text[-3000:]
    assert demo_support.count_lines(tmp_path / "items.jsonl") == items_before


@pytest.mark.parametrize("password_in_url", ["right", "wrong"])
def test_credentials_never_logged(tmp_path, shop, password_in_url, mongo_server):
    """Neither a Redis password nor a MongoDB one reaches the log, whether they work or not."""
    url, _, products = shop
    secret, wrong = "s3cret-Pa55word", "wr0ng-Pa55word"
    server = RedisServer(find_redis_server(), tmp_path, password=secret)
    server.start()
    try:
        password = secret if password_in_url == "right" else wrong
        port = mongo_server.uri.rsplit(":", 1)[1]
        extra = {
            "CHECKPOINT_REDIS_URL": f"redis://:{password}@127.0.0.1:{server.port}/0",
            "CHECKPOINT_MONGO_URI": f"mongodb://checkpoint:m0ngo-Secret@127.0.0.1:{port}/?authSource=admin",
            "CHECKPOINT_STORE_TIMEOUT": 0.5,
        }
        code, _, crawl_log = crawl(url, tmp_path, extra=extra)
    finally:
        server.stop()
    text = crawl_log.read_text()
    assert code == 1, text[-3000:]  # refused to run without its checkpoint
    for leaked in (secret, wrong, "m0ngo-Secret"):
        assert leaked not in text
    # The stand-in cannot log anyone in: the crawl refuses to run without its checkpoint,
    # and says which store failed, redacted.
    assert "failed to open" in text and "checkpoint:***@127.0.0.1" in text, text[-3000:]
    assert "'finish_reason': 'checkpoint_error'" in text and code == 1, text[-3000:]


@pytest.mark.parametrize("down", ["redis", "mongodb", "both"])
def test_hybrid_outage_mid_crawl(tmp_path, big_shop, down, redis_server, redis_url, mongo_server, mongo_uri_db):
    """Kill Redis, MongoDB or both under a hybrid crawl, restart them (Redis comes back
    empty): the crawl goes on, and a resume after a later SIGKILL loses nothing."""
    url, log = big_shop
    uri, database = mongo_uri_db
    servers = {"redis": [redis_server], "mongodb": [mongo_server], "both": [redis_server, mongo_server]}
    # Both down: the extension's flush fails. One down: the hybrid store says so, and goes on.
    seen = FLUSH_FAILED if down == "both" else "is unavailable"
    summary, text = run_with_outage(
        tmp_path, url, log,
        {"CHECKPOINT_REDIS_URL": redis_url, "CHECKPOINT_MONGO_URI": uri, "CHECKPOINT_MONGO_DATABASE": database},
        servers[down], seen=seen,
    )
    print(f"hybrid, {down} down: {summary}")
    assert summary["lost"] == 0 and summary["duplicates"] == 0, summary
    if down == "both":  # the extension holds the batches
        assert "failed to flush; will retry" in text
    else:  # the other store takes them
        label = {"redis": "Redis", "mongodb": "MongoDB"}[down]
        assert f"{label} at" in text and "is unavailable" in text, text[-3000:]
        assert "failed to flush" not in text


def test_wrong_redis_password_refuses_to_crawl(tmp_path, shop):
    """A refused login is no outage: the crawl closes at start instead of running on with no
    checkpoint (redis-py makes AuthenticationError a ConnectionError)."""
    url, _, _ = shop
    server = RedisServer(find_redis_server(), tmp_path, password="right-Pa55word")
    server.start()
    try:
        extra = {"CHECKPOINT_REDIS_URL": f"redis://:wr0ng-Pa55word@127.0.0.1:{server.port}/0"}
        code, _, crawl_log = crawl(url, tmp_path, extra=extra)
    finally:
        server.stop()
    text = crawl_log.read_text()
    assert "refused the login" in text and "'finish_reason': 'checkpoint_error'" in text, text[-3000:]
    assert code == 1  # cron or an orchestrator sees that the crawl did not run
    assert "wr0ng-Pa55word" not in text
    assert demo_support.count_lines(tmp_path / "items.jsonl") == 0
