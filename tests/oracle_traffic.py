"""The oracle's world and traffic: users, keys and locations; generated requests sent
through a real nginx to authproxy, each answer compared with :mod:`tests.oracle`'s.

The world: htpasswd entries of six hash kinds (made by Apache's ``htpasswd`` but {SSHA},
which it cannot make), a groups file, a JWK Set of RSA, RSA-PSS, EC and EdDSA keys (one
without kid, one of an algorithm the config does not pin) and keys it does not publish;
nginx locations ``/p<i>/``, each with a policy, valid or not. The traffic, from a seeded
``random.Random``: right, wrong and near-miss passwords, unknown users, malformed Basic,
valid and broken tokens, forged identity headers, and repeats of earlier credentials (so
that remembered passwords and verified tokens answer too).

Lockout: the service runs with ``basic.max_failures`` out of reach. Bans are keyed by user
as well as address, so spreading clients over 127.0.0.x would not keep a user whose
password is guessed wrong on purpose out of a ban; and a ban is state the oracle does not
model (tests/test_bruteforce.py pins it). Everything else the oracle predicts is a pure
function of the request, the files and the time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from passlib.hash import ldap_salted_sha1

from .conftest import apache_htpasswd, toml_text
from .jwks_server import OMIT, SigningKey, b64url, compact, sign_segments, signing_key
from .oracle import Expected, Oracle, PasswordChecker, PublicKey, TokenRules
from .servers import (
    NGINX_DIR,
    free_port,
    render_upstream,
    start_authproxy,
    start_echo_upstream,
    start_nginx,
)

ISSUER = "https://issuer.oracle.test"
AUDIENCES = ("orders-api", "reports-api")
USER_CLAIM = "email"
LEEWAY = 120  # generated times sit 60 s or more from every boundary it draws
ALGORITHMS = ("RS256", "PS256", "ES256", "ES384", "EdDSA")
MAX_FAILURES = 1_000_000
CHUNK = 100  # requests predicted, then sent, at a time: tokens are minted per chunk

HASH_FLAGS = {"bcrypt": ("-B", "-C", "4"), "apr1": ("-m",), "sha1": ("-s",),
              "sha256-crypt": ("-2",), "sha512-crypt": ("-5",)}
ACCOUNTS = (("alice", "bcrypt"), ("bob", "apr1"), ("carol", "sha1"), ("dave", "sha256-crypt"),
            ("erin", "sha512-crypt"), ("zoë", "bcrypt"), ("frank", "ssha"), ("long", "bcrypt"))
GROUPS = {"admins": ("alice", "zoë"), "staff": ("alice", "bob", "carol", "frank"),
          "ops": ("dave", "long")}
TOKEN_USERS = ("alice@example.com", "bob@example.com", "zoë@example.com", "admin@example.com")
TOKEN_GROUPS = ("admins", "staff", "ops", "x,admins", " admins", "odd group")
TOKEN_SCOPES = ("reports:read", "orders:write", "openid", "x\u00a0reports:read", 'q"uote')
VALID_POLICIES = (
    "", "", "", "user=alice,bob", "user=alice@example.com,zo%C3%AB", "group=admins", "group=staff,ops",
    "group=%20admins%20", "scope=reports:read", "scope=reports:read,orders:write",
    "scope=reports:read%20orders:write", "scope=orders:write+openid", "scheme=basic",
    "scheme=bearer", "scheme=basic,bearer", "group=admins&scheme=bearer",
    "user=alice&group=staff", "claim.email_verified=true", "claim.realm_access.roles=admin",
    "scope=reports:read&group=staff",
)
INVALID_POLICIES = (  # not the grammar: 403 for everyone
    "groups=admins", "Group=admins", "role=admin", "user=", "group=a,,b", "group=%20",
    "user=alice&user=bob", "scheme=basic,ntlm", "claim.=x",
)
POLICIES = VALID_POLICIES + INVALID_POLICIES


@dataclass(frozen=True, slots=True)
class World:
    """What authproxy is configured with, and the oracle that knows it."""

    directory: Path
    sections: dict[str, dict[str, Any]]
    oracle: Oracle
    passwords: dict[str, str]
    kinds: dict[str, str]
    published: tuple[SigningKey, ...]
    foreign: tuple[SigningKey, ...]


def _hash_line(user: str, kind: str, password: str) -> str:
    if kind == "ssha":
        return f"{user}:{ldap_salted_sha1.hash(password)}"
    made = apache_htpasswd("-nb", *HASH_FLAGS[kind], user, password)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def _password(rng: random.Random, user: str) -> str:
    word = rng.choice(("Corr3ct", "h0rse", "bätt:ery", "st@ple", "pa ss"))
    password = f"{user}-{word}-{rng.randrange(10**6)}"
    return password + "x" * 70 if user == "long" else password  # past bcrypt's 72 bytes


def make_world(directory: Path, seed: int) -> World:
    """Write the user, groups and key files into ``directory``; the config and oracle."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    passwords = {user: _password(rng, user) for user, _ in ACCOUNTS}
    lines = [_hash_line(user, kind, passwords[user]) for user, kind in ACCOUNTS]
    users_file = directory / "users.htpasswd"
    users_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    groups_file = directory / "groups"
    groups_file.write_text("".join(f"{g}: {' '.join(us)}\n" for g, us in GROUPS.items()),
                           encoding="utf-8")
    published = (signing_key("RS256", "rsa-1", name="oracle-rsa"),
                 signing_key("PS256", "rsa-pss", name="oracle-pss", kind="rsa2048"),
                 signing_key("ES256", "ec-256", name="oracle-ec256"),
                 signing_key("ES384", "ec-384", name="oracle-ec384"),
                 signing_key("EdDSA", "ed-1", name="oracle-ed"),
                 signing_key("ES256", None, name="oracle-ec-nokid"),
                 signing_key("RS384", "rsa-384", name="oracle-rs384"))
    foreign = (signing_key("RS256", "rsa-1", name="oracle-foreign-rsa"),
               signing_key("ES256", "ec-x", name="oracle-foreign-ec"))
    jwks_file = directory / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [k.public_jwk for k in published]}))
    sections: dict[str, dict[str, Any]] = {
        "log": {"level": "warning", "format": "json"},
        "basic": {"users_file": str(users_file), "groups_file": str(groups_file),
                  "cache_ttl": 300, "max_failures": MAX_FAILURES},
        "jwt": {"jwks_file": str(jwks_file), "issuer": ISSUER,
                "jwks_require_audience": list(AUDIENCES), "jwks_username_field": USER_CLAIM,
                "algorithms": list(ALGORITHMS), "leeway": LEEWAY},
    }
    entries = dict(line.split(":", 1) for line in lines)
    user_groups: dict[str, frozenset[str]] = {}
    for group, members in GROUPS.items():
        for member in members:
            user_groups[member] = user_groups.get(member, frozenset()) | {group}
    rules = TokenRules(
        keys=tuple(PublicKey(k.kid, k.alg, k.private.public_key()) for k in published),
        algorithms=frozenset(ALGORITHMS), issuer=ISSUER, audiences=AUDIENCES,
        user_claim=USER_CLAIM, leeway=LEEWAY)
    oracle = Oracle(user_groups, PasswordChecker(str(users_file), entries, apache_htpasswd),
                    rules)
    return World(directory, sections, oracle, passwords, dict(ACCOUNTS), published, foreign)


