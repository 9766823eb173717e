"""The key set's lifecycle against a real HTTPS JWKS server: start-up, schedule, failures,
staleness, rotation, refresh on an unknown kid, per-key filtering, TLS, file, discovery."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from authproxy.errors import ConfigError
from authproxy.http.app import KEY_SOURCE, RELOADERS
from authproxy.jwt.jwks import JwksError, parse_jwks
from authproxy.jwt.jwksfetch import HttpFetcher
from authproxy.jwt.keysource import KeySource

from .appclient import AppClient
from .conftest import eventually, metric
from .jwks_server import (
    K1,
    K2,
    TOKEN_ALGORITHMS,
    FakeClock,
    JwksServer,
    StartApp,
    bearer,
    mint,
    signing_key,
)

pytest_plugins = ["tests.jwks_fixtures"]



def source_of(client: AppClient) -> KeySource:
    return client.app[KEY_SOURCE]


async def status_of(client: AppClient, token: str) -> int:
    return (await client.get("/auth", headers=bearer(token))).status


async def ready(client: AppClient) -> bool:
    return (await client.get("/readyz")).status == 200


# -- start-up and schedule -------------------------------------------------------------------


async def test_readyz_is_503_until_a_set_is_loaded(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    await jwks_server.stop()
    client = await start_app()
    response = await client.get("/readyz")
    assert response.status == 503
    assert "no usable signing key set" in (await response.json())["missing"]["bearer"]
    assert source_of(client).ring.next_fetch_in() == 1  # first retry after one second
    await jwks_server.start()
    clock.advance(1)
    source_of(client).refresher.wake()
    await eventually(lambda: ready(client))
    assert await status_of(client, mint(K1, clock.time())) == 200


async def test_the_set_is_refreshed_every_interval_in_the_background(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app(jwks_update_interval=300)
    assert source_of(client).ring.next_fetch_in() == 300
    jwks_server.serve(K1, K2)
    clock.advance(300)
    source_of(client).refresher.wake()
    await jwks_server.wait_for_fetches(2)
    await eventually(lambda: source_of(client).ring.knows_kid("k2"))
    assert source_of(client).ring.next_fetch_in() == 300
    assert await status_of(client, mint(K2, clock.time())) == 200


@pytest.mark.parametrize(("cache_control", "next_fetch"), [
    ("max-age=120", 120),  # shortens, within bounds
    ("public, max-age=1000", 1000),  # lengthens, within bounds
    ("max-age=5", 60),  # no more often than once a minute
    ("no-store", 60),
    ("max-age=999999", 43200),  # and never later than half of jwks_max_stale
    ("private", 300),  # no max-age: the configured interval
])
async def test_max_age_moves_the_schedule_only_within_bounds(
    start_app: StartApp, jwks_server: JwksServer, cache_control: str, next_fetch: int
) -> None:
    jwks_server.headers = {"Cache-Control": cache_control}
    client = await start_app(jwks_update_interval=300, jwks_max_stale=86400)
    assert source_of(client).ring.next_fetch_in() == next_fetch


# -- failures keep the last good set -----------------------------------------------------------


async def oversized(server: JwksServer) -> None:
    server.body = json.dumps({"keys": [K1.public_jwk] * 3000}).encode()
    assert len(server.body) > 1 << 20


async def slow(server: JwksServer) -> None:
    server.hold = True


async def down(server: JwksServer) -> None:
    await server.stop()


async def http_500(server: JwksServer) -> None:
    server.status = 500


def body(text: str) -> Callable[[JwksServer], Any]:
    async def set_body(server: JwksServer) -> None:
        server.body = text.encode()
    return set_body


def only_keys(*members: dict[str, Any]) -> Callable[[JwksServer], Any]:
    async def serve(server: JwksServer) -> None:
        server.body = json.dumps({"keys": list(members)}).encode()
    return serve


FAILURES = {
    "http_500": (http_500, "http_status"),
    "down": (down, "connection_error"),
    "slow": (slow, "timeout"),
    "oversized": (oversized, "oversized"),
    "not_json": (body("<html>maintenance</html>"), "not_json"),
    "empty_body": (body(""), "not_json"),
    "not_a_jwks": (body('{"keys": {}}'), "not_jwks"),
    "empty_set": (body('{"keys": []}'), "no_usable_keys"),
    "only_unusable_keys": (only_keys({"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}),
                           "no_usable_keys"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_a_failed_fetch_keeps_the_last_good_set(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock, failure: str
) -> None:
    break_server, reason = FAILURES[failure]
    client = await start_app()
    fetcher = cast(HttpFetcher, source_of(client).refresher.fetcher)
    fetcher.client.timeout = 0.3  # for the "slow" case; after the start-up fetch
    token = mint(K1, clock.time())
    await break_server(jwks_server)
    with pytest.raises(JwksError) as caught:
        await source_of(client).refresher.refresh("scheduled")
    assert caught.value.reason == reason
    assert source_of(client).ring.next_fetch_in() == 1  # retried with backoff
    assert await ready(client)
    assert await status_of(client, token) == 200
    assert await metric(
        client, f'authproxy_jwks_fetches_total{{outcome="{reason}",source="endpoint",'
    ) == 1


async def test_failures_back_off_exponentially_up_to_the_interval(
    start_app: StartApp, jwks_server: JwksServer
) -> None:
    client = await start_app(jwks_update_interval=20)
    jwks_server.status = 503
    delays = []
    for _ in range(7):
        with pytest.raises(JwksError):
            await source_of(client).refresher.refresh("scheduled")
        delays.append(source_of(client).ring.next_fetch_in())
    assert delays == [1, 2, 4, 8, 16, 20, 20]
    jwks_server.status = 200
    await source_of(client).refresher.refresh("scheduled")
    assert source_of(client).ring.next_fetch_in() == 20


async def test_past_max_stale_the_set_is_distrusted(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app(jwks_update_interval=300, jwks_max_stale=900)
    await jwks_server.stop()
    clock.advance(900)
    assert await status_of(client, mint(K1, clock.time())) == 200  # the limit itself: trusted
    clock.advance(1)
    response = await client.get("/auth", headers=bearer(mint(K1, clock.time())))
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"  # the scheduled fetch is overdue
    readyz = await client.get("/readyz")
    assert readyz.status == 503
    assert "jwks_max_stale" in (await readyz.json())["missing"]["bearer"]
    await jwks_server.start()
    source_of(client).refresher.wake()  # the fetch was due long ago
    await eventually(lambda: ready(client))
    assert await status_of(client, mint(K1, clock.time())) == 200


async def test_outage_after_start_known_kids_keep_passing(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app()
    await jwks_server.stop()
    for sub in ("alice", "bob", "carol"):  # new tokens, not cache hits
        assert await status_of(client, mint(K1, clock.time(), sub=sub)) == 200
    assert await status_of(client, mint(K2, clock.time())) == 401


# -- rotation and unknown kids ---------------------------------------------------------------


async def test_rotation_new_kid_passes_without_restart(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app()
    jwks_server.serve(K2)
    assert await status_of(client, mint(K2, clock.time())) == 200
    assert jwks_server.fetches == 2


async def test_concurrent_misses_share_one_fetch(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app()
    source_of(client).refresher.miss_wait = 60  # however slowly the 50 arrive on a busy box
    jwks_server.serve(K1, K2)
    jwks_server.hold = True
    tokens = [mint(K2, clock.time(), sub=f"user{i}") for i in range(50)]
    pending = asyncio.gather(*(status_of(client, t) for t in tokens))
    await jwks_server.wait_for_fetches(2)
    # All 50 are inside the app before the fetch is let go: a request arriving after it
    # would find k2 known and prove nothing about sharing.
    serving = client.server.serving
    await eventually(lambda: serving.requests >= 50)
    jwks_server.release()
    assert await pending == [200] * 50
    assert jwks_server.fetches == 2


async def test_a_slow_endpoint_holds_an_unknown_kid_no_longer_than_the_miss_wait(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    # Found by the soak: while the endpoint was slow, every token with an unknown kid waited
    # for the whole fetch timeout (10 s). Now it waits miss_wait, is refused, and the fetch
    # goes on: once it lands, the same kid passes without another fetch.
    client = await start_app()
    source_of(client).refresher.miss_wait = 0.5
    jwks_server.serve(K1, K2)
    jwks_server.hold = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await status_of(client, mint(K2, clock.time())) == 401
    assert loop.time() - started < 3  # the fetch itself is held until released
    assert jwks_server.fetches == 2
    jwks_server.release()
    await eventually(lambda: source_of(client).ring.knows_kid(K2.kid or ""), "the fetch landed")
    assert await status_of(client, mint(K2, clock.time(), sub="again")) == 200
    assert jwks_server.fetches == 2


async def test_a_flood_of_random_kids_costs_the_endpoint_one_fetch_per_interval(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app()
    attacker = signing_key("RS256", None, name="attacker")

    async def flood(count: int) -> list[int]:
        statuses: list[int] = []
        for batch in range(0, count, 100):
            tokens = [mint(attacker, clock.time(), headers={"kid": secrets.token_hex(8)})
                      for _ in range(batch, min(count, batch + 100))]
            statuses += await asyncio.gather(*(status_of(client, t) for t in tokens))
        return statuses

    assert await flood(1000) == [401] * 1000
    assert jwks_server.fetches == 2  # start-up, and one refresh for the whole flood
    clock.advance(60)
    assert await flood(200) == [401] * 200
    assert jwks_server.fetches == 3  # a minute later, one more
    assert await status_of(client, mint(K1, clock.time())) == 200


async def test_an_unknown_kid_is_remembered_and_fails_fast(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app()
    stranger = signing_key("RS256", "nobody-knows")
    assert await status_of(client, mint(stranger, clock.time())) == 401
    assert jwks_server.fetches == 2
    clock.advance(59)
    assert await status_of(client, mint(stranger, clock.time(), sub="x")) == 401
    assert jwks_server.fetches == 2
    clock.advance(1)  # the memory and the rate limit both end: one more look is allowed
    jwks_server.serve(K1, stranger)
    assert await status_of(client, mint(stranger, clock.time(), sub="y")) == 200
    assert jwks_server.fetches == 3


# -- keys are taken one by one ---------------------------------------------------------------


def jwk(key: Any, **changes: Any) -> dict[str, Any]:
    """A key's public JWK with members changed (None removes one)."""
    members = {**key.public_jwk, **changes}
    return {k: v for k, v in members.items() if v is not None}


