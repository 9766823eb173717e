"""The Bearer scheme's key source: a key ring (keyring.py) and its refresher (refresher.py).

:func:`key_source` builds the one-process kind, fetching over HTTPS; a worker's fetches
through its supervisor instead (keyshare.py). The state is the ring's; the refresher is
the only thing that changes it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from ..config import JwtConfig
from ..obs.metrics import Metrics
from .fetcher import Fetcher
from .keyring import KeyRing
from .refresher import Refresher


class KeySource:
    """A key ring kept fresh by a refresher: what the Bearer scheme and the admin API hold.
    Run it with :meth:`lifetime`. Lookups go to ``ring``, refreshes to ``refresher``."""

    def __init__(self, ring: KeyRing, refresher: Refresher) -> None:
        self.ring = ring
        self.refresher = refresher

    async def lifetime(self, app: object) -> AsyncIterator[None]:
        """cleanup_ctx: the refresher runs from the app's start to its end."""
        async with self.refresher.running():
            yield


def key_source(
    config: JwtConfig,
    metrics: Metrics,
    fetcher: Fetcher,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> KeySource:
    """The key source of one process: the endpoint's set fetched here by ``fetcher``
    (jwksfetch.HttpFetcher: the HTTP client is the app's to choose, not the scheme's)."""
    ring = KeyRing(config, metrics, clock=clock, wall_clock=wall_clock)
    return KeySource(ring, Refresher(ring, fetcher, config, clock=clock))
