"""The HTTP edge cannot be held open (SPEC §8.4): a head must arrive in time and within its
bytes, connections are capped, idle ones are closed, and nginx in front never notices.

The production runner on real sockets, spoken to in raw HTTP/1.1 (as in test_http_layer.py),
with short configured limits; nginx and authproxy as real processes for the last test.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from authproxy.config import Config
from authproxy.http.app import METRICS, create_app
from authproxy.http.server import start_server
from authproxy.listen import bind_all

from .conftest import eventually, toml_text, write_users
from .servers import (
    PASSWORDS,
    basic_auth,
    free_port,
    http_request,
    start_authproxy,
    start_protected_site,
    wait_until,
)

GOOD = b"Authorization: Basic " + base64.b64encode(b"alice:wonderland")
MIN_HEAD_BYTES = 65536 + 4096


def request(*headers: bytes) -> bytes:
    return b"GET /auth HTTP/1.1\r\nHost: authproxy\r\n" + b"".join(
        h + b"\r\n" for h in headers) + b"\r\n"


@pytest.fixture
def edge(
    make_config: Callable[..., Config], htpasswd: Callable[..., Path], tmp_path: Path
) -> Callable[..., Any]:
    """edge(**server_keys): the production server serving 127.0.0.1 with those [server] keys;
    yields {"port", "app", "runner"} (an async context manager)."""

    class Edge:
        def __init__(self, **server: Any) -> None:
            port = free_port()
            self.config = make_config({
                "server": {"listen": [f"127.0.0.1:{port}"], **server},
                "basic": {"users_file": str(htpasswd(alice="wonderland"))},
            })
            self.port = port

        async def __aenter__(self) -> Edge:
            self.app = create_app(self.config)
            sockets = bind_all(self.config.server.listen_addresses)
            assert sockets is not None
            self.server = await start_server(self.app, sockets)
            return self

        async def __aexit__(self, *exc: object) -> None:
            await self.server.stop()

        def closes(self, reason: str) -> float:
            return self.app[METRICS].registry.get_sample_value(
                "authproxy_http_edge_closes_total", {"reason": reason}) or 0.0

        @property
        def held(self) -> int:
            return self.server.edge.held

        async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", self.port)

    return Edge


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (within ``timeout``)."""
    return await asyncio.wait_for(reader.read(), timeout)


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 raw: bytes = request(GOOD)) -> bytes:
    writer.write(raw)
    await writer.drain()
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


async def test_a_head_not_finished_in_time_gets_its_connection_closed(
    edge: Callable[..., Any]
) -> None:
    async with edge(header_timeout=1) as server:
        reader, writer = await server.connect()
        started = time.monotonic()
        writer.write(b"GET /auth HTTP/1.1\r\nHost: authproxy\r\nX-Slow: aaaa")
        assert await closed_by_server(reader) == b""
        assert time.monotonic() - started < 4
        assert server.closes("header_timeout") == 1
        assert server.held == 0
        writer.close()
        # a connection that finishes its head in time is not affected
        reader, writer = await server.connect()
        assert (await answer(reader, writer)).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    edge: Callable[..., Any]
) -> None:
    async with edge(keepalive_timeout=1) as server:
        reader, writer = await server.connect()  # sends nothing at all
        assert await closed_by_server(reader) == b""
        writer.close()
        reader, writer = await server.connect()  # and after a response: idle again
        assert (await answer(reader, writer)).startswith(b"HTTP/1.1 200")
        assert await closed_by_server(reader) == b""
        writer.close()


async def test_a_head_past_its_byte_cap_gets_401_and_lets_go_of_its_bytes(
    edge: Callable[..., Any]
) -> None:
    async with edge(max_head_bytes=MIN_HEAD_BYTES) as server:
        reader, writer = await server.connect()
        writer.write(b"GET /auth HTTP/1.1\r\nHost: authproxy\r\n")
        filler = b"X-Filler: " + b"a" * 4000 + b"\r\n"
        for _ in range(10):  # 40 kB, held: under the cap
            writer.write(filler)
        await writer.drain()
        await eventually(lambda: server.held > 30_000, "the unfinished head counted")
        for _ in range(10):  # 80 kB in all: past it, the head never finished
            writer.write(filler)
        response = await closed_by_server(reader)
        assert response.startswith(b"HTTP/1.1 401")
        assert b'WWW-Authenticate: Basic realm="authproxy"' in response
        assert b"Connection: close" in response
        assert server.closes("head_too_large") == 1
        assert server.held == 0
        writer.close()


async def test_a_closed_connection_lets_go_of_its_unfinished_head_at_once(
    edge: Callable[..., Any]
) -> None:
    # The connection and its parser refer to each other; the collector runs rarely here
    # (GC_THRESHOLDS), so a cycle kept every abandoned head (up to max_head_bytes each) for
    # minutes: 200 connections x 1 MB left RSS +50 MB after they closed (bench_edge (a)).
    # With the collector off, the connection must still be freed as it closes.
    async with edge() as server:
        _, writer = await server.connect()
        writer.write(b"GET /auth HTTP/1.1\r\nHost: authproxy\r\nX-Filler: " + b"a" * 40_000)
        await writer.drain()
        await eventually(lambda: server.held > 30_000, "the unfinished head held")
        connections = server.server.serving.connections
        (connection,) = connections
        freed = weakref.ref(connection)
        del connection
        gc.disable()
        try:
            writer.close()
            await eventually(lambda: not connections, "the connection closed")
            await eventually(lambda: freed() is None, "the connection freed without a collection")
        finally:
            gc.enable()


