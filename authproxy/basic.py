"""Basic (RFC 7617): decode as nginx does, look up, verify off-loop, remember successes."""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol

from .authn import AuthRequest
from .config import BasicConfig
from .errors import Unauthenticated
from .expiring import ExpiringCache
from .identity import Identity
from .lockout import FailureTracker
from .metrics import Metrics
from .users import PasswordHash, PasswordMismatch
from .userstore import UserSnapshot, UserStore

CACHE_SIZE = 50_000  # remembered (user, password) pairs; ~600 bytes each with the identity
MAX_PENDING = 256  # verifications queued or running before further ones are refused
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")  # ASCII only


class TokenVerifier(Protocol):
    """Verifies a JWT given as the Basic password (jwt.accept_in_basic): BearerAuthenticator."""

    def verify_now(self, token: str) -> Identity | None: ...

    async def verify(self, token: str) -> Identity: ...


def basic_challenge(realm: str) -> str:
    """RFC 7617's challenge, with the charset we decode credentials in."""
    return f'Basic realm="{realm}", charset="UTF-8"'


def decode_basic(value: str) -> tuple[str, bytes]:
    """Decode Basic credentials into (user-id, password bytes); raise Unauthenticated.

    Strict base64 (standard alphabet, correct padding, nothing after it), split at the first
    colon, a non-empty UTF-8 user-id, and no control characters in either part.
    """
    try:
        raw = binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise Unauthenticated("malformed") from None
    user_bytes, colon, password = raw.partition(b":")
    if not colon or not user_bytes or _CONTROL.search(raw):
        raise Unauthenticated("malformed")
    try:
        return user_bytes.decode("utf-8"), password
    except UnicodeDecodeError:
        raise Unauthenticated("malformed") from None


