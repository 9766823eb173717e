"""Keeping the key ring fresh: the schedule, backoff, refresh on an unknown kid, file reload.

The :class:`Refresher` decides *when* the endpoint's set is obtained; a
:class:`~authproxy.jwt.fetcher.Fetcher` says *how* (the shape of Ory Oathkeeper's
``credentials.Fetcher``: the cache and its schedule on one side, getting the keys on the
other):

- :class:`~authproxy.jwt.jwksfetch.HttpFetcher` fetches over HTTPS (one process, and the
  supervisor of several). It answers ``Fetched``; the refresher installs the set in the
  ring (counted, logged) and schedules the next fetch from the server's max-age, or records
  the failure and backs off.
- :class:`~authproxy.cluster.keyshare.SupervisorFetcher` (a worker) asks the supervisor, which
  fetches for the whole service and publishes the outcome; the fetcher adopts it into the
  ring and answers ``Relayed``. The schedule is the supervisor's, so the refresher runs
  none here.

Either way, concurrent refreshes share one fetch, a fetch nobody awaits any more is not
cancelled, and misses and jwks_setup calls are rate-limited here (a worker's supervisor
rate-limits them again for the whole service).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from cachetools import TTLCache

from ..config import JwtConfig
from .fetcher import Fetcher, Relayed
from .jwks import JwksError, KeySet, SourceState, parse_jwks
from .keyring import KeyRing
from .locations import read_file

log = logging.getLogger("authproxy.jwt.jwks")

MAX_AGE_FLOOR = 60  # a server's max-age cannot make us fetch more often than this...
MISS_REFRESH_INTERVAL = 60  # ...nor can unknown kids: one miss-triggered fetch per this long
BACKOFF_FIRST = 1.0  # seconds before the first retry; doubled per failure up to the interval
# Seconds a token with an unknown kid waits for the fetch it started or joined. Past it the
# token is judged by the keys at hand (401) while the fetch goes on: a slow endpoint must
# not hold every such request for the whole fetch timeout (10 s), nor let made-up kids
# hold connections that long.
MISS_WAIT = 2.0
UNKNOWN_KID_CHARS = 1 << 20  # characters of unknown kids remembered, so hostile kids stay cheap


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """What one refresh came to, as ``POST /api/v2/jwks_setup`` reports it: the endpoint's
    set in use, and why the fetch failed (None if it did not; the set stays either way)."""

    keyset: KeySet | None
    error: JwksError | None
    rate_limited: bool  # no fetch for this call: it reports the last admin fetch
    retry_after: int  # seconds until a call may fetch again (0 when this one fetched)


class Refresher:
    """Keeps ``ring`` fresh through ``fetcher``. Run it with :meth:`running`.

    ``on_fetched`` is called after every attempt at the endpoint, whatever its outcome (the
    supervisor publishes it to the workers).
    """

    def __init__(
        self,
        ring: KeyRing,
        fetcher: Fetcher,
        config: JwtConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_fetched: Callable[[], None] | None = None,
    ) -> None:
        self.ring = ring
        self.fetcher = fetcher
        self._config = config
        self._clock = clock
        self._on_fetched = on_fetched
        self._miss_interval = min(config.jwks_update_interval, MISS_REFRESH_INTERVAL)
        self._last_miss_refresh = -math.inf
        self._unknown_kids: TTLCache[str, int] = TTLCache(
            UNKNOWN_KID_CHARS, ttl=self._miss_interval, timer=clock, getsizeof=lambda n: n
        )
        ring.on_new_set.append(self._forget_unknown_kids)
        self._inflight: asyncio.Future[RefreshOutcome] | None = None
        self._last_setup = -math.inf
        self._last_error: JwksError | None = None  # of the last fetch, whatever started it
        self._wake = asyncio.Event()
        self.miss_wait = MISS_WAIT

    # -- lifetime --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Load the file and, if this process schedules, fetch once (so a healthy start
        serves no 503), then refresh in the background until the end."""
        async with self.fetcher.running():
            if self.ring.file is not None:
                await self.reload_file("startup")
            task = None
            if self.ring.endpoint is not None and self.fetcher.schedules:
                with contextlib.suppress(JwksError):
                    await self.refresh("startup")
                task = asyncio.create_task(self._run())
            try:
                yield
            finally:
                for pending in (task, self._inflight):
                    if pending is not None and not pending.done():
                        pending.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await pending

    async def _run(self) -> None:
        while True:
            delay = self.ring.next_due - self._clock()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            with contextlib.suppress(JwksError):
                await self.refresh("scheduled")

    def wake(self) -> None:
        """Make the refresh loop look at the clock again (after tests move it, for one)."""
        self._wake.set()

    # -- on demand -------------------------------------------------------------------------

    def may_learn(self, kid: str) -> bool:
        """Whether a refresh might bring this kid: no trusted set has it, there is an
        endpoint, and no refresh lately came back without it."""
        return (self.ring.endpoint is not None and kid not in self._unknown_kids
                and not self.ring.knows_kid(kid))

    async def refresh_on_miss(self, kid: str) -> None:
        """Refresh for a token whose kid no trusted set has (unless it may not be learnt).

        All concurrent misses share one fetch, and misses start at most one fetch per
        MISS_REFRESH_INTERVAL; a kid still unknown after a fetch is remembered that long, so a
        flood of made-up kids costs the endpoint one request per interval and fails fast.
        The wait is at most ``miss_wait`` seconds: past it the fetch goes on without this
        token, and the kid is not remembered as unknown (the fetch may yet bring it).
        """
        if not self.may_learn(kid):
            return
        try:
            async with asyncio.timeout(self.miss_wait):
                fetched = await self.miss_refresh()
        except TimeoutError:
            return
        if not fetched or not self.ring.knows_kid(kid):
            self._unknown_kids[kid] = len(kid) + 64

    async def miss_refresh(self) -> bool:
        """Join the fetch under way, or start a "miss" fetch unless one started within
        MISS_REFRESH_INTERVAL; False when rate-limited (nothing was fetched)."""
        if self._inflight is None or self._inflight.done():
            if self._clock() - self._last_miss_refresh < self._miss_interval:
                return False
            self._last_miss_refresh = self._clock()
        await self._shared("miss")
        return True

    async def setup_refresh(self) -> RefreshOutcome:
        """Fetch now for jwks_setup, like :meth:`miss_refresh`: concurrent calls share one
        fetch (and its outcome), and calls start at most one fetch per MISS_REFRESH_INTERVAL
        (or jwks_update_interval, if shorter); a call within it fetches nothing and reports
        the set in use and, while the endpoint still fails, the last fetch's error (whatever
        started it: a scheduled fetch failing after an admin one succeeded must not read as
        a healthy endpoint)."""
        endpoint = self.ring.endpoint
        assert endpoint is not None
        joining = self._inflight is not None and not self._inflight.done()
        wait = self._last_setup + self._miss_interval - self._clock()
        if not joining and wait > 0:
            error = self._last_error if endpoint.failures else None
            return RefreshOutcome(endpoint.keyset, error, True, math.ceil(wait))
        if not joining:
            self._last_setup = self._clock()
        return await self._shared("admin")

    async def refresh(self, trigger: str) -> KeySet:
        """Fetch the endpoint's set now, sharing a fetch already under way; return the new set
        or raise JwksError (the old set stays). No rate limit: callers apply their own."""
        outcome = await self._shared(trigger)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.keyset is not None  # no error: a set is in use
        return outcome.keyset

    async def _shared(self, trigger: str) -> RefreshOutcome:
        if self.ring.endpoint is None:
            error = JwksError("not_configured", "no jwks_endpoint or issuer to fetch from")
            return RefreshOutcome(None, error, False, 0)
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._attempt(self.ring.endpoint, trigger))
            # retrieved here so that a fetch nobody awaits any more logs nothing
            self._inflight.add_done_callback(lambda f: f.cancelled() or f.exception())
        # shield: a waiter going away (client disconnect) must not cancel everyone's fetch
        return await asyncio.shield(self._inflight)

    async def _attempt(self, state: SourceState, trigger: str) -> RefreshOutcome:
        try:
            outcome = await self._fetch(state, trigger)
            self._last_error = outcome.error
            return outcome
        finally:
            if self._on_fetched is not None:
                self._on_fetched()

    async def _fetch(self, state: SourceState, trigger: str) -> RefreshOutcome:
        interval = self._config.jwks_update_interval
        try:
            got = await self.fetcher.fetch(trigger)
        except JwksError as exc:
            state.location = self.fetcher.location
            self.ring.failed(state, trigger, exc)
            backoff = BACKOFF_FIRST * 2 ** min(state.failures - 1, 30)
            self.ring.next_due = self._clock() + min(backoff, interval)
            return RefreshOutcome(state.keyset, exc, False, 0)
        except Exception as exc:  # a bug must not stop the refresh loop; keep the old set
            log.exception("JWKS refresh failed unexpectedly", extra={"event": "jwks_fetch"})
            error = JwksError("internal_error", type(exc).__name__)
            self.ring.failed(state, trigger, error)
            self.ring.next_due = self._clock() + interval
            return RefreshOutcome(state.keyset, error, False, 0)
        if isinstance(got, Relayed):
            failure = got.error
            if failure is None and state.keyset is None:
                failure = JwksError("internal_error", "no key set published")
            return RefreshOutcome(state.keyset, failure, got.rate_limited, got.retry_after)
        state.location = self.fetcher.location
        self.ring.install(state, got.keyset, trigger)
        self.ring.next_due = self._clock() + self._interval(got.max_age)
        return RefreshOutcome(got.keyset, None, False, 0)

    def _interval(self, max_age: int | None) -> float:
        """Seconds to the next scheduled fetch: the configured interval, or the server's
        max-age kept between MAX_AGE_FLOOR (or the interval, if shorter) and half of
        jwks_max_stale (or the interval, if longer), so that a failed refresh is retried
        before the set is distrusted."""
        interval = self._config.jwks_update_interval
        if max_age is None:
            return interval
        floor = min(interval, MAX_AGE_FLOOR)
        ceiling = max(interval, self._config.jwks_max_stale // 2)
        return min(max(max_age, floor), ceiling)

    def _forget_unknown_kids(self, keyset: KeySet) -> None:
        for kid in keyset.kids:
            self._unknown_kids.pop(kid, None)

    # -- the file ----------------------------------------------------------------------------

    async def reload_file(self, why: str) -> bool:
        """Re-read jwks_file (SIGHUP); False, keeping the old set, if it yields no key."""
        if self.ring.file is None:
            return True
        try:
            keyset = await asyncio.to_thread(_read_jwks_file, self._config.jwks_file,
                                             self._config.algorithms)
        except JwksError as exc:
            self.ring.failed(self.ring.file, why, exc)
            return False
        self.ring.install(self.ring.file, keyset, why)
        return True


def _read_jwks_file(path: str, algorithms: tuple[str, ...]) -> KeySet:
    return parse_jwks(read_file(path), algorithms, "file")