async def test_a_client_that_half_closes_still_gets_its_answers(edge: Callable[..., Any]) -> None:
    # Sent, then shut for writing (as `nc -N` or a request piped in does): the answers that
    # need a hash verified come after the EOF, and must still be written.
    async with edge() as server:
        reader, writer = await server.connect()
        writer.write(request(GOOD) + request(b"Authorization: Basic " +
                                             base64.b64encode(b"alice:wrong")))
        writer.write_eof()
        answers = await closed_by_server(reader)
        assert answers.startswith(b"HTTP/1.1 200")
        assert answers.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 401" in answers
        assert b"Connection: close" in answers.split(b"HTTP/1.1 401")[1]
        assert server.held == 0
        writer.close()


async def test_a_64k_authorization_is_still_refused_as_a_credential(
    edge: Callable[..., Any]
) -> None:
    """SPEC §7: under the smallest head cap allowed, a 64 kB header line reaches the
    decision (401 like a bad credential) rather than an edge bound."""
    async with edge(max_head_bytes=MIN_HEAD_BYTES) as server:
        reader, writer = await server.connect()
        head = await answer(reader, writer, request(b"Authorization: Basic " + b"QUFB" * 16384))
        assert head.startswith(b"HTTP/1.1 401")
        assert server.closes("head_too_large") == 0
        writer.close()


async def test_heads_held_across_connections_are_bounded_in_total(edge: Callable[..., Any]) -> None:
    async with edge(max_head_bytes=MIN_HEAD_BYTES, max_head_bytes_total=100_000) as server:
        partial = b"GET /auth HTTP/1.1\r\nHost: authproxy\r\nX-Filler: " + b"a" * 60_000
        first_reader, first = await server.connect()
        first.write(partial)
        await eventually(lambda: server.held >= 60_000, "the first head counted")
        second_reader, second = await server.connect()
        second.write(partial)  # 120 kB held together: the second goes
        assert (await closed_by_server(second_reader)).startswith(b"HTTP/1.1 401")
        assert server.closes("head_budget") == 1
        # a complete request is never charged against the budget; the first head may finish
        third_reader, third = await server.connect()
        assert (await answer(third_reader, third)).startswith(b"HTTP/1.1 200")
        head = await answer(first_reader, first, b"\r\n" + GOOD + b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert server.held == 0
        for writer in (first, second, third):
            writer.close()


async def test_connections_past_the_cap_are_closed_while_open_ones_are_answered(
    edge: Callable[..., Any]
) -> None:
    async with edge(max_connections=3) as server:
        open_ones = [await server.connect() for _ in range(3)]
        for reader, writer in open_ones:
            assert (await answer(reader, writer)).startswith(b"HTTP/1.1 200")
        reader, writer = await server.connect()
        assert await closed_by_server(reader) == b""  # closed unanswered, at once
        writer.close()
        assert server.closes("max_connections") == 1
        for reader, writer in open_ones:
            assert (await answer(reader, writer)).startswith(b"HTTP/1.1 200")
        open_ones[0][1].close()
        await eventually(lambda: server.server.edge.open == 2, "a place free again")
        reader, writer = await server.connect()
        assert (await answer(reader, writer)).startswith(b"HTTP/1.1 200")
        for _, other in (*open_ones[1:], (reader, writer)):
            other.close()


def _open_connections(address: str) -> float:
    """authproxy's own count of its open connections (this request's included)."""
    body = http_request(f"http://{address}/metrics").body.decode()
    for line in body.splitlines():
        if line.startswith("authproxy_http_connections_open "):
            return float(line.split()[-1])
    raise AssertionError("no authproxy_http_connections_open in /metrics")


def test_nginx_keeps_answering_across_authproxy_idle_closes(
    tmp_path: Path, echo_upstream: Any
) -> None:
    """nginx's upstream keep-alive pool loses its connections to authproxy's idle timeout
    (1 s here) again and again; no client request fails for it."""
    write_users(tmp_path / "users.htpasswd", **PASSWORDS)
    config = toml_text({
        "server": {"keepalive_timeout": 1},
        "basic": {"users_file": str(tmp_path / "users.htpasswd")},
    })
    address = f"127.0.0.1:{free_port()}"
    with (start_authproxy(config, [address], tmp_path / "authproxy") as proxy,
          start_protected_site(address, echo_upstream.address, tmp_path / "nginx") as site,
          ThreadPoolExecutor(8) as pool):
        url = f"{site.base_url}/file"
        statuses: list[int] = []
        for _ in range(3):
            answers = pool.map(lambda _: http_request(url, headers=[basic_auth("alice")]),
                               range(16))  # several pooled connections at once
            statuses.extend(a.status for a in answers)
            wait_until(lambda: _open_connections(proxy.tcp_address) <= 1,
                       "authproxy closed nginx's idle connections", deadline=10)
        assert statuses == [200] * 48
        assert "edge_close" not in proxy.log_text()
        site.nginx.assert_error_log_clean()
