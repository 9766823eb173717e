"""The HTTP edge: raw bytes into the production protocol (``http.connection.Connection``),
what it writes back judged.

``check`` drives the protocol of a real app (Basic, a user table) through an in-memory
transport, for atheris's speed; the property tests also send the same bytes to the real
server on a loopback socket (``check_exchange`` is the judge of both). Each input is
followed by SENTINEL, a request that closes the connection, so that an exchange that does
not end is a hang rather than a keep-alive.

Properties: every answer is a well-formed HTTP/1.1 response; a status is one a decision or
route may give (never a 5xx but /readyz's 503); no more answers than requests, a
``Connection: close`` answer is the last; no Authorization credential comes back; the
exchange ends.
"""
from __future__ import annotations

import asyncio
import atexit
import re
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from authproxy.config import load_config
from authproxy.http.app import create_app
from authproxy.http.connection import Connection
from authproxy.http.server import Server

SENTINEL = b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
ALLOWED = {200, 401, 403, 404, 405, 503}
# alice:{SHA} of "secret"
USERS = "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n"
CONFIG = """[server]
header_timeout = 5
[basic]
users_file = "{users}"
"""
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ([^\r\n]*)\r\n")
_AUTHORIZATION = re.compile(rb"(?im)^authorization:[ \t]*[^ \t\r\n]+[ \t]+([^\r\n]{12,})")
Response = tuple[int, dict[str, str], bytes]


def write_config(directory: Path) -> Path:
    """A config of this target's app (and of the real server the property tests run)."""
    users = directory / "users.htpasswd"
    users.write_text(USERS)
    path = directory / "authproxy.toml"
    path.write_text(CONFIG.format(users=users))
    return path


def parse_responses(output: bytes, cut: bool = False, head_requests: bool = False
                    ) -> list[Response]:
    """The responses in ``output``; AssertionError if it is anything but whole responses
    (``cut``: but for the last, cut short by a connection reset: left out;
    ``head_requests``: some may answer a HEAD, without their body)."""
    responses = []
    at = 0
    while at < len(output):
        if cut and b"\r\n\r\n" not in output[at:]:
            break
        status = _STATUS_LINE.match(output, at)
        assert status, f"not a status line at {at}: {output[at:at + 40]!r}"
        at = status.end()
        headers: dict[str, str] = {}
        while not output.startswith(b"\r\n", at):
            header = _HEADER_LINE.match(output, at)
            assert header, f"not a header line: {output[at:at + 40]!r}"
            name = header[1].decode().lower()
            assert name not in headers, f"{name} twice"
            headers[name] = header[2].decode("utf-8")
            at = header.end()
        at += 2
        length = int(headers["content-length"])
        if head_requests and (at == len(output) or _STATUS_LINE.match(output, at)):
            length = 0  # the answer to a HEAD: no body (no body here starts like a status)
        body = output[at:at + length]
        assert len(body) == length, "a body shorter than its Content-Length"
        at += length
        responses.append((int(status[1]), headers, body))
    return responses


@cache
def _baseline() -> bytes:
    """What the server says to anyone (the challenge, the routes' fixed bodies)."""
    return b'realm="authproxy", charset="UTF-8" 404: Not Found 405: Method Not Allowed'


def check_exchange(data: bytes, output: bytes, closed: bool, requests: int | None = None,
                   reset: bool = False) -> None:
    """Judge what the server wrote back for ``data`` + SENTINEL; ``requests``: how many
    requests ``data`` holds when known (every one well-formed), else None. ``reset``: the
    socket was reset (bytes the server did not read), so the end may be missing."""
    assert closed, "the exchange did not end (SENTINEL asks for a close)"
    responses = parse_responses(output, cut=reset, head_requests=b"HEAD" in data)
    assert responses or reset, "closed without an answer"
    for status, _, _ in responses:
        assert status in ALLOWED, f"status {status}"
    for i, (_, headers, _) in enumerate(responses):
        if headers.get("connection") == "close":
            assert i == len(responses) - 1, "answered after Connection: close"
    if not reset:
        assert responses[-1][1].get("connection") == "close", "closed without saying so"
    if requests is not None and not reset:
        if len(responses) == requests + 1:
            assert responses[-1][0] == 200, "SENTINEL (/healthz) answered"
        else:
            assert len(responses) <= requests, "more answers than requests"
            assert responses[-1][0] == 401, "a refused connection ends with a 401"
    for credential in _AUTHORIZATION.findall(data):
        credential = credential.strip()
        if len(credential) >= 12 and credential not in _baseline():
            assert credential not in output, "an Authorization credential came back"


class MemoryTransport(asyncio.Transport):
    """A transport that keeps what is written; closing reports the connection lost."""

    def __init__(self, protocol: Connection) -> None:
        super().__init__()
        self._protocol = protocol
        self.written = bytearray()
        self._closing = False

    def write(self, data: Any) -> None:
        assert not self._closing, "written after close"
        self.written += data

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Running:
    """One app, served by in-memory connections, for the life of the process."""

    def __init__(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="fuzz-edge-"))
        atexit.register(shutil.rmtree, directory, True)
        self.loop = asyncio.new_event_loop()
        config = load_config(str(write_config(directory)), environ={})
        self.server = self.loop.run_until_complete(self._start(config))

    @staticmethod
    async def _start(config: Any) -> Server:
        server = Server(create_app(config))
        await server.app.startup()
        return server

    async def exchange(self, data: bytes) -> tuple[bytes, bool]:
        connection = Connection(self.server.serving)
        transport = MemoryTransport(connection)
        connection.connection_made(transport)
        connection.data_received(data)
        connection.data_received(SENTINEL)
        try:
            await asyncio.wait_for(asyncio.shield(connection.closed), 5)
        except TimeoutError:
            connection.connection_lost(None)
            return bytes(transport.written), False
        return bytes(transport.written), True


@cache
def _running() -> _Running:
    return _Running()


def check(data: bytes) -> None:
    running = _running()
    output, closed = running.loop.run_until_complete(running.exchange(data))
    check_exchange(data, output, closed)
