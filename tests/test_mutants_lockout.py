"""The brute-force rules (core/lockout.py) pinned through FailureTracker and Lockout on a
fake clock, one test per behaviour a mutant of them changed without the suite noticing
(``make mutate``): each threshold and expiry at its edge, each refusal's reason."""

from __future__ import annotations

import pytest

from authproxy.core.lockout import MAX_TRACKED, Attempt, FailureTracker, Lockout
from authproxy.errors import Unauthenticated

from .jwks_server import FakeClock


def tracker(clock: FakeClock, max_failures: int = 3, window: float = 60,
            ban_time: float = 300) -> FailureTracker:
    return FailureTracker(max_failures, window, ban_time, clock.monotonic)


def lockout(clock: FakeClock, max_failures: int = 3, known_address_ttl: float = 1000,
            **kwargs: object) -> Lockout:
    return Lockout(tracker(clock, max_failures), known_address_ttl, clock.monotonic,
                   **kwargs)  # type: ignore[arg-type]


def refused(call: object, *args: object) -> str:
    with pytest.raises(Unauthenticated) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.reason


# -- FailureTracker ------------------------------------------------------------------------------


def test_the_ban_comes_at_max_failures_not_before() -> None:
    clock = FakeClock()
    failures = tracker(clock)
    assert failures.record_failure("user:a", "", "client:192.0.2.1") == []
    assert failures.record_failure("user:a") == []
    assert failures.failures("user:a") == 2
    assert failures.failures("client:192.0.2.1") == 1
    assert failures.record_failure("user:a") == ["user:a"]
    assert failures.is_banned("user:a")
    assert failures.failures("user:a") == 0  # a ban forgets the failures that led to it
    assert not failures.is_banned("client:192.0.2.1")


def test_failures_are_counted_in_a_window_from_the_first() -> None:
    clock = FakeClock()
    failures = tracker(clock)
    failures.record_failure("user:a")
    clock.advance(59)
    failures.record_failure("user:a")  # counting in place: the window still ends at 60
    clock.advance(1)
    assert failures.failures("user:a") == 0


def test_a_ban_lasts_ban_time_to_the_second() -> None:
    clock = FakeClock()
    failures = tracker(clock)
    failures.ban("user:a")
    clock.advance(299)
    assert failures.ban_left("user:a") == 1
    assert failures.banning
    assert failures.bans() == [("user:a", 1)]
    assert failures.bans_in_force() == 1
    clock.advance(1)
    assert failures.bans() == []
    assert not failures.banning
    assert failures.ban_left("user:a") == 0
    assert not failures.is_banned("user:a")
    assert failures.bans_in_force() == 0


def test_banning_drops_an_ended_ban_of_each_kind() -> None:
    clock = FakeClock()
    failures = tracker(clock)
    failures.ban("user:a", 10)
    failures.ban("client:192.0.2.1", 20)
    clock.advance(10)
    assert failures.banning  # the address's ban still runs
    assert failures.bans() == [("client:192.0.2.1", 10)]
    clock.advance(10)
    assert not failures.banning


def test_a_shorter_ban_and_bans_off() -> None:
    clock = FakeClock()
    failures = tracker(clock)
    failures.ban("user:a", 10)
    assert failures.ban_left("user:a") == 10
    failures.ban("user:b", 1000)
    assert failures.ban_left("user:b") == 300  # never longer than ban_time
    failures.ban("user:c", 0)
    failures.ban("user:d", -1)
    failures.ban("")
    assert [key for key, _ in failures.bans()] == ["user:a", "user:b"]
    off = tracker(clock, ban_time=0)
    assert off.record_failure("user:a", "user:a", "user:a", "user:a") == []
    off.ban("user:a")
    assert not off.banning and not off.is_banned("user:a")


def test_a_renewed_ban_moves_to_the_end_and_forgets_the_failures() -> None:
    clock = FakeClock()
    failures = tracker(clock)
    failures.ban("user:a", 10)
    failures.ban("user:b", 100)
    failures.record_failure("user:a")
    failures.ban("user:a", 200)
    assert failures.failures("user:a") == 0
    assert failures.bans() == [("user:b", 100), ("user:a", 200)]


def test_each_kind_of_key_counts_apart() -> None:
    clock = FakeClock()
    failures = tracker(clock)
    failures.record_failure("user:x", "client:x")
    assert failures.failures("user:x") == 1
    assert failures.failures("client:x") == 1
    failures.ban("user:x")
    assert not failures.is_banned("client:x")


# -- Lockout -------------------------------------------------------------------------------------


def test_check_refuses_a_banned_address_and_a_banned_user_from_a_stranger() -> None:
    clock = FakeClock()
    rules = lockout(clock)
    rules.check("alice", "192.0.2.1")  # nothing banned: nothing refused
    rules.tracker.ban("client:192.0.2.9")
    assert refused(rules.check, "alice", "192.0.2.9") == "banned"
    rules.check("alice", "192.0.2.1")
    rules.check("alice", "")
    rules.tracker.ban("user:alice")
    assert refused(rules.check, "alice", "192.0.2.1") == "banned"
    assert rules.tracker.failures("client:192.0.2.1") == 1  # rule 3
    assert refused(rules.check, "alice", "") == "banned"
    rules.check("bob", "192.0.2.1")


