"""The bounds of the HTTP edge (SPEC §8.4) that are shared by a process's connections: how
many may be open, and how many bytes of unfinished request heads they may hold together.

Each :class:`~authproxy.http.connection.Connection` asks :meth:`EdgeLimits.admit` when it opens,
reports the bytes of the head it is receiving through :meth:`EdgeLimits.hold`, and gives both
back when it closes. What a single connection may hold, and for how long, the connection
bounds itself (server.max_head_bytes, server.header_timeout, server.keepalive_timeout).
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable

from ..config import ServerConfig
from ..obs.metrics import Metrics

log = logging.getLogger("authproxy.http.server")

LOG_INTERVAL = 10.0  # seconds between two log lines of one reason; the metric counts them all
# Descriptors a process needs besides client connections: listening sockets, the user,
# groups and JWKS files, the JWKS client's connections, worker pipes, the event loop's own.
RESERVED_DESCRIPTORS = 64


def raise_descriptor_limit(wanted: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never past the hard limit): the
    default soft limit (1,024 under systemd) is below a few thousand connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def connection_cap(configured: int) -> int:
    """server.max_connections, lowered (with a warning) so that the connections and
    RESERVED_DESCRIPTORS fit in the soft descriptor limit: past the cap a connection is
    closed at once, but past the descriptor limit nothing, not even nginx's own pool, gets in.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - RESERVED_DESCRIPTORS >= configured:
        return configured
    cap = max(1, soft - RESERVED_DESCRIPTORS)
    log.warning("server.max_connections lowered to fit the descriptor limit", extra={
        "event": "connection_cap", "configured": configured, "cap": cap,
        "rlimit_nofile": soft,
    })
    return cap


class EdgeLimits:
    """Connections open and head bytes held, against their caps, for one process."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: Metrics,
        max_connections: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self.max_head_bytes = config.max_head_bytes
        self.max_head_bytes_total = config.max_head_bytes_total
        self.header_timeout = float(config.header_timeout)
        self.open = 0
        self.held = 0  # bytes of unfinished heads, all connections together
        self._closes = {reason: metrics.edge_closes.labels(reason) for reason in (
            "max_connections", "header_timeout", "head_too_large", "head_budget")}
        metrics.connections_open.set_function(lambda: self.open)
        self._clock = clock
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = dict.fromkeys(self._closes, 0)

    def admit(self) -> bool:
        """Count a new connection in; False (counted, logged) when the cap is reached."""
        if self.open >= self.max_connections:
            self.closed("max_connections")
            return False
        self.open += 1
        return True

    def release(self, held: int) -> None:
        """A connection admitted has closed, holding ``held`` bytes of an unfinished head."""
        self.open -= 1
        self.held -= held

    def hold(self, before: int, after: int) -> str | None:
        """A connection's unfinished head went from ``before`` to ``after`` bytes. The bound
        it broke (a reason for :meth:`closed`), or None."""
        self.held += after - before
        if after > self.max_head_bytes:
            return "head_too_large"
        if after > before and self.held > self.max_head_bytes_total:
            return "head_budget"
        return None

    def closed(self, reason: str) -> None:
        """Count a connection closed by a bound; log it, at most once per LOG_INTERVAL per
        reason (an attacker sets the pace of these)."""
        self._closes[reason].inc()
        now = self._clock()
        last = self._last_logged.get(reason)
        if last is not None and now - last < LOG_INTERVAL:
            self._unlogged[reason] += 1
            return
        self._last_logged[reason] = now
        log.warning("connection closed by an edge bound", extra={
            "event": "edge_close", "reason": reason, "also_since_last_line": self._unlogged[reason],
            "connections_open": self.open, "head_bytes_held": self.held,
        })
        self._unlogged[reason] = 0
