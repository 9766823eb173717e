"""create_app(config): the one way to build the application, with owned lifetimes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from .authn import Authenticator, SchemeChain
from .basic import BasicAuthenticator
from .config import Config
from .handlers import Decider, healthz, metrics_handler, readyz_handler
from .logs import DecisionLog
from .metrics import Metrics
from .userstore import UserStore

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
DECIDER = web.AppKey("decider", Decider)
USER_STORE = web.AppKey("user_store", UserStore)
# Coroutines run on SIGHUP: each re-reads one file-backed source, keeping the old on failure.
RELOADERS = web.AppKey("reloaders", list[Callable[[str], Awaitable[bool]]])


def create_app(
    config: Config,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> web.Application:
    """Build the app for ``config``. Loads the user table now (raising UserFileError if it
    cannot be read); background work starts and stops with the app's cleanup contexts."""
    app = web.Application()
    metrics = Metrics()
    app[CONFIG] = config
    app[METRICS] = metrics
    app[RELOADERS] = []
    # bcrypt and argon2 release the GIL, so verifications really run in parallel.
    executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2),
                                  thread_name_prefix="authproxy-hash")
    app.cleanup_ctx.append(_executor_ctx(executor))

    authenticators: list[Authenticator] = []
    if config.basic.users_file:
        store = UserStore(
            config.basic.users_file, config.basic.groups_file,
            on_reload=lambda ok: metrics.user_reloads.labels("ok" if ok else "error").inc(),
        )
        app[USER_STORE] = store
        app[RELOADERS].append(store.reload)
        app.cleanup_ctx.append(_background(store.watch))
        authenticators.append(BasicAuthenticator(store, config.basic, executor, metrics, clock))

    chain = SchemeChain(authenticators)
    decider = Decider(config, chain, metrics, DecisionLog(config.log), wall_clock)
    app[DECIDER] = decider
    app.router.add_route("*", "/auth", decider.handle)
    app.router.add_route("*", "/auth/{tail:.*}", decider.handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz_handler(chain))
    app.router.add_get("/metrics", metrics_handler(metrics))
    return app


def _executor_ctx(
    executor: ThreadPoolExecutor,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    return ctx


def _background(
    run: Callable[[], Awaitable[None]],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context owning one long-running task: started with the app, cancelled and
    awaited when it stops."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
