"""Where authproxy listens: ``HOST:PORT``, ``[V6]:PORT`` or ``unix:/path``, bound the same way
for one process and for a supervisor whose workers inherit the sockets.

A unix socket gets the mode and group of ``server.unix_socket_mode`` and
``server.unix_socket_group`` before it listens, so no connection is ever accepted under other
permissions. Its peers have no address; they are believed as the proxy (their forwarded
client address trusted) only if the mode lets no "other" user connect
(:func:`unix_peers_trusted`).
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import logging
import os
import re
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger("authproxy.http.server")

BACKLOG = 128  # aiohttp's default for its sites
UNIX_SOCKET_MODE = 0o666  # server.unix_socket_mode's default: anyone may connect, none is believed


def unix_peers_trusted(mode: int) -> bool:
    """Whether peers on a unix socket of permission bits ``mode`` may be believed as the proxy.

    connect(2) on a unix socket needs write permission on its file: without o+w only its
    owner and group (the proxy's, when set up as the shipped units do) can connect. With it
    any local user could, and choose the X-Real-IP believed, so then no peer is believed.
    """
    return not mode & stat.S_IWOTH


@dataclass(frozen=True, slots=True)
class UnixSocketAccess:
    """Who may connect to the unix sockets: permission bits and, if not empty, a group (name or
    number) the socket file is given (this process must belong to it)."""

    mode: int = UNIX_SOCKET_MODE
    group: str = ""


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
    if re.search(r"[\x00-\x1f\x7f]", text):
        # a NUL would make bind() raise ValueError, not the OSError it reports as unbindable
        raise ValueError(f"{text!r} holds a control character")
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


def bind_all(
    addresses: Iterable[ListenAddress], unix_access: UnixSocketAccess = UnixSocketAccess()
) -> list[socket.socket] | None:
    """Listening sockets for every address; None, with an error logged and nothing left
    bound, if one cannot be had (in use, no permission, a name that does not resolve, a
    unix socket group that does not exist or that this process may not give)."""
    sockets: list[socket.socket] = []
    addresses = list(addresses)
    try:
        for address in addresses:
            sockets.extend(bind(address, unix_access))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        log.error("cannot listen", extra={"event": "listen_error", "error": str(exc)})
        return None
    unix = [str(a) for a in addresses if a.is_unix]
    if unix and not unix_peers_trusted(unix_access.mode):
        log.warning("any local user may connect to the unix socket: its peers are not "
                    "believed as the proxy (no forwarded client address); set "
                    'server.unix_socket_mode (e.g. "0660") and server.unix_socket_group',
                    extra={"event": "listen_untrusted", "listen": unix,
                           "mode": f"{unix_access.mode:04o}"})
    return sockets


def bind(
    address: ListenAddress, unix_access: UnixSocketAccess = UnixSocketAccess()
) -> list[socket.socket]:
    """Listening sockets for ``address``: one per address a host name resolves to."""
    if address.is_unix:
        return [_bind_unix(address.path, unix_access)]
    sockets = []
    # an ASCII host as bytes: a str is encoded by the idna codec, 0.4 MB of memory once loaded
    name = address.host
    host = (name.encode("ascii") if name.isascii() else name) if name else None
    infos = socket.getaddrinfo(host, address.port, type=socket.SOCK_STREAM,
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


def _bind_unix(path: str, access: UnixSocketAccess) -> socket.socket:
    gid = _group_id(access.group) if access.group else -1
    # As asyncio does: a socket file left by an earlier run is replaced, anything else is not.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Until listen(), a connect() is refused whatever the file's mode: the permissions
        # set here are the only ones any connection ever meets.
        if gid != -1:
            os.chown(path, -1, gid)
        os.chmod(path, access.mode)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _group_id(group: str) -> int:
    """The id of ``group``, a name or a number; OSError if there is no such group."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise OSError(f"unix socket group {group!r}: no such group") from None
