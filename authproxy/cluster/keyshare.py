"""One JWKS fetch schedule for many worker processes.

The supervisor runs the only refresher that fetches (:class:`KeyPublisher`). After every fetch
of the endpoint, whatever its outcome, it writes the endpoint's state to ``STATE_FILE`` in its
private directory and tells every worker. The state holds the last *validated* set (only the
keys that passed validation, as their public JWKs), when it was loaded (on the system-wide
monotonic clock, so staleness is judged as in one process), and the last error. The file is
written to a temporary file of mode 0600 and renamed over the old one: a reader sees the old
file or the new one, never part of one.

Workers never fetch: their refresher's fetcher is :class:`SupervisorFetcher`. It loads the
file at start and on each ``Published`` notice (read and parsed in a thread, adopted into the
worker's key ring on the event loop if newer than what it holds); an unknown kid or
``POST /api/v2/jwks_setup`` asks the supervisor, whose refresher shares a fetch under way and
rate-limits misses and jwks_setup for the whole service, and waits for its answer (which says
when that rate limit declined to fetch). The ``jwt.jwks_file`` stays each worker's own
(re-read on SIGHUP).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from ..config import JwtConfig
from ..jwt.fetcher import Relayed
from ..jwt.jwks import JwksError, KeySet, SourceState, parse_jwks
from ..jwt.jwksfetch import FETCH_TIMEOUT, HttpFetcher
from ..jwt.keyring import KeyRing
from ..jwt.keysource import KeySource
from ..jwt.refresher import Refresher
from ..obs.metrics import Metrics
from .ipc import MasterLink
from .protocol import Published, RefreshReply, RefreshRequest

log = logging.getLogger("authproxy.jwt.jwks")

STATE_FILE = "jwks-endpoint.json"
# A worker waits this long for the supervisor's answer: a discovery and a fetch, and some.
REPLY_TIMEOUT = 2 * FETCH_TIMEOUT + 5


def write_state(path: Path, ring: KeyRing, generation: int) -> None:
    """Publish ``ring``'s endpoint state atomically (see the module docstring)."""
    state = ring.endpoint
    assert state is not None
    keyset = state.keyset
    members = None if keyset is None else [k.jwk.export_public(as_dict=True) for k in keyset.keys]
    document: dict[str, Any] = {
        "generation": generation,
        "location": state.location,
        "keys": members,
        "skipped": keyset.skipped if keyset else 0,
        "loaded_at": state.loaded_at,
        "fetched_at": state.fetched_at,
        "last_error": state.last_error,
        "last_error_at": state.last_error_at,
        "failures": state.failures,
        "next_due": time.monotonic() + (ring.next_fetch_in() or 0.0),
    }
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".jwks-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_published(
    path: Path, algorithms: tuple[str, ...], loaded_at: float | None, keyset: KeySet | None
) -> tuple[int, SourceState, float]:
    """The state in ``path``: its generation, the endpoint's state and when its next fetch is
    due. Its key set is parsed only if it is not the one loaded at ``loaded_at``
    (``keyset``, reused as it is)."""
    document = json.loads(path.read_bytes())
    if document["keys"] is None:
        keyset = None
    elif document["loaded_at"] != loaded_at:  # a new set: parse it
        body = json.dumps({"keys": document["keys"]}).encode()
        keyset = dataclasses.replace(parse_jwks(body, algorithms, "endpoint"),
                                     skipped=int(document["skipped"]))
    published = SourceState(
        "endpoint", str(document["location"]), keyset, document["loaded_at"],
        document["fetched_at"], document["last_error"], document["last_error_at"],
        int(document["failures"]),
    )
    return int(document["generation"]), published, float(document["next_due"])


