"""The credential caches: their size and byte bounds, and deadlines kept on read and on
insert."""

from __future__ import annotations

import json
import tracemalloc
from dataclasses import dataclass

from authproxy.core.expiring import ENTRY_OVERHEAD, SWEEP_EVERY, ExpiringCache, estimate_size
from authproxy.core.identity import Identity
from authproxy.schemes import bearer

from .jwks_server import FakeClock


def test_past_its_size_the_oldest_entry_goes() -> None:
    clock = FakeClock()
    cache = ExpiringCache[str](3, clock.monotonic)
    for i in range(5):
        cache.put(bytes([i]), "value", clock.monotonic() + 100)
    assert len(cache) == 3
    assert cache.get(b"\x00") is None and cache.get(b"\x01") is None
    assert all(cache.get(bytes([i])) is not None for i in (2, 3, 4))


def test_an_entry_is_never_served_at_or_past_its_deadline() -> None:
    clock = FakeClock()
    cache = ExpiringCache[str](10, clock.monotonic)
    cache.put(b"k", "value", clock.monotonic() + 5)
    clock.advance(4.999)
    assert cache.get(b"k") == "value"
    clock.advance(0.001)
    assert cache.get(b"k") is None
    assert len(cache) == 0  # dropped on the read that found it expired


def test_inserts_drop_expired_entries_from_the_old_end() -> None:
    clock = FakeClock()
    cache = ExpiringCache[str](10_000, clock.monotonic)
    expiring = 3 * SWEEP_EVERY - 2
    for i in range(expiring):
        cache.put(i.to_bytes(2, "big"), "value", clock.monotonic() + 1)
    cache.put(b"long", "value", clock.monotonic() + 1000)  # one insert short of the next sweep
    clock.advance(2)
    assert len(cache) == expiring + 1  # expired, but only reads and sweeps drop them
    cache.put(b"new", "value", clock.monotonic() + 1)  # a sweep: drops 2 * SWEEP_EVERY expired ones
    assert len(cache) == expiring - 2 * SWEEP_EVERY + 2
    for i in range(SWEEP_EVERY):  # the next sweep drops the rest, then stops at "long"
        cache.put(b"newer-%d" % i, "value", clock.monotonic() + 1)
    assert len(cache) == 2 + SWEEP_EVERY
    assert cache.get(b"long") is not None and cache.get(b"new") is not None


def test_a_sweep_that_expires_everything_leaves_an_empty_cache() -> None:
    clock = FakeClock()
    cache = ExpiringCache[str](10_000, clock.monotonic)
    for i in range(SWEEP_EVERY):  # deadline now: expired at once
        cache.put(i.to_bytes(2, "big"), "value", clock.monotonic())
    assert len(cache) == 0
    cache.pop(b"\x00\x00")  # popping what is not there is fine


def test_an_entry_put_again_moves_to_the_new_end() -> None:
    """A key stored again (a Basic user's password verified anew after a reload) takes its
    new deadline to the new end: left in its old place, it would stop every sweep there."""
    clock = FakeClock()
    cache = ExpiringCache[str](10_000, clock.monotonic)
    cache.put(b"again", "value", clock.monotonic() + 1)
    cache.put(b"behind", "value", clock.monotonic() + 1)
    cache.put(b"again", "value", clock.monotonic() + 1000)
    clock.advance(2)
    for i in range(SWEEP_EVERY - 3):  # up to the next sweep
        cache.put(i.to_bytes(2, "big"), "value", clock.monotonic() + 1000)
    assert len(cache) == SWEEP_EVERY - 2  # "behind" swept: everything live remains
    assert cache.get(b"again") == "value"
    # and the size bound evicts by age of the last put, not the first
    small = ExpiringCache[str](2, clock.monotonic)
    for key in (b"a", b"b", b"a", b"c"):
        small.put(key, "value", clock.monotonic() + 1000)
    assert small.get(b"a") is not None and small.get(b"b") is None


# -- the byte budget --------------------------------------------------------------------------


def test_past_its_byte_budget_the_oldest_entries_go() -> None:
    clock = FakeClock()
    weight = 1000 + 1 + ENTRY_OVERHEAD  # weigh() plus the one-byte key and the overhead
    cache = ExpiringCache[str](10_000, clock.monotonic, max_bytes=3 * weight,
                               weigh=lambda value: 1000)
    for i in range(5):
        cache.put(bytes([i]), "value", clock.monotonic() + 100)
    assert len(cache) == 3 and cache.bytes == 3 * weight
    assert cache.get(b"\x00") is None and cache.get(b"\x01") is None
    assert all(cache.get(bytes([i])) is not None for i in (2, 3, 4))
    cache.pop(b"\x02")
    clock.advance(100)
    assert cache.get(b"\x03") is None  # expired on read
    assert cache.bytes == weight  # what left, by pop, expiry or eviction, is given back
    # one entry heavier than the whole budget is not kept
    heavy = ExpiringCache[str](10_000, clock.monotonic, max_bytes=500, weigh=lambda v: 1000)
    heavy.put(b"k", "value", clock.monotonic() + 100)
    assert len(heavy) == 0 and heavy.bytes == 0


def test_an_identity_is_weighed_at_about_what_it_holds() -> None:
    """The estimate of a token's entry with 200 groups against the memory it really
    takes (tracemalloc): the comment that once said ~0.5 kB was off by sixty times."""

    def identity(i: int) -> Identity:
        claims = json.loads(json.dumps({"groups": [f"group-{i}-{g:04d}" for g in range(200)]}))
        return Identity(user=f"user{i}", method="bearer", subject=f"user{i}",
                        groups=frozenset(claims["groups"]), expires_at=1e9)

    tracemalloc.start()
    try:
        kept = [identity(i) for i in range(200)]
        measured = tracemalloc.get_traced_memory()[0] / len(kept)
    finally:
        tracemalloc.stop()
    estimated = sum(map(estimate_size, kept)) / len(kept)
    assert measured > 20_000
    assert 0.9 * measured < estimated < 1.5 * measured


def test_fields_added_to_an_entry_later_are_weighed_too() -> None:
    """An identity may grow a field (the policy work adds verified claims): the estimate
    follows dataclass fields, nested dicts and lists included, and cycles do not hang it."""

    @dataclass(frozen=True, slots=True)
    class WithClaims:
        user: str
        claims: dict[str, object]

    plain = WithClaims("alice", {})
    nested: dict[str, object] = {"realm_access": {"roles": ["r" * 1000, "s" * 1000]}}
    nested["self"] = nested
    assert estimate_size(WithClaims("alice", nested)) > estimate_size(plain) + 2000


def test_the_bearer_cache_has_a_byte_budget() -> None:
    assert bearer.CACHE_BYTES <= 64 * 1024 * 1024
    assert bearer.CACHE_BYTES // 30_000 < bearer.CACHE_SIZE  # the budget binds first
