"""Shared test helpers."""

from __future__ import annotations

import hashlib

from scrapy_checkpoint.models import Batch, Checkpoint, CheckpointRun, DiscoveredRequest, utcnow


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


def batch(seq: int, **fields) -> Batch:
    return Batch(seq=seq, **fields)


def run(number: int, **fields) -> CheckpointRun:
    """A run of a checkpoint, started now."""
    now = utcnow()
    return CheckpointRun(number=number, started_at=now, updated_at=now, host="test", pid=1, **fields)
