"""SPEC §8.2, the per-location policy, read from its text: the one test-side model of it.

The decision oracle (tests/oracle.py) predicts decisions with it and the policy fuzz target
(tests/fuzz/policy.py) checks authproxy's parser and predicate against it. It imports
nothing from ``authproxy``: a misreading shared by the model and the code under test would
hide itself.

The grammar: keys ``scope``, ``group``, ``user``, ``scheme`` and ``claim.<path>``, lower case
and exact; lists comma-separated, spaces around items ignored, ``scope`` also
space-separated. An unknown key, an empty value or list item, a repeated key or an unknown
scheme name makes the policy *invalid*: everyone under it gets 403. The predicate: every
listed scope, any listed group, any listed user, and each claim equal to one of its values
or, a list, containing one; a Basic user has no claims.

Where SPEC is silent, the model says what authproxy does today (README, "Per-location
policy", documents the claim spellings and that a query that is not UTF-8 is invalid):

- the query is application/x-www-form-urlencoded: ``+`` is a space, ``%XX`` a byte, the
  result UTF-8 (a ``%XX`` spelling that is not UTF-8 is invalid), and an empty field between
  two ``&`` is no field at all (the WHATWG URL standard skips it);
- scheme names compare case-insensitively (``scheme=Bearer``), as auth-scheme names do
  (RFC 9110 §11.1);
- a boolean or integer claim matches its JSON spelling (``claim.email_verified=true``,
  ``claim.level=3``); floats, objects and null match nothing;
- tabs count with spaces around an item, and a value of only spaces and tabs is empty
  (``group=staff%09`` is ``staff``; ``group=%09`` is invalid). SPEC says "spaces"; read
  strictly, ``group=staff%09`` would name a group no identity can carry (a control
  character refuses the identity) and ``group=%09`` would be valid (401 without
  credentials, not 403); ``claim.role=admin%09`` matches ``"admin"``, not ``"admin\\t"``.
  Within ``scope``, items split on spaces alone, so a tab stays part of a scope;
- a raw byte that is not UTF-8 (the edge decodes the target with surrogateescape) is kept
  as a lone surrogate, not refused as README's "not UTF-8" would have it: it can name no
  user, group or scope an identity can carry, only a claim value spelled ``"\\udc80"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote_plus

SCHEMES = ("basic", "bearer")  # in the order a challenge names them
LIST_KEYS = ("scope", "group", "user", "scheme")
CLAIM_PREFIX = "claim."
_AROUND = " \t"  # what is stripped around a list item (see the module docstring)


class InvalidPolicy(ValueError):
    """A query string SPEC §8.2 calls invalid: every request under it gets 403.

    ``problem`` names the first rule the query breaks, reading its fields in order, with
    the labels of ``authproxy_invalid_policy_total{problem=...}``: ``not_utf8``,
    ``repeated_key``, ``empty_value``, ``unknown_key``, ``empty_item``, ``unknown_scheme``.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class Principal(Protocol):
    """An authenticated identity as the predicate sees it. ``claims``: a verified token's
    payload; None or empty for a Basic user, who has no claims."""

    @property
    def user(self) -> str: ...
    @property
    def groups(self) -> frozenset[str]: ...
    @property
    def scopes(self) -> frozenset[str]: ...
    @property
    def claims(self) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """A valid policy: ``scopes`` all required, ``groups`` and ``users`` any one, ``schemes``
    the accepted ones (lower case; empty: every enabled scheme), ``claims`` (path, values)
    pairs sorted by path, each required. An empty field means no requirement."""

    scopes: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    schemes: frozenset[str] = frozenset()
    claims: tuple[tuple[str, frozenset[str]], ...] = ()

    def allowed(self, enabled: tuple[str, ...] = SCHEMES) -> tuple[str, ...]:
        """The enabled schemes this location accepts, in ``enabled``'s order: a request
        with another scheme gets 401 challenging only these (SPEC §7)."""
        return tuple(s for s in enabled if not self.schemes or s in self.schemes)

    def admits(self, who: Principal) -> bool:
        """Whether an authenticated ``who`` passes (200) rather than being refused (403).
        Schemes are not part of it: they decide 401 before any identity exists."""
        return ((not self.users or who.user in self.users)
                and (not self.groups or bool(self.groups & who.groups))
                and self.scopes <= who.scopes
                and all(claim_holds(who.claims, path, wanted) for path, wanted in self.claims))


def form_fields(query: str) -> list[tuple[str, str]]:
    """The (name, value) fields of a query string, each decoded once; raise InvalidPolicy
    (``not_utf8``) when a ``%XX`` spelling is not UTF-8. A field without ``=`` has an empty
    value."""
    fields = []
    for field in query.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        try:
            fields.append((unquote_plus(name, errors="strict"),
                           unquote_plus(value, errors="strict")))
        except UnicodeDecodeError:
            raise InvalidPolicy("not_utf8") from None
    return fields


def _items(value: str, *, spaces: bool) -> frozenset[str]:
    """A comma-separated list (``spaces``: also space-separated), blanks around items
    ignored; raise InvalidPolicy (``empty_item``) on an empty item."""
    items: set[str] = set()
    for part in value.split(","):
        words = part.split(" ") if spaces else [part.strip(_AROUND)]
        words = [word for word in words if word]
        if not words:
            raise InvalidPolicy("empty_item")
        items.update(words)
    return frozenset(items)


def read_policy(query: str) -> Policy:
    """The policy SPEC §8.2 reads from an auth URL's query string; raise InvalidPolicy."""
    lists: dict[str, frozenset[str]] = {}
    claims: dict[str, frozenset[str]] = {}
    seen: set[str] = set()
    for name, value in form_fields(query):
        if name in seen:
            raise InvalidPolicy("repeated_key")
        seen.add(name)
        if not value.strip(_AROUND):
            raise InvalidPolicy("empty_value")
        if name.startswith(CLAIM_PREFIX) and name != CLAIM_PREFIX:
            claims[name[len(CLAIM_PREFIX):]] = _items(value, spaces=False)
        elif name in LIST_KEYS:
            lists[name] = _items(value, spaces=name == "scope")
        else:
            raise InvalidPolicy("unknown_key")
    schemes = frozenset(s.lower() for s in lists.get("scheme", ()))
    if not schemes <= set(SCHEMES):
        raise InvalidPolicy("unknown_scheme")
    return Policy(scopes=lists.get("scope", frozenset()), groups=lists.get("group", frozenset()),
                  users=lists.get("user", frozenset()), schemes=schemes,
                  claims=tuple(sorted(claims.items())))


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at ``path`` (SPEC §8.3): the top-level claim of that exact name if the token
    has one, else a dotted path into nested objects; None when absent."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for name in path.split("."):
        if not isinstance(value, Mapping) or name not in value:
            return None
        value = value[name]
    return value


def _spelling(value: Any) -> str | None:
    """A claim value as a policy can name it: a string as it is, a boolean or integer by its
    JSON spelling; None (matching nothing) for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return None


def claim_holds(claims: Mapping[str, Any] | None, path: str, wanted: frozenset[str]) -> bool:
    """Whether the claim at ``path`` equals one of ``wanted`` or, a list, contains one.
    ``claims`` None: a Basic user, who has no claims."""
    if claims is None:
        return False
    value = claim_at(claims, path)
    values = value if isinstance(value, list) else [value]
    return any(_spelling(v) in wanted for v in values)
