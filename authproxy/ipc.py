"""The control channel between the supervisor and one worker process.

One stream socket pair per worker, made by the supervisor; the worker inherits its end. On it
travel JSON objects, one a line. The supervisor sends first a ``bootstrap`` (the validated
config, pickled: the worker runs exactly what the supervisor checked, even if the file changed
since, and nothing but the supervisor holds the other end) and the ``lockout`` state that
follows it (banshare.py), then notices (``published``, ``ban``, ``known``) and replies
(``reply`` with the request's ``id``). The worker sends requests (``refresh``) and notices
(``failure``, ``known``; :class:`Heartbeat`). When the supervisor goes away, the worker sees
end-of-file and stops.

Messages are being moved to one dataclass each, defined here (:class:`Heartbeat` so far).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .config import Config

log = logging.getLogger("authproxy.workers")

MAX_MESSAGE = 1 << 20  # bytes in one line; a bootstrap is a few kB
Message = dict[str, Any]


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message; None at end-of-file or on a line that is not a JSON object."""
    try:
        line = await reader.readline()
        message = json.loads(line) if line else None
    except (ValueError, ConnectionError):
        return None
    return message if isinstance(message, dict) else None


async def _read_lockout_state(reader: asyncio.StreamReader) -> Message:
    """The ``lockout`` messages that follow the bootstrap, merged (banshare.py): what a
    worker must know before it serves."""
    state: Message = {"bans": [], "known": []}
    while (message := await read_message(reader)) is not None:
        if message.get("op") == "lockout_end":
            return state
        if message.get("op") != "lockout":
            break
        if "mac_key" in message:
            state["mac_key"] = message["mac_key"]
        state["bans"].extend(message.get("bans", ()))
        state["known"].extend(message.get("known", ()))
    raise RuntimeError("no lockout state from the supervisor")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Worker to supervisor, every :func:`heartbeat_interval` from the worker's event loop:
    that loop turned just now. A worker silent for ``server.worker_timeout`` seconds is hung
    (stopped, or its loop blocked) and is killed and replaced (supervisor.py)."""

    OP: ClassVar[str] = "heartbeat"

    def message(self) -> Message:
        return {"op": self.OP}


def heartbeat_interval(worker_timeout: float) -> float:
    """Seconds between heartbeats: several fit in ``worker_timeout``, so that one late turn
    of a busy loop is not taken for a hang."""
    return min(1.0, worker_timeout / 4)


def bootstrap_message(config: Config, index: int, state_dir: str, metrics_dir: str) -> Message:
    return {
        "op": "bootstrap", "index": index, "state_dir": state_dir, "metrics_dir": metrics_dir,
        "config": base64.b64encode(pickle.dumps(config)).decode("ascii"),
    }


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What a worker process knows about the service it is part of."""

    index: int  # 0..workers-1, stable across restarts of that worker
    state_dir: str  # the supervisor's private directory (published key sets)
    metrics_dir: str  # PROMETHEUS_MULTIPROC_DIR
    link: MasterLink
    lockout: Message  # the bans in force and known pairs at start (banshare.py)


class MasterLink:
    """A worker's end of the control channel: requests to the supervisor, notices from it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._subscribers: dict[str, Callable[[Message], None]] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, fd: int) -> tuple[MasterLink, Config, Message]:
        """Connect over the inherited ``fd``; return the link, the config and the bootstrap."""
        sock = socket.socket(fileno=fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
        boot = await read_message(reader)
        if boot is None or boot.get("op") != "bootstrap":
            writer.close()
            raise RuntimeError("no bootstrap from the supervisor")
        config = pickle.loads(base64.b64decode(boot["config"]))  # noqa: S301 - see module doc
        boot["lockout"] = await _read_lockout_state(reader)
        return cls(reader, writer), config, boot

    def start(self, on_lost: Callable[[], None]) -> None:
        """Read notices and replies until end-of-file or an unreadable line, then call
        ``on_lost``."""
        self._task = asyncio.create_task(self._read(on_lost))

    def subscribe(self, op: str, callback: Callable[[Message], None]) -> None:
        self._subscribers[op] = callback

    def unsubscribe(self, op: str) -> None:
        self._subscribers.pop(op, None)

    async def request(self, message: Message, timeout: float) -> Message:
        """Send a request and return the supervisor's reply; raise TimeoutError or
        ConnectionError."""
        if self._task is not None and self._task.done():  # the channel is gone for good
            raise ConnectionError("the supervisor went away")
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            self._writer.write(encode({**message, "id": request_id}))
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
            if message.get("op") == "reply":
                future = self._waiting.get(message.get("id", 0))
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            callback = self._subscribers.get(str(message.get("op")))
            if callback is not None:
                try:
                    callback(message)
                except Exception:  # a bug in one notice must not deafen the worker
                    log.exception("control message failed", extra={"event": "control"})
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the supervisor went away"))
        on_lost()
