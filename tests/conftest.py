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


@pytest.fixture
def shop(tmp_path):
    """A demo shop of 600 products; yields (url, shop log path, products)."""
    import demo_support

    log = tmp_path / "shop.log"
    with demo_support.running_shop(log, products=600, per_page=20, categories=5, latency=0.002) as url:
        yield url, log, 600
