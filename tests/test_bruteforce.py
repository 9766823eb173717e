"""SPEC §8.1: brute-force protection that an attacker cannot turn against the service.

Attacked as an attacker would: through a real nginx with the repository's snippets, clients
on addresses of their own (any address of 127.0.0.0/8 is a loopback address, so nginx's
$remote_addr tells them apart), against a real ``authproxy serve``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import ipaddress
import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from multidict import CIMultiDict, CIMultiDictProxy
from passlib.hash import sha512_crypt

from authproxy.config import Config
from authproxy.core import lockout as lockout_module
from authproxy.core.lockout import Attempt, FailureTracker, Lockout
from authproxy.core.origin import Origin, address_key
from authproxy.htpasswd.users import UserTable, cost_class, parse_hash
from authproxy.http.app import USER_STORE, create_app

from .appclient import ServeApp
from .conftest import APACHE_APR1, bcrypt_hash, toml_text, write_users
from .jwks_server import FakeClock
from .servers import (
    NGINX_DIR,
    PASSWORDS,
    Authproxy,
    EchoUpstream,
    ProtectedSite,
    basic_auth,
    free_port,
    http_request,
    protected_site_conf,
    render_upstream,
    start_authproxy,
    start_nginx,
    start_protected_site,
    wait_until,
)

MAX_FAILURES = 3
OWNER = "127.0.0.2"  # alice's own address


def authproxy_config(users: Path, **basic: Any) -> str:
    return toml_text({
        "log": {"format": "json"},
        "basic": {"users_file": str(users), "max_failures": MAX_FAILURES,
                  "failure_window": 600, "ban_time": 600, **basic},
    })


@contextlib.contextmanager
def guarded_site(
    tmp_path: Path, echo: EchoUpstream, cost: int = 4, **basic: Any
) -> Iterator[tuple[Authproxy, ProtectedSite]]:
    users = write_users(tmp_path / "users", cost, **PASSWORDS)
    with (start_authproxy(authproxy_config(users, **basic), [f"127.0.0.1:{free_port()}"],
                          tmp_path / "authproxy") as proxy,
          start_protected_site(proxy.tcp_address, echo.address, tmp_path / "nginx") as site):
        yield proxy, site


def through(site: ProtectedSite, user: str, password: str | None, source: str) -> int:
    """The status of GET / through nginx for ``user`` (``password``: None for the right one)
    from client address ``source``."""
    return http_request(f"{site.base_url}/", headers=[basic_auth(user, password)],
                        source=source).status


def scrape(proxy: Authproxy, name: str) -> float:
    answer = http_request(f"http://{proxy.tcp_address}/metrics")
    return sum(float(line.rpartition(" ")[2]) for line in answer.body.decode().splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def hashes(proxy: Authproxy) -> float:
    return scrape(proxy, "authproxy_password_hash_seconds_count")


def decisions(proxy: Authproxy, count: int = 0) -> list[dict[str, Any]]:
    """The decision log lines, once there are at least ``count`` (they are written in
    batches, a moment late)."""
    lines: list[dict[str, Any]] = []

    def logged() -> bool:
        lines.clear()
        for line in proxy.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == "decision":
                    lines.append(record)
        return len(lines) >= count

    wait_until(logged, f"{count} decision lines", deadline=5.0)
    return lines


# -- rule 1: a ban is never a cheaper oracle than no ban -----------------------------------------


def test_a_banned_address_cannot_try_a_remembered_password(
    tmp_path: Path, echo_upstream: EchoUpstream
) -> None:
    """Before: a banned address still got answers from the remembered passwords, at no hash
    and no count: 40,000 guesses in 3.4 s, and the right one got 200."""
    with guarded_site(tmp_path, echo_upstream) as (proxy, site):
        assert through(site, "alice", None, OWNER) == 200  # alice's password is remembered
        attacker = "127.0.0.3"
        for i in range(MAX_FAILURES):
            assert through(site, "mallory", f"guess-{i}", attacker) == 401
        before = hashes(proxy)
        assert through(site, "alice", None, attacker) == 401
        assert through(site, "alice", "wrong", attacker) == 401
        assert hashes(proxy) == before  # refused before any hash, or any lookup
        assert [d["reason"] for d in decisions(proxy, 6)[-2:]] == ["banned", "banned"]
        assert through(site, "alice", None, OWNER) == 200


@pytest.mark.parametrize("cache_ttl", [300, 0])
def test_a_user_banned_by_strangers_works_from_its_known_address_only(
    tmp_path: Path, echo_upstream: EchoUpstream, cache_ttl: int
) -> None:
    """Before: with passwords remembered, a stranger could still try the banned user's
    remembered password (200 when right); without, the owner was locked out (rule 4)."""
    with guarded_site(tmp_path, echo_upstream, cache_ttl=cache_ttl) as (proxy, site):
        assert through(site, "alice", None, OWNER) == 200
        for attacker in ("127.0.0.10", "127.0.0.11"):  # distributed: no address reaches 3
            for i in range(MAX_FAILURES - 1):
                assert through(site, "alice", f"{attacker}-{i}", attacker) == 401
        assert through(site, "alice", None, "127.0.0.12") == 401  # a stranger: banned
        assert decisions(proxy, 6)[-1]["reason"] == "banned"
        assert through(site, "alice", None, OWNER) == 200  # the owner: known
        assert through(site, "alice", "wrong", OWNER) == 401  # still a password check there


def test_refusals_for_a_banned_user_count_against_the_address(
    tmp_path: Path, echo_upstream: EchoUpstream
) -> None:
    """Rule 3: a distributed guesser's addresses get banned in turn."""
    with guarded_site(tmp_path, echo_upstream) as (proxy, site):
        first, second = "127.0.0.20", "127.0.0.21"
        for attacker in (first, second):
            for i in range(MAX_FAILURES - 1):
                assert through(site, "alice", f"{attacker}-{i}", attacker) == 401
        # alice is banned; first has 2 failures of its own. One refusal more bans it.
        assert through(site, "alice", "more", first) == 401
        assert through(site, "bob", None, first) == 401
        assert decisions(proxy, 6)[-1]["reason"] == "banned"
        assert through(site, "bob", None, "127.0.0.22") == 200


