"""The oracle's world: users, keys and locations authproxy is configured with, and the
oracle (:mod:`tests.oracle`) that knows them.

Users: htpasswd entries of six hash kinds (made by Apache's ``htpasswd`` but {SSHA}, which it
cannot make) and a groups file. Keys: a JWK Set of RSA, RSA-PSS, EC and EdDSA keys (one
without kid, one of an algorithm the config does not pin) and keys it does not publish.
Locations: nginx's ``/p<i>/``, each with a policy, valid or not.

Lockout: the service runs with ``basic.max_failures`` out of reach. Bans are keyed by user
as well as address, so spreading clients over 127.0.0.x would not keep a user whose
password is guessed wrong on purpose out of a ban; and a ban is state the oracle does not
model (tests/test_bruteforce.py pins it). Everything else the oracle predicts is a pure
function of the request, the files and the time.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from passlib.hash import ldap_salted_sha1

from .conftest import apache_htpasswd
from .jwks_server import SigningKey, signing_key
from .oracle import Oracle, PasswordChecker, PublicKey, TokenRules

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
