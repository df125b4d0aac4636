"""Services the benchmarks start: the same throwaway servers the test suite uses."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "example_project"))

import demo_shop  # noqa: E402
from tests.mongo_server import ENV_URI, MongoServer  # noqa: E402
from tests.redis_server import RedisServer, find_redis_server  # noqa: E402


class RecordingShop(demo_shop.ShopServer):
    """The demo shop, keeping the arrival time of every request (no log file)."""

    def __init__(self, address: tuple[str, int], catalog: demo_shop.Catalog, latency: float = 0.0) -> None:
        super().__init__(address, catalog, latency)
        self.arrivals: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def record(self, path: str) -> None:
        now = time.time()
        with self._lock:
            self.arrivals.append((now, path))

    def since(self, index: int) -> list[tuple[float, str]]:
        with self._lock:
            return self.arrivals[index:]

    def take(self) -> list[tuple[float, str]]:
        with self._lock:
            arrivals, self.arrivals = self.arrivals, []
        return arrivals


@contextmanager
def recording_shop(products: int, latency: float = 0.0) -> Iterator[tuple[RecordingShop, str]]:
    """A :class:`RecordingShop` of *products* in a thread, and its URL."""
    server = RecordingShop(("127.0.0.1", 0), demo_shop.Catalog(products, 20, 5), latency)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="bench-shop", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield server, f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def redis_instance(directory: Path) -> Iterator[RedisServer | None]:
    """A redis-server on a free port, which the caller may stop and start; None when there
    is no binary."""
    binary = find_redis_server()
    if binary is None:
        print("no redis-server: skipping the Redis contenders", file=sys.stderr)
        yield None
        return
    server = RedisServer(binary, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def redis_server(directory: Path) -> Iterator[str | None]:
    """A redis-server on a free port, yielding its URL; None when there is no binary."""
    with redis_instance(directory) as server:
        yield None if server is None else f"{server.url}/0"


def _stand_in_installed() -> bool:
    return Path(sys.executable).with_name("nx-27017").exists() or shutil.which("nx-27017") is not None


@contextmanager
def mongo_instance(directory: Path) -> Iterator[MongoServer | None]:
    """The MongoDB endpoint of CHECKPOINT_TEST_MONGODB_URI, else the nx-27017 stand-in on a
    free port (which the caller may stop and start; an external server it may not); None
    when there is neither."""
    uri = os.environ.get(ENV_URI)
    if uri:
        yield MongoServer.at(uri, directory)
        return
    if not _stand_in_installed():
        print(f"no nx-27017 and no {ENV_URI}: skipping the MongoDB contenders", file=sys.stderr)
        yield None
        return
    data = directory / "mongodb"
    data.mkdir(parents=True, exist_ok=True)
    server = MongoServer(data)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def mongo_server(directory: Path) -> Iterator[str | None]:
    """A MongoDB endpoint (see mongo_instance), yielding its URI; None when there is none."""
    with mongo_instance(directory) as server:
        yield None if server is None else server.uri
