"""Fixtures shared by the whole suite; service fixtures live in their own plugin modules."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "example_project"))

pytest_plugins: list[str] = [
    "tests.redis_server", "tests.mongo_server", "tests.ftp_server", "tests.s3_server",
]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Under a failed test, the log of each server it used: an upload or a write may have
    failed there."""
    from .server_process import ServerProcess

    report = yield
    if report.failed:
        for name, server in getattr(item, "funcargs", {}).items():
            if isinstance(server, ServerProcess):
                report.sections.append((f"{name} log ({server.log})", server.log_tail()))
    return report


@pytest.fixture(autouse=True)
def _batch_positions():
    """Each test's batches (tests.batch) find only the positions its own batches recorded."""
    from . import POSITIONS

    POSITIONS.clear()


@pytest.fixture
def shop(tmp_path):
    """A demo shop of 600 products; yields (url, shop log path, products)."""
    import demo_support

    log = tmp_path / "shop.log"
    with demo_support.running_shop(log, products=600, per_page=20, categories=5, latency=0.002) as url:
        yield url, log, 600


@pytest.fixture
def pushgateway():
    """A pushgateway on a free port: yields its URL and the (path, body) of every push."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self):
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"])).decode()))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    gateway = HTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=gateway.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{gateway.server_port}", received
    finally:
        gateway.shutdown()
        gateway.server_close()
