"""End to end: `scrapy query` subprocesses in the demo project against two fashion shops (one
in USD, one in EUR), their answers checked against the shops' catalogs."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack

import demo_support
import pytest
from fashion_shop import Catalog

from scrapy_checkpoint.stores import SQLiteCheckpointStore

from .test_commands import Run, scrapy_checkpoint

pytestmark = pytest.mark.e2e

PRODUCTS = 150
SECRET = "test-secret-of-the-suite"
SITES = {"northwind": "northwind.test", "lumiere": "lumiere.test"}
#: A hang guard only.
PATIENCE = 120.0


def shops_running(directory, latency=0.0):
    """Both shops; yields {spider name: url}; each logs its requests to <name>.log in *directory*."""
    stack = ExitStack()
    urls = {name: stack.enter_context(demo_support.running_fashion_shop(
        name, directory / f"{name}.log", products=PRODUCTS, latency=latency)) for name in SITES}
    return stack, urls


@pytest.fixture(scope="module")
def shops(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shops")
    stack, urls = shops_running(directory)
    with stack:
        yield urls, directory


def query_command(directory, urls, *args, spiders=tuple(SITES), **settings):
    """``scrapy query ARGS`` asking both shops (the demo project's `products` spider is not
    one of them; None: the default, every checkpoint_enabled spider), with the checkpoints of
    *directory*."""
    settings = {"CHECKPOINT_DIR": str(directory / "checkpoints"), "CHECKPOINT_QUERY_SECRET": SECRET, **settings}
    command = [sys.executable, "-m", "scrapy", "query", *args]
    for name in spiders or ():
        command += ["--spider", name]
    for name, value in settings.items():
        command += ["-s", demo_support.setting_arg(name, value)]
    env = {name: value for name, value in os.environ.items() if name != "DEMO_SHOP_URL"}
    env.update((demo_support.FASHION_URL_VARIABLES[n], url) for n, url in urls.items())
    return command, env


def scrapy_query(directory, urls, *args, spiders=tuple(SITES), **settings) -> Run:
    command, env = query_command(directory, urls, *args, spiders=spiders, **settings)
    done = subprocess.run(command, cwd=demo_support.PROJECT_DIR, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=PATIENCE, env=env)
    return Run(done.returncode, done.stdout, done.stderr)


def expected(keep, currency=None):
    """The products of both catalogs that *keep* accepts (and, for a query in a currency, only
    those priced in it), cheapest first; ties by title, then site: (site, sku, price)."""
    found = []
    for name, site in SITES.items():
        for product in Catalog(name, PRODUCTS).products:
            if keep(product) and currency in (None, product["currency"]):
                found.append((product["price"], product["title"], site, product["sku"]))
    return [(site, sku, price) for price, _, site, sku in sorted(found)]


def answered(document):
    return [(r["site"], r["sku"], r["price"]) for r in document["results"]]


def dresses_under_100(product):
    return product["type"] == "dress" and product["price"] <= 100


def test_query_over_two_shops_returns_exactly_the_matching_products_in_order(tmp_path, shops, pushgateway):
    urls, logs = shops
    document = scrapy_query(tmp_path, urls, "cheapest dress under 100", "--json", "--limit", "100").json()
    want = expected(dresses_under_100)
    assert len(want) > 10 and {site for site, _, _ in want} == set(SITES.values())
    assert answered(document) == want
    assert document["parsed_intent"]["product_type"] == "dress"
    assert document["parsed_intent"]["price_range"]["max"] == 100
    assert sorted(document["sites_searched"]) == sorted(SITES.values())
    assert len(document["checkpoint_ids"]) == 2
    assert {s["outcome"] for s in document["sites"]} == {"finished"}
    # The same model sold on both shops shares a group.
    groups = {}
    for result in document["results"]:
        if result["group"] is not None:
            groups.setdefault(result["group"], set()).add(result["site"])
    assert groups and all(sites == set(SITES.values()) for sites in groups.values())

    # In dollars: the shop in euros answers nothing (no exchange rate is known).
    document = scrapy_query(tmp_path, urls, "find cheapest red dress under $50", "--json").json()
    assert answered(document) == expected(
        lambda p: p["type"] == "dress" and p["color"] == "red" and p["price"] <= 50, currency="USD")

    # Asked again within --max-age: answered from the stored items, no request to either shop.
    requests = {name: (logs / f"{name}.log").read_text().count("\n") for name in SITES}
    gateway, pushed = pushgateway
    again = scrapy_query(tmp_path, urls, "cheapest dress under 100", "--json", "--limit", "100",
                         "--max-age", "1h", CHECKPOINT_PROMETHEUS_PUSHGATEWAY=gateway).json()
    assert answered(again) == want
    assert {s["outcome"] for s in again["sites"]} == {"reused"}
    # Its response time, pushed as a metric.
    ((_, body),) = pushed
    assert 'scrapy_checkpoint_query_sites{answer="reused"} 2.0' in body
    assert f"scrapy_checkpoint_query_results {float(len(want))}" in body
    assert {name: (logs / f"{name}.log").read_text().count("\n") for name in SITES} == requests

    # The parser learns the sites' own words from what they stored: a brand of theirs is a
    # brand, not a keyword.
    catalogs = {site: Catalog(name, PRODUCTS) for name, site in SITES.items()}
    site, sku, _ = want[0]
    brand = catalogs[site].product(sku)["brand"]
    document = scrapy_query(tmp_path, urls, f"{brand} dress", "--json", "--max-age", "1h").json()
    assert document["parsed_intent"]["attributes"]["brand"] == brand.lower(), document["parsed_intent"]
    assert document["results"] and {r["brand"] for r in document["results"]} == {brand}

    # The table for people: one row per result, cheapest first.
    text = scrapy_query(tmp_path, urls, "cheapest dress under 100", "--limit", "3", "--max-age", "1h")
    assert text.returncode == 0, text
    rows = text.stdout.splitlines()
    assert rows[0].split()[:4] == ["#", "PRICE", "CURRENCY", "SITE"] and len(rows) == 4
    assert [row.split()[1] for row in rows[1:]] == [f"{price:.2f}" for _, _, price in want[:3]]


def test_a_query_killed_mid_crawl_and_resumed_returns_the_same_results(tmp_path):
    """Slow shops, one request at a time: the query is SIGKILLed once a site's crawl, not
    finished, has saved items in its checkpoint, then finished with --resume SESSION_ID; the
    answer equals the catalogs'."""
    stack, urls = shops_running(tmp_path, latency=0.05)
    with stack:
        command, env = query_command(tmp_path, urls, "cheapest dress under 100", "--json", "--limit", "100",
                                     CONCURRENT_REQUESTS=1, CHECKPOINT_FLUSH_INTERVAL=0.2)
        process = subprocess.Popen(command, cwd=demo_support.PROJECT_DIR, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            store = SQLiteCheckpointStore(tmp_path / "checkpoints" / "checkpoints.sqlite3")
            deadline = time.monotonic() + PATIENCE
            while True:
                assert process.poll() is None, "the query ended before any item was saved"
                assert time.monotonic() < deadline, "no item was saved"
                if store.path.exists():
                    store.open()
                    try:
                        under_way = [c.checkpoint_id for c in store.list_checkpoints(status="active")
                                     if c.pipeline_data.extraction_results.items_scraped]
                        sessions = list(store.list_query_sessions())
                    finally:
                        store.close()
                    if sessions and under_way:
                        break
                time.sleep(0.02)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        (session,) = sessions
        assert session.status.value == "running"
        document = scrapy_query(tmp_path, urls, "--resume", session.session_id, "--json", "--limit", "100").json()
    assert document["session_id"] == session.session_id
    # A site not finished then is crawled now, from its checkpoint.
    outcomes = {s["checkpoint_id"]: s["outcome"] for s in document["sites"]}
    assert {outcomes.get(checkpoint_id) for checkpoint_id in under_way} == {"finished"}, document["sites"]
    assert answered(document) == expected(dresses_under_100)
    store.open()
    try:
        assert store.get_query_session(session.session_id).status.value == "completed"
        # ... went on with the killed run's checkpoint: a second run of it, not a new one.
        assert [len(store.get(checkpoint_id).runs) for checkpoint_id in under_way] == [2] * len(under_way)
    finally:
        store.close()


def test_the_user_is_stored_as_a_keyed_hash(tmp_path, shops):
    urls, _ = shops
    document = scrapy_query(tmp_path, urls, "black bag", "--json", "--user", "alice@example.com",
                            "--max-age", "1h").json()
    store = SQLiteCheckpointStore(tmp_path / "checkpoints" / "checkpoints.sqlite3")
    store.open()
    try:
        (query,) = store.list_user_queries()
    finally:
        store.close()
    assert query.query_id == document["query_id"]
    assert query.user_id == hmac.new(SECRET.encode(), b"alice@example.com", hashlib.sha256).hexdigest()
    assert "alice" not in json.dumps(query.model_dump(mode="json"))

    # `scrapy checkpoint queries` lists it with its session, for that user and for all.
    extra = {"CHECKPOINT_QUERY_SECRET": SECRET}
    mine = scrapy_checkpoint(tmp_path, "queries", "--user", "alice@example.com", "--json", extra=extra).json()
    assert [(q["query_id"], q["raw_query"], [s["session_id"] for s in q["sessions"]]) for q in mine] == [
        (document["query_id"], "black bag", [document["session_id"]])]
    assert mine[0]["sessions"][0]["results"]["returned"] == len(document["results"])
    assert scrapy_checkpoint(tmp_path, "queries", "--user", "bob", "--json", extra=extra).json() == []
    text = scrapy_checkpoint(tmp_path, "queries", extra=extra).stdout.splitlines()
    assert text[0].split()[:3] == ["QUERY", "ID", "ASKED"] and "black bag" in text[1] and len(text) == 2


def test_items_read_from_the_mongodb_item_pipeline(tmp_path, shops, mongo_uri_db):
    """A project that keeps its items in MongoDB (CheckpointMongoDBPipeline) and not in its
    checkpoints: the answer is read from the pipeline's collection."""
    urls, _ = shops
    uri, database = mongo_uri_db
    document = scrapy_query(
        tmp_path, urls, "cheapest dress under 100", "--json", "--limit", "100", CHECKPOINT_STORE_ITEMS=False,
        ITEM_PIPELINES={"scrapy_checkpoint.CheckpointMongoDBPipeline": 300}, CHECKPOINT_MONGO_ITEMS_URI=uri,
        CHECKPOINT_MONGO_ITEMS_DATABASE=database,
    ).json()
    assert answered(document) == expected(dresses_under_100)
    store = SQLiteCheckpointStore(tmp_path / "checkpoints" / "checkpoints.sqlite3")
    store.open()
    try:
        assert [list(store.items(cid)) for cid in document["checkpoint_ids"]] == [[], []]
    finally:
        store.close()
    run = scrapy_query(tmp_path, urls, "dress", CHECKPOINT_STORE_ITEMS=False)
    assert run.returncode == 2 and "CHECKPOINT_STORE_ITEMS is off and ITEM_PIPELINES has no" in run.failure()


def test_a_site_that_fails_is_named_and_the_others_answer(tmp_path, shops):
    """Every checkpoint_enabled spider by default: the demo's `products` spider has no shop
    URL here, so its crawl fails to start; the shops answer, and the exit status is 1."""
    urls, _ = shops
    run = scrapy_query(tmp_path, urls, "cheapest dress under 100", "--json", "--limit", "100", spiders=None)
    assert run.returncode == 1, run
    document = json.loads(run.stdout)
    assert answered(document) == expected(dresses_under_100)
    outcomes = {s["spider"]: s["outcome"] for s in document["sites"]}
    assert outcomes["northwind"] == outcomes["lumiere"] == "finished"
    assert outcomes["products"].startswith("failed: ValueError: No shop URL"), outcomes
    assert f"scrapy query --resume {document['session_id']}" in run.stderr


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["the"], 2, "the"),
        ([], 2, "Missing query"),
        (["--resume", "no-such-session"], 1, "No query session no-such-session"),
        (["dress", "--max-age", "soon"], 2, "--max-age ('soon') must be a duration"),
        (["dress", "--spider", "nope"], 2, "--spider ('nope')"),
    ],
)
def test_command_line_errors(tmp_path, args, status, words):
    run = scrapy_query(tmp_path, {}, *args)
    assert run.returncode == status, run
    assert words in run.failure()
