"""Bearer (RFC 6750): a JWT signed by a key of the JWK Set, verified with jwcrypto.

Order of work, each step cheaper than the next: the verified-token cache (a keyed digest and
a dict lookup); the pre-checks of :mod:`authproxy.jwt.jose`; the key chosen by kid and alg (a kid no
trusted set has triggers one shared, rate-limited refresh); the signature; the claims.

The signature is verified on the event loop, not in a thread: one verification against a
single JWK costs 17 µs (RS256), 47 µs (ES256) or 63 µs (EdDSA) of loop time, less than a
hand-off to a thread and back; pre-checks and claims add ~10 µs, a kid-less token costs at
most MAX_KIDLESS_CANDIDATES verifications, and repeat tokens are answered from the cache.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from jwcrypto.jwa import JWA

from ..config import JwtConfig
from ..core.authn import AuthRequest, Pending
from ..core.expiring import ExpiringCache
from ..core.identity import Identity
from ..errors import Unauthenticated
from ..jwt.claims import ClaimPolicy
from ..jwt.jose import DESCRIPTIONS, CheckedToken, check_token, invalid_token
from ..jwt.jwks import VerifyKey
from ..jwt.keysource import KeySource
from ..obs.metrics import Metrics

log = logging.getLogger("authproxy.schemes.bearer")

CACHE_SIZE = 50_000  # verified tokens remembered; an entry is ~1.5 kB with a few groups ...
# ... and ~30 kB with 200 (measured): the byte budget bounds the cache whatever tokens carry.
CACHE_BYTES = 64 * 1024 * 1024
MAX_KIDLESS_CANDIDATES = 8  # keys tried for a token without kid, bounding its cost


class _Verified(NamedTuple):
    identity: Identity
    thumbprint: str  # the key that verified it: the entry dies when that key leaves the set


def verify_signature(token: CheckedToken, key: VerifyKey) -> None:
    """Return if ``key`` verifies the token's signature under its (pinned) ``alg``; else raise.

    jwcrypto's algorithm object does the cryptography (RSA PKCS#1 v1.5 and PSS, ECDSA with
    the raw R||S form of RFC 7518 §3.4, EdDSA) against one JWK, never a JWKSet. Its JWS
    object is not used: the pre-checks have already parsed, pinned and length-checked what
    it would parse again, and that second parse cost three times the signature itself.
    """
    _signing_alg(token.alg).verify(key.jwk, token.signing_input, token.signature)


@functools.lru_cache(maxsize=16)
def _signing_alg(alg: str) -> Any:
    """jwcrypto's algorithm object for an alg (one of jwt.algorithms, already checked):
    stateless, so made once."""
    return JWA.signing_alg(alg)


class BearerAuthenticator:
    """The Bearer scheme against a :class:`KeySource`; also verifies JWTs sent as a Basic
    password (jwt.accept_in_basic) through :meth:`begin_token`."""

    scheme = "bearer"

    def __init__(
        self,
        config: JwtConfig,
        keys: KeySource,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self._algorithms = config.algorithms
        self._require_typ = config.require_typ
        self._claims = ClaimPolicy(config, wall_clock)
        self._cache_hits = metrics.cache_lookups("bearer", "hit")
        self._cache_misses = metrics.cache_lookups("bearer", "miss")
        self._clock = clock
        self._wall_clock = wall_clock
        self._keyed_blake2b = hashlib.blake2b(key=os.urandom(32), digest_size=32)
        self._cache: ExpiringCache[_Verified] = ExpiringCache(CACHE_SIZE, clock, CACHE_BYTES)

    def challenge(self, realm: str) -> str:
        return f'Bearer realm="{realm}"'

    def not_ready(self) -> str | None:
        return self.keys.ring.not_ready()

    def begin(self, request: AuthRequest) -> Identity | Pending:
        return self.begin_token(self._token(request))

    @staticmethod
    def _token(request: AuthRequest) -> str:
        token = request.credentials.value
        if not token:
            raise Unauthenticated("missing_token", bearer_error="invalid_request",
                                  bearer_description=DESCRIPTIONS["missing"])
        return token

    def begin_token(self, token: str) -> Identity | Pending:
        """The identity a token proves, or Unauthenticated (invalid_token) or KeysUnavailable
        raised; when its kid is in no key set yet, the :class:`TokenVerification` that awaits
        a refresh, carrying the token as checked and its cache key."""
        cache_key = self._cache_key(token)
        entry = self._cache.get(cache_key)
        if entry is not None:
            # exp by the wall clock too: it may have jumped ahead of the monotonic deadline
            expires_at = entry.identity.expires_at or 0.0
            if self.keys.ring.trusts(entry.thumbprint) and self._wall_clock() < expires_at:
                self._cache_hits.inc()
                return entry.identity
            self._cache.pop(cache_key)
        checked = check_token(token, self._algorithms, self._require_typ)
        kid = checked.kid
        keys = self.keys.ring.candidates(kid, checked.alg)
        if not keys and kid is not None and self.keys.refresher.may_learn(kid):
            return TokenVerification(self, cache_key, checked, kid)
        return self._verified(cache_key, checked, keys)

    def _cache_key(self, token: str) -> bytes:
        # Keyed by the exact string (two spellings of one token are two entries, never one),
        # with a per-process secret: BLAKE2b's keyed mode is a MAC, and costs half an HMAC.
        mac = self._keyed_blake2b.copy()  # the key's state, computed once
        mac.update(token.encode("utf-8", "surrogatepass"))
        return mac.digest()

    def _verified(
        self, cache_key: bytes, checked: CheckedToken, keys: tuple[VerifyKey, ...]
    ) -> Identity:
        """Signature by one of ``keys`` (the candidates), then claims; remembered until exp."""
        self._cache_misses.inc()
        key = self._verifying_key(checked, keys)
        identity = self._claims.identity(checked.payload)
        lifetime = (identity.expires_at or 0.0) - self._wall_clock()  # exp is required
        if lifetime > 0:
            self._cache.put(cache_key, _Verified(identity, key.thumbprint),
                            self._clock() + lifetime, weight=payload_weight(checked.payload))
        return identity

    def _verifying_key(self, header: CheckedToken, keys: tuple[VerifyKey, ...]) -> VerifyKey:
        if not keys:
            if header.kid is not None and self.keys.ring.knows_kid(header.kid):
                # the named key exists but cannot verify this alg (its own alg differs, or
                # its type does not fit): RFC 8725 §3.1, one key, one algorithm
                raise invalid_token("key_alg_mismatch", "bad_signature")
            raise invalid_token("unknown_kid" if header.kid else "no_key_for_alg", "unknown_key")
        for key in keys[:MAX_KIDLESS_CANDIDATES]:
            try:
                verify_signature(header, key)
                return key
            except Exception:  # noqa: S112 - jwcrypto raises many types; all mean "not this key"
                continue
        raise invalid_token("bad_signature", "bad_signature")


# What a verified token's entry holds, by its payload's length: measured with tracemalloc, an
# identity takes 7-10 bytes per byte of ordinary JSON claims plus ~500 (27.8 kB for 200 groups
# in a 4 kB payload); counting it as expiring.estimate_size would cost 56 us a token, more
# than the signature. Errs high, as the budget must.
PAYLOAD_WEIGHT_BASE = 512
PAYLOAD_WEIGHT_PER_BYTE = 16


def payload_weight(payload: bytes) -> int:
    """The bytes a cache entry of a token with this payload is counted as."""
    return PAYLOAD_WEIGHT_BASE + PAYLOAD_WEIGHT_PER_BYTE * len(payload)


class TokenVerification:
    """A token whose kid no trusted set has (:class:`authn.Pending`): what was checked of it
    and its cache key, until the one shared, rate-limited refresh it triggers is awaited."""

    __slots__ = ("_bearer", "_cache_key", "_checked", "_kid")

    def __init__(self, bearer: BearerAuthenticator, cache_key: bytes, checked: CheckedToken,
                 kid: str) -> None:
        self._bearer = bearer
        self._cache_key = cache_key
        self._checked = checked
        self._kid = kid

    async def finish(self) -> Identity:
        """The refresh, then the signature and claims against the keys it brought (or
        Unauthenticated raised for a kid still unknown)."""
        bearer, checked = self._bearer, self._checked
        await bearer.keys.refresher.refresh_on_miss(self._kid)
        keys = bearer.keys.ring.candidates(self._kid, checked.alg)
        return bearer._verified(self._cache_key, checked, keys)
