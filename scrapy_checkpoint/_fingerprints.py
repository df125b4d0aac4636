"""A compact, read-only set of request fingerprints."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from itertools import islice
from operator import eq

WIDTH = 20  # bytes of a Scrapy request fingerprint


class _Packed:
    """Sorted fingerprints packed end to end in one ``bytes``, indexed as a sequence."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data) // WIDTH

    def __getitem__(self, index: int) -> bytes:
        return self.data[index * WIDTH:(index + 1) * WIDTH]


class FingerprintSet:
    """Fingerprints packed, sorted, 20 bytes each instead of the ~90 a ``set`` of ``bytes``
    costs, at a few microseconds a lookup (a binary search).

    It holds the processed fingerprints of a resumed checkpoint, which only ever get looked
    up. They are kept in 256 buckets by first byte (fingerprints are uniform, so the buckets
    are even): a store that cannot read them in order has each bucket sorted on its own, and
    at no moment is there a second copy of the whole set (at ten million, 200 MB more).
    Fingerprints of another width are kept in a plain set beside them.
    """

    def __init__(self, fingerprints: Iterable[bytes] = ()) -> None:
        self._other: set[bytes] = set()
        buckets = [bytearray() for _ in range(256)]
        ordered = True
        previous = b""
        for fp in fingerprints:
            if len(fp) != WIDTH:
                self._other.add(fp)
                continue
            if ordered:
                if fp == previous:
                    continue
                if fp < previous:
                    ordered = False
                previous = fp
            buckets[fp[0]] += fp
        self._buckets: list[_Packed] = []
        for first, bucket in enumerate(buckets):
            if ordered:
                data = bytes(bucket)
            else:
                chunk = sorted(bytes(bucket[i:i + WIDTH]) for i in range(0, len(bucket), WIDTH))
                if any(map(eq, chunk, islice(chunk, 1, None))):  # a set scan may repeat one
                    chunk = list(dict.fromkeys(chunk))
                data = b"".join(chunk)
            buckets[first] = bytearray()  # freed as the packed ones are made
            self._buckets.append(_Packed(data))
        self._count = sum(len(bucket) for bucket in self._buckets)

    def __len__(self) -> int:
        return self._count + len(self._other)

    @property
    def nbytes(self) -> int:
        """The bytes the packed fingerprints take."""
        return sum(len(bucket.data) for bucket in self._buckets)

    def __contains__(self, fp: object) -> bool:
        if not isinstance(fp, bytes):
            return False
        if len(fp) != WIDTH:
            return fp in self._other
        bucket = self._buckets[fp[0]]
        index = bisect_left(bucket, fp)
        return index < len(bucket) and bucket[index] == fp

    def __bool__(self) -> bool:
        return len(self) > 0
