"""Real nginx (TLS, the repository's snippets) in front of real authproxy, over TCP and unix.

Two stages are pinned. With authproxy behind nginx: what the client and the app see for good,
bad and hostile requests. With the echo upstream standing where authproxy would be: what the
auth subrequest itself carries (no body, the original request, the policy, keepalive).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from .conftest import IDENTITY_HEADERS, apache_htpasswd
from .servers import (
    NGINX_DIR,
    Authproxy,
    EchoedRequest,
    EchoUpstream,
    ProtectedSite,
    TLSFiles,
    free_port,
    nginx_test_config,
    start_authproxy,
    start_protected_site,
    unsafe_access_logs,
    write_nginx_conf,
)

REALM = "nginx-test"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'
REQUEST_TIMEOUT = 5.0  # seconds for a whole request through nginx, 1 MB bodies included

ALICE, ALICE_PASSWORD = "alice", "alice-Corr3ct-horse"
BOB, BOB_PASSWORD = "bob", "bob-Batt3ry-staple"
WRONG_PASSWORD = "alice-Wr0ng-guess"
STRANGER, STRANGER_PASSWORD = "zed", "zed-Unkn0wn-user"
CAROL, CAROL_PASSWORD = "carol", "carol-M4ny-groups"
CAROL_GROUPS = [f"a-group-with-a-rather-long-name-{i:04d}" for i in range(500)]  # ~18 kB
# Every password this module sends: none may ever appear in authproxy's log.
SENT_CREDENTIALS = (
    (ALICE, ALICE_PASSWORD), (BOB, BOB_PASSWORD), (ALICE, WRONG_PASSWORD),
    (STRANGER, STRANGER_PASSWORD), (CAROL, CAROL_PASSWORD),
)
SPOOFED_IDENTITY = (
    ("X-Auth-User", "mallory"), ("X-Auth-User", "mallory-again"), ("X-Auth-Method", "bearer"),
    ("X-Auth-Subject", "mallory-sub"), ("X-Auth-Groups", "mallory-group"),
    ("X-Auth-Scopes", "mallory:scope"),
    # Mapped to HTTP_X_AUTH_USER by CGI-style apps; nginx drops names with underscores.
    ("X_Auth_User", "mallory"),
)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def marker() -> str:
    """A path segment unique to one request, to find it among the echo upstream's."""
    return uuid.uuid4().hex


# -- servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def user_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A users file made by Apache's htpasswd (bcrypt, cost 5) and a groups file."""
    directory = tmp_path_factory.mktemp("users")
    users, groups = directory / "users.htpasswd", directory / "groups"
    for flags, user, password in (("-ciB", ALICE, ALICE_PASSWORD), ("-iB", BOB, BOB_PASSWORD),
                                  ("-iB", CAROL, CAROL_PASSWORD)):
        result = apache_htpasswd(flags, "-C", "5", str(users), user, stdin=password)
        assert result.returncode == 0, result.stderr
    groups.write_text(f"admins: {ALICE}\n" + "".join(f"{g}: {CAROL}\n" for g in CAROL_GROUPS),
                      encoding="utf-8")
    return users, groups


@pytest.fixture(scope="module")
def authproxy(
    tmp_path_factory: pytest.TempPathFactory, user_files: tuple[Path, Path]
) -> Iterator[Authproxy]:
    """authproxy on TCP and a unix socket; its log is checked for secrets once it stopped."""
    directory = tmp_path_factory.mktemp("authproxy")
    users, groups = user_files
    # This module sends many bad passwords from nginx's one address; lockout is not its subject.
    config = f"""
[server]
realm = "{REALM}"

[log]
level = "info"
format = "json"

[basic]
users_file = {json.dumps(str(users))}
groups_file = {json.dumps(str(groups))}
max_failures = 10000
"""
    listen = [f"127.0.0.1:{free_port()}", f"unix:{directory / 'authproxy.sock'}"]
    with start_authproxy(config, listen, directory) as proxy:
        yield proxy
    assert_log_keeps_secrets(proxy.log_text())


