"""Where authproxy listens: ``HOST:PORT``, ``[V6]:PORT`` or ``unix:/path``, bound the same way
for one process and for a supervisor whose workers inherit the sockets."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger("authproxy.server")

BACKLOG = 128  # aiohttp's default for its sites
UNIX_SOCKET_MODE = 0o666  # restrict access with the directory's permissions


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One socket to listen on: TCP ``host:port`` or a unix socket ``path``."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or ``unix:/path``; raise ValueError if it is neither."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: a unix socket path must be absolute")
        return ListenAddress(path=path)
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not match:
        raise ValueError(f"{text!r} is not HOST:PORT, [V6]:PORT or unix:/path")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port out of range")
    if match.group(1):
        ipaddress.IPv6Address(host)
    return ListenAddress(host=host, port=port)


def bind_all(addresses: Iterable[ListenAddress]) -> list[socket.socket] | None:
    """Listening sockets for every address; None, with an error logged and nothing left
    bound, if one cannot be had (in use, no permission, a name that does not resolve)."""
    sockets: list[socket.socket] = []
    try:
        for address in addresses:
            sockets.extend(bind(address))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        log.error("cannot listen", extra={"event": "listen_error", "error": str(exc)})
        return None
    return sockets


def bind(address: ListenAddress) -> list[socket.socket]:
    """Listening sockets for ``address``: one per address a host name resolves to."""
    if address.is_unix:
        return [_bind_unix(address.path)]
    sockets = []
    infos = socket.getaddrinfo(address.host or None, address.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_unix(path: str) -> socket.socket:
    # As asyncio does: a socket file left by an earlier run is replaced, anything else is not.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, UNIX_SOCKET_MODE)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock
