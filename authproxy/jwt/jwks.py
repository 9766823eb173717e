"""The signing key set: a JWK Set parsed key by key, filtered by policy, built whole.

jwcrypto's ``JWKSet.import_keyset`` is all-or-nothing, and RFC 7517 §5 says keys a verifier
cannot use SHOULD be ignored, so every member is imported on its own and the ones we will not
verify with are skipped with a log line: unsupported or symmetric types, private keys,
encryption keys, RSA under 2048 bits (jwcrypto does not enforce RFC 7518 §3.3 on verify), and
keys whose ``alg`` is not one we accept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jwcrypto.common import JWException
from jwcrypto.jwk import JWK

log = logging.getLogger("authproxy.jwt.jwks")

MIN_RSA_BITS = 2048
# What kind of key each algorithm verifies with: (kty, curves; empty meaning any).
ALGORITHM_KEYS: Mapping[str, tuple[str, frozenset[str]]] = {
    **{a: ("RSA", frozenset()) for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
_CURVES = {"EC": frozenset({"P-256", "P-384", "P-521"}), "OKP": frozenset({"Ed25519", "Ed448"})}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# Logged kids are cut short, and so are lists of them: a hostile (or huge) JWKS should not
# be able to flood the log.
_LOGGED_KID = 64
_LOGGED_KIDS = 32


class JwksError(Exception):
    """A JWK Set document that yields no key set; ``reason`` is a fixed token."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


class _Skip(Exception):
    """One member of the set is not a key we verify with; ``args[0]`` says why."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One usable public key, with what a token's header is matched against."""

    jwk: JWK
    kty: str
    crv: str
    kid: str | None
    alg: str | None  # the JWK's own alg; when set, a token's alg must equal it
    thumbprint: str  # RFC 7638: identifies the key material, whatever its kid

    def fits(self, alg: str) -> bool:
        """True if a token signed with ``alg`` may be verified with this key."""
        if self.alg is not None and self.alg != alg:
            return False
        kty, curves = ALGORITHM_KEYS[alg]
        return self.kty == kty and (not curves or self.crv in curves)


@dataclass(frozen=True, slots=True)
class KeySet:
    """An immutable set of verification keys; replaced whole, never edited."""

    keys: tuple[VerifyKey, ...]
    skipped: int = 0
    _by_kid: dict[str | None, tuple[VerifyKey, ...]] = field(default_factory=dict, repr=False)
    thumbprints: frozenset[str] = frozenset()
    # (kid, alg) -> the keys that may verify it, kid None meaning a token without kid; built
    # once per set (bounded: kids x algorithms) so a decision does a dict lookup, not a scan
    _candidates: dict[tuple[str | None, str], tuple[VerifyKey, ...]] = field(
        default_factory=dict, repr=False)

    @classmethod
    def of(cls, keys: Sequence[VerifyKey], skipped: int = 0) -> KeySet:
        by_kid: dict[str | None, list[VerifyKey]] = {}
        for key in keys:
            by_kid.setdefault(key.kid, []).append(key)
        candidates = {
            (kid, alg): fitting
            for alg in ALGORITHM_KEYS
            for kid, pool in ((None, keys), *((k, g) for k, g in by_kid.items() if k is not None))
            if (fitting := tuple(key for key in pool if key.fits(alg)))
        }
        return cls(
            keys=tuple(keys), skipped=skipped,
            _by_kid={kid: tuple(group) for kid, group in by_kid.items()},
            thumbprints=frozenset(k.thumbprint for k in keys),
            _candidates=candidates,
        )

    @property
    def kids(self) -> list[str]:
        return sorted(k for k in self._by_kid if k is not None)

    def logged_kids(self) -> list[str]:
        """The kids for a log line: the first _LOGGED_KIDS, each cut to _LOGGED_KID
        characters (the line's ``keys`` field says how many there are)."""
        return [kid[:_LOGGED_KID] for kid in self.kids[:_LOGGED_KIDS]]

    def has_kid(self, kid: str) -> bool:
        return kid in self._by_kid

    def candidates(self, kid: str | None, alg: str) -> tuple[VerifyKey, ...]:
        """Keys that may verify a token with this header: those of its kid that fit its alg,
        or, for a token without kid, every key that fits its alg (SPEC §7)."""
        return self._candidates.get((kid, alg), ())


def parse_jwks(document: bytes, algorithms: Sequence[str], source: str) -> KeySet:
    """Parse a JWK Set document; return the KeySet of its usable keys.

    Raises JwksError when the document is not a JSON JWK Set or holds no usable key: a fetch
    that yields no key counts as failed and the previous set stays (SPEC §7).
    """
    try:
        data = json.loads(document)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        # RecursionError: a few thousand nested '[' fit well within the size cap
        raise JwksError("not_json", "the document is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError("not_jwks", 'the document is not a JWK Set (no "keys" array)')
    keys: list[VerifyKey] = []
    for index, member in enumerate(data["keys"]):
        try:
            keys.append(load_key(member, algorithms))
        except _Skip as skip:
            kid = member.get("kid") if isinstance(member, dict) else None
            log.warning("JWKS key skipped", extra={
                "event": "jwks_key_skipped", "source": source, "index": index,
                "kid": kid[:_LOGGED_KID] if isinstance(kid, str) else None, "reason": str(skip),
            })
    skipped = len(data["keys"]) - len(keys)
    if not keys:
        raise JwksError("no_usable_keys", f"no usable key ({skipped} skipped)")
    return KeySet.of(keys, skipped)


def load_key(member: Any, algorithms: Sequence[str]) -> VerifyKey:
    """Import one JWK Set member as a verification key; raise _Skip if it is not usable."""
    if not isinstance(member, dict):
        raise _Skip("not_an_object")
    kty = member.get("kty")
    if kty == "oct":
        raise _Skip("symmetric")
    if kty not in ("RSA", "EC", "OKP"):
        raise _Skip("unsupported_kty")
    if any(name in member for name in _PRIVATE_MEMBERS):
        raise _Skip("private_key")
    if member.get("use", "sig") != "sig":
        raise _Skip("not_for_signing")
    ops = member.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise _Skip("not_for_verify")
    kid = member.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _Skip("bad_kid")
    crv = member.get("crv", "")
    # not a string (a list, an object) would be unhashable in the lookup below
    if not isinstance(crv, str) or (kty in _CURVES and crv not in _CURVES[kty]):
        raise _Skip("unsupported_curve")
    alg = member.get("alg")
    if alg is not None and alg not in algorithms:
        raise _Skip("alg_not_allowed")
    try:
        jwk = JWK(**member)
        public = jwk.get_op_key("verify", crv or None)  # decodes and checks the key material
        thumbprint = jwk.thumbprint()
    except (JWException, ValueError, TypeError, KeyError):
        raise _Skip("malformed") from None
    if kty == "RSA" and public.key_size < MIN_RSA_BITS:
        raise _Skip("weak_rsa")
    key = VerifyKey(jwk=jwk, kty=kty, crv=crv, kid=kid, alg=alg, thumbprint=thumbprint)
    if not any(key.fits(a) for a in algorithms):
        raise _Skip("alg_mismatch")
    return key


@dataclass(slots=True)
class SourceState:
    """One origin of keys (``endpoint`` or ``file``) and what happened at it last."""

    name: str
    location: str
    keyset: KeySet | None = None
    loaded_at: float | None = None  # monotonic
    fetched_at: float | None = None  # wall clock
    last_error: str | None = None
    last_error_at: float | None = None  # wall clock
    failures: int = 0  # consecutive

    def key_count(self) -> int:
        return len(self.keyset.keys) if self.keyset else 0
