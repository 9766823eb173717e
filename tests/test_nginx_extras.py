"""The optional nginx snippets, with a real nginx in front of real authproxy: the 503 page
while authproxy is down (authproxy-errors.conf), nginx caching allow decisions
(authproxy-cache.conf + authproxy-auth-cached.conf), and CORS preflights.

Decisions are counted on authproxy's /metrics, so "served from nginx's cache" means "authproxy
was not asked".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import toml_text, write_users
from .jwks_server import AUDIENCE, signing_key
from .servers import (
    NGINX_DIR,
    PASSWORDS,
    Answer,
    Authproxy,
    EchoUpstream,
    Header,
    Nginx,
    TLSFiles,
    basic_auth,
    bearer_auth,
    decision_count,
    free_port,
    http_request,
    render_file,
    render_upstream,
    start_authproxy,
    start_nginx,
    wait_until,
)

REALM = "nginx-extras"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8", Bearer realm="{REALM}"'
ERIN_PASSWORD = "erin-Only-for-one-test"  # erin: test_repeated_credentials_... only
GROUPS = "admins: alice\n"
KEY = signing_key("RS256", "nginx-extras")
CACHE_DIR_INSTALLED = "/run/nginx/authproxy-cache"
DOWN_PAGE = b"the authentication service is not answering"
PREFLIGHT = (("Origin", "https://app.example"), ("Access-Control-Request-Method", "PUT"))
CACHE_DIRECTIVES = ("proxy_cache", "proxy_cache_key", "proxy_no_cache")


def bearer(ttl: int = 300, **claims: Any) -> Header:
    return bearer_auth(KEY, ttl, **claims)


# -- servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("extras-files")
    users, groups, jwks = (directory / n for n in ("users.htpasswd", "groups", "jwks.json"))
    write_users(users, **PASSWORDS, erin=ERIN_PASSWORD)
    groups.write_text(GROUPS)
    jwks.write_text(json.dumps({"keys": [KEY.public_jwk]}))
    return {"users": str(users), "groups": str(groups), "jwks": str(jwks)}


def authproxy_config(files: dict[str, str], **server: Any) -> str:
    return toml_text({
        "server": {"realm": REALM, **server},
        "log": {"level": "info", "format": "json"},
        # Many bad passwords come from nginx's one address; lockout is not the subject here.
        "basic": {"users_file": files["users"], "groups_file": files["groups"],
                  "max_failures": 10000},
        # No leeway, so that a cached token's end can be watched without waiting a minute.
        "jwt": {"jwks_file": files["jwks"], "leeway": 0, "jwks_require_audience": [AUDIENCE]},
    })


@dataclass(slots=True)
class Site:
    """nginx with two TLS servers in front of one authproxy: ``cached`` (authproxy-auth-cached
    .conf) and ``plain`` (authproxy-auth.conf), both with authproxy-errors.conf."""

    nginx: Nginx
    ports: dict[str, int]
    tls: TLSFiles

    def get(self, server: str, path: str, headers: tuple[tuple[str, str], ...] = (),
            method: str = "GET") -> Answer:
        return http_request(f"https://127.0.0.1:{self.ports[server]}{path}", method, headers,
                            self.tls.client_context())


def server_block(port: int, tls: TLSFiles, auth_snippet: str) -> str:
    protect = f"include {NGINX_DIR}/authproxy-protect.conf;"
    return f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {tls.server_cert};
        ssl_certificate_key {tls.server_key};
        large_client_header_buffers 4 64k;

        include {NGINX_DIR}/{auth_snippet};
        include {NGINX_DIR}/authproxy-errors.conf;

        location / {{
            {protect}
            proxy_pass http://test_app;
        }}
        location /admin/ {{
            set $authproxy_policy "group=admins";
            {protect}
            proxy_pass http://test_app;
        }}
        location /broken/ {{
            {protect}
            proxy_pass http://broken_app;
        }}
    }}
"""


