"""Property tests of the policy grammar (fuzz target ``tests/fuzz/policy.py``), and the same
predicate through the production server: random policies and identities, real decisions."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.parse
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hypothesis import example, given, settings
from hypothesis import strategies as st

from authproxy.core import policy as policy_module
from authproxy.core.identity import Identity
from tests.fuzz import policy
from tests.planted import assert_caught
from tests.specmodel import LIST_KEYS, InvalidPolicy, read_policy

from .jwks_server import K1, FakeClock, StartApp, basic, bearer, mint

pytest_plugins = ["tests.jwks_fixtures"]

USERS = ["alice", "bob", "carol", "dave"]
GROUPS = ["staff", "ops", "a%2Cb", "b"]  # "a%2Cb" literally: a name with a percent sign
SCOPES = ["read", "write", "admin"]
# Claim values a token may carry, and how a policy names them: booleans and integers by
# their JSON spelling (README; SPEC is silent).
ROLES: list[str | int] = ["admin", "dev", True, 3]
ROLE_NAMES = ["admin", "dev", "true", "3"]
VALUES = {"user": USERS, "group": GROUPS, "scope": SCOPES,
          "scheme": ["basic", "bearer", "Bearer", "kerberos"],
          "claim.role": ROLE_NAMES, "claim.realm.role": ROLE_NAMES}
FAULTY_KEYS = ["groups", "Scope", "role", "claim.", "", "scope "]
BASIC_USERS = {"alice": ["staff"], "bob": ["staff", "a%2Cb"], "carol": []}  # password = name


@st.composite
def queries(draw: st.DrawFn) -> str:
    """A policy query as an operator might write one, or get wrong: keys in any order,
    items comma- (scopes also space-) separated with spaces around them, percent-encoded
    or not; now and then an unknown or repeated key, an empty item or value."""
    keys = draw(st.lists(st.sampled_from(list(VALUES)), max_size=3, unique=True))
    if draw(st.integers(0, 5)) == 0:
        keys.append(draw(st.sampled_from(FAULTY_KEYS + keys if keys else FAULTY_KEYS)))
    fields = []
    for key in keys:
        items = draw(st.lists(st.sampled_from(VALUES.get(key, USERS)), min_size=1, max_size=3))
        separators = [",", "%2C", ",+", "%20,%20"] + (["+", "%20"] if key == "scope" else [])
        value = ""
        for index, item in enumerate(items):
            if index:
                value += draw(st.sampled_from(separators))
            value += quote(item, safe=draw(st.sampled_from(["", "%"])))
        if draw(st.integers(0, 7)) == 0:
            value = draw(st.sampled_from(["", ",", value + ",", "+", ",,"]))
        spelled = key if draw(st.integers(0, 4)) else quote(key, safe="").replace("s", "%73")
        fields.append(f"{spelled}={value}")
    return "&".join(fields)


identities = st.builds(
    lambda method, user, groups, scopes, role: Identity(
        user=user, method=method, groups=frozenset(groups), scopes=frozenset(scopes),
        claims={} if method == "basic" else {"role": role, "realm": {"role": role}}),
    st.sampled_from(["basic", "bearer"]), st.sampled_from(USERS),
    st.sets(st.sampled_from(GROUPS)), st.sets(st.sampled_from(SCOPES)),
    st.one_of(st.sampled_from(ROLES), st.lists(st.sampled_from(ROLES), max_size=2)))


def identity_line(identity: Identity) -> str:
    return "|".join([identity.method, identity.user, ",".join(identity.groups),
                     " ".join(identity.scopes), json.dumps(dict(identity.claims))])


@given(st.binary(max_size=200))
def test_raw_bytes(data: bytes) -> None:
    policy.check(data)


@given(st.text(st.sampled_from("scopegruhmia.=&,+% 2Cf0aA\t\u00e9"), max_size=40))
def test_policy_alphabet(text: str) -> None:
    policy.check(text.encode("utf-8"))


@given(queries(), identities)
@example("scope=read,write", Identity(user="alice", method="bearer",
                                      scopes=frozenset({"read"})))
@example("groups=staff", Identity(user="alice", method="basic", groups=frozenset({"staff"})))
@example("group=staff&group=ops", Identity(user="a", method="basic", groups=frozenset({"ops"})))
@example("claim.role=3", Identity(user="a", method="bearer", claims={"role": [True, 3]}))
@example("claim.role=true", Identity(user="a", method="bearer", claims={"role": 1}))
def test_queries_and_identities(query: str, identity: Identity) -> None:
    policy.check_policy(query, identity)
    policy.check(f"{query}\n{identity_line(identity)}".encode())


def test_the_target_admits_and_refuses() -> None:
    """The predicate is exercised both ways, not only vacuously on invalid policies."""
    alice = Identity(user="alice", method="bearer", scopes=frozenset({"read", "write"}))
    for query, admitted in (("scope=read+write", True), ("scope=read,admin", False)):
        assert policy._admitted(policy_module.Policy.from_query(query), alice) is admitted
        policy.check_policy(query, alice)


def test_a_planted_check_that_ignores_scopes_is_caught(monkeypatch: Any) -> None:
    real = policy_module.Policy.check

    def without_scopes(self: policy_module.Policy, identity: Identity) -> None:
        real(dataclasses.replace(self, scopes=frozenset()), identity)

    monkeypatch.setattr(policy_module.Policy, "check", without_scopes)
    assert_caught(test_queries_and_identities)


def test_a_planted_parser_that_ignores_unknown_keys_is_caught(monkeypatch: Any) -> None:
    real = urllib.parse.parse_qsl  # what authproxy.core.policy parses queries with

    def known_pairs_only(query: str, **kwargs: Any) -> list[tuple[str, str]]:
        return [(k, v) for k, v in real(query, **kwargs)
                if k in LIST_KEYS or k.startswith("claim.")]

    monkeypatch.setattr(policy_module, "parse_qsl", known_pairs_only)
    assert_caught(test_queries_and_identities)


def test_a_planted_claim_match_on_strings_only_is_caught(monkeypatch: Any) -> None:
    """A claim of ``true`` or ``3`` no longer matching its JSON spelling."""
    def strings_only(value: Any, wanted: frozenset[str]) -> bool:
        values = value if isinstance(value, list) else [value]
        return any(isinstance(v, str) and v in wanted for v in values)

    monkeypatch.setattr(policy_module, "claim_matches", strings_only)
    assert_caught(test_queries_and_identities)


# -- through the production server ------------------------------------------------------------


def expected_status(query: str, method: str | None, identity: Identity | None) -> int:
    """SPEC §4 and §8.2: an invalid policy 403 for everyone; no credentials, or a scheme the
    location does not accept, 401; then 200 exactly when the policy's predicate admits."""
    try:
        spec = read_policy(query)
    except InvalidPolicy:
        return 403
    if identity is None or method not in spec.allowed():
        return 401
    return 200 if spec.admits(identity) else 403


