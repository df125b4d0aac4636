"""The FTP and S3 servers of the feed delivery tests take uploads from Scrapy's own feed storages."""

from __future__ import annotations

import tempfile

import pytest
from scrapy.extensions.feedexport import FTPFeedStorage, S3FeedStorage

DATA = b'{"name": "a"}\n{"name": "b"}\n'


def feed_file(data: bytes = DATA):
    """A temporary file holding *data*, as a feed storage's ``open()`` would give."""
    file = tempfile.TemporaryFile()
    file.write(data)
    return file


def test_ftp_storage_uploads_into_root(ftp_server):
    storage = FTPFeedStorage(ftp_server.url("feeds/items.jsonl"), feed_options={"overwrite": True})
    storage._store_in_thread(feed_file())
    assert (ftp_server.root / "feeds" / "items.jsonl").read_bytes() == DATA


def test_ftp_url_carries_credentials(ftp_server):
    assert ftp_server.url("/a/b.jsonl") == (
        f"ftp://{ftp_server.user}:{ftp_server.password}@127.0.0.1:{ftp_server.port}/a/b.jsonl")


def test_ftp_server_restarts_keeping_files(ftp_server):
    FTPFeedStorage(ftp_server.url("kept.jsonl"))._store_in_thread(feed_file())
    ftp_server.stop()
    try:
        with pytest.raises(ConnectionRefusedError):
            FTPFeedStorage(ftp_server.url("down.jsonl"))._store_in_thread(feed_file())
    finally:
        ftp_server.start()
    FTPFeedStorage(ftp_server.url("up.jsonl"))._store_in_thread(feed_file(b"up\n"))
    assert (ftp_server.root / "kept.jsonl").read_bytes() == DATA
    assert (ftp_server.root / "up.jsonl").read_bytes() == b"up\n"


def s3_server_kwargs(s3_server) -> dict[str, str]:
    return {"access_key": s3_server.access_key, "secret_key": s3_server.secret_key,
            "endpoint_url": s3_server.endpoint_url, "region_name": s3_server.region}


def test_s3_storage_uploads_into_bucket(s3_server):
    storage = S3FeedStorage(
        s3_server.url("feeds/key.jsonl"),
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
    )
    storage._store_in_thread(feed_file())
    assert s3_server.get("feeds/key.jsonl") == DATA
    assert "feeds/key.jsonl" in s3_server.keys()


def test_s3_settings_configure_the_storage(s3_server):
    from scrapy.utils.test import get_crawler

    crawler = get_crawler(settings_dict=s3_server.settings)
    storage = S3FeedStorage.from_crawler(crawler, s3_server.url("from-settings.jsonl"))
    storage._store_in_thread(feed_file())
    assert s3_server.get("from-settings.jsonl") == DATA


def test_s3_env_points_at_the_server(s3_server):
    env = s3_server.env
    assert env["AWS_ENDPOINT_URL"] == s3_server.endpoint_url
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert env["AWS_DEFAULT_REGION"] == s3_server.region


def test_s3_server_restarts_with_an_empty_bucket(s3_server):
    S3FeedStorage(s3_server.url("lost.jsonl"), **s3_server_kwargs(s3_server))._store_in_thread(feed_file())
    s3_server.stop()
    s3_server.start()
    assert s3_server.keys() == []
    S3FeedStorage(s3_server.url("after.jsonl"), **s3_server_kwargs(s3_server))._store_in_thread(feed_file())
    assert s3_server.get("after.jsonl") == DATA
