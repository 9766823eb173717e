"""The policy grammar (SPEC §8.2) and what identity headers may say, through the real app."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authproxy.cli import main
from authproxy.core.policy import InvalidPolicyLog
from authproxy.http.app import DECIDER, METRICS

from .appclient import AppClient
from .conftest import metric
from .jwks_server import K1, FakeClock, StartApp, basic, bearer, mint

pytest_plugins = ["tests.jwks_fixtures"]

INVALID_POLICIES = [
    "groups=admins", "Group=admins", "role=admin", "user=", "group=%20", "group",
    "group=a,,b", "group=admins,", "scope=a,", "scope=a&scope=b", "group=x&group=admins",
    "scheme=basic,kerberos", "scheme=", "claim.=x", "claim.role=", "claim.a=1&claim.a=2",
    "group=%ff", "=admins", "scope=read&user=alice&extra=1",
]


@pytest.fixture
def users(tmp_path: Path, htpasswd: Callable[..., Path]) -> Path:
    (tmp_path / "groups").write_text("staff: bob\n")
    return htpasswd(alice="alicepw", bob="bobpw")  # alice: no groups


@pytest.fixture
def app(start_app: StartApp, users: Path, tmp_path: Path) -> Any:
    async def start(**server: Any) -> AppClient:
        return await start_app({
            "basic": {"users_file": str(users), "groups_file": str(tmp_path / "groups")},
            "server": server,
        })
    return start


def hashes_verified(client: AppClient) -> float:
    value = client.app[METRICS].registry.get_sample_value(
        "authproxy_password_hash_seconds_count")
    return value or 0.0


def decision_log(client: AppClient, capsys: Any) -> str:
    client.app[DECIDER].decisions.flush()
    return str(capsys.readouterr().err)


# -- an invalid policy refuses everyone ------------------------------------------------------


@pytest.mark.parametrize("query", INVALID_POLICIES)
async def test_an_invalid_policy_is_403_for_everyone_and_spends_no_hash(
    app: Any, clock: FakeClock, query: str
) -> None:
    client = await app(allow_preflight=True)
    token = mint(K1, clock.time(), scope="a b read", groups=["admins"])
    for headers in (basic("alice", "alicepw"), basic("alice", "wrong"), bearer(token), {},
                    {"X-Original-Method": "OPTIONS", "Origin": "https://app.example",
                     "Access-Control-Request-Method": "POST"}):
        response = await client.get(f"/auth?{query}", headers=headers)
        assert response.status == 403, (query, headers)
        assert "X-Auth-User" not in response.headers
    assert hashes_verified(client) == 0


async def test_an_invalid_policy_is_logged_once_per_string_and_counted(
    app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await app()
    caplog.set_level(logging.ERROR, "authproxy")
    for query in ("groups=admins", "groups=admins", "groups=admins", "group=", "group="):
        assert (await client.get(f"/auth?{query}", headers=basic("alice", "alicepw"))).status == 403
    logged = [r for r in caplog.records if getattr(r, "event", "") == "invalid_policy"]
    assert [(r.policy, r.problem) for r in logged] == [  # type: ignore[attr-defined]
        ("groups=admins", "unknown_key"), ("group=", "empty_value")]
    assert await metric(client, 'authproxy_invalid_policy_total{problem="unknown_key"}') == 3
    assert await metric(client, 'authproxy_invalid_policy_total{problem="empty_value"}') == 2
    text = await (await client.get("/metrics")).text()
    assert "groups=admins" not in text  # never a label


def test_the_already_logged_set_is_bounded() -> None:
    seen = InvalidPolicyLog(limit=2)
    assert [seen.first_time(q) for q in ("a=1", "b=1", "a=1", "c=1")] == [True, True, False, True]
    assert seen.first_time("a=1")  # forgotten to make room: logged again, memory stays bounded


@pytest.mark.parametrize("query", [
    "", "scope=read", "scope=read%20a,b", "scope=+read+,+a+", "user=alice,+bob",
    "group=staff&user=alice", "scheme=bearer", "scheme=Bearer,basic", "claim.sub=alice",
])
async def test_valid_policies_still_admit(app: Any, clock: FakeClock, query: str) -> None:
    client = await app()
    token = mint(K1, clock.time(), scope="a b read", groups=["staff"])
    assert (await client.get(f"/auth?{query}", headers=bearer(token))).status == 200


# -- scopes: all required ------------------------------------------------------------------


@pytest.mark.parametrize("query", ["scope=a,b", "scope=a%20b", "scope=b"])
async def test_every_listed_scope_is_required(app: Any, clock: FakeClock, query: str) -> None:
    client = await app()
    response = await client.get(f"/auth?{query}",
                                headers=bearer(mint(K1, clock.time(), scope="a")))
    assert response.status == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


# -- claim.<path> --------------------------------------------------------------------------


CLAIMS: dict[str, Any] = {
    "email_verified": True, "tier": 3, "amr": ["pwd", "mfa"],
    "realm_access": {"roles": ["viewer", "admin"]}, "https://example.com/roles": ["ops"],
    "a.b": "top-level", "a": {"b": "nested"},
}


@pytest.mark.parametrize(("query", "status"), [
    ("claim.email_verified=true", 200),
    ("claim.email_verified=false", 403),
    ("claim.tier=1,3", 200),
    ("claim.amr=otp,+mfa", 200),
    ("claim.amr=otp", 403),
    ("claim.realm_access.roles=admin", 200),
    ("claim.realm_access.roles=root", 403),
    ("claim.realm_access=admin", 403),  # an object equals no string
    ("claim.https://example.com/roles=ops", 200),
    ("claim.a.b=top-level", 200),  # the exact top-level name wins over the dotted path
    ("claim.a.b=nested", 403),
    ("claim.missing=x", 403),
    ("claim.sub=alice&claim.amr=mfa&scope=read", 200),
    ("claim.sub=alice&claim.amr=otp", 403),
])
async def test_claim_policies(app: Any, clock: FakeClock, query: str, status: int) -> None:
    client = await app()
    token = mint(K1, clock.time(), scope="read", **CLAIMS)
    assert (await client.get(f"/auth?{query}", headers=bearer(token))).status == status


async def test_a_basic_user_has_no_claims(app: Any) -> None:
    client = await app()
    response = await client.get("/auth?claim.sub=bob", headers=basic("bob", "bobpw"))
    assert response.status == 403


# -- identity headers say only what the token or groups file says --------------------------


async def test_scopes_split_on_ascii_space_only(app: Any, clock: FakeClock, capsys: Any) -> None:
    client = await app()
    token = mint(K1, clock.time(), scope="read x\u00a0reports:read y\u2028admin")
    response = await client.get("/auth?scope=reports:read", headers=bearer(token))
    assert response.status == 403
    response = await client.get("/auth", headers=bearer(token))
    assert response.status == 200
    assert response.headers["X-Auth-Scopes"] == "read"
    assert '"dropped_values":2' in decision_log(client, capsys)


@pytest.mark.parametrize("scp", [["read", "reports:read admin"], ["read", 'a"b']])
async def test_a_scope_list_item_that_is_no_scope_token_is_left_out(
    app: Any, clock: FakeClock, scp: list[str]
) -> None:
    client = await app()
    token = mint(K1, clock.time(), scp=scp)
    assert (await client.get("/auth?scope=admin", headers=bearer(token))).status == 403
    response = await client.get("/auth", headers=bearer(token))
    assert response.headers["X-Auth-Scopes"] == "read"


@pytest.mark.parametrize("group", ["x,admins", " admins", "admins ", "admins\u00a0", ""])
async def test_a_group_that_would_read_as_another_is_left_out(
    app: Any, clock: FakeClock, capsys: Any, group: str
) -> None:
    client = await app()
    token = mint(K1, clock.time(), groups=["staff", group])
    assert (await client.get("/auth?group=admins", headers=bearer(token))).status == 403
    response = await client.get("/auth?group=staff", headers=bearer(token))
    assert response.status == 200
    assert response.headers["X-Auth-Groups"] == "staff"


def test_a_groups_file_group_with_a_comma_is_a_load_error(
    tmp_path: Path, users: Path, capsys: Any
) -> None:
    (tmp_path / "groups").write_text("staff: bob\nx,admins: bob\n")
    config = tmp_path / "authproxy.toml"
    config.write_text(f'[basic]\nusers_file = "{users}"\ngroups_file = "{tmp_path}/groups"\n')
    assert main(["check-config", "--config", str(config)]) == 2
    assert "groups:2" in capsys.readouterr().err


async def test_an_overlong_policy_is_invalid(app: Any) -> None:
    """Past MAX_POLICY bytes a query is a client's, not an operator's: refused unparsed."""
    client = await app()
    query = "group=" + ",".join(f"g{i}" for i in range(2000))
    response = await client.get(f"/auth?{query}", headers=basic("bob", "bobpw"))
    assert response.status == 403
    assert await metric(client, 'authproxy_invalid_policy_total{problem="too_long"}') == 1