async def test_random_policies_and_identities_through_the_server(
    start_app: StartApp, htpasswd: Any, tmp_path: Path, clock: FakeClock
) -> None:
    groups_file = tmp_path / "groups"
    groups_file.write_text("".join(f"{g}: {' '.join(u for u, gs in BASIC_USERS.items() if g in gs)}\n"
                                   for g in GROUPS if any(g in gs for gs in BASIC_USERS.values())))
    users = htpasswd(**{name: name for name in BASIC_USERS})
    client = await start_app({"basic": {"users_file": str(users),
                                        "groups_file": str(groups_file)}})
    loop = asyncio.get_running_loop()

    def ask(query: str, headers: dict[str, str]) -> int:
        future = asyncio.run_coroutine_threadsafe(client.get(f"/auth?{query}", headers=headers),
                                                  loop)
        return future.result(timeout=30).status

    credentials = st.one_of(
        st.just(("none", "", (), (), "")),
        st.tuples(st.just("basic"), st.sampled_from(list(BASIC_USERS)), st.just(()),
                  st.just(()), st.just("")),
        st.tuples(st.just("bearer"), st.sampled_from(USERS), st.sets(st.sampled_from(GROUPS)),
                  st.sets(st.sampled_from(SCOPES)), st.sampled_from(ROLES)))

    asked: list[int] = []

    @settings(max_examples=150)
    @given(queries(), credentials)
    @example("group=a%252Cb", ("bearer", "dave", {"b"}, set(), "dev"))  # a literal "%2C"
    def decide(query: str, credential: tuple[str, str, Any, Any, str | int]) -> None:
        method, user, groups, scopes, role = credential
        identity: Identity | None = None
        headers: dict[str, str] = {}
        if method == "basic":
            headers = basic(user, user)
            identity = Identity(user=user, method="basic",
                                groups=frozenset(BASIC_USERS[user]))
        elif method == "bearer":
            headers = bearer(mint(K1, clock.time(), sub=user, groups=sorted(groups),
                                  scope=" ".join(sorted(scopes)), role=role,
                                  realm={"role": role}))
            identity = Identity(user=user, method="bearer", groups=frozenset(groups),
                                scopes=frozenset(scopes),
                                claims={"role": role, "realm": {"role": role}})
        status = ask(query, headers)
        asked.append(status)
        assert status in (200, 401, 403, 503)
        assert status == expected_status(query, method, identity), (query, credential)

    await asyncio.to_thread(decide)
    assert {200, 401, 403} <= set(asked), "the decisions exercised every outcome"
