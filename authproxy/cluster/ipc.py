"""The control channel between the supervisor and one worker process.

One stream socket pair per worker, made by the supervisor; the worker inherits its end. On it
travel the messages of protocol.py, one a line. When the supervisor goes away, the worker
sees end-of-file and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..config import Config
from .protocol import (
    MAX_MESSAGE,
    Bootstrap,
    Lockout,
    LockoutEnd,
    Message,
    RefreshReply,
    RefreshRequest,
    decode,
    encode,
)

log = logging.getLogger("authproxy.workers")

M = TypeVar("M", bound=Message)


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next valid message; None at end-of-file. A line that is not one (protocol.decode)
    or is longer than MAX_MESSAGE is logged and skipped."""
    while True:
        try:
            line = await reader.readline()
        except ConnectionError:
            return None
        except ValueError:  # over the limit: the stream drops it and goes on
            log.error("control message dropped", extra={"event": "control",
                                                        "error": "longer than MAX_MESSAGE"})
            continue
        if not line:
            return None
        message = decode(line)
        if message is not None:
            return message


async def _read_lockout_state(reader: asyncio.StreamReader) -> Lockout:
    """The Lockout messages that follow the bootstrap, merged (banshare.py): what a
    worker must know before it serves."""
    merged = Lockout()
    while (message := await read_message(reader)) is not None:
        if isinstance(message, LockoutEnd):
            return merged
        if not isinstance(message, Lockout):
            break
        merged = Lockout(message.mac_key or merged.mac_key, merged.bans + message.bans,
                         merged.known + message.known)
    raise RuntimeError("no lockout state from the supervisor")


def heartbeat_interval(worker_timeout: float) -> float:
    """Seconds between heartbeats: several fit in ``worker_timeout``, so that one late turn
    of a busy loop is not taken for a hang."""
    return min(1.0, worker_timeout / 4)


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What a worker process knows about the service it is part of."""

    index: int  # 0..workers-1, stable across restarts of that worker
    state_dir: str  # the supervisor's private directory (published key sets)
    metrics_dir: str  # the shared metrics directory (obs/promfiles.py)
    link: MasterLink
    lockout: Lockout  # the bans in force and known pairs at start (banshare.py)


class MasterLink:
    """A worker's end of the control channel: requests to the supervisor, notices from it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[RefreshReply]] = {}
        self._subscribers: dict[type[Any], Callable[[Any], None]] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, fd: int) -> tuple[Config, WorkerContext]:
        """Connect over the inherited ``fd``; read the bootstrap and the lockout state and
        return the config and the worker's context (its ``link``, this)."""
        sock = socket.socket(fileno=fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
        boot = await read_message(reader)
        if not isinstance(boot, Bootstrap):
            writer.close()
            raise RuntimeError("no bootstrap from the supervisor")
        lockout = await _read_lockout_state(reader)
        link = cls(reader, writer)
        return boot.config, WorkerContext(boot.index, boot.state_dir, boot.metrics_dir, link,
                                          lockout)

    def start(self, on_lost: Callable[[], None]) -> None:
        """Read notices and replies until end-of-file, then call ``on_lost``."""
        self._task = asyncio.create_task(self._read(on_lost))

    def subscribe(self, kind: type[M], callback: Callable[[M], None]) -> None:
        """Call ``callback`` with every notice of this kind (one callback a kind)."""
        self._subscribers[kind] = callback

    def unsubscribe(self, kind: type[Message]) -> None:
        self._subscribers.pop(kind, None)

    async def request(self, message: RefreshRequest, timeout: float) -> RefreshReply:
        """Send a request and return the supervisor's reply; raise TimeoutError or
        ConnectionError."""
        if self._task is not None and self._task.done():  # the channel is gone for good
            raise ConnectionError("the supervisor went away")
        request_id = next(self._ids)
        future: asyncio.Future[RefreshReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            self._writer.write(encode(dataclasses.replace(message, id=request_id)))
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(request_id, None)

    def notify(self, message: Message) -> None:
        """Send a notice that has no reply, without waiting; dropped once the channel closed."""
        if not self._writer.is_closing():
            self._writer.write(encode(message))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def _read(self, on_lost: Callable[[], None]) -> None:
        while (message := await read_message(self._reader)) is not None:
            if isinstance(message, RefreshReply):
                future = self._waiting.get(message.id)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            callback = self._subscribers.get(type(message))
            if callback is not None:
                try:
                    callback(message)
                except Exception:  # a bug in one notice must not deafen the worker
                    log.exception("control message failed", extra={"event": "control"})
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the supervisor went away"))
        on_lost()
