"""The live key sets and their freshness: scheduled refresh, backoff, refresh on an unknown kid.

State changes in one place, on the event loop: a fetched document is parsed into a whole
:class:`KeySet` in a thread (a JWK Set of up to 1 MiB is thousands of key imports, a third of
a second) and then swapped in; a failed fetch keeps the last good set until it is older
than ``jwks_max_stale``, after which tokens get 503 and /readyz says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial

from aiohttp import web
from cachetools import TTLCache

from .config import JwtConfig
from .errors import KeysUnavailable
from .jwks import JwksError, KeySet, SourceState, VerifyKey, parse_jwks
from .jwksfetch import JwksClient, discovery_url, read_file, redact_url, tls_context
from .metrics import Metrics

log = logging.getLogger("authproxy.jwks")

MAX_AGE_FLOOR = 60  # a server's max-age cannot make us fetch more often than this...
MISS_REFRESH_INTERVAL = 60  # ...nor can unknown kids: one miss-triggered fetch per this long
BACKOFF_FIRST = 1.0  # seconds before the first retry; doubled per failure up to the interval
UNKNOWN_KID_CHARS = 1 << 20  # characters of unknown kids remembered, so hostile kids stay cheap


@dataclass(frozen=True, slots=True)
class SetupOutcome:
    """What ``POST /api/v2/jwks_setup`` reports: the endpoint's set in use, and why the fetch
    it reports failed (None if it did not; the set stays either way)."""

    keyset: KeySet | None
    error: JwksError | None
    rate_limited: bool  # no fetch for this call: it reports the last admin fetch
    retry_after: int  # seconds until a call may fetch again (0 when this one fetched)


_NOT_LOOKED: tuple[float, list[KeySet], frozenset[str]] = (-math.inf, [], frozenset())


class KeySource:
    """The endpoint's and the file's key sets, kept fresh. Run it with :meth:`lifetime`."""

    def __init__(
        self,
        config: JwtConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_fetched: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self.client = JwksClient(tls_context(config.jwks_ssl_ca_certificate))
        self._jwks_url = config.jwks_endpoint  # or discovered from the issuer
        # called after every fetch of the endpoint, whatever its outcome (to publish it)
        self._on_fetched = on_fetched
        self.endpoint: SourceState | None = None
        if config.has_endpoint:
            where = config.jwks_endpoint or discovery_url(config.issuer)
            self.endpoint = SourceState("endpoint", redact_url(where))
        self.file = SourceState("file", config.jwks_file) if config.jwks_file else None
        self.states = tuple(s for s in (self.endpoint, self.file) if s is not None)
        self._miss_interval = min(config.jwks_update_interval, MISS_REFRESH_INTERVAL)
        self._last_miss_refresh = -math.inf
        self._unknown_kids: TTLCache[str, int] = TTLCache(
            UNKNOWN_KID_CHARS, ttl=self._miss_interval, timer=clock, getsizeof=lambda n: n
        )
        self._inflight: asyncio.Future[KeySet] | None = None
        self._last_setup = -math.inf
        self._setup_error: JwksError | None = None
        self._trusted_memo = _NOT_LOOKED
        self._next_due = -math.inf
        self._wake = asyncio.Event()
        for state in self.states:
            metrics.jwks_age.labels(state.name).set_function(partial(self.age, state))
            metrics.jwks_keys.labels(state.name).set_function(state.key_count)

    # -- lifetime --------------------------------------------------------------------------

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: open the HTTP client, load the file and fetch once (so a healthy start
        serves no 503), then refresh in the background until the app stops."""
        async with self.client:
            if self.file is not None:
                await self.reload_file("startup")
            task = None
            if self.endpoint is not None:
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
            delay = self._next_due - self._clock()
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

    # -- lookups (no I/O) --------------------------------------------------------------------

    def trusted(self, state: SourceState) -> bool:
        """True while the state's set may verify tokens: loaded, and not stale."""
        if state.keyset is None or state.loaded_at is None:
            return False
        return state is not self.endpoint or (
            self._clock() - state.loaded_at <= self.config.jwks_max_stale
        )

    def _trusted_sets(self) -> list[KeySet]:
        return self._trusted_now()[1]

    def _trusted_now(self) -> tuple[float, list[KeySet], frozenset[str]]:
        """(until, sets, their key thumbprints): the trusted sets, as found by the last look
        and good until the clock passes ``until`` (when the endpoint's set turns stale) or
        a set is installed. Every decision asks; the answer changes a few times a day."""
        memo = self._trusted_memo
        if self._clock() <= memo[0]:
            return memo
        sets, until = [], math.inf
        for state in self.states:
            if state.keyset is not None and state.loaded_at is not None and self.trusted(state):
                sets.append(state.keyset)
                if state is self.endpoint:
                    until = state.loaded_at + self.config.jwks_max_stale
        self._trusted_memo = (until, sets, frozenset(t for ks in sets for t in ks.thumbprints))
        return self._trusted_memo

    def candidates(self, kid: str | None, alg: str) -> tuple[VerifyKey, ...]:
        """Trusted keys that may verify a token with this kid and alg, endpoint keys first.

        Raises KeysUnavailable when none fits and some source is not trusted (never loaded, or
        stale): the missing set might have held the key, so "invalid" would be a guess.
        """
        found = tuple(k for ks in self._trusted_sets() for k in ks.candidates(kid, alg))
        if not found and not all(self.trusted(s) for s in self.states):
            retry = math.ceil(max(0.0, self._next_due - self._clock()))
            raise KeysUnavailable("keys_unavailable", retry_after=max(1, min(300, retry)))
        return found

    def knows_kid(self, kid: str) -> bool:
        return any(ks.has_kid(kid) for ks in self._trusted_sets())

    def trusts(self, thumbprint: str) -> bool:
        """True while a key with this thumbprint is in a trusted set (for cached tokens)."""
        return thumbprint in self._trusted_now()[2]

    # -- refreshing ----------------------------------------------------------------------------

    def may_learn(self, kid: str) -> bool:
        """Whether a refresh might bring this kid: no trusted set has it, there is an
        endpoint, and no refresh lately came back without it."""
        return (self.endpoint is not None and kid not in self._unknown_kids
                and not self.knows_kid(kid))

    async def refresh_on_miss(self, kid: str) -> None:
        """Refresh for a token whose kid no trusted set has (unless it may not be learnt).

        All concurrent misses share one fetch, and misses start at most one fetch per
        MISS_REFRESH_INTERVAL; a kid still unknown after a fetch is remembered that long, so a
        flood of made-up kids costs the endpoint one request per interval and fails fast.
        """
        if not self.may_learn(kid):
            return
        if not await self.miss_refresh() or not self.knows_kid(kid):
            self._unknown_kids[kid] = len(kid) + 64

    async def miss_refresh(self) -> bool:
        """Join the fetch under way, or start a "miss" fetch unless one started within
        MISS_REFRESH_INTERVAL; False when rate-limited (nothing was fetched)."""
        if self._inflight is None or self._inflight.done():
            if self._clock() - self._last_miss_refresh < self._miss_interval:
                return False
            self._last_miss_refresh = self._clock()
        with contextlib.suppress(JwksError):
            await self.refresh("miss")
        return True

    async def setup_refresh(self) -> SetupOutcome:
        """Fetch now for jwks_setup, like :meth:`miss_refresh`: concurrent calls share one
        fetch (and its outcome), and calls start at most one fetch per MISS_REFRESH_INTERVAL
        (or jwks_update_interval, if shorter); a call within it fetches nothing and reports
        the set in use and the last admin fetch's error, if the endpoint still fails."""
        assert self.endpoint is not None
        joining = self._inflight is not None and not self._inflight.done()
        wait = self._last_setup + self._miss_interval - self._clock()
        if not joining and wait > 0:
            error = self._setup_error if self.endpoint.failures else None
            return SetupOutcome(self.endpoint.keyset, error, True, math.ceil(wait))
        if not joining:
            self._last_setup = self._clock()
        try:
            keyset = await self.refresh("admin")
        except JwksError as exc:
            self._setup_error = exc
            return SetupOutcome(self.endpoint.keyset, exc, False, 0)
        self._setup_error = None
        return SetupOutcome(keyset, None, False, 0)

    async def refresh(self, trigger: str) -> KeySet:
        """Fetch the endpoint's set now, sharing a fetch already under way; return the new set
        or raise JwksError (the old set stays). No rate limit: callers apply their own."""
        if self.endpoint is None:
            raise JwksError("not_configured", "no jwks_endpoint or issuer to fetch from")
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._fetch(self.endpoint, trigger))
            # retrieved here so that a fetch nobody awaits any more logs nothing
            self._inflight.add_done_callback(lambda f: f.cancelled() or f.exception())
        # shield: a waiter going away (client disconnect) must not cancel everyone's fetch
        return await asyncio.shield(self._inflight)

    async def _fetch(self, state: SourceState, trigger: str) -> KeySet:
        try:
            return await self._fetch_once(state, trigger)
        finally:
            if self._on_fetched is not None:
                self._on_fetched()

    async def _fetch_once(self, state: SourceState, trigger: str) -> KeySet:
        interval = self.config.jwks_update_interval
        try:
            if not self._jwks_url or (trigger == "admin" and not self.config.jwks_endpoint):
                self._jwks_url = await self.client.discover(self.config.issuer)
                state.location = redact_url(self._jwks_url)
            document = await self.client.fetch(self._jwks_url)
            keyset = await asyncio.to_thread(parse_jwks, document.body, self.config.algorithms,
                                             state.name)
        except JwksError as exc:
            self._failed(state, trigger, exc)
            backoff = BACKOFF_FIRST * 2 ** min(state.failures - 1, 30)
            self._next_due = self._clock() + min(backoff, interval)
            raise
        except Exception as exc:  # a bug must not stop the refresh loop; keep the old set
            log.exception("JWKS refresh failed unexpectedly", extra={"event": "jwks_fetch"})
            error = JwksError("internal_error", type(exc).__name__)
            self._failed(state, trigger, error)
            self._next_due = self._clock() + interval
            raise error from None
        self._install(state, keyset, trigger)
        self._next_due = self._clock() + self._interval(document.max_age)
        return keyset

    def _interval(self, max_age: int | None) -> float:
        """Seconds to the next scheduled fetch: the configured interval, or the server's
        max-age kept between MAX_AGE_FLOOR (or the interval, if shorter) and half of
        jwks_max_stale (or the interval, if longer), so that a failed refresh is retried
        before the set is distrusted."""
        interval = self.config.jwks_update_interval
        if max_age is None:
            return interval
        floor = min(interval, MAX_AGE_FLOOR)
        ceiling = max(interval, self.config.jwks_max_stale // 2)
        return min(max(max_age, floor), ceiling)

    async def reload_file(self, why: str) -> bool:
        """Re-read jwks_file (SIGHUP); False, keeping the old set, if it yields no key."""
        if self.file is None:
            return True
        try:
            keyset = await asyncio.to_thread(_read_jwks_file, self.config.jwks_file,
                                             self.config.algorithms)
        except JwksError as exc:
            self._failed(self.file, why, exc)
            return False
        self._install(self.file, keyset, why)
        return True

    def _install(self, state: SourceState, keyset: KeySet, trigger: str) -> None:
        self._trusted_memo = _NOT_LOOKED
        state.keyset, state.failures = keyset, 0
        state.loaded_at, state.fetched_at = self._clock(), self._wall_clock()
        for kid in keyset.kids:
            self._unknown_kids.pop(kid, None)
        self._metrics.jwks_fetches.labels(state.name, trigger, "ok").inc()
        log.info("JWKS loaded", extra={
            "event": "jwks_fetch", "source": state.name, "trigger": trigger, "outcome": "ok",
            "keys": len(keyset.keys), "skipped": keyset.skipped, "kids": keyset.logged_kids(),
        })

    def adopt(self, published: SourceState, next_due: float) -> None:
        """Take over the endpoint's state as another process fetched it (see keyshare):
        its set, load time (monotonic clocks are system-wide) and last error. Counts no
        fetch: the process that fetched counted it."""
        state = self.endpoint
        if state is None:
            return
        self._trusted_memo = _NOT_LOOKED
        if published.keyset is not None and published.keyset is not state.keyset:
            for kid in published.keyset.kids:
                self._unknown_kids.pop(kid, None)
        state.location, state.keyset = published.location, published.keyset
        state.loaded_at, state.fetched_at = published.loaded_at, published.fetched_at
        state.last_error, state.last_error_at = published.last_error, published.last_error_at
        state.failures = published.failures
        self._next_due = next_due

    def _failed(self, state: SourceState, trigger: str, exc: JwksError) -> None:
        state.failures += 1
        state.last_error, state.last_error_at = exc.detail, self._wall_clock()
        self._metrics.jwks_fetches.labels(state.name, trigger, exc.reason).inc()
        log.warning("JWKS fetch failed, keeping the previous set", extra={
            "event": "jwks_fetch", "source": state.name, "trigger": trigger,
            "outcome": exc.reason, "error": exc.detail, "failures": state.failures,
        })

    # -- reporting -----------------------------------------------------------------------------

    def age(self, state: SourceState) -> float:
        """Seconds since the state's set was loaded; +Inf before the first load."""
        return math.inf if state.loaded_at is None else self._clock() - state.loaded_at

    def next_fetch_in(self) -> float | None:
        """Seconds until the next scheduled fetch of the endpoint; None without an endpoint."""
        if self.endpoint is None:
            return None
        return max(0.0, self._next_due - self._clock())

    def not_ready(self) -> str | None:
        """What keeps Bearer from deciding, for /readyz; None when every source is usable."""
        for state in self.states:
            if state.keyset is None:
                why = state.last_error or "not loaded yet"
                return f"{state.name}: no usable signing key set loaded ({why})"
            if not self.trusted(state):
                return f"{state.name}: key set older than jwt.jwks_max_stale"
        return None


def _read_jwks_file(path: str, algorithms: tuple[str, ...]) -> KeySet:
    return parse_jwks(read_file(path), algorithms, "file")
