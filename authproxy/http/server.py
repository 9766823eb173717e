"""Running the app: sockets, signals, graceful stop. :class:`Server` (built by
:func:`start_server`) is the one way to serve an app, used by production, tests and
benchmarks alike: our own HTTP edge (connection.py) on the listening sockets, around the
app's lifetimes (application.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..config import SHUTDOWN_TIMEOUT, Config
from ..listen import bind_all
from .app import DECIDER, METRICS, RELOADERS, ROUTES, create_app
from .application import Application
from .connection import Connection, HttpDate, Serving
from .edge import RESERVED_DESCRIPTORS, EdgeLimits, connection_cap, raise_descriptor_limit

if TYPE_CHECKING:
    from ..cluster.ipc import WorkerContext

log = logging.getLogger("authproxy.http.server")

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, in bytes
GC_THRESHOLDS = (50_000, 20, 100)  # allocations per young collection; the defaults: 700, 10, 10


class Server:
    """An app served on listening sockets. :meth:`stop` drains: listening stops at once,
    requests under way get ``shutdown_timeout`` seconds, then the app's lifetimes end."""

    def __init__(self, app: Application, shutdown_timeout: float = SHUTDOWN_TIMEOUT) -> None:
        self.app = app
        self._listeners: list[asyncio.AbstractServer] = []
        self._shutdown_timeout = shutdown_timeout
        decider = app[DECIDER]
        settings = decider.config.server
        self.serving = Serving(
            decider, app[ROUTES],
            EdgeLimits(settings, app[METRICS], connection_cap(settings.max_connections)),
            float(settings.keepalive_timeout), HttpDate(time.time))

    @property
    def edge(self) -> EdgeLimits:
        return self.serving.edge

    async def start(self, sockets: Sequence[socket.socket]) -> None:
        """Start the app's lifetimes, then serve ``sockets``, already bound and listening
        (listen.bind_all's, or a worker's, inherited from the supervisor)."""
        await self.app.startup()
        loop = asyncio.get_running_loop()
        serving = self.serving
        try:
            for sock in sockets:
                self._listeners.append(await loop.create_server(
                    lambda: Connection(serving), sock=sock))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        serving = self.serving
        serving.draining = True
        connections = list(serving.connections)
        for connection in connections:
            connection.drain()
        if connections:
            _, late = await asyncio.wait([c.closed for c in connections],
                                         timeout=self._shutdown_timeout)
            for connection in connections:
                if connection.closed in late:
                    connection.abort()
        await self.app.cleanup()


async def start_server(app: Application, sockets: Sequence[socket.socket]) -> Server:
    """A :class:`Server` of ``app`` (create_app's), serving ``sockets``."""
    server = Server(app)
    await server.start(sockets)
    return server


async def run(
    config: Config, sockets: Sequence[socket.socket], worker: WorkerContext | None = None
) -> int:
    """Serve ``sockets`` until SIGTERM or SIGINT; reload file-backed state on SIGHUP.
    Returns 0.

    On SIGTERM the listening sockets close at once; requests under way get SHUTDOWN_TIMEOUT
    seconds to finish, and only then do the cleanup contexts (hash threads, key refresh) end.
    ``worker``: this process is one of the supervisor's, serving the sockets it inherited.
    """
    if config.basic.users_file:  # password hashing (see tune_malloc): not a Bearer-only sidecar
        tune_malloc()
    raise_descriptor_limit(config.server.max_connections + RESERVED_DESCRIPTORS)
    app = create_app(config, worker=worker)
    server = await start_server(app, sockets)
    try:
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
        await server.stop()
    return 0


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector from stalling decisions.

    What start-up loaded (modules, config, tables, keys) lives as long as the process:
    frozen, the collector never scans it again. Every uncached decision allocates a few
    dozen objects and the token and password caches hold tens of thousands, so with the
    default thresholds full collections ran often enough to put 60 ms into p99 latency of
    uncached bearer decisions; rarer collections measured p99 16 ms and 13% more throughput.
    """
    gc.collect()  # (start-up's own garbage is freed, not frozen for good)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def tune_malloc() -> None:
    """Keep glibc's mmap threshold where it starts (128 KiB), before anything is loaded.

    glibc raises the threshold to the size of each large block freed (up to 32 MiB); past
    that, blocks of that size come from the threads' heaps, whose free space stays resident.
    So every thread that verified an argon2id password (m = 8 MiB, 64 MiB...) or timed one
    at a reload kept that much for good: workers grew by 8 MB steps at reloads in the soak
    (bench/soak.py). Setting the threshold turns the adjustment off, and large blocks go back
    to the system when freed. Nothing is done on a libc without mallopt. A sidecar that
    hashes no passwords (Bearer only) does without it, and without ctypes (0.4 MB).
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


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

