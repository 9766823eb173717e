"""The JWT attack list (contracts-and-standards §6), each one a 401 and never a 5xx.

Numbers in the test names refer to the rows of that table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwe, jwk

from authproxy.core.authn import MAX_AUTHORIZATION
from authproxy.errors import ConfigError
from authproxy.http.app import METRICS
from authproxy.jwt.jose import DESCRIPTIONS, MAX_TOKEN_LENGTH, b64url_decode

from .appclient import AppClient
from .jwks_server import (
    K1,
    OMIT,
    FakeClock,
    JwksServer,
    StartApp,
    b64url,
    bearer,
    claims_at,
    compact,
    mint,
    resign,
    sign_segments,
    signing_key,
)

pytest_plugins = ["tests.jwks_fixtures"]

NOT_UTF8 = b"\xff\xfe\xfd"
EC1 = signing_key("ES256", "ec1")
ATTACKER = signing_key("RS256", "k1", name="attacker")  # claims our kid, holds its own key


@pytest.fixture
async def client(start_app: StartApp, jwks_server: JwksServer) -> AppClient:
    jwks_server.serve(K1, EC1)
    return await start_app(issuer="https://idp.example", jwks_require_audience=["api"])


def good_claims(clock: FakeClock, **claims: Any) -> dict[str, Any]:
    return claims_at(clock.time(), **{"iss": "https://idp.example", "aud": "api", **claims})


def bearer_denials(client: AppClient) -> float:
    """Bearer denials so far, all reasons: what /metrics reports."""
    counts = client.app[METRICS].decisions.counts
    return sum(n for (scheme, outcome, _), n in counts.items()
               if (scheme, outcome) == ("bearer", "deny"))


async def assert_refused(client: AppClient, token: str, kind: str = "") -> None:
    """401 invalid_token; with ``kind``, also the description (which says how far the token
    got: "malformed" ones were refused before any key lookup or cryptography)."""
    before = bearer_denials(client)
    response = await client.get("/auth", headers=bearer(token))
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    # counted (and logged: the same code writes the decision line) as a bearer denial
    assert bearer_denials(client) == before + 1
    if kind:
        assert f'error_description="{DESCRIPTIONS[kind]}"' in response.headers["WWW-Authenticate"]


async def test_the_baseline_token_passes(client: AppClient, clock: FakeClock) -> None:
    """Every attack below starts from this token, which is valid."""
    token = resign(K1, {"alg": "RS256", "kid": "k1"}, good_claims(clock))
    assert (await client.get("/auth", headers=bearer(token))).status == 200


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("kid", ["k1", OMIT])
async def test_1_alg_none(
    client: AppClient, clock: FakeClock, alg: str, kid: Any
) -> None:
    header = {"alg": alg, "kid": kid}
    header = {k: v for k, v in header.items() if v is not OMIT}
    await assert_refused(client, compact(header, good_claims(clock)))
    await assert_refused(client, compact(header, good_claims(clock)) + "AA")


def rsa_public_pem() -> bytes:
    return K1.private.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("secret", [
    pytest.param(rsa_public_pem(), id="pem"),
    pytest.param(json.dumps(K1.public_jwk).encode(), id="jwk-json"),
    pytest.param(base64.urlsafe_b64decode(K1.public_jwk["n"] + "=="), id="modulus"),
])
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_2_hmac_keyed_with_the_rsa_public_key(
    client: AppClient, clock: FakeClock, secret: bytes, alg: str
) -> None:
    header = b64url({"alg": alg, "kid": "k1", "typ": "JWT"})
    payload = b64url(good_claims(clock))
    digest = getattr(hashlib, f"sha{alg[2:]}")
    mac = hmac.new(secret, f"{header}.{payload}".encode(), digest).digest()
    await assert_refused(client, f"{header}.{payload}.{b64url(mac)}")


def test_2_hmac_algorithms_cannot_be_configured(make_config: Any) -> None:
    with pytest.raises(ConfigError, match="algorithms"):
        make_config({"jwt": {"jwks_endpoint": "https://idp.example/jwks",
                             "algorithms": ["RS256", "HS256"]}})


@pytest.mark.parametrize("kid", ["k1", OMIT])
async def test_3_embedded_jwk_header(
    client: AppClient, clock: FakeClock, kid: Any
) -> None:
    header = {"alg": "RS256", "kid": kid, "jwk": ATTACKER.public_jwk}
    header = {k: v for k, v in header.items() if v is not OMIT}
    await assert_refused(client, resign(ATTACKER, header, good_claims(clock)), "malformed")


@pytest.mark.parametrize("member", ["jku", "x5u", "x5c"])
async def test_4_token_named_keys_are_never_fetched(
    client: AppClient, jwks_server: JwksServer, clock: FakeClock,
    tls_ca: Any, ca_file: Any, member: str,
) -> None:
    attacker_server = JwksServer(tls_ca, ca_file)
    attacker_key = signing_key("RS256", "attacker-kid", name="attacker")
    attacker_server.serve(attacker_key)
    await attacker_server.start()
    try:
        value: Any = attacker_server.url
        if member == "x5c":
            value = [base64.b64encode(tls_ca.cert_pem.bytes()).decode()]
        for kid in ("attacker-kid", "k1"):
            header = {"alg": "RS256", "kid": kid, member: value}
            await assert_refused(client, resign(attacker_key, header, good_claims(clock)),
                                 "malformed")
        assert attacker_server.fetches == 0
        assert attacker_server.other == []
        assert jwks_server.fetches == 1  # refused before any key lookup: no refresh either
    finally:
        await attacker_server.close()


@pytest.mark.parametrize("kid", [
    "../../dev/null", "' OR 1=1--", "k1\x00", "a" * 10_000, "", 123, None, {}, [], True,
])
async def test_5_kid_injection(
    client: AppClient, jwks_server: JwksServer, clock: FakeClock, kid: Any
) -> None:
    header = {"alg": "RS256", "kid": kid}
    kind = "unknown_key" if isinstance(kid, str) and len(kid) < 1000 else "malformed"
    await assert_refused(client, resign(ATTACKER, header, good_claims(clock)), kind)
    # an unknown kid costs one refresh after start-up's fetch; a malformed one, none
    assert jwks_server.fetches == (2 if kind == "unknown_key" else 1)


def es256_signing_input(clock: FakeClock) -> str:
    return f"{b64url({'alg': 'ES256', 'kid': 'ec1'})}.{b64url(good_claims(clock))}"


@pytest.mark.parametrize("signature", [
    pytest.param(bytes(64), id="psychic-r-s-zero"),
    pytest.param(bytes(63), id="63-bytes"),
    pytest.param(b"\x01" * 65, id="65-bytes"),
    pytest.param(b"\x01" * 4096, id="huge"),
])
async def test_6_ecdsa_signatures_of_the_wrong_value_or_length(
    client: AppClient, clock: FakeClock, signature: bytes
) -> None:
    await assert_refused(client, f"{es256_signing_input(clock)}.{b64url(signature)}")


async def test_6_ecdsa_empty_and_der_signatures(
    client: AppClient, clock: FakeClock
) -> None:
    signing_input = es256_signing_input(clock)
    await assert_refused(client, f"{signing_input}.")
    der = EC1.private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    await assert_refused(client, f"{signing_input}.{b64url(der)}")


async def test_7_a_jwe_encrypted_to_a_jwks_key(
    client: AppClient, clock: FakeClock
) -> None:
    token = jwe.JWE(json.dumps(good_claims(clock)).encode(),
                    protected={"alg": "RSA-OAEP", "enc": "A256GCM", "kid": "k1"})
    # the attacker ignores "use": sig and encrypts to the same public key
    public = {k: v for k, v in K1.public_jwk.items() if k not in ("use", "key_ops", "alg")}
    token.add_recipient(jwk.JWK(**public))
    await assert_refused(client, token.serialize(compact=True))


async def test_8_jwe_with_compression(client: AppClient) -> None:
    header = b64url({"alg": "dir", "enc": "A256GCM", "zip": "DEF", "kid": "k1"})
    await assert_refused(client, f"{header}..{b64url(bytes(12))}.{b64url(bytes(1000))}.AAAA")


async def test_9_pbes2_huge_iteration_count_is_refused_fast(
    client: AppClient
) -> None:
    header = {"alg": "PBES2-HS512+A256KW", "enc": "A256GCM", "p2c": 2**31, "p2s": "AAAAAAAA"}
    started = time.perf_counter()
    await assert_refused(client, f"{b64url(header)}.{b64url(bytes(40))}.AAAA.AAAA.AAAA")
    await assert_refused(client, compact(header, {"sub": "alice"}, bytes(64)))
    assert time.perf_counter() - started < 5.0  # 2**31 iterations would take hours


async def test_10_json_serialization(client: AppClient, clock: FakeClock) -> None:
    valid = resign(K1, {"alg": "RS256", "kid": "k1"}, good_claims(clock))
    protected, payload, signature = valid.split(".")
    general = {"payload": payload, "signatures": [{"protected": protected,
                                                   "header": {"x": "a.b"},
                                                   "signature": signature}]}
    flattened = {"payload": payload, "protected": protected, "signature": signature,
                 "header": {"x": "."}}
    for document in (general, flattened):
        await assert_refused(client, json.dumps(document))


# 11, claim confusion (wrong iss or aud, exp past or of the wrong type, nbf ahead): the claim
# table of test_bearer.test_bad_claims_are_401_invalid_token_with_a_fixed_description.


async def test_11_an_id_token_where_an_access_token_is_required(
    start_app: StartApp, clock: FakeClock
) -> None:
    client = await start_app(require_typ="at+jwt")
    id_token = mint(K1, clock.time(), headers={"typ": "JWT"}, nonce="n", azp="web")
    await assert_refused(client, id_token)


@pytest.mark.parametrize("token", [
    "a.b", "a.b.c.d", "a..c", "....", "eyJ!.eyJ.sig", "not a token", "a.b.c d",
    "e30.e30.e30\t", f"{b64url('[]')}.{b64url('{}')}.AAAA",
    f"{b64url('1')}.{b64url('{}')}.AAAA", f"{b64url(NOT_UTF8)}.{b64url('{}')}.AAAA",
    f"{b64url({'alg': 'RS256'})}==.{b64url('{}')}.AAAA",
])
async def test_13_malformed_tokens(client: AppClient, token: str) -> None:
    await assert_refused(client, token)


async def test_13_a_validly_signed_payload_that_is_not_utf8(
    client: AppClient, clock: FakeClock
) -> None:
    await assert_refused(client, sign_segments(K1, b64url({"alg": "RS256", "kid": "k1"}),
                                               b64url(NOT_UTF8)))


async def test_13_an_oversized_token_and_header(
    client: AppClient, clock: FakeClock
) -> None:
    token = resign(K1, {"alg": "RS256", "kid": "k1"},
                   good_claims(clock, padding="x" * (MAX_TOKEN_LENGTH * 3 // 4)))
    assert MAX_TOKEN_LENGTH < len(token) < MAX_AUTHORIZATION - len("Bearer ")
    await assert_refused(client, token)
    response = await client.get("/auth", headers=bearer("A" * 1_000_000))
    assert response.status == 401


async def test_14_keys_the_jwks_should_not_have_are_useless(
    start_app: StartApp, jwks_server: JwksServer, clock: FakeClock
) -> None:
    weak = signing_key("RS256", "weak", kind="rsa1024")
    secret = b"0123456789abcdef0123456789abcdef"
    jwks_server.serve(K1, weak)
    jwks_server.extra = [{"kty": "oct", "kid": "oct", "k": b64url(secret)}]
    client = await start_app()
    await assert_refused(client, mint(weak, clock.time()))
    header, payload = b64url({"alg": "HS256", "kid": "oct"}), b64url(claims_at(clock.time()))
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    await assert_refused(client, f"{header}.{payload}.{b64url(mac)}")


async def test_15_non_canonical_base64url(
    client: AppClient, clock: FakeClock
) -> None:
    token = resign(K1, {"alg": "RS256", "kid": "k1"}, good_claims(clock))
    head, payload, signature = token.split(".")
    # a base64url string whose length is 2 or 3 mod 4 has unused low bits in its last
    # character: flipping one of them decodes to the same bytes
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    mangled = signature[:-1] + last[last.index(signature[-1]) ^ 1]
    assert len(signature) % 4 in (2, 3)
    assert base64.urlsafe_b64decode(mangled + "==") == base64.urlsafe_b64decode(signature + "==")
    await assert_refused(client, f"{head}.{payload}.{mangled}")
    await assert_refused(client, f"{head}.{payload}.{signature}==")
    await assert_refused(client, f"{head}.{payload}.{signature[:10]}+{signature[10:]}")


def test_b64url_decode_accepts_exactly_the_canonical_spellings() -> None:
    """Against the definition: a segment decodes iff re-encoding what it decodes to gives
    the segment back (the decoder reads the last character's unused bits instead)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    strays = "+/= .\n\x00\xe9"
    rng = random.Random(7)
    accepted = 0
    for _ in range(50_000):
        segment = "".join(rng.choice(alphabet if rng.random() < 0.95 else strays)
                          for _ in range(rng.randint(0, 9)))
        try:
            expected: bytes | None = base64.urlsafe_b64decode(segment + "==")
        except ValueError:
            expected = None
        if expected is not None and base64.urlsafe_b64encode(expected).rstrip(b"=").decode(
                "ascii") != segment:
            expected = None
        try:
            got: bytes | None = b64url_decode(segment)
        except ValueError:
            got = None
        assert got == expected, segment
        accepted += got is not None
    assert accepted > 10_000  # the sample holds plenty of canonical spellings too


@pytest.mark.parametrize("extra", [
    {"crit": ["exp"]}, {"crit": ["b64"], "b64": False}, {"b64": True}, {"crit": []},
])
async def test_unsupported_extensions_are_refused(
    client: AppClient, clock: FakeClock, extra: dict[str, Any]
) -> None:
    token = resign(K1, {"alg": "RS256", "kid": "k1", **extra}, good_claims(clock))
    await assert_refused(client, token)


async def test_duplicate_header_members_are_refused(
    client: AppClient, clock: FakeClock
) -> None:
    header = b64url('{"alg":"RS256","kid":"k1","alg":"none"}')
    await assert_refused(client, sign_segments(K1, header, b64url(good_claims(clock))))
