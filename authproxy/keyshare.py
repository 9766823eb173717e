"""One JWKS fetch schedule for many worker processes.

The supervisor runs the only KeySource that fetches (:class:`KeyPublisher`). After every fetch
of the endpoint, whatever its outcome, it writes the endpoint's state to ``STATE_FILE`` in its
private directory and tells every worker. The state holds the last *validated* set (only the
keys that passed validation, as their public JWKs), when it was loaded (on the system-wide
monotonic clock, so staleness is judged as in one process), and the last error. The file is
written to a temporary file of mode 0600 and renamed over the old one: a reader sees the old
file or the new one, never part of one.

Workers (:class:`SharedKeySource`) load the file at start and on each notice (read and parsed
in a thread, adopted on the event loop if newer than what they hold), and never fetch:
an unknown kid or ``POST /api/v2/jwks_setup`` asks the supervisor, whose KeySource shares a
fetch under way and rate-limits misses for the whole service, and waits for its answer. The
``jwt.jwks_file`` stays each worker's own (re-read on SIGHUP).
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

from aiohttp import web

from .config import JwtConfig
from .ipc import MasterLink, Message
from .jwks import JwksError, KeySet, SourceState, parse_jwks
from .jwksfetch import FETCH_TIMEOUT
from .keysource import KeySource
from .metrics import Metrics

log = logging.getLogger("authproxy.jwks")

STATE_FILE = "jwks-endpoint.json"
# A worker waits this long for the supervisor's answer: a discovery and a fetch, and some.
REPLY_TIMEOUT = 2 * FETCH_TIMEOUT + 5


def write_state(path: Path, keys: KeySource, generation: int) -> None:
    """Publish ``keys``' endpoint state atomically (see the module docstring)."""
    state = keys.endpoint
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
        "next_due": time.monotonic() + (keys.next_fetch_in() or 0.0),
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
    """The supervisor's side: the one KeySource that fetches, published after every fetch."""

    def __init__(
        self, config: JwtConfig, metrics: Metrics, path: Path,
        notify: Callable[[Message], None],
    ) -> None:
        self._path = path
        self._notify = notify
        self.generation = 0
        # The file source is each worker's own; here only the endpoint is fetched.
        self.keys = KeySource(dataclasses.replace(config, jwks_file=""), metrics,
                              on_fetched=self._publish)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Fetch once (publishing the outcome), then refresh on schedule until the end."""
        # KeySource.lifetime is a cleanup context; it does not use the app it is given.
        async with contextlib.asynccontextmanager(self.keys.lifetime)(web.Application()):
            yield

    def _publish(self) -> None:
        self.generation += 1
        try:
            write_state(self._path, self.keys, self.generation)
        except OSError as exc:
            log.error("cannot publish the JWKS to the workers; they keep the previous one",
                      extra={"event": "jwks_publish", "error": exc.strerror})
            return
        self._notify({"op": "published", "generation": self.generation})

    async def answer(self, request: Message) -> Message:
        """The reply to a worker's ``refresh`` request (trigger ``miss`` or ``admin``)."""
        trigger = request.get("trigger")
        if trigger == "miss":
            fetched = await self.keys.miss_refresh()
            return {"ok": fetched, "reason": "" if fetched else "rate_limited",
                    "detail": "" if fetched else "a miss-triggered fetch ran recently",
                    "generation": self.generation}
        if trigger != "admin":
            return {"ok": False, "reason": "bad_request", "detail": "unknown trigger",
                    "generation": self.generation}
        # the rate limit of jwks_setup for the whole service (each worker has its own too)
        outcome = await self.keys.setup_refresh()
        if outcome.error is not None:
            return {"ok": False, "reason": outcome.error.reason, "detail": outcome.error.detail,
                    "rate_limited": outcome.rate_limited, "generation": self.generation}
        return {"ok": True, "rate_limited": outcome.rate_limited, "generation": self.generation}


class SharedKeySource(KeySource):
    """A worker's KeySource: the endpoint's set comes from the supervisor, never fetched here.

    Overrides :meth:`lifetime` (no fetching, no refresh loop) and ``_fetch``, the one place
    a KeySource obtains the endpoint's set; everything else (lookups, staleness, the miss
    rate limit within this worker, the file source) is KeySource's own.
    """

    def __init__(
        self, config: JwtConfig, metrics: Metrics, *, link: MasterLink, state_dir: str,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(config, metrics, clock=clock, wall_clock=wall_clock)
        self._link = link
        self._path = Path(state_dir) / STATE_FILE
        self._generation = 0
        self._loads: set[asyncio.Task[None]] = set()

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        if self.file is not None:
            await self.reload_file("startup")
        if self.endpoint is not None:
            await self.load_published()
            self._link.subscribe("published", self._on_published)
        try:
            yield
        finally:
            self._link.unsubscribe("published")
            for task in list(self._loads):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _on_published(self, notice: Message) -> None:
        if notice.get("generation", 0) > self._generation:
            task = asyncio.create_task(self.load_published())
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)

    async def load_published(self) -> None:
        """Adopt the supervisor's latest publication; on a broken one, keep what we have.

        Loads may overlap (a notice and a reply): one that finishes after a newer one is
        dropped, so the adopted generation only goes up.
        """
        assert self.endpoint is not None
        current = self.endpoint
        try:
            generation, published, next_due = await asyncio.to_thread(
                read_published, self._path, self.config.algorithms, current.loaded_at,
                current.keyset)
        except (OSError, ValueError, KeyError, TypeError, JwksError) as exc:
            log.error("cannot load the published JWKS, keeping the previous one", extra={
                "event": "jwks_adopt", "error": type(exc).__name__,
            })
            return
        if generation <= self._generation:
            return
        self._generation = generation
        self.adopt(published, next_due)
        log.debug("JWKS adopted from the supervisor", extra={
            "event": "jwks_adopt", "generation": generation,
            "kids": published.keyset.logged_kids() if published.keyset else [],
        })

    async def _fetch(self, state: SourceState, trigger: str) -> KeySet:
        try:
            reply = await self._link.request({"op": "refresh", "trigger": trigger},
                                             REPLY_TIMEOUT)
        except TimeoutError:
            raise JwksError("timeout", "the supervisor did not answer in time") from None
        except ConnectionError:
            raise JwksError("internal_error", "the supervisor went away") from None
        if reply.get("generation", 0) > self._generation:
            await self.load_published()
        if not reply.get("ok"):
            raise JwksError(str(reply.get("reason")), str(reply.get("detail")))
        if state.keyset is None:
            raise JwksError("internal_error", "no key set published")
        return state.keyset
