"""The add-on wires every component, and they stay inactive until switched on."""

from __future__ import annotations

import logging

import pytest
from scrapy import Spider, signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from scrapy_checkpoint import (
    Addon,
    CheckpointDownloaderMiddleware,
    CheckpointExtension,
    CheckpointItemPipeline,
    CheckpointSpiderMiddleware,
)
from scrapy_checkpoint.addon import ITEM_PIPELINE_ORDER


class OptedIn(Spider):
    name = "opted_in"
    checkpoint_enabled = True


class NotOptedIn(Spider):
    name = "not_opted_in"


def crawler_with_addon(spidercls=OptedIn, **settings):
    crawler = get_crawler(spidercls, {"ADDONS": {Addon: 100}, **settings})
    crawler._apply_settings()
    return crawler


def test_addon_adds_components_outermost():
    settings = crawler_with_addon().settings
    assert settings.getdict("EXTENSIONS")[CheckpointExtension] == 0
    for name, ours in (("SPIDER_MIDDLEWARES", CheckpointSpiderMiddleware),
                       ("DOWNLOADER_MIDDLEWARES", CheckpointDownloaderMiddleware)):
        components = settings.getwithbase(name)
        order = components.pop(ours)
        assert order < min(v for v in components.values() if v is not None), name


class Clean:
    def process_item(self, item):
        return item


def test_addon_adds_the_item_pipeline_last():
    """An item that reaches it has passed every pipeline: it is scraped."""
    clean = f"{__name__}.Clean"
    settings = crawler_with_addon(ITEM_PIPELINES={clean: 1000}).settings
    assert settings.getdict("ITEM_PIPELINES") == {clean: 1000, CheckpointItemPipeline: ITEM_PIPELINE_ORDER}
    assert ITEM_PIPELINE_ORDER > 1000


def test_addon_respects_user_order():
    settings = crawler_with_addon(
        SPIDER_MIDDLEWARES={"scrapy_checkpoint.CheckpointSpiderMiddleware": 5}
    ).settings
    assert settings.getdict("SPIDER_MIDDLEWARES") == {"scrapy_checkpoint.CheckpointSpiderMiddleware": 5}


def test_switch_off_builds_nothing(monkeypatch):
    monkeypatch.delenv("ENABLE_CHECKPOINTS", raising=False)
    crawler = crawler_with_addon()
    assert crawler.get_extension(CheckpointExtension) is None


def test_switch_on_builds_extension(tmp_path):
    crawler = crawler_with_addon(CHECKPOINT_ENABLED=True, CHECKPOINT_DIR=str(tmp_path))
    assert isinstance(crawler.get_extension(CheckpointExtension), CheckpointExtension)
    assert not (tmp_path / "checkpoints.sqlite3").exists()  # no I/O before the spider opens


def test_spider_must_opt_in(tmp_path, caplog):
    crawler = get_crawler(NotOptedIn, {"CHECKPOINT_ENABLED": True, "CHECKPOINT_DIR": str(tmp_path)})
    with caplog.at_level(logging.INFO), pytest.raises(NotConfigured):
        build_from_crawler(CheckpointExtension, crawler)
    assert "spider not_opted_in does not opt in (checkpoint_enabled = True)" in caplog.text


@pytest.mark.parametrize(("spidercls", "enabled"), [(OptedIn, False), (NotOptedIn, True)])
def test_spider_without_checkpoints_still_has_one(spidercls, enabled):
    """Code written for checkpoints (self.checkpoint.state[...]) runs without them."""
    crawler = get_crawler(spidercls, {"CHECKPOINT_ENABLED": enabled})
    with pytest.raises(NotConfigured):
        build_from_crawler(CheckpointExtension, crawler)
    spider = crawler._create_spider()
    crawler.signals.send_catch_log(signals.spider_opened, spider=spider)
    assert spider.checkpoint.checkpoint_id is None and not spider.checkpoint.resumed
    spider.checkpoint.state["seen"] = 1


def test_invalid_setting_refuses_the_crawl_in_one_line(caplog):
    crawler = crawler_with_addon(CHECKPOINT_ENABLED=True, CHECKPOINT_BATCH_SIZE=0)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["CHECKPOINT_BATCH_SIZE (0) must be a positive whole number of events. "
                      "Set it to e.g. 500."]
    assert crawler.get_extension(CheckpointExtension).misconfigured
    for mw in (CheckpointSpiderMiddleware, CheckpointDownloaderMiddleware, CheckpointItemPipeline):
        with pytest.raises(NotConfigured):
            build_from_crawler(mw, crawler)


@pytest.mark.parametrize("mw", [CheckpointSpiderMiddleware, CheckpointDownloaderMiddleware, CheckpointItemPipeline])
def test_middlewares_need_the_extension(mw):
    crawler = crawler_with_addon()
    with pytest.raises(NotConfigured):
        build_from_crawler(mw, crawler)
