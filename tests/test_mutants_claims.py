"""The claim rules (jwt/claims.py) pinned through ClaimPolicy, one test per behaviour a
mutant of them changed without the suite noticing (``make mutate``): the exact reason (a log
and metric label) and RFC 6750 description of each refusal, and each bound at its edge.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from authproxy.config import JwtConfig
from authproxy.errors import Unauthenticated
from authproxy.jwt.claims import MAX_NUMERIC_DATE, ClaimPolicy, decode_claims
from authproxy.jwt.jose import DESCRIPTIONS

NOW = 1_800_000_000.0
LEEWAY = 60


def claim_policy(**config: Any) -> ClaimPolicy:
    return ClaimPolicy(JwtConfig(leeway=LEEWAY, **config), wall_clock=lambda: NOW)


def payload(**claims: Any) -> bytes:
    return json.dumps({"sub": "alice", "exp": NOW + 600, **claims}).encode()


def refusal(policy: ClaimPolicy, document: bytes) -> tuple[str, str]:
    with pytest.raises(Unauthenticated) as caught:
        policy.identity(document)
    assert caught.value.bearer_error == "invalid_token"
    return caught.value.reason, caught.value.bearer_description


# -- the payload -------------------------------------------------------------------------------


@pytest.mark.parametrize(("document", "reason"), [
    (b"\xff{}", "payload_not_json"), (b'{"a": 1, "a": 2}', "payload_not_json"),
    (b"[1]", "payload_not_object"), (b'"text"', "payload_not_object"),
])
def test_a_payload_that_is_no_json_object(document: bytes, reason: str) -> None:
    assert refusal(claim_policy(), document) == (reason, DESCRIPTIONS["malformed"])


def test_decode_claims_returns_the_object() -> None:
    assert decode_claims(b'{"sub": "a", "n": [1]}') == {"sub": "a", "n": [1]}


# -- numeric dates -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["1800000000", True, None, -1, MAX_NUMERIC_DATE + 1,
                                   float(MAX_NUMERIC_DATE + 1), 10**400, [1]])
def test_a_numeric_date_that_is_none(name: str, value: Any) -> None:
    assert refusal(claim_policy(), payload(**{name: value})) == (
        f"bad_{name}", DESCRIPTIONS["malformed"])


def test_numeric_dates_at_the_edges_are_dates() -> None:
    """0 and 9999-12-31T23:59:59Z are dates; a fraction is a date too."""
    identity = claim_policy().identity(payload(exp=MAX_NUMERIC_DATE, nbf=0, iat=0.5))
    assert identity.expires_at == float(MAX_NUMERIC_DATE)


def test_an_infinite_date_is_no_date() -> None:
    document = b'{"sub": "alice", "exp": 1e400}'
    assert refusal(claim_policy(), document) == ("bad_exp", DESCRIPTIONS["malformed"])


def test_exp_is_required() -> None:
    document = json.dumps({"sub": "alice"}).encode()
    assert refusal(claim_policy(), document) == ("missing_exp", DESCRIPTIONS["malformed"])


def test_exp_with_leeway_to_the_second() -> None:
    policy = claim_policy()
    assert policy.identity(payload(exp=NOW - LEEWAY + 1)).expires_at == NOW - LEEWAY + 1
    assert refusal(policy, payload(exp=NOW - LEEWAY)) == ("expired", DESCRIPTIONS["expired"])


def test_nbf_with_leeway_to_the_second() -> None:
    policy = claim_policy()
    policy.identity(payload(nbf=NOW + LEEWAY))
    assert refusal(policy, payload(nbf=NOW + LEEWAY + 1)) == (
        "not_yet_valid", DESCRIPTIONS["not_yet_valid"])


def test_iat_with_leeway_to_the_second() -> None:
    policy = claim_policy()
    policy.identity(payload(iat=NOW + LEEWAY))
    assert refusal(policy, payload(iat=NOW + LEEWAY + 1)) == (
        "issued_in_future", DESCRIPTIONS["not_yet_valid"])


def test_the_leeway_is_the_configured_one() -> None:
    policy = ClaimPolicy(JwtConfig(leeway=0), wall_clock=lambda: NOW)
    assert refusal(policy, payload(exp=NOW))[0] == "expired"
    assert refusal(policy, payload(nbf=NOW + 1))[0] == "not_yet_valid"
    policy.identity(payload(exp=NOW + 1, nbf=NOW, iat=NOW))


# -- issuer and audience ---------------------------------------------------------------------


def test_the_issuer_must_be_equal() -> None:
    policy = claim_policy(issuer="https://idp.example")
    policy.identity(payload(iss="https://idp.example"))
    assert refusal(policy, payload(iss="https://idp.example/")) == (
        "wrong_issuer", DESCRIPTIONS["wrong_issuer"])
    assert refusal(policy, payload())[0] == "wrong_issuer"
    claim_policy().identity(payload(iss="anyone"))  # not configured: not checked


def test_the_audience_must_contain_one_required() -> None:
    policy = claim_policy(jwks_require_audience=("api", "web"))
    policy.identity(payload(aud="web"))
    policy.identity(payload(aud=["other", "api"]))
    assert refusal(policy, payload()) == ("missing_audience", DESCRIPTIONS["wrong_audience"])
    assert refusal(policy, payload(aud="other")) == (
        "wrong_audience", DESCRIPTIONS["wrong_audience"])
    assert refusal(policy, payload(aud="api web")) == (
        "wrong_audience", DESCRIPTIONS["wrong_audience"])  # an audience is not split
    assert refusal(policy, payload(aud=["api", 1])) == ("bad_aud", DESCRIPTIONS["malformed"])
    assert refusal(policy, payload(aud=None)) == ("bad_aud", DESCRIPTIONS["malformed"])
    claim_policy().identity(payload(aud="other"))  # not configured: not checked


# -- the identity ------------------------------------------------------------------------------


@pytest.mark.parametrize("user", [None, "", 7, ["alice"]])
def test_the_user_claim_must_be_a_non_empty_string(user: Any) -> None:
    assert refusal(claim_policy(), payload(sub=user)) == (
        "missing_user", DESCRIPTIONS["malformed"])


def test_the_user_comes_from_the_configured_claim_and_the_subject_from_sub() -> None:
    identity = claim_policy(jwks_username_field="email").identity(
        payload(email="a@example.com", sub="id-1"))
    assert (identity.user, identity.subject, identity.method) == (
        "a@example.com", "id-1", "bearer")
    by_email = claim_policy(jwks_username_field="email")
    no_sub = json.dumps({"email": "a@example.com", "exp": NOW + 600}).encode()
    assert by_email.identity(no_sub).subject == ""
    # RFC 7519: sub is a StringOrURI (the decision oracle found one admitted)
    for sub in (5, None, ["id-1"]):
        assert refusal(by_email, payload(email="a@example.com", sub=sub)) == (
            "bad_sub", DESCRIPTIONS["malformed"])


def test_scopes_from_scope_and_scp_split_on_spaces_only() -> None:
    identity = claim_policy().identity(payload(scope=" read  write ", scp=["admin", ""]))
    assert identity.scopes == {"read", "write", "admin"}
    assert claim_policy().identity(payload()).scopes == frozenset()


@pytest.mark.parametrize(("name", "value"), [
    ("scope", 1), ("scp", ["a", 2]), ("groups", 3), ("groups", [None]),
])
def test_a_scope_or_group_claim_of_the_wrong_type(name: str, value: Any) -> None:
    assert refusal(claim_policy(), payload(**{name: value})) == (
        f"bad_{name}", DESCRIPTIONS["malformed"])


def test_groups_are_not_split() -> None:
    identity = claim_policy().identity(payload(groups="staff team"))
    assert identity.groups == {"staff team"}
    assert claim_policy().identity(payload(groups=["a", "", "b"])).groups == {"a", "b"}


def test_the_claims_and_expiry_are_kept() -> None:
    identity = claim_policy().identity(payload(tier=3))
    assert identity.claims["tier"] == 3
    assert identity.expires_at == NOW + 600
    assert identity.dropped == 0
    assert claim_policy().identity(payload(scp=["ok", 'a"b'])).dropped == 1


def test_a_claim_that_cannot_be_sent_as_a_header() -> None:
    assert refusal(claim_policy(), payload(sub="alice\r\nX: 1")) == (
        "unsafe_identity", DESCRIPTIONS["malformed"])
