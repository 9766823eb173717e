"""Brute-force protection (SPEC §8.1): bans that cannot be turned against the service.

Two kinds of key: a client address (IPv6 grouped by /64: origin.py) and a user-id. The rules,
and what each one stops:

1. A banned address, or a banned user asked for from an address that is not one of its known
   addresses, is refused before anything else, a remembered password included: a ban never
   leaves a cheaper way to guess than no ban.
2. Attempts are reserved on arrival: verifications still running count toward
   ``max_failures``, so a concurrent burst gets no more hashes than a sequential one.
3. A refusal caused by a user's ban counts as a failure of the address that sent it: a
   distributed guesser's addresses get banned in turn.
4. A user's ban does not apply to an address the user authenticated from within
   ``known_address_ttl``: the owner keeps working while strangers are refused. The address's
   own ban still applies.
5. No address key (the proxy sent no client address): only the user key counts.

Every table is bounded: an attacker choosing fresh user-ids or addresses evicts the oldest
entries, which at worst forgets a counter early. Known addresses are only ever added by a
successful verification, so no one can add one without a password.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from ..errors import Unauthenticated

MAX_TRACKED = 100_000  # counters, bans and reservations, each, of each kind of key
MAX_KNOWN = 100_000  # (user, address) pairs that authenticated


class FailureTracker:
    """Failed attempts per key in a fixed window, and the bans they lead to.

    After ``max_failures`` failures within ``window`` seconds of the first one, the key is
    banned for ``ban_time`` seconds (0: never). The clock is injected so tests can move time.
    Keys are ``kind:name`` (``user:alice``, ``client:192.0.2.7``); each kind has tables of its
    own, so a flood of cheap address keys (rule 3 bans an address for ten refusals, no hash)
    can never evict a user's counter or ban.
    """

    def __init__(
        self,
        max_failures: int,
        window: float,
        ban_time: float,
        clock: Callable[[], float],
    ) -> None:
        self.max_failures = max_failures
        self.ban_time = ban_time
        self._clock = clock
        # Each value is a one-element list so a failure can be counted in place: re-setting a
        # TTLCache entry restarts its clock, and the window must run from the first failure.
        self._failures: dict[str, TTLCache[str, list[int]]] = defaultdict(
            lambda: TTLCache(MAX_TRACKED, ttl=window, timer=clock))
        # When each ban ends, oldest ban first. Plain dicts: every decision looks here while
        # anything is banned (a TTLCache lookup costs as much as the rest of a remembered
        # password's decision).
        self._bans: dict[str, dict[str, float]] = defaultdict(dict)

    @property
    def banning(self) -> bool:
        """Whether any ban may be in force (false: no lookup can find one). Drops the oldest
        ban of each kind if it has ended, so that this turns false again soon after the last
        ban ends."""
        found = False
        for bans in self._bans.values():
            if bans:
                oldest = next(iter(bans))
                if bans[oldest] <= self._clock():
                    del bans[oldest]
                found = found or bool(bans)
        return found

    def is_banned(self, key: str) -> bool:
        return self.ban_left(key) > 0

    def ban_left(self, key: str) -> float:
        """Seconds ``key`` stays banned; 0 when it is not."""
        bans = self._bans[_kind(key)]
        until = bans.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del bans[key]
            return 0.0
        return left

    def failures(self, key: str) -> int:
        counter = self._failures[_kind(key)].get(key)
        return 0 if counter is None else counter[0]

    def record_failure(self, *keys: str) -> list[str]:
        """Count one failure against each key; ban those that reach the threshold, and
        return them."""
        banned = []
        for key in keys:
            if not key:
                continue
            failures = self._failures[_kind(key)]
            counter = failures.get(key)
            if counter is None:
                counter = failures[key] = [0]
            counter[0] += 1
            if counter[0] >= self.max_failures and self.ban_time > 0:
                self.ban(key)
                banned.append(key)
        return banned

    def ban(self, key: str, seconds: float | None = None) -> None:
        """Ban ``key`` for ``seconds`` (default and at most ``ban_time``) from now, and forget
        its failures. A no-op when bans are off (``ban_time`` 0) or ``seconds`` is not
        positive."""
        seconds = self.ban_time if seconds is None else min(seconds, self.ban_time)
        if seconds <= 0 or not key:
            return
        kind = _kind(key)
        bans = self._bans[kind]
        bans.pop(key, None)  # to the new end: the oldest ban stays first
        bans[key] = self._clock() + seconds
        self._failures[kind].pop(key, None)
        if len(bans) > MAX_TRACKED:
            self._expire(bans)
            while len(bans) > MAX_TRACKED:  # all in force: the oldest of this kind goes
                del bans[next(iter(bans))]

    def _expire(self, bans: dict[str, float]) -> None:
        now = self._clock()
        for key in [key for key, until in bans.items() if until <= now]:
            del bans[key]

    def bans(self) -> list[tuple[str, float]]:
        """Every ban in force, with the seconds it has left."""
        now = self._clock()
        return [(key, until - now) for bans in self._bans.values()
                for key, until in bans.items() if until > now]

    def bans_in_force(self) -> int:
        for bans in self._bans.values():
            self._expire(bans)
        return sum(len(bans) for bans in self._bans.values())


def _kind(key: str) -> str:
    return key.partition(":")[0]


@dataclass(slots=True)
class Attempt:
    """One password verification (:meth:`Lockout.attempt`); settle it once."""

    user_key: str  # "user:<user-id>"
    client_key: str  # "client:<address key>", or "" when the proxy sent no client address
    known_pair: bytes  # MAC of (user-id, address); b"" without an address
    reserved: bool = False
    settled: bool = False


class Lockout:
    """The rules of the module docstring over one FailureTracker.

    ``on_known`` is told the MAC of each (user, address) pair that authenticated, for
    sharing with other workers (banshare.py); ``mac_key`` must then be the same in each.
    """

    def __init__(
        self,
        tracker: FailureTracker,
        known_address_ttl: float,
        clock: Callable[[], float],
        mac_key: bytes | None = None,
        on_known: Callable[[bytes], None] | None = None,
    ) -> None:
        self.tracker = tracker
        self._known: TTLCache[bytes, bool] | None = (
            TTLCache(MAX_KNOWN, ttl=known_address_ttl, timer=clock) if known_address_ttl > 0
            else None
        )
        self._pending: dict[str, int] = {}
        self._mac = hmac.new(mac_key or os.urandom(32), digestmod=hashlib.sha256)
        self._on_known = on_known

    def known_pair(self, user: str, address: str) -> bytes:
        """The MAC naming (user, address): never the raw pair, in memory or in a message."""
        if not address:
            return b""
        mac = self._mac.copy()
        mac.update(f"{user}\x00{address}".encode("utf-8", "surrogateescape"))
        return mac.digest()[:16]

    def check(self, user: str, address: str) -> None:
        """Rules 1, 3 and 4 for ``user`` from ``address`` (a client address key, "" for
        none): raise Unauthenticated("banned") for a refused request. Costs two dict lookups
        while anything is banned, nothing otherwise: every decision asks."""
        tracker = self.tracker
        if not tracker.banning:
            return
        # One key space for both kinds, each marked: a user-id may spell an address.
        client_key = "client:" + address if address else ""
        if client_key and tracker.is_banned(client_key):
            raise Unauthenticated("banned")
        if (tracker.is_banned("user:" + user)
                and not self.is_known(self.known_pair(user, address))):
            self.fail_address(client_key)
            raise Unauthenticated("banned")

    def attempt(self, user: str, address: str) -> Attempt:
        """The attempt of a verification for ``user`` from ``address``, to reserve and
        settle."""
        return Attempt("user:" + user, "client:" + address if address else "",
                       self.known_pair(user, address))

    def reserve(self, attempt: Attempt) -> None:
        """Rule 2: count the attempt as a failure-to-be on both keys before it is verified;
        raise Unauthenticated("attempt_limit") when failures and reservations already reach
        max_failures on a key that applies (the user key does not, from a known address),
        or Unauthenticated("banned") for a ban that began since :meth:`check` (a decision may
        wait between the two, and a ban forgets the failures that led to it)."""
        tracker = self.tracker
        known = self.is_known(attempt.known_pair)
        if tracker.is_banned(attempt.client_key):
            raise Unauthenticated("banned")
        if tracker.is_banned(attempt.user_key) and not known:
            self.fail_address(attempt.client_key)
            raise Unauthenticated("banned")
        limit = tracker.max_failures
        keys = [attempt.user_key]
        if attempt.client_key:
            keys.append(attempt.client_key)
        for key in keys:
            if key == attempt.user_key and known:
                continue
            if tracker.failures(key) + self._pending.get(key, 0) >= limit:
                if key == attempt.user_key:  # as rule 3: the user's limit, not this address's
                    self.fail_address(attempt.client_key)
                raise Unauthenticated("attempt_limit")
        if len(self._pending) >= MAX_TRACKED:
            raise Unauthenticated("overloaded")
        for key in keys:
            self._pending[key] = self._pending.get(key, 0) + 1
        attempt.reserved = True

    def settle(self, attempt: Attempt, verified: bool | None) -> None:
        """The attempt's verification ended: ``verified`` True (a success, whose address is
        now known), False (a failure on both keys), None (not decided: shutdown). Once:
        a second call does nothing."""
        if attempt.settled:
            return
        attempt.settled = True
        if attempt.reserved:
            attempt.reserved = False
            for key in (attempt.user_key, attempt.client_key):
                if key:
                    left = self._pending.get(key, 0) - 1
                    if left > 0:
                        self._pending[key] = left
                    else:
                        self._pending.pop(key, None)
        if verified:
            if attempt.known_pair:
                self.add_known(attempt.known_pair)
                if self._on_known is not None:
                    self._on_known(attempt.known_pair)
        elif verified is False:
            self.fail(attempt.user_key, attempt.client_key)

    def fail(self, *keys: str) -> None:
        self.tracker.record_failure(*keys)

    def fail_address(self, client_key: str) -> None:
        if client_key:
            self.fail(client_key)

    def is_known(self, pair: bytes) -> bool:
        return bool(pair) and self._known is not None and pair in self._known

    def add_known(self, pair: bytes) -> None:
        if self._known is not None and pair:
            self._known[pair] = True