# -- requests ------------------------------------------------------------------------------


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


# -- sending and comparing -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Disagreement:
    request: Request
    policy: str
    expected: Expected
    observed: Expected

    def describe(self) -> str:
        r = self.request
        return (f"#{r.index} {r.label} at /p{r.location}/ (policy {self.policy!r}): "
                f"oracle {self.expected.status} {dict(self.expected.headers)} "
                f"{self.expected.challenge}, authproxy via nginx {self.observed.status} "
                f"{dict(self.observed.headers)} {self.observed.challenge}")


@dataclass(slots=True)
class Report:
    seed: int
    requests: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    disagreements: list[Disagreement] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        return (f"oracle seed={self.seed}: {self.requests} requests in {self.seconds:.1f} s "
                f"({rate:.0f}/s through nginx), answers {dict(sorted(self.statuses.items()))}, "
                f"{len(self.disagreements)} disagreements")


_CHALLENGE = re.compile(r"(?:^|,)\s*([A-Za-z]+) realm=")
_FORGED = (("X-Auth-User", "admin"), ("X-Auth-Groups", "admins"), ("X-Auth-Method", "basic"))


def _sent_headers(expected: Expected) -> dict[str, str]:
    """What the app sees: nginx leaves out an identity header whose value is empty."""
    return {k: v for k, v in expected.headers.items() if v}


async def _observe(session: aiohttp.ClientSession, base_url: str, request: Request) -> Expected:
    headers = list(_FORGED) if request.forged_headers else []
    if request.authorization is not None:
        headers.append(("Authorization", request.authorization))
    url = f"{base_url}/p{request.location}/r{request.index}"
    async with session.get(url, headers=headers, allow_redirects=False) as response:
        body = await response.read()
        if response.status == 401:
            challenge = ",".join(response.headers.getall("WWW-Authenticate", []))
            return Expected(401, challenge=tuple(s.lower() for s in _CHALLENGE.findall(challenge)))
        if response.status != 200:
            return Expected(response.status)
    echoed = json.loads(body)
    seen: dict[str, str] = {}
    for name, value in echoed["headers"]:
        if name.lower().startswith("x-auth-"):
            # the echo reads header bytes as latin-1; authproxy sends UTF-8
            text = value.encode("latin-1").decode("utf-8")
            seen[name] = f"{seen[name]} | {text}" if name in seen else text
    return Expected(200, seen)


