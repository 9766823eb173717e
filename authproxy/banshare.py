"""Brute-force bans for the whole service when there are several worker processes.

Each worker still counts failures in its own FailureTracker, so a ban it reaches applies at
once and no decision ever waits for the supervisor. It also reports the keys of every failure
(user names and client addresses, as in its logs; never a password) in a ``failure`` notice,
at most one per event-loop turn. The supervisor counts every worker's failures in one
FailureTracker of the same configuration (:class:`BanCoordinator`); when a key becomes banned
there, it sends ``ban`` to every worker, and each bans that key for ``ban_time`` from then.
So N workers allow about ``max_failures`` attempts in all, not N times as many: a few more
only while a ban is on its way.

A worker that starts later (a restart) is not sent the bans already in force: the first
failure it reports for a key the supervisor bans gets it that ban (a worker counts no
failure against a key it bans, so a report means it did not know).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .config import BasicConfig
from .ipc import MasterLink, Message
from .lockout import FailureTracker

# Longer keys (only an odd user name can be) are counted in their worker alone.
MAX_KEY = 256
# Keys in one notice: far below ipc.MAX_MESSAGE even if every character is JSON-escaped.
KEYS_PER_NOTICE = 100


class SharedFailureTracker(FailureTracker):
    """A worker's FailureTracker: counts here, reports to the supervisor, adopts its bans."""

    def __init__(
        self, config: BasicConfig, clock: Callable[[], float], *, link: MasterLink
    ) -> None:
        super().__init__(config.max_failures, config.failure_window, config.ban_time, clock)
        self._link = link
        self._unsent: list[str] = []

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        self._link.subscribe("ban", self._on_ban)
        try:
            yield
        finally:
            self._link.unsubscribe("ban")

    def record_failure(self, *keys: str) -> None:
        super().record_failure(*keys)
        reported = [key for key in keys if key and len(key) <= MAX_KEY]
        if reported and not self._unsent:
            asyncio.get_running_loop().call_soon(self._send)
        self._unsent.extend(reported)

    def _send(self) -> None:
        keys, self._unsent = self._unsent, []
        for start in range(0, len(keys), KEYS_PER_NOTICE):
            self._link.notify({"op": "failure", "keys": keys[start:start + KEYS_PER_NOTICE]})

    def _on_ban(self, notice: Message) -> None:
        key = notice.get("key")
        if isinstance(key, str):
            self.ban(key)


class BanCoordinator:
    """The supervisor's side: every worker's failures in one tracker, its bans sent to all.

    ``broadcast`` sends a notice to every worker.
    """

    def __init__(
        self, config: BasicConfig, broadcast: Callable[[Message], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tracker = FailureTracker(config.max_failures, config.failure_window,
                                       config.ban_time, clock)
        self._broadcast = broadcast

    def count(self, notice: Message, reply: Callable[[Message], None]) -> None:
        """Count a worker's ``failure`` notice; ``reply`` sends to that worker alone."""
        keys = notice.get("keys")
        if not isinstance(keys, list):
            return
        for key in keys:
            if not isinstance(key, str) or not key or len(key) > MAX_KEY:
                continue
            if self._tracker.is_banned(key):
                reply({"op": "ban", "key": key})  # it did not know: see the module docstring
                continue
            self._tracker.record_failure(key)
            if self._tracker.is_banned(key):
                self._broadcast({"op": "ban", "key": key})
