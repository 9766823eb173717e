"""Running the app: sockets, signals, graceful stop, and the HTTP layer's edge cases."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .app import DECIDER, METRICS, RELOADERS, create_app
from .config import SHUTDOWN_TIMEOUT, Config
from .connection import Connection
from .edge import RESERVED_DESCRIPTORS, EdgeLimits, connection_cap, raise_descriptor_limit
from .handlers import Decider, is_decision_path
from .ipc import WorkerContext
from .listen import bind_all

log = logging.getLogger("authproxy.server")
_Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]

GC_THRESHOLDS = (50_000, 20, 100)  # allocations per young collection; the defaults: 700, 10, 10
# nginx forwards whatever header size its large_client_header_buffers allow; the credential is
# judged (and refused, past MAX_AUTHORIZATION) by us rather than the request by the parser. A
# field may be as long as a whole head (server.max_head_bytes), the request line 64 kB.
MAX_LINE_SIZE = 1 << 16


class _Server(web.Server):
    decider: Decider
    edge: EdgeLimits

    def __call__(self) -> RequestHandler:
        return Connection(self, loop=self._loop, **self._kwargs)


class AuthRunner(web.AppRunner):
    """An AppRunner whose connections answer decisions as they are parsed and parse errors
    with a 401 (connection.py), and which hands the other decisions straight to the
    Decider."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no public hook for the protocol class; _Server adds no __init__ state,
        # only the factory method and the decider set here, so re-classing is safe.
        server.__class__ = _Server
        decider = server.decider = self.app[DECIDER]  # type: ignore[attr-defined]
        settings = decider.config.server
        server.edge = EdgeLimits(  # type: ignore[attr-defined]
            settings, self.app[METRICS], connection_cap(settings.max_connections))
        server.request_handler = _decisions_first(decider, server.request_handler)
        return server


def _decisions_first(decider: Decider, route: _Handler) -> _Handler:
    """Send /auth and /auth/... to the Decider without the Application's router and
    middleware machinery (measured: that path costs a fifth of a bare 200 handler, and every
    request to authproxy is a decision). The routes registered for them in create_app stay,
    for test clients and anything else that runs the Application itself."""

    async def dispatch(request: BaseRequest) -> web.StreamResponse:
        if is_decision_path(request.path):
            return await decider.handle(request)
        return await route(request)

    return dispatch


def make_runner(app: web.Application) -> AuthRunner:
    settings = app[DECIDER].config.server
    return AuthRunner(
        app,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=float(settings.keepalive_timeout),
        max_field_size=settings.max_head_bytes,
        max_line_size=MAX_LINE_SIZE,
    )


async def start_socket_sites(
    runner: AuthRunner, sockets: Sequence[socket.socket]
) -> list[web.BaseSite]:
    """Serve sockets already bound and listening (listen.bind_all's, or a worker's, inherited
    from the supervisor)."""
    sites: list[web.BaseSite] = []
    for sock in sockets:
        site = web.SockSite(runner, sock)
        await site.start()
        sites.append(site)
    return sites


async def run(
    config: Config, sockets: Sequence[socket.socket], worker: WorkerContext | None = None
) -> int:
    """Serve ``sockets`` until SIGTERM or SIGINT; reload file-backed state on SIGHUP.
    Returns 0.

    On SIGTERM the listening sockets close at once; requests under way get SHUTDOWN_TIMEOUT
    seconds to finish, and only then do the cleanup contexts (hash threads, key refresh) end.
    ``worker``: this process is one of the supervisor's, serving the sockets it inherited.
    """
    raise_descriptor_limit(config.server.max_connections + RESERVED_DESCRIPTORS)
    app = create_app(config, worker=worker)
    runner = make_runner(app)
    await runner.setup()
    try:
        await start_socket_sites(runner, sockets)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[Any]] = set()

        def on_sighup() -> None:
            for reload in app[RELOADERS]:
                task = asyncio.ensure_future(reload("sighup"))
                reloads.add(task)
                task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        tune_garbage_collector()
        log.info("serving", extra={
            "event": "start", "listen": [str(a) for a in config.server.listen_addresses],
            "schemes": list(app[DECIDER].chain.schemes),
            **({"worker": worker.index} if worker else {}),
        })
        await stop.wait()
        log.info("stopping: draining in-flight requests", extra={"event": "stop"})
        for task in list(reloads):  # a reload under way is of no use any more
            task.cancel()
        await asyncio.gather(*reloads, return_exceptions=True)
    finally:
        await runner.cleanup()
    return 0


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector from stalling decisions.

    What start-up loaded (modules, config, tables, keys) lives as long as the process:
    frozen, the collector never scans it again. Every uncached decision allocates a few
    dozen objects and the token and password caches hold tens of thousands, so with the
    default thresholds full collections ran often enough to put 60 ms into p99 latency of
    uncached bearer decisions; rarer collections measured p99 16 ms and 13% more throughput.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def event_loop() -> asyncio.Runner:
    """An asyncio Runner on uvloop where installed."""
    loop_factory: Any = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    return asyncio.Runner(loop_factory=loop_factory)


def serve(config: Config) -> int:
    """The single-process service (server.workers 1): bind, then run the event loop around
    :func:`run`. Exit status 1 if an address cannot be listened on."""
    sockets = bind_all(config.server.listen_addresses, config.server.unix_access)
    if sockets is None:
        return 1
    with event_loop() as runner:
        return runner.run(run(config, sockets))

