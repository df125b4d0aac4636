"""Services the benchmarks start: the same throwaway servers the test suite uses."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redis_server import RedisServer, find_redis_server  # noqa: E402


@contextmanager
def redis_server(directory: Path) -> Iterator[str | None]:
    """A redis-server on a free port, yielding its URL; None when there is no binary."""
    binary = find_redis_server()
    if binary is None:
        print("no redis-server: skipping the Redis contenders", file=sys.stderr)
        yield None
        return
    server = RedisServer(binary, directory)
    server.start()
    try:
        yield f"{server.url}/0"
    finally:
        server.stop()
