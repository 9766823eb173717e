"""The Bearer scheme through the real app: interop, claims, challenges, policy, token cache."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from authproxy.config import JwtConfig
from authproxy.errors import ConfigError
from authproxy.http.app import DECIDER
from authproxy.jwt.claims import ClaimPolicy
from authproxy.jwt.jose import DESCRIPTIONS
from authproxy.schemes import bearer as bearer_module
from authproxy.schemes.bearer import MAX_KIDLESS_CANDIDATES, payload_weight

from .appclient import AppClient
from .conftest import IDENTITY_HEADERS, metric
from .jwks_server import (
    K1,
    K2,
    OMIT,
    TOKEN_ALGORITHMS,
    FakeClock,
    JwksServer,
    StartApp,
    basic,
    bearer,
    mint,
    signing_key,
)

pytest_plugins = ["tests.jwks_fixtures"]



def single_challenge(response: Any) -> str:
    values = response.headers.getall("WWW-Authenticate", [])
    assert len(values) == 1, values  # nginx before 1.23 forwards only the first line
    return str(values[0])


def invalid_token(kind: str) -> str:
    return f'error="invalid_token", error_description="{DESCRIPTIONS[kind]}"'


async def get_auth(client: AppClient, token: str, query: str = "") -> Any:
    return await client.get(f"/auth{query}", headers=bearer(token))


def identity_headers(response: Any) -> dict[str, str]:
    return {name: response.headers[name] for name in IDENTITY_HEADERS}


@pytest.mark.parametrize("alg", TOKEN_ALGORITHMS)
async def test_pyjwt_tokens_of_every_algorithm_verify(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock, alg: str
) -> None:
    key = signing_key(alg, f"kid-{alg}")
    jwks_server.serve(K1, key)
    client = await start_app()
    response = await get_auth(client, mint(key, clock.time(), sub="alice"))
    assert response.status == 200
    assert identity_headers(response) == {
        "X-Auth-User": "alice", "X-Auth-Method": "bearer", "X-Auth-Subject": "alice",
        "X-Auth-Groups": "", "X-Auth-Scopes": ""}


async def test_identity_comes_from_the_configured_claims(
    start_app: StartApp, clock: FakeClock
) -> None:
    client = await start_app(jwks_username_field="email")
    token = mint(K1, clock.time(), sub="u-123", email="alice@example.com",
                 groups=["ops", "dev"], scope="read write", scp=["admin"])
    response = await get_auth(client, token)
    assert response.status == 200
    assert identity_headers(response) == {
        "X-Auth-User": "alice@example.com", "X-Auth-Method": "bearer", "X-Auth-Subject": "u-123",
        "X-Auth-Groups": "dev,ops", "X-Auth-Scopes": "admin read write"}


@pytest.mark.parametrize("sub", [123, ["u-123"], None])
async def test_a_subject_that_is_no_string_is_refused_when_the_user_is_another_claim(
    start_app: StartApp, clock: FakeClock, sub: Any
) -> None:
    # RFC 7519 4.1.2: sub is a StringOrURI. Found by the decision oracle (PyJWT refuses it);
    # authproxy had admitted the token with an empty X-Auth-Subject.
    client = await start_app(jwks_username_field="email")
    response = await get_auth(client, mint(K1, clock.time(), sub=sub, email="alice@example.com"))
    assert response.status == 401
    assert invalid_token("malformed") in single_challenge(response)


async def test_no_credentials_challenge_names_both_schemes_on_one_line(
    start_app: StartApp, htpasswd: Any
) -> None:
    client = await start_app({"basic": {"users_file": str(htpasswd(bob="pw"))}})
    response = await client.get("/auth")
    assert response.status == 401
    assert single_challenge(response) == (
        'Basic realm="authproxy", charset="UTF-8", Bearer realm="authproxy"'
    )


@pytest.mark.parametrize("value", ["Bearer", "Bearer   ", "bearer "])
async def test_bearer_with_nothing_after_it_is_invalid_request(
    start_app: StartApp, value: str
) -> None:
    client = await start_app()
    response = await client.get("/auth", headers={"Authorization": value})
    assert response.status == 401
    assert 'error="invalid_request"' in single_challenge(response)


@pytest.mark.parametrize(("claims", "kind"), [
    ({"exp": -61}, "expired"),  # one second past exp + leeway (60)
    ({"exp": -60}, "expired"),  # exactly exp + leeway: "now MUST be before exp"
    ({"exp": -61.5}, "expired"),  # NumericDate may be non-integer
    ({"nbf": 61}, "not_yet_valid"),
    ({"iat": 61}, "not_yet_valid"),
    ({"exp": OMIT}, "malformed"),
    ({"exp": "9999999999"}, "malformed"),  # jwcrypto would raise a raw TypeError here
    ({"exp": True}, "malformed"),
    ({"exp": None}, "malformed"),
    ({"exp": 253402300800}, "malformed"),  # past year 9999
    ({"exp": 10**400}, "malformed"),  # past any float: math.isfinite would overflow
    ({"nbf": "0"}, "malformed"),
    ({"iat": [1]}, "malformed"),
    ({"sub": OMIT}, "malformed"),  # the username claim
    ({"sub": 123}, "malformed"),
    ({"sub": ""}, "malformed"),
    ({"scope": 7}, "malformed"),
    ({"scp": [["nested"]]}, "malformed"),
    ({"groups": [1, 2]}, "malformed"),
    ({"sub": "alice\r\nX-Auth-User: root"}, "malformed"),  # header injection
    ({"groups": ["ops\n"]}, "malformed"),
    ({"sub": "alice\ud800"}, "malformed"),  # a lone surrogate: no header can carry it
    ({"iss": "https://evil.example"}, "wrong_issuer"),
    ({"iss": OMIT}, "wrong_issuer"),
    ({"aud": ["someone-else"]}, "wrong_audience"),
    ({"aud": OMIT}, "wrong_audience"),
    ({"aud": {"api": True}}, "malformed"),
])
async def test_bad_claims_are_401_invalid_token_with_a_fixed_description(
    start_app: StartApp, clock: FakeClock, claims: dict[str, Any], kind: str
) -> None:
    client = await start_app(issuer="https://idp.example", jwks_require_audience=["api"])
    now = clock.time()
    # small numbers on the time claims are offsets from now (the table is built before the
    # clock)
    claims = {k: now + v if k in ("exp", "nbf", "iat") and type(v) in (int, float)
              and abs(v) < 1000 else v for k, v in claims.items()}
    token = mint(K1, now, **{"iss": "https://idp.example", "aud": "api", **claims})
    response = await get_auth(client, token)
    assert response.status == 401
    assert invalid_token(kind) in single_challenge(response)


@pytest.mark.parametrize("claims", [
    {"exp": -59},  # within the leeway
    {"nbf": 59, "iat": 59},
    {"exp": 300.5},  # NumericDate may be non-integer
    {"aud": ["other", "api"]},
])
async def test_claims_within_the_rules_pass(
    start_app: StartApp, clock: FakeClock, claims: dict[str, Any]
) -> None:
    client = await start_app(jwks_require_audience=["api"])
    now = clock.time()
    claims = {k: now + v if k in ("exp", "nbf", "iat") else v for k, v in claims.items()}
    response = await get_auth(client, mint(K1, now, **{"aud": "api", **claims}))
    assert response.status == 200


async def test_leeway_is_configurable(start_app: StartApp, clock: FakeClock) -> None:
    client = await start_app(leeway=0)
    now = clock.time()
    assert (await get_auth(client, mint(K1, now, exp=now - 1))).status == 401
    assert (await get_auth(client, mint(K1, now, nbf=now + 1))).status == 401
    assert (await get_auth(client, mint(K1, now, exp=now + 2, nbf=now))).status == 200


@pytest.mark.parametrize(("typ", "status"), [
    ("at+jwt", 200), ("application/AT+JWT", 200), ("JWT", 401), (OMIT, 401),
])
async def test_required_typ_demands_rfc_9068_access_tokens(
    start_app: StartApp, clock: FakeClock, typ: Any, status: int
) -> None:
    client = await start_app(require_typ="at+jwt")
    response = await get_auth(client, mint(K1, clock.time(), headers={"typ": typ}))
    assert response.status == status
    if status == 401:
        assert invalid_token("wrong_type") in single_challenge(response)


async def test_a_jwk_alg_must_match_the_token_alg(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    """Same key material, published for RS256, presented as RS384: refused."""
    client = await start_app()
    as_rs384 = signing_key("RS384", "k1", name="k1")
    response = await get_auth(client, mint(as_rs384, clock.time()))
    assert response.status == 401
    assert invalid_token("bad_signature") in single_challenge(response)
    assert jwks_server.fetches == 1  # a known kid is no reason to refresh


async def test_token_without_kid_is_tried_against_keys_that_fit_its_alg(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    rsa, ec = signing_key("RS256", None, name="a"), signing_key("ES256", None, name="b")
    jwks_server.serve(rsa, ec, signing_key("RS256", None, name="c"))
    client = await start_app()
    for key in (rsa, ec):
        assert (await get_auth(client, mint(key, clock.time()))).status == 200
    stranger = signing_key("RS256", None, name="stranger")
    response = await get_auth(client, mint(stranger, clock.time()))
    assert response.status == 401
    assert invalid_token("bad_signature") in single_challenge(response)


async def test_a_token_without_kid_is_tried_against_a_bounded_number_of_keys(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    """Each candidate costs a signature verification: a kid-less token's cost is bounded."""
    keys = [signing_key("RS256", None, name=f"kidless-{i}") for i in range(MAX_KIDLESS_CANDIDATES + 1)]
    jwks_server.serve(*keys)
    client = await start_app()
    assert (await get_auth(client, mint(keys[-2], clock.time()))).status == 200  # the last tried
    response = await get_auth(client, mint(keys[-1], clock.time()))  # one past: never tried
    assert response.status == 401
    assert invalid_token("bad_signature") in single_challenge(response)


