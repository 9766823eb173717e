"""Property tests of the HTTP edge (fuzz target ``tests/fuzz/edge.py``): raw bytes and
HTTP/1.1 requests built from its grammar, into the protocol in memory and into the real
server (``authproxy serve``) on a loopback socket."""
from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from authproxy.core.decider import Answer, Decider
from tests.fuzz import edge
from tests.planted import assert_caught
from tests.servers import Authproxy, free_port, start_authproxy

CREDENTIALS = [
    "Basic " + base64.b64encode(b"alice:secret").decode(),  # right
    "Basic " + base64.b64encode(b"alice:Zq7wrong-password").decode(),
    "Basic " + base64.b64encode(b"Zq7-no-such-user:password").decode(),
    "Bearer Zq7.not-a.token-at-all", "Basic Zq7====junk===", "Basic", "Bearer", "",
    "basic " + base64.b64encode(b"alice:secret").decode(), "Digest Zq7username=x",
]
TARGETS = ["/auth", "/auth/", "/auth/x/y", "/auth?scope=a", "/auth?user=alice&scheme=basic",
           "/auth/../x", "/auth/%2e%2e/x", "/auth//x", "http://h/auth", "*", "/healthz",
           "/readyz", "/metrics", "/nosuch", "/api/v2/jwks", "/auth?group=%ff"]
METHODS = ["GET", "HEAD", "POST", "OPTIONS", "PUT", "DELETE", "PROPFIND", "CONNECT"]


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """One request, and whether it is plain (keep-alive, no body, well-formed)."""
    plain = True
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS))
    if method == "CONNECT":
        plain = False
    headers = [("Host", "authproxy")]
    for _ in range(draw(st.integers(0, 2))):
        headers.append(("Authorization", draw(st.sampled_from(CREDENTIALS))))
    if draw(st.booleans()):
        headers.append(("X-Original-URI", draw(st.sampled_from(TARGETS))))
    odd = draw(st.integers(0, 12))
    body = b""
    newline = b"\r\n"
    if odd == 1:
        headers.append(("Content-Length", "5"))
        body, plain = b"hello", False
    elif odd == 2:
        headers.append(("Transfer-Encoding", "chunked"))
        body, plain = b"5\r\nhello\r\n0\r\n\r\n", False
    elif odd == 3:
        headers.append(("Connection", "close"))
        plain = False
    elif odd == 4:
        headers.append(("X-Long", "x" * draw(st.sampled_from([8000, 70000, 140000]))))
        plain = False
    elif odd == 5:
        headers.append(("Authorization", "Basic Zq7\x01ctl" + draw(st.sampled_from(["\r", "\x7f"]))))
        plain = False
    elif odd == 6:
        headers.append(("X-Folded", "a\r\n continued"))
        plain = False
    elif odd == 7:
        newline, plain = b"\n", False
    elif odd == 8:
        headers.append((draw(st.sampled_from(["Bad Name", "", "X:Y", "\x00"])), "v"))
        plain = False
    elif odd == 9:
        headers.append(("Upgrade", "websocket"))
        headers.append(("Connection", "Upgrade"))
        plain = False
    version = b"HTTP/1.1"
    if odd == 10:
        version, plain = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x"])), False
    head = f"{method} {target} ".encode() + version + newline
    head += b"".join(f"{name}: {value}".encode() + newline for name, value in headers)
    return head + newline + body, plain


@st.composite
def conversations(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """Pipelined requests; their count when every one is plain."""
    made = draw(st.lists(requests(), min_size=1, max_size=3))
    data = b"".join(request for request, _ in made)
    if draw(st.integers(0, 5)) == 0:  # cut short, or bytes after
        data = data[:draw(st.integers(0, len(data)))] + draw(st.binary(max_size=6))
        return data, None
    return data, len(made) if all(plain for _, plain in made) else None


@given(st.binary(max_size=300))
def test_raw_bytes(data: bytes) -> None:
    edge.check(data)


@given(conversations())
@example((b"GET /auth HTTP/1.1\r\nAuthorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n", 1))
def test_conversations_in_memory(conversation: tuple[bytes, int | None]) -> None:
    data, count = conversation
    running = edge._running()
    output, closed = running.loop.run_until_complete(running.exchange(data))
    edge.check_exchange(data, output, closed, count)


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: Any) -> Iterator[Authproxy]:
    directory: Path = tmp_path_factory.mktemp("edge")
    config = edge.write_config(directory).read_text()
    with start_authproxy(config, [f"127.0.0.1:{free_port()}"], directory / "run") as server:
        yield server


def socket_exchange(address: str, data: bytes) -> tuple[bytes, bool, bool]:
    """(what came back, whether the server closed, whether it reset) for ``data`` +
    SENTINEL on a fresh connection."""
    host, _, port = address.rpartition(":")
    output = bytearray()
    reset = False
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        try:
            sock.sendall(data + edge.SENTINEL)
        except (BrokenPipeError, ConnectionResetError):
            reset = True
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return bytes(output), True, True
            except TimeoutError:
                break
            if not chunk:
                return bytes(output), True, reset
            output += chunk
    return bytes(output), False, reset


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.function_scoped_fixture])
@given(st.one_of(conversations(), st.binary(max_size=200).map(lambda b: (b, None))))
def test_conversations_with_the_real_server(real_server: Authproxy,
                                            conversation: tuple[bytes, int | None]) -> None:
    data, count = conversation
    output, closed, reset = socket_exchange(real_server.tcp_address, data)
    edge.check_exchange(data, output, closed, count, reset=reset)


def _refuse_with_400(self: Decider) -> Answer:
    """A planted bug: the parser's refusal answered as a framework would, 400."""
    return Answer(400, {})


def test_a_planted_400_for_bad_http_is_caught(monkeypatch: Any) -> None:
    monkeypatch.setattr(Decider, "refuse_unparseable", _refuse_with_400)
    assert_caught(test_conversations_in_memory)