@contextmanager
def start_site(authproxy_address: str, app: EchoUpstream, tls: TLSFiles,
               prefix: Path) -> Iterator[Site]:
    """nginx with the repository's snippets (authproxy-upstream.conf and authproxy-cache.conf
    rendered with this run's address and cache directory, the rest included as they are),
    and a "broken app" that answers every request with its own 500."""
    prefix.mkdir(parents=True, exist_ok=True)
    upstream_conf, cache_conf = prefix / "authproxy-upstream.conf", prefix / "authproxy-cache.conf"
    upstream_conf.write_text(render_upstream(authproxy_address), encoding="utf-8")
    cache_conf.write_text(render_file(NGINX_DIR / "authproxy-cache.conf",
                                      {CACHE_DIR_INSTALLED: str(prefix / "authproxy-cache")}),
                          encoding="utf-8")
    ports = {"cached": free_port(), "plain": free_port(), "broken_app": free_port()}
    http_conf = f"""    include {upstream_conf};
    include {cache_conf};

    upstream test_app {{
        server {app.address};
    }}
    upstream broken_app {{
        server 127.0.0.1:{ports["broken_app"]};
    }}
    server {{
        listen 127.0.0.1:{ports["broken_app"]};
        location / {{
            return 500 "the app itself failed\\n";
        }}
    }}
{server_block(ports["cached"], tls, "authproxy-auth-cached.conf")}
{server_block(ports["plain"], tls, "authproxy-auth.conf")}
"""
    with start_nginx(http_conf, prefix, ports["plain"]) as nginx:
        yield Site(nginx, ports, tls)


CACHE_KEY_TOO_LONG = "is not enough for cache key"