async def test_bad_signature_is_refused(start_app: StartApp, clock: FakeClock) -> None:
    client = await start_app()
    forged = mint(signing_key("RS256", "k1", name="attacker"), clock.time())
    response = await get_auth(client, forged)
    assert response.status == 401
    assert invalid_token("bad_signature") in single_challenge(response)


# -- the verified-token cache ------------------------------------------------------------------


async def cache_lookups(client: AppClient, result: str) -> float:
    return await metric(client, f'authproxy_cache_lookups_total{{cache="bearer",result="{result}"}}')


async def test_a_repeated_token_is_answered_from_the_cache(
    start_app: StartApp, clock: FakeClock
) -> None:
    client = await start_app()
    token = mint(K1, clock.time())
    for _ in range(3):
        assert (await get_auth(client, token)).status == 200
    assert await cache_lookups(client, "miss") == 1
    assert await cache_lookups(client, "hit") == 2


@pytest.mark.parametrize("move", ["advance", "jump_wall"])
async def test_a_cached_token_never_outlives_its_exp(
    start_app: StartApp, clock: FakeClock, move: str
) -> None:
    """Both ways: time passing, and the wall clock alone jumping past exp (the cache's own
    deadline runs on the monotonic clock; exp is wall-clock time)."""
    client = await start_app(leeway=0)
    token = mint(K1, clock.time(), exp=int(clock.time()) + 30)
    assert (await get_auth(client, token)).status == 200
    getattr(clock, move)(31)
    response = await get_auth(client, token)
    assert response.status == 401
    assert invalid_token("expired") in single_challenge(response)


