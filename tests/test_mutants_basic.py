"""The Basic scheme (schemes/basic.py) pinned through its public functions, one test per
behaviour a mutant of it changed without the suite noticing (``make mutate``): the decoder's
every refusal and split, the challenge, the JWT-as-password user check, and the moving
average behind the failure floor (SPEC §8.1 rule 7)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from authproxy.core.authn import AuthRequest, parse_authorization
from authproxy.core.identity import Identity
from authproxy.errors import Unauthenticated
from authproxy.htpasswd.users import PasswordHash, UserTable, cost_class, parse_hash
from authproxy.htpasswd.userstore import UserStore
from authproxy.http.app import DECIDER, METRICS, create_app
from authproxy.obs.metrics import Metrics
from authproxy.schemes.basic import (
    MAX_PENDING,
    BasicAuthenticator,
    PasswordVerification,
    VerificationCosts,
    basic_challenge,
    check_token_user,
    decode_basic,
)

from .jwks_server import K1, basic


def encoded(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(("raw", "user", "password"), [
    (b"alice:pw", "alice", b"pw"),
    (b"alice:", "alice", b""),
    (b"alice:p:w", "alice", b"p:w"),  # split at the first colon
    ("jos\u00e9:p\u00e4ss".encode(), "jos\u00e9", "p\u00e4ss".encode()),
    (b"a:\xff\xfe", "a", b"\xff\xfe"),  # the password is bytes, any bytes but controls
])
def test_decode_basic_splits_at_the_first_colon(raw: bytes, user: str, password: bytes) -> None:
    assert decode_basic(encoded(raw)) == (user, password)


@pytest.mark.parametrize("value", [
    encoded(b"alicepw"),  # no colon
    encoded(b":pw"),  # no user-id
    encoded(b"al\x00ice:pw"), encoded(b"alice:p\x1fw"), encoded(b"alice:pw\x7f"),
    encoded(b"\xff:pw"),  # not UTF-8
    encoded(b"alice:pw") + "=", encoded(b"alice:pw1") + "==",  # excess padding
    "YWxpY2U6cHd=",  # non-zero unused bits ("alice:pw" is YWxpY2U6cHc=)
    "YWxp Y2U6cHc=", "YWxpY2U6cHc", "\u00e9", "YWxpY2U6cHc=\n",
])
def test_decode_basic_refuses_as_malformed(value: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        decode_basic(value)
    assert caught.value.reason == "malformed"


def test_the_challenge_names_the_realm_and_the_charset() -> None:
    assert basic_challenge("my realm") == 'Basic realm="my realm", charset="UTF-8"'


def test_a_token_as_password_is_for_its_own_user_or_star() -> None:
    identity = Identity(user="alice", method="bearer")
    check_token_user("alice", identity)
    check_token_user("*", identity)
    with pytest.raises(Unauthenticated) as caught:
        check_token_user("bob", identity)
    assert caught.value.reason == "token_user_mismatch"


def sha(password: str) -> PasswordHash:
    digest = hashlib.sha1(password.encode()).digest()  # the {SHA} scheme
    return parse_hash("{SHA}" + base64.b64encode(digest).decode())


def test_verification_costs_start_from_the_table_then_follow_a_moving_average() -> None:
    table = UserTable({"alice": sha("pw")})
    (loaded,) = table.verification_costs.values()
    costs = VerificationCosts()
    assert costs.floor(table) == loaded
    costs.observe(sha("x"), 1.0)  # the first observation replaces the load-time timing
    assert costs.floor(table) == 1.0
    costs.observe(sha("y"), 3.0)
    assert costs.floor(table) == pytest.approx(1.4)  # a weight of 0.2 for the new timing


def test_the_floor_is_the_costliest_class_of_the_table() -> None:
    table = UserTable({"a": sha("pw"), "b": parse_hash(
        "$apr1$salt1234$Q7CztgeNNi3oRfzA4m5Fl.")})
    costs = VerificationCosts()
    classes = {cost_class(sha("pw")), cost_class(table.get("b"))}  # type: ignore[arg-type]
    assert set(table.verification_costs) >= classes
    costs.observe(sha("x"), 5.0)
    assert costs.floor(table) == 5.0
    costs.observe(table.get("b"), 7.0)  # type: ignore[arg-type]
    assert costs.floor(table) == 7.0


async def test_a_remembered_password_counts_as_a_basic_cache_hit(
    serve: Any, make_config: Any, htpasswd: Any,
) -> None:
    users = htpasswd(alice="alicepw")
    client = await serve(create_app(make_config({"basic": {"users_file": str(users)}})))
    auth = basic("alice", "alicepw")
    for _ in range(3):
        assert (await client.get("/auth", headers=auth)).status == 200
    registry = client.app[METRICS].registry
    lookups = "authproxy_cache_lookups_total"
    assert registry.get_sample_value(lookups, {"cache": "basic", "result": "miss"}) == 1
    assert registry.get_sample_value(lookups, {"cache": "basic", "result": "hit"}) == 2


def decisions(client: Any, reason: str, scheme: str = "basic") -> float:
    return client.app[METRICS].registry.get_sample_value(
        "authproxy_decisions_total", {"scheme": scheme, "outcome": "deny", "reason": reason}) or 0


async def raw_status(client: Any, head: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head)
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def test_credentials_with_a_byte_that_is_not_utf8_are_malformed_not_an_error(
    serve: Any, make_config: Any, htpasswd: Any,
) -> None:
    # The edge reads such a byte as a lone surrogate; the cache key's MAC must still take it
    # (its error handler), and the decoder then refuses it as malformed, not internal_error.
    users = htpasswd(alice="alicepw")
    client = await serve(create_app(make_config({"basic": {"users_file": str(users)}})))
    head = b"GET /auth HTTP/1.1\r\nHost: a\r\nAuthorization: Basic YWxp\xffY2U=\r\n\r\n"
    assert await raw_status(client, head) == 401
    assert decisions(client, "malformed") == 1
    assert decisions(client, "internal_error") == 0


async def test_a_token_in_basic_that_is_not_ascii_is_malformed(
    serve: Any, make_config: Any, tmp_path: Any,
) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [K1.public_jwk]}))
    client = await serve(create_app(make_config({"jwt": {
        "jwks_file": str(tmp_path / "jwks.json"), "accept_in_basic": True,
        "jwks_require_audience": ["app"]}})))
    auth = {"Authorization": "Basic " + encoded("*:eyJ\u00e9.x.y".encode())}
    assert (await client.get("/auth", headers=auth)).status == 401
    assert decisions(client, "malformed") == 1


def test_the_password_cache_is_keyed_by_a_mac_with_this_processs_secret(
    make_config: Any, htpasswd: Any,
) -> None:
    # Not visible through the API: the cache must never hold a plain hash of credentials,
    # which a memory dump would let anyone test guesses against offline.
    config = make_config({"basic": {"users_file": str(htpasswd(alice="alicepw"))}})
    first, second = (create_app(config)[DECIDER].chain.authenticators[0] for _ in range(2))
    value = encoded(b"alice:alicepw")
    keys = {first._cache_key(value), second._cache_key(value),  # type: ignore[attr-defined]
            hashlib.blake2s(value.encode()).digest(), hashlib.sha256(value.encode()).digest()}
    assert len(keys) == 4


class CountingExecutor(ThreadPoolExecutor):
    """A real one-thread pool that counts what it is given."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def authenticator(config: Any, executor: Any, metrics: Metrics | None = None,
                  ) -> BasicAuthenticator:
    return BasicAuthenticator(UserStore(config.basic.users_file), config.basic,
                              executor, metrics or Metrics(), time.monotonic)