def assert_log_keeps_secrets(log: str) -> None:
    assert '"reason":"bad_password"' in log, "no decisions logged: the check would be vacuous"
    assert "decision_error" not in log, "a decision raised inside authproxy"
    for user, password in SENT_CREDENTIALS:
        assert password not in log
        assert basic(user, password).split()[1] not in log


@pytest.fixture(scope="module", params=["tcp", "unix"])
def site(
    request: pytest.FixtureRequest,
    authproxy: Authproxy,
    echo_upstream: EchoUpstream,
    tls_files: TLSFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProtectedSite]:
    """nginx over TLS asking authproxy over TCP or over its unix socket."""
    address = authproxy.tcp_address if request.param == "tcp" else f"unix:{authproxy.unix_path}"
    prefix = tmp_path_factory.mktemp(f"nginx-{request.param}")
    with start_protected_site(address, echo_upstream.address, prefix, tls_files) as running:
        yield running
    running.nginx.assert_error_log_clean()


@pytest.fixture(scope="module")
def recording_site(
    echo_upstream: EchoUpstream, tls_files: TLSFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProtectedSite]:
    """nginx whose authproxy upstream is the echo upstream: it records each auth subrequest
    and allows it."""
    prefix = tmp_path_factory.mktemp("nginx-recording")
    with start_protected_site(echo_upstream.address, echo_upstream.address, prefix,
                              tls_files) as running:
        yield running
    running.nginx.assert_error_log_clean()


# -- clients -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def echoed(self) -> EchoedRequest:
        """The request as the app received it (the reply must come from the echo upstream)."""
        assert self.status == 200, (self.status, self.body[:200])
        return EchoedRequest.from_json(json.loads(self.body))