def test_a_known_address_is_exempt_from_its_users_ban_only() -> None:
    clock = FakeClock()
    known: list[bytes] = []
    rules = lockout(clock, on_known=known.append)
    attempt = rules.attempt("alice", "192.0.2.1")
    assert (attempt.user_key, attempt.client_key) == ("user:alice", "client:192.0.2.1")
    rules.reserve(attempt)
    rules.settle(attempt, True)
    assert known == [rules.known_pair("alice", "192.0.2.1")]
    rules.tracker.ban("user:alice")
    rules.check("alice", "192.0.2.1")
    rules.reserve(rules.attempt("alice", "192.0.2.1"))
    assert refused(rules.check, "alice", "192.0.2.2") == "banned"
    rules.tracker.ban("client:192.0.2.1")
    assert refused(rules.check, "alice", "192.0.2.1") == "banned"
    assert refused(rules.reserve, rules.attempt("alice", "192.0.2.1")) == "banned"


@pytest.mark.parametrize("ttl", [1, 100])
def test_known_addresses_expire_and_can_be_off(ttl: int) -> None:
    clock = FakeClock()
    rules = lockout(clock, known_address_ttl=ttl)
    pair = rules.known_pair("alice", "192.0.2.1")
    rules.add_known(pair)
    assert rules.is_known(pair)
    clock.advance(ttl)
    assert not rules.is_known(pair)
    off = lockout(clock, known_address_ttl=0)
    off.add_known(pair)
    assert not off.is_known(pair)
    rules.add_known(b"")
    assert not rules.is_known(b"")


def test_the_known_pair_is_a_mac_of_user_and_address() -> None:
    clock = FakeClock()
    rules = lockout(clock, mac_key=b"k" * 32)
    pair = rules.known_pair("alice", "192.0.2.1")
    assert len(pair) == 16
    assert pair == lockout(clock, mac_key=b"k" * 32).known_pair("alice", "192.0.2.1")
    assert pair != lockout(clock, mac_key=b"j" * 32).known_pair("alice", "192.0.2.1")
    assert pair != rules.known_pair("alice", "192.0.2.2")
    assert pair != rules.known_pair("alice1", "92.0.2.1")  # the separator counts
    assert rules.known_pair("alice", "") == b""
    assert rules.attempt("alice", "").known_pair == b""
    assert rules.attempt("alice", "").client_key == ""
    # surrogateescape: a user-id decoded with it must not raise when it is MACed
    assert len(rules.known_pair("\udcff", "192.0.2.1")) == 16
    assert rules.known_pair("\udcff", "192.0.2.1") != rules.known_pair("\udcfe", "192.0.2.1")


def test_reserve_counts_running_verifications_up_to_the_limit() -> None:
    clock = FakeClock()
    rules = lockout(clock)
    attempts = [rules.attempt("alice", f"192.0.2.{i}") for i in range(3)]
    for attempt in attempts:
        rules.reserve(attempt)
        assert attempt.reserved is True
    assert refused(rules.reserve, rules.attempt("alice", "192.0.2.9")) == "attempt_limit"
    assert rules.tracker.failures("client:192.0.2.9") == 1  # the user's limit: rule 3
    rules.settle(attempts[0], None)  # not decided: frees its place, counts nothing
    assert attempts[0].reserved is False and attempts[0].settled
    assert rules.tracker.failures("user:alice") == 0
    rules.reserve(rules.attempt("alice", "192.0.2.8"))


def test_reserve_by_the_address_limit_counts_nothing_more() -> None:
    clock = FakeClock()
    rules = lockout(clock)
    for user in ("a", "b", "c"):
        rules.reserve(rules.attempt(user, "192.0.2.1"))
    assert refused(rules.reserve, rules.attempt("d", "192.0.2.1")) == "attempt_limit"
    assert rules.tracker.failures("client:192.0.2.1") == 0


def test_a_known_address_is_not_held_to_its_users_limit() -> None:
    clock = FakeClock()
    rules = lockout(clock, max_failures=2)
    rules.add_known(rules.known_pair("alice", "192.0.2.1"))
    rules.tracker.record_failure("user:alice")
    rules.reserve(rules.attempt("alice", "192.0.2.2"))  # 1 failure + 1 pending: the limit
    assert refused(rules.reserve, rules.attempt("alice", "192.0.2.3")) == "attempt_limit"
    rules.reserve(rules.attempt("alice", "192.0.2.1"))


def test_settle_counts_a_failure_on_both_keys_once() -> None:
    clock = FakeClock()
    rules = lockout(clock)
    attempt = rules.attempt("alice", "192.0.2.1")
    rules.reserve(attempt)
    rules.settle(attempt, False)
    rules.settle(attempt, False)
    assert rules.tracker.failures("user:alice") == 1
    assert rules.tracker.failures("client:192.0.2.1") == 1
    # the reservation is gone: two more reservations fit under the limit of 3
    rules.reserve(rules.attempt("alice", "192.0.2.2"))
    rules.reserve(rules.attempt("alice", "192.0.2.3"))