@pytest.fixture(scope="module")
def hinting_authproxy(
    tmp_path_factory: pytest.TempPathFactory, auth_files: dict[str, str]
) -> Iterator[Authproxy]:
    """authproxy with nginx_cache_hint and allow_preflight on."""
    directory = tmp_path_factory.mktemp("authproxy-hint")
    config = authproxy_config(auth_files, nginx_cache_hint=True, allow_preflight=True)
    with start_authproxy(config, [f"127.0.0.1:{free_port()}"], directory) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def default_authproxy(
    tmp_path_factory: pytest.TempPathFactory, auth_files: dict[str, str]
) -> Iterator[Authproxy]:
    """authproxy with both flags at their defaults (off)."""
    directory = tmp_path_factory.mktemp("authproxy-default")
    with start_authproxy(authproxy_config(auth_files), [f"127.0.0.1:{free_port()}"],
                         directory) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def site(hinting_authproxy: Authproxy, echo_upstream: EchoUpstream, tls_files: TLSFiles,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with start_site(hinting_authproxy.tcp_address, echo_upstream, tls_files,
                    tmp_path_factory.mktemp("nginx-hint")) as running:
        yield running
    running.nginx.assert_error_log_clean(CACHE_KEY_TOO_LONG)


@pytest.fixture(scope="module")
def default_site(default_authproxy: Authproxy, echo_upstream: EchoUpstream,
                 tls_files: TLSFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with start_site(default_authproxy.tcp_address, echo_upstream, tls_files,
                    tmp_path_factory.mktemp("nginx-default")) as running:
        yield running
    running.nginx.assert_error_log_clean(CACHE_KEY_TOO_LONG)


class Decisions:
    """Counts the decisions authproxy makes from the moment it is created."""

    def __init__(self, proxy: Authproxy) -> None:
        self.proxy = proxy
        self.start = decision_count(proxy)

    @property
    def made(self) -> int:
        return decision_count(self.proxy) - self.start


# -- authproxy down: authproxy-errors.conf -----------------------------------------------------


def test_authproxy_down_gives_a_503_page_and_recovers(
    tmp_path: Path, auth_files: dict[str, str], echo_upstream: EchoUpstream, tls_files: TLSFiles
) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = authproxy_config(auth_files)
    alice = (basic_auth("alice"),)
    with start_site(address, echo_upstream, tls_files, tmp_path / "nginx") as site:
        with start_authproxy(config, [address], tmp_path / "authproxy-1"):
            for server in ("cached", "plain"):
                assert site.get(server, "/", alice).echoed().header_values("X-Auth-User") == [
                    "alice"]
                broken = site.get(server, "/broken/", alice)
                assert (broken.status, broken.body) == (500, b"the app itself failed\n")

        for server in ("cached", "plain"):
            for headers in (alice, ()):
                down = site.get(server, "/", headers)
                assert down.status == 503
                assert DOWN_PAGE in down.body
                assert down.header_values("Retry-After") == ["5"]
                assert down.header_values("WWW-Authenticate") == []
        assert "auth request unexpected status: 502" in site.nginx.error_log_text()

        with start_authproxy(config, [address], tmp_path / "authproxy-2"):
            assert site.get("plain", "/", alice).echoed().header_values("X-Auth-User") == [
                "alice"]
            assert site.get("plain", "/").status == 401


def test_authproxy_without_keys_gives_the_503_page_to_bearer_requests(
    tmp_path: Path, auth_files: dict[str, str], echo_upstream: EchoUpstream, tls_files: TLSFiles
) -> None:
    """authproxy's own 503 (a token and no key set) reaches the client as the page, not as
    nginx's 500; Basic still works."""
    address = f"127.0.0.1:{free_port()}"
    config = toml_text({
        "server": {"realm": REALM},
        "basic": {"users_file": auth_files["users"]},
        # An endpoint that never answers: no key set is ever loaded.
        "jwt": {"jwks_endpoint": f"http://127.0.0.1:{free_port()}/jwks.json",
                "jwks_require_audience": [AUDIENCE]},
    })
    with (start_site(address, echo_upstream, tls_files, tmp_path / "nginx") as site,
          start_authproxy(config, [address], tmp_path / "authproxy")):
        answer = site.get("plain", "/", (bearer(),))
        assert answer.status == 503
        assert DOWN_PAGE in answer.body
        assert site.get("plain", "/", (basic_auth("alice"),)).status == 200


# -- caching decisions: authproxy-cache.conf + authproxy-auth-cached.conf ----------------------


def test_repeated_credentials_are_decided_once(site: Site, hinting_authproxy: Authproxy) -> None:
    for credentials in (bearer(sub="carl"), basic_auth("erin", ERIN_PASSWORD)):
        decisions = Decisions(hinting_authproxy)
        users = [site.get("cached", f"/page/{i}", (credentials,)).echoed().header_values(
            "X-Auth-User") for i in range(3)]
        assert users == [[users[0][0]]] * 3  # the identity also comes with a cached answer
        assert decisions.made == 1


def test_other_credentials_are_never_served_from_the_cache(
    site: Site, hinting_authproxy: Authproxy
) -> None:
    first, second = bearer(sub="first-user"), bearer(sub="second-user")
    decisions = Decisions(hinting_authproxy)
    for credentials, user in ((first, "first-user"), (second, "second-user"),
                              (first, "first-user"), (second, "second-user")):
        echoed = site.get("cached", "/", (credentials,)).echoed()
        assert echoed.header_values("X-Auth-User") == [user]
    assert decisions.made == 2

    # The same user with another password is asked about, and refused.
    assert site.get("cached", "/", (basic_auth("alice"),)).status == 200
    assert site.get("cached", "/", (basic_auth("alice", "not-her-password"),)).status == 401


def test_the_location_policy_is_part_of_the_key(site: Site, hinting_authproxy: Authproxy) -> None:
    bob = bearer(sub="bob", groups=["staff"])
    assert site.get("cached", "/", (bob,)).status == 200
    decisions = Decisions(hinting_authproxy)
    for _ in range(2):
        assert site.get("cached", "/admin/", (bob,)).status == 403
    assert decisions.made == 2


@pytest.mark.parametrize("headers", [
    pytest.param((), id="no credentials"),
    pytest.param((basic_auth("bob", "wrong"),), id="wrong password"),
    pytest.param(PREFLIGHT, id="CORS preflight"),
])
def test_answers_without_an_identity_are_never_cached(
    site: Site, hinting_authproxy: Authproxy, headers: tuple[tuple[str, str], ...]
) -> None:
    decisions = Decisions(hinting_authproxy)
    for _ in range(2):
        site.get("cached", "/", headers, method="OPTIONS" if headers == PREFLIGHT else "GET")
    assert decisions.made == 2
    # Above all, a preflight's allow is never served to a plain request with no credentials.
    assert site.get("cached", "/").status == 401


def test_a_cached_token_stops_working_at_its_exp(site: Site, hinting_authproxy: Authproxy) -> None:
    """nginx keeps the answer no longer than authproxy's X-Accel-Expires: the token's exp."""
    credentials = bearer(ttl=4)  # X-Accel-Expires: 3 or 4, by where in the second it is
    decisions = Decisions(hinting_authproxy)
    assert site.get("cached", "/", (credentials,)).status == 200
    assert site.get("cached", "/", (credentials,)).status == 200
    assert decisions.made == 1  # the second came from nginx's cache
    wait_until(lambda: site.get("cached", "/", (credentials,)).status == 401,
               "the cached token's end", deadline=8.0)


def test_an_oversized_authorization_is_challenged_not_failed(site: Site) -> None:
    """Credentials longer than authproxy accepts are not looked up in the cache: their key
    would not fit nginx's buffer, an error-log line per request (the fixture checks the log)."""
    for size in (16_000, 40_000):
        answer = site.get("cached", "/", (("Authorization", "Basic " + "A" * size),))
        assert answer.status == 401
        assert answer.header_values("WWW-Authenticate") == [CHALLENGE]


def test_without_the_cache_hint_nothing_is_cached(
    default_site: Site, default_authproxy: Authproxy
) -> None:
    credentials = bearer(sub="uncached")
    decisions = Decisions(default_authproxy)
    for _ in range(3):
        assert default_site.get("cached", "/", (credentials,)).status == 200
    assert decisions.made == 3


def test_the_plain_snippet_never_caches(site: Site, hinting_authproxy: Authproxy) -> None:
    credentials = bearer(sub="plain")
    decisions = Decisions(hinting_authproxy)
    for _ in range(2):
        assert site.get("plain", "/", (credentials,)).status == 200
    assert decisions.made == 2


def directives(path: Path) -> list[str]:
    """The snippet's directives, one per line as written, without comments or blank lines."""
    lines = (re.sub(r"#.*", "", line).strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_the_cached_snippet_is_the_plain_one_plus_the_cache() -> None:
    cached = directives(NGINX_DIR / "authproxy-auth-cached.conf")
    extra = [d for d in cached if d.split()[0] in CACHE_DIRECTIVES]
    assert [d.split()[0] for d in extra] == list(CACHE_DIRECTIVES)
    assert [d for d in cached if d not in extra] == directives(NGINX_DIR / "authproxy-auth.conf")


# -- CORS preflights ---------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["plain", "cached"])
def test_preflight_passes_without_credentials_when_allowed(site: Site, server: str) -> None:
    echoed = site.get(server, "/api/items", PREFLIGHT, method="OPTIONS").echoed()
    assert echoed.method == "OPTIONS"
    assert echoed.header_values("Access-Control-Request-Method") == ["PUT"]
    assert echoed.header_values("X-Auth-User") == []


@pytest.mark.parametrize(("method", "headers"), [
    pytest.param("OPTIONS", PREFLIGHT[:1], id="no Access-Control-Request-Method"),
    pytest.param("OPTIONS", PREFLIGHT[1:], id="no Origin"),
    pytest.param("GET", PREFLIGHT, id="not OPTIONS"),
    pytest.param("GET", (*PREFLIGHT, ("X-Original-Method", "OPTIONS"),
                         ("X-Forwarded-Method", "OPTIONS")), id="GET claiming OPTIONS"),
])
def test_only_a_real_preflight_passes(
    site: Site, method: str, headers: tuple[tuple[str, str], ...]
) -> None:
    answer = site.get("plain", "/api/items", headers, method=method)
    assert answer.status == 401
    assert answer.header_values("WWW-Authenticate") == [CHALLENGE]


def test_preflight_is_challenged_unless_allowed(default_site: Site) -> None:
    answer = default_site.get("plain", "/api/items", PREFLIGHT, method="OPTIONS")
    assert answer.status == 401
    assert answer.header_values("WWW-Authenticate") == [CHALLENGE]
