"""X-Accel-Expires (server.nginx_cache_hint): how long nginx may keep a 200, never longer
than a token's exp or basic.cache_ttl; absent (no-store) unless asked for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .jwks_server import K1, FakeClock, JwksServer, StartApp, basic, bearer, mint

pytest_plugins = ["tests.jwks_fixtures"]


async def test_no_hint_by_default(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app()
    resp = await client.get("/auth", headers=bearer(mint(K1, clock.time())))
    assert resp.status == 200
    assert "X-Accel-Expires" not in resp.headers
    assert resp.headers["Cache-Control"] == "no-store"


async def test_token_hint_is_its_remaining_life(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app(sections={"server": {"nginx_cache_hint": True},
                                       "basic": {"cache_ttl": 300}})
    token = mint(K1, clock.time(), exp=int(clock.time()) + 120)
    resp = await client.get("/auth", headers=bearer(token))
    assert resp.status == 200
    # whole seconds, rounded down: never a fraction of a second past exp
    assert int(resp.headers["X-Accel-Expires"]) in (119, 120)


async def test_token_hint_capped_by_cache_ttl(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app(sections={"server": {"nginx_cache_hint": True},
                                       "basic": {"cache_ttl": 30}})
    token = mint(K1, clock.time(), exp=int(clock.time()) + 86400)
    resp = await client.get("/auth", headers=bearer(token))
    assert resp.status == 200 and resp.headers["X-Accel-Expires"] == "30"


async def test_denials_never_carry_a_hint(start_app: StartApp, clock: FakeClock) -> None:
    client = await start_app(sections={"server": {"nginx_cache_hint": True}})
    resp = await client.get("/auth")
    assert resp.status == 401 and "X-Accel-Expires" not in resp.headers


async def test_basic_hint_is_the_cache_ttl(
    start_app: StartApp, htpasswd: Callable[..., Path]
) -> None:
    client = await start_app(sections={"server": {"nginx_cache_hint": True},
                                       "basic": {"users_file": str(htpasswd(bob="pw")),
                                                 "cache_ttl": 45}})
    resp = await client.get("/auth", headers=basic("bob", "pw"))
    assert resp.status == 200 and resp.headers["X-Accel-Expires"] == "45"


async def test_cache_ttl_0_means_nginx_keeps_nothing(start_app: StartApp, clock: FakeClock) -> None:
    client = await start_app(sections={"server": {"nginx_cache_hint": True},
                                       "basic": {"cache_ttl": 0}})
    resp = await client.get("/auth", headers=bearer(mint(K1, clock.time())))
    assert resp.status == 200 and resp.headers["X-Accel-Expires"] == "0"


async def test_a_403_or_a_503_never_carries_a_hint(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app(sections={"server": {"nginx_cache_hint": True}})
    token = bearer(mint(K1, clock.time()))
    forbidden = await client.get("/auth?scope=admin", headers=token)
    assert forbidden.status == 403 and "X-Accel-Expires" not in forbidden.headers
    await jwks_server.stop()
    client = await start_app(sections={"server": {"nginx_cache_hint": True}})
    unavailable = await client.get("/auth", headers=token)
    assert unavailable.status == 503 and "X-Accel-Expires" not in unavailable.headers
