"""SPEC §8.4: a decision path below /auth that is not normalised (a dot segment, plain or
percent-encoded, or an empty segment) is refused with 401, on both of authproxy's code paths
and through a real nginx that matched a location on the normalised path but forwarded the raw
one. An encoded slash inside a segment is kept.

Requests are raw bytes on a socket: HTTP clients normalise paths before sending them.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import toml_text, write_users
from .servers import (
    Authproxy,
    free_port,
    http_request,
    start_authproxy,
    start_nginx,
    wait_until,
)

PASSWORD = "alice-Paths-n0rmal"
ALICE = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
# (raw path, the original URI authproxy logs: the path as sent, decoded once)
REFUSED = [
    ("/auth/../metrics", "/../metrics"),
    ("/auth/./x", "/./x"),
    ("/auth/..", "/.."),
    ("/auth/api/%2e%2e/admin", "/api/../admin"),
    ("/auth/api/%2E%2e/admin", "/api/../admin"),
    ("/auth/api/.%2e/admin", "/api/../admin"),
    ("/auth/api/%2e/admin", "/api/./admin"),
    ("/auth/api/..%2fadmin", "/api/../admin"),
    ("/auth//admin", "//admin"),
    ("/auth/api//admin", "/api//admin"),
]
KEPT = ["/auth", "/auth/", "/auth/api/a%2Fb", "/auth/api/..x/.y/", "/auth/api/x?next=/../y"]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authproxy]:
    directory = tmp_path_factory.mktemp("paths")
    users = write_users(directory / "users.htpasswd", alice=PASSWORD)
    config = toml_text({"log": {"level": "info", "format": "json"},
                        "basic": {"users_file": str(users), "max_failures": 10000}})
    with start_authproxy(config, [f"127.0.0.1:{free_port()}"], directory) as running:
        yield running


def exchange(address: str, target: str, *, close: bool, auth: str = ALICE) -> int:
    """The status of ``GET target`` sent as raw bytes. ``close``: with Connection: close,
    which aiohttp's request path serves; without it, a keep-alive HTTP/1.1 request with no
    body, which authproxy answers as it parses it when the answer needs no waiting
    (connection.py): a remembered password, or a refusal found by parsing."""
    host, _, port = address.rpartition(":")
    request = (f"GET {target} HTTP/1.1\r\nHost: authproxy\r\nAuthorization: {auth}\r\n"
               + ("Connection: close\r\n" if close else "") + "\r\n")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request.encode("ascii"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    assert match, head
    return int(match.group(1))


def decisions(proxy: Authproxy, reason: str) -> list[dict[str, Any]]:
    return [line for line in map(json.loads, (t for t in proxy.log_text().splitlines()
                                              if t.startswith("{")))
            if line.get("event") == "decision" and line.get("reason") == reason]


@pytest.mark.parametrize("close", [True, False], ids=["aiohttp", "early"])
def test_a_path_that_is_not_normalised_is_401_even_with_good_credentials(
    proxy: Authproxy, close: bool
) -> None:
    # the password is remembered from here on, so the early path can answer 200 at once
    assert exchange(proxy.tcp_address, "/auth", close=True) == 200
    for raw, _ in REFUSED:
        assert exchange(proxy.tcp_address, raw, close=close) == 401, raw


@pytest.mark.parametrize("close", [True, False], ids=["aiohttp", "early"])
def test_normalised_paths_and_an_encoded_slash_are_decided(proxy: Authproxy, close: bool) -> None:
    assert exchange(proxy.tcp_address, "/auth", close=True) == 200
    for raw in KEPT:
        assert exchange(proxy.tcp_address, raw, close=close) == 200, raw
        assert exchange(proxy.tcp_address, raw, close=close, auth="Basic bm9ib2R5") == 401


def test_the_refusal_logs_the_raw_path_decoded_once(proxy: Authproxy) -> None:
    # under /auth/logged, so that no other test's decision lines are counted
    for raw, _ in REFUSED:
        exchange(proxy.tcp_address, "/auth/logged" + raw.removeprefix("/auth"), close=True)

    def logged() -> list[dict[str, Any]]:
        return [line for line in decisions(proxy, "path_not_normalised")
                if line["uri"].startswith("/logged")]

    wait_until(lambda: len(logged()) >= len(REFUSED), "the refusals in the log", deadline=5.0)
    assert [(line["status"], line["uri"]) for line in logged()] == [
        (401, "/logged" + uri) for _, uri in REFUSED]
    assert all(PASSWORD not in json.dumps(line) for line in logged())


def test_nginx_forwarding_a_raw_dot_segment_path_gets_401(
    proxy: Authproxy, tmp_path: Path
) -> None:
    """nginx matches ``location = /metrics`` on the normalised path and, with proxy_pass
    naming no URI, forwards the path as the client sent it: /auth/../metrics."""
    port = free_port()
    conf = f"""
    server {{
        listen 127.0.0.1:{port};
        location = /metrics {{
            proxy_pass http://{proxy.tcp_address};
        }}
    }}
    """
    with start_nginx(conf, tmp_path / "nginx", port):
        for raw in ("/auth/../metrics", "/auth/%2e%2e/metrics", "/auth/./../metrics"):
            answer = http_request(f"http://127.0.0.1:{port}{raw}",
                                  headers=[("Authorization", ALICE)])
            assert answer.status == 401, (raw, answer)
            assert answer.header_values("X-Auth-User") == []
