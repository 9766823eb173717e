"""Brute-force protection for the whole service when there are several worker processes.

Each worker still counts failures and reserves attempts in its own Lockout, so a ban it
reaches applies at once and no decision ever waits for the supervisor. It also reports the
keys of every failure (user names and client addresses, as in its logs; never a password) in
a :class:`~authproxy.cluster.protocol.Failure` notice, at most one per event-loop turn, and the MAC
of every (user, address) pair that authenticated in a :class:`~authproxy.cluster.protocol.Known`
notice (never the pair itself). The supervisor
(:class:`BanCoordinator`) counts every worker's failures in one FailureTracker of the same
configuration; when a key becomes banned there, it sends a ``Ban`` to every worker, and each
bans that key for ``ban_time`` from then. Known pairs it sends on to every worker. So N
workers allow about ``max_failures`` failures in all, not N times as many: a few more only
while a ban is on its way. Reservations stay each worker's own: a concurrent burst spread
over N workers is bounded by N times ``max_failures`` before the first ban arrives.

A worker that starts later (a restart) gets the bans in force and the known pairs from the
supervisor before it serves (:meth:`BanCoordinator.state_messages`, read by
``ipc.MasterLink.open``), and the MAC key, so that its pairs are the others'.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator

from cachetools import TTLCache

from ..config import BasicConfig
from ..core.lockout import MAX_KNOWN, FailureTracker, Lockout
from .ipc import MasterLink
from .protocol import Ban, Failure, Known, LockoutEnd, Message
from .protocol import Lockout as LockoutState

# Longer keys (only an odd user name can be) are counted in their worker alone.
MAX_KEY = 256
# Keys in one notice: far below ipc.MAX_MESSAGE even if every character is JSON-escaped.
KEYS_PER_NOTICE = 100


class SharedFailureTracker(FailureTracker):
    """A worker's FailureTracker: counts here, reports to the supervisor, adopts its bans."""

    def __init__(self, config: BasicConfig, clock: Callable[[], float], link: MasterLink) -> None:
        super().__init__(config.max_failures, config.failure_window, config.ban_time, clock)
        self._link = link
        self._unsent: list[str] = []

    def record_failure(self, *keys: str) -> list[str]:
        banned = super().record_failure(*keys)
        reported = [key for key in keys if key and len(key) <= MAX_KEY]
        if reported and not self._unsent:
            asyncio.get_running_loop().call_soon(self._send)
        self._unsent.extend(reported)
        return banned

    def _send(self) -> None:
        keys, self._unsent = self._unsent, []
        for start in range(0, len(keys), KEYS_PER_NOTICE):
            self._link.notify(Failure(tuple(keys[start:start + KEYS_PER_NOTICE])))


class SharedLockout(Lockout):
    """A worker's Lockout: starts from the supervisor's ``state`` (see
    :meth:`BanCoordinator.state_messages`), shares the pairs that authenticate here and adopts
    the bans and pairs the supervisor sends."""

    def __init__(
        self, config: BasicConfig, clock: Callable[[], float], link: MasterLink,
        state: LockoutState,
    ) -> None:
        super().__init__(
            SharedFailureTracker(config, clock, link), config.known_address_ttl, clock,
            mac_key=bytes.fromhex(state.mac_key),
            on_known=lambda pair: link.notify(Known(pair.hex())),
        )
        self._link = link
        for key, seconds in state.bans:
            self.tracker.ban(key, seconds)
        for pair in state.known:
            self.add_known(bytes.fromhex(pair))

    async def lifetime(self, app: object) -> AsyncIterator[None]:
        self._link.subscribe(Ban, self._on_ban)
        self._link.subscribe(Known, self._on_known_pair)
        try:
            yield
        finally:
            self._link.unsubscribe(Ban)
            self._link.unsubscribe(Known)

    def _on_ban(self, notice: Ban) -> None:
        self.tracker.ban(notice.key, notice.seconds)

    def _on_known_pair(self, notice: Known) -> None:
        self.add_known(bytes.fromhex(notice.pair))


class BanCoordinator:
    """The supervisor's side: every worker's failures in one tracker, its bans and the known
    pairs sent to all. ``broadcast`` sends a notice to every worker."""

    def __init__(
        self, config: BasicConfig, broadcast: Callable[[Message], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tracker = FailureTracker(config.max_failures, config.failure_window,
                                       config.ban_time, clock)
        self._known: TTLCache[str, bool] | None = (
            TTLCache(MAX_KNOWN, ttl=config.known_address_ttl, timer=clock)
            if config.known_address_ttl > 0 else None
        )
        self._broadcast = broadcast
        self.mac_key = os.urandom(32)

    def count(self, notice: Failure, reply: Callable[[Message], None]) -> None:
        """Count a worker's failures; ``reply`` sends to that worker alone."""
        for key in notice.keys:
            if not key or len(key) > MAX_KEY:
                continue
            left = self._tracker.ban_left(key)
            if left > 0:
                # A worker counts no failure against a key it bans: it did not know of this
                # ban (it was on its way).
                reply(Ban(key, left))
                continue
            if self._tracker.record_failure(key):
                self._broadcast(Ban(key, self._tracker.ban_time))

    def known(self, notice: Known) -> None:
        """A worker's pair that authenticated: remember it, and tell every worker."""
        if self._known is None:
            return
        self._known[notice.pair] = True
        self._broadcast(notice)

    def state_messages(self) -> Iterator[Message]:
        """What a starting worker reads before it serves: Lockout messages (the MAC key,
        the bans in force with the seconds they have left, the known pairs), then
        LockoutEnd."""
        yield LockoutState(mac_key=self.mac_key.hex())
        bans = self._tracker.bans()
        for start in range(0, len(bans), KEYS_PER_NOTICE):
            yield LockoutState(bans=tuple(bans[start:start + KEYS_PER_NOTICE]))
        known = list(self._known.keys()) if self._known is not None else []
        for start in range(0, len(known), 10 * KEYS_PER_NOTICE):
            yield LockoutState(known=tuple(known[start:start + 10 * KEYS_PER_NOTICE]))
        yield LockoutEnd()
