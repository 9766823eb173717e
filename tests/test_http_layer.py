"""The HTTP layer is part of the contract: what nginx forwards must get a 401, never a 400.

These tests run the production server (server.start_server) on real sockets and speak raw HTTP/1.1,
since well-behaved clients refuse to send what nginx 1.22 happily forwards.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import re
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypedDict

import pytest

import authproxy
from authproxy.config import Config
from authproxy.core.decider import Answer, PendingDecision
from authproxy.http.app import DECIDER, METRICS, create_app
from authproxy.http.application import Application
from authproxy.http.message import Request
from authproxy.http.server import Server, start_server
from authproxy.listen import bind_all

from .appclient import ServeApp
from .conftest import eventually
from .servers import free_port

CHALLENGE = b'WWW-Authenticate: Basic realm="authproxy", charset="UTF-8"'
GOOD = "Basic " + base64.b64encode(b"alice:wonderland").decode()


class Served(TypedDict):
    """The running server of the ``server`` fixture."""

    port: int
    sock: str
    app: Application
    server: Server


@pytest.fixture
async def server(make_config: Callable[..., Config], htpasswd: Callable[..., Path],
                 tmp_path: Path) -> AsyncIterator[Served]:
    port = free_port()
    sock = tmp_path / "authproxy.sock"
    config = make_config({
        "server": {"listen": [f"127.0.0.1:{port}", f"[::1]:{port}", f"unix:{sock}"]},
        "basic": {"users_file": str(htpasswd(alice="wonderland"))},
    })
    app = create_app(config)
    sockets = bind_all(config.server.listen_addresses)
    assert sockets is not None
    served = await start_server(app, sockets)
    yield {"port": port, "sock": str(sock), "app": app, "server": served}
    await served.stop()


async def exchange(
    server: Served, raw: bytes, *, family: str = "ipv4", timeout: float = 5.0
) -> bytes:
    """Send raw bytes, return the response head (status line and headers)."""
    if family == "unix":
        reader, writer = await asyncio.open_unix_connection(server["sock"])
    else:
        host = "::1" if family == "ipv6" else "127.0.0.1"
        reader, writer = await asyncio.open_connection(host, server["port"])
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    finally:
        writer.close()


def server_names(head: bytes) -> list[bytes]:
    """The Server header values of a response head."""
    return [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
            if line.lower().startswith(b"server:")]


def request(*headers: bytes, method: bytes = b"GET") -> bytes:
    return method + b" /auth HTTP/1.1\r\nHost: authproxy\r\n" + b"".join(
        h + b"\r\n" for h in headers) + b"\r\n"


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "unix"])
async def test_listens_on_tcp_v4_v6_and_unix(server: Served, family: str) -> None:
    head = await exchange(server, request(b"Authorization: " + GOOD.encode()), family=family)
    assert head.startswith(b"HTTP/1.1 200") and b"X-Auth-User: alice" in head


@pytest.mark.parametrize("header", [
    b"Authorization: Basic \x01YWxpY2U6d29uZGVybGFuZA==",
    b"Authorization: Basic YWxp\x7fY2U=",
    b"X-Original-URI: /a\x00b",
    b"Authorization: Basic " + b"A" * (2 << 20),  # past even our generous line limit
])
async def test_parser_refusals_become_401_with_challenge(server: Served, header: bytes) -> None:
    head = await exchange(server, request(header))
    assert head.startswith(b"HTTP/1.1 401") or head.startswith(b"HTTP/1.0 401"), head[:40]
    assert CHALLENGE in head
    assert server_names(head) == [b"authproxy"]
    assert server["app"][METRICS].registry.get_sample_value(
        "authproxy_http_parse_errors_total") == 1


async def test_obs_text_reaches_the_handler_and_is_refused(server: Served) -> None:
    head = await exchange(server, request(b"Authorization: Basic \xff\xfe"))
    assert head.startswith(b"HTTP/1.1 401") and CHALLENGE in head


async def test_64k_authorization_is_refused_as_a_credential(server: Served) -> None:
    head = await exchange(server, request(b"Authorization: Basic " + b"QUFB" * 16384))
    assert head.startswith(b"HTTP/1.1 401") and CHALLENGE in head
    assert not server["app"][METRICS].registry.get_sample_value(
        "authproxy_http_parse_errors_total")


async def test_announced_body_is_never_waited_for(server: Served) -> None:
    # A body of 1 MB is announced and never sent: the decision must not wait for it.
    raw = request(b"Authorization: " + GOOD.encode(), b"Content-Length: 1048576", method=b"POST")
    head = await exchange(server, raw, timeout=3)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Connection: close" in head  # no lingering to drain a body we ignore


async def test_chunked_request_without_body_does_not_hang(server: Served) -> None:
    raw = request(b"Authorization: " + GOOD.encode(), b"Transfer-Encoding: chunked")
    head = await exchange(server, raw, timeout=3)
    assert head.startswith(b"HTTP/1.1 200")


# -- decisions answered as they are parsed (connection.py) -----------------------------------

WRONG = "Basic " + base64.b64encode(b"alice:looking-glass").decode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one response."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    return int(head.split()[1]), head, body


async def test_pipelined_requests_are_answered_in_order(server: Served) -> None:
    """Requests answered at once wait behind one that needs a hash (or another route)."""
    await exchange(server, request(b"Authorization: " + GOOD.encode()))  # alice remembered
    reader, writer = await asyncio.open_connection("127.0.0.1", server["port"])
    try:
        writer.write(request(b"Authorization: " + GOOD.encode())
                     + request(b"Authorization: " + WRONG.encode())  # a hash: aiohttp's path
                     + b"GET /healthz HTTP/1.1\r\nHost: authproxy\r\n\r\n"
                     + request(b"Authorization: " + GOOD.encode())
                     + request())  # no credentials
        answers = [await read_response(reader) for _ in range(5)]
    finally:
        writer.close()
    assert [status for status, _, _ in answers] == [200, 401, 200, 200, 401]
    assert b"X-Auth-User: alice" in answers[0][1] and b"X-Auth-User: alice" in answers[3][1]
    assert answers[2][2] == b'{"status": "ok"}'
    assert CHALLENGE in answers[4][1]
    # answered at once or by aiohttp, every response names the service, and no versions
    assert [server_names(head) for _, head, _ in answers] == [[b"authproxy"]] * 5


async def test_decisions_needing_no_wait_are_answered_without_waiting(
    server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    decider = server["app"][DECIDER]
    waited_for: list[str] = []
    begin = decider.begin

    def counted(request: Request) -> Answer | PendingDecision:
        decision = begin(request)
        if isinstance(decision, PendingDecision):
            waited_for.append(request.headers.get("Authorization", "none"))
        return decision

    monkeypatch.setattr(decider, "begin", counted)
    reader, writer = await asyncio.open_connection("127.0.0.1", server["port"])
    try:
        for headers, status in [
            ((b"Authorization: " + GOOD.encode(),), 200),  # first sight: a hash
            ((b"Authorization: " + GOOD.encode(),), 200),  # remembered
            ((b"Authorization: " + GOOD.encode(), b"X-Original-URI: /x?y=1"), 200),
            ((), 401),  # no credentials
            ((b"Authorization: Basic !!!",), 401),  # malformed
            ((b"Authorization: Digest x",), 401),  # unknown scheme
        ]:
            writer.write(request(*headers))
            assert (await read_response(reader))[0] == status
    finally:
        writer.close()
    assert waited_for == [GOOD]


@pytest.mark.parametrize("raw", [
    b"GET /auth HTTP/1.0\r\nAuthorization: " + GOOD.encode() + b"\r\n\r\n",
    request(b"Authorization: " + GOOD.encode(), b"Connection: close"),
])
async def test_a_request_that_closes_the_connection_gets_it_closed(
    server: Served, raw: bytes
) -> None:
    await exchange(server, request(b"Authorization: " + GOOD.encode()))  # alice remembered
    reader, writer = await asyncio.open_connection("127.0.0.1", server["port"])
    try:
        writer.write(raw)
        status, head, _ = await read_response(reader)
        assert status == 200 and b"X-Auth-User: alice" in head
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    finally:
        writer.close()


async def test_a_client_gone_mid_pipeline_leaves_no_request_half_started(server: Served) -> None:
    """A client that resets the connection with requests still unanswered: the answer
    written at once fails, and the request left for aiohttp (here /healthz) must not be
    taken up after the connection is gone (aiohttp would build it without a parser)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        sock = socket.create_connection(("127.0.0.1", server["port"]))
        sock.setblocking(False)
        await loop.sock_sendall(sock, request(b"Authorization: " + GOOD.encode()))
        assert (await loop.sock_recv(sock, 4096)).startswith(b"HTTP/1.1 200")  # remembered
        # Without yielding to the loop: two more requests, then a reset. The server reads
        # the requests after the reset (Linux keeps them readable), so its first write fails.
        sock.send(request(b"Authorization: " + GOOD.encode())
                  + b"GET /healthz HTTP/1.1\r\nHost: authproxy\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        await eventually(lambda: not server["server"].serving.connections,
                         "the connection dropped")
        gc.collect()  # a task that died of an exception reports it when collected
        assert errors == []
    finally:
        loop.set_exception_handler(None)


