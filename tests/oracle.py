"""The decision oracle: what authproxy must answer, worked out without authproxy's code.

``python -m tests.oracle --requests N --seed S`` sends N generated requests through a real
nginx to a real ``authproxy serve`` and compares every answer with this module's prediction
(tests/oracle_world.py sets up users, keys and locations, tests/oracle_traffic.py makes
the traffic and tests/oracle_run.py runs the comparison).

The prediction is rebuilt from the contract (SPEC §4, §7, §8.2 and the README's decision
contract), with other implementations doing the cryptography:

- Basic: strict base64 (one spelling per credential), split at the first colon, then the
  password checked as Apache checks it, by ``htpasswd -vb`` (the real binary; libpass for
  ``{SSHA}``, which Apache's htpasswd cannot verify), once per (user, password);
- Bearer: PyJWT verifies the signature with the published public key the header names,
  the pinned algorithms, ``exp``/``nbf``/``iat`` with the leeway, ``iss`` and ``aud``; the
  contract's own rules (strict base64url and JSON, NumericDates that are numbers, no
  ``crit``, a string ``kid`` whose key's ``alg`` is the token's) are checked here first;
- the policy of SPEC §8.2 as tests/specmodel.py reads it from SPEC's text (the one model
  of it in the tests, which the policy fuzz target checks authproxy's parser against).

Nothing from ``authproxy`` is imported: a bug shared by the oracle and the service would
hide itself.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt as pyjwt
from passlib.hash import ldap_salted_sha1

from .specmodel import InvalidPolicy, read_policy

MAX_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z (SPEC §7: beyond it, 401)
MAX_KIDLESS_CANDIDATES = 8
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3 scope-token


@dataclass(frozen=True, slots=True)
class Expected:
    """A decision: the status, for a 200 the identity headers (all five), for a 401 the
    schemes its challenge names."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    challenge: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Who:
    """An authenticated principal as the contract describes it."""

    user: str
    method: str
    subject: str
    groups: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] | None = None  # a token's payload; None for Basic

    def headers(self) -> dict[str, str]:
        return {"X-Auth-User": self.user, "X-Auth-Method": self.method,
                "X-Auth-Subject": self.subject, "X-Auth-Groups": ",".join(sorted(self.groups)),
                "X-Auth-Scopes": " ".join(sorted(self.scopes))}


# -- Basic ---------------------------------------------------------------------------------


class PasswordChecker:
    """Whether a password matches a user's htpasswd entry, as Apache decides it: the real
    ``htpasswd -vb`` binary (libpass for {SSHA}), each (user, password) asked once."""

    def __init__(self, users_file: str, entries: Mapping[str, str],
                 htpasswd: Callable[..., subprocess.CompletedProcess[str]]) -> None:
        self._file = users_file
        self._entries = entries  # user -> hash, as written to the file
        self._htpasswd = htpasswd
        self._answers: dict[tuple[str, bytes], bool] = {}

    def matches(self, user: str, password: bytes) -> bool:
        if user not in self._entries:
            return False
        key = (user, password)
        if key not in self._answers:
            self._answers[key] = self._ask(user, password)
        return self._answers[key]

    def _ask(self, user: str, password: bytes) -> bool:
        hashed = self._entries[user]
        if hashed.startswith("{SSHA}"):
            return bool(ldap_salted_sha1.verify(password, hashed))
        # argv carries bytes as they are: a password that is not UTF-8 reaches htpasswd whole
        status = self._htpasswd("-vb", self._file, user,
                                password.decode("utf-8", "surrogateescape")).returncode
        assert status in (0, 3), f"htpasswd -vb for {user!r}: exit {status}"
        return status == 0


def _canonical_b64(text: str, *, url: bool) -> bytes | None:
    """The bytes ``text`` encodes if it is their one canonical spelling (base64 with exactly
    the padding needed; base64url without padding), else None."""
    try:
        if url:
            if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
                return None
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            again = base64.urlsafe_b64encode(raw).rstrip(b"=")
        else:
            raw = base64.b64decode(text, validate=True)
            again = base64.b64encode(raw)
    except ValueError:  # binascii.Error, and a str that is not ASCII
        return None
    return raw if again == text.encode("ascii") else None


def basic_principal(value: str, groups: Mapping[str, frozenset[str]],
                    passwords: PasswordChecker) -> Who | None:
    """The user Basic credentials prove (RFC 7617 + SPEC), or None."""
    raw = _canonical_b64(value, url=False)
    if raw is None or _CONTROL.search(raw.decode("latin-1")):
        return None
    user_bytes, colon, password = raw.partition(b":")
    if not colon or not user_bytes:
        return None
    try:
        user = user_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not passwords.matches(user, password):
        return None
    return Who(user, "basic", user, groups.get(user, frozenset()))


# -- Bearer --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A published verification key: its JWK members and the public key PyJWT uses."""

    kid: str | None
    alg: str
    key: Any


