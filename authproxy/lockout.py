"""Brute-force protection: count failures per key, ban past a threshold, in bounded memory."""

from __future__ import annotations

from collections.abc import Callable

from cachetools import TTLCache

# An attacker choosing fresh user names or addresses cannot grow these past this many
# entries; the oldest are evicted first, which at worst forgets a counter early.
MAX_TRACKED = 100_000


class FailureTracker:
    """Failed attempts per key (a user name or a client address) in a fixed window.

    After ``max_failures`` failures within ``window`` seconds of the first one, the key is
    banned for ``ban_time`` seconds. The clock is injected so tests can move time.
    """

    def __init__(
        self,
        max_failures: int,
        window: float,
        ban_time: float,
        clock: Callable[[], float],
    ) -> None:
        self.max_failures = max_failures
        # Each value is a one-element list so a failure can be counted in place: re-setting a
        # TTLCache entry restarts its clock, and the window must run from the first failure.
        self._failures: TTLCache[str, list[int]] = TTLCache(MAX_TRACKED, ttl=window, timer=clock)
        self._bans: TTLCache[str, bool] | None = (
            TTLCache(MAX_TRACKED, ttl=ban_time, timer=clock) if ban_time > 0 else None
        )

    def is_banned(self, *keys: str) -> bool:
        if self._bans is None:
            return False
        return any(key in self._bans for key in keys if key)

    def record_failure(self, *keys: str) -> None:
        """Count one failure against each key; ban the keys that reach the threshold."""
        for key in keys:
            if not key:
                continue
            counter = self._failures.get(key)
            if counter is None:
                counter = self._failures[key] = [0]
            counter[0] += 1
            if counter[0] >= self.max_failures:
                self.ban(key)

    def ban(self, key: str) -> None:
        """Ban ``key`` for ``ban_time`` from now (again, if it was), and forget its failures.
        A no-op when bans are off (``ban_time`` 0)."""
        if self._bans is None or not key:
            return
        self._bans[key] = True
        self._failures.pop(key, None)

    def bans_in_force(self) -> int:
        if self._bans is None:
            return 0
        self._bans.expire()
        return len(self._bans)
