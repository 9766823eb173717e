"""The policy grammar (``authproxy.core.policy``, SPEC §8.2): ``Policy.from_query``,
``policy_for``, ``allowed_schemes`` and ``check``.

The input is ``QUERY`` or ``QUERY\\nIDENTITY``, where IDENTITY is
``method|user|group,group|scope scope|claims`` (claims: a JSON object, or ``name=value;...``).
The parse, and the problem of an invalid policy, are compared with ``read_policy`` of
tests/specmodel.py, the tests' one reading of SPEC §8.2 (the decision oracle's too), and a
verdict of ``check`` with that model's predicate. tests/test_fuzz_policy.py also drives both
through the production server.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from authproxy.core import policy as policy_module
from authproxy.core.identity import Identity
from authproxy.errors import Forbidden, Unauthenticated
from tests.specmodel import LIST_KEYS, SCHEMES, InvalidPolicy, read_policy


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
    except InvalidPolicy as why:
        assert policy.problem, f"a policy SPEC calls invalid ({why}) was accepted: {query!r}"
        assert policy.problem == why.problem, (
            f"invalid as {policy.problem}, SPEC's problem is {why.problem}: {query!r}")
        assert identity is None or not _admitted(policy, identity), "an invalid policy admitted"
        return
    assert not policy.problem, f"a valid policy was refused ({policy.problem}): {query!r}"
    assert (policy.scopes, policy.groups, policy.users, policy.schemes, policy.claims) == (
        spec.scopes, spec.groups, spec.users, spec.schemes, spec.claims), "misread"
    if not any("\udc80" <= c <= "\udcff" for c in query):  # a raw byte that is no UTF-8
        # (surrogateescape) has no %XX spelling that parses again
        assert policy_module.Policy.from_query(canonical_query(policy)) == policy, "round trip"
    assert policy.allowed_schemes(SCHEMES) == spec.allowed()
    if identity is None:
        return
    admitted = _admitted(policy, identity)
    assert admitted == spec.admits(identity), (
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
