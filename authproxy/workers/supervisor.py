"""server.workers > 1: one supervisor process and N worker processes sharing the sockets.

How, and why:

- **The supervisor binds every listening socket once** (listen.bind_all, as one process
  does), and every worker inherits and serves the same sockets (http.server). One
  accept queue per address works the same for TCP and unix sockets (SO_REUSEPORT balances
  only TCP), a worker that stops or dies leaves no queue of accepted-but-unserved
  connections behind, and nobody else can bind a second socket on the port and take a share
  of the connections. An idle worker accepts first, which spreads the load without a
  balancer.
- **Workers are spawned, not forked**: ``python -c worker.PROGRAM`` with the sockets and a
  control channel passed as file descriptors. The supervisor runs an event loop (the JWKS
  refresh, the control channels) and has threads (the resolver, the child watcher); a fork
  of such a process would inherit the loop's epoll descriptor and locks held by other
  threads. A fresh interpreter costs about half a second of start-up, once per worker.
- **One JWKS fetch schedule**: the supervisor runs the only key refresher that fetches and
  publishes each outcome to its private directory (mode 0700) for the workers (keyshare.py).
- **Bans for the whole service**: every worker reports its Basic failures; the supervisor
  counts them all and sends each ban to every worker (banshare.py).
- **Metrics**: every process writes its values to a directory under the private one, and
  any worker's /metrics adds them up (obs/promfiles.py); when a worker exits, the supervisor
  folds its counts into the directory's archive and its gauges go.
- **Signals**: SIGHUP is forwarded to every worker (each reloads its files). SIGTERM or SIGINT
  closes the supervisor's copies of the sockets and forwards SIGTERM; each worker stops
  accepting, finishes its requests (server.run) and exits; once all have, the supervisor exits
  0, so new connections are refused as soon as the last worker closed its copy.
- **Restarts**: a worker that exits on its own is restarted after a back-off doubling from
  RESTART_BACKOFF_FIRST (reset once a worker ran STABLE_AFTER seconds); more than
  MAX_RESTARTS within RESTART_WINDOW means something is broken for good, and the supervisor
  stops the service with exit status 1 for the service manager to see.
- **Liveness**: every worker sends a heartbeat from its event loop (protocol.Heartbeat). One
  silent for ``server.worker_timeout`` seconds (WORKER_START_TIMEOUT before its first) is
  hung: stopped, or its loop blocked by a handler. Its kept-alive connections would wait on it
  for ever, so it is killed (SIGKILL: a stopped or stuck process handles no SIGTERM), logged
  (``worker_hung``), counted (``authproxy_worker_restarts_total{reason="hung"}``) and
  restarted like a worker that died, within the same back-off and restart bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cluster.banshare import BanCoordinator
from ..cluster.ipc import heartbeat_interval, read_message
from ..cluster.keyshare import STATE_FILE, KeyPublisher
from ..cluster.protocol import (
    MAX_MESSAGE,
    Bootstrap,
    Failure,
    Heartbeat,
    Known,
    Message,
    RefreshReply,
    RefreshRequest,
    encode,
)
from ..config import METRICS_FLUSH_INTERVAL, SHUTDOWN_TIMEOUT, Config
from ..http.server import event_loop
from ..listen import bind_all
from ..obs.metrics import Metrics

log = logging.getLogger("authproxy.workers")

RESTART_BACKOFF_FIRST = 0.5  # seconds before restarting a worker that died
RESTART_BACKOFF_MAX = 10.0
STABLE_AFTER = 10.0  # seconds a worker must run for its next death to count as the first
MAX_RESTARTS = 10  # restarts within RESTART_WINDOW seconds before the supervisor gives up
RESTART_WINDOW = 60.0
STOP_GRACE = SHUTDOWN_TIMEOUT + 5.0  # seconds after SIGTERM before a worker is killed
# Seconds a new worker gets to send its first heartbeat: an interpreter's start and imports
# take about half a second, much more on a loaded machine.
WORKER_START_TIMEOUT = 30.0


def supervise(config: Config) -> int:
    """Run ``config.worker_count`` workers until SIGTERM; the exit status of the service."""
    with tempfile.TemporaryDirectory(prefix="authproxy-") as state_dir:
        metrics_dir = os.path.join(state_dir, "metrics")
        os.mkdir(metrics_dir, 0o700)
        sockets = bind_all(config.server.listen_addresses, config.server.unix_access)
        if sockets is None:
            return 1
        metrics = Metrics(metrics_dir)
        with event_loop() as runner:
            supervisor = Supervisor(config, sockets, state_dir, metrics)
            if config.jwt.has_endpoint:
                supervisor.publisher = KeyPublisher(config.jwt, metrics,
                                                    Path(state_dir) / STATE_FILE,
                                                    supervisor.broadcast)
            return runner.run(supervisor.run())


@dataclass(slots=True)
class _Slot:
    """One of the N workers, across its restarts."""

    index: int
    process: asyncio.subprocess.Process | None = None
    channel: asyncio.StreamWriter | None = None
    started_at: float = 0.0
    heard_at: float | None = None  # the last heartbeat of the current process
    hung: bool = False  # the current process was killed for falling silent
    failures: int = 0  # deaths in a row, each within STABLE_AFTER of its start


class Supervisor:
    """Keeps ``config.worker_count`` workers running on ``sockets``; see the module docstring.
    ``publisher``, set before :meth:`run` when the config has a JWKS endpoint, fetches for all.
    ``interpreter``: the Python that runs the workers (this one's, unless a test says).
    """

    def __init__(
        self, config: Config, sockets: list[socket.socket], state_dir: str, metrics: Metrics,
        interpreter: str = sys.executable,
    ) -> None:
        self.config = config
        self.publisher: KeyPublisher | None = None
        self.interpreter = interpreter
        self._sockets = sockets
        self._state_dir = state_dir
        self._metrics = metrics
        self._slots = [_Slot(index) for index in range(config.worker_count)]
        self._bans = BanCoordinator(config.basic, self.broadcast)
        self._stopping = asyncio.Event()
        self._restarts: deque[float] = deque()
        self._status = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        async with contextlib.AsyncExitStack() as stack:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                stack.callback(loop.remove_signal_handler, sig)
            if self.publisher is not None:
                await stack.enter_async_context(self.publisher.running())
            flushing = asyncio.create_task(self._flush_metrics())
            log.info("supervising", extra={
                "event": "start", "workers": len(self._slots),
                "listen": [str(a) for a in self.config.server.listen_addresses],
            })
            slots = [asyncio.create_task(self._keep_running(slot)) for slot in self._slots]
            await self._stopping.wait()
            _, running = await asyncio.wait(slots, timeout=STOP_GRACE)
            if running:
                self._status = 1
                log.error("workers did not stop in time: killing them", extra={
                    "event": "stop", "workers": len(running),
                })
                self._forward(signal.SIGKILL)
                await asyncio.wait(running)
            flushing.cancel()
            await asyncio.gather(flushing, return_exceptions=True)
        log.info("stopped", extra={"event": "stop", "status": self._status})
        return self._status

    def stop(self) -> None:
        """Stop accepting here, and ask every worker to drain and exit."""
        if self._stopping.is_set():
            return
        log.info("stopping: workers drain their in-flight requests", extra={"event": "stop"})
        self._stopping.set()
        for sock in self._sockets:
            sock.close()  # the workers hold their own copies until they have stopped
        self._forward(signal.SIGTERM)

    def broadcast(self, notice: Message) -> None:
        for slot in self._slots:
            if slot.channel is not None:
                _send(slot.channel, notice)

    def _forward(self, sig: int) -> None:
        live = [s.process for s in self._slots if s.process and s.process.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
        if sig == signal.SIGHUP:
            log.info("SIGHUP forwarded to the workers", extra={
                "event": "reload", "workers": len(live),
            })

    async def _keep_running(self, slot: _Slot) -> None:
        while not self._stopping.is_set():
            # Set before trying: a start that fails counts as a death right after it, so the
            # back-off grows as it does for workers that die young.
            slot.started_at = time.monotonic()
            slot.heard_at, slot.hung = None, False
            try:
                process = await self._spawn(slot)
            except Exception as exc:  # counted as a death: restarted, within the same bounds
                log.error("cannot start a worker", extra={
                    "event": "worker_error", "worker": slot.index, "error": repr(exc),
                })
            else:
                if self._stopping.is_set():  # stop() ran while it was starting
                    process.send_signal(signal.SIGTERM)
                status = await self._wait_alive(slot, process)
                self._exited(slot, process, status)
            if self._stopping.is_set():
                return
            delay = self._restart_delay(slot)
            if delay is None:
                log.error("workers keep dying: stopping the service", extra={
                    "event": "worker_restart", "restarts": len(self._restarts),
                    "window_seconds": RESTART_WINDOW,
                })
                self._status = 1
                self.stop()
                return
            reason = "hung" if slot.hung else "exited"
            self._metrics.worker_restarts.labels(reason=reason).inc()
            log.warning("restarting a worker", extra={
                "event": "worker_restart", "worker": slot.index, "delay_seconds": delay,
                "reason": reason,
            })
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    async def _wait_alive(self, slot: _Slot, process: asyncio.subprocess.Process) -> int:
        """``process``'s exit status, once it exits or, hung, has been killed."""
        exited = asyncio.ensure_future(process.wait())
        timeout = float(self.config.server.worker_timeout)
        check_every = heartbeat_interval(timeout)
        while not slot.hung:
            if slot.heard_at is None:
                deadline = slot.started_at + WORKER_START_TIMEOUT
            else:
                deadline = slot.heard_at + timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill_hung(slot, process)
                break
            # Woken at least once an interval: a heartbeat meanwhile moves the deadline.
            done, _ = await asyncio.wait({exited}, timeout=min(remaining, check_every))
            if done:
                return exited.result()
        return await exited

    def _kill_hung(self, slot: _Slot, process: asyncio.subprocess.Process) -> None:
        slot.hung = True
        log.error("worker sent no heartbeat in time: killing it", extra={
            "event": "worker_hung", "worker": slot.index, "worker_pid": process.pid,
            "silent_seconds": round(time.monotonic() - (slot.heard_at or slot.started_at), 1),
        })
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    def _heard(self, slot: _Slot, process: asyncio.subprocess.Process) -> None:
        if slot.process is process:  # not a late line of a process already replaced
            slot.heard_at = time.monotonic()

    def _greeting(self, slot: _Slot) -> list[Message]:
        """What a new worker reads from its channel first, before it serves: the bootstrap,
        then the lockout state (the bans in force, the known addresses: banshare.py)."""
        return [Bootstrap(slot.index, self._state_dir, self._metrics.multiprocess_dir or "",
                          self.config),
                *self._bans.state_messages()]

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        from .worker import PROGRAM

        # The channel is ready and the greeting waits in it before the process exists: once
        # it does, nothing is left that could fail and leave it running unwatched.
        ours, theirs = socket.socketpair()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_MESSAGE)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        for message in self._greeting(slot):
            writer.write(encode(message))
        slot.channel = writer  # from here on, bans and known pairs reach it too
        fds = [theirs.fileno(), *(s.fileno() for s in self._sockets)]
        try:
            process = await asyncio.create_subprocess_exec(
                self.interpreter, "-c", PROGRAM, *map(str, fds),
                stdin=asyncio.subprocess.DEVNULL, pass_fds=fds,
            )
        except BaseException:
            slot.channel = None
            writer.close()
            raise
        finally:
            theirs.close()
        slot.process = process
        self._start(self._answer_requests(reader, writer, lambda: self._heard(slot, process)))
        log.info("worker started", extra={
            "event": "worker_start", "worker": slot.index, "worker_pid": process.pid,
        })
        return process

    def _exited(self, slot: _Slot, process: asyncio.subprocess.Process, status: int) -> None:
        if slot.channel is not None:
            slot.channel.close()
        slot.process = slot.channel = None
        # in a thread: the fold waits for its exclusive lock while a worker's scrape reads the
        # files, and writes the archive; the event loop keeps answering heartbeats meanwhile
        self._start(asyncio.to_thread(self._metrics.mark_process_dead, process.pid))
        level = logging.INFO if self._stopping.is_set() else logging.ERROR
        log.log(level, "worker exited", extra={
            "event": "worker_exit", "worker": slot.index, "worker_pid": process.pid,
            "status": status,
        })

    def _restart_delay(self, slot: _Slot) -> float | None:
        """Seconds to wait before restarting ``slot``; None once restarts are too many."""
        now = time.monotonic()
        slot.failures = 1 if now - slot.started_at >= STABLE_AFTER else slot.failures + 1
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW:
            self._restarts.popleft()
        if len(self._restarts) > MAX_RESTARTS:
            return None
        return min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_FIRST * 2.0 ** (slot.failures - 1))

    async def _answer_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        heard: Callable[[], None],
    ) -> None:
        while (message := await read_message(reader)) is not None:
            match message:
                case Heartbeat():
                    heard()
                case RefreshRequest():
                    self._start(self._answer(message, writer))
                case Failure():
                    self._bans.count(message, lambda notice: _send(writer, notice))
                case Known():
                    self._bans.known(message)
                case _:
                    log.error("control message dropped", extra={
                        "event": "control", "op": message.OP, "error": "not for the supervisor",
                    })

    async def _answer(self, request: RefreshRequest, writer: asyncio.StreamWriter) -> None:
        if self.publisher is None:
            reply = RefreshReply(request.id, 0, ok=False, reason="not_configured",
                                 detail="no endpoint")
        else:
            reply = await self.publisher.answer(request)
        _send(writer, reply)

    async def _flush_metrics(self) -> None:
        while True:
            await self._metrics.flush_off_loop()
            await asyncio.sleep(METRICS_FLUSH_INTERVAL)

    def _start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _send(channel: asyncio.StreamWriter, message: Message) -> None:
    if not channel.is_closing():  # a worker that is gone needs no more notices
        channel.write(encode(message))
