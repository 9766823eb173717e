"""Where the endpoint's key set comes from: the :class:`Fetcher` interface (refresher.py
decides when to call it).

Implementations: :class:`~authproxy.jwt.jwksfetch.HttpFetcher` (HTTPS; one process, and the
supervisor of several), :class:`~authproxy.cluster.keyshare.SupervisorFetcher` (a worker, whose
supervisor fetches for it) and :class:`NoEndpoint` (keys from a file alone).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext
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


class NoEndpoint:
    """The fetcher of a config with no endpoint (keys from jwks_file alone): nothing to
    fetch, and no HTTP client loaded for it. The refresher never calls :meth:`fetch` (the
    ring has no endpoint)."""

    schedules = False
    location = ""

    def running(self) -> AbstractAsyncContextManager[Any]:
        return nullcontext()

    async def fetch(self, trigger: str) -> Fetched | Relayed:
        raise JwksError("not_configured", "no jwks_endpoint or issuer to fetch from")