BAD_KEYS: dict[str, Any] = {  # by the reason each is skipped for
    "symmetric": {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "kid": "oct"},
    "private_key": jwk(signing_key("RS256", "priv", name="p"), d="AQAB"),
    "not_for_signing": jwk(signing_key("RS256", "enc", name="e"), use="enc"),
    "not_for_verify": jwk(signing_key("RS256", "ops", name="o"), use=None, key_ops=["encrypt"]),
    "weak_rsa": jwk(signing_key("RS256", "weak", kind="rsa1024")),
    "unsupported_kty": {"kty": "AKP", "alg": "ML-DSA-44", "pub": "AAAA", "kid": "pq"},
    "malformed": jwk(signing_key("RS256", "bad-n", name="n"), n="!!!"),
    "not_an_object": "just a string",
    "bad_kid": jwk(signing_key("RS256", None, name="k"), kid=7),
    "alg_not_allowed": jwk(signing_key("RS256", "hs", name="h"), alg="HS256"),
    "unsupported_curve": jwk(signing_key("ES256", "k256"), crv="secp256k1"),
    "alg_mismatch": jwk(signing_key("ES256", "mix"), alg="ES384"),
    "malformed_point": jwk(signing_key("ES256", "pt"), y="AAAA"),  # not on the curve
}


