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
        packed = bytearray()  # while the input comes in order: no object per fingerprint
        unsorted: list[bytes] | None = None  # from the first one out of order on
        previous = b""
        for fp in fingerprints:
            if len(fp) != WIDTH:
                self._other.add(fp)
            elif unsorted is not None:
                unsorted.append(fp)
            elif fp > previous:
                packed += fp
                previous = fp
            elif fp < previous:  # a store that cannot read in order: sort once, at the end
                unsorted = [bytes(packed[i:i + WIDTH]) for i in range(0, len(packed), WIDTH)]
                unsorted.append(fp)
                packed = bytearray()
        if unsorted is None:
            self._packed = bytes(packed)
        else:
            unsorted.sort()
            if any(map(eq, unsorted, islice(unsorted, 1, None))):  # a set scan may repeat one
                unsorted = list(dict.fromkeys(unsorted))
            self._packed = b"".join(unsorted)
        self._count = len(self._packed) // WIDTH

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
