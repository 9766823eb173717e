"""The refresher's schedule and limits against a fake fetcher and a clock that moves only when
told: backoff, the server's max-age, the miss and jwks_setup rate limits, shared fetches,
and a worker's answer from its supervisor carried through whole."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from authproxy.config import JwtConfig
from authproxy.errors import KeysUnavailable
from authproxy.jwt.fetcher import Fetched, Relayed
from authproxy.jwt.jwks import JwksError, KeySet, parse_jwks
from authproxy.jwt.keyring import KeyRing
from authproxy.jwt.refresher import MISS_REFRESH_INTERVAL, Refresher
from authproxy.obs.metrics import Metrics

from .conftest import eventually
from .jwks_server import K1, K2, FakeClock, SigningKey

Answer = Fetched | Relayed | JwksError


def keyset(*keys: SigningKey) -> KeySet:
    document = json.dumps({"keys": [k.public_jwk for k in keys]}).encode()
    return parse_jwks(document, ("RS256",), "endpoint")


class FakeFetcher:
    """A Fetcher that answers what the test says, and counts what it was asked."""

    location = "https://127.0.0.1/jwks"

    def __init__(self, answer: Answer, schedules: bool = True) -> None:
        self.schedules = schedules
        self.answer = answer
        self.triggers: list[str] = []
        self.gate: asyncio.Event | None = None  # when set, fetches wait for it

    def running(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    async def fetch(self, trigger: str) -> Fetched | Relayed:
        self.triggers.append(trigger)
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.answer, JwksError):
            raise self.answer
        return self.answer


def make(answer: Answer, clock: FakeClock, *, schedules: bool = True,
         **jwt: Any) -> tuple[KeyRing, Refresher, FakeFetcher]:
    config = JwtConfig(jwks_endpoint="https://127.0.0.1/jwks", **jwt)
    ring = KeyRing(config, Metrics(), clock=clock.monotonic, wall_clock=clock.time)
    fetcher = FakeFetcher(answer, schedules)
    return ring, Refresher(ring, fetcher, config, clock=clock.monotonic), fetcher


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_failures_back_off_doubling_up_to_the_interval(clock: FakeClock) -> None:
    ring, refresher, fetcher = make(JwksError("http_status"), clock, jwks_update_interval=20)
    delays = []
    for _ in range(7):
        with pytest.raises(JwksError):
            await refresher.refresh("scheduled")
        delays.append(ring.next_fetch_in())
    assert delays == [1, 2, 4, 8, 16, 20, 20]
    fetcher.answer = Fetched(keyset(K1), None)
    await refresher.refresh("scheduled")
    assert ring.next_fetch_in() == 20
    fetcher.answer = JwksError("timeout")
    with pytest.raises(JwksError):
        await refresher.refresh("scheduled")
    assert ring.next_fetch_in() == 1  # a success starts the backoff over


@pytest.mark.parametrize(("max_age", "next_fetch"), [(None, 300), (5, 60), (100, 100),
                                                     (10_000, 450)])
async def test_a_servers_max_age_is_kept_within_bounds(
    clock: FakeClock, max_age: int | None, next_fetch: int
) -> None:
    ring, refresher, _ = make(Fetched(keyset(K1), max_age), clock, jwks_update_interval=300,
                              jwks_max_stale=900)
    await refresher.refresh("scheduled")
    assert ring.next_fetch_in() == next_fetch


async def test_a_failed_fetch_keeps_the_last_set_until_it_is_stale(clock: FakeClock) -> None:
    ring, refresher, fetcher = make(Fetched(keyset(K1), None), clock, jwks_max_stale=900)
    await refresher.refresh("startup")
    fetcher.answer = JwksError("http_status")
    with pytest.raises(JwksError):
        await refresher.refresh("scheduled")
    assert ring.knows_kid("k1") and ring.not_ready() is None
    clock.advance(901)
    with pytest.raises(KeysUnavailable):
        ring.candidates("k1", "RS256")
    assert "jwks_max_stale" in (ring.not_ready() or "")


async def test_misses_start_one_fetch_per_interval_and_unknown_kids_are_remembered(
    clock: FakeClock
) -> None:
    ring, refresher, fetcher = make(Fetched(keyset(K1), None), clock)
    await refresher.refresh_on_miss("made-up-1")
    assert fetcher.triggers == ["miss"]
    assert not refresher.may_learn("made-up-1")  # came back without it
    await refresher.refresh_on_miss("made-up-2")  # within the interval: no fetch
    assert fetcher.triggers == ["miss"] and not refresher.may_learn("made-up-2")
    clock.advance(MISS_REFRESH_INTERVAL)
    assert refresher.may_learn("made-up-1")  # forgotten after the interval
    fetcher.answer = Fetched(keyset(K1, K2), None)
    await refresher.refresh_on_miss("k2")
    assert fetcher.triggers == ["miss", "miss"] and ring.knows_kid("k2")


async def test_concurrent_misses_and_setups_share_one_fetch(clock: FakeClock) -> None:
    ring, refresher, fetcher = make(Fetched(keyset(K1), None), clock)
    fetcher.gate = asyncio.Event()
    waiting = [asyncio.create_task(refresher.refresh_on_miss(f"kid-{n}")) for n in range(5)]
    setups = [asyncio.create_task(refresher.setup_refresh()) for _ in range(3)]
    await eventually(lambda: fetcher.triggers, "the one fetch")
    fetcher.gate.set()
    await asyncio.gather(*waiting)
    outcomes = await asyncio.gather(*setups)
    assert fetcher.triggers == ["miss"]
    assert ring.endpoint is not None
    assert [(o.keyset, o.error, o.rate_limited) for o in outcomes] == [
        (ring.endpoint.keyset, None, False)] * 3


async def test_jwks_setup_fetches_once_per_interval_and_says_when_it_may_again(
    clock: FakeClock
) -> None:
    ring, refresher, fetcher = make(JwksError("http_status", "HTTP status 500"), clock)
    first = await refresher.setup_refresh()
    assert (first.error and first.error.reason, first.rate_limited) == ("http_status", False)
    clock.advance(20)
    fetcher.answer = Fetched(keyset(K1), None)
    second = await refresher.setup_refresh()
    assert fetcher.triggers == ["admin"]
    # the set in use (none yet) and the last fetch's error, while the endpoint fails
    assert (second.keyset, second.error, second.rate_limited, second.retry_after) == (
        None, first.error, True, MISS_REFRESH_INTERVAL - 20)
    clock.advance(MISS_REFRESH_INTERVAL - 20)
    third = await refresher.setup_refresh()
    assert (third.keyset, third.error, third.rate_limited, third.retry_after) == (
        ring.endpoint.keyset if ring.endpoint else None, None, False, 0)
    assert fetcher.triggers == ["admin", "admin"]


async def test_a_rate_limited_jwks_setup_reports_a_failure_of_any_fetch_since(
    clock: FakeClock
) -> None:
    """An admin fetch succeeded, then a scheduled one failed: a rate-limited call must not
    answer 200 as though the endpoint were healthy (it reported only admin fetches' errors)."""
    _, refresher, fetcher = make(Fetched(keyset(K1), None), clock)
    first = await refresher.setup_refresh()
    assert (first.error, first.rate_limited) == (None, False)
    fetcher.answer = JwksError("http_status", "HTTP status 500")
    with pytest.raises(JwksError):
        await refresher.refresh("scheduled")
    second = await refresher.setup_refresh()
    assert fetcher.triggers == ["admin", "scheduled"]
    assert (second.error and second.error.reason, second.rate_limited) == ("http_status", True)


async def test_a_workers_answer_from_its_supervisor_is_carried_through_whole(
    clock: FakeClock
) -> None:
    """The supervisor's rate limit declined to fetch: the worker says so, with the wait."""
    ring, refresher, fetcher = make(Relayed(None, rate_limited=True, retry_after=17), clock,
                                    schedules=False)
    assert ring.endpoint is not None
    ring.install(ring.endpoint, keyset(K1), "startup")  # as if adopted from a publication
    outcome = await refresher.setup_refresh()
    assert (outcome.keyset, outcome.error, outcome.rate_limited, outcome.retry_after) == (
        ring.endpoint.keyset, None, True, 17)
    error = JwksError("http_status", "HTTP status 500")
    fetcher.answer = Relayed(error, rate_limited=True, retry_after=9)
    clock.advance(MISS_REFRESH_INTERVAL)
    outcome = await refresher.setup_refresh()
    assert (outcome.error, outcome.rate_limited, outcome.retry_after) == (error, True, 9)
    assert ring.endpoint.failures == 0  # the supervisor counted its failure, not the worker


async def test_a_worker_runs_no_schedule(clock: FakeClock) -> None:
    _, refresher, fetcher = make(Relayed(None), clock, schedules=False)
    async with refresher.running():
        await asyncio.sleep(0)
    assert fetcher.triggers == []
