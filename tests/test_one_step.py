"""One step of authentication: what a decision parsed before it had to wait is what it
finishes with. A password that needs a hash, or a token whose key set must be fetched, is
decoded, MACed and checked against the bans once, not once per entry point.

The counts come from subclasses of authproxy's own classes, injected through their
constructors; everything else is real (user files, bcrypt, a JWKS server over TLS)."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from authproxy.config import Config
from authproxy.core.authn import SchemeChain
from authproxy.core.decider import Answer, Decider, PendingDecision
from authproxy.core.lockout import FailureTracker, Lockout
from authproxy.htpasswd.userstore import UserStore
from authproxy.http.app import DECIDER, KEY_SOURCE
from authproxy.obs.logs import DecisionLog
from authproxy.obs.metrics import Metrics
from authproxy.schemes.basic import BasicAuthenticator
from authproxy.schemes.bearer import BearerAuthenticator

from .jwks_server import K1, K2, FakeClock, JwksServer, StartApp, basic, mint

pytest_plugins = ["tests.jwks_fixtures"]

CLIENT = "192.0.2.7"


class Asked:
    """A request to /auth as the Decider reads it (origin.RequestView), from nginx on
    loopback naming the client in X-Real-IP."""

    method = "GET"
    remote = "127.0.0.1"

    def __init__(self, headers: dict[str, str], uri: str = "/auth") -> None:
        self.rel_url = URL(uri)
        self.raw_path = self.rel_url.raw_path
        self.path = self.rel_url.path
        self.path_qs = uri
        self.query_string = self.rel_url.query_string
        self.raw_query_string = self.rel_url.raw_query_string
        self.headers = CIMultiDictProxy(CIMultiDict({"X-Real-IP": CLIENT, **headers}))


class CountingLockout(Lockout):
    """The lockout of ``config``, counting the ban checks it is asked for."""

    def __init__(self, config: Config, clock: FakeClock) -> None:
        basic_config = config.basic
        super().__init__(FailureTracker(basic_config.max_failures, basic_config.failure_window,
                                        basic_config.ban_time, clock.monotonic),
                         basic_config.known_address_ttl, clock.monotonic)
        self.checks = 0

    def check(self, user: str, address: str) -> None:
        self.checks += 1
        super().check(user, address)


class CountingBasic(BasicAuthenticator):
    """Counts the cache-key MACs of Basic credentials."""

    macs = 0

    def _cache_key(self, value: str) -> bytes:
        self.macs += 1
        return super()._cache_key(value)


class CountingBearer(BearerAuthenticator):
    """Counts the cache-key MACs of tokens (one per token looked at)."""

    macs = 0

    def _cache_key(self, token: str) -> bytes:
        self.macs += 1
        return super()._cache_key(token)


@pytest.fixture
def basic_config(make_config: Callable[..., Config], htpasswd: Callable[..., Path]) -> Config:
    return make_config({"basic": {"users_file": str(htpasswd(alice="wonderland"))}})


@pytest.fixture
async def executor() -> Any:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def decider_of(config: Config, *authenticators: Any) -> Decider:
    metrics = Metrics()
    return Decider(config, SchemeChain(authenticators), metrics, DecisionLog(config.log))


def logged(decider: Decider, capsys: Any) -> list[dict[str, Any]]:
    """The decision lines written since the last call."""
    decider.decisions.flush()
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()
            if '"status"' in line]


def counting_basic(config: Config, executor: Any, clock: FakeClock,
                   token_verifier: Any = None) -> tuple[CountingBasic, CountingLockout]:
    lockout = CountingLockout(config, clock)
    # a ban in force, on someone else: every Basic request is decoded and checked first
    lockout.tracker.ban("user:mallory")
    authenticator = CountingBasic(UserStore(config.basic.users_file, config.basic.groups_file),
                                  config.basic, executor, Metrics(), clock.monotonic,
                                  token_verifier=token_verifier, lockout=lockout)
    return authenticator, lockout


async def test_a_password_that_needs_a_hash_is_macd_and_checked_once(
    basic_config: Config, executor: Any, clock: FakeClock
) -> None:
    """Before: decide() asked the chain twice (authenticate_now, then authenticate), each
    decoding, checking the bans and MACing the credentials again."""
    authenticator, lockout = counting_basic(basic_config, executor, clock)
    decider = decider_of(basic_config, authenticator)
    right = Asked(basic("alice", "wonderland"))
    assert (await decider.decide(right)).status == 200
    assert (lockout.checks, authenticator.macs) == (1, 1)
    assert (await decider.decide(Asked(basic("alice", "wrong")))).status == 401
    assert (lockout.checks, authenticator.macs) == (2, 2)
    # the remembered password: one of each, and no waiting
    remembered = decider.decide_now(right)
    assert remembered is not None and remembered.status == 200
    assert (lockout.checks, authenticator.macs) == (3, 3)


async def test_a_decision_begun_and_dropped_has_no_effect(
    basic_config: Config, executor: Any, clock: FakeClock, capsys: Any
) -> None:
    """A caller may begin a decision and not await it (decide_now does): nothing is
    reserved, counted, remembered or logged, and the next request decides afresh."""
    authenticator, lockout = counting_basic(basic_config, executor, clock)
    decider = decider_of(basic_config, authenticator)
    for _ in range(basic_config.basic.max_failures + 1):
        assert not isinstance(decider.begin(Asked(basic("alice", "wrong"))), Answer)
        assert decider.decide_now(Asked(basic("alice", "wrong"))) is None
    assert logged(decider, capsys) == []
    assert lockout.tracker.failures("user:alice") == 0
    assert not lockout.tracker.is_banned("client:" + CLIENT)
    pending = decider.begin(Asked(basic("alice", "wonderland")))
    assert not isinstance(pending, Answer)
    assert (await pending.answer()).status == 200
    assert [line["status"] for line in logged(decider, capsys)] == [200]


async def test_a_refusal_after_a_hash_leaves_no_cycle_for_the_collector(
    basic_config: Config, executor: Any, clock: FakeClock
) -> None:
    """Found by the soak: every wrong password left 15 objects in a cycle (the refusal, its
    traceback, the frame that kept it), freed only by a full collection, which the tuned
    collector runs about once an hour at soak rates: worker RSS grew ~1.8 MB a minute."""
    authenticator, _ = counting_basic(basic_config, executor, clock)
    decider = decider_of(basic_config, authenticator)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for user in ("alice", "nobody"):
            pending = decider.begin(Asked(basic(user, "wrong")))
            assert not isinstance(pending, Answer)
            assert (await pending.answer()).status == 401
        del pending
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage
                if isinstance(o, (Exception, PendingDecision))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


async def test_a_token_whose_key_must_be_fetched_is_macd_once(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    """Before: three MACs and three pre-checks (verify_now twice, then verify)."""
    client = await start_app()
    config = client.app[DECIDER].config
    bearer = CountingBearer(config.jwt, client.app[KEY_SOURCE], Metrics(),
                            clock=clock.monotonic, wall_clock=clock.time)
    decider = decider_of(config, bearer)
    jwks_server.serve(K1, K2)  # a rotation the service has not seen: k2 must be fetched
    fetches = jwks_server.fetches
    token = {"Authorization": "Bearer " + mint(K2, clock.time())}
    assert (await decider.decide(Asked(token))).status == 200
    assert (bearer.macs, jwks_server.fetches) == (1, fetches + 1)
    assert decider.decide_now(Asked(token)) is not None  # remembered now
    assert bearer.macs == 2


async def test_a_token_as_the_basic_password_is_macd_once(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock, htpasswd: Any,
    executor: Any,
) -> None:
    """jwt.accept_in_basic with a key to fetch. Before: four MACs of the token (the Basic
    scheme's two entry points each asked the verifier's quick path, then its slow one did
    it twice more)."""
    users = htpasswd(alice="wonderland")
    client = await start_app({"basic": {"users_file": str(users)}}, accept_in_basic=True)
    config = client.app[DECIDER].config
    bearer = CountingBearer(config.jwt, client.app[KEY_SOURCE], Metrics(),
                            clock=clock.monotonic, wall_clock=clock.time)
    authenticator, lockout = counting_basic(config, executor, clock, token_verifier=bearer)
    decider = decider_of(config, authenticator, bearer)
    jwks_server.serve(K1, K2)
    answer = await decider.decide(Asked(basic("*", mint(K2, clock.time()))))
    assert answer.status == 200 and answer.headers["X-Auth-Method"] == "bearer"
    assert bearer.macs == 1
    # the token is refused for another user's name, after the same single look
    wrong_user = basic("bob", mint(K2, clock.time(), jti="2"))
    assert (await decider.decide(Asked(wrong_user))).status == 401
    assert bearer.macs == 2
    assert lockout.checks == 0  # a token is the verifier's: no password ban applies
