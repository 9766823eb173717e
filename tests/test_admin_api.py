"""The admin API: POST /api/v2/jwks_setup and GET /api/v2/jwks, for admins of either scheme."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from authproxy.jwt.refresher import MISS_REFRESH_INTERVAL

from .appclient import AppClient
from .jwks_server import (
    K1,
    K2,
    FakeClock,
    JwksServer,
    StartApp,
    basic,
    bearer,
    mint,
)

pytest_plugins = ["tests.jwks_fixtures"]



@pytest.fixture
def admin_app(start_app: StartApp, htpasswd: Any) -> Any:
    """An app with Basic users root (admin, named bare) and bob, Bearer admin 'ops-bot'."""

    async def start(**jwt: Any) -> AppClient:
        users = htpasswd(root="rootpw", bob="bobpw")
        return await start_app({"basic": {"users_file": str(users)},
                                "admin": {"users": ["root", "bearer:ops-bot"]}}, **jwt)

    return start


async def setup(client: AppClient, headers: dict[str, str]) -> Any:
    return await client.post("/api/v2/jwks_setup", headers=headers)


ROOT = basic("root", "rootpw")


async def test_no_credentials_is_401_with_the_challenge(admin_app: Any) -> None:
    client = await admin_app()
    for response in (await setup(client, {}), await client.get("/api/v2/jwks")):
        assert response.status == 401
        assert response.headers.getall("WWW-Authenticate") == [
            'Basic realm="authproxy", charset="UTF-8", Bearer realm="authproxy"'
        ]


async def test_wrong_password_and_bad_token_are_401(admin_app: Any) -> None:
    client = await admin_app()
    assert (await setup(client, basic("root", "nope"))).status == 401
    response = await setup(client, bearer("eyJhbGciOiJub25lIn0.e30."))
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_a_valid_non_admin_is_403(admin_app: Any, clock: FakeClock) -> None:
    client = await admin_app()
    assert (await setup(client, basic("bob", "bobpw"))).status == 403
    assert (await client.get("/api/v2/jwks", headers=bearer(mint(K1, clock.time())))).status == 403


async def test_jwks_setup_fetches_now_and_reports_the_new_set(
    admin_app: Any, jwks_server: JwksServer
) -> None:
    client = await admin_app()
    jwks_server.serve(K1, K2)
    response = await setup(client, ROOT)
    assert response.status == 200
    body = await response.json()
    assert body["keys"] == 2
    assert body["kids"] == ["k1", "k2"]
    assert body["fetched_at"].endswith("Z")
    assert jwks_server.fetches == 2


async def test_concurrent_jwks_setup_calls_share_one_fetch(
    admin_app: Any, jwks_server: JwksServer
) -> None:
    client = await admin_app()
    jwks_server.serve(K1, K2)
    responses = await asyncio.gather(*(setup(client, ROOT) for _ in range(50)))
    bodies = [await r.json() for r in responses]
    assert {r.status for r in responses} == {200}
    assert {tuple(b["kids"]) for b in bodies} == {("k1", "k2")}
    assert jwks_server.fetches == 2  # start-up, and one for all 50


async def test_jwks_setup_fetches_at_most_once_per_interval(
    admin_app: Any, jwks_server: JwksServer, clock: FakeClock
) -> None:
    """Like refresh on an unknown kid (MISS_REFRESH_INTERVAL): a call within the interval
    answers with the set in use, says so, and fetches nothing."""
    client = await admin_app()
    jwks_server.serve(K1, K2)
    first = await (await setup(client, ROOT)).json()
    assert (first["kids"], first["rate_limited"], first["retry_after"]) == (["k1", "k2"], False, 0)
    jwks_server.serve(K2)
    for _ in range(50):
        response = await setup(client, ROOT)
        body = await response.json()
        assert response.status == 200
        assert (body["kids"], body["rate_limited"]) == (["k1", "k2"], True)
        assert 0 < body["retry_after"] <= MISS_REFRESH_INTERVAL
    assert jwks_server.fetches == 2
    clock.advance(MISS_REFRESH_INTERVAL)
    body = await (await setup(client, ROOT)).json()
    assert (body["kids"], body["rate_limited"]) == (["k2"], False)


async def test_a_rate_limited_call_after_a_failure_reports_the_failure(
    admin_app: Any, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await admin_app()
    jwks_server.status = 500
    fetches = jwks_server.fetches
    for limited in (False, True, True):
        response = await setup(client, ROOT)
        body = await response.json()
        assert response.status == 502
        assert (body["error"], body["kept_kids"], body["rate_limited"]) == (
            "http_status", ["k1"], limited)
    assert jwks_server.fetches == fetches + 1
    jwks_server.status = 200
    clock.advance(MISS_REFRESH_INTERVAL)
    assert (await setup(client, ROOT)).status == 200


async def test_an_admin_may_use_a_bearer_token(admin_app: Any, clock: FakeClock) -> None:
    client = await admin_app()
    response = await setup(client, bearer(mint(K1, clock.time(), sub="ops-bot")))
    assert response.status == 200


async def test_a_failed_setup_is_502_with_the_reason_and_keeps_the_old_set(
    admin_app: Any, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await admin_app()
    jwks_server.body = b'{"keys": []}'
    response = await setup(client, ROOT)
    assert response.status == 502
    body = await response.json()
    assert body["error"] == "no_usable_keys"
    assert body["kept_kids"] == ["k1"]
    token = mint(K1, clock.time())
    assert (await client.get("/auth", headers=bearer(token))).status == 200


async def test_get_jwks_shows_kids_source_age_and_last_error(
    admin_app: Any, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await admin_app()
    jwks_server.status = 500
    assert (await setup(client, ROOT)).status == 502
    clock.advance(30)
    response = await client.get("/api/v2/jwks", headers=ROOT)
    assert response.status == 200
    body = await response.json()
    assert body["ready"] is True
    [endpoint] = body["sources"]
    assert endpoint["source"] == "endpoint"
    assert endpoint["location"] == jwks_server.url
    assert endpoint["kids"] == ["k1"]
    assert endpoint["age_seconds"] == 30
    assert endpoint["last_error"] == "HTTP status 500"
    assert endpoint["last_error_at"].endswith("Z")
    assert endpoint["trusted"] is True


async def test_without_an_endpoint_setup_is_409(
    start_app: StartApp, htpasswd: Any, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [K1.public_jwk]}))
    client = await start_app({"basic": {"users_file": str(htpasswd(root="rootpw"))},
                              "admin": {"users": ["root"]}},
                             jwks_endpoint="", jwks_file=str(path))
    assert (await setup(client, ROOT)).status == 409
    body = await (await client.get("/api/v2/jwks", headers=ROOT)).json()
    assert [s["source"] for s in body["sources"]] == ["file"]


async def test_a_token_naming_a_basic_admin_is_not_an_admin(
    admin_app: Any, clock: FakeClock
) -> None:
    """admin.users "root" (bare: Basic) is not a token whose sub is root: a token from any
    issuer sharing the keys could name itself so."""
    client = await admin_app()
    token = bearer(mint(K1, clock.time(), sub="root"))
    assert (await setup(client, token)).status == 403
    assert (await client.get("/api/v2/jwks", headers=token)).status == 403
    assert (await setup(client, ROOT)).status == 200


async def test_a_basic_user_named_like_a_bearer_admin_is_not_an_admin(
    start_app: StartApp, htpasswd: Any
) -> None:
    client = await start_app({"basic": {"users_file": str(htpasswd(**{"ops-bot": "pw"}))},
                              "admin": {"users": ["bearer:ops-bot"]}})
    assert (await setup(client, basic("ops-bot", "pw"))).status == 403


async def test_refusals_are_the_decision_endpoints_own(
    admin_app: Any, jwks_server: JwksServer, clock: FakeClock
) -> None:
    """The admin API answers a refusal with the status and headers /auth gives the same
    credentials (one mapping, the Decider's): here a token while no key set is loaded (503
    with Retry-After), a wrong password and no credentials (401 with the challenge)."""
    jwks_server.status = 500
    client = await admin_app()
    statuses = []
    for headers in (bearer(mint(K1, clock.time())), basic("root", "nope"), {}):
        decision = await client.get("/auth", headers=headers)
        admin = await client.get("/api/v2/jwks", headers=headers)
        statuses.append(admin.status)
        assert admin.status == decision.status
        for name in ("WWW-Authenticate", "Retry-After", "Cache-Control"):
            assert admin.headers.get(name) == decision.headers.get(name)
    assert statuses == [503, 401, 401]
