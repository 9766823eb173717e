"""The authenticated principal, and how it becomes response headers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import Unauthenticated

IDENTITY_HEADERS = (
    "X-Auth-User", "X-Auth-Method", "X-Auth-Subject", "X-Auth-Groups", "X-Auth-Scopes",
)
# A control character would split or corrupt the response; a lone surrogate (JSON can spell
# one: "\ud800") cannot be encoded at all.
_UNSENDABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# RFC 6749 §3.3 scope-token: printable ASCII but space, '"' and '\'. Anything else in a
# space-joined X-Auth-Scopes could read as other scopes to an app that splits on any
# whitespace (U+00A0, U+2028) or trims.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def sendable_group(name: str) -> bool:
    """Whether ``name`` reads back as itself from the comma-joined X-Auth-Groups: not empty,
    no comma, no whitespace at either end (apps trim list items), nothing unsendable."""
    return (bool(name) and "," not in name and name == name.strip()
            and not _UNSENDABLE.search(name))


def sendable_scope(name: str) -> bool:
    """Whether ``name`` is an RFC 6749 scope-token, and so reads back as itself from the
    space-joined X-Auth-Scopes whatever whitespace an app splits on."""
    return _SCOPE_TOKEN.fullmatch(name) is not None


def sendable(groups: Iterable[str], scopes: Iterable[str]) -> tuple[frozenset[str],
                                                                     frozenset[str], int]:
    """The groups and scopes that can be sent unambiguously, and how many were left out.

    A value left out is neither sent nor matched by a policy: an identity then says less
    than its source, never something its source did not say. (Refusing the whole token
    instead would lock a user out of every location, policy or none, for one odd group an
    identity provider sends, such as an LDAP DN with commas.)
    """
    groups, scopes = set(groups), set(scopes)
    # A value no header can carry at all (a control character) is kept, for Identity to
    # refuse the whole identity as before: only the ambiguous are left out.
    kept_groups = frozenset(g for g in groups if sendable_group(g) or _UNSENDABLE.search(g))
    kept_scopes = frozenset(s for s in scopes if sendable_scope(s) or _UNSENDABLE.search(s))
    dropped = len(groups) - len(kept_groups) + len(scopes) - len(kept_scopes)
    return kept_groups, kept_scopes, dropped


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request authenticated as, with its response headers built once.

    ``expires_at`` is the wall-clock time (epoch seconds) after which this identity must not be
    served from any cache: a token's ``exp``; ``None`` for Basic (bounded by the cache TTL).
    ``claims``: a verified token's payload, for ``claim.<path>`` policies (never sent as
    headers); empty for Basic. ``dropped``: groups and scopes its source named that could not
    be sent unambiguously (see :func:`sendable`), for the decision log.

    Raises Unauthenticated("unsafe_identity") when a value could not be sent as a header, or
    a group or scope would read as another (sources filter with :func:`sendable` first).
    """

    user: str
    method: str  # "basic" or "bearer"
    subject: str = ""
    groups: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    expires_at: float | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    dropped: int = field(default=0, compare=False)
    headers: dict[str, str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Every identity header, always all present (empty when unknown): proxies such as
        # Caddy before its GHSA-7r4p-vjf4-gxv4 fix leave a client-sent header in place when
        # the auth response lacks it.
        values = (self.user, self.method, self.subject,
                  ",".join(sorted(self.groups)), " ".join(sorted(self.scopes)))
        if (_UNSENDABLE.search("".join(values))
                or not all(map(sendable_group, self.groups))
                or not all(map(sendable_scope, self.scopes))):
            raise Unauthenticated("unsafe_identity")
        object.__setattr__(self, "headers", dict(zip(IDENTITY_HEADERS, values, strict=True)))


EMPTY_HEADERS = dict.fromkeys(IDENTITY_HEADERS, "")
