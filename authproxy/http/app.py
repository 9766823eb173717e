"""create_app(config): the one way to build the application, with owned lifetimes.

The application (application.py) holds typed state and the lifetimes of what it owns; it
serves nothing itself: requests reach the Decider and the ROUTES through our own HTTP edge
(connection.py). What a config does not use is not imported: a Basic-only sidecar loads no
JWT library, a Bearer-only one no password hashing, a single process nothing of the workers'
(the sidecar's footprint: README "Sidecar footprint").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from ..config import METRICS_FLUSH_INTERVAL, Config
from ..core.authn import Authenticator, SchemeChain
from ..core.decider import Decider
from ..obs.logs import DecisionLog
from ..obs.metrics import Metrics
from .admin import AdminApi
from .application import AppKey, Application
from .endpoints import healthz, metrics_handler, readyz_handler
from .message import Routes

if TYPE_CHECKING:
    from ..cluster.ipc import WorkerContext
    from ..htpasswd.userstore import UserStore
    from ..jwt.keysource import KeySource
    from ..schemes.bearer import BearerAuthenticator

METRICS: AppKey[Metrics] = AppKey("metrics")
DECIDER: AppKey[Decider] = AppKey("decider")
USER_STORE: AppKey[UserStore] = AppKey("user_store")
KEY_SOURCE: AppKey[KeySource] = AppKey("key_source")
# Coroutines run on SIGHUP: each re-reads one file-backed source, keeping the old on failure.
RELOADERS: AppKey[list[Callable[[str], Awaitable[bool]]]] = AppKey("reloaders")
# The endpoints besides the decisions, which the edge sends straight to the DECIDER.
ROUTES: AppKey[Routes] = AppKey("routes")


def create_app(
    config: Config,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    worker: WorkerContext | None = None,
) -> Application:
    """Build the app for ``config``. Loads the user table now (raising UserFileError if it
    cannot be read); background work starts and stops with the app's cleanup contexts.

    ``worker``: this process is one of several (server.workers > 1): metrics go to the shared
    files, the endpoint's key set comes from the supervisor (see keyshare.py) and brute-force
    bans are the whole service's (see banshare.py).
    """
    app = Application()
    metrics = Metrics(worker.metrics_dir if worker else None)
    if worker is not None:
        # multi-worker mode: metrics reach the shared files once a second, and once more
        # after the last decision
        app.cleanup_ctx.append(_background(
            partial(_every, METRICS_FLUSH_INTERVAL, metrics.flush_off_loop), then=metrics.flush))
    app[METRICS] = metrics
    app[RELOADERS] = []
    executor = ThreadPoolExecutor(max_workers=hash_threads(),
                                  thread_name_prefix="authproxy-hash",
                                  initializer=_lower_thread_priority)
    app.cleanup_ctx.append(_executor_ctx(executor))

    bearer = None
    if config.jwt.enabled:
        bearer = _bearer(app, config, metrics, clock, wall_clock, worker)

    authenticators: list[Authenticator] = []
    if config.basic.users_file:
        from ..htpasswd.userstore import UserStore
        from ..schemes.basic import BasicAuthenticator

        store = UserStore(
            config.basic.users_file, config.basic.groups_file,
            on_reload=lambda ok: metrics.user_reloads.labels("ok" if ok else "error").inc(),
        )
        app[USER_STORE] = store
        app[RELOADERS].append(store.reload)
        app.cleanup_ctx.append(_background(store.watch))
        token_verifier = bearer if bearer and config.jwt.accept_in_basic else None
        lockout = None
        if worker is not None:
            from ..cluster.banshare import SharedLockout

            lockout = SharedLockout(config.basic, clock, worker.link, worker.lockout)
            app.cleanup_ctx.append(lockout.lifetime)
        authenticators.append(BasicAuthenticator(store, config.basic, executor, metrics, clock,
                                                 token_verifier=token_verifier,
                                                 lockout=lockout))
    elif bearer is not None and config.jwt.accept_in_basic:
        from ..schemes.basic import TokenInBasicAuthenticator

        authenticators.append(TokenInBasicAuthenticator(bearer))
    if bearer is not None:
        authenticators.append(bearer)

    chain = SchemeChain(authenticators)
    decisions = DecisionLog(config.log, shared_stream=worker is not None)
    app.on_cleanup.append(lambda _: _flushed(decisions))
    decider = Decider(config, chain, metrics, decisions, wall_clock)
    app[DECIDER] = decider
    routes = app[ROUTES] = Routes()
    routes.add("GET", "/healthz", healthz)
    routes.add("GET", "/readyz", readyz_handler(chain))
    routes.add("GET", "/metrics", metrics_handler(metrics))
    AdminApi(decider, app.get(KEY_SOURCE), config.admin.principals).add_routes(routes)
    return app


def _bearer(
    app: Application, config: Config, metrics: Metrics, clock: Callable[[], float],
    wall_clock: Callable[[], float], worker: WorkerContext | None,
) -> BearerAuthenticator:
    """The Bearer scheme and its key source (in ``app``: state, reloaders, lifetime)."""
    from ..schemes.bearer import BearerAuthenticator

    keys: KeySource
    if worker is None:
        from ..jwt.fetcher import Fetcher, NoEndpoint
        from ..jwt.keysource import key_source

        fetcher: Fetcher = NoEndpoint()
        if config.jwt.has_endpoint:  # the HTTP client, only for an endpoint to fetch from
            from ..jwt.jwksfetch import HttpFetcher

            fetcher = HttpFetcher(config.jwt)
        keys = key_source(config.jwt, metrics, fetcher, clock=clock, wall_clock=wall_clock)
    else:
        from ..cluster.keyshare import shared_key_source

        keys = shared_key_source(config.jwt, metrics, link=worker.link,
                                 state_dir=worker.state_dir, clock=clock, wall_clock=wall_clock)
    app[KEY_SOURCE] = keys
    if config.jwt.jwks_file:
        app[RELOADERS].append(keys.refresher.reload_file)
    app.cleanup_ctx.append(keys.lifetime)
    return BearerAuthenticator(config.jwt, keys, metrics, clock=clock, wall_clock=wall_clock)


async def _flushed(decisions: DecisionLog) -> None:
    decisions.flush()  # the last batch of decision lines, before the process exits


HASH_THREAD_NICENESS = 10


def hash_threads() -> int:
    """Threads for password verification: one a core, less the event loop's.

    bcrypt and argon2 release the GIL, so verifications really run in parallel; but when a
    wrong-password flood kept a thread busy on every core, remembered passwords measured a
    p99 of 6 ms on 2 cores (nginx and the client there too), against 4 ms with one core
    left to the loop. Queued verifications wait (at most basic.MAX_PENDING), and a ban
    ends a flood before that.
    """
    return max(1, (os.cpu_count() or 2) - 1)


def _lower_thread_priority() -> None:
    """Run password hashing at a lower CPU priority than the event loop.

    A wrong-password flood keeps every hash thread busy; at equal priority they would take
    most of the CPU from the loop, and cached decisions would queue behind them. Linux sets
    niceness per thread (by its native id); elsewhere this is a no-op.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)


def _executor_ctx(
    executor: ThreadPoolExecutor,
) -> Callable[[Application], AsyncIterator[None]]:
    async def ctx(app: Application) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    return ctx


async def _every(seconds: float, action: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        await action()


def _background(
    run: Callable[[], Coroutine[Any, Any, None]],
    then: Callable[[], None] | None = None,
) -> Callable[[Application], AsyncIterator[None]]:
    """A cleanup context owning one long-running task: started with the app, cancelled and
    awaited when it stops (after the last in-flight request), then ``then`` is called."""

    async def ctx(app: Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if then is not None:
            then()

    return ctx
