"""The policy grammar (``authproxy.core.policy``, SPEC §8.2): ``Policy.from_query``,
``policy_for``, ``allowed_schemes`` and ``check``.

The input is ``QUERY`` or ``QUERY\\nIDENTITY``, where IDENTITY is
``method|user|group,group|scope scope|claims`` (claims: a JSON object, or ``name=value;...``).
The parse is compared with :func:`read_policy`, an independent reading of SPEC §8.2, and a
verdict of ``check`` with :func:`admits`, SPEC's predicate. tests/test_fuzz_policy.py also
drives both through the production server.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_plus

from authproxy.core import policy as policy_module
from authproxy.core.identity import Identity
from authproxy.errors import Forbidden, Unauthenticated

LIST_KEYS = ("scope", "group", "user", "scheme")
SCHEMES = ("basic", "bearer")


class Invalid(Exception):
    """SPEC §8.2 calls the policy invalid: every request under it is a 403."""


@dataclass(frozen=True)
class Spec:
    """A policy as SPEC §8.2 reads it."""

    scopes: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    schemes: frozenset[str] = frozenset()
    claims: tuple[tuple[str, frozenset[str]], ...] = ()


def _pairs(query: str) -> list[tuple[str, str]]:
    """application/x-www-form-urlencoded, decoded once: '&'-separated name=value, '+' a
    space, %XX a UTF-8 byte; a field without '=' has an empty value."""
    pairs = []
    for field in query.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        try:
            pairs.append((unquote_plus(name, errors="strict"),
                          unquote_plus(value, errors="strict")))
        except UnicodeDecodeError:
            raise Invalid("not UTF-8") from None
    return pairs


def _items(value: str, *, spaces: bool) -> frozenset[str]:
    """Comma-separated (``spaces``: and space-separated), spaces around items ignored; an
    empty item is invalid. (The code also ignores tabs around items: harmless, as no group,
    user or scope an identity carries starts or ends with one.)"""
    items: set[str] = set()
    for part in value.split(","):
        words = [w for w in part.split(" ") if w] if spaces else [part.strip(" \t")]
        if not any(words):
            raise Invalid("empty item")
        items.update(w for w in words if w)
    return frozenset(items)


def read_policy(query: str) -> Spec:
    """The policy SPEC §8.2 reads from a query string; raise Invalid."""
    lists: dict[str, frozenset[str]] = {}
    claims: dict[str, frozenset[str]] = {}
    seen: set[str] = set()
    for name, value in _pairs(query):
        if name in seen:
            raise Invalid("repeated key")
        seen.add(name)
        if not value.strip(" \t"):
            raise Invalid("empty value")
        if name in LIST_KEYS:
            lists[name] = _items(value, spaces=name == "scope")
        elif name.startswith("claim.") and name != "claim.":
            claims[name[len("claim."):]] = _items(value, spaces=False)
        else:
            raise Invalid("unknown key")
    schemes = frozenset(s.lower() for s in lists.get("scheme", ()))  # RFC 9110 §11.1
    if not schemes <= set(SCHEMES):
        raise Invalid("unknown scheme")
    return Spec(lists.get("scope", frozenset()), lists.get("group", frozenset()),
                lists.get("user", frozenset()), schemes, tuple(sorted(claims.items())))


def claim_value(claims: dict[str, Any], path: str) -> Any:
    """SPEC §8.3: the claim of exactly that name, else a dotted path into objects."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for name in path.split("."):
        value = value.get(name) if isinstance(value, dict) else None
    return value


def admits(spec: Spec, identity: Identity) -> bool:
    """SPEC §4 and §8.2: a listed user, a listed group (any one), every listed scope, each
    claim equal to (or, a list, containing) one of its values. Schemes are not this
    predicate's: they decide 401 before any identity."""
    def claim_ok(path: str, wanted: frozenset[str]) -> bool:
        value = claim_value(dict(identity.claims), path)
        values = value if isinstance(value, list) else [value]
        return any(isinstance(v, str) and v in wanted for v in values)

    return ((not spec.users or identity.user in spec.users)
            and (not spec.groups or bool(spec.groups & identity.groups))
            and spec.scopes <= identity.scopes
            and all(claim_ok(path, wanted) for path, wanted in spec.claims))


def canonical_query(policy: policy_module.Policy) -> str:
    """A query spelling ``policy``'s requirements, every character percent-encoded."""
    fields = [(key, getattr(policy, key + "s")) for key in LIST_KEYS]
    fields += [("claim." + path, values) for path, values in policy.claims]
    return "&".join(f"{quote(key, safe='')}={quote(','.join(sorted(values)), safe='')}"
                    for key, values in fields if values)


def parse_identity(text: str) -> Identity | None:
    method, user, groups, scopes, claims_text = (text.split("|") + [""] * 5)[:5]
    claims: Any = {}
    if claims_text.startswith("{"):
        try:
            claims = json.loads(claims_text)
        except ValueError:
            return None
    else:
        claims = dict(pair.partition("=")[::2] for pair in claims_text.split(";") if pair)
    if not isinstance(claims, dict):
        return None
    try:
        return Identity(user=user, method=method or "bearer",
                        groups=frozenset(g for g in groups.split(",") if g),
                        scopes=frozenset(s for s in scopes.split(" ") if s), claims=claims)
    except Unauthenticated:  # values no header can carry: no identity is made of them
        return None


def check_policy(query: str, identity: Identity | None) -> None:
    policy = policy_module.Policy.from_query(query)
    assert policy == policy_module.Policy.from_query(query), "parsing is not deterministic"
    if len(query) <= policy_module.MAX_POLICY:
        assert policy_module.policy_for(query) == policy
    else:
        assert policy_module.policy_for(query).problem, "an overlong policy was not refused"
    try:
        spec = read_policy(query)
    except Invalid as why:
        assert policy.problem, f"a policy SPEC calls invalid ({why}) was accepted: {query!r}"
        assert identity is None or not _admitted(policy, identity), "an invalid policy admitted"
        return
    assert not policy.problem, f"a valid policy was refused ({policy.problem}): {query!r}"
    assert (policy.scopes, policy.groups, policy.users, policy.schemes, policy.claims) == (
        spec.scopes, spec.groups, spec.users, spec.schemes, spec.claims), "misread"
    if not any("\udc80" <= c <= "\udcff" for c in query):  # a raw byte that is no UTF-8
        # (surrogateescape) has no %XX spelling that parses again
        assert policy_module.Policy.from_query(canonical_query(policy)) == policy, "round trip"
    assert set(policy.allowed_schemes(SCHEMES)) == (spec.schemes or set(SCHEMES))
    if identity is None:
        return
    admitted = _admitted(policy, identity)
    assert admitted == admits(spec, identity), (
        f"{'admitted' if admitted else 'refused'} {identity!r} under {query!r}")


def _admitted(policy: policy_module.Policy, identity: Identity) -> bool:
    try:
        policy.check(identity)
    except Forbidden:
        return False
    return True


def check(data: bytes) -> None:
    query, newline, identity_text = data.decode("latin-1").partition("\n")
    # The edge hands the decision a str: the target as UTF-8 with surrogateescape.
    query = query.encode("latin-1").decode("utf-8", "surrogateescape")
    check_policy(query, parse_identity(identity_text) if newline else None)
