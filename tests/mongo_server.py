"""pytest plugin: a MongoDB endpoint, from CHECKPOINT_TEST_MONGODB_URI or the nx-27017 stand-in."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from .server_process import ServerProcess

ENV_URI = "CHECKPOINT_TEST_MONGODB_URI"


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


class MongoServer(ServerProcess):
    """A MongoDB endpoint: ``uri``; ``real`` is False for the nx-27017 stand-in, which can be
    stopped and started again on the same port with the same data (fault injection). An
    external server (``external``) is neither started nor stopped here."""

    name = "nx-27017"
    startup_timeout = 20.0

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "nx-27017.out")
        self.uri = f"mongodb://127.0.0.1:{self.port}"
        self.real = False
        self.external = False

    @classmethod
    def at(cls, uri: str, directory: Path) -> MongoServer:
        """The server of *uri*, run by someone else."""
        server = cls(directory)
        with _client(uri, 10.0) as client:
            info = client.admin.command("buildInfo")
        server.uri, server.real, server.external = uri, info.get("process") != "nx_27017", True
        return server

    @property
    def running(self) -> bool:
        return self.external or super().running

    def command(self) -> list[str]:
        executable = Path(sys.executable).with_name("nx-27017")
        command = str(executable) if executable.exists() else shutil.which("nx-27017")
        if command is None:
            pytest.fail(f"nx-27017 is not installed (pip install -e '.[test]'), and {ENV_URI} is not set")
        return [command, "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.directory / "data"),
                "--log-file", str(self.directory / "nx-27017.log"),
                "--pid-file", str(self.directory / "nx-27017.pid")]

    def answers(self) -> bool:
        """Whether our stand-in answers (not another server that took the port meanwhile)."""
        from pymongo.errors import PyMongoError

        try:
            with _client(self.uri, 0.5) as client:
                return client.admin.command("buildInfo").get("pid") == self.pid
        except PyMongoError:
            return False

    def start(self) -> None:
        if self.external:
            pytest.skip(f"cannot start the external MongoDB of {ENV_URI}")
        super().start()

    def stop(self) -> None:
        if self.external:
            pytest.skip(f"cannot stop the external MongoDB of {ENV_URI}")
        super().stop()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """The MongoDB endpoint of the session; the stand-in failing to start fails the tests."""
    uri = os.environ.get(ENV_URI)
    if uri:
        yield MongoServer.at(uri, tmp_path_factory.mktemp("mongodb"))
        return
    server = MongoServer(tmp_path_factory.mktemp("mongodb"))
    server.start()
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
