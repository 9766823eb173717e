"""The policy grammar and check (core/policy.py) pinned through its public API, one test per
behaviour a mutant of it changed without the suite noticing (``make mutate``).

The HTTP-level tests in test_policy.py say the same things through the app; these say them
exactly (which problem, which reason, which items), so that a mutant that changes only the
spelling of a reason or of a parsed item is seen too.
"""

from __future__ import annotations

from typing import Any

import pytest

from authproxy.core.identity import Identity
from authproxy.core.policy import (
    MAX_POLICY,
    InvalidPolicy,
    InvalidPolicyLog,
    Policy,
    claim_at,
    claim_matches,
    policy_for,
)
from authproxy.errors import Forbidden


def bearer_identity(user: str = "alice", *, groups: tuple[str, ...] = (),
                    scopes: tuple[str, ...] = (), **claims: Any) -> Identity:
    return Identity(user=user, method="bearer", groups=frozenset(groups),
                    scopes=frozenset(scopes), claims=claims)


def refusal(policy: Policy, identity: Identity) -> Forbidden:
    with pytest.raises(Forbidden) as caught:
        policy.check(identity)
    return caught.value


# -- parsing: every invalid policy names its problem -----------------------------------------


@pytest.mark.parametrize(("query", "problem"), [
    ("group=%ff", "not_utf8"),
    ("group=a&group=a", "repeated_key"),
    ("user=", "empty_value"),
    ("user=%20%09", "empty_value"),
    ("group=a,,b", "empty_item"),
    ("scope=a,%20,b", "empty_item"),
    ("groups=a", "unknown_key"),
    ("claim.=x", "unknown_key"),
    ("claim=x", "unknown_key"),
    ("scheme=basic,kerberos", "unknown_scheme"),
])
def test_an_invalid_policy_names_its_problem(query: str, problem: str) -> None:
    policy = Policy.from_query(query)
    assert policy.problem == problem
    assert refusal(policy, bearer_identity()).reason == "invalid_policy"


def test_a_blank_value_is_an_invalid_policy_not_a_missing_key() -> None:
    """keep_blank_values: ``user=`` dropped would read as no user requirement at all."""
    assert Policy.from_query("user=").problem == "empty_value"
    assert Policy.from_query("user=&group=staff").problem == "empty_value"


def test_an_invalid_policy_problem_is_also_the_exception_text() -> None:
    assert str(InvalidPolicy("empty_item")) == "empty_item"
    assert InvalidPolicy("empty_item").problem == "empty_item"


# -- parsing: what a valid policy holds ------------------------------------------------------


def test_lists_split_on_commas_and_only_scope_on_spaces() -> None:
    policy = Policy.from_query(
        "scope=a%20b,c&group=staff%20team,%20ops%09&user=%20alice%20,bob&scheme=bearer")
    assert policy.problem == ""
    assert policy.scopes == {"a", "b", "c"}
    assert policy.groups == {"staff team", "ops"}
    assert policy.users == {"alice", "bob"}
    assert policy.schemes == {"bearer"}


def test_only_spaces_and_tabs_around_an_item_are_ignored() -> None:
    """A newline or a form feed is part of the item: it names a different group."""
    assert Policy.from_query("group=%0Astaff").groups == {"\nstaff"}
    assert Policy.from_query("group=staff%0C").groups == {"staff\x0c"}


def test_a_value_of_other_whitespace_is_not_empty() -> None:
    """Only spaces and tabs make a value empty; a newline is a (useless) group of its own."""
    assert Policy.from_query("group=%0A") == Policy(groups=frozenset({"\n"}))
    assert Policy.from_query("group=X") == Policy(groups=frozenset({"X"}))


def test_what_is_not_asked_for_is_empty() -> None:
    assert Policy.from_query("scope=a") == Policy(scopes=frozenset({"a"}))
    assert Policy.from_query("user=a") == Policy(users=frozenset({"a"}))
    assert Policy.from_query("group=a&scheme=basic") == Policy(
        groups=frozenset({"a"}), schemes=frozenset({"basic"}))
    assert Policy.from_query("") == Policy()


def test_scopes_split_on_spaces_only() -> None:
    assert Policy.from_query("scope=a%09b").scopes == {"a\tb"}


def test_scheme_names_are_case_insensitive_and_both_may_be_named() -> None:
    assert Policy.from_query("scheme=Basic,BEARER").schemes == {"basic", "bearer"}


