"""pytest plugin: a throwaway moto S3 server on a free loopback port, for feed delivery tests."""

from __future__ import annotations

import http.client
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

STARTUP_TIMEOUT = 15.0
# moto accepts any credentials; fixed fake ones make a leak to real AWS harmless.
ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"
BUCKET = "feeds"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """A ``python -m moto.server`` subprocess with one bucket, ``bucket``.

    moto keeps objects in memory: ``stop()`` loses them, and ``start()`` again, on the same
    port, recreates an empty ``bucket``.
    """

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    region = REGION

    def __init__(self, directory: Path, bucket: str = BUCKET) -> None:
        self.directory = directory
        self.bucket = bucket
        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "moto-server.log"
        self._process: subprocess.Popen | None = None
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

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        environment = {**os.environ, **self.env}
        environment.pop("AWS_ENDPOINT_URL")
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                pytest.fail(f"moto server exited with code {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"moto server did not answer on {self.endpoint_url} within "
                            f"{STARTUP_TIMEOUT}s:\n{self.log_tail()}")
            time.sleep(0.05)
        self.client().create_bucket(Bucket=self.bucket)

    def _answers(self) -> bool:
        """Whether the server answers HTTP (a cheap probe: botocore would retry and sign)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            connection.request("GET", "/moto-api/data.json")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def log_tail(self) -> str:
        """The end of the server's log, for failure messages."""
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Show the server's log under a failed test that used it: the upload may have failed there."""
    report = yield
    server = getattr(item, "funcargs", {}).get("s3_server")
    if report.failed and isinstance(server, S3Server):
        report.sections.append((f"s3_server log ({server.log})", server.log_tail()))
    return report
