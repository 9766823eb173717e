"""The oracle's traffic, from a seeded ``random.Random``: right, wrong and near-miss
passwords, unknown users, malformed Basic, valid and broken tokens, forged identity headers,
and repeats of earlier credentials (so that remembered passwords and verified tokens answer
too). tests/oracle_run.py sends it and compares every answer with the oracle's."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from .jwks_server import OMIT, SigningKey, b64url, compact, sign_segments
from .oracle_world import (
    ALGORITHMS,
    AUDIENCES,
    ISSUER,
    LEEWAY,
    POLICIES,
    TOKEN_GROUPS,
    TOKEN_SCOPES,
    TOKEN_USERS,
    USER_CLAIM,
    VALID_POLICIES,
    World,
)


@dataclass(frozen=True, slots=True)
class Request:
    """One generated request: where, with what credentials, and what it is meant to test."""

    index: int
    location: int
    authorization: str | None
    label: str
    forged_headers: bool = False


def _basic(user: str | bytes, password: str | bytes) -> str:
    raw = (user if isinstance(user, bytes) else user.encode()) + b":" + (
        password if isinstance(password, bytes) else password.encode())
    return "Basic " + base64.b64encode(raw).decode()


def _near_miss(rng: random.Random, password: str) -> str:
    return rng.choice((password.swapcase(), password[:-1], password + " ", " " + password,
                       password + password[-1], password.upper()))


def basic_case(rng: random.Random, world: World) -> tuple[str, str]:
    """(label, Authorization) of a Basic request."""
    user = rng.choice(list(world.passwords))
    password = world.passwords[user]
    kind = rng.choices(("right", "wrong", "near-miss", "unknown-user", "malformed",
                        "bcrypt-tail", "scheme-case"), (35, 12, 18, 8, 15, 6, 6))[0]
    if kind == "right":
        return f"basic-right:{user}", _basic(user, password)
    if kind == "wrong":
        return f"basic-wrong:{user}", _basic(user, f"guess-{rng.randrange(10**4)}")
    if kind == "near-miss":
        return f"basic-near-miss:{user}", _basic(user, _near_miss(rng, password))
    if kind == "unknown-user":
        return "basic-unknown-user", _basic(rng.choice(("mallory", "Alice", "alice ")), password)
    if kind == "bcrypt-tail":  # Apache compares the first 72 bytes of a bcrypt password
        long = world.passwords["long"]
        return "basic-bcrypt-tail:long", _basic("long", long[:72] + rng.choice(("", "y", "z" * 9)))
    if kind == "scheme-case":
        return f"basic-scheme-case:{user}", rng.choice(("basic ", "BASIC ", "Basic  ")) + (
            _basic(user, password).split(" ", 1)[1])
    good = _basic(user, password).split(" ", 1)[1]
    malformed = rng.choice((
        good + "=", good.rstrip("=") if "=" in good else good + "==", good[:-1],
        "-" + good[1:], good + " x", "!!!!",
        base64.b64encode(f"{user}{password}".encode()).decode(),  # no colon
        base64.b64encode(f":{password}".encode()).decode(),  # no user-id
        base64.b64encode(f"{user}:{password}\x01".encode()).decode(),  # a control character
        base64.b64encode(b"\xff\xfe:" + password.encode()).decode(),  # user-id not UTF-8
        "YWxpY2U6cx==",  # non-zero unused bits
    ))
    return "basic-malformed", f"Basic {malformed}"


def _claims(rng: random.Random, now: int) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": rng.choice((AUDIENCES[0], list(AUDIENCES), ["other", AUDIENCES[1]])),
        "sub": f"id-{rng.randrange(1000)}", USER_CLAIM: rng.choice(TOKEN_USERS),
        "iat": now, "exp": now + 600,
    }
    if rng.random() < 0.6:
        claims["groups"] = rng.sample(TOKEN_GROUPS, rng.randrange(4))
    if rng.random() < 0.6:
        claims["scope"] = " ".join(rng.sample(TOKEN_SCOPES, rng.randrange(4)))
    if rng.random() < 0.3:
        claims["scp"] = rng.sample(TOKEN_SCOPES, rng.randrange(3))
    if rng.random() < 0.4:
        claims["email_verified"] = rng.random() < 0.5
    if rng.random() < 0.3:
        claims["realm_access"] = {"roles": rng.sample(("admin", "viewer"), rng.randrange(3))}
    return claims


def _hs256_with_public_key(key: SigningKey, claims: dict[str, Any]) -> str:
    """The algorithm-confusion forgery: HMAC keyed with the verifier's public key (PEM)."""
    secret = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64url({'alg': 'HS256', 'kid': key.kid})}.{b64url(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


TOKEN_KINDS: dict[str, int] = {
    "valid": 30, "valid-no-kid": 5, "expired": 5, "expired-in-leeway": 5, "not-yet-valid": 4,
    "nbf-in-leeway": 4, "iat-future": 3, "no-exp": 3, "exp-string": 2, "no-user": 3,
    "user-not-string": 2, "wrong-iss": 3, "no-iss": 2, "wrong-aud": 3, "no-aud": 2,
    "tampered": 4, "foreign-key": 4, "unknown-kid": 3, "kid-of-other-alg": 3, "alg-none": 3,
    "hs256-public-key": 3, "alg-not-pinned": 3, "crit": 2, "kid-not-string": 2,
    "duplicate-claim": 2, "control-in-group": 2, "garbage": 3,
}


def bearer_case(rng: random.Random, world: World, now: int) -> tuple[str, str]:
    """(label, Authorization) of a Bearer request."""
    kind = rng.choices(list(TOKEN_KINDS), list(TOKEN_KINDS.values()))[0]
    key = rng.choice([k for k in world.published if k.alg in ALGORITHMS])
    claims = _claims(rng, now)
    headers: dict[str, Any] = {}
    token: str | None = None
    if kind == "valid-no-kid":
        headers["kid"] = OMIT
    elif kind == "expired":
        claims["exp"] = now - LEEWAY - rng.randrange(60, 3600)
    elif kind == "expired-in-leeway":
        claims["exp"] = now - LEEWAY // 2
    elif kind == "not-yet-valid":
        claims["nbf"] = now + LEEWAY + rng.randrange(60, 3600)
    elif kind == "nbf-in-leeway":
        claims["nbf"] = now + LEEWAY // 2
    elif kind == "iat-future":
        claims["iat"] = now + LEEWAY + rng.randrange(60, 3600)
    elif kind == "no-exp":
        del claims["exp"]
    elif kind == "exp-string":
        claims["exp"] = str(now + 600)
    elif kind == "no-user":
        del claims[USER_CLAIM]
    elif kind == "user-not-string":
        claims[USER_CLAIM] = rng.choice((42, ["alice@example.com"], None, ""))
    elif kind == "wrong-iss":
        claims["iss"] = rng.choice(("https://evil.example", ISSUER + "/"))
    elif kind == "no-iss":
        del claims["iss"]
    elif kind == "wrong-aud":
        claims["aud"] = rng.choice(("other-api", ["other"], [], 7))
    elif kind == "no-aud":
        del claims["aud"]
    elif kind == "tampered":  # a signed token with its payload swapped for another
        head, _, signature = key.sign(claims).split(".")
        token = f"{head}.{b64url({**claims, USER_CLAIM: 'mallory@example.com'})}.{signature}"
    elif kind == "foreign-key":
        token = world.foreign[0].sign(claims)  # kid rsa-1, another key's signature
    elif kind == "unknown-kid":
        token = world.foreign[1].sign(claims)
    elif kind == "kid-of-other-alg":
        other = rng.choice([k for k in world.published if k.alg != key.alg and k.kid])
        headers["kid"] = other.kid
    elif kind == "alg-none":
        token = compact({"alg": "none", "kid": key.kid or "rsa-1"}, claims)
    elif kind == "hs256-public-key":
        token = _hs256_with_public_key(world.published[0], claims)
    elif kind == "alg-not-pinned":
        token = world.published[-1].sign(claims)
    elif kind == "crit":
        headers["crit"] = ["exp"]
    elif kind == "kid-not-string":
        token = sign_segments(key, b64url({"alg": key.alg, "kid": 7}), b64url(claims))
    elif kind == "duplicate-claim":
        body = json.dumps(claims)[:-1] + f', "{USER_CLAIM}": "admin@example.com"}}'
        token = sign_segments(key, b64url({"alg": key.alg, "kid": key.kid}), b64url(body))
    elif kind == "control-in-group":
        claims["groups"] = ["staff", "ba\x01d"]
    elif kind == "garbage":
        token = rng.choice(("not-a-token", "a.b.c", "eyJhbGciOiJSUzI1NiJ9..", "...."))
    if token is None:
        token = key.sign(claims, headers)
    return f"bearer-{kind}:{key.alg}", f"Bearer {token}"


def generate(rng: random.Random, world: World, start: int, count: int,
             history: list[str]) -> list[Request]:
    """``count`` requests numbered from ``start``; ``history`` (credentials sent so far)
    feeds the repeats and grows."""
    now = int(time.time())
    requests = []
    for index in range(start, start + count):
        location = rng.randrange(len(VALID_POLICIES) if rng.random() < 0.85 else len(POLICIES))
        roll = rng.random()
        label: str
        authorization: str | None
        if roll < 0.25 and history:
            label, authorization = "repeat", rng.choice(history)
        elif roll < 0.6:
            label, authorization = basic_case(rng, world)
        elif roll < 0.92:
            label, authorization = bearer_case(rng, world, now)
        else:
            label, authorization = rng.choice((
                ("no-credentials", None), ("other-scheme", "Digest username=\"alice\""),
                ("bearer-empty", "Bearer"), ("scheme-only", "Basic")))
        if authorization is not None and label != "repeat":
            history.append(authorization)
        requests.append(Request(index, location, authorization, label, rng.random() < 0.1))
    return requests
