"""The credential caches: bounded in size, and no entry served past its own deadline."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

SWEEP_EVERY = 64  # inserts between two looks for expired entries at the old end


class ExpiringCache(Generic[V]):
    """Values by key (an HMAC or keyed digest of a credential), oldest first.

    Each entry has its own deadline (``clock`` time), and is never served at or past it.
    Past ``maxsize`` entries the oldest goes, and every SWEEP_EVERY inserts drop up to twice
    as many expired entries from the old end: entries mostly expire in the order they were
    made (remembered passwords all live cache_ttl; tokens live to their exp), so expired
    ones do not linger once traffic moves on. cachetools' TTLCache and TLRUCache keep
    expiry exactly, with linked lists and heaps of Python objects: measured in the live
    server, their inserts and evictions cost a sixth of an uncached RS256 decision, and
    their lookups a tenth of a remembered one.
    """

    def __init__(self, maxsize: int, clock: Callable[[], float]) -> None:
        self.maxsize = maxsize
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[V, float]] = OrderedDict()
        self._inserts = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._entries[key]
            return None
        return entry[0]

    def put(self, key: bytes, value: V, deadline: float) -> None:
        entries = self._entries
        entries.pop(key, None)  # a key stored again goes to the new end, with its new deadline
        entries[key] = (value, deadline)
        if len(entries) > self.maxsize:
            entries.popitem(last=False)
        self._inserts += 1
        if self._inserts % SWEEP_EVERY == 0:
            now = self._clock()
            for _ in range(2 * SWEEP_EVERY):
                if not entries or next(iter(entries.values()))[1] > now:
                    break
                entries.popitem(last=False)

    def pop(self, key: bytes) -> None:
        self._entries.pop(key, None)
