"""Claim reading (``authproxy.jwt.claims.ClaimPolicy.identity``) at a fixed wall clock.

The input is a verified token's payload. For each of two [jwt] configurations, the answer
(an identity, or Unauthenticated) is compared with an independent reading of RFC 7519 and
SPEC §7/§8.2 written here: an identity only when every rule holds, naming the user of the
configured claim, with groups and scopes the token says and a header can carry; a refusal
only when some rule fails. Nothing but Unauthenticated may escape.
"""
from __future__ import annotations

import re
from typing import Any

from authproxy.config import JwtConfig
from authproxy.core.identity import Identity
from authproxy.errors import Unauthenticated
from authproxy.jwt import claims as claims_module
from authproxy.jwt.jose import DESCRIPTIONS
from tests.fuzz.jose import strict_object

NOW = 1_700_000_000.0
YEAR_9999_END = 253_402_300_799
ISSUER = "https://idp.test/"
CONFIGS = (
    JwtConfig(issuer=ISSUER, jwks_require_audience=("api", "web"), leeway=60,
              jwks_file="jwks.json"),
    JwtConfig(jwks_require_audience=("api",), jwks_username_field="email", leeway=0,
              jwks_file="jwks.json"),
)
UNSENDABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3


class Invalid(Exception):
    """The reading below refuses the token."""


def _date(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate (RFC 7519 §2): a JSON number, not a boolean, from 1970 to year 9999."""
    if name not in claims:
        return None
    value = claims[name]
    # NaN and the infinities fail the comparison (math.isfinite would overflow on a huge int)
    if type(value) not in (int, float) or not 0 <= value <= YEAR_9999_END:
        raise Invalid(f"bad {name}")
    return float(value)


def _string_set(value: Any, *, split: bool) -> set[str]:
    """A string (split on U+0020 alone when ``split``: RFC 6749 §3.3) or a list of strings."""
    if isinstance(value, str):
        return {item for item in value.split(" ") if item} if split else {value}
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return {item for item in value if item}
    raise Invalid("not a string list")


def _group_reads_back(name: str) -> bool:
    return "," not in name and name == name.strip()


def expected(claims: Any, config: JwtConfig) -> dict[str, Any]:
    """What an identity from ``claims`` must hold under ``config``; raise Invalid."""
    if not isinstance(claims, dict):
        raise Invalid("not an object")
    exp, nbf, iat = (_date(claims, name) for name in ("exp", "nbf", "iat"))
    if exp is None or NOW >= exp + config.leeway:
        raise Invalid("missing or past exp")
    if (nbf is not None and nbf > NOW + config.leeway) or (
            iat is not None and iat > NOW + config.leeway):
        raise Invalid("nbf or iat in the future")
    if config.issuer and claims.get("iss") != config.issuer:
        raise Invalid("issuer")
    if config.jwks_require_audience and (
            "aud" not in claims or not _string_set(claims["aud"], split=False)
            & set(config.jwks_require_audience)):
        raise Invalid("audience")
    user = claims.get(config.jwks_username_field)
    if not isinstance(user, str) or not user:
        raise Invalid("no user")
    if "sub" in claims and not isinstance(claims["sub"], str):
        raise Invalid("sub not a StringOrURI")  # RFC 7519 §4.1.2, whichever claim names the user
    subject = claims.get("sub", "")
    scopes: set[str] = set()
    for name in ("scope", "scp"):
        if name in claims:
            scopes |= _string_set(claims[name], split=True)
    groups = _string_set(claims["groups"], split=False) if "groups" in claims else set()
    if any(UNSENDABLE.search(value) for value in (user, subject, *groups, *scopes)):
        raise Invalid("a value no header can carry")
    return {"user": user, "subject": subject, "exp": exp,
            "groups": {g for g in groups if _group_reads_back(g)},
            "scopes": {s for s in scopes if SCOPE_TOKEN.fullmatch(s)}}


def check_one(payload: bytes, config: JwtConfig) -> None:
    policy = claims_module.ClaimPolicy(config, wall_clock=lambda: NOW)
    try:
        claims = strict_object(payload)
        want: dict[str, Any] | None = expected(claims, config)
    except (ValueError, Invalid):  # UnicodeDecodeError and JSONDecodeError included
        want = None
    try:
        identity = policy.identity(payload)
    except Unauthenticated as exc:
        assert exc.bearer_error == "invalid_token", exc.reason
        assert exc.bearer_description in DESCRIPTIONS.values(), exc.reason
        assert want is None, f"refused ({exc.reason}) claims that satisfy every rule"
        return
    assert want is not None, "an identity from claims that break a rule"
    assert isinstance(identity, Identity) and identity.method == "bearer"
    assert identity.user == want["user"], "the user is not the configured claim's"
    assert identity.subject == want["subject"]
    assert identity.expires_at == want["exp"]
    assert identity.groups <= want["groups"], "a group the token does not say, or unsendable"
    assert identity.scopes <= want["scopes"], "a scope the token does not say, or unsendable"
    assert (identity.groups, identity.scopes) == (want["groups"], want["scopes"]), \
        "a sendable group or scope the token says was lost"


def check(data: bytes) -> None:
    for config in CONFIGS:
        check_one(data, config)
