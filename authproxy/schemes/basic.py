"""Basic (RFC 7617): decode as nginx does, look up, verify off-loop, remember successes."""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from typing import Protocol

from ..config import BasicConfig
from ..core.authn import AuthRequest, Pending
from ..core.expiring import ExpiringCache
from ..core.identity import Identity
from ..core.lockout import Attempt, FailureTracker, Lockout
from ..errors import Unauthenticated
from ..htpasswd.users import CostClass, PasswordHash, PasswordMismatch, UserTable, cost_class
from ..htpasswd.userstore import UserSnapshot, UserStore
from ..obs.metrics import Metrics

CACHE_SIZE = 50_000  # remembered (user, password) pairs; ~600 bytes each with the identity
MAX_PENDING = 256  # verifications queued or running before further ones are refused
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")  # ASCII only


class TokenVerifier(Protocol):
    """Verifies a JWT given as the Basic password (jwt.accept_in_basic): BearerAuthenticator."""

    def begin_token(self, token: str) -> Identity | Pending: ...


def basic_challenge(realm: str) -> str:
    """RFC 7617's challenge, with the charset we decode credentials in."""
    return f'Basic realm="{realm}", charset="UTF-8"'


def decode_basic(value: str) -> tuple[str, bytes]:
    """Decode Basic credentials into (user-id, password bytes); raise Unauthenticated.

    Strict, canonical base64 (standard alphabet, exactly the padding needed, zero unused bits,
    nothing after it: one spelling per credential), split at the first colon, a non-empty UTF-8
    user-id, and no control characters in either part. ``strict_mode`` alone lets excess
    padding ("...A==" for a whole group) and non-zero unused bits through, which the fuzz target
    found; re-encoding and comparing closes both.
    """
    try:
        encoded = value.encode("ascii")
        raw = binascii.a2b_base64(encoded, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise Unauthenticated("malformed") from None
    if binascii.b2a_base64(raw, newline=False) != encoded:
        raise Unauthenticated("malformed")
    user_bytes, colon, password = raw.partition(b":")
    if not colon or not user_bytes or _CONTROL.search(raw):
        raise Unauthenticated("malformed")
    try:
        return user_bytes.decode("utf-8"), password
    except UnicodeDecodeError:
        raise Unauthenticated("malformed") from None


class BasicAuthenticator:
    """The Basic scheme against a :class:`UserStore`.

    Order of checks (SPEC §8.1): bans first, before anything else, a remembered password
    included, so a ban is never a cheaper oracle than no ban; then a remembered password (an
    HMAC and a dict lookup); then one hash verification in the executor, reserved against
    ``max_failures`` before it starts and shared by concurrent identical requests. Unknown
    users verify against the table's dummy hash, and every failed verification is answered
    no sooner than the table's costliest one, so an unknown user and a wrong password look
    alike. A remembered password does not outlive a ban on its user from a stranger's
    address; its owner's known addresses are exempt (lockout.py).

    ``lockout`` holds the counters, bans and known addresses (with several workers, shared:
    banshare.py); by default one of this config, on ``clock``.
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
        lockout: Lockout | None = None,
    ) -> None:
        self.store = store
        self._executor = executor
        self._metrics = metrics
        self._token_verifier = token_verifier
        self._cache_secret = os.urandom(32)  # the cache keys' MAC key, this process's own
        # Values: the hash that verified and the identity built with it; a hit counts only
        # while that hash and the user's groups are still the current ones.
        self._cache: ExpiringCache[tuple[PasswordHash, Identity]] | None = (
            ExpiringCache(CACHE_SIZE, clock) if config.cache_ttl else None
        )
        self._cache_ttl = config.cache_ttl
        self._clock = clock
        self._inflight: dict[tuple[bytes, PasswordHash], asyncio.Future[tuple[bool, float]]] = {}
        self.lockout = lockout if lockout is not None else Lockout(
            FailureTracker(config.max_failures, config.failure_window, config.ban_time, clock),
            config.known_address_ttl, clock)
        metrics.bans_in_force.set_function(self.lockout.tracker.bans_in_force)
        self._cache_hits = metrics.cache_lookups("basic", "hit")
        self._cache_misses = metrics.cache_lookups("basic", "miss")
        self._costs = VerificationCosts()

    def challenge(self, realm: str) -> str:
        return basic_challenge(realm)

    def not_ready(self) -> str | None:
        return None  # the store never exists without a loaded table

    def begin(self, request: AuthRequest) -> Identity | Pending:
        """A remembered password, or a refusal that needs no hash (malformed, banned); else
        the password's verification, carrying what was decoded and its cache key. A JWT as
        the password is the token verifier's.

        Everything that needs no waiting happens here, once: decoding, the token verifier's
        quick path, bans, the remembered passwords."""
        value = request.credentials.value
        decoded = None
        # While no ban is in force, none can refuse: the remembered passwords are asked first,
        # and only a miss is decoded (the hot path stays one MAC and one lookup).
        if self.lockout.tracker.banning or self._token_verifier is not None:
            decoded = decode_basic(value)
            token = self._token(*decoded)
            if token is not None:
                return token
            # A ban refuses before anything else, a remembered password included (rule 1).
            self.lockout.check(decoded[0], request.client_key)
        key = self._cache_key(value)
        cached = self._remembered(key)
        if cached is not None:
            self._cache_hits.inc()
            return cached
        user, password = decoded or decode_basic(value)
        return PasswordVerification(self, user, password, key, request.client_key)

    def _token(self, user: str, password: bytes) -> Identity | Pending | None:
        """A JWT given as the password (jwt.accept_in_basic): its identity, or what to await
        for it; None for a password."""
        verifier = self._token_verifier
        if verifier is None or not _JWT_SHAPE.fullmatch(password):
            return None
        return begin_token_as_password(verifier, user, password.decode())

    async def _verify_password(self, step: PasswordVerification) -> Identity:
        self._cache_misses.inc()
        user = step.user
        snapshot = self.store.snapshot
        entry = snapshot.table.get(user)
        hashed = entry or snapshot.table.dummy
        attempt = self.lockout.attempt(user, step.address)
        floor = self._costs.floor(snapshot.table)
        matched, seconds = await self._verify_shared(step, attempt, hashed, entry is not None,
                                                     floor)
        self._costs.observe(hashed, seconds)
        if entry is None or not matched:  # the dummy never matches, but never trust it to
            if entry is None:  # no user's name (a password typed in the wrong field?): unlogged
                raise Unauthenticated("unknown_user")
            raise Unauthenticated("bad_password", user=user)
        identity = Identity(user=user, method="basic", subject=user,
                            groups=snapshot.groups.get(user, frozenset()))
        if self._cache is not None:
            self._cache.put(step.key, (entry, identity), self._clock() + self._cache_ttl)
        return identity

    def _cache_key(self, value: str) -> bytes:
        # The cache is keyed by a MAC of the exact credentials string (one spelling per
        # credential: decode_basic takes canonical base64 only), so the passwords are not
        # what the cache holds. Keyed BLAKE2s is a MAC in one C call: half what copying a
        # prepared HMAC-SHA256 state costs, on the hot path of every remembered decision.
        return hashlib.blake2s(value.encode("utf-8", "surrogateescape"),
                               key=self._cache_secret).digest()

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

    async def _verify_shared(
        self, step: PasswordVerification, attempt: Attempt, hashed: PasswordHash, exists: bool,
        floor: float,
    ) -> tuple[bool, float]:
        """(matched, seconds the hash took): one verification for all concurrent requests
        with the same credentials, held in its thread for at least ``floor`` seconds if it
        fails. The one that starts it reserves an attempt (raising Unauthenticated past the
        limit); each request's attempt is settled when the verification ends, even if its
        client has gone. ``exists``: ``hashed`` is the user's (not the dummy), so a match is
        a success."""
        # By the hash too: a request arriving after a reload must not join a verification
        # against the entry it replaced, whose success would be remembered for the new one.
        shared = (step.key, hashed)
        future = self._inflight.get(shared)
        if future is None:
            if len(self._inflight) >= MAX_PENDING:
                raise Unauthenticated("overloaded")
            self.lockout.reserve(attempt)
            future = asyncio.ensure_future(self._verify(hashed, step.password, floor))
            self._inflight[shared] = future
            future.add_done_callback(lambda _: self._inflight.pop(shared, None))
        # Joining costs no hash, so reserves nothing; it still counts, once the result is in.
        future.add_done_callback(partial(self._settle, attempt, exists))
        # shield: one waiter going away (client disconnect) must not cancel the others' result
        return await asyncio.shield(future)

    def _settle(self, attempt: Attempt, exists: bool,
                future: asyncio.Future[tuple[bool, float]]) -> None:
        verified: bool | None = None  # cancelled: shutting down, nothing decided
        if not future.cancelled():
            verified = future.exception() is None and exists and future.result()[0]
        self.lockout.settle(attempt, verified)

    async def _verify(
        self, hashed: PasswordHash, password: bytes, floor: float
    ) -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        matched, seconds, held = await loop.run_in_executor(
            self._executor, _timed_verify, hashed, password, floor)
        # One histogram for every scheme, and a failure observed as long as it held its
        # thread: by scheme, or by its own cost, it would tell which hash a guessed user-id
        # has, and so that it exists.
        self._metrics.hash_seconds.observe(held)
        return matched, seconds


class VerificationCosts:
    """How long a verification of each cost class takes now: a moving average of the
    verifications seen, starting from the table's timings at load.

    A failed verification is answered no sooner than the costliest class of the current
    table (SPEC §8.1 rule 7), so a wrong password for a cheap hash (apr1, {SHA}) or a costly
    one (argon2id) answers like an unknown user's. Following what verifications cost now,
    not at load, keeps that true while the machine is busy, when they all cost more.
    """

    WEIGHT = 0.2  # of the newest verification in the average

    def __init__(self) -> None:
        self._seconds: dict[CostClass, float] = {}

    def observe(self, hashed: PasswordHash, seconds: float) -> None:
        key = cost_class(hashed)
        average = self._seconds.get(key)
        self._seconds[key] = seconds if average is None else (
            average + self.WEIGHT * (seconds - average))

    def floor(self, table: UserTable) -> float:
        """Seconds the costliest verification of ``table`` takes now."""
        return max(self._seconds.get(key, seconds)
                   for key, seconds in table.verification_costs.items())


class PasswordVerification:
    """A password to verify (:class:`authn.Pending`): what was decoded, its cache key, and
    the client's address key."""

    __slots__ = ("_basic", "address", "key", "password", "user")

    def __init__(self, basic: BasicAuthenticator, user: str, password: bytes, key: bytes,
                 address: str) -> None:
        self._basic = basic
        self.user = user
        self.password = password
        self.key = key
        self.address = address

    async def finish(self) -> Identity:
        """One hash verification, reserved and shared (BasicAuthenticator's order of checks)."""
        return await self._basic._verify_password(self)


class TokenAsPassword:
    """A JWT given as the Basic password whose verification must wait (:class:`authn.Pending`):
    the token's own, then the user-id's check against it."""

    __slots__ = ("token", "user")

    def __init__(self, user: str, token: Pending) -> None:
        self.user = user
        self.token = token

    async def finish(self) -> Identity:
        identity = await self.token.finish()
        check_token_user(self.user, identity)
        return identity


def begin_token_as_password(verifier: TokenVerifier, user: str, token: str) -> Identity | Pending:
    """A JWT given as the Basic password of ``user`` (jwt.accept_in_basic): its identity, or
    what to await for it; Unauthenticated raised for a token that fails or is not ``user``'s."""
    outcome = verifier.begin_token(token)
    if isinstance(outcome, Identity):
        check_token_user(user, outcome)
        return outcome
    return TokenAsPassword(user, outcome)


def _timed_verify(hashed: PasswordHash, password: bytes,
                  floor: float) -> tuple[bool, float, float]:
    """(matched, seconds the verification took, seconds the thread was held), in a hash
    thread. A mismatch holds the thread until ``floor`` (SPEC §8.1 rule 7): in the thread,
    not on the event loop, so that a cheap hash's failure also takes the place in the queue
    of hash threads that a costly one takes, and concurrent guesses queue alike."""
    started = time.perf_counter()
    try:
        hashed.verify(password)
        matched = True
    except PasswordMismatch:
        matched = False
    seconds = time.perf_counter() - started
    if not matched and seconds < floor:
        time.sleep(floor - seconds)
    return matched, seconds, time.perf_counter() - started


def check_token_user(user: str, identity: Identity) -> None:
    """A JWT given as the Basic password passes for the user-id ``*`` or its own user only
    (SPEC §7)."""
    if user not in ("*", identity.user):
        raise Unauthenticated("token_user_mismatch")


class TokenInBasicAuthenticator:
    """Basic credentials whose password is a JWT (jwt.accept_in_basic), for configurations
    without basic.users_file, verified by the Bearer scheme; with one, BasicAuthenticator
    takes tokens itself. The user-id must be ``*`` or the token's own user (SPEC §7). Here,
    not in bearer.py, so that a Bearer-only sidecar loads no password hashing."""

    scheme = "basic"

    def __init__(self, bearer: TokenVerifier) -> None:
        self._bearer = bearer

    def challenge(self, realm: str) -> str:
        return basic_challenge(realm)

    def not_ready(self) -> str | None:
        return None  # the bearer scheme reports the key set

    def begin(self, request: AuthRequest) -> Identity | Pending:
        return begin_token_as_password(self._bearer, *self._user_and_token(request))

    @staticmethod
    def _user_and_token(request: AuthRequest) -> tuple[str, str]:
        user, password = decode_basic(request.credentials.value)
        try:
            return user, password.decode("ascii")
        except UnicodeDecodeError:
            raise Unauthenticated("malformed") from None
