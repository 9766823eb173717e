"""Per-location requirements, from the auth URL's query string (SPEC §8.2).

Keys (lower case, exact): ``scope`` (all required), ``group``, ``user`` (any one suffices),
``scheme`` (which schemes the location accepts), ``claim.<path>`` (the token's claim at
``<path>`` equals one of the values or, being a list, contains one). A query string that
says anything else is an *invalid* policy, which refuses every request: a typo must never
read as "no requirement".
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from ..errors import Forbidden
from .identity import Identity

SCHEMES = frozenset({"basic", "bearer"})
_LIST_KEYS = frozenset({"scope", "group", "user", "scheme"})
CLAIM_PREFIX = "claim."
# An operator's policy is a few hundred bytes; a longer one is a client talking to
# authproxy directly, and is refused without being parsed.
MAX_POLICY = 4096


class InvalidPolicy(ValueError):
    """A query string that is not a policy; ``problem`` is a fixed token for metric labels."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _items(value: str, *, spaces: bool) -> frozenset[str]:
    """A comma-separated list (``spaces``: also space-separated), spaces around items
    ignored; raise InvalidPolicy on an empty value or item."""
    items: list[str] = []
    for part in value.split(","):
        words = part.split(" ") if spaces else [part.strip(" \t")]
        words = [word for word in words if word]
        if not words:
            raise InvalidPolicy("empty_item")
        items.extend(words)
    return frozenset(items)


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at ``path`` (SPEC §8.3): the top-level claim of that exact name if there is
    one, else a dotted path into nested objects; None when absent."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            return None
        value = value[name]
    return value


def _claim_text(value: Any) -> str | None:
    """A claim value as a policy value may name it: a string as is, a boolean or integer by
    its JSON spelling (``true``, ``42``); None for anything else (objects, floats, null)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return None


def claim_matches(value: Any, wanted: frozenset[str]) -> bool:
    """Whether a claim value equals one of ``wanted`` or, a list, contains one."""
    if isinstance(value, list):
        return any(_claim_text(item) in wanted for item in value)
    return _claim_text(value) in wanted


@dataclass(frozen=True, slots=True)
class Policy:
    """What a location demands beyond valid credentials.

    ``scopes``: all required. ``groups`` and ``users``: any one suffices. ``schemes``: the
    schemes accepted here, empty meaning every enabled scheme. ``claims``: (path, values)
    pairs, each to be satisfied. ``problem``: set on an invalid policy, which admits no one.
    """

    scopes: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    schemes: frozenset[str] = frozenset()
    claims: tuple[tuple[str, frozenset[str]], ...] = ()
    problem: str = ""

    @classmethod
    def from_query(cls, query: str) -> Policy:
        """The policy of ``query``; an invalid one is returned with ``problem`` set."""
        try:
            return cls._parse(query)
        except InvalidPolicy as exc:
            return cls(problem=exc.problem)

    @classmethod
    def _parse(cls, query: str) -> Policy:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise InvalidPolicy("not_utf8") from None
        lists: dict[str, frozenset[str]] = {}
        claims: dict[str, frozenset[str]] = {}
        seen: set[str] = set()
        for key, value in pairs:
            if key in seen:
                raise InvalidPolicy("repeated_key")
            seen.add(key)
            if not value.strip(" \t"):
                raise InvalidPolicy("empty_value")
            if key.startswith(CLAIM_PREFIX) and len(key) > len(CLAIM_PREFIX):
                claims[key[len(CLAIM_PREFIX):]] = _items(value, spaces=False)
            elif key in _LIST_KEYS:
                lists[key] = _items(value, spaces=key == "scope")
            else:
                raise InvalidPolicy("unknown_key")
        # auth-scheme names are case-insensitive (RFC 9110 §11.1)
        schemes = frozenset(s.lower() for s in lists.get("scheme", ()))
        if not schemes <= SCHEMES:
            raise InvalidPolicy("unknown_scheme")
        return cls(
            scopes=lists.get("scope", frozenset()), groups=lists.get("group", frozenset()),
            users=lists.get("user", frozenset()), schemes=schemes,
            claims=tuple(sorted(claims.items())),
        )

    def allowed_schemes(self, enabled: tuple[str, ...]) -> tuple[str, ...]:
        """The enabled schemes this location accepts (possibly none, if misconfigured)."""
        if not self.schemes:
            return enabled
        return tuple(s for s in enabled if s in self.schemes)

    def check(self, identity: Identity) -> None:
        """Return if the identity satisfies this policy; raise Forbidden otherwise."""
        if self.problem:
            raise Forbidden("invalid_policy")
        if self.users and identity.user not in self.users:
            raise Forbidden("user_not_allowed")
        if self.groups and not self.groups & identity.groups:
            raise Forbidden("group_not_allowed")
        for path, wanted in self.claims:  # a Basic identity has no claims: never satisfied
            if not claim_matches(claim_at(identity.claims, path), wanted):
                raise Forbidden("claim_not_allowed")
        if not self.scopes <= identity.scopes:
            raise Forbidden("insufficient_scope", required_scopes=" ".join(sorted(self.scopes)))


TOO_LONG = Policy(problem="too_long")


def policy_for(query: str) -> Policy:
    """The policy of a query string, parsed once. The proxy's config makes the set of query
    strings small; the bounds (entries, and bytes of a key) keep a client that reaches
    authproxy directly from growing it."""
    return TOO_LONG if len(query) > MAX_POLICY else _parsed(query)


@functools.lru_cache(maxsize=1024)
def _parsed(query: str) -> Policy:
    return Policy.from_query(query)


class InvalidPolicyLog:
    """Remembers which invalid policy strings were logged, so each is logged once.

    At most ``limit`` strings are remembered, by their hash (the oldest forgotten first): a
    client that reaches authproxy directly can make any number of them, and then gets a
    line again for one forgotten, never unbounded memory.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._seen: dict[int, None] = {}

    def first_time(self, query: str) -> bool:
        """True the first time ``query`` is seen (again after it was forgotten)."""
        key = hash(query)
        if key in self._seen:
            return False
        if len(self._seen) >= self._limit:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = None
        return True
