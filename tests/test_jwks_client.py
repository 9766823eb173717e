"""The JWKS client's own HTTP (jwt/jwksfetch.py): what the server says on the wire, byte for
byte, from a real TLS server on loopback; every odd answer ends in a JwksError with a fixed
reason, never another exception, and never reads past the limits."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from authproxy.jwt.jwks import JwksError
from authproxy.jwt.jwksfetch import MAX_DOCUMENT_BYTES, JwksClient, Request, tls_context

pytest_plugins = ["tests.jwks_fixtures"]

BODY = b'{"keys": []}'
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TLS server on loopback that answers each connection with ``answer`` and keeps the
    request heads it read."""

    def __init__(self, tls_ca: trustme.CA, names: tuple[str, ...] = ("127.0.0.1", "localhost")
                 ) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_ca.issue_cert(*names).configure_cert(self.context)
        self.answer: Answer = send(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n" + BODY)
        self.heads: list[bytes] = []
        self.sent = 0  # bytes of body the answers wrote
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", 0,
                                                 ssl=self.context)

    def url(self, path: str = "/jwks.json") -> str:
        assert self.server is not None
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}{path}"

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            await self.answer(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client hung up, as it may
        finally:
            writer.transport.abort()


def send(*parts: bytes, then_hold: bool = False) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
        if then_hold:
            await reader.read()  # until the client closes
    return answer


@pytest.fixture
async def raw(tls_ca: trustme.CA) -> AsyncIterator[RawServer]:
    server = RawServer(tls_ca)
    await server.start()
    yield server
    assert server.server is not None
    server.server.close()


@pytest.fixture
def client(ca_file: Path) -> JwksClient:
    client = JwksClient(tls_context(str(ca_file)))
    client.timeout = 2.0
    return client


async def reason_of(client: JwksClient, url: str) -> str:
    with pytest.raises(JwksError) as caught:
        await client.fetch(url)
    return caught.value.reason


async def test_a_plain_answer_and_what_is_asked(raw: RawServer, client: JwksClient) -> None:
    document = await client.fetch(raw.url("/keys/a b?tenant=x&v=ü"))
    assert (document.body, document.max_age) == (BODY, None)
    [head] = raw.heads
    lines = head.decode("ascii").split("\r\n")
    assert lines[0] == "GET /keys/a%20b?tenant=x&v=%C3%BC HTTP/1.1"
    assert f"Host: {raw.url('').split('//')[1]}" in lines
    assert {"Accept: application/json", "Connection: close"} <= set(lines)
    assert not [line for line in lines if line.lower().startswith("authorization")]


async def test_user_info_is_sent_as_basic_credentials(raw: RawServer,
                                                      client: JwksClient) -> None:
    await client.fetch(raw.url().replace("https://", "https://svc%40idp:s%3Acret@"))
    assert b"\r\nAuthorization: Basic c3ZjQGlkcDpzOmNyZXQ=\r\n" in raw.heads[0]  # svc@idp:s:cret


@pytest.mark.parametrize("answer", [
    # chunked, in several writes
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n", b'{"key\r\n',
     b'7\r\ns": []}\r\n0\r\n\r\n'],
    # no length at all: the body ends when the server closes
    [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", BODY],
    [b"HTTP/1.0 200 OK\r\n\r\n" + BODY],
    # an interim answer first
    [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 12"
     b"\r\n\r\n" + BODY],
])
async def test_every_way_of_ending_a_body_gives_the_same_document(
        raw: RawServer, client: JwksClient, answer: list[bytes]) -> None:
    raw.answer = send(*answer)
    assert (await client.fetch(raw.url())).body == BODY


async def test_cache_control_lines_are_read_together(raw: RawServer,
                                                     client: JwksClient) -> None:
    raw.answer = send(b"HTTP/1.1 200 OK\r\nCache-Control: public\r\nContent-Length: 12\r\n"
                      b"cache-control: max-age=120\r\n\r\n" + BODY)
    assert (await client.fetch(raw.url())).max_age == 120


@pytest.mark.parametrize(("answer", "reason"), [
    # redirects are not followed
    (b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/jwks\r\nContent-Length: 0\r\n\r\n",
     "http_status"),
    (b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nbad", "http_status"),
    # the body stops short of its length, or of its last chunk
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + BODY, "connection_error"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nc\r\n" + BODY, "connection_error"),
    (b"HTTP/1.1 200 OK\r\nContent-Le", "connection_error"),
    (b"", "connection_error"),
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "connection_error"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "connection_error"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_DOCUMENT_BYTES + 1), "oversized"),
])
async def test_a_bad_answer_is_one_reason(raw: RawServer, client: JwksClient, answer: bytes,
                                          reason: str) -> None:
    raw.answer = send(answer)
    assert await reason_of(client, raw.url()) == reason


async def test_an_endless_body_is_cut_at_the_limit(raw: RawServer, client: JwksClient) -> None:
    chunk = b"%x\r\n%s\r\n" % (64 << 10, b"x" * (64 << 10))

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while not writer.is_closing():  # (drain() does not raise once the client is gone)
            writer.write(chunk)
            raw.sent += 64 << 10
            await writer.drain()
            await asyncio.sleep(0)  # a TLS writer's drain() may not pause: let the client read

    raw.answer = endless
    assert await reason_of(client, raw.url()) == "oversized"
    assert raw.sent < 4 * MAX_DOCUMENT_BYTES  # stopped reading soon after the limit


async def test_endless_headers_are_cut_at_the_limit(raw: RawServer, client: JwksClient) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while not writer.is_closing():
            writer.write(b"X-Filler: " + b"y" * 1000 + b"\r\n")
            raw.sent += 1000
            await writer.drain()
            await asyncio.sleep(0)

    raw.answer = endless
    assert await reason_of(client, raw.url()) == "oversized"
    assert raw.sent < 1 << 20


async def test_an_answer_that_drips_is_cut_at_the_timeout(raw: RawServer,
                                                          client: JwksClient) -> None:
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while not writer.is_closing():  # a byte every 50 ms: the whole never arrives
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)

    raw.answer = drip
    client.timeout = 0.5
    started = asyncio.get_running_loop().time()
    assert await reason_of(client, raw.url()) == "timeout"
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_a_certificate_for_another_name_is_a_tls_error(tls_ca: trustme.CA,
                                                             client: JwksClient) -> None:
    other = RawServer(tls_ca, names=("idp.example",))  # signed by the trusted CA
    await other.start()
    try:
        assert await reason_of(client, other.url()) == "tls_error"
        assert other.heads == []
    finally:
        assert other.server is not None
        other.server.close()


@pytest.mark.parametrize("url", [
    "ftp://127.0.0.1/jwks", "https:///jwks", "https://127.0.0.1:99999/jwks",
    "https://bad\x00host/jwks", "https://a..b/jwks",
])
async def test_a_url_that_cannot_be_requested_is_a_connection_error(
        client: JwksClient, url: str) -> None:
    assert await reason_of(client, url) == "connection_error"


def test_the_host_header_of_an_ipv6_address_and_of_a_default_port() -> None:
    assert b"\r\nHost: [::1]:8443\r\n" in Request.get("https://[::1]:8443/k").head
    assert b"\r\nHost: idp.example\r\n" in Request.get("https://idp.example:443/k").head
    assert b"\r\nHost: xn--bcher-kva.example\r\n" in Request.get("https://bücher.example/").head
