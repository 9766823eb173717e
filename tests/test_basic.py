"""Basic against an htpasswd table, through the real app (startup, handlers, cleanup)."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

from authproxy.config import Config
from authproxy.http.app import DECIDER, METRICS, USER_STORE, create_app
from authproxy.http.application import Application

from .appclient import AppClient, ServeApp
from .conftest import IDENTITY_HEADERS, bcrypt_hash, eventually
from .jwks_server import FakeClock

CHALLENGE = 'Basic realm="authproxy", charset="UTF-8"'


def basic(user: str | bytes, password: str | bytes) -> str:
    raw = (user if isinstance(user, bytes) else user.encode()) + b":" + (
        password if isinstance(password, bytes) else password.encode())
    return "Basic " + base64.b64encode(raw).decode()


def hashes_verified(app: Application) -> float:
    value = app[METRICS].registry.get_sample_value(
        "authproxy_password_hash_seconds_count")
    return value or 0.0


@pytest.fixture
def users(htpasswd: Callable[..., Path], tmp_path: Path) -> Path:
    path = htpasswd(alice="wonderland", bob="builder", **{"zoë": "müller"})
    (tmp_path / "groups").write_text("admins: alice\nstaff: alice bob\n")
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app_for(make_config: Callable[..., Config], users: Path, tmp_path: Path,
            clock: FakeClock) -> Callable[..., Application]:
    def build(server: dict[str, Any] | None = None, **basic_overrides: Any) -> Application:
        sections = {"basic": {"users_file": str(users), "groups_file": str(tmp_path / "groups"),
                              **basic_overrides}}
        if server:
            sections["server"] = server
        return create_app(make_config(sections), clock=clock.monotonic)
    return build


@pytest.fixture
async def client(serve: ServeApp, app_for: Callable[..., Application]) -> AppClient:
    return await serve(app_for())


def decision_log(client: AppClient, capsys: pytest.CaptureFixture[str]) -> str:
    """The decision lines written so far (they are batched: flush the batch first)."""
    client.app[DECIDER].decisions.flush()
    return capsys.readouterr().err


async def test_no_credentials_gets_challenge(
    client: AppClient, capsys: pytest.CaptureFixture[str]
) -> None:
    resp = await client.get("/auth")
    assert resp.status == 401
    assert resp.headers.getall("WWW-Authenticate") == [CHALLENGE]
    assert resp.headers["Cache-Control"] == "no-store"
    assert '"reason":"missing"' in decision_log(client, capsys)


async def test_valid_credentials_get_every_identity_header(client: AppClient) -> None:
    resp = await client.get("/auth", headers={"Authorization": basic("alice", "wonderland")})
    assert resp.status == 200
    assert {h: resp.headers[h] for h in IDENTITY_HEADERS} == {
        "X-Auth-User": "alice", "X-Auth-Method": "basic", "X-Auth-Subject": "alice",
        "X-Auth-Groups": "admins,staff", "X-Auth-Scopes": ""}


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["/auth", "/auth/", "/auth/envoy/style/path?x=1"])
async def test_any_method_and_subpath(client: AppClient, method: str, path: str) -> None:
    ok = await client.request(method, path, headers={"Authorization": basic("bob", "builder")})
    assert ok.status == 200
    denied = await client.request(method, path)
    assert denied.status == 401


async def test_scheme_name_is_case_insensitive_and_spaces_tolerated(client: AppClient) -> None:
    value = basic("alice", "wonderland").replace("Basic ", "bAsIc   ")
    assert (await client.get("/auth", headers={"Authorization": value})).status == 200


async def test_non_ascii_user_sent_as_utf8(client: AppClient) -> None:
    resp = await client.get("/auth", headers={"Authorization": basic("zoë", "müller")})
    assert resp.status == 200
    raw = dict(resp.raw_headers)
    assert raw[b"X-Auth-User"] == "zoë".encode()


BAD_CREDENTIALS = {
    "not_base64": "Basic !!!not-base64!!!",
    "bad_padding": "Basic " + base64.b64encode(b"alice:wonderland").decode().rstrip("="),
    "urlsafe_alphabet": "Basic " + base64.urlsafe_b64encode(b"alice:wonder>?land").decode(),
    "no_colon": "Basic " + base64.b64encode(b"alicewonderland").decode(),
    "empty_user": basic("", "wonderland"),
    "nul_in_password": basic("alice", b"wonder\x00land"),
    "control_in_user": basic(b"ali\x01ce", "wonderland"),
    "not_utf8_user": basic(b"\xff\xfe", "wonderland"),
    "scheme_only": "Basic",
    "unknown_scheme": "Digest username=alice",
    "bearer_not_enabled": "Bearer abc.def.ghi",
    "empty_value": "",
}


@pytest.mark.parametrize("name", sorted(BAD_CREDENTIALS))
async def test_bad_credentials_are_401_and_logged(
    client: AppClient, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    resp = await client.get("/auth", headers={"Authorization": BAD_CREDENTIALS[name]})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == CHALLENGE
    log = decision_log(client, capsys)
    assert '"outcome":"deny"' in log and "wonderland" not in log
    sent = BAD_CREDENTIALS[name].partition(" ")[2]  # nor the credentials as sent
    assert not sent or sent not in log


async def test_two_authorization_headers_even_identical(client: AppClient) -> None:
    value = basic("alice", "wonderland")
    resp = await client.get("/auth", headers=[("Authorization", value), ("Authorization", value)])
    assert resp.status == 401


async def test_wrong_password_and_unknown_user_cost_one_hash_each(client: AppClient) -> None:
    app = client.app
    before = hashes_verified(app)
    assert (await client.get("/auth", headers={"Authorization": basic("alice", "x")})).status == 401
    assert (await client.get("/auth", headers={"Authorization": basic("eve", "x")})).status == 401
    # the unknown user was checked against a dummy hash of the same kind (bcrypt)
    assert hashes_verified(app) == before + 2


async def test_an_unknown_user_name_is_never_logged(
    client: AppClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """It names no user, and may be a password typed in the user-id field."""
    resp = await client.get("/auth", headers={"Authorization": basic("Tr0ub4dor&3", "x")})
    assert resp.status == 401
    log = decision_log(client, capsys)
    assert '"reason":"unknown_user"' in log and "Tr0ub4dor" not in log
    await client.get("/auth", headers={"Authorization": basic("alice", "x")})
    log = decision_log(client, capsys)  # a real user with a wrong password is named
    assert '"user":"alice"' in log and '"reason":"bad_password"' in log


async def test_verified_password_is_cached_until_ttl(client: AppClient, clock: FakeClock) -> None:
    app, auth = client.app, {"Authorization": basic("alice", "wonderland")}
    assert (await client.get("/auth", headers=auth)).status == 200
    verified = hashes_verified(app)
    for _ in range(5):
        assert (await client.get("/auth", headers=auth)).status == 200
    assert hashes_verified(app) == verified
    clock.advance(301)  # past basic.cache_ttl (300)
    assert (await client.get("/auth", headers=auth)).status == 200
    assert hashes_verified(app) == verified + 1


async def test_wrong_password_is_never_cached(client: AppClient) -> None:
    app, auth = client.app, {"Authorization": basic("alice", "nope")}
    for _ in range(3):
        assert (await client.get("/auth", headers=auth)).status == 401
    assert hashes_verified(app) == 3


async def test_concurrent_identical_checks_share_one_verification(
    serve: ServeApp, app_for: Callable[..., Application], users: Path
) -> None:
    users.write_text(f"bob:{bcrypt_hash('builder', 10)}\n")  # a verification long enough
    client = await serve(app_for())  # for all 20 requests to arrive during it
    auth = {"Authorization": basic("bob", "builder")}
    responses = await asyncio.gather(*(client.get("/auth", headers=auth) for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    # all 20 missed the cache (none came after the verification), and one verified for all
    assert client.app[METRICS].registry.get_sample_value(
        "authproxy_cache_lookups_total", {"cache": "basic", "result": "miss"}) == 20
    assert hashes_verified(client.app) == 1


async def test_long_passwords_against_bcrypt_follow_apache(
    serve: ServeApp, make_config: Callable[..., Config], htpasswd: Callable[..., Path]
) -> None:
    password = "p" * 72
    users = htpasswd(name="long.htpasswd", carol=password)
    client = await serve(create_app(make_config({"basic": {"users_file": str(users)}})))
    # bcrypt (and Apache) read only the first 72 bytes; longer input is never a 500
    same_prefix = await client.get("/auth", headers={"Authorization": basic("carol", password + "xyz")})
    assert same_prefix.status == 200
    other = await client.get("/auth", headers={"Authorization": basic("carol", "q" * 100)})
    assert other.status == 401


async def test_reload_forgets_changed_user_and_keeps_others(
    client: AppClient, users: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = basic("alice", "wonderland"), basic("bob", "builder")
    assert (await client.get("/auth", headers={"Authorization": alice})).status == 200
    assert (await client.get("/auth", headers={"Authorization": bob})).status == 200
    text = users.read_text().splitlines()
    text[0] = "alice:" + bcrypt_hash("looking-glass")
    users.write_text("\n".join(text) + "\n")
    with caplog.at_level(logging.INFO, logger="authproxy"):
        assert await client.app[USER_STORE].reload("test") is True
    [reloaded] = [r for r in caplog.records if getattr(r, "event", "") == "users_reload"]
    assert (reloaded.__dict__["users"], reloaded.__dict__["changed"]) == (3, 1)
    verified = hashes_verified(client.app)
    assert (await client.get("/auth", headers={"Authorization": alice})).status == 401
    assert (await client.get("/auth", headers={
        "Authorization": basic("alice", "looking-glass")})).status == 200
    assert (await client.get("/auth", headers={"Authorization": bob})).status == 200
    # bob's remembered password survived the reload: only alice's two checks hashed
    assert hashes_verified(client.app) == verified + 2


async def test_a_check_under_way_when_the_password_changes_does_not_vouch_for_the_new_one(
    serve: ServeApp, app_for: Callable[..., Application], users: Path
) -> None:
    """A request arriving after a reload must not join a verification begun against the old
    entry: its success would be remembered for the new one, and the old password would keep
    working for basic.cache_ttl."""
    users.write_text(f"alice:{bcrypt_hash('old-password', 12)}\n")  # ~0.25 s a verification
    client = await serve(app_for())
    old = {"Authorization": basic("alice", "old-password")}
    started = asyncio.ensure_future(client.get("/auth", headers=old))
    registry = client.app[METRICS].registry
    await eventually(lambda: registry.get_sample_value(
        "authproxy_cache_lookups_total", {"cache": "basic", "result": "miss"}),
        "the first verification under way")
    users.write_text(f"alice:{bcrypt_hash('new-password')}\n")
    assert await client.app[USER_STORE].reload("test") is True
    assert hashes_verified(client.app) == 0, "the first verification ended before the reload"
    assert (await client.get("/auth", headers=old)).status == 401
    assert (await started).status == 200  # checked against the entry it began with
    assert (await client.get("/auth", headers=old)).status == 401


async def test_broken_reload_keeps_old_table_and_readiness(
    client: AppClient, users: Path, caplog: pytest.LogCaptureFixture
) -> None:
    users.write_text("alice:plaintext-is-never-accepted\n")
    assert await client.app[USER_STORE].reload("test") is False
    assert (await client.get("/auth", headers={
        "Authorization": basic("bob", "builder")})).status == 200
    assert (await client.get("/readyz")).status == 200
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "users_reload"]
    assert record.__dict__["outcome"] == "error" and "users.htpasswd:1" in record.__dict__["error"]
    assert "plaintext-is-never-accepted" not in str(vars(record))
    value = client.app[METRICS].registry.get_sample_value(
        "authproxy_user_table_reloads_total", {"outcome": "error"})
    assert value == 1


async def test_a_reload_failing_in_any_way_keeps_the_old_table(
    client: AppClient, users: Path
) -> None:
    """Not only UserFileError: whatever a reload raises, the old table serves on and the
    failure is counted (before, anything else ended the file watcher silently)."""
    store = client.app[USER_STORE]

    def failing_load() -> NoReturn:
        raise MemoryError

    # the step that reads the files, off the loop (a method replaced for this test)
    store._load = failing_load  # type: ignore[method-assign]
    assert await store.reload("test") is False
    assert (await client.get("/auth", headers={
        "Authorization": basic("bob", "builder")})).status == 200
    value = client.app[METRICS].registry.get_sample_value(
        "authproxy_user_table_reloads_total", {"outcome": "error"})
    assert value == 1


async def test_file_change_is_noticed_without_a_signal(client: AppClient, users: Path) -> None:
    users.write_text(users.read_text() + "dave:" + bcrypt_hash("d") + "\n")
    registry = client.app[METRICS].registry
    await eventually(lambda: registry.get_sample_value(
        "authproxy_user_table_reloads_total", {"outcome": "ok"}),
        "the watcher reloading the changed file", timeout=10)
    assert (await client.get("/auth", headers={"Authorization": basic("dave", "d")})).status == 200


async def status_from(client: AppClient, user: str, password: str, address: str) -> int:
    """The status of one decision for ``user``/``password`` from client ``address``."""
    headers = {"Authorization": basic(user, password), "X-Real-IP": address}
    return (await client.get("/auth", headers=headers)).status


async def test_brute_force_bans_user_and_address_without_hashing(
    serve: ServeApp, app_for: Callable[..., Application], clock: FakeClock
) -> None:
    client = await serve(app_for(max_failures=3, failure_window=60, ban_time=300))
    app = client.app
    for _ in range(3):
        assert await status_from(client, "alice", "guess", "203.0.113.9") == 401
    verified = hashes_verified(app)
    # the right password, for the banned user, from another address: refused, nothing hashed
    assert await status_from(client, "alice", "wonderland", "198.51.100.1") == 401
    # another user from the banned address: refused too
    assert await status_from(client, "bob", "builder", "203.0.113.9") == 401
    assert hashes_verified(app) == verified
    banned = app[METRICS].registry.get_sample_value("authproxy_bans_in_force")
    assert banned == 2
    clock.advance(301)
    assert await status_from(client, "alice", "wonderland", "198.51.100.1") == 200


async def test_a_user_id_spelling_an_address_does_not_ban_that_address(
    serve: ServeApp, app_for: Callable[..., Application]
) -> None:
    client = await serve(app_for(max_failures=3, failure_window=60, ban_time=300))
    for _ in range(3):  # from one address, failures for a "user" named like another address
        assert await status_from(client, "203.0.113.7", "x", "198.51.100.9") == 401
    assert await status_from(client, "alice", "wonderland", "203.0.113.7") == 200


async def test_failures_outside_the_window_do_not_add_up(
    serve: ServeApp, app_for: Callable[..., Application], clock: FakeClock
) -> None:
    client = await serve(app_for(max_failures=3, failure_window=60))
    for _ in range(2):
        await client.get("/auth", headers={"Authorization": basic("alice", "guess")})
    clock.advance(61)
    await client.get("/auth", headers={"Authorization": basic("alice", "guess")})
    resp = await client.get("/auth", headers={"Authorization": basic("alice", "wonderland")})
    assert resp.status == 200


async def test_ban_does_not_lock_out_a_cached_password(
    serve: ServeApp, app_for: Callable[..., Application]
) -> None:
    client = await serve(app_for(max_failures=3))
    good = {"Authorization": basic("alice", "wonderland"), "X-Real-IP": "198.51.100.7"}
    assert (await client.get("/auth", headers=good)).status == 200
    for _ in range(10):
        await client.get("/auth", headers={"Authorization": basic("alice", "guess"),
                                           "X-Real-IP": "203.0.113.66"})
    assert (await client.get("/auth", headers=good)).status == 200


async def test_forwarded_address_ignored_from_untrusted_peer(
    serve: ServeApp, app_for: Callable[..., Application]
) -> None:
    client = await serve(app_for(max_failures=3, server={"trusted_proxies": ["10.0.0.0/8"]}))
    for i in range(3):  # a spoofed X-Real-IP per attempt must not dodge the per-address count
        await client.get("/auth", headers={"Authorization": basic(f"user{i}", "guess"),
                                           "X-Real-IP": f"203.0.113.{i}"})
    resp = await client.get("/auth", headers={"Authorization": basic("bob", "builder")})
    assert resp.status == 401


@pytest.mark.parametrize(("query", "user", "status"), [
    ("group=admins", "alice", 200), ("group=admins", "bob", 403),
    ("group=nobody,staff", "bob", 200), ("user=bob", "alice", 403), ("user=alice,bob", "bob", 200),
    ("scope=read", "alice", 403), ("scheme=basic", "alice", 200),
])
async def test_location_policy(client: AppClient, query: str, user: str, status: int) -> None:
    password = {"alice": "wonderland", "bob": "builder"}[user]
    resp = await client.get(f"/auth?{query}", headers={"Authorization": basic(user, password)})
    assert resp.status == status


async def test_a_groups_file_may_start_with_a_byte_order_mark(
    serve: ServeApp, app_for: Callable[..., Application], tmp_path: Path
) -> None:
    """Windows editors start UTF-8 files with one (the user table allows it too): the first
    group is still "admins", not an unmatchable "\ufeffadmins"."""
    (tmp_path / "groups").write_text("\ufeffadmins: alice\n", encoding="utf-8")
    client = await serve(app_for())
    resp = await client.get("/auth?group=admins",
                            headers={"Authorization": basic("alice", "wonderland")})
    assert resp.status == 200 and resp.headers["X-Auth-Groups"] == "admins"


async def test_preflight_needs_opt_in(
    serve: ServeApp, app_for: Callable[..., Application], client: AppClient
) -> None:
    preflight = {"X-Original-Method": "OPTIONS", "Origin": "https://app.example",
                 "Access-Control-Request-Method": "POST"}
    assert (await client.get("/auth", headers=preflight)).status == 401
    opted_in = await serve(app_for(server={"allow_preflight": True}))
    resp = await opted_in.get("/auth", headers=preflight)
    assert resp.status == 200 and resp.headers["X-Auth-User"] == ""
    no_origin = {k: v for k, v in preflight.items() if k != "Origin"}
    assert (await opted_in.get("/auth", headers=no_origin)).status == 401


async def test_health_readiness_and_metrics(client: AppClient) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["ready"] is True
    await client.get("/auth", headers={"Authorization": basic("alice", "wonderland")})
    text = await (await client.get("/metrics")).text()
    assert 'authproxy_decisions_total{outcome="allow",reason="ok",scheme="basic"} 1.0' in text
    assert "alice" not in text


async def test_cached_user_answered_while_a_flood_is_hashing(
    serve: ServeApp, make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """Wrong passwords queue for the hash threads; a remembered password does not wait."""
    users = tmp_path / "slow.htpasswd"
    users.write_text(f"alice:{bcrypt_hash('wonderland', cost=11)}\n")  # ~0.15 s a check
    client = await serve(create_app(make_config(
        {"basic": {"users_file": str(users), "max_failures": 1000}})))
    good = {"Authorization": basic("alice", "wonderland")}
    assert (await client.get("/auth", headers=good)).status == 200
    flood = [asyncio.ensure_future(client.get("/auth", headers={
        "Authorization": basic("alice", f"guess-{i}")})) for i in range(8)]
    registry = client.app[METRICS].registry
    await eventually(lambda: (registry.get_sample_value(
        "authproxy_cache_lookups_total", {"cache": "basic", "result": "miss"}) or 0) >= 9,
        "the flood reaching the hash threads", timeout=10)
    cached = await client.get("/auth", headers=good)
    assert cached.status == 200
    assert not all(f.done() for f in flood), "the flood finished first: nothing was measured"
    assert [r.status for r in await asyncio.gather(*flood)] == [401] * 8
