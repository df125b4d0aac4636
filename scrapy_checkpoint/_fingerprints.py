"""A compact, read-only set of request fingerprints."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from itertools import islice
from operator import eq

WIDTH = 20  # bytes of a Scrapy request fingerprint


class FingerprintSet:
    """Fingerprints packed, sorted, into one bytes object: 20 bytes each instead of the ~90 a
    ``set`` of ``bytes`` costs, at a few microseconds a lookup (a binary search).

    It holds the processed fingerprints of a resumed checkpoint, which only ever get looked up.
    Fingerprints of another width are kept in a plain set beside it.
    """

    def __init__(self, fingerprints: Iterable[bytes] = ()) -> None:
        self._other: set[bytes] = set()
        packed = bytearray()  # while the input comes in order
        # From the first one out of order on (a store that cannot read in order): packed
        # into 256 buckets by first byte, each sorted at the end. Fingerprints are uniform,
        # so the buckets are even, and no object per fingerprint is kept meanwhile.
        buckets: list[bytearray] | None = None
        previous = b""
        for fp in fingerprints:
            if len(fp) != WIDTH:
                self._other.add(fp)
            elif buckets is not None:
                buckets[fp[0]] += fp
            elif fp > previous:
                packed += fp
                previous = fp
            elif fp < previous:
                buckets = [bytearray() for _ in range(256)]
                for start in range(0, len(packed), WIDTH):
                    buckets[packed[start]] += packed[start:start + WIDTH]
                buckets[fp[0]] += fp
                packed = bytearray()
        if buckets is not None:
            for first, bucket in enumerate(buckets):
                chunk = sorted(bytes(bucket[i:i + WIDTH]) for i in range(0, len(bucket), WIDTH))
                buckets[first] = bytearray()  # freed as the result grows
                if any(map(eq, chunk, islice(chunk, 1, None))):  # a set scan may repeat one
                    chunk = list(dict.fromkeys(chunk))
                packed += b"".join(chunk)
        self._packed = packed  # not copied into a bytes: at ten million, 200 MB more at the peak
        self._count = len(packed) // WIDTH

    def __len__(self) -> int:
        return self._count + len(self._other)

    def __getitem__(self, index: int) -> bytes:
        return self._packed[index * WIDTH:(index + 1) * WIDTH]

    def __contains__(self, fp: object) -> bool:
        if not isinstance(fp, bytes):
            return False
        if len(fp) != WIDTH:
            return fp in self._other
        index = bisect_left(self, fp, 0, self._count)
        return index < self._count and self[index] == fp

    def __bool__(self) -> bool:
        return len(self) > 0