def test_each_unusable_key_is_skipped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    good = [signing_key(alg, f"good-{alg}").public_jwk for alg in TOKEN_ALGORITHMS]
    document = json.dumps({"keys": list(BAD_KEYS.values()) + good}).encode()
    with caplog.at_level(logging.WARNING, logger="authproxy.jwt.jwks"):
        keyset = parse_jwks(document, list(TOKEN_ALGORITHMS), "endpoint")
    assert keyset.kids == sorted(f"good-{alg}" for alg in TOKEN_ALGORITHMS)
    assert keyset.skipped == len(BAD_KEYS)
    reasons = [r.reason for r in caplog.records]  # type: ignore[attr-defined]
    expected = [name.replace("malformed_point", "malformed") for name in BAD_KEYS]
    assert reasons == expected


async def test_a_token_signed_by_a_skipped_key_is_refused(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    weak = signing_key("RS256", "weak", kind="rsa1024")
    jwks_server.serve(K1, weak)
    client = await start_app()
    assert await status_of(client, mint(weak, clock.time())) == 401
    assert source_of(client).ring.knows_kid("weak") is False


async def test_fetched_and_file_sets_are_parsed_off_the_event_loop(
    start_app: StartApp, jwks_server: JwksServer, tmp_path: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    """A JWK Set of up to 1 MiB is thousands of key imports (a third of a second measured):
    parsed on the event loop, it would hold every decision up. Each set here has a key that
    is skipped, whose log line tells which thread parsed it."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [K2.public_jwk, BAD_KEYS["symmetric"]]}))
    jwks_server.serve(K1)
    jwks_server.extra = [BAD_KEYS["weak_rsa"]]
    with caplog.at_level(logging.WARNING, logger="authproxy.jwt.jwks"):
        client = await start_app(jwks_file=str(path))
        assert [await reload("sighup") for reload in client.app[RELOADERS]] == [True]
    skips = [r for r in caplog.records if getattr(r, "event", None) == "jwks_key_skipped"]
    assert sorted(r.__dict__["source"] for r in skips) == ["endpoint", "file", "file"]
    loop_thread = threading.get_ident()
    assert all(r.thread != loop_thread for r in skips)
    assert source_of(client).ring.knows_kid("k1") and source_of(client).ring.knows_kid("k2")


async def test_the_load_log_line_lists_a_bounded_number_of_kids_cut_short(
    start_app: StartApp, jwks_server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A JWK Set of thousands of keys (up to 1 MiB) must not make a log line of its size."""
    keys = [signing_key("ES256", f"{i:03d}-" + "k" * 200) for i in range(40)]
    jwks_server.serve(*keys)
    with caplog.at_level(logging.INFO, logger="authproxy.jwt.jwks"):
        client = await start_app()
    [loaded] = [r.__dict__ for r in caplog.records if r.getMessage() == "JWKS loaded"]
    assert loaded["keys"] == 40
    assert loaded["kids"] == [(key.kid or "")[:64] for key in keys[:32]]
    assert source_of(client).ring.knows_kid(keys[-1].kid or "")


# -- TLS ---------------------------------------------------------------------------------------


async def test_tls_is_verified_against_the_configured_ca(
    start_app: StartApp, jwks_server: JwksServer, tmp_path: Path
) -> None:
    import trustme

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    client = await start_app(jwks_ssl_ca_certificate=str(other_ca))
    assert not await ready(client)
    endpoint = source_of(client).ring.endpoint
    assert endpoint is not None
    assert (endpoint.last_error or "").startswith("TLS")
    assert jwks_server.fetches == 0  # the handshake failed before any request


async def test_without_a_configured_ca_the_system_cas_are_used(
    start_app: StartApp, jwks_server: JwksServer
) -> None:
    client = await start_app(jwks_ssl_ca_certificate="")
    assert not await ready(client)  # the test CA is not a system CA
    assert jwks_server.fetches == 0


# -- jwks_file and discovery -------------------------------------------------------------------


async def test_jwks_file_is_loaded_and_reloaded_on_sighup(
    start_app: StartApp, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [K1.public_jwk]}))
    client = await start_app(jwks_endpoint="", jwks_file=str(path))
    assert await ready(client)
    assert await status_of(client, mint(K1, clock.time())) == 200
    assert await status_of(client, mint(K2, clock.time())) == 401

    path.write_text(json.dumps({"keys": [K2.public_jwk]}))
    reload_results = [await reload("sighup") for reload in client.app[RELOADERS]]
    assert reload_results == [True]
    assert await status_of(client, mint(K2, clock.time(), sub="b")) == 200
    assert await status_of(client, mint(K1, clock.time(), sub="b")) == 401

    path.write_text("{ broken")
    assert [await reload("sighup") for reload in client.app[RELOADERS]] == [False]
    assert await status_of(client, mint(K2, clock.time(), sub="c")) == 200