def agrees(expected: Expected, observed: Expected) -> bool:
    if expected.status != observed.status:
        return False
    if expected.status == 401:
        return expected.challenge == observed.challenge
    if expected.status != 200:
        return True
    want, got = _sent_headers(expected), dict(observed.headers)
    for name, separator in (("X-Auth-Groups", ","), ("X-Auth-Scopes", " ")):
        if name in want and name in got:  # a set: the contract does not order them
            want[name] = ",".join(sorted(want[name].split(separator)))
            got[name] = ",".join(sorted(got[name].split(separator)))
    return want == got


def predict_all(world: World, requests: list[Request], now: float) -> list[Expected]:
    return [world.oracle.predict(POLICIES[r.location], r.authorization, now) for r in requests]


async def run_traffic(world: World, base_url: str, count: int, seed: int,
                      concurrency: int = 8) -> Report:
    """Send ``count`` generated requests through nginx at ``base_url``, ``concurrency`` at
    a time; the oracle's predictions are made (in a thread: htpasswd runs) before each
    chunk is sent, with the time the chunk's tokens were minted at."""
    rng = random.Random(seed)
    report = Report(seed)
    history: list[str] = []
    started = time.perf_counter()
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for start in range(0, count, CHUNK):
            requests = generate(rng, world, start, min(CHUNK, count - start), history)
            expected = await asyncio.to_thread(predict_all, world, requests, time.time())

            async def one(request: Request) -> Expected:
                async with limit:
                    return await _observe(session, base_url, request)

            observed = await asyncio.gather(*(one(r) for r in requests))
            for request, want, got in zip(requests, expected, observed, strict=True):
                report.statuses[got.status] += 1
                if not agrees(want, got):
                    report.disagreements.append(
                        Disagreement(request, POLICIES[request.location], want, got))
            report.requests += len(requests)
    report.seconds = time.perf_counter() - started
    return report


# -- the site ------------------------------------------------------------------------------


def site_conf(port: int, upstream_conf: Path, app_address: str) -> str:
    """An http {} body: one location ``/p<i>/`` per policy of POLICIES, with the
    repository's snippets, proxying to the echo app."""
    locations = "".join(f"""
        location /p{i}/ {{
            set $authproxy_policy "{policy}";
            include {NGINX_DIR}/authproxy-protect.conf;
            proxy_pass http://oracle_app;
        }}
""" for i, policy in enumerate(POLICIES))
    return f"""    include {upstream_conf};
    upstream oracle_app {{
        server {app_address};
    }}
    server {{
        listen 127.0.0.1:{port};
        large_client_header_buffers 4 64k;
        include {NGINX_DIR}/authproxy-auth.conf;
{locations}
    }}
"""


@contextmanager
def oracle_site(authproxy_address: str, prefix: Path) -> Iterator[str]:
    """nginx asking ``authproxy_address`` in front of an echo app; yields its base URL."""
    prefix.mkdir(parents=True, exist_ok=True)
    upstream_conf = prefix / "authproxy-upstream.conf"
    upstream_conf.write_text(render_upstream(authproxy_address), encoding="utf-8")
    with start_echo_upstream() as echo:
        port = free_port()
        with start_nginx(site_conf(port, upstream_conf, echo.address), prefix, port,
                         access_log=False) as nginx:
            yield f"http://127.0.0.1:{port}"
        nginx.assert_error_log_clean()


@contextmanager
def oracle_service(world: World) -> Iterator[str]:
    """``authproxy serve`` (a process) with the world's config, behind the oracle's nginx."""
    with (start_authproxy(toml_text(world.sections), [f"127.0.0.1:{free_port()}"],
                          world.directory / "authproxy") as proxy,
          oracle_site(proxy.tcp_address, world.directory / "nginx") as base_url):
        yield base_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.oracle", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    print(f"oracle seed={seed} (repeat with --seed {seed})", flush=True)
    with tempfile.TemporaryDirectory(prefix="authproxy-oracle-") as directory:
        world = make_world(Path(directory), seed)
        with oracle_service(world) as base_url:
            report = asyncio.run(run_traffic(world, base_url, args.requests, seed,
                                             args.concurrency))
    for disagreement in report.disagreements[:50]:
        print(disagreement.describe(), file=sys.stderr)
    print(report.summary())
    return 1 if report.disagreements else 0