def test_claim_keys_keep_their_whole_path() -> None:
    policy = Policy.from_query("claim.realm_access.roles=admin,%20ops&claim.a=1")
    assert policy.problem == ""
    assert policy.claims == (("a", frozenset({"1"})),
                             ("realm_access.roles", frozenset({"admin", "ops"})))


def test_claim_values_split_on_commas_only() -> None:
    assert Policy.from_query("claim.role=a%20b").claims == (("role", frozenset({"a b"})),)


def test_a_policy_of_max_length_is_parsed_one_byte_more_is_too_long() -> None:
    query = "user=" + "a" * (MAX_POLICY - len("user="))
    assert policy_for(query).users == {"a" * (MAX_POLICY - 5)}
    assert policy_for(query + "a").problem == "too_long"


# -- the check ---------------------------------------------------------------------------------


def test_no_requirement_admits_anyone() -> None:
    Policy.from_query("").check(bearer_identity())
    Policy.from_query("scheme=bearer").check(bearer_identity())


def test_users_any_of() -> None:
    policy = Policy.from_query("user=alice,bob")
    policy.check(bearer_identity("bob"))
    assert refusal(policy, bearer_identity("carol")).reason == "user_not_allowed"


def test_groups_any_of() -> None:
    policy = Policy.from_query("group=staff,ops")
    policy.check(bearer_identity(groups=("ops", "other")))
    assert refusal(policy, bearer_identity(groups=("other",))).reason == "group_not_allowed"
    Policy.from_query("user=alice").check(bearer_identity(groups=()))


def test_scopes_all_of_and_exactly_enough_is_enough() -> None:
    policy = Policy.from_query("scope=b%20a")
    policy.check(bearer_identity(scopes=("a", "b")))
    policy.check(bearer_identity(scopes=("a", "b", "c")))
    denied = refusal(policy, bearer_identity(scopes=("a",)))
    assert denied.reason == "insufficient_scope"
    assert denied.required_scopes == "a b"


def test_claims_each_required() -> None:
    policy = Policy.from_query("claim.tier=3&claim.amr=mfa")
    policy.check(bearer_identity(tier=3, amr=["pwd", "mfa"]))
    assert refusal(policy, bearer_identity(tier=3, amr=["pwd"])).reason == "claim_not_allowed"
    assert refusal(policy, bearer_identity(tier=2, amr=["mfa"])).reason == "claim_not_allowed"


def test_allowed_schemes() -> None:
    enabled = ("basic", "bearer")
    assert Policy.from_query("").allowed_schemes(enabled) == enabled
    assert Policy.from_query("scheme=bearer").allowed_schemes(enabled) == ("bearer",)
    assert Policy.from_query("scheme=basic").allowed_schemes(("bearer",)) == ()


# -- claim paths and values --------------------------------------------------------------------


def test_claim_at_prefers_the_exact_name_then_walks_objects() -> None:
    claims = {"a.b": "top", "a": {"b": "nested", "c": {"d": 1}}, "s": "text"}
    assert claim_at(claims, "a.b") == "top"
    assert claim_at(claims, "a.c.d") == 1
    assert claim_at(claims, "a.x") is None
    assert claim_at(claims, "s.x") is None  # a string is no object to walk into
    assert claim_at(claims, "a.c.d.e") is None


@pytest.mark.parametrize(("value", "wanted", "matches"), [
    (True, "true", True), (False, "false", True), (True, "false", False),
    (False, "true", False), (0, "0", True), (0, "false", False), (1, "true", False),
    (42, "42", True), ("x", "x", True), (1.0, "1", False), (None, "None", False),
    ({"a": 1}, "a", False), ([False, "y"], "false", True), (["x"], "y", False),
])
def test_claim_values_match_by_their_json_spelling(value: Any, wanted: str,
                                                   matches: bool) -> None:
    assert claim_matches(value, frozenset({wanted})) is matches


# -- the log of invalid policies ---------------------------------------------------------------


def test_the_invalid_policy_log_remembers_1024_strings_by_default() -> None:
    seen = InvalidPolicyLog()
    assert all(seen.first_time(f"q={i}") for i in range(1024))
    assert not seen.first_time("q=0")
    assert seen.first_time("q=1024")  # q=0 forgotten to make room for it
    assert not seen.first_time("q=1")
    assert seen.first_time("q=0")


def test_the_invalid_policy_log_forgets_the_oldest_first() -> None:
    seen = InvalidPolicyLog(limit=2)
    assert seen.first_time("a") and seen.first_time("b")
    assert seen.first_time("c")  # forgets a, keeps b
    assert not seen.first_time("b")
    assert not seen.first_time("c")
