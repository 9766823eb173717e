"""One log line is one line in any viewer: line and paragraph separators from the request
(the original URI, through real nginx) are escaped, in JSON and in text format."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from authproxy.obs.logs import format_line

from .conftest import toml_text, write_users
from .servers import (
    PASSWORDS,
    Authproxy,
    EchoUpstream,
    ProtectedSite,
    basic_auth,
    free_port,
    start_authproxy,
    start_protected_site,
    wait_until,
)

# Every character some viewer reads as a line or paragraph break, or as a control.
BREAKERS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x7f\x9b"
# What a client can put in a request line that nginx forwards in X-Original-URI as is:
# UTF-8 of U+2028, U+2029, U+0085, and a lone byte that is no UTF-8 at all.
URI_BYTES = b"\xe2\x80\xa8\xe2\x80\xa9\xc2\x85\x85"


@pytest.fixture(params=["json", "text"])
def site(request: pytest.FixtureRequest, tmp_path: Path,
         echo_upstream: EchoUpstream) -> Iterator[tuple[Authproxy, ProtectedSite]]:
    users = write_users(tmp_path / "users.htpasswd", **PASSWORDS)
    config = toml_text({"log": {"format": request.param},
                        "basic": {"users_file": str(users), "max_failures": 10000}})
    address = f"127.0.0.1:{free_port()}"
    with (start_authproxy(config, [address], tmp_path / "authproxy") as proxy,
          start_protected_site(address, echo_upstream.address, tmp_path / "nginx") as site):
        yield proxy, site


def raw_get(port: int, target: bytes, headers: list[tuple[str, str]]) -> int:
    """GET with a request target of raw bytes; the response status."""
    head = b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    head += b"".join(f"{n}: {v}\r\n".encode() for n, v in headers) + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        return int(sock.recv(64).split(b" ")[1])


def lines_with(proxy: Authproxy, marker: str) -> list[str]:
    """The log lines holding ``marker``, split the way a viewer might (every Unicode line
    boundary), once the decision is written."""
    found: list[str] = []

    def logged() -> bool:
        found[:] = [line for line in proxy.log_text().splitlines() if marker in line]
        return bool(found)

    wait_until(logged, f"{marker} in authproxy's log", deadline=5.0)
    return found


def test_separators_in_the_original_uri_stay_on_one_log_line(
    site: tuple[Authproxy, ProtectedSite]
) -> None:
    proxy, protected = site
    marker = uuid.uuid4().hex
    target = f"/{marker}/a".encode() + URI_BYTES + f"b/{marker}-end".encode()
    # allowed (the echo upstream then refuses the odd path itself: 400) and refused
    assert raw_get(protected.port, target, [basic_auth("alice")]) == 400
    assert raw_get(protected.port, target, [basic_auth("alice", "wrong")]) == 401
    lines = lines_with(proxy, marker)
    text = proxy.log_text()
    # splitlines() breaks at every character a viewer may take for a line end
    assert text.splitlines() == text.split("\n")[:-1]
    assert len(lines) == 2, lines
    for line in lines:
        assert f"{marker}-end" in line  # the whole URI on the line that starts it
        assert line.isprintable(), line
        if line.startswith("{"):
            uri = json.loads(line)["uri"]
            assert uri.startswith(f"/{marker}/a\u2028\u2029\x85")  # the value survives


def test_c1_controls_in_x_original_uri_stay_on_one_log_line(
    site: tuple[Authproxy, ProtectedSite]
) -> None:
    """Straight to authproxy (from the trusted proxy's address), as a proxy that forwards
    what it was sent would ask: C1 controls (NEL, CSI) and U+2028/9. (C0 controls and DEL are
    refused by the HTTP parser before any URI is read: 401 unparseable_request.)"""
    proxy, _ = site
    marker = uuid.uuid4().hex
    uri = f"/{marker}/x\x85\x9b\u2028\u2029y/{marker}-end"
    status = raw_get(int(proxy.tcp_address.rpartition(":")[2]), b"/auth",
                     [("X-Original-URI", uri)])
    assert status == 401
    [line] = lines_with(proxy, marker)
    text = proxy.log_text()
    assert text.splitlines() == text.split("\n")[:-1]
    assert f"{marker}-end" in line and line.isprintable(), line
    if line.startswith("{"):
        assert json.loads(line)["uri"] == uri


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_format_line_escapes_every_line_breaker(fmt: str) -> None:
    line = format_line({"uri": f"/a{BREAKERS}\n\r\udc85b", "msg": "x\u2028y"}, fmt)
    assert len(line.splitlines()) == 1 and line.isprintable(), line
    if fmt == "json":
        assert json.loads(line)["uri"] == f"/a{BREAKERS}\n\r\udc85b"
