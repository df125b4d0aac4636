"""Settings validation: one test per rule."""

from __future__ import annotations

import pytest
from scrapy.exceptions import NotConfigured
from scrapy.settings import Settings

from scrapy_checkpoint.settings import DEFAULTS, CheckpointSettings


def build(**values) -> CheckpointSettings:
    settings = Settings({"CHECKPOINT_ENABLED": True, **values})
    return CheckpointSettings.from_settings(settings)


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("ENABLE_CHECKPOINTS", raising=False)
    with pytest.raises(NotConfigured):
        CheckpointSettings.from_settings(Settings())


@pytest.mark.parametrize("value", ["true", "1", "TRUE", "yes"])
def test_environment_switch(monkeypatch, value):
    monkeypatch.setenv("ENABLE_CHECKPOINTS", value)
    assert CheckpointSettings.from_settings(Settings()).flush_interval == DEFAULTS["CHECKPOINT_FLUSH_INTERVAL"]


def test_environment_switch_false_keeps_off(monkeypatch):
    monkeypatch.setenv("ENABLE_CHECKPOINTS", "false")
    with pytest.raises(NotConfigured):
        CheckpointSettings.from_settings(Settings())


def test_defaults():
    s = build()
    assert s.resume is False
    assert s.checkpoint_id is None
    assert s.ttl == 48 * 3600
    assert s.store_items is False
    assert s.page_params == ("page",)
    assert s.directory.name == "checkpoints"


def test_checkpoint_id_implies_resume():
    assert build(CHECKPOINT_ID="abc").resume is True


