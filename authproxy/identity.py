"""The authenticated principal, and how it becomes response headers."""

from __future__ import annotations

from dataclasses import dataclass

IDENTITY_HEADERS = ("X-Auth-User", "X-Auth-Method", "X-Auth-Subject", "X-Auth-Groups", "X-Auth-Scopes")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request authenticated as.

    ``expires_at`` is the wall-clock time (epoch seconds) after which this identity must not be
    served from any cache: a token's ``exp``; ``None`` for Basic (bounded by the cache TTL).
    """

    user: str
    method: str  # "basic" or "bearer"
    subject: str = ""
    groups: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    expires_at: float | None = None

    def headers(self) -> dict[str, str]:
        """Every identity header, always all present (empty when unknown).

        Proxies such as Caddy before its GHSA-7r4p-vjf4-gxv4 fix leave a client-sent header in
        place when the auth response lacks it, so a missing header would let a client spoof it.
        """
        return {
            "X-Auth-User": self.user,
            "X-Auth-Method": self.method,
            "X-Auth-Subject": self.subject,
            "X-Auth-Groups": ",".join(sorted(self.groups)),
            "X-Auth-Scopes": " ".join(sorted(self.scopes)),
        }
