"""Where the endpoint's key set comes from: the :class:`Fetcher` interface (refresher.py
decides when to call it).

Two implementations: :class:`~authproxy.jwt.jwksfetch.HttpFetcher` (HTTPS; one process, and the
supervisor of several) and :class:`~authproxy.cluster.keyshare.SupervisorFetcher` (a worker, whose
supervisor fetches for it).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from .jwks import JwksError, KeySet


@dataclass(frozen=True, slots=True)
class Fetched:
    """A set obtained by this process, to install: and the server's max-age, if it said."""

    keyset: KeySet
    max_age: int | None


@dataclass(frozen=True, slots=True)
class Relayed:
    """Another process fetched (or declined to: its rate limit) and the fetcher has adopted
    its outcome into the ring already; ``error`` is why that fetch failed, if it did."""

    error: JwksError | None
    rate_limited: bool = False
    retry_after: int = 0


class Fetcher(Protocol):
    """How the endpoint's set is obtained; see the module docstring."""

    # True: the refresher fetches at start and on schedule; False: another process does,
    # and the fetcher brings its outcomes into the ring as they come.
    schedules: bool

    @property
    def location(self) -> str:
        """Where the set comes from, fit for logs and the admin API."""
        ...

    def running(self) -> AbstractAsyncContextManager[Any]:
        """The fetcher's resources (an HTTP session, a subscription), for the app's life."""
        ...

    async def fetch(self, trigger: str) -> Fetched | Relayed:
        """Obtain the endpoint's set now; raise JwksError when no set came of it."""
        ...
