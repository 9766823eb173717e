"""Who is asking about what (core/origin.py), pinned through Origin on the HTTP edge's own
request heads, one test per behaviour a mutant of it changed without the suite noticing
(``make mutate``)."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.core.origin import Client, Origin, envoy_original_uri
from authproxy.http.message import Request

PROXIES = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"))


def request(remote: str | None = "127.0.0.1", target: str = "/auth",
            method: str = "GET", headers: tuple[tuple[str, str], ...] = ()) -> Request:
    return Request(method, target, CIMultiDictProxy(CIMultiDict(headers)), remote,
                   keep_alive=True, has_body=False)


def client(*headers: tuple[str, str], remote: str | None = "127.0.0.1",
           trust_unix_peers: bool = True) -> Client:
    origin = Origin(PROXIES, allow_preflight=False, trust_unix_peers=trust_unix_peers)
    return origin.client(request(remote, headers=headers))


# -- the client address --------------------------------------------------------------------------


def test_a_peer_that_is_no_proxy_is_the_client_whatever_it_forwards() -> None:
    assert client(("X-Real-IP", "198.51.100.7"), remote="192.0.2.1") == (
        "192.0.2.1", "192.0.2.1")
    assert client(remote="2001:db8:1:2::5") == ("2001:db8:1:2::5", "2001:db8:1:2::/64")


def test_x_real_ip_from_a_proxy_is_the_client() -> None:
    assert client(("X-Real-IP", " 198.51.100.7 "), ("X-Forwarded-For", "203.0.113.1")) == (
        "198.51.100.7", "198.51.100.7")


@pytest.mark.parametrize("real_ip", ["unix:", "", "10.1.2.3", "127.0.0.1", "not-an-ip"])
def test_x_real_ip_that_names_no_client_is_no_address_never_x_forwarded_for(
    real_ip: str,
) -> None:
    assert client(("X-Real-IP", real_ip), ("X-Forwarded-For", "203.0.113.1")) == (
        "127.0.0.1", "")


def test_x_forwarded_for_is_walked_from_the_right_past_our_proxies() -> None:
    assert client(("X-Forwarded-For", "203.0.113.1, 198.51.100.7 ,10.0.0.2,, 127.0.0.1")) == (
        "198.51.100.7", "198.51.100.7")
    assert client(("X-Forwarded-For", "203.0.113.1"),
                  ("X-Forwarded-For", "198.51.100.7, 10.0.0.2")) == (
        "198.51.100.7", "198.51.100.7")  # several header lines read as one list


def test_x_forwarded_for_stops_at_a_hop_that_is_no_address() -> None:
    assert client(("X-Forwarded-For", "203.0.113.1, garbage, 10.0.0.2")) == ("127.0.0.1", "")


def test_only_proxies_forwarded_is_no_address() -> None:
    assert client(("X-Forwarded-For", "10.0.0.3, 127.0.0.2")) == ("127.0.0.1", "")
    assert client() == ("127.0.0.1", "")


def test_a_unix_socket_peer() -> None:
    assert client(("X-Real-IP", "198.51.100.7"), remote=None) == (
        "198.51.100.7", "198.51.100.7")
    assert client(remote=None) == ("unix", "")
    assert client(("X-Real-IP", "198.51.100.7"), remote=None, trust_unix_peers=False) == (
        "unix", "")


def test_no_client_address_is_warned_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "authproxy.core.origin")
    origin = Origin(PROXIES, allow_preflight=False)
    for _ in range(3):
        origin.client(request())
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "no_client_address"]
    assert len(warnings) == 1
    assert warnings[0].peer == "127.0.0.1"  # type: ignore[attr-defined]
    assert warnings[0].getMessage() == (
        "the proxy in front sent no client address: bans count user-ids only "
        "(set X-Real-IP to the client's address)")
    caplog.clear()
    Origin(PROXIES, allow_preflight=False).client(request(remote=None))
    assert [getattr(r, "peer", "") for r in caplog.records] == ["unix"]




def test_an_address_of_64_characters_is_believed() -> None:
    """The bound keeps out what no client address is; it must not refuse one that is."""
    scoped = "fe80::1%" + "e" * (64 - len("fe80::1%"))
    assert client(("X-Real-IP", scoped))[0] == scoped
    assert client(("X-Real-IP", scoped + "e")) == ("127.0.0.1", "")


# -- the original request ------------------------------------------------------------------------


def test_the_original_request_nginx_then_traefik_then_envoy() -> None:
    assert Origin.original(request(headers=(
        ("X-Original-Method", "POST"), ("X-Original-URI", "/a?b=1"),
        ("X-Forwarded-Method", "PUT"), ("X-Forwarded-Uri", "/c")))) == ("POST", "/a?b=1")
    assert Origin.original(request(headers=(
        ("X-Forwarded-Method", "PUT"), ("X-Forwarded-Uri", "/c")))) == ("PUT", "/c")
    assert Origin.original(request(target="/auth/x%2Fy/z?q=1", method="DELETE")) == (
        "DELETE", "/x/y/z?q=1")


def test_the_envoy_uri() -> None:
    assert envoy_original_uri(request(target="/auth")) == "/"
    assert envoy_original_uri(request(target="/auth?a=b")) == "/?a=b"
    assert envoy_original_uri(request(target="/auth/p%20q")) == "/p q"


# -- preflights ----------------------------------------------------------------------------------


PREFLIGHT = (("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST"))


@pytest.mark.parametrize(("allow", "method", "headers", "preflight"), [
    (True, "OPTIONS", PREFLIGHT, True),
    (False, "OPTIONS", PREFLIGHT, False),
    (True, "OPTIONS", PREFLIGHT[:1], False),
    (True, "OPTIONS", PREFLIGHT[1:], False),
    (True, "GET", PREFLIGHT, False),
    (True, "GET", (*PREFLIGHT, ("X-Original-Method", "options")), True),
    (True, "OPTIONS", (*PREFLIGHT, ("X-Original-Method", "GET")), False),
    (True, "GET", (*PREFLIGHT, ("X-Original-Method", "OPTIONS"),
                   ("X-Forwarded-Method", "GET")), False),
    (True, "GET", (*PREFLIGHT, ("X-Forwarded-Method", "OPTIONS")), True),
])
def test_a_preflight_is_one_every_method_header_says_is(
    allow: bool, method: str, headers: tuple[tuple[str, str], ...], preflight: bool,
) -> None:
    origin = Origin(PROXIES, allow_preflight=allow)
    assert origin.is_preflight(request(method=method, headers=headers)) is preflight
