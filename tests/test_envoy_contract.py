"""What authproxy must do for Envoy's ext_authz HTTP filter, and deploy/envoy/envoy.yaml.

Envoy itself is not installable here and is not run. Instead real authproxy gets the
requests the filter sends (the client's method, path_prefix + the client's path and query,
Content-Length: 0, only Host, Authorization and the allow-listed headers) and must answer
exactly 200 to allow: Envoy takes any other 2xx, 204 included, as a denial. The example
configuration is read to check that it asks authproxy that way.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import yaml

from .conftest import IDENTITY_HEADERS
from .jwks_server import signing_key
from .servers import (
    PASSWORDS,
    REPO,
    Answer,
    Authproxy,
    Header,
    basic_auth,
    bearer_auth,
    http_request,
    logged_decision,
    start_users_and_keys_authproxy,
)

ENVOY_YAML = REPO / "deploy" / "envoy" / "envoy.yaml"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
ROUTER = "envoy.filters.http.router"
REALM = "envoy-test"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8", Bearer realm="{REALM}"'
KEY = signing_key("RS256", "envoy-test")
# Where nginx/authproxy-upstream.conf and authproxy's default listen put authproxy.
AUTHPROXY_DEFAULT = ("127.0.0.1", 9180)


# -- the configuration -------------------------------------------------------------------------


def envoy_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ENVOY_YAML.read_text(encoding="utf-8"))
    return config


def http_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The HTTP filter chain of the example's one listener."""
    [listener] = config["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [manager] = chain["filters"]
    assert manager["name"] == "envoy.filters.network.http_connection_manager"
    filters: list[dict[str, Any]] = manager["typed_config"]["http_filters"]
    return filters


def ext_authz(config: dict[str, Any]) -> dict[str, Any]:
    [found] = [f["typed_config"] for f in http_filters(config) if f["name"] == EXT_AUTHZ]
    assert found["@type"].endswith("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
    return dict(found)


def exact_patterns(matcher: dict[str, Any]) -> set[str]:
    """The header names a ListStringMatcher allows, which must all be exact matches."""
    patterns = matcher["patterns"]
    assert all(set(p) <= {"exact", "ignore_case"} for p in patterns), patterns
    return {p["exact"].lower() for p in patterns}


PATH_PREFIX: str = ext_authz(envoy_config())["http_service"]["path_prefix"]


def test_the_filter_asks_authproxy_under_its_auth_prefix() -> None:
    config = envoy_config()
    service = ext_authz(config)["http_service"]
    assert PATH_PREFIX == "/auth"
    assert service["server_uri"]["uri"] == "http://{}:{}".format(*AUTHPROXY_DEFAULT)
    [cluster] = [c for c in config["static_resources"]["clusters"]
                 if c["name"] == service["server_uri"]["cluster"]]
    [[endpoint]] = [e["lb_endpoints"] for e in cluster["load_assignment"]["endpoints"]]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == AUTHPROXY_DEFAULT


def test_every_identity_header_is_set_on_the_upstream_request() -> None:
    response = ext_authz(envoy_config())["http_service"]["authorization_response"]
    assert exact_patterns(response["allowed_upstream_headers"]) == {
        h.lower() for h in IDENTITY_HEADERS}
    # Appending would keep a client's own copy beside authproxy's.
    assert "allowed_upstream_headers_to_append" not in response


def test_the_filter_fails_closed() -> None:
    config = ext_authz(envoy_config())
    assert config.get("failure_mode_allow", False) is False
    assert config["status_on_error"] == {"code": "ServiceUnavailable"}
    assert [f["name"] for f in http_filters(envoy_config())][-1] == ROUTER
    assert "with_request_body" not in config  # authproxy never reads a body


def test_no_header_authproxy_would_believe_is_taken_from_the_client() -> None:
    allowed = exact_patterns(ext_authz(envoy_config())["allowed_headers"])
    assert allowed == {"origin", "access-control-request-method", "x-forwarded-for"}
    assert "authorization_request" not in ext_authz(envoy_config())["http_service"]


# -- authproxy, asked as Envoy asks ------------------------------------------------------------


@pytest.fixture(scope="module")
def authproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authproxy]:
    with start_users_and_keys_authproxy(tmp_path_factory.mktemp("authproxy"), realm=REALM,
                                        passwords=PASSWORDS, public_jwk=KEY.public_jwk) as proxy:
        yield proxy


def as_envoy(proxy: Authproxy, method: str, path: str,
             *headers: tuple[str, str]) -> Answer:
    """The check request ext_authz sends for a client's ``method path`` with ``headers``
    (already narrowed to what the filter forwards)."""
    sent = (("Host", "app.example"), ("Content-Length", "0"),
            ("X-Envoy-Expected-Rq-Timeout-Ms", "1000"), *headers)
    return http_request(f"http://{proxy.tcp_address}{PATH_PREFIX}{path}", method, sent)


METHODS = ["GET", "POST", "HEAD", "DELETE", "PUT", "PATCH", "OPTIONS"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("credentials", [partial(basic_auth, "alice"),
                                         partial(bearer_auth, KEY, sub="carol", scope="read")],
                         ids=["basic", "bearer"])
def test_allow_is_exactly_200_with_the_identity(
    authproxy: Authproxy, method: str, credentials: Callable[[], Header]
) -> None:
    sent = credentials()
    answer = as_envoy(authproxy, method, "/api/items?x=1", sent)
    assert answer.status == 200
    assert answer.body == b""
    assert all(len(answer.header_values(name)) == 1 for name in IDENTITY_HEADERS)
    assert answer.header_values("X-Auth-Method") == [sent[1].split()[0].lower()]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("headers", [
    pytest.param((), id="no credentials"),
    pytest.param((basic_auth("alice", "wrong"),), id="wrong password"),
    pytest.param((bearer_auth(KEY, ttl=-3600),), id="expired token"),
])
def test_deny_is_401_with_the_challenge(
    authproxy: Authproxy, method: str, headers: tuple[tuple[str, str], ...]
) -> None:
    answer = as_envoy(authproxy, method, "/api/items?x=1", *headers)
    assert answer.status == 401
    [challenge] = answer.header_values("WWW-Authenticate")
    assert challenge.startswith(CHALLENGE.split(", Bearer")[0])
    assert ("invalid_token" in challenge) == bool(headers and "Bearer" in headers[0][1])
    assert not [h for h in IDENTITY_HEADERS if answer.header_values(h)[:1] not in ([], [""])]


@pytest.mark.parametrize("query", [
    "user=bob", "group=admins", "scheme=bearer", "scope=write", "user=bob&scheme=bearer",
])
def test_the_clients_query_string_is_never_a_policy(authproxy: Authproxy, query: str) -> None:
    """Below /auth the query string is the client's own (GET /search?user=bob): it must
    neither refuse (403, 401) nor restrict the request."""
    answer = as_envoy(authproxy, "GET", f"/search?{query}", basic_auth("bob"))
    assert answer.status == 200
    assert answer.header_values("X-Auth-User") == ["bob"]


def test_a_policy_refusal_is_403(authproxy: Authproxy) -> None:
    """The same decision endpoint refuses by policy with 403, which Envoy passes on as it is;
    through Envoy the policy cannot come from the route (see envoy.yaml)."""
    answer = http_request(f"http://{authproxy.tcp_address}/auth?group=admins", "POST",
                          (("Content-Length", "0"), basic_auth("bob")))
    assert answer.status == 403
    assert answer.body == b""


def test_a_preflight_passes_with_the_allowed_headers(authproxy: Authproxy) -> None:
    preflight = (("Origin", "https://app.example"), ("Access-Control-Request-Method", "PUT"))
    assert as_envoy(authproxy, "OPTIONS", "/api/items", *preflight).status == 200
    assert as_envoy(authproxy, "GET", "/api/items", *preflight).status == 401


def test_the_original_request_and_client_are_what_authproxy_logs(authproxy: Authproxy) -> None:
    """The method and path come from the check request itself, the client address from the
    X-Forwarded-For Envoy appended to."""
    path = f"/api/items/{uuid.uuid4().hex}"
    answer = as_envoy(authproxy, "DELETE", f"{path}?x=1", basic_auth("alice"),
                      ("X-Forwarded-For", "203.0.113.9, 198.51.100.7"))
    assert answer.status == 200
    line = logged_decision(authproxy, path)
    assert (line["method"], line["uri"], line["client"]) == ("DELETE", path, "198.51.100.7")
