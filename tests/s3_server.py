"""pytest plugin: a throwaway moto S3 server on a free loopback port, for feed delivery tests."""

from __future__ import annotations

import http.client
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from .server_process import ServerProcess

# moto accepts any credentials; fixed fake ones make a leak to real AWS harmless.
ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"
BUCKET = "feeds"


class S3Server(ServerProcess):
    """A ``python -m moto.server`` subprocess with one bucket, ``bucket``.

    moto keeps objects in memory: ``stop()`` loses them, and ``start()`` again, on the same
    port, recreates an empty ``bucket``.
    """

    name = "moto server"
    startup_timeout = 15.0
    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    region = REGION

    def __init__(self, directory: Path, bucket: str = BUCKET) -> None:
        super().__init__(directory, "moto-server.log")
        self.bucket = bucket
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._client: Any = None

    @property
    def env(self) -> dict[str, str]:
        """Environment overrides for a ``scrapy crawl`` subprocess (merge them into
        ``os.environ``): botocore then talks to this server only, even for a client built
        without ``AWS_ENDPOINT_URL``, and never asks the EC2 metadata service or a
        developer's ~/.aws files for credentials or a region."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    @property
    def settings(self) -> dict[str, str]:
        """The Scrapy settings that point ``S3FeedStorage`` at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION_NAME": self.region,
        }

    def url(self, key: str) -> str:
        """``s3://bucket/key``, a feed URI for this server's bucket."""
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def client(self):
        """A boto3 S3 client of this server, for tests to inspect the bucket."""
        if self._client is None:
            import boto3.session
            from botocore.config import Config

            self._client = boto3.session.Session().client(
                "s3",
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                # Fail fast when a test stopped the server, instead of botocore's retries.
                config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
            )
        return self._client

    def get(self, key: str) -> bytes:
        """The bytes of object *key* of ``bucket``."""
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self) -> list[str]:
        """The keys of ``bucket``, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", ()))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def environment(self) -> dict[str, str]:
        environment = {**os.environ, **self.env}
        environment.pop("AWS_ENDPOINT_URL")
        return environment

    def start(self) -> None:
        if not self.running:
            super().start()
            self.client().create_bucket(Bucket=self.bucket)

    def answers(self) -> bool:
        """Whether the server answers HTTP (a cheap probe: botocore would retry and sign)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            connection.request("GET", "/moto-api/data.json")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def close(self) -> None:
        self.stop()
        if self._client is not None:
            self._client.close()
            self._client = None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """An S3 endpoint for the session, with bucket ``feeds``; tests may ``stop()`` and ``start()`` it."""
    missing = [name for name in ("boto3", "moto", "flask") if importlib.util.find_spec(name) is None]
    if missing:
        # Never skip: a CI run that silently skips the S3 feed tests would look green.
        pytest.fail(f"{', '.join(missing)} missing (boto3, moto[server]): pip install -e '.[test]'.")
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.close()
