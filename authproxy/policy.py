"""Per-location requirements, from the auth URL's query string: scope, group, user, scheme."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from .errors import Forbidden
from .identity import Identity

_COMMA = re.compile(r"\s*,\s*")
_SPACE_OR_COMMA = re.compile(r"[\s,]+")


def _split(values: list[str], pattern: re.Pattern[str]) -> frozenset[str]:
    return frozenset(item for value in values for item in pattern.split(value.strip()) if item)


@dataclass(frozen=True, slots=True)
class Policy:
    """What a location demands beyond valid credentials.

    ``scopes``: all required. ``groups`` and ``users``: any one suffices. ``schemes``: the
    schemes accepted here, empty meaning every enabled scheme.
    """

    scopes: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    schemes: frozenset[str] = frozenset()

    @classmethod
    def from_query(cls, query: str) -> Policy:
        params: dict[str, list[str]] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            params.setdefault(name, []).append(value)
        return cls(
            scopes=_split(params.get("scope", []), _SPACE_OR_COMMA),
            groups=_split(params.get("group", []), _COMMA),
            users=_split(params.get("user", []), _COMMA),
            schemes=frozenset(s.lower() for s in _split(params.get("scheme", []), _COMMA)),
        )

    def allowed_schemes(self, enabled: tuple[str, ...]) -> tuple[str, ...]:
        """The enabled schemes this location accepts (possibly none, if misconfigured)."""
        if not self.schemes:
            return enabled
        return tuple(s for s in enabled if s in self.schemes)

    def check(self, identity: Identity) -> None:
        """Return if the identity satisfies this policy; raise Forbidden otherwise."""
        if self.users and identity.user not in self.users:
            raise Forbidden("user_not_allowed")
        if self.groups and not self.groups & identity.groups:
            raise Forbidden("group_not_allowed")
        if not self.scopes <= identity.scopes:
            raise Forbidden("insufficient_scope", required_scopes=" ".join(sorted(self.scopes)))


@functools.lru_cache(maxsize=1024)
def policy_for(query: str) -> Policy:
    """The policy of a query string, parsed once. The proxy's config makes the set of query
    strings small; the bound keeps a client that reaches authproxy directly from growing it."""
    return Policy.from_query(query)