def test_settle_releases_one_reservation_of_several() -> None:
    clock = FakeClock()
    rules = lockout(clock)
    first, second = rules.attempt("alice", "192.0.2.1"), rules.attempt("alice", "192.0.2.1")
    rules.reserve(first)
    rules.reserve(second)
    rules.settle(first, None)
    rules.reserve(rules.attempt("alice", "192.0.2.1"))
    rules.reserve(rules.attempt("alice", "192.0.2.1"))  # 3 pending of 3
    assert refused(rules.reserve, rules.attempt("alice", "192.0.2.1")) == "attempt_limit"


def test_an_unreserved_attempt_settles_without_touching_the_reservations() -> None:
    clock = FakeClock()
    rules = lockout(clock)
    for i in range(3):
        rules.reserve(rules.attempt("alice", f"192.0.2.{i}"))
    joined = Attempt("user:alice", "client:192.0.2.1", b"")  # joined a verification
    rules.settle(joined, False)
    assert rules.tracker.failures("user:alice") == 1
    assert refused(rules.reserve, rules.attempt("alice", "192.0.2.7")) == "attempt_limit"


def test_a_success_without_an_address_knows_nothing() -> None:
    clock = FakeClock()
    known: list[bytes] = []
    rules = lockout(clock, on_known=known.append)
    attempt = rules.attempt("alice", "")
    rules.reserve(attempt)
    rules.settle(attempt, True)
    assert known == []
    assert rules.tracker.failures("user:alice") == 0


def test_a_ban_in_its_last_second_is_in_force_and_ended_at_its_end() -> None:
    clock = FakeClock()
    failures = tracker(clock)
    failures.ban("user:a")
    clock.advance(299.5)
    assert failures.is_banned("user:a")
    clock.advance(0.5)
    assert failures.ban_left("user:a") == 0  # asked directly, before banning tidies up
    assert not failures.is_banned("user:a")


def test_an_ended_ban_is_not_counted_in_force() -> None:
    clock = FakeClock()
    failures = tracker(clock)
    failures.ban("user:a", 10)
    clock.advance(10)
    assert failures.bans_in_force() == 0


def test_short_bans_are_bans_and_none_forgets_nothing() -> None:
    clock = FakeClock()
    failures = tracker(clock, ban_time=1)
    assert failures.record_failure("user:a", "user:a", "user:a") == ["user:a"]
    failures.ban("user:b", 1)
    assert failures.is_banned("user:b")
    failures.record_failure("user:c")
    failures.ban("user:c", 0)  # no ban: the failures stay counted
    assert failures.failures("user:c") == 1


def test_the_ban_table_holds_max_tracked_bans_in_force() -> None:
    clock = FakeClock()
    failures = tracker(clock)
    for i in range(MAX_TRACKED):
        failures.ban(f"client:{i}")
    assert failures.bans_in_force() == MAX_TRACKED
    failures.ban("client:one-more")
    assert failures.bans_in_force() == MAX_TRACKED
    assert not failures.is_banned("client:0")  # the oldest went


def test_a_banned_user_without_an_address_bans_no_address_key() -> None:
    clock = FakeClock()
    rules = lockout(clock)
    rules.tracker.ban("user:alice")
    for _ in range(5):
        assert refused(rules.check, "alice", "") == "banned"
    assert [key for key, _ in rules.tracker.bans()] == ["user:alice"]
    rules.check("bob", "")


def test_reserve_refuses_a_banned_users_stranger_as_banned() -> None:
    clock = FakeClock()
    rules = lockout(clock)
    rules.tracker.ban("user:alice")
    assert refused(rules.reserve, rules.attempt("alice", "192.0.2.1")) == "banned"
    assert rules.tracker.failures("client:192.0.2.1") == 1


def test_a_known_address_is_still_held_to_its_own_limit() -> None:
    clock = FakeClock()
    rules = lockout(clock)
    rules.add_known(rules.known_pair("alice", "192.0.2.1"))
    for user in ("a", "b", "c"):
        rules.reserve(rules.attempt(user, "192.0.2.1"))
    assert refused(rules.reserve, rules.attempt("alice", "192.0.2.1")) == "attempt_limit"


def test_reservations_are_bounded_and_settled_ones_freed() -> None:
    clock = FakeClock()
    rules = lockout(clock)
    for i in range(MAX_TRACKED // 2):  # two keys each
        attempt = Attempt(f"user:u{i}", f"client:{i}", b"")
        rules.reserve(attempt)
        rules.settle(attempt, None)
    held = [Attempt(f"user:v{i}", f"client:v{i}", b"") for i in range(MAX_TRACKED // 2)]
    for attempt in held:
        rules.reserve(attempt)
    assert refused(rules.reserve, Attempt("user:w", "client:w", b"")) == "overloaded"
    rules.settle(held[0], None)
    rules.reserve(Attempt("user:w", "", b""))