# -- rule 2: attempts reserved on arrival --------------------------------------------------------


def test_a_concurrent_burst_gets_no_more_hashes_than_max_failures(
    tmp_path: Path, echo_upstream: EchoUpstream
) -> None:
    """Before: the ban was checked on arrival and counted after the hash, so 100 concurrent
    guesses from one address were all hashed."""
    burst = 40
    with (guarded_site(tmp_path, echo_upstream, cost=10) as (proxy, site),
          ThreadPoolExecutor(burst) as pool):
        before = hashes(proxy)
        statuses = list(pool.map(lambda i: through(site, "alice", f"guess-{i}", "127.0.0.30"),
                                 range(burst)))
        assert statuses == [401] * burst
        assert hashes(proxy) - before <= MAX_FAILURES
        reasons = {d["reason"] for d in decisions(proxy, burst)}
        assert reasons <= {"bad_password", "attempt_limit", "banned"}, reasons
        # the owner, from elsewhere: not held up or refused by the stranger's burst
        assert through(site, "bob", None, "127.0.0.31") == 200


# -- rules 5 and 6: the client address is never the client's choice, nor everyone's ------------


def unix_request(path: str, headers: list[tuple[str, str]]) -> int:
    connection = http.client.HTTPConnection("localhost", timeout=5)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    connection.sock = sock
    try:
        connection.request("GET", "/", headers=dict(headers))
        return connection.getresponse().status
    finally:
        connection.close()


