"""The soak's clients: users and their htpasswd hashes, pre-minted tokens, and the traffic
mix that draws one request's path and credential (:func:`draw`)."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import bcrypt
from argon2 import PasswordHasher
from passlib.hash import apr_md5_crypt, sha512_crypt
from soak_model import POLICIES, Basic, Bearer, Credential, Malformed, State
from soak_service import AUDIENCE

from tests.jwks_server import SigningKey, mint

# -- users, keys and tokens --------------------------------------------------------------------

ARGON2 = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


def hashed(kind: str, password: str) -> str:
    """An htpasswd hash of ``kind``: bcrypt, argon2id, sha512, apr1, sha1, ssha."""
    secret = password.encode()
    if kind == "bcrypt":
        return bcrypt.hashpw(secret, bcrypt.gensalt(5)).decode().replace("$2b$", "$2y$", 1)
    if kind == "argon2id":
        return ARGON2.hash(password)
    if kind == "sha512":
        return str(sha512_crypt.using(rounds=5000).hash(password))
    if kind == "apr1":
        return str(apr_md5_crypt.hash(password))
    if kind == "sha1":
        return "{SHA}" + base64.b64encode(hashlib.sha1(secret).digest()).decode()
    salt = os.urandom(4)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(secret + salt).digest() + salt).decode()


HASH_KINDS = {"alice": "bcrypt", "bob": "argon2id", "carol": "sha512", "dave": "apr1",
              "erin": "sha1", "frank": "ssha", "gina": "bcrypt"}


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` whole, as an operator's tooling does: a reader sees old or new."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def users_text(passwords: dict[str, str]) -> str:
    return "".join(f"{user}:{hashed(HASH_KINDS[user], pw)}\n" for user, pw in passwords.items())


def groups_text(admins: frozenset[str]) -> str:
    return f"admins: {' '.join(sorted(admins))}\n"


@dataclass(slots=True)
class Tokens:
    """Pre-minted tokens, a few per (kid, kind, claims), reused as real clients reuse theirs."""

    keys: dict[str, SigningKey]
    forger: SigningKey  # claims kid "k1" or "k2", signed by a key nobody publishes
    lifetime: int
    cache: dict[Bearer, list[str]] = field(default_factory=dict)

    def token(self, bearer: Bearer, rng: random.Random) -> str:
        pool = self.cache.setdefault(bearer, [])
        if len(pool) < 4:
            pool.append(self._mint(bearer))
        return rng.choice(pool)

    def _mint(self, bearer: Bearer) -> str:
        now = time.time()
        exp = int(now) - 3600 if bearer.kind == "expired" else int(now) + self.lifetime
        claims: dict[str, Any] = {"aud": AUDIENCE, "exp": exp, "jti": uuid.uuid4().hex,
                                  "sub": "tess", "groups": list(bearer.groups),
                                  "scope": " ".join(bearer.scopes)}
        if bearer.kind == "expired":
            claims["iat"] = exp - 600
        key = self.keys[bearer.kid]
        if bearer.kind == "forged":
            key = replace(self.forger, kid=bearer.kid)
        return mint(key, now, **claims)


# -- the traffic --------------------------------------------------------------------------------

WRONG_PASSWORDS = ("hunter2", "password1", "letmein", "Winter2026!")
BEARER_CLAIMS = ((), ("admins",)), ((), ()), (("admins",), ("reports:read",))
MALFORMED: dict[str, list[tuple[str, str]]] = {
    "not-base64": [("Authorization", "Basic !!!!not-base64")],
    "no-colon": [("Authorization", "Basic " + base64.b64encode(b"nocolon").decode())],
    "padding-junk": [("Authorization", "Basic " + base64.b64encode(b"alice:x").decode() + "==")],
    "bare-bearer": [("Authorization", "Bearer")],
    "not-a-jwt": [("Authorization", "Bearer a.b.c")],
    "digest": [("Authorization", 'Digest username="alice"')],
    "two-headers": [("Authorization", "Basic " + base64.b64encode(b"alice:x").decode()),
                    ("Authorization", "Basic " + base64.b64encode(b"alice:x").decode())],
    "long": [("Authorization", "Basic " + "A" * 4000)],
    "none": [],
}


def draw(state: State, first: State, rng: random.Random) -> tuple[str, Credential]:
    """One request's path and credential, by the traffic mix. ``first`` is the state the run
    began with: some clients keep its credentials (a changed password, a removed user, a
    token signed by a retired key), whose right answer the changes turn to 401."""
    roll = rng.random()
    path = rng.choices(list(POLICIES), weights=(60, 20, 15, 5))[0]
    if roll < 0.47:  # Basic, right password: mostly remembered after the first
        user = rng.choice(sorted(state.passwords))
        return path, Basic(user, state.passwords[user])
    if roll < 0.50:
        user = rng.choice(sorted(first.passwords))
        return path, Basic(user, first.passwords[user])
    if roll < 0.54:
        return path, Basic(rng.choice(sorted(HASH_KINDS)), rng.choice(WRONG_PASSWORDS))
    if roll < 0.56:
        return path, Basic(f"nobody{rng.randrange(50)}", rng.choice(WRONG_PASSWORDS))
    if roll < 0.77:
        groups, scopes = rng.choice(BEARER_CLAIMS)
        return path, Bearer(state.signing, "valid", groups, scopes)
    if roll < 0.80:
        groups, scopes = rng.choice(BEARER_CLAIMS)
        return path, Bearer(first.signing, "valid", groups, scopes)
    if roll < 0.85:
        return path, Bearer(state.signing, "expired", (), ())
    if roll < 0.90:
        return path, Bearer(state.signing, "forged", ("admins",), ("reports:read",))
    name = rng.choice(sorted(MALFORMED))
    return path, (None if name == "none" else Malformed(name))


def headers_for(credential: Credential, tokens: Tokens,
                rng: random.Random) -> list[tuple[str, str]]:
    if isinstance(credential, Basic):
        pair = f"{credential.user}:{credential.password}".encode()
        return [("Authorization", "Basic " + base64.b64encode(pair).decode())]
    if isinstance(credential, Bearer):
        return [("Authorization", "Bearer " + tokens.token(credential, rng))]
    return MALFORMED[credential.name] if isinstance(credential, Malformed) else []
