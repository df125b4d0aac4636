"""End to end: real `scrapy crawl` subprocesses against the demo shop, killed and resumed."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3

import demo_support
import pytest
from scrapy.settings import Settings

from scrapy_checkpoint.models import CheckpointStatus
from scrapy_checkpoint.settings import CheckpointSettings
from scrapy_checkpoint.stores import SQLiteCheckpointStore, store_class

pytestmark = pytest.mark.e2e

BATCH_SIZE = 100
CONCURRENCY = 16
SEED = int(os.environ.get("CHECKPOINT_TEST_SEED", random.randrange(1 << 30)))


def settings(tmp_path, **extra):
    return {
        "CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "CHECKPOINT_FLUSH_INTERVAL": 0.5,
        "CHECKPOINT_BATCH_SIZE": BATCH_SIZE,
        "CONCURRENT_REQUESTS": CONCURRENCY,
        **extra,
    }


def crawl(url, tmp_path, resume=False, **kwargs):
    extra = kwargs.pop("extra", {})
    if resume:
        extra["CHECKPOINT_RESUME"] = True
    return demo_support.run_crawl(
        None, url, tmp_path / "items.jsonl", settings(tmp_path, **extra), timeout=180, **kwargs
    )


@pytest.fixture(params=["sqlite", "redis", "mongodb", "hybrid"])
def store_settings(request, tmp_path):
    """The settings that select each store; every test using it runs on all four."""
    extra = {}
    if request.param in ("redis", "hybrid"):
        extra["CHECKPOINT_REDIS_URL"] = request.getfixturevalue("redis_url")
    if request.param in ("mongodb", "hybrid"):
        uri, database = request.getfixturevalue("mongo_uri_db")
        extra.update(CHECKPOINT_MONGO_URI=uri, CHECKPOINT_MONGO_DATABASE=database)
    return extra


def open_any_store(tmp_path, extra):
    values = {**settings(tmp_path, **extra), "CHECKPOINT_ENABLED": True}
    checkpoint_settings = CheckpointSettings.from_settings(Settings(values))
    store = store_class(checkpoint_settings).from_checkpoint_settings(checkpoint_settings)
    store.open()
    return store


def checkpoint_id_of(crawl_log) -> str:
    return re.search(r"Checkpoint (\S+) started in", crawl_log.read_text()).group(1)


def started_checkpoint(crawl_log) -> str | None:
    """The id of the checkpoint a running crawl has started, once its log says so."""
    try:
        match = re.search(r"Checkpoint (\S+) started in", crawl_log.read_text(errors="replace"))
    except FileNotFoundError:
        return None
    return match and match.group(1)


def open_store(tmp_path) -> SQLiteCheckpointStore:
    store = SQLiteCheckpointStore(tmp_path / "checkpoints" / "checkpoints.sqlite3")
    store.open()
    return store


def only_checkpoint(store):
    ids = [r[0] for r in store.db.execute("SELECT checkpoint_id FROM checkpoints")]
    assert len(ids) == 1, ids
    return store.get(ids[0])


def test_hard_kills_lose_nothing(tmp_path, store_settings, request):
    """SIGKILL at random moments, resume until done: nothing lost, little redone."""
    rng = random.Random(SEED)
    products, kills = 1500, 4
    log = tmp_path / "shop.log"
    with demo_support.running_shop(log, products=products, latency=0.002) as url:
        points = sorted(rng.sample(range(50, products - 50), kills))
        runs = []
        for n, point in enumerate(points):
            code, killed, crawl_log = crawl(url, tmp_path, resume=n > 0, kill_when_items=point,
                                            extra=dict(store_settings))
            assert killed, f"run {n} ended before its kill point {point} (seed {SEED}): {crawl_log}"
            runs.append(code)
            if n == 0:
                checkpoint_id = checkpoint_id_of(crawl_log)
        code, killed, crawl_log = crawl(url, tmp_path, resume=True, extra=dict(store_settings))
        assert (code, killed) == (0, False), crawl_log.read_text()[-3000:]
        # What the resume line calls pending is what is fed back to the scheduler, no more.
        text = crawl_log.read_text()
        pending = int(re.search(r"Resuming checkpoint \S+: (\d+) requests pending", text).group(1))
        restored = re.search(r"'checkpoint/restored/requests': (\d+)", text)
        assert restored is None or int(restored.group(1)) <= pending, (pending, restored.group(1))
    summary = demo_support.summarize(tmp_path / "items.jsonl", log, products)
    print(f"hard kills on {request.node.callspec.id} (seed {SEED}, kill points {points}): {summary}")
    assert runs == [-signal.SIGKILL] * kills
    assert summary["lost"] == 0, summary
    assert summary["malformed_lines"] == 0, summary
    # The feed is exactly once; what a kill can redo is the work not flushed yet: at most
    # a batch plus what was in flight.
    assert summary["duplicates"] == 0, summary
    window = BATCH_SIZE + CONCURRENCY
    assert summary["extra_downloads"] <= kills * window, summary
    store = open_any_store(tmp_path, store_settings)
    try:
        checkpoint = store.get(checkpoint_id)
        assert checkpoint.status is CheckpointStatus.COMPLETED
        assert checkpoint.pipeline_data.urls_processed == checkpoint.pipeline_data.urls_discovered
        # Items scraped after the last flush before a kill are scraped again, not counted twice.
        assert checkpoint.pipeline_data.extraction_results.items_scraped == products
        assert store.pending_requests(checkpoint.checkpoint_id, None, 10)[0] == []
    finally:
        store.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_graceful_stop_redoes_nothing(tmp_path, shop, sig):
    url, log, products = shop
    code, killed, crawl_log = crawl(url, tmp_path, kill_when_items=products // 3, signal=sig)
    assert killed
    assert "saved as active (shutdown)" in crawl_log.read_text()
    code, killed, crawl_log = crawl(url, tmp_path, resume=True)
    text = crawl_log.read_text()
    assert code == 0 and "Resuming checkpoint" in text, text[-3000:]
    summary = demo_support.summarize(tmp_path / "items.jsonl", log, products)
    assert summary["lost"] == 0, summary
    assert summary["duplicates"] == 0, summary
    assert summary["extra_downloads"] == 0, summary


def test_completed_crawl_records_progress(tmp_path, shop):
    url, _, products = shop
    code, _, crawl_log = crawl(url, tmp_path, extra={"CHECKPOINT_STORE_ITEMS": True})
    assert code == 0, crawl_log.read_text()[-3000:]
    store = open_store(tmp_path)
    try:
        checkpoint = only_checkpoint(store)
        data = checkpoint.pipeline_data
        assert checkpoint.status is CheckpointStatus.COMPLETED
        assert (checkpoint.spider, checkpoint.job_type) == ("products", "product_catalog")
        assert checkpoint.pipeline_step == 4
        assert data.extraction_results.by_type == {"Product": products}
        # 5 categories of 120 products, 20 per page: each listing ends on page 6.
        assert sorted(data.pagination_state.values()) == [6] * 5, data.pagination_state
        assert all("page=" not in listing for listing in data.pagination_state)
        items = list(store.items(checkpoint.checkpoint_id))
        assert len(items) == products
        assert {t for t, _ in items} == {"Product"}
        assert len({i["sku"] for _, i in items}) == products
    finally:
        store.close()
    # A new run does not resume a completed checkpoint: it starts a new one. That is decided
    # at start, so the run is stopped once its log says which checkpoint it started.
    resume_log = tmp_path / "crawl-resume.log"
    _, _, crawl_log = crawl(url, tmp_path, resume=True, log_path=resume_log,
                            kill_when=lambda: started_checkpoint(resume_log) is not None)
    text = crawl_log.read_text()
    assert "No resumable checkpoint" in text, text[-3000:]
    assert started_checkpoint(resume_log) not in (None, checkpoint.checkpoint_id), text[-3000:]


def test_new_run_says_how_to_resume(tmp_path, shop):
    url, _, products = shop
    crawl(url, tmp_path, kill_when_items=products // 4)
    code, _, crawl_log = crawl(url, tmp_path)
    text = crawl_log.read_text()
    assert code == 0
    assert "can be resumed: run again with -s CHECKPOINT_RESUME=1" in text


@pytest.mark.parametrize(
    ("extra", "env", "expect_store"),
    [
        ({"CHECKPOINT_ENABLED": False}, {"ENABLE_CHECKPOINTS": ""}, False),
        ({"CHECKPOINT_ENABLED": False}, {"ENABLE_CHECKPOINTS": "true"}, True),
    ],
    ids=["off", "env-switch-on"],
)
def test_switch(tmp_path, shop, extra, env, expect_store):
    url, _, products = shop
    code, _, crawl_log = crawl(url, tmp_path, extra=extra, env=env)
    text = crawl_log.read_text()
    assert code == 0, text[-3000:]
    assert demo_support.summarize(tmp_path / "items.jsonl", tmp_path / "none", products)["lost"] == 0
    assert (tmp_path / "checkpoints").exists() is expect_store
    assert ("checkpoint/flushes" in text) is expect_store


def test_corrupt_checkpoint_is_refused_not_restarted(tmp_path, shop):
    url, _, products = shop
    crawl(url, tmp_path, kill_when_items=products // 3)
    path = tmp_path / "checkpoints" / "checkpoints.sqlite3"
    with sqlite3.connect(path) as db:
        (checkpoint_id,) = db.execute("SELECT checkpoint_id FROM checkpoints").fetchone()
        db.execute("UPDATE checkpoints SET record = '{\"pipeline_step\": \"x\"}'")
        requests_before = db.execute("SELECT (SELECT COUNT(*) FROM pending), (SELECT COUNT(*) FROM processed)").fetchone()
    items_before = demo_support.count_lines(tmp_path / "items.jsonl")
    code, _, crawl_log = crawl(url, tmp_path, resume=True)
    text = crawl_log.read_text()
    assert f"Checkpoint {checkpoint_id} in sqlite:" in text and "unreadable" in text, text[-3000:]
    assert "'finish_reason': 'checkpoint_error'" in text and code == 1, text[-3000:]
    assert demo_support.count_lines(tmp_path / "items.jsonl") == items_before
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 1
        assert db.execute("SELECT (SELECT COUNT(*) FROM pending), (SELECT COUNT(*) FROM processed)").fetchone() == requests_before


def test_unknown_checkpoint_id(tmp_path, shop):
    url, _, _ = shop
    code, _, crawl_log = crawl(url, tmp_path, extra={"CHECKPOINT_ID": "no-such-checkpoint"})
    text = crawl_log.read_text()
    assert "CHECKPOINT_ID ('no-such-checkpoint') names no checkpoint" in text, text[-3000:]
    assert "'finish_reason': 'checkpoint_error'" in text and code == 1, text[-3000:]
    assert demo_support.count_lines(tmp_path / "items.jsonl") == 0


def test_bad_setting_is_one_error_line_and_exit_1(tmp_path, shop):
    url, _, _ = shop
    feed = tmp_path / "kept.jsonl"
    feed.write_text('{"sku": "saved before"}\n')
    code, _, crawl_log = demo_support.run_crawl(
        None, url, None, {**settings(tmp_path), "CHECKPOINT_FLUSH_INTERVAL": -5},
        log_path=tmp_path / "crawl.log", timeout=180, args=["-O", f"{feed}:jsonlines"],
    )
    text = crawl_log.read_text()
    errors = [line for line in text.splitlines() if "ERROR" in line]
    assert errors == [line for line in errors if "CHECKPOINT_FLUSH_INTERVAL ('-5') must be a positive" in line]
    assert len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert "'finish_reason': 'checkpoint_error'" in text and code == 1, text[-3000:]
    assert feed.read_text() == '{"sku": "saved before"}\n'  # -O did not empty it
    assert not (tmp_path / "checkpoints").exists()


def test_resume_by_id(tmp_path, shop):
    url, log, products = shop
    crawl(url, tmp_path, kill_when_items=products // 2)
    store = open_store(tmp_path)
    try:
        checkpoint_id = only_checkpoint(store).checkpoint_id
    finally:
        store.close()
    code, _, crawl_log = crawl(url, tmp_path, extra={"CHECKPOINT_ID": checkpoint_id})
    assert f"Resuming checkpoint {checkpoint_id}" in crawl_log.read_text()
    assert demo_support.summarize(tmp_path / "items.jsonl", log, products)["lost"] == 0
    store = open_store(tmp_path)
    try:
        state = store.get(checkpoint_id).pipeline_data.state
    finally:
        store.close()
    # The spider counts listing pages in its checkpoint state: 5 listings of 6 pages. The
    # resumed run saw only those left, so the count is whole only if the state came back.
    assert state["listing_pages"] >= 30, state


def test_site_limits_apply_to_their_site(tmp_path, shop):
    """The demo spider's site is its name: a limit for it makes every 7 events a flush."""
    url, _, products = shop
    code, _, crawl_log = crawl(url, tmp_path, extra={"CHECKPOINT_SITE_LIMITS": {"products": {"batch_size": 7}}})
    text = crawl_log.read_text()
    assert code == 0, text[-3000:]
    assert "Checkpoint writes for products: every 0.5 s or 7 events (CHECKPOINT_SITE_LIMITS)" in text
    flushes = int(re.search(r"'checkpoint/flushes': (\d+)", text).group(1))
    assert flushes > products // 7, flushes  # with the default 100 a batch, a few dozen


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_large_checkpoint_resumes_exactly_while_its_processed_requests_load(tmp_path, store, request):
    """The processed requests of a large checkpoint are read while the first pending ones
    are downloaded: the resumed crawl still redoes no processed page and loses none."""
    extra = {"CHECKPOINT_REDIS_URL": request.getfixturevalue("redis_url")} if store == "redis" else {}
    products, filler = 600, 300_000
    log = tmp_path / "shop.log"
    with demo_support.running_shop(log, products=products, latency=0.002) as url:
        code, killed, crawl_log = crawl(url, tmp_path, kill_when_items=products // 2, extra=dict(extra))
        assert killed, crawl_log.read_text()[-3000:]
        checkpoint_id = checkpoint_id_of(crawl_log)
        # Processed requests of pages this shop does not have: a checkpoint as large as a
        # long crawl's, whose read takes a while.
        rng = random.Random(SEED)
        fillers = [rng.randbytes(20) for _ in range(filler)]
        s = open_any_store(tmp_path, extra)
        try:
            if store == "sqlite":
                key = s.db.execute("SELECT id FROM checkpoints WHERE checkpoint_id = ?", (checkpoint_id,)).fetchone()[0]
                with s.db:
                    s.db.executemany("INSERT INTO processed (checkpoint, position, fingerprint) VALUES (?, ?, ?)",
                                     ((key, -1 - n, fp) for n, fp in enumerate(fillers)))
            else:
                for start in range(0, filler, 10_000):
                    s.client.sadd(s._key(checkpoint_id, "processed"), *fillers[start:start + 10_000])
        finally:
            s.close()
        code, killed, crawl_log = crawl(url, tmp_path, resume=True, extra=dict(extra))
        assert (code, killed) == (0, False), crawl_log.read_text()[-3000:]
    text = crawl_log.read_text()
    read = re.search(r"Checkpoint \S+: (\d+) processed requests read in", text)
    assert read and int(read.group(1)) >= filler, text[-3000:]
    summary = demo_support.summarize(tmp_path / "items.jsonl", log, products)
    assert summary["lost"] == 0 and summary["duplicates"] == 0, summary
    assert summary["extra_downloads"] <= BATCH_SIZE + CONCURRENCY, summary
