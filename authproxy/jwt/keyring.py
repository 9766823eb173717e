"""The trusted key ring: the key set in use per source, its age and staleness, and lookups.

Each source (the ``endpoint``, fetched; the ``file``, read) has one :class:`SourceState`. A
new set is installed whole (:meth:`KeyRing.install`) or, in a worker, adopted whole as
another process fetched it (:meth:`KeyRing.adopt`); a failure is recorded and the last good
set stays (:meth:`KeyRing.failed`) until it is older than ``jwks_max_stale``, after which
tokens get 503 and /readyz says why. Nothing here does I/O or waits: the ring is what every
decision reads, and the refresher (refresher.py) is what changes it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import partial

from ..config import JwtConfig
from ..errors import KeysUnavailable
from ..obs.metrics import Metrics
from .jwks import JwksError, KeySet, SourceState, VerifyKey
from .locations import discovery_url, redact_url

log = logging.getLogger("authproxy.jwt.jwks")

_NOT_LOOKED: tuple[float, list[KeySet], frozenset[str]] = (-math.inf, [], frozenset())


class KeyRing:
    """The endpoint's and the file's key sets as they are now; see the module docstring.

    ``next_due`` is when the endpoint's set is next expected to change (monotonic): set by
    whoever schedules the fetches, it is the Retry-After of a 503 for missing keys.
    ``on_new_set`` observers are called with each set installed or adopted.
    """

    def __init__(
        self,
        config: JwtConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_stale = config.jwks_max_stale
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self.endpoint: SourceState | None = None
        if config.has_endpoint:
            where = config.jwks_endpoint or discovery_url(config.issuer)
            self.endpoint = SourceState("endpoint", redact_url(where))
        self.file = SourceState("file", config.jwks_file) if config.jwks_file else None
        self.states = tuple(s for s in (self.endpoint, self.file) if s is not None)
        self.next_due = -math.inf
        self.on_new_set: list[Callable[[KeySet], None]] = []
        self._trusted_memo = _NOT_LOOKED
        for state in self.states:
            metrics.jwks_age.labels(state.name).set_function(partial(self.age, state))
            metrics.jwks_keys.labels(state.name).set_function(state.key_count)

    # -- lookups (every decision) --------------------------------------------------------------

    def trusted(self, state: SourceState) -> bool:
        """True while the state's set may verify tokens: loaded, and not stale."""
        if state.keyset is None or state.loaded_at is None:
            return False
        return state is not self.endpoint or (
            self._clock() - state.loaded_at <= self._max_stale
        )

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
                    until = state.loaded_at + self._max_stale
        self._trusted_memo = (until, sets, frozenset(t for ks in sets for t in ks.thumbprints))
        return self._trusted_memo

    def candidates(self, kid: str | None, alg: str) -> tuple[VerifyKey, ...]:
        """Trusted keys that may verify a token with this kid and alg, endpoint keys first.

        Raises KeysUnavailable when none fits and some source is not trusted (never loaded, or
        stale): the missing set might have held the key, so "invalid" would be a guess.
        """
        found = tuple(k for ks in self._trusted_now()[1] for k in ks.candidates(kid, alg))
        if not found and not all(self.trusted(s) for s in self.states):
            retry = math.ceil(max(0.0, self.next_due - self._clock()))
            raise KeysUnavailable("keys_unavailable", retry_after=max(1, min(300, retry)))
        return found

    def knows_kid(self, kid: str) -> bool:
        return any(ks.has_kid(kid) for ks in self._trusted_now()[1])

    def trusts(self, thumbprint: str) -> bool:
        """True while a key with this thumbprint is in a trusted set (for cached tokens)."""
        return thumbprint in self._trusted_now()[2]

    # -- changes (the refresher, or a worker's fetcher) ----------------------------------------

    def install(self, state: SourceState, keyset: KeySet, trigger: str) -> None:
        """Put a set this process fetched or read in use; counted and logged."""
        self._trusted_memo = _NOT_LOOKED
        state.keyset, state.failures = keyset, 0
        state.loaded_at, state.fetched_at = self._clock(), self._wall_clock()
        for observer in self.on_new_set:
            observer(keyset)
        self._metrics.jwks_fetches.labels(state.name, trigger, "ok").inc()
        log.info("JWKS loaded", extra={
            "event": "jwks_fetch", "source": state.name, "trigger": trigger, "outcome": "ok",
            "keys": len(keyset.keys), "skipped": keyset.skipped, "kids": keyset.logged_kids(),
        })

    def failed(self, state: SourceState, trigger: str, exc: JwksError) -> None:
        """Record a fetch or read that yielded no set; the last good set stays."""
        state.failures += 1
        state.last_error, state.last_error_at = exc.detail, self._wall_clock()
        self._metrics.jwks_fetches.labels(state.name, trigger, exc.reason).inc()
        log.warning("JWKS fetch failed, keeping the previous set", extra={
            "event": "jwks_fetch", "source": state.name, "trigger": trigger,
            "outcome": exc.reason, "error": exc.detail, "failures": state.failures,
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
            for observer in self.on_new_set:
                observer(published.keyset)
        state.location, state.keyset = published.location, published.keyset
        state.loaded_at, state.fetched_at = published.loaded_at, published.fetched_at
        state.last_error, state.last_error_at = published.last_error, published.last_error_at
        state.failures = published.failures
        self.next_due = next_due

    # -- reporting -------------------------------------------------------------------------------

    def age(self, state: SourceState) -> float:
        """Seconds since the state's set was loaded; +Inf before the first load."""
        return math.inf if state.loaded_at is None else self._clock() - state.loaded_at

    def next_fetch_in(self) -> float | None:
        """Seconds until the next scheduled fetch of the endpoint; None without an endpoint."""
        if self.endpoint is None:
            return None
        return max(0.0, self.next_due - self._clock())

    def not_ready(self) -> str | None:
        """What keeps Bearer from deciding, for /readyz; None when every source is usable."""
        for state in self.states:
            if state.keyset is None:
                why = state.last_error or "not loaded yet"
                return f"{state.name}: no usable signing key set loaded ({why})"
            if not self.trusted(state):
                return f"{state.name}: key set older than jwt.jwks_max_stale"
        return None
