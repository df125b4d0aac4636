"""Shared test helpers."""

from __future__ import annotations

import hashlib
from pathlib import Path

from scrapy_checkpoint.models import POSITION_BITS, Batch, Checkpoint, CheckpointRun, DiscoveredRequest, utcnow


def fp(n: int) -> bytes:
    """A 20-byte fingerprint, like Scrapy's."""
    return hashlib.sha1(str(n).encode()).digest()


def discovered(n: int, start: bool = False) -> DiscoveredRequest:
    return DiscoveredRequest(fp(n), f"http://shop.test/p/{n}", f"request-{n}".encode(), start)


def new_checkpoint(**fields) -> Checkpoint:
    fields.setdefault("spider", "products")
    fields.setdefault("site_domain", "shop.test")
    fields.setdefault("job_type", "product_catalog")
    return Checkpoint.new(ttl=3600, **fields)


#: Where batch() recorded each fingerprint it discovered (cleared before each test).
POSITIONS: dict[bytes, int] = {}


def batch(seq: int, **fields) -> Batch:
    """A batch as the extension makes it: a processed request carries the position of the
    record its discovery wrote, in an earlier batch of the test (RECORD_META)."""
    made = Batch(seq=seq, **fields)
    for i, r in enumerate(made.discovered):
        POSITIONS.setdefault(r.fingerprint, (seq << POSITION_BITS) + i)
    if "positions" not in fields:
        made.positions = {f: POSITIONS[f] for f in made.processed if f in POSITIONS}
    return made


def run(number: int, **fields) -> CheckpointRun:
    """A run of a checkpoint, started now."""
    now = utcnow()
    return CheckpointRun(number=number, started_at=now, updated_at=now, host="test", pid=1, **fields)


#: Source of a downloader middleware for the test projects below: it appends each request's
#: URL and the headers named in SENT_HEADERS, as they are sent, to the JSON-lines SENT_LOG.
RECORD_SENT = """
import json


class RecordSent:
    def __init__(self, path, names):
        self.path, self.names = path, names

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler.settings["SENT_LOG"], crawler.settings.getlist("SENT_HEADERS"))

    def process_request(self, request):
        line = {name: (request.headers.get(name) or b"").decode() for name in self.names}
        with open(self.path, "a") as f:
            f.write(json.dumps({"url": request.url, **line}) + "\\n")
"""


def write_project(directory: Path, name: str, settings: str, spider: str) -> Path:
    """A Scrapy project in *directory*: ``<name>_settings.py`` and ``<name>_spider.py``."""
    directory.mkdir()
    (directory / "scrapy.cfg").write_text(f"[settings]\ndefault = {name}_settings\n")
    (directory / f"{name}_settings.py").write_text(settings)
    (directory / f"{name}_spider.py").write_text(spider)
    return directory
