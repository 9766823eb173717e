"""The credential caches: bounded in entries and in bytes, and no entry served past its own
deadline."""

from __future__ import annotations

import dataclasses
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

V = TypeVar("V")

SWEEP_EVERY = 64  # inserts between two looks for expired entries at the old end
# The byte budget of one cache, unless its owner gives another: a token with 200 groups weighs
# ~30 kB, so 50,000 of them would take 1.6 GB; 64 MiB hold ~2,000 of those, or ~100,000
# entries of a few groups (then the entry count, maxsize, is the bound that acts).
MAX_BYTES = 64 * 1024 * 1024
ENTRY_OVERHEAD = 200  # bytes of an entry besides its value: the dict slot, key, deadline tuple
_SCALARS = (str, bytes, int, float, bool, type(None))
_ASCII_HEADER = sys.getsizeof("")  # bytes of a str object besides its characters
_WIDE_HEADER = sys.getsizeof("\U0001f600") - 4  # the same, for the widest kind


def estimate_size(value: Any) -> int:
    """Bytes ``value`` holds, by ``sys.getsizeof`` of it and everything it reaches through
    tuples, lists, sets, dicts and dataclass fields (slotted or not), each object counted
    once. An estimate, counted at insert: objects shared with others (an interned string, a
    user table's hash) are counted as if the entry held them alone, which errs high. Fields
    added to a dataclass later (an identity's claims) are counted without change here."""
    seen: set[int] = set()
    stack = [value]
    total = 0
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, _SCALARS):
            continue
        if isinstance(item, dict):
            children: Any = (*item.keys(), *item.values())
        elif isinstance(item, tuple | list | set | frozenset):
            children = item
        elif dataclasses.is_dataclass(item):
            children = [getattr(item, f.name) for f in dataclasses.fields(item)]
        else:
            continue
        # Strings (groups, scopes: most of a large entry) weighed at once, not one by one:
        # their characters take what their concatenation takes (at its widest kind, so never
        # less), and each string its object header.
        strings = [child for child in children if type(child) is str]
        if strings:
            joined = "".join(strings)
            header = _ASCII_HEADER if joined.isascii() else _WIDE_HEADER
            total += sys.getsizeof(joined) + header * (len(strings) - 1)
        if len(strings) < len(children):
            stack.extend(child for child in children if type(child) is not str)
    return total


class ExpiringCache(Generic[V]):
    """Values by key (an HMAC or keyed digest of a credential), oldest first.

    Each entry has its own deadline (``clock`` time), and is never served at or past it.
    Past ``maxsize`` entries, or past ``max_bytes`` (the sum of ``weigh(value)``, the key
    and ENTRY_OVERHEAD, weighed once at insert), the oldest go (an entry heavier than the
    whole budget is not kept); every SWEEP_EVERY inserts drop up to twice as many expired
    entries from the old end: entries mostly expire in the order they were
    made (remembered passwords all live cache_ttl; tokens live to their exp), so expired
    ones do not linger once traffic moves on. cachetools' TTLCache and TLRUCache keep
    expiry exactly, with linked lists and heaps of Python objects: measured in the live
    server, their inserts and evictions cost a sixth of an uncached RS256 decision, and
    their lookups a tenth of a remembered one.
    """

    def __init__(
        self,
        maxsize: int,
        clock: Callable[[], float],
        max_bytes: int = MAX_BYTES,
        weigh: Callable[[V], int] = estimate_size,
    ) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.bytes = 0  # the weight of the entries held
        self._clock = clock
        self._weigh = weigh
        self._entries: OrderedDict[bytes, tuple[V, float, int]] = OrderedDict()
        self._inserts = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._entries[key]
            self.bytes -= entry[2]
            return None
        return entry[0]

    def put(self, key: bytes, value: V, deadline: float, weight: int | None = None) -> None:
        """Store ``value`` until ``deadline``; ``weight``: its bytes when the caller knows
        them more cheaply than ``weigh`` would count them."""
        entries = self._entries
        self.pop(key)  # a key stored again goes to the new end, with its new deadline
        weight = (self._weigh(value) if weight is None else weight) + len(key) + ENTRY_OVERHEAD
        entries[key] = (value, deadline, weight)
        self.bytes += weight
        while entries and (len(entries) > self.maxsize or self.bytes > self.max_bytes):
            self._drop_oldest()
        self._inserts += 1
        if self._inserts % SWEEP_EVERY == 0:
            now = self._clock()
            for _ in range(2 * SWEEP_EVERY):
                if not entries or next(iter(entries.values()))[1] > now:
                    break
                self._drop_oldest()

    def pop(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]

    def _drop_oldest(self) -> None:
        self.bytes -= self._entries.popitem(last=False)[1][2]
