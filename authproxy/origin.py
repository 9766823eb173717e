"""The request being decided, as the proxy in front describes it: the client's address, the
original method and URI, and whether it is a CORS preflight."""

from __future__ import annotations

import functools
import ipaddress
from typing import Protocol

from multidict import CIMultiDictProxy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RequestView(Protocol):
    """What a decision reads of a request: aiohttp's request object, or the parsed message
    the server answers before aiohttp makes a request of it (connection.py)."""

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
    def remote(self) -> str | None: ...


class Origin:
    """Reads who is asking about what, believing forwarded headers only from the proxies in
    ``trusted`` (server.trusted_proxies), or from a peer on a unix socket: it has no address,
    and is the local proxy (the socket's directory permissions decide who may connect)."""

    def __init__(
        self, trusted: tuple[IPNetwork, ...], allow_preflight: bool,
        trust_unix_peers: bool = True,
    ) -> None:
        # Memoized per address: peers are few (the proxies); forwarded hops are
        # client-chosen, hence the bound.
        self._is_trusted = functools.lru_cache(maxsize=4096)(
            functools.partial(_in_networks, networks=trusted))
        self._allow_preflight = allow_preflight
        # False when any local user may connect to the unix socket (listen.unix_peers_trusted)
        self._trust_unix_peers = trust_unix_peers

    def client_address(self, request: RequestView) -> str:
        """The client's address: forwarded headers are believed only from a trusted proxy."""
        peer = request.remote or ""
        if peer and not self._is_trusted(peer):
            return peer
        if not peer and not self._trust_unix_peers:
            return "unix"
        real_ip = request.headers.get("X-Real-IP", "").strip()
        if real_ip and _is_ip(real_ip):
            return real_ip
        # Walk X-Forwarded-For from the right, past our own proxies, to the first stranger.
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
        hops = [h.strip() for h in forwarded.split(",")]
        for hop in reversed([h for h in hops if h]):
            if not _is_ip(hop):
                break
            if not self._is_trusted(hop):
                return hop
        return peer or "unix"

    @staticmethod
    def original(request: RequestView) -> tuple[str, str]:
        """The method and URI of the request being decided (nginx, Traefik/Caddy, Envoy)."""
        headers = request.headers
        method = headers.get("X-Original-Method") or headers.get("X-Forwarded-Method")
        uri = headers.get("X-Original-URI") or headers.get("X-Forwarded-Uri")
        if uri is None:
            # Envoy ext_authz sends the original path under the /auth prefix.
            uri = request.path_qs[len("/auth"):] or "/"
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


def _in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether an address string lies in one of the networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


@functools.lru_cache(maxsize=4096)
def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