async def test_a_cached_token_dies_with_its_key(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    client = await start_app()
    old = mint(K1, clock.time())
    assert (await get_auth(client, old)).status == 200
    jwks_server.serve(K2)  # rotation: k1 is withdrawn
    assert (await get_auth(client, mint(K2, clock.time()))).status == 200  # refresh on miss
    response = await get_auth(client, old)
    assert response.status == 401
    assert invalid_token("unknown_key") in single_challenge(response)


async def test_the_cache_is_keyed_by_the_exact_token_string(
    start_app: StartApp, clock: FakeClock
) -> None:
    """jwcrypto's decoder ignores stray characters; a cached token must not make a variant
    of it pass."""
    client = await start_app()
    token = mint(K1, clock.time())
    assert (await get_auth(client, token)).status == 200
    head, payload, signature = token.split(".")
    for variant in (f"{head}.{payload}.{signature}=", f"{head}.{payload}!.{signature}",
                    f"{head}.{payload}.{signature[:-1]}{chr(ord(signature[-1]) ^ 1)}"):
        assert (await get_auth(client, variant)).status == 401


async def test_past_the_byte_budget_the_oldest_tokens_are_forgotten(
    start_app: StartApp, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens of 200 groups each (~30 kB an entry): a budget of 10 such entries holds no
    more, however many fit the entry count, and the oldest goes first."""
    monkeypatch.setattr(bearer_module, "CACHE_BYTES", 10 * 30_000)
    client = await start_app()
    groups = [f"group-{g:04d}-of-a-large-directory" for g in range(200)]
    tokens = [mint(K1, clock.time(), sub=f"user{i}", groups=groups) for i in range(20)]
    for token in tokens:
        assert (await get_auth(client, token)).status == 200
    assert await cache_lookups(client, "miss") == 20
    assert (await get_auth(client, tokens[-1])).status == 200  # the newest: remembered
    assert await cache_lookups(client, "hit") == 1
    assert (await get_auth(client, tokens[0])).status == 200  # the oldest: verified again
    assert await cache_lookups(client, "miss") == 21


# -- accept_in_basic -------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "status"), [("*", 200), ("alice", 200), ("bob", 401)])
async def test_a_jwt_as_the_basic_password(
    start_app: StartApp, clock: FakeClock, htpasswd: Any, user: str, status: int
) -> None:
    client = await start_app({"basic": {"users_file": str(htpasswd(bob="pw"))}},
                             accept_in_basic=True)
    response = await client.get("/auth", headers=basic(user, mint(K1, clock.time())))
    assert response.status == status
    if status == 200:
        assert response.headers["X-Auth-Method"] == "bearer"
        assert response.headers["X-Auth-User"] == "alice"


@pytest.mark.parametrize(("user", "status"), [("*", 200), ("alice", 200), ("bob", 401)])
async def test_a_jwt_as_the_basic_password_without_a_user_table(
    start_app: StartApp, clock: FakeClock, user: str, status: int
) -> None:
    client = await start_app(accept_in_basic=True)
    response = await client.get("/auth", headers=basic(user, mint(K1, clock.time())))
    assert response.status == status
    assert response.headers.get("X-Auth-Method", "") == ("bearer" if status == 200 else "")
    challenge = await client.get("/auth")
    assert single_challenge(challenge) == (
        'Basic realm="authproxy", charset="UTF-8", Bearer realm="authproxy"'
    )
    forged = mint(signing_key("RS256", "k1", name="attacker"), clock.time())
    assert (await client.get("/auth", headers=basic("*", forged))).status == 401


async def test_a_jwt_as_the_basic_password_needs_accept_in_basic(
    start_app: StartApp, clock: FakeClock, htpasswd: Any
) -> None:
    client = await start_app({"basic": {"users_file": str(htpasswd(bob="pw"))}})
    response = await client.get("/auth", headers=basic("*", mint(K1, clock.time())))
    assert response.status == 401


# -- per-location policy ---------------------------------------------------------------------


@pytest.mark.parametrize(("query", "status"), [
    ("?scope=read", 200),
    ("?scope=read,write", 200),
    ("?scope=read%20write", 200),
    ("?scope=admin", 403),
    ("?group=ops", 200),
    ("?group=finance,ops", 200),
    ("?group=finance", 403),
    ("?user=bob,alice", 200),
    ("?user=bob", 403),
    ("?scheme=bearer", 200),
])
async def test_location_policy_applies_to_bearer_identities(
    start_app: StartApp, clock: FakeClock, htpasswd: Any, query: str, status: int
) -> None:
    client = await start_app({"basic": {"users_file": str(htpasswd(bob="pw"))}})
    token = mint(K1, clock.time(), groups=["ops"], scope="read write")
    response = await get_auth(client, token, query)
    assert response.status == status


async def test_missing_scope_is_403_insufficient_scope(
    start_app: StartApp, clock: FakeClock
) -> None:
    client = await start_app()
    response = await get_auth(client, mint(K1, clock.time(), scope="read"), "?scope=admin")
    assert response.status == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="admin"' in response.headers["WWW-Authenticate"]


async def test_scheme_policy_refuses_the_other_scheme_with_only_its_challenge(
    start_app: StartApp, clock: FakeClock, htpasswd: Any
) -> None:
    client = await start_app({"basic": {"users_file": str(htpasswd(bob="pw"))}})
    response = await get_auth(client, mint(K1, clock.time()), "?scheme=basic")
    assert response.status == 401
    assert single_challenge(response) == 'Basic realm="authproxy", charset="UTF-8"'
    response = await client.get("/auth?scheme=bearer", headers=basic("bob", "pw"))
    assert response.status == 401
    assert single_challenge(response) == 'Bearer realm="authproxy"'


# -- no usable key set -----------------------------------------------------------------------


async def test_no_key_set_means_503_for_tokens_but_401_for_garbage(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    await jwks_server.stop()
    client = await start_app()
    response = await get_auth(client, mint(K1, clock.time()))
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"  # the start-up fetch is retried in a second
    assert (await get_auth(client, "not.a.jwt")).status == 401
    assert (await client.get("/auth")).status == 401
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert "endpoint" in (await ready.json())["missing"]["bearer"]


async def test_bearer_only_config_leaves_basic_out_of_the_challenge(
    start_app: StartApp
) -> None:
    client = await start_app()
    response = await client.get("/auth", headers=basic("bob", "pw"))
    assert response.status == 401
    assert single_challenge(response) == 'Bearer realm="authproxy"'


async def test_no_token_reaches_a_log_line_or_metric(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    client = await start_app()
    tokens = [
        mint(K1, clock.time()),  # good
        mint(signing_key("RS256", "k1", name="attacker"), clock.time()),  # forged
        mint(signing_key("RS256", "unknown-kid"), clock.time()),  # refresh on miss
        mint(K1, clock.time(), exp="soon"),  # bad claim
    ]
    for token in tokens:
        await get_auth(client, token)
    metrics = await (await client.get("/metrics")).text()
    client.app[DECIDER].decisions.flush()  # decision lines are written in batches
    decisions = capsys.readouterr().err
    assert decisions.count('"event":"decision"') == len(tokens)  # the check is not vacuous
    logged = decisions + caplog.text + metrics
    for token in tokens:
        for segment in token.split(".")[1:]:  # payloads and signatures
            assert segment not in logged


def test_require_typ_accepts_only_known_values(make_config: Any) -> None:
    with pytest.raises(ConfigError, match=r"jwt\.require_typ"):
        make_config({"jwt": {"jwks_endpoint": "https://idp.example/k", "require_typ": "jwt"}})


@pytest.mark.parametrize("groups", [0, 5, 200])
def test_a_cached_tokens_weight_is_never_less_than_its_identity_takes(groups: int) -> None:
    """The token cache counts an entry by its payload's length (weighing the identity would
    cost more than the signature): that count must err high, or the byte bound would not
    bound."""
    policy = ClaimPolicy(JwtConfig(jwks_require_audience=("api",)))
    payload = json.dumps({"sub": "user-1234", "aud": "api", "exp": 4_000_000_000,
                          "iss": "https://idp.example/realms/staff", "scope": "read write",
                          "groups": [f"group-number-{i}" for i in range(groups)]}).encode()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        identity = policy.identity(payload)
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert identity.user == "user-1234"
    assert taken < payload_weight(payload) < 3 * taken + 1024
