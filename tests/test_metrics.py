"""Metrics: the settings, the Prometheus registry and its hooks, the in-process alerts, the
shipped alert rules (promtool), and /metrics scraped from a real crawl."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from scrapy import Request, Spider
from scrapy.settings import Settings
from scrapy.statscollectors import MemoryStatsCollector
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from scrapy_checkpoint import CheckpointExtension
from scrapy_checkpoint.extension import checkpoint_identity
from scrapy_checkpoint.metrics import (
    CheckpointMetrics,
    PrometheusCheckpointMetrics,
    storage_used_ratio,
)
from scrapy_checkpoint.settings import CheckpointSettings
from scrapy_checkpoint.stores import SQLiteCheckpointStore

from .server_process import free_port

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "scrapy_checkpoint" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
LABELS = {"spider": "products", "site": "shop.test", "job_type": "catalog"}


def checkpoint_settings(**values) -> CheckpointSettings:
    return CheckpointSettings.from_settings(Settings({"CHECKPOINT_ENABLED": True, **values}))


def stats() -> MemoryStatsCollector:
    return MemoryStatsCollector(get_crawler(Spider))


@pytest.fixture
def served():
    """Prometheus metrics opened (and served) on a free port; stopped afterwards."""
    port = free_port()
    metrics = PrometheusCheckpointMetrics(stats(), None, port)
    metrics.opened("products", "shop.test", "catalog", "sqlite")
    try:
        yield metrics, port
    finally:
        metrics._stop()


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, {**LABELS, **labels})


# Settings


def test_off_by_default():
    settings = checkpoint_settings()
    assert settings.prometheus_port is None
    assert settings.prometheus_address == "127.0.0.1"
    assert settings.storage_limit is None
    assert type(CheckpointMetrics.from_settings(settings, stats())) is CheckpointMetrics


def test_port_from_command_line():
    settings = checkpoint_settings(CHECKPOINT_PROMETHEUS_PORT="9410")
    assert settings.prometheus_port == 9410
    assert isinstance(CheckpointMetrics.from_settings(settings, stats()), PrometheusCheckpointMetrics)


@pytest.mark.parametrize("port", [0, 65536, -1, "http", True, 1.5])
def test_port_is_a_tcp_port(port):
    with pytest.raises(ValueError, match=r"CHECKPOINT_PROMETHEUS_PORT \(.*\) must be a TCP port, 1 to 65535"):
        checkpoint_settings(CHECKPOINT_PROMETHEUS_PORT=port)


@pytest.mark.parametrize("address", ["", "  ", 127])
def test_address_is_a_string(address):
    with pytest.raises(ValueError, match=r"CHECKPOINT_PROMETHEUS_ADDRESS \(.*\) must be the address"):
        checkpoint_settings(CHECKPOINT_PROMETHEUS_ADDRESS=address)


def test_pushgateway_is_http():
    with pytest.raises(ValueError, match=r"CHECKPOINT_PROMETHEUS_PUSHGATEWAY \('ftp://gw'\) must be an http"):
        checkpoint_settings(CHECKPOINT_PROMETHEUS_PUSHGATEWAY="ftp://gw")


@pytest.mark.parametrize("limit", [0, -5, "10GB"])
def test_storage_limit_positive(limit):
    rule = r"CHECKPOINT_STORAGE_LIMIT \(.*\) must be a positive whole number of bytes"
    with pytest.raises(ValueError, match=rule):
        checkpoint_settings(CHECKPOINT_STORAGE_LIMIT=limit)


def test_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install 'scrapy-checkpoint\[prometheus\]'"):
        PrometheusCheckpointMetrics(stats(), None, 9410)


# The registry and its hooks


def test_every_metric_registered_with_its_labels(served):
    metrics, _ = served
    assert value(metrics, "scrapy_checkpoint_flushes_total", store="sqlite") == 0
    assert value(metrics, "scrapy_checkpoint_flush_seconds_count", store="sqlite") == 0
    assert value(metrics, "scrapy_checkpoint_flush_seconds_bucket", store="sqlite", le="0.2") == 0
    for outcome in ("resumed", "refused"):
        assert value(metrics, "scrapy_checkpoint_recoveries_total", outcome=outcome) == 0
    assert value(metrics, "scrapy_checkpoint_checkpoints_created_total") == 0
    assert value(metrics, "scrapy_checkpoint_pending_requests") == 0
    assert value(metrics, "scrapy_checkpoint_buffered_events") == 0
    assert value(metrics, "scrapy_checkpoint_store_up", store="sqlite") == 0
    # Unknown until measured: no sample rather than a made-up 0.
    assert value(metrics, "scrapy_checkpoint_storage_used_ratio", store="sqlite") is None
    # A registry of the crawl's own: nothing in the process-wide one.
    assert prometheus_client.REGISTRY.get_sample_value("scrapy_checkpoint_flushes_total", LABELS) is None


def test_hooks_update_metrics(served):
    metrics, _ = served
    metrics.store_state(True)
    metrics.checkpoint_created()
    metrics.pending_changed(10)
    metrics.pending_changed(-3)
    metrics.flushed(0.05, 0.25)
    metrics.flushed(0.3, None)
    metrics.recovery(resumed=True)
    assert value(metrics, "scrapy_checkpoint_store_up", store="sqlite") == 1
    assert value(metrics, "scrapy_checkpoint_checkpoints_created_total") == 1
    assert value(metrics, "scrapy_checkpoint_pending_requests") == 7
    assert value(metrics, "scrapy_checkpoint_flushes_total", store="sqlite") == 2
    assert value(metrics, "scrapy_checkpoint_flush_seconds_bucket", store="sqlite", le="0.2") == 1
    assert value(metrics, "scrapy_checkpoint_flush_seconds_sum", store="sqlite") == pytest.approx(0.35)
    assert value(metrics, "scrapy_checkpoint_storage_used_ratio", store="sqlite") == 0.25
    assert value(metrics, "scrapy_checkpoint_recoveries_total", outcome="resumed") == 1
    metrics.leases("granted", 3)
    metrics.leases("reclaimed", 1)
    metrics.leases("granted", 2)
    assert value(metrics, "scrapy_checkpoint_leases_total", event="granted") == 5
    assert value(metrics, "scrapy_checkpoint_leases_total", event="reclaimed") == 1
    metrics.store_state(False)
    metrics.buffered(42)
    assert value(metrics, "scrapy_checkpoint_store_up", store="sqlite") == 0
    assert value(metrics, "scrapy_checkpoint_buffered_events") == 42


def test_serves_metrics_and_stops(served):
    metrics, port = served
    metrics.flushed(0.01, None)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    (sample,) = families["scrapy_checkpoint_flushes"].samples
    assert sample.labels == {**LABELS, "store": "sqlite"} and sample.value == 1
    metrics._stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_port_taken_keeps_crawling(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = PrometheusCheckpointMetrics(stats(), None, taken.getsockname()[1])
        with caplog.at_level(logging.WARNING):
            metrics.opened("products", "shop.test", "catalog", "sqlite")
    assert "Prometheus metrics not served" in caplog.text
    assert metrics.stats.get_value("checkpoint/metrics_error/OSError") == 1
    metrics.flushed(0.01, None)  # the hooks still work
    metrics._stop()


def test_pushes_to_pushgateway_at_close(pushgateway):
    url, received = pushgateway
    metrics = PrometheusCheckpointMetrics(stats(), None, free_port(), pushgateway=url)
    metrics.opened("products", "shop.test", "catalog", "sqlite")
    metrics.flushed(0.01, None)
    metrics._stop()
    ((path, body),) = received
    assert path == "/metrics/job/scrapy_checkpoint/job_type/catalog/site/shop.test/spider/products"
    labels = 'job_type="catalog",site="shop.test",spider="products",store="sqlite"'
    assert f"scrapy_checkpoint_flushes_total{{{labels}}} 1.0" in body


def test_a_query_pushes_its_response_time(pushgateway):
    from scrapy_checkpoint.metrics import push_query_answer

    url, received = pushgateway
    push_query_answer(url, 1.25, "completed", 7, {"crawled": 1, "reused": 1})
    ((path, body),) = received
    assert path == "/metrics/job/scrapy_checkpoint_query"
    assert 'scrapy_checkpoint_query_response_seconds{outcome="completed"} 1.25' in body
    assert "scrapy_checkpoint_query_results 7.0" in body
    assert 'scrapy_checkpoint_query_sites{answer="reused"} 1.0' in body
    assert 'scrapy_checkpoint_query_sites{answer="failed"} 0.0' in body


def test_a_query_push_that_fails_is_a_warning(caplog):
    from scrapy_checkpoint.metrics import push_query_answer

    with caplog.at_level(logging.WARNING):
        push_query_answer(f"http://127.0.0.1:{free_port()}", 1.0, "completed", 0, {})
    assert "Query metrics not pushed to CHECKPOINT_PROMETHEUS_PUSHGATEWAY" in caplog.text


class ShopSpider(Spider):
    name = "products"
    allowed_domains = ["shop.test"]
    checkpoint_enabled = True
    checkpoint_job_type = "catalog"


def test_extension_updates_metrics(tmp_path):
    crawler = get_crawler(ShopSpider, {"CHECKPOINT_ENABLED": True, "CHECKPOINT_DIR": str(tmp_path),
                                       "CHECKPOINT_PROMETHEUS_PORT": free_port()})
    crawler.spider = spider = crawler._create_spider()
    ext = build_from_crawler(CheckpointExtension, crawler)
    metrics = ext.metrics
    assert isinstance(metrics, PrometheusCheckpointMetrics)
    metrics.opened(*checkpoint_identity(spider), ext.store.name)
    try:
        ext.request_scheduled(Request("http://shop.test/p/1"), spider)
        ext.request_scheduled(Request("http://shop.test/p/2"), spider)
        ext.processed(Request("http://shop.test/p/1"))
        ext._take_batch()
        assert value(metrics, "scrapy_checkpoint_pending_requests") == 1
        ext._store_error("flush", ConnectionError("down"))
        assert value(metrics, "scrapy_checkpoint_store_up", store="sqlite") == 0
    finally:
        metrics._stop()


def test_extension_without_port_has_alerts_only(tmp_path):
    crawler = get_crawler(ShopSpider, {"CHECKPOINT_ENABLED": True, "CHECKPOINT_DIR": str(tmp_path)})
    crawler.spider = crawler._create_spider()
    ext = build_from_crawler(CheckpointExtension, crawler)
    assert type(ext.metrics) is CheckpointMetrics


# In-process alerts


@pytest.mark.parametrize(
    ("name", "trigger", "quiet"),
    [
        ("save_latency", lambda m: m.flushed(0.25, None), lambda m: m.flushed(0.2, None)),
        ("storage_used", lambda m: m.flushed(0.01, 0.85), lambda m: m.flushed(0.01, 0.8)),
        # One crawl per process: a single refused recovery is 100 %.
        ("recovery_failure_rate", lambda m: m.recovery(resumed=False), lambda m: m.recovery(resumed=True)),
    ],
)
def test_alert_logged_once_and_counted(caplog, name, trigger, quiet):
    metrics = CheckpointMetrics(stats())
    with caplog.at_level(logging.WARNING, logger="scrapy_checkpoint.metrics"):
        quiet(metrics)
        assert metrics.stats.get_value(f"checkpoint/alerts/{name}") is None
        assert not caplog.records
        trigger(metrics)
        trigger(metrics)
    assert metrics.stats.get_value(f"checkpoint/alerts/{name}") == 2
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert f"Checkpoint alert {name}:" in record.getMessage()
    assert f"checkpoint/alerts/{name}" in record.getMessage()


def test_recovery_rate_counts_resumed_too():
    metrics = CheckpointMetrics(stats())
    for _ in range(20):
        metrics.recovery(resumed=True)
    metrics.recovery(resumed=False)  # 1 in 21: under 5 %
    assert metrics.stats.get_value("checkpoint/alerts/recovery_failure_rate") is None
    metrics.recovery(resumed=False)  # 2 in 22: over
    assert metrics.stats.get_value("checkpoint/alerts/recovery_failure_rate") == 1


# Storage used


def test_sqlite_storage_ratio(tmp_path):
    store = SQLiteCheckpointStore(tmp_path / "checkpoints.sqlite3")
    store.open()
    try:
        used = sum(p.stat().st_size for p in tmp_path.glob("checkpoints.sqlite3*") if p.name[-4:] != "-shm")
        assert storage_used_ratio(store, 10 * used) == pytest.approx(0.1)
        free = shutil.disk_usage(tmp_path).free
        assert storage_used_ratio(store) == pytest.approx(used / (used + free), rel=0.01)
    finally:
        store.close()


def test_storage_measured_at_most_every_interval(tmp_path):
    store = SQLiteCheckpointStore(tmp_path / "checkpoints.sqlite3")
    store.open()
    try:
        metrics = CheckpointMetrics(stats(), storage_limit=1 << 40)
        assert metrics.measure_storage(store) is not None
        assert metrics.measure_storage(store) is None  # too soon: not measured again
    finally:
        store.close()


def test_redis_storage_ratio(redis_url):
    from scrapy_checkpoint.stores.redis import RedisCheckpointStore

    store = RedisCheckpointStore(redis_url, prefix="metrics-test")
    store.open()
    client = store._client
    maxmemory = client.config_get("maxmemory")["maxmemory"]
    try:
        used = client.info("memory")["used_memory"]
        assert storage_used_ratio(store, 100 * used) == pytest.approx(0.01, rel=0.2)
        client.config_set("maxmemory", 0)
        assert storage_used_ratio(store) is None  # no limit anywhere: unknown
        client.config_set("maxmemory", 1 << 30)
        assert storage_used_ratio(store) == pytest.approx(used / (1 << 30), rel=0.2)
    finally:
        client.config_set("maxmemory", maxmemory)
        store.close()


# The shipped alert rules


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is missing: .ci/run installs it (apt-get install prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus); CI=true makes this a failure")
    return path


def test_alert_rules_are_valid():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 rules found" in result.stdout


def test_alert_rules_fire_at_thresholds():
    result = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                            cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# End to end: /metrics scraped while a real crawl runs


@pytest.mark.e2e
def test_crawl_serves_metrics(tmp_path, shop):
    from tests.test_e2e import crawl

    url, _, _ = shop
    port = free_port()
    scrapes: list[dict] = []

    def scrape() -> bool:
        """Called every poll while the crawl runs; never kills it."""
        if scrapes and scrapes[-1]["flushes"] > 0:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:  # not serving yet
            return False
        samples = {(s.name, s.labels.get("outcome")): s
                   for f in text_string_to_metric_families(text) for s in f.samples}
        flushes = samples.get(("scrapy_checkpoint_flushes_total", None))
        scrapes.append({"flushes": flushes.value if flushes else 0, "samples": samples})
        return False

    code, killed, crawl_log = crawl(url, tmp_path, extra={"CHECKPOINT_PROMETHEUS_PORT": port},
                                    kill_when=scrape)
    text = crawl_log.read_text()
    assert code == 0 and not killed, text[-3000:]
    assert f"Prometheus metrics on http://127.0.0.1:{port}/metrics" in text
    assert scrapes, f"/metrics never answered during the crawl: {text[-3000:]}"
    assert scrapes[-1]["flushes"] > 0, f"no flush seen in {len(scrapes)} scrapes of a running crawl"
    samples = scrapes[-1]["samples"]
    up = samples[("scrapy_checkpoint_store_up", None)]
    assert up.value == 1
    assert up.labels["spider"] == "products"
    assert up.labels["job_type"] == "product_catalog"
    assert up.labels["site"]
    assert up.labels["store"] == "sqlite"
    assert samples[("scrapy_checkpoint_checkpoints_created_total", None)].value == 1
    assert samples[("scrapy_checkpoint_storage_used_ratio", None)].value > 0
