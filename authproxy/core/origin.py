"""The request being decided, as the proxy in front describes it: the client's address, the
original method and URI, and whether it is a CORS preflight."""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, NamedTuple, Protocol
from urllib.parse import unquote

from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from yarl import URL

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger("authproxy.core.origin")

NO_ADDRESS_WARNING_INTERVAL = 60.0  # seconds between two "no client address" warnings
IPV6_GROUP = 64  # an IPv6 client is its /64: one host commonly holds the whole prefix


class Client(NamedTuple):
    """Who is asking: ``address`` for the log (the client's, or the proxy's when it sent
    none); ``key`` for the lockout, "" when no client address is known."""

    address: str
    key: str


class RequestView(Protocol):
    """What a decision reads of a request: the request head the HTTP edge parsed
    (message.Request)."""

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def path_qs(self) -> str: ...
    @property
    def query_string(self) -> str: ...
    @property
    def raw_query_string(self) -> str: ...  # the query as sent, before decoding
    @property
    def remote(self) -> str | None: ...
    @property
    def raw_path(self) -> str: ...  # the path as sent, before decoding
    @property
    def rel_url(self) -> URL: ...


class Origin:
    """Reads who is asking about what, believing forwarded headers only from the proxies in
    ``trusted`` (server.trusted_proxies), or from a peer on a unix socket when
    ``trust_unix_peers`` (the socket's mode lets no other user connect: listen.py)."""

    def __init__(
        self, trusted: tuple[IPNetwork, ...], allow_preflight: bool,
        trust_unix_peers: bool = True,
    ) -> None:
        # Memoized per address: peers are few (the proxies); forwarded hops are
        # client-chosen, hence the bound.
        self._is_trusted = functools.lru_cache(maxsize=4096)(
            functools.partial(_in_networks, networks=trusted))
        self._allow_preflight = allow_preflight
        self._warned_at = -NO_ADDRESS_WARNING_INTERVAL
        # False when any local user may connect to the unix socket (listen.unix_peers_trusted)
        self._trust_unix_peers = trust_unix_peers

    def client(self, request: RequestView) -> Client:
        """The client as the lockout and the log see it (SPEC §8.1 rules 5 and 6).

        A peer that is not a trusted proxy is the client. From a trusted proxy (or a unix
        socket peer), ``X-Real-IP`` if it is present: an address, or, if it is anything
        else (nginx on a unix socket sends ``unix:``), no client address at all, never a
        fallback to the client-supplied ``X-Forwarded-For``. Without it, the nearest hop of
        ``X-Forwarded-For`` that is not a trusted proxy. No client address: the proxy is
        never made a key (it would ban everyone at once), and a warning says so.
        """
        peer = request.remote or ""
        if peer and not self._is_trusted(peer):
            return Client(peer, address_key(peer))
        if not peer and not self._trust_unix_peers:
            return Client("unix", "")  # any local user may connect: nobody to believe
        headers = request.headers
        real_ip = headers.get("X-Real-IP")
        if real_ip is not None:
            real_ip = real_ip.strip()
            # a proxy of ours named as the client (a TLS terminator on loopback in front of
            # nginx) is no client address either: as a key it would ban everyone at once
            if _is_ip(real_ip) and not self._is_trusted(real_ip):
                return Client(real_ip, address_key(real_ip))
        else:
            # Walk X-Forwarded-For from the right, past our own proxies, to the first stranger.
            forwarded = ",".join(headers.getall("X-Forwarded-For", ()))
            for hop in reversed(forwarded.split(",")):
                hop = hop.strip()
                if not hop:
                    continue
                if not _is_ip(hop):
                    break
                if not self._is_trusted(hop):
                    return Client(hop, address_key(hop))
        self._warn_no_client_address(peer)
        return Client(peer or "unix", "")

    def _warn_no_client_address(self, peer: str) -> None:
        now = time.monotonic()
        if now - self._warned_at < NO_ADDRESS_WARNING_INTERVAL:
            return
        self._warned_at = now
        log.warning("the proxy in front sent no client address: bans count user-ids only "
                    "(set X-Real-IP to the client's address)", extra={
                        "event": "no_client_address", "peer": peer or "unix"})

    @staticmethod
    def original(request: RequestView) -> tuple[str, str]:
        """The method and URI of the request being decided (nginx, Traefik/Caddy, Envoy)."""
        headers = request.headers
        method = headers.get("X-Original-Method") or headers.get("X-Forwarded-Method")
        uri = headers.get("X-Original-URI") or headers.get("X-Forwarded-Uri")
        if uri is None:
            uri = envoy_original_uri(request)
        return method or request.method, uri

    def is_preflight(self, request: RequestView) -> bool:
        """A CORS preflight, if allowed. Every method the request names must be OPTIONS:
        nginx sets X-Original-Method but passes a client's X-Forwarded-Method on, Caddy and
        Traefik do the reverse, so either header alone may be the client's own word."""
        headers = request.headers
        if not (self._allow_preflight and "Origin" in headers
                and "Access-Control-Request-Method" in headers):
            return False
        claimed = [*headers.getall("X-Original-Method", []),
                   *headers.getall("X-Forwarded-Method", [])]
        return all(m.upper() == "OPTIONS" for m in claimed or [request.method])


def envoy_original_uri(request: RequestView) -> str:
    """The original URI Envoy ext_authz sends under the /auth prefix: the path as sent,
    decoded once (never sliced out of an already decoded, possibly normalised, path)."""
    path = unquote(request.raw_path.removeprefix("/auth")) or "/"
    query = request.query_string
    return f"{path}?{query}" if query else path


def _in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether an address string lies in one of the networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


# Longest address text believed: an IPv6 address with an IPv4 tail is 45 characters; a longer
# scope id ("fe80::1%eth0") is no client of ours. Keeps client-chosen strings out of the
# memoized lookups, which would otherwise pin whatever length ipaddress accepts.
MAX_ADDRESS = 64


def _is_ip(text: str) -> bool:
    return len(text) <= MAX_ADDRESS and _parses_as_ip(text)


@functools.lru_cache(maxsize=4096)
def _parses_as_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def address_key(text: str) -> str:
    """The lockout key of an address: itself, an IPv4-mapped IPv6 address as IPv4, and any
    other IPv6 address as its /64 network. "" if ``text`` is not an address."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_GROUP), strict=False))
    return str(ip)
