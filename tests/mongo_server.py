"""pytest plugin: a MongoDB endpoint, from CHECKPOINT_TEST_MONGODB_URI or the nx-27017 stand-in."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ENV_URI = "CHECKPOINT_TEST_MONGODB_URI"
STARTUP_TIMEOUT = 20.0


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "real_mongodb: needs real MongoDB semantics (validator enforcement, TTL deletion); "
        f"skipped unless {ENV_URI} points at a real MongoDB",
    )


def _client(uri: str, timeout: float = 2.0):
    from pymongo import MongoClient

    ms = int(timeout * 1000)
    return MongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MongoServer:
    """A MongoDB endpoint: ``uri``; ``real`` is False for the nx-27017 stand-in, which can be
    stopped and started again on the same port with the same data (fault injection)."""

    def __init__(self, uri: str, real: bool, directory: Path | None = None, port: int = 0) -> None:
        self.uri = uri
        self.real = real
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.directory is None or self.process is not None

    @classmethod
    def external(cls, uri: str) -> MongoServer:
        with _client(uri, 10.0) as client:
            info = client.admin.command("buildInfo")
        return cls(uri, real=info.get("process") != "nx_27017")

    @classmethod
    def stand_in(cls, directory: Path) -> MongoServer:
        port = _free_port()
        server = cls(f"mongodb://127.0.0.1:{port}", real=False, directory=directory, port=port)
        server.start()
        return server

    def start(self) -> None:
        if self.directory is None:
            pytest.skip(f"cannot start the external MongoDB of {ENV_URI}")
        if self.process is not None:
            return
        executable = Path(sys.executable).with_name("nx-27017")
        command = str(executable) if executable.exists() else shutil.which("nx-27017")
        if command is None:
            pytest.fail(f"nx-27017 is not installed (pip install -e '.[test]'), and {ENV_URI} is not set")
        log = self.directory / "nx-27017.out"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [command, "--host", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", str(self.directory / "data"),
                 "--log-file", str(self.directory / "nx-27017.log"),
                 "--pid-file", str(self.directory / "nx-27017.pid")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                pytest.fail(f"nx-27017 exited with code {code}:\n{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"nx-27017 did not answer on {self.uri} within {STARTUP_TIMEOUT}s:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        """Whether our stand-in answers (not another server that took the port meanwhile)."""
        from pymongo.errors import PyMongoError

        try:
            with _client(self.uri, 0.5) as client:
                return client.admin.command("buildInfo").get("pid") == self.process.pid
        except PyMongoError:
            return False

    def stop(self) -> None:
        if self.directory is None:
            pytest.skip(f"cannot stop the external MongoDB of {ENV_URI}")
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """The MongoDB endpoint of the session; the stand-in failing to start fails the tests."""
    uri = os.environ.get(ENV_URI)
    if uri:
        yield MongoServer.external(uri)
        return
    server = MongoServer.stand_in(tmp_path_factory.mktemp("mongodb"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mongo_uri_db(mongo_server):
    """(uri, name of a fresh database), dropped after the test."""
    name = f"checkpoint_test_{uuid.uuid4().hex[:12]}"
    yield mongo_server.uri, name
    if mongo_server.running:
        with _client(mongo_server.uri) as client:
            client.drop_database(name)


@pytest.fixture(autouse=True)
def _real_mongodb_only(request):
    if request.node.get_closest_marker("real_mongodb") is not None:
        if not request.getfixturevalue("mongo_server").real:
            pytest.skip(f"needs a real MongoDB ({ENV_URI}): nx-27017 neither keeps nor enforces "
                        "validators, and does not delete expired documents")