async def test_endpoint_keys_and_file_keys_are_both_used(
    start_app: StartApp, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [K2.public_jwk]}))
    client = await start_app(jwks_file=str(path))
    assert await status_of(client, mint(K1, clock.time())) == 200
    assert await status_of(client, mint(K2, clock.time())) == 200


async def test_the_jwks_is_discovered_from_the_issuer(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    issuer = f"{jwks_server.base_url}/realms/test"
    client = await start_app(jwks_endpoint="", issuer=issuer)
    assert await ready(client)
    assert jwks_server.discoveries == 1
    assert await status_of(client, mint(K1, clock.time(), iss=issuer)) == 200
    assert await status_of(client, mint(K1, clock.time(), iss="https://other")) == 401


async def test_discovery_refuses_a_document_for_another_issuer(
    start_app: StartApp, jwks_server: JwksServer
) -> None:
    jwks_server.issuer = "https://evil.example"
    client = await start_app(jwks_endpoint="", issuer=f"{jwks_server.base_url}/realms/test")
    assert not await ready(client)
    assert jwks_server.fetches == 0


# -- metrics -----------------------------------------------------------------------------------


async def test_metrics_show_fetches_age_and_key_count(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    jwks_server.serve(K1, K2)
    client = await start_app()
    clock.advance(42)
    assert await metric(client, 'authproxy_jwks_keys{source="endpoint"}') == 2
    assert await metric(client, 'authproxy_jwks_age_seconds{source="endpoint"}') == 42
    assert await metric(
        client, 'authproxy_jwks_fetches_total{outcome="ok",source="endpoint",trigger="startup"}'
    ) == 1


def test_discovery_needs_an_https_issuer(make_config: Any) -> None:
    with pytest.raises(ConfigError, match=r"jwt\.issuer"):
        make_config({"jwt": {"issuer": "http://idp.example"}})
    make_config({"jwt": {"issuer": "not-a-url", "jwks_endpoint": "https://idp.example/k"}})
