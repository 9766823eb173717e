"""The authenticated principal, and how it becomes response headers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import Unauthenticated

IDENTITY_HEADERS = (
    "X-Auth-User", "X-Auth-Method", "X-Auth-Subject", "X-Auth-Groups", "X-Auth-Scopes",
)
# A control character would split or corrupt the response; a lone surrogate (JSON can spell
# one: "\ud800") cannot be encoded at all.
_UNSENDABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request authenticated as, with its response headers built once.

    ``expires_at`` is the wall-clock time (epoch seconds) after which this identity must not be
    served from any cache: a token's ``exp``; ``None`` for Basic (bounded by the cache TTL).

    Raises Unauthenticated("unsafe_identity") when a value could not be sent as a header.
    """

    user: str
    method: str  # "basic" or "bearer"
    subject: str = ""
    groups: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    expires_at: float | None = None
    headers: dict[str, str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Every identity header, always all present (empty when unknown): proxies such as
        # Caddy before its GHSA-7r4p-vjf4-gxv4 fix leave a client-sent header in place when
        # the auth response lacks it.
        values = (self.user, self.method, self.subject,
                  ",".join(sorted(self.groups)), " ".join(sorted(self.scopes)))
        if _UNSENDABLE.search("".join(values)):
            raise Unauthenticated("unsafe_identity")
        object.__setattr__(self, "headers", dict(zip(IDENTITY_HEADERS, values, strict=True)))


EMPTY_HEADERS = dict.fromkeys(IDENTITY_HEADERS, "")