# -- the edge is our own, on public APIs; the in-process tests go through it -----------------

PRIVATE_AIOHTTP = re.compile(
    r"aiohttp\.(web_protocol|http_parser|http_writer|helpers|streams|web_request|_)"
    r"|RequestHandler|web\.Server\b|_make_server")


def test_no_private_part_of_aiohttp_is_used_and_its_pin_is_below_the_next_major() -> None:
    """STYLE 11: the parser that is the attack surface can be upgraded the day it is fixed."""
    package = Path(authproxy.__file__).parent
    offenders = [f"{path.name}:{number}" for path in sorted(package.rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if PRIVATE_AIOHTTP.search(line)]
    assert offenders == []
    requirement = re.search(r"^\s*aiohttp\s*([^\n;#]*)", (
        package.parent / "setup.cfg").read_text(), re.M)
    assert requirement is not None
    upper = re.search(r"<\s*([\d.]+)", requirement.group(1))
    assert upper is not None and upper.group(1) == "4", requirement.group(0)


async def test_the_in_process_client_meets_the_production_edge(
    serve: ServeApp, make_config: Callable[..., Config], htpasswd: Callable[..., Path]
) -> None:
    """The fixture the in-process tests share serves the app as `authproxy serve` does: a
    request its parser refuses is our 401 with the challenge, not a framework's 400."""
    client = await serve(create_app(make_config({
        "basic": {"users_file": str(htpasswd(alice="wonderland"))}})))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(request(b"Authorization: " + GOOD.encode())
                     + request(b"Authorization: Basic \x01YWxpY2U="))
        first = await read_response(reader)
        second = await read_response(reader)
    finally:
        writer.close()
    assert first[0] == 200 and second[0] == 401
    assert CHALLENGE in second[1] and server_names(second[1]) == [b"authproxy"]


async def test_a_request_with_a_body_is_answered_and_what_follows_is_not_read(
    server: Served
) -> None:
    """The body is never read, so nothing after it can be told from body bytes: the
    connection closes after the answer, and a request smuggled in the body is not answered."""
    smuggled = request(b"Authorization: " + GOOD.encode())
    raw = (b"POST /auth HTTP/1.1\r\nHost: authproxy\r\nAuthorization: " + GOOD.encode()
           + b"\r\nContent-Length: " + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
    reader, writer = await asyncio.open_connection("127.0.0.1", server["port"])
    try:
        writer.write(raw)
        status, head, _ = await read_response(reader)
        assert status == 200 and b"Connection: close" in head
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_other_routes_answer_head_404_and_405_naming_the_service(server: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server["port"])
    try:
        answers = []
        for line in (b"HEAD /healthz", b"GET /nothing-here", b"POST /healthz"):
            writer.write(line + b" HTTP/1.1\r\nHost: authproxy\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if not line.startswith(b"HEAD"):
                await read_body(reader, head)
            answers.append(head)
    finally:
        writer.close()
    assert [int(head.split()[1]) for head in answers] == [200, 404, 405]
    assert all(server_names(head) == [b"authproxy"] for head in answers)
    assert all(b"\r\nDate: " in head for head in answers)


async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return await asyncio.wait_for(reader.readexactly(length), 5)


@pytest.mark.parametrize("target", [b"http://[bad/auth", b"http://h:99999/auth"])
async def test_an_absolute_target_no_url_parser_reads_gets_401(
    server: Served, target: bytes
) -> None:
    head = await exchange(server, b"GET " + target + b" HTTP/1.1\r\nHost: authproxy\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401") and CHALLENGE in head


@pytest.mark.parametrize("seconds", [0, 951782400, 1767225599.9, 4102444800])
def test_the_date_header_is_what_the_email_package_writes(seconds: float) -> None:
    from email.utils import formatdate

    from authproxy.http.connection import http_date

    assert http_date(seconds) == formatdate(int(seconds), usegmt=True)
