"""Property tests of claim reading (fuzz target ``tests/fuzz/claims.py``)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from authproxy.jwt import claims as claims_module
from tests.fuzz import claims
from tests.fuzz.claims import ISSUER, NOW
from tests.planted import assert_caught

# NumericDates around the clock and its leeway (0 or 60 s), and values that are no date.
near_now = st.integers(-200, 200).map(lambda d: NOW + d) | st.floats(NOW - 120, NOW + 120)
dates = (near_now | st.sampled_from([True, False, None, "1700000300", 10**30, -1, 0,
                                     253_402_300_799, 253_402_300_800, 1e308, float("inf"),
                                     float("nan"), [NOW + 300], {"t": NOW + 300}]))
odd_text = st.text(st.sampled_from("ab ,\t\x00\x1f\x7f\u00a0\u2028é\"\\"), max_size=6)
names = st.sampled_from(["alice", "", "bob"]) | odd_text
string_lists = st.lists(names, max_size=4)
present = st.booleans()


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """A payload a verifier would hand to the claim policy: the usual claims, each one
    present or absent, of the right type or not, near or past its boundary."""
    claims_: dict[str, Any] = {}
    choices: dict[str, st.SearchStrategy[Any]] = {
        "exp": dates, "nbf": dates, "iat": dates,
        "iss": st.sampled_from([ISSUER, ISSUER.rstrip("/"), "https://evil.test/", None, 1]),
        "aud": st.sampled_from(["api", "web", "other", ["x", "web"], ["x"], [], 7, ["api", 7]]),
        "sub": names | st.integers(), "email": names | st.none(),
        "scope": odd_text | st.sampled_from(["read write", "read  write", "read\u00a0admin"])
        | string_lists,
        "scp": string_lists | odd_text | st.integers(),
        "groups": string_lists | names | st.integers(),
    }
    for name, values in choices.items():
        weight = 0.9 if name in ("exp", "aud", "iss", "sub", "email") else 0.5
        if draw(st.floats(0, 1)) < weight:
            claims_[name] = draw(values)
    return json.dumps(claims_).encode()


@given(st.binary(max_size=200))
def test_raw_bytes(data: bytes) -> None:
    claims.check(data)


@given(payloads())
@example(json.dumps({"exp": NOW + 30, "aud": "api", "iss": ISSUER, "sub": "a", "email": "a",
                     "nbf": NOW + 61}).encode())  # nbf just past the leeway
@example(json.dumps({"exp": NOW - 30, "aud": "api", "iss": ISSUER, "sub": "a",
                     "email": "a"}).encode())  # expired, within the 60 s leeway
@example(json.dumps({"exp": NOW + 30, "aud": "api", "iss": ISSUER, "sub": 0,
                     "email": "a"}).encode())  # a sub that is no string, the user from email
def test_payloads(payload: bytes) -> None:
    claims.check(payload)


@given(st.fixed_dictionaries({"exp": dates, "nbf": dates, "aud": st.just("api"),
                              "iss": st.just(ISSUER), "sub": st.just("alice"),
                              "email": st.just("alice")}))
def test_dates(payload: dict[str, Any]) -> None:
    claims.check(json.dumps(payload).encode())


def test_the_target_admits_valid_claims() -> None:
    """The properties hold for identities, not only vacuously for refusals."""
    payload = {"exp": NOW + 300, "aud": ["api"], "iss": ISSUER, "sub": "alice",
               "email": "alice@example.test", "scope": "read write", "groups": ["staff"]}
    for config in claims.CONFIGS:
        policy = claims_module.ClaimPolicy(config, wall_clock=lambda: NOW)
        assert policy.identity(json.dumps(payload).encode()).scopes == {"read", "write"}
    claims.check(json.dumps(payload).encode())


def test_a_planted_forgotten_nbf_is_caught(monkeypatch: Any) -> None:
    real = claims_module._numeric_date

    def without_nbf(claims_: dict[str, Any], name: str) -> float | None:
        return None if name == "nbf" else real(claims_, name)

    monkeypatch.setattr(claims_module, "_numeric_date", without_nbf)
    assert_caught(test_dates)


def test_a_planted_leeway_of_the_wrong_sign_is_caught(monkeypatch: Any) -> None:
    real = claims_module.ClaimPolicy.__init__

    def leeway_subtracted(self: Any, config: Any, wall_clock: Any) -> None:
        real(self, dataclasses.replace(config, leeway=-config.leeway), wall_clock)

    monkeypatch.setattr(claims_module.ClaimPolicy, "__init__", leeway_subtracted)
    assert_caught(test_dates)