class KeyPublisher:
    """The supervisor's side: the one refresher that fetches, published after every fetch."""

    def __init__(
        self, config: JwtConfig, metrics: Metrics, path: Path,
        notify: Callable[[Published], None],
    ) -> None:
        self._path = path
        self._notify = notify
        self.generation = 0
        # The file source is each worker's own; here only the endpoint is fetched.
        config = dataclasses.replace(config, jwks_file="")
        self.ring = KeyRing(config, metrics)
        self.refresher = Refresher(self.ring, HttpFetcher(config), config,
                                   on_fetched=self._publish)

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Fetch once (publishing the outcome), then refresh on schedule until the end."""
        return self.refresher.running()

    def _publish(self) -> None:
        self.generation += 1
        try:
            write_state(self._path, self.ring, self.generation)
        except OSError as exc:
            log.error("cannot publish the JWKS to the workers; they keep the previous one",
                      extra={"event": "jwks_publish", "error": exc.strerror})
            return
        self._notify(Published(self.generation))

    async def answer(self, request: RefreshRequest) -> RefreshReply:
        """The reply to a worker's request (trigger ``miss`` or ``admin``)."""
        if request.trigger == "miss":
            fetched = await self.refresher.miss_refresh()
            return RefreshReply(
                request.id, self.generation, ok=fetched,
                reason="" if fetched else "rate_limited",
                detail="" if fetched else "a miss-triggered fetch ran recently",
                rate_limited=not fetched)
        # the rate limit of jwks_setup for the whole service (each worker has its own too)
        outcome = await self.refresher.setup_refresh()
        error = outcome.error
        return RefreshReply(
            request.id, self.generation, ok=error is None,
            reason=error.reason if error else "", detail=error.detail if error else "",
            rate_limited=outcome.rate_limited, retry_after=outcome.retry_after)


class SupervisorFetcher:
    """A worker's fetcher: the supervisor fetches, this adopts what it publishes into the
    worker's ``ring`` (see the module docstring)."""

    schedules = False

    def __init__(self, ring: KeyRing, algorithms: tuple[str, ...], *, link: MasterLink,
                 state_dir: str) -> None:
        self._ring = ring
        self._algorithms = algorithms
        self._link = link
        self._path = Path(state_dir) / STATE_FILE
        self._generation = 0
        self._loads: set[asyncio.Task[None]] = set()

    @property
    def location(self) -> str:
        return self._ring.endpoint.location if self._ring.endpoint else ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Adopt the latest publication, then each one announced, until the end."""
        if self._ring.endpoint is not None:
            await self.load_published()
            self._link.subscribe(Published, self._on_published)
        try:
            yield
        finally:
            self._link.unsubscribe(Published)
            for task in list(self._loads):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _on_published(self, notice: Published) -> None:
        if notice.generation > self._generation:
            task = asyncio.create_task(self.load_published())
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)

    async def load_published(self) -> None:
        """Adopt the supervisor's latest publication; on a broken one, keep what we have.

        Loads may overlap (a notice and a reply): one that finishes after a newer one is
        dropped, so the adopted generation only goes up.
        """
        current = self._ring.endpoint
        assert current is not None
        try:
            generation, published, next_due = await asyncio.to_thread(
                read_published, self._path, self._algorithms, current.loaded_at,
                current.keyset)
        except (OSError, ValueError, KeyError, TypeError, JwksError) as exc:
            log.error("cannot load the published JWKS, keeping the previous one", extra={
                "event": "jwks_adopt", "error": type(exc).__name__,
            })
            return
        if generation <= self._generation:
            return
        self._generation = generation
        self._ring.adopt(published, next_due)
        log.debug("JWKS adopted from the supervisor", extra={
            "event": "jwks_adopt", "generation": generation,
            "kids": published.keyset.logged_kids() if published.keyset else [],
        })

    async def fetch(self, trigger: str) -> Relayed:
        """Ask the supervisor to fetch, and adopt the publication of its outcome."""
        try:
            reply = await self._link.request(RefreshRequest(trigger), REPLY_TIMEOUT)
        except TimeoutError:
            return Relayed(JwksError("timeout", "the supervisor did not answer in time"))
        except ConnectionError:
            return Relayed(JwksError("internal_error", "the supervisor went away"))
        if reply.generation > self._generation:
            await self.load_published()
        error = None if reply.ok else JwksError(reply.reason, reply.detail)
        return Relayed(error, reply.rate_limited, reply.retry_after)


def shared_key_source(
    config: JwtConfig, metrics: Metrics, *, link: MasterLink, state_dir: str,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> KeySource:
    """A worker's key source: the endpoint's set from the supervisor, never fetched here;
    the file's read here."""
    ring = KeyRing(config, metrics, clock=clock, wall_clock=wall_clock)
    fetcher = SupervisorFetcher(ring, config.algorithms, link=link, state_dir=state_dir)
    return KeySource(ring, Refresher(ring, fetcher, config, clock=clock))