class BasicAuthenticator:
    """The Basic scheme against a :class:`UserStore`.

    Order of checks, each cheaper than the next: a cache hit (HMAC + dict lookup) answers at
    once, even for a banned user or address, so a flood against an account does not lock out
    its owner's already-verified password; then bans, which refuse without hashing; then one
    hash verification in the executor, shared by concurrent identical requests. Unknown users
    verify against the table's dummy hash, so they cost what a wrong password costs.

    ``lockout`` counts failures and holds bans (with several workers, one that shares them:
    banshare.py); by default a FailureTracker of this config, on ``clock``.
    """

    scheme = "basic"

    def __init__(
        self,
        store: UserStore,
        config: BasicConfig,
        executor: Executor,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        token_verifier: TokenVerifier | None = None,
        lockout: FailureTracker | None = None,
    ) -> None:
        self.store = store
        self._executor = executor
        self._metrics = metrics
        self._token_verifier = token_verifier
        self._keyed_hmac = hmac.new(os.urandom(32), digestmod=hashlib.sha256)
        # Values: the hash that verified and the identity built with it; a hit counts only
        # while that hash and the user's groups are still the current ones.
        self._cache: ExpiringCache[tuple[PasswordHash, Identity]] | None = (
            ExpiringCache(CACHE_SIZE, clock) if config.cache_ttl else None
        )
        self._cache_ttl = config.cache_ttl
        self._clock = clock
        self._inflight: dict[tuple[bytes, PasswordHash], asyncio.Future[None]] = {}
        self._lockout = lockout if lockout is not None else FailureTracker(
            config.max_failures, config.failure_window, config.ban_time, clock
        )
        metrics.bans_in_force.set_function(self._lockout.bans_in_force)
        self._cache_hits = metrics.cache_lookups("basic", "hit")
        self._cache_misses = metrics.cache_lookups("basic", "miss")

    def challenge(self, realm: str) -> str:
        return basic_challenge(realm)

    def not_ready(self) -> str | None:
        return None  # the store never exists without a loaded table

    def authenticate_now(self, request: AuthRequest) -> Identity | None:
        """A remembered password, or a refusal that needs no hash (malformed, banned);
        None when a hash must be verified. A JWT as the password is the token verifier's."""
        value = request.credentials.value
        cached = self._remembered(self._cache_key(value))
        if cached is not None:
            self._cache_hits.inc()
            return cached
        user, password = decode_basic(value)
        if self._token_verifier is not None and _JWT_SHAPE.fullmatch(password):
            identity = self._token_verifier.verify_now(password.decode())
            if identity is not None:
                check_token_user(user, identity)
            return identity
        if self._lockout.is_banned(*_lockout_keys(user, request.client)):
            raise Unauthenticated("banned")
        return None

    async def authenticate(self, request: AuthRequest) -> Identity:
        identity = self.authenticate_now(request)
        if identity is not None:
            return identity
        value = request.credentials.value
        user, password = decode_basic(value)
        if self._token_verifier is not None and _JWT_SHAPE.fullmatch(password):
            identity = await self._token_verifier.verify(password.decode())
            check_token_user(user, identity)
            return identity
        self._cache_misses.inc()
        key = self._cache_key(value)
        snapshot = self.store.snapshot
        entry = snapshot.table.get(user)
        try:
            await self._verify_shared(key, entry or snapshot.table.dummy, password)
            verified = True
        except PasswordMismatch:
            verified = False
        if entry is None or not verified:  # the dummy never matches, but never trust it to
            self._lockout.record_failure(*_lockout_keys(user, request.client))
            if entry is None:  # no user's name (a password typed in the wrong field?): unlogged
                raise Unauthenticated("unknown_user")
            raise Unauthenticated("bad_password", user=user)
        identity = Identity(user=user, method="basic", subject=user,
                            groups=snapshot.groups.get(user, frozenset()))
        if self._cache is not None:
            self._cache.put(key, (entry, identity), self._clock() + self._cache_ttl)
        return identity

    def _cache_key(self, value: str) -> bytes:
        # The cache is keyed by the exact credentials string, so a hit needs no decoding. A
        # few spellings decode alike (base64 lets the bits in padding vary): each is its own
        # entry, and a key is only ever stored after its string decoded and verified.
        mac = self._keyed_hmac.copy()  # the key's HMAC state, computed once
        mac.update(value.encode("utf-8", "surrogateescape"))
        return mac.digest()

    def _remembered(self, key: bytes) -> Identity | None:
        if self._cache is None:
            return None
        cached = self._cache.get(key)
        if cached is not None and self._still_current(cached, self.store.snapshot):
            return cached[1]
        return None

    @staticmethod
    def _still_current(cached: tuple[PasswordHash, Identity], snapshot: UserSnapshot) -> bool:
        """A remembered success counts only while the user's hash and groups are unchanged
        (a reload that changes or removes the entry forgets it)."""
        entry, identity = cached
        user = identity.user
        return (snapshot.table.get(user) == entry
                and identity.groups == snapshot.groups.get(user, frozenset()))

    async def _verify_shared(self, key: bytes, hashed: PasswordHash, password: bytes) -> None:
        """Verify once for all concurrent requests with the same credentials."""
        # By the hash too: a request arriving after a reload must not join a verification
        # against the entry it replaced, whose success would be remembered for the new one.
        shared = (key, hashed)
        future = self._inflight.get(shared)
        if future is None:
            if len(self._inflight) >= MAX_PENDING:
                raise Unauthenticated("overloaded")
            future = asyncio.ensure_future(self._verify(hashed, password))
            self._inflight[shared] = future
            future.add_done_callback(lambda _: self._inflight.pop(shared, None))
        # shield: one waiter going away (client disconnect) must not cancel the others' result
        await asyncio.shield(future)

    async def _verify(self, hashed: PasswordHash, password: bytes) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            await loop.run_in_executor(self._executor, hashed.verify, password)
        finally:
            self._metrics.hash_seconds.labels(hashed.scheme).observe(time.perf_counter() - started)


def _lockout_keys(user: str, client: str) -> tuple[str, str]:
    """The lockout's keys for a user name and a client address: one key space for both, so
    each is marked (a user-id may spell an address, and thereby get that address banned)."""
    return f"user:{user}", f"client:{client}"


def check_token_user(user: str, identity: Identity) -> None:
    """A JWT given as the Basic password passes for the user-id ``*`` or its own user only
    (SPEC §7)."""
    if user not in ("*", identity.user):
        raise Unauthenticated("token_user_mismatch")