async def fetch(
    site: ProtectedSite,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    data: bytes | None = None,
) -> Reply:
    """One request through nginx with aiohttp, trusting the test CA."""
    async with asyncio.timeout(REQUEST_TIMEOUT):
        connector = aiohttp.TCPConnector(ssl=site.ssl_context() or True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.request(method, site.base_url + path,
                                       headers=CIMultiDict(headers), data=data) as response:
                return Reply(response.status, response.headers, await response.read())


async def direct_auth(proxy: Authproxy, headers: Sequence[tuple[str, str]]) -> Reply:
    """A decision asked of authproxy itself, over TCP, bypassing nginx."""
    async with asyncio.timeout(REQUEST_TIMEOUT), aiohttp.ClientSession() as session:
        async with session.get(f"http://{proxy.tcp_address}/auth",
                               headers=CIMultiDict(headers)) as response:
            return Reply(response.status, response.headers, await response.read())


def request_head(method: str, path: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """A request line and header block, bytes as given: control characters included."""
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def raw_exchange(site: ProtectedSite, *parts: bytes) -> Reply:
    """Write ``parts`` on a fresh TLS connection; return the first response as soon as it is
    complete, whether or not nginx has read everything sent."""
    async with asyncio.timeout(REQUEST_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port,
                                                       ssl=site.ssl_context())
        try:
            for part in parts:
                writer.write(part)
            await writer.drain()
            return await read_response(reader)
        finally:
            # No TLS close_notify exchange: it would wait on a server that stopped answering.
            writer.transport.abort()


async def read_response(reader: asyncio.StreamReader) -> Reply:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *header_lines = head.rstrip("\r\n").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    else:
        body = await reader.readexactly(int(headers.get("Content-Length", "0")))
    return Reply(int(status_line.split()[1]), CIMultiDictProxy(headers), body)


def chunked(body: bytes, chunk_size: int = 65536, last: bool = True) -> bytes:
    chunks = [body[i:i + chunk_size] for i in range(0, len(body), chunk_size)]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return encoded + (b"0\r\n\r\n" if last else b"")


# -- through nginx to authproxy ----------------------------------------------------------------


async def test_no_credentials_get_the_basic_challenge(site: ProtectedSite) -> None:
    reply = await fetch(site, "GET", "/")
    assert reply.status == 401
    assert reply.headers.getall("WWW-Authenticate") == [CHALLENGE]
    assert b'"headers"' not in reply.body  # nginx's page, not the app's


async def test_right_password_reaches_the_app_as_that_user(site: ProtectedSite) -> None:
    path = f"/docs/{marker()}?page=2"
    echoed = (await fetch(site, "GET", path, [("Authorization", basic(ALICE, ALICE_PASSWORD))]
                          )).echoed()
    assert (echoed.method, echoed.path) == ("GET", path)
    assert echoed.header_values("X-Auth-User") == [ALICE]
    assert echoed.header_values("X-Auth-Method") == ["basic"]


@pytest.mark.parametrize(("user", "password"), [(ALICE, ALICE_PASSWORD), (BOB, BOB_PASSWORD)],
                         ids=[ALICE, BOB])
async def test_client_identity_headers_never_reach_the_app(
    site: ProtectedSite, authproxy: Authproxy, user: str, password: str
) -> None:
    """The app sees authproxy's identity headers (absent where authproxy sent them empty,
    e.g. a Basic user's X-Auth-Scopes, or bob's groups), never the client's copies."""
    credentials = ("Authorization", basic(user, password))
    decision = await direct_auth(authproxy, [credentials])
    assert decision.status == 200
    expected = {name: decision.headers[name] for name in IDENTITY_HEADERS}
    assert expected["X-Auth-User"] == user
    assert expected["X-Auth-Scopes"] == ""  # so the empty-value case is really exercised

    echoed = (await fetch(site, "GET", "/", [credentials, *SPOOFED_IDENTITY])).echoed()
    for name in IDENTITY_HEADERS:
        assert echoed.header_values(name) == ([expected[name]] if expected[name] else []), name
    assert echoed.header_values("X_Auth_User") == []
    assert not [h for h in echoed.headers if "mallory" in h[1]], echoed.headers


async def test_an_identity_in_hundreds_of_groups_reaches_the_app(site: ProtectedSite) -> None:
    """authproxy's answer outgrows nginx's default 4k header buffer; it must still be read."""
    echoed = (await fetch(site, "GET", "/", [("Authorization", basic(CAROL, CAROL_PASSWORD))])
              ).echoed()
    assert echoed.header_values("X-Auth-User") == [CAROL]
    assert echoed.header_values("X-Auth-Groups") == [",".join(sorted(CAROL_GROUPS))]


@pytest.mark.parametrize(("user", "password"), [(ALICE, WRONG_PASSWORD),
                                                (STRANGER, STRANGER_PASSWORD)],
                         ids=["wrong password", "unknown user"])
async def test_bad_credentials_are_challenged(
    site: ProtectedSite, user: str, password: str
) -> None:
    reply = await fetch(site, "GET", "/", [("Authorization", basic(user, password))])
    assert reply.status == 401
    assert reply.headers.getall("WWW-Authenticate") == [CHALLENGE]


async def test_one_megabyte_post_is_authorised_and_delivered(site: ProtectedSite) -> None:
    body = os.urandom(1 << 20)
    echoed = (await fetch(site, "POST", "/upload",
                          [("Authorization", basic(ALICE, ALICE_PASSWORD))], body)).echoed()
    assert (echoed.method, echoed.body_length) == ("POST", len(body))
    assert echoed.body_sha256 == hashlib.sha256(body).hexdigest()


async def test_chunked_post_is_authorised_and_delivered(site: ProtectedSite) -> None:
    body = os.urandom(300_000)
    head = request_head("POST", "/upload", [("Authorization", basic(ALICE, ALICE_PASSWORD)),
                                            ("Transfer-Encoding", "chunked")])
    echoed = (await raw_exchange(site, head, chunked(body))).echoed()
    assert (echoed.method, echoed.body_length) == ("POST", len(body))
    assert echoed.body_sha256 == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_denial_does_not_wait_for_the_body(site: ProtectedSite, framing: str) -> None:
    """Only part of a 1 MB body is ever sent: the 401 must come anyway."""
    first_part = os.urandom(65536)
    if framing == "chunked":
        headers, body = [("Transfer-Encoding", "chunked")], chunked(first_part, last=False)
    else:
        headers, body = [("Content-Length", str(1 << 20))], first_part
    reply = await raw_exchange(site, request_head("POST", "/upload", headers), body)
    assert reply.status == 401
    assert reply.headers.getall("WWW-Authenticate") == [CHALLENGE]


@pytest.mark.parametrize(("credentials", "status"), [
    ((ALICE, ALICE_PASSWORD), 200),
    ((BOB, BOB_PASSWORD), 403),
    (None, 401),
], ids=["alice in admins", "bob not in admins", "anonymous"])
async def test_admin_location_requires_the_admins_group(
    site: ProtectedSite, credentials: tuple[str, str] | None, status: int
) -> None:
    headers = [("Authorization", basic(*credentials))] if credentials else []
    reply = await fetch(site, "GET", "/admin/settings", headers)
    assert reply.status == status
    if status == 200:
        assert reply.echoed().header_values("X-Auth-Groups") == ["admins"]
    else:
        assert b'"headers"' not in reply.body


def connections_to(port: int) -> set[int]:
    """Local ports of the IPv4 TCP sockets, TIME_WAIT included, whose peer is ``port``."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]:
        local, remote = line.split()[1:3]
        if int(remote.rpartition(":")[2], 16) == port:
            ports.add(int(local.rpartition(":")[2], 16))
    return ports


@pytest.mark.parametrize("site", ["tcp"], indirect=True)
@pytest.mark.parametrize("credentials", [
    pytest.param((ALICE, ALICE_PASSWORD), id="allowed"),
    pytest.param(None, id="denied"),
])
async def test_decisions_reuse_the_connection_to_authproxy(
    site: ProtectedSite, authproxy: Authproxy, credentials: tuple[str, str] | None
) -> None:
    port = int(authproxy.tcp_address.rpartition(":")[2])
    headers = [("Authorization", basic(*credentials))] if credentials else []
    before = connections_to(port)
    for _ in range(10):
        await fetch(site, "GET", "/", headers)
    assert len(connections_to(port) - before) <= 1


BAD_INPUT = {
    "control char in a header": [("X-Note", "a\x01b")],
    "control char in Authorization": [("Authorization", basic(ALICE, ALICE_PASSWORD) + "\x01")],
    "control char beside valid credentials": [("Authorization", basic(ALICE, ALICE_PASSWORD)),
                                              ("X-Note", "a\x01b")],
    "20 kB Authorization": [("Authorization", basic(ALICE, "x" * 15000))],
    "60 kB Authorization": [("Authorization", basic(ALICE, "x" * 44000))],
    "Basic !!!": [("Authorization", "Basic !!!")],
    "Basic without a colon": [("Authorization",
                               "Basic " + base64.b64encode(b"no-colon-here").decode())],
    "Basic without credentials": [("Authorization", "Basic")],
    "unknown scheme": [("Authorization", "Negotiate YIIBnwYGKwYBBQUC")],
    "Bearer when only Basic is enabled": [("Authorization", "Bearer abc.def.ghi")],
}


@pytest.mark.parametrize("headers", BAD_INPUT.values(), ids=BAD_INPUT.keys())
async def test_bad_input_is_challenged_never_an_error(
    site: ProtectedSite, headers: list[tuple[str, str]]
) -> None:
    """nginx accepts and forwards all of these; authproxy must answer 401, since any other
    status reaches the client as nginx's 500."""
    reply = await raw_exchange(site, request_head("GET", "/", headers))
    assert reply.status == 401
    assert reply.headers.getall("WWW-Authenticate") == [CHALLENGE]


async def test_auth_location_is_not_reachable_from_outside(site: ProtectedSite) -> None:
    reply = await fetch(site, "GET", "/_authproxy",
                        [("Authorization", basic(ALICE, ALICE_PASSWORD))])
    assert reply.status == 404
    assert "X-Auth-User" not in reply.headers


async def test_two_authorization_headers_are_refused_by_nginx_itself(
    site: ProtectedSite, echo_upstream: EchoUpstream
) -> None:
    """nginx answers 400 to a duplicate Authorization line before any auth_request: the
    request reaches neither authproxy nor the app."""
    uri = f"/{marker()}"
    head = request_head("GET", uri, [("Authorization", basic(ALICE, ALICE_PASSWORD))] * 2)
    reply = await raw_exchange(site, head)
    assert reply.status == 400
    assert b"<center>nginx" in reply.body
    assert not echo_upstream.received(lambda r: r.path == uri)


# -- the auth subrequest, seen by the echo upstream standing in for authproxy ------------------


def auth_subrequest(echo: EchoUpstream, uri: str) -> EchoedRequest:
    """The one auth subrequest nginx sent for the client request to ``uri``."""
    found = echo.received(lambda r: r.path.startswith("/auth")
                          and r.header_values("X-Original-URI") == [uri])
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_auth_subrequest_carries_the_request_but_no_body(
    recording_site: ProtectedSite, echo_upstream: EchoUpstream, framing: str
) -> None:
    uri = f"/upload/{marker()}?x=1"
    body = os.urandom(1 << 20)
    headers = [
        ("Authorization", basic(ALICE, ALICE_PASSWORD)),
        # A client's try at choosing what authproxy believes:
        ("X-Original-URI", "/public"), ("X-Original-Method", "GET"),
        ("X-Real-IP", "203.0.113.9"), ("X-Forwarded-Proto", "http"),
    ]
    if framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        parts = (request_head("PUT", uri, headers), chunked(body))
    else:
        headers.append(("Content-Length", str(len(body))))
        parts = (request_head("PUT", uri, headers), body)
    assert (await raw_exchange(recording_site, *parts)).echoed().body_length == len(body)

    sub = auth_subrequest(echo_upstream, uri)
    assert (sub.method, sub.path, sub.version, sub.body_length) == ("GET", "/auth?", "HTTP/1.1", 0)
    assert sub.header_values("Content-Length") == []
    assert sub.header_values("Transfer-Encoding") == []
    assert sub.header_values("Connection") == []  # keepalive
    assert sub.header_values("Authorization") == [basic(ALICE, ALICE_PASSWORD)]
    assert sub.header_values("X-Original-Method") == ["PUT"]
    assert sub.header_values("X-Real-IP") == ["127.0.0.1"]
    assert sub.header_values("X-Forwarded-Proto") == ["https"]


@pytest.mark.parametrize(("path", "policy"), [
    ("/admin/{}", "group=admins"),
    ("/{}?group=admins", ""),
    ("/admin/{}?user=bob&group=all", "group=admins"),
], ids=["location policy", "client query on open location", "client query on admin location"])
async def test_policy_comes_from_the_location_only(
    recording_site: ProtectedSite, echo_upstream: EchoUpstream, path: str, policy: str
) -> None:
    uri = path.format(marker())
    await fetch(recording_site, "GET", uri)
    assert auth_subrequest(echo_upstream, uri).path == f"/auth?{policy}"


async def test_auth_connections_are_kept_alive(
    recording_site: ProtectedSite, echo_upstream: EchoUpstream
) -> None:
    uris = [f"/{marker()}" for _ in range(3)]
    for uri in uris:
        await fetch(recording_site, "GET", uri)
    peers = {auth_subrequest(echo_upstream, uri).peer for uri in uris}
    assert len(peers) == 1, peers


# -- the example -------------------------------------------------------------------------------


def test_example_site_passes_nginx_t(tmp_path: Path, tls_files: TLSFiles) -> None:
    """example-site.conf, with its paths pointed at this checkout, is a valid nginx config."""
    text = (NGINX_DIR / "example-site.conf").read_text(encoding="utf-8")
    for installed, here in (
        ("/etc/nginx/authproxy/tls/server.pem", tls_files.server_cert),
        ("/etc/nginx/authproxy/tls/server.key", tls_files.server_key),
        ("/etc/nginx/authproxy/", f"{NGINX_DIR}/"),
        ("/var/log/nginx/app.access.log", str(tmp_path / "access.log")),
    ):
        assert installed in text
        text = text.replace(installed, str(here))
    result = nginx_test_config(write_nginx_conf(text, tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert unsafe_access_logs(text) == []  # and its TLS site has an access log
    assert "access.log authproxy_safe;" in text