@dataclass(frozen=True, slots=True)
class TokenRules:
    """The [jwt] settings the oracle's service runs with."""

    keys: tuple[PublicKey, ...]
    algorithms: frozenset[str]
    issuer: str
    audiences: tuple[str, ...]
    user_claim: str
    leeway: int


def _strict_json(raw: bytes) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate member")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise ValueError(name)

    return json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates,
                      parse_constant=no_constant)


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Header and payload of a compact JWS whose every segment is canonical base64url and
    whose JSON is strict; None otherwise."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    decoded = [_canonical_b64(p, url=True) for p in parts]
    if any(d is None for d in decoded) or not decoded[2]:
        return None
    try:
        header, payload = _strict_json(decoded[0] or b""), _strict_json(decoded[1] or b"")
    except ValueError:
        return None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        return None
    return header, payload


def _numeric_dates_ok(payload: Mapping[str, Any]) -> bool:
    """SPEC §7: exp required; exp, nbf, iat numbers (not booleans, not strings) up to 9999."""
    if "exp" not in payload:
        return False
    for name in ("exp", "nbf", "iat"):
        if name in payload:
            value = payload[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            if not 0 <= value <= MAX_NUMERIC_DATE:
                return False
    return True


def _candidates(rules: TokenRules, header: Mapping[str, Any]) -> Sequence[PublicKey]:
    """The key a kid names (if its alg is the token's), or, without kid, the keys of the
    token's alg."""
    alg = header["alg"]
    if "kid" in header:
        named = [k for k in rules.keys if k.kid == header["kid"]]
        return [k for k in named if k.alg == alg]
    return [k for k in rules.keys if k.alg == alg][:MAX_KIDLESS_CANDIDATES]


def _strings(value: Any, *, split: bool) -> set[str] | None:
    if isinstance(value, str):
        return {w for w in value.split(" ") if w} if split else {value}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {v for v in value if v}
    return None


def bearer_principal(token: str, rules: TokenRules, now: float) -> Who | None:
    """The user a JWT proves (PyJWT's verification plus the contract's rules), or None."""
    parsed = _segments(token)
    if parsed is None:
        return None
    header, payload = parsed
    if (header.get("alg") not in rules.algorithms or "crit" in header
            or not isinstance(header.get("kid", ""), str) or not _numeric_dates_ok(payload)):
        return None
    verified = None
    for key in _candidates(rules, header):
        try:
            verified = pyjwt.decode(
                token, key.key, algorithms=[header["alg"]], audience=list(rules.audiences),
                issuer=rules.issuer, leeway=rules.leeway,
                options={"require": ["exp"], "verify_jti": False})
        except pyjwt.InvalidTokenError:
            continue
        break
    if verified is None:
        return None
    return _token_principal(verified, rules)


def _token_principal(claims: dict[str, Any], rules: TokenRules) -> Who | None:
    """The identity a verified token names (README, "Identity headers say only what the
    token says"): ambiguous groups and scopes left out, a control character anywhere 401."""
    user = claims.get(rules.user_claim)
    if not isinstance(user, str) or not user:
        return None
    subject = claims.get("sub")
    subject = subject if isinstance(subject, str) else ""
    groups = _strings(claims["groups"], split=False) if "groups" in claims else set()
    scopes: set[str] | None = set()
    for name in ("scope", "scp"):
        if name in claims and scopes is not None:
            more = _strings(claims[name], split=True)
            scopes = None if more is None else scopes | more
    if groups is None or scopes is None:
        return None
    if any(_CONTROL.search(v) for v in (user, subject, *groups, *scopes)):
        return None
    groups = {g for g in groups if "," not in g and g == g.strip()}
    scopes = {s for s in scopes if _SCOPE_TOKEN.fullmatch(s)}
    return Who(user, "bearer", subject, frozenset(groups), frozenset(scopes), claims)


# -- the decision --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Oracle:
    """Everything the service was configured with, as the oracle knows it."""

    groups: Mapping[str, frozenset[str]]
    passwords: PasswordChecker
    tokens: TokenRules

    def predict(self, policy: str, authorization: str | None, now: float) -> Expected:
        """The answer to one request with this ``Authorization`` (None: none sent) at a
        location whose policy query string is ``policy``."""
        try:
            requirements = read_policy(policy)
        except InvalidPolicy:
            return Expected(403)  # before any credential is looked at
        allowed = requirements.allowed()
        refused = Expected(401, challenge=allowed)
        if authorization is None:
            return refused
        scheme, _, rest = authorization.strip(" \t").partition(" ")
        scheme, rest = scheme.lower(), rest.lstrip(" \t")
        if scheme not in allowed:
            return refused
        who = (basic_principal(rest, self.groups, self.passwords) if scheme == "basic"
               else bearer_principal(rest, self.tokens, now))
        if who is None:
            return refused
        if not requirements.admits(who):
            return Expected(403)
        return Expected(200, who.headers())


if __name__ == "__main__":
    from .oracle_run import main

    raise SystemExit(main())
