"""The packed fingerprint set that holds a resumed checkpoint's processed requests."""

from __future__ import annotations

import random
import sys

import pytest

from scrapy_checkpoint._fingerprints import FingerprintSet

from . import fp


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_membership(order):
    members = [fp(n) for n in range(0, 2000, 2)]
    source = sorted(members) if order == "sorted" else random.Random(7).sample(members, len(members))
    packed = FingerprintSet(source)
    assert len(packed) == 1000
    assert all(m in packed for m in members)
    assert not any(fp(n) in packed for n in range(1, 2000, 2))


def test_duplicates_counted_once():
    packed = FingerprintSet([fp(1), fp(2), fp(1), fp(2), fp(2)])
    assert len(packed) == 2 and fp(1) in packed


def test_other_widths_and_types():
    packed = FingerprintSet([b"short", fp(1)])
    assert b"short" in packed and fp(1) in packed
    assert "text" not in packed and b"shor" not in packed
    assert not FingerprintSet() and fp(1) not in FingerprintSet()


def test_smaller_than_a_set():
    members = [fp(n) for n in range(20_000)]
    as_set = set(members)
    set_bytes = sys.getsizeof(as_set) + sum(sys.getsizeof(m) for m in members)
    packed = FingerprintSet(members)
    assert packed.nbytes == 20 * len(members) and packed.nbytes * 3 < set_bytes


def test_a_set_read_out_of_order_holds_no_second_copy_at_its_peak():
    """Built from fingerprints out of order (as Redis returns a set), the set never holds
    the whole of them twice: each bucket is sorted alone."""
    import tracemalloc

    members = [fp(n) for n in range(100_000)]
    tracemalloc.start()
    try:
        packed = FingerprintSet(iter(members))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(m in packed for m in members[::97]) and len(packed) == len(members)
    assert peak < 1.5 * packed.nbytes, (peak, packed.nbytes)