def asking(user: str, password: str) -> AuthRequest:
    return AuthRequest(parse_authorization([basic(user, password)["Authorization"]]),
                       "192.0.2.1", "client:192.0.2.1")


async def test_hashes_run_in_the_configured_pool_and_are_observed_as_held(
    make_config: Any, htpasswd: Any,
) -> None:
    # the pool bounds the hash threads (http/app.hash_threads): asyncio's default would not
    config = make_config({"basic": {"users_file": str(htpasswd(alice="alicepw"))}})
    metrics = Metrics()
    with CountingExecutor() as executor:
        pending = authenticator(config, executor, metrics).begin(asking("alice", "wrong"))
        assert isinstance(pending, PasswordVerification)
        with pytest.raises(Unauthenticated):
            await pending.finish()
        assert executor.submitted == 1
    held = metrics.registry.get_sample_value("authproxy_password_hash_seconds_sum")
    assert held is not None and 0 < held < 5


async def test_past_max_pending_verifications_a_new_one_is_refused_as_overloaded(
    make_config: Any, htpasswd: Any,
) -> None:
    config = make_config({"basic": {"users_file": str(htpasswd(alice="alicepw")),
                                    "max_failures": 1_000_000}})
    gate = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(gate.wait)  # the one hash thread is busy: verifications queue
        authn = authenticator(config, executor)
        steps = [authn.begin(asking(f"u{i}", "pw")) for i in range(MAX_PENDING + 1)]
        assert all(isinstance(step, PasswordVerification) for step in steps)
        verifications = cast(list[PasswordVerification], steps)
        waiting = [asyncio.ensure_future(step.finish()) for step in verifications[:MAX_PENDING]]
        await asyncio.sleep(0)  # each has started its verification: MAX_PENDING in flight
        assert len(authn._inflight) == MAX_PENDING
        try:
            with pytest.raises(Unauthenticated) as caught:
                await asyncio.wait_for(verifications[-1].finish(), 5)  # queued behind the gate: never
            assert caught.value.reason == "overloaded"
        finally:
            gate.set()
        results = await asyncio.gather(*waiting, return_exceptions=True)
    assert {getattr(r, "reason", r) for r in results} == {"unknown_user"}


async def test_a_jwt_shaped_password_without_a_token_verifier_is_a_password(
    make_config: Any, htpasswd: Any,
) -> None:
    # with a ban in force the credentials are decoded first, and the token path is asked
    config = make_config({"basic": {"users_file": str(htpasswd(alice="alicepw"))}})
    with ThreadPoolExecutor(max_workers=1) as executor:
        authn = authenticator(config, executor)
        authn.lockout.tracker.ban("user:mallory")
        step = authn.begin(asking("alice", "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"))
        assert isinstance(step, PasswordVerification)
        with pytest.raises(Unauthenticated) as caught:
            await step.finish()
    assert caught.value.reason == "bad_password"