@pytest.mark.parametrize("value", [-5, 0, "soon", float("nan")])
def test_flush_interval_positive(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_FLUSH_INTERVAL \(.*\) must be a positive number of seconds"):
        build(CHECKPOINT_FLUSH_INTERVAL=value)


@pytest.mark.parametrize("value", [0, -1, "many", True])
def test_batch_size_positive(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_BATCH_SIZE \(.*\) must be a positive whole number"):
        build(CHECKPOINT_BATCH_SIZE=value)


def test_ttl_positive():
    with pytest.raises(ValueError, match=r"CHECKPOINT_TTL \(-1\) must be a positive number of seconds"):
        build(CHECKPOINT_TTL=-1)


def test_reseed_chunk_positive():
    with pytest.raises(ValueError, match=r"CHECKPOINT_RESEED_CHUNK \(0\)"):
        build(CHECKPOINT_RESEED_CHUNK=0)


def test_store_timeout_positive():
    with pytest.raises(ValueError, match=r"CHECKPOINT_STORE_TIMEOUT \(0\)"):
        build(CHECKPOINT_STORE_TIMEOUT=0)


def test_buffer_limit_positive():
    with pytest.raises(ValueError, match=r"CHECKPOINT_BUFFER_LIMIT \(-3\)"):
        build(CHECKPOINT_BUFFER_LIMIT=-3)


@pytest.mark.parametrize("value", [-1, "soon", True])
def test_archive_ttl_not_negative(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_ARCHIVE_TTL \(.+\) must be 0 \(keep forever\)"):
        build(CHECKPOINT_ARCHIVE_TTL=value)


@pytest.mark.parametrize("value", [-1, "often", float("nan")])
def test_log_interval_not_negative(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_LOG_INTERVAL \(.+\) must be 0 \(no progress line\)"):
        build(CHECKPOINT_LOG_INTERVAL=value)


def test_log_interval_zero_turns_the_line_off():
    assert build(CHECKPOINT_LOG_INTERVAL="0").log_interval == 0


def test_resume_must_be_boolean():
    with pytest.raises(ValueError, match=r"CHECKPOINT_RESUME \('maybe'\) must be a boolean"):
        build(CHECKPOINT_RESUME="maybe")


def test_page_params_names():
    with pytest.raises(ValueError, match=r"CHECKPOINT_PAGE_PARAMS"):
        build(CHECKPOINT_PAGE_PARAMS=["page", 3])


def test_page_params_from_command_line_string():
    assert build(CHECKPOINT_PAGE_PARAMS="page,p").page_params == ("page", "p")


def test_checkpoint_id_must_be_string():
    with pytest.raises(ValueError, match=r"CHECKPOINT_ID \(42\) must be a string"):
        build(CHECKPOINT_ID=42)


def test_command_line_strings_accepted():
    s = build(CHECKPOINT_FLUSH_INTERVAL="0.5", CHECKPOINT_BATCH_SIZE="100", CHECKPOINT_RESUME="1")
    assert (s.flush_interval, s.batch_size, s.resume) == (0.5, 100, True)


def test_privacy_defaults():
    s = build()
    assert s.private_headers == ("Authorization", "Proxy-Authorization", "Cookie")
    assert s.private_meta == ("http_user", "http_pass")
    assert s.item_exclude_fields == ()


def test_privacy_lists_from_command_line_strings():
    s = build(CHECKPOINT_PRIVATE_HEADERS="Authorization,X-Api-Key", CHECKPOINT_PRIVATE_META="",
              CHECKPOINT_ITEM_EXCLUDE_FIELDS="email,phone")
    assert s.private_headers == ("Authorization", "X-Api-Key")
    assert s.private_meta == ()  # -s CHECKPOINT_PRIVATE_META= : store every meta key
    assert s.item_exclude_fields == ("email", "phone")


@pytest.mark.parametrize("value", [["Authorization", "X Token"], ["Cookie:"], [""], [b"Cookie"], 42])
def test_private_headers_are_header_names(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_PRIVATE_HEADERS \(.*\) must be a list of HTTP header names"):
        build(CHECKPOINT_PRIVATE_HEADERS=value)


@pytest.mark.parametrize("value", [["http_pass", 3], "http_user,,http_pass"])
def test_private_meta_are_meta_keys(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_PRIVATE_META \(.*\) must be a list of request meta keys"):
        build(CHECKPOINT_PRIVATE_META=value)


@pytest.mark.parametrize("value", [["email", None], "email,"])
def test_item_exclude_fields_are_field_names(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_ITEM_EXCLUDE_FIELDS \(.*\) must be a list of item field names"):
        build(CHECKPOINT_ITEM_EXCLUDE_FIELDS=value)


def test_site_limits_override_for_their_site():
    settings = build(CHECKPOINT_FLUSH_INTERVAL=2, CHECKPOINT_SITE_LIMITS={"shop.example": {"batch_size": 50}})
    site = settings.for_site("shop.example")
    assert (site.batch_size, site.flush_interval) == (50, 2.0)
    assert settings.for_site("other.example") == settings


@pytest.mark.parametrize("value", ["shop.example", {"shop.example": 5}])
def test_site_limits_map_sites_to_limits(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_SITE_LIMITS .* must map site domains to limits"):
        build(CHECKPOINT_SITE_LIMITS=value)


def test_site_limits_known_keys_only():
    with pytest.raises(ValueError, match=r"'interval'\) sets an unknown limit: use flush_interval or batch_size"):
        build(CHECKPOINT_SITE_LIMITS={"shop.example": {"interval": 5}})


def test_query_fields_name_item_fields():
    settings = build(CHECKPOINT_QUERY_FIELDS={"price": "cost", "title": ["headline", "label"]})
    assert settings.query_fields == {"price": ("cost",), "title": ("headline", "label")}
    assert build().query_fields == {}


@pytest.mark.parametrize("value", ["price", {"price": 5}, {"price": []}, {"": "cost"}, {"title": ["ok", ""]}])
def test_query_fields_map_names_to_item_fields(value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_QUERY_FIELDS .* must map conventional names .* to item "
                                         r"field names, e\.g\."):
        build(CHECKPOINT_QUERY_FIELDS=value)


@pytest.mark.parametrize(("key", "value"), [("flush_interval", 0), ("batch_size", 2.5), ("batch_size", True)])
def test_site_limits_positive(key, value):
    with pytest.raises(ValueError, match=r"CHECKPOINT_SITE_LIMITS .* must be a positive"):
        build(CHECKPOINT_SITE_LIMITS={"shop.example": {key: value}})
