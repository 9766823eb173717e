"""The credential caches: their size bound, and deadlines kept on read and on insert."""

from __future__ import annotations

from authproxy.expiring import SWEEP_EVERY, ExpiringCache

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