def test_nginx_on_a_unix_socket_lets_no_client_choose_its_address(
    tmp_path: Path, echo_upstream: EchoUpstream
) -> None:
    """nginx listening on a unix socket sends ``X-Real-IP: unix:``. Before: authproxy then
    believed the client's own X-Forwarded-For, or, without one, made nginx's address the key,
    so that guesses for unknown users locked out the whole site."""
    users = write_users(tmp_path / "users", **PASSWORDS)
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    socket_path = str(tmp_path / "nginx.sock")
    with start_authproxy(authproxy_config(users), [f"127.0.0.1:{free_port()}"],
                         tmp_path / "authproxy") as proxy:
        upstream = prefix / "authproxy-upstream.conf"
        upstream.write_text(render_upstream(proxy.tcp_address))
        port = free_port()
        conf = protected_site_conf(port, upstream, echo_upstream.address).replace(
            f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{port};\n        listen unix:{socket_path};")
        assert NGINX_DIR.name in conf and socket_path in conf
        with start_nginx(conf, prefix, port):
            for i in range(3 * MAX_FAILURES):
                chosen = f"203.0.113.{i}"
                status = unix_request(socket_path, [basic_auth("alice", f"guess-{i}"),
                                                    ("X-Forwarded-For", chosen)])
                assert status == 401
            # nginx itself is never banned: alice's user key is, so bob must pass
            assert unix_request(socket_path, [basic_auth("bob")]) == 200
        logged = {d["client"] for d in decisions(proxy, 3 * MAX_FAILURES + 1)}
        assert not any(client.startswith("203.0.113.") for client in logged), logged
        # and straight to authproxy, as nginx on a unix socket would ask: the same
        direct = http_request(f"http://{proxy.tcp_address}/auth", headers=[
            ("X-Real-IP", "unix:"), ("X-Forwarded-For", "198.51.100.7"), basic_auth("bob", "x")])
        assert direct.status == 401
        assert decisions(proxy, 3 * MAX_FAILURES + 2)[-1]["client"] != "198.51.100.7"


@pytest.mark.parametrize("forwarded", [[], [("X-Real-IP", "127.0.0.1")]],
                         ids=["nothing", "a-trusted-proxy"])
def test_a_proxy_that_sends_no_client_address_is_never_banned(
    tmp_path: Path, forwarded: list[tuple[str, str]]
) -> None:
    """A trusted proxy that forwards no address (no X-Real-IP, no X-Forwarded-For), or names a
    trusted proxy as the client (a TLS terminator on loopback in front of nginx): before,
    that address was the key, so a few guesses locked everyone out. Now only user keys
    count, and a warning (at most one a minute) tells the operator."""
    users = write_users(tmp_path / "users", **PASSWORDS)
    with start_authproxy(authproxy_config(users), [f"127.0.0.1:{free_port()}"],
                         tmp_path) as proxy:
        url = f"http://{proxy.tcp_address}/auth"
        for i in range(3 * MAX_FAILURES):
            headers = [basic_auth("alice", f"guess-{i}"), *forwarded]
            assert http_request(url, headers=headers).status == 401
        assert http_request(url, headers=[basic_auth("bob"), *forwarded]).status == 200
        warnings = [line for line in proxy.log_text().splitlines()
                    if '"event":"no_client_address"' in line]
        assert len(warnings) == 1, warnings


# -- bans belong to the service: a restarted worker gets them before it serves -----------------


def worker_pids(proxy: Authproxy) -> set[int]:
    return {json.loads(line)["pid"] for line in proxy.log_text().splitlines()
            if '"event":"start"' in line and '"worker"' in line}


def test_bans_and_known_addresses_survive_a_restart_of_every_worker(tmp_path: Path) -> None:
    """Before: after both workers were SIGKILLed, a banned user got 200 again."""
    users = write_users(tmp_path / "users", **PASSWORDS)
    config = toml_text({
        "server": {"workers": 2}, "log": {"format": "json"},
        "basic": {"users_file": str(users), "max_failures": MAX_FAILURES, "cache_ttl": 0,
                  "failure_window": 600, "ban_time": 600},
    })
    with start_authproxy(config, [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        url = f"http://{proxy.tcp_address}/auth"
        wait_until(lambda: len(worker_pids(proxy)) == 2, "two workers serving", proxy.process)

        def status(user: str, password: str | None, client: str) -> int:
            return http_request(url, headers=[basic_auth(user, password),
                                              ("X-Real-IP", client)]).status

        assert status("alice", None, "192.0.2.1") == 200  # alice's own address, now known
        for i in range(MAX_FAILURES):  # strangers ban alice
            assert status("alice", f"guess-{i}", f"198.51.100.{i}") == 401
        wait_until(lambda: status("alice", None, "198.51.100.99") == 401
                   and status("alice", None, "198.51.100.98") == 401,
                   "alice banned on the workers")
        old = worker_pids(proxy)
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: len(worker_pids(proxy) - old) == 2, "two new workers", proxy.process)
        new = worker_pids(proxy) - old
        answers = [(status("alice", None, f"203.0.113.{i}"), status("alice", None, "192.0.2.1"))
                   for i in range(12)]
        assert answers == [(401, 200)] * 12
        # both new workers answered (their lines are written a moment late)
        wait_until(lambda: {d["pid"] for d in decisions(proxy)} >= new,
                   "decisions by both new workers")


# -- the pieces, on a fake clock --------------------------------------------------------------


def test_known_addresses_expire_and_reservations_are_released() -> None:
    clock = FakeClock()
    lockout = Lockout(FailureTracker(2, window=60, ban_time=300, clock=clock.monotonic),
                      known_address_ttl=100, clock=clock.monotonic)
    lockout.check("alice", "192.0.2.1")
    attempt = lockout.attempt("alice", "192.0.2.1")
    lockout.reserve(attempt)
    lockout.settle(attempt, True)
    assert lockout.is_known(lockout.known_pair("alice", "192.0.2.1"))
    lockout.tracker.ban("user:alice")
    lockout.check("alice", "192.0.2.1")  # known: not refused
    with pytest.raises(Exception, match="banned"):
        lockout.check("alice", "192.0.2.2")
    clock.advance(101)
    with pytest.raises(Exception, match="banned"):  # no longer known
        lockout.check("alice", "192.0.2.1")
    # two reservations fill max_failures for bob; settling one frees its place
    first, second, third = (lockout.attempt("bob", f"198.51.100.{i}") for i in range(3))
    lockout.reserve(first)
    lockout.reserve(second)
    with pytest.raises(Exception, match="attempt_limit"):
        lockout.reserve(third)
    lockout.settle(first, None)  # undecided (shutdown): no failure counted
    lockout.reserve(third)
    assert lockout.tracker.failures("user:bob") == 0


def test_a_settled_attempt_is_released_once() -> None:
    clock = FakeClock()
    lockout = Lockout(FailureTracker(5, window=60, ban_time=300, clock=clock.monotonic),
                      known_address_ttl=0, clock=clock.monotonic)
    attempt = Attempt("user:bob", "client:192.0.2.1", b"")
    lockout.reserve(attempt)
    lockout.settle(attempt, False)
    lockout.settle(attempt, False)  # a second settle does nothing
    assert lockout.tracker.failures("user:bob") == 1
    for i in range(4):  # 1 failure and 4 reservations fill max_failures
        lockout.reserve(Attempt("user:bob", f"client:192.0.2.{i + 2}", b""))
    with pytest.raises(Exception, match="attempt_limit"):
        lockout.reserve(Attempt("user:bob", "client:192.0.2.9", b""))


@pytest.mark.parametrize(("address", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("unix:", ""),
    ("x", ""),
    ("", ""),
])
def test_client_address_keys(address: str, key: str) -> None:
    assert address_key(address) == key


# -- rule 7: an unknown user and a wrong password look alike --------------------------------------


async def test_a_wrong_password_for_a_cheap_hash_takes_as_long_as_the_costliest(
    serve: ServeApp, make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """Before: a wrong password for an apr1 user answered in 1.5 ms, an unknown user (a
    dummy bcrypt) in 60 ms, an argon2id user in 104 ms: the time told who exists."""
    users = tmp_path / "users"
    users.write_text(f"apr:{APACHE_APR1}\nargon:{PasswordHasher().hash('argon-pw')}\n")
    client = await serve(create_app(make_config({"basic": {"users_file": str(users)}})))
    costliest = max(client.app[USER_STORE].snapshot.table.verification_costs.values())
    assert costliest > 0.01  # an argon2id verification: otherwise this proves nothing
    for user in ("apr", "nobody"):
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await client.get("/auth", headers={"Authorization": basic_header(user, "x")})
        assert response.status == 401
        assert loop.time() - started >= costliest
    # one right password: the cheap hash still answers at once when it matches
    ok = await client.get("/auth", headers={"Authorization": basic_header("apr", "myPassword")})
    assert ok.status == 200
    exposition = await (await client.get("/metrics")).text()
    assert 'reason="bad_credentials"' in exposition
    assert "unknown_user" not in exposition and "bad_password" not in exposition
    assert 'authproxy_password_hash_seconds_count{' not in exposition  # no scheme label


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_a_failure_holds_a_hash_thread_as_long_as_the_costliest_and_says_no_less(
    serve: ServeApp, make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """The floor is kept in the hash thread, not on the event loop: concurrent guesses for a
    cheap hash queue as a costly hash's would. And /metrics observes the time held, so its
    buckets do not tell an apr1 user (1 ms) from an unknown one."""
    users = tmp_path / "users"
    users.write_text(f"apr:{APACHE_APR1}\nargon:{PasswordHasher().hash('argon-pw')}\n")
    client = await serve(create_app(make_config({"basic": {"users_file": str(users)}})))
    costliest = max(client.app[USER_STORE].snapshot.table.verification_costs.values())
    for i in range(2):
        response = await client.get("/auth", headers={"Authorization": basic_header("apr", f"x{i}")})
        assert response.status == 401
    exposition = await (await client.get("/metrics")).text()
    samples = dict(line.rsplit(" ", 1) for line in exposition.splitlines()
                   if line.startswith("authproxy_password_hash_seconds_"))
    assert float(samples["authproxy_password_hash_seconds_count"]) == 2
    assert float(samples["authproxy_password_hash_seconds_sum"]) >= 2 * costliest
    assert float(samples['authproxy_password_hash_seconds_bucket{le="0.005"}']) == 0


def test_sha_crypt_is_timed_at_load_for_what_it_costs(tmp_path: Path) -> None:
    """A NUL byte in the probe password made passlib refuse at once: $5$/$6$ users were timed
    at ~0 s, so the floor was wrong until one was first verified."""
    users = tmp_path / "users"
    six = sha512_crypt.using(rounds=200_000).hash("pw")
    # bcrypt the most common class, so the dummy is bcrypt's and SHA-crypt's class is probed
    users.write_text(f"six:{six}\nb1:{bcrypt_hash('pw')}\nb2:{bcrypt_hash('pw')}\n")
    table = UserTable.load(users)
    assert table.verification_costs[cost_class(parse_hash(six))] > 0.02  # ~0.1-0.3 s


@pytest.mark.parametrize("text", [
    "$2y$18$" + bcrypt_hash("pw", cost=4)[len("$2y$04$"):],
    "$6$rounds=20000000$saltsalt$" + "a" * 86,
    # found by the htpasswd fuzz target: 4 TiB a verification passed as well formed
    "$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHQ$" + "A" * 22,
    "$argon2id$v=19$m=65536,t=33,p=1$c2FsdHNhbHQ$" + "A" * 22,
])
def test_a_hash_too_costly_to_verify_per_request_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="too costly"):
        parse_hash(text)


def test_cheap_address_bans_never_evict_a_users(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule 3 bans an address for a few refused requests, no hash: with one table for both
    kinds, 100,000 fresh /64s evicted the oldest ban, a targeted user's."""
    monkeypatch.setattr(lockout_module, "MAX_TRACKED", 10)
    clock = FakeClock()
    tracker = FailureTracker(3, window=60, ban_time=300, clock=clock.monotonic)
    tracker.ban("user:alice")
    for i in range(100):
        tracker.ban(f"client:2001:db8:{i:x}::/64")
    assert tracker.is_banned("user:alice")
    assert tracker.bans_in_force() == 11


def test_bans_end_and_a_zero_second_ban_is_none() -> None:
    clock = FakeClock()
    tracker = FailureTracker(3, window=60, ban_time=300, clock=clock.monotonic)
    tracker.ban("client:192.0.2.1", 0)  # one that ended on its way from the supervisor
    assert not tracker.banning
    tracker.ban("client:192.0.2.2")
    assert tracker.banning
    clock.advance(301)
    assert not tracker.banning  # the hot path stops looking soon after the last ban ends


def test_an_address_too_long_to_be_one_is_no_client_address() -> None:
    """ipaddress accepts an IPv6 scope id of any length; memoized, each would be pinned."""
    class Request:
        remote = "127.0.0.1"
        headers = CIMultiDictProxy(CIMultiDict({"X-Real-IP": "2001:db8::1%" + "x" * 100_000}))

    origin = Origin(trusted=(ipaddress.ip_network("127.0.0.1/32"),), allow_preflight=False)
    assert origin.client(Request()) == ("127.0.0.1", "")  # type: ignore[arg-type]


def test_a_ban_that_begins_while_a_decision_waits_refuses_its_verification() -> None:
    """A decision checks bans when it begins and reserves when its hash starts, possibly a
    moment later. A ban landing in between forgets the failures that led to it: before,
    the reservation then saw none, and an eleventh hash ran for a banned user."""
    clock = FakeClock()
    lockout = Lockout(FailureTracker(2, window=60, ban_time=300, clock=clock.monotonic),
                      known_address_ttl=1000, clock=clock.monotonic)
    lockout.check("alice", "192.0.2.1")  # not banned yet: the decision goes on
    waiting = lockout.attempt("alice", "192.0.2.1")
    lockout.fail("user:alice")
    lockout.fail("user:alice")  # meanwhile, alice is banned
    with pytest.raises(Exception, match="banned"):
        lockout.reserve(waiting)
    assert lockout.tracker.failures("client:192.0.2.1") == 1  # rule 3 counted it
