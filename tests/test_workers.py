"""server.workers > 1 with the real ``authproxy serve``: every worker answers, SIGHUP reaches
each, a dead worker is replaced (and workers outlive no supervisor), the JWKS endpoint sees
one schedule, /metrics counts the whole service, a brute-force ban holds on every worker; and
workers = 1 stays one process.

Workers are told apart by the ``pid`` field of their log lines; the supervisor names each
worker it starts (``worker_start``, ``worker_pid``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import itertools
import json
import logging
import os
import re
import signal
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from authproxy.cluster.banshare import MAX_KEY, BanCoordinator
from authproxy.cluster.ipc import MasterLink
from authproxy.cluster.keyshare import STATE_FILE, KeyPublisher, SupervisorFetcher
from authproxy.cluster.protocol import Ban, Failure, Message, RefreshRequest
from authproxy.config import BasicConfig, Config, JwtConfig
from authproxy.core.lockout import FailureTracker
from authproxy.jwt.keyring import KeyRing
from authproxy.jwt.refresher import MISS_REFRESH_INTERVAL
from authproxy.listen import bind, parse_listen
from authproxy.obs.metrics import Metrics
from authproxy.workers.supervisor import Supervisor

from .conftest import bcrypt_hash, toml_text, write_users
from .jwks_server import AUDIENCE, K1, K2, JwksServer, basic, jwt_section, mint, signing_key
from .servers import Authproxy, free_port, start_authproxy, wait_until

pytest_plugins = ["tests.jwks_fixtures"]

PASSWORD = "Corr3ct-horse"
K3 = signing_key("RS256", "k3")
DEADLINE = 15.0


# -- helpers, also used by test_lifecycle ------------------------------------------------------


def config_text(users: Path, workers: int, **sections: dict[str, Any]) -> str:
    """A config with Basic users from ``users``, ``workers`` processes, JSON logs, no bans
    (these tests send many wrong passwords from one address), plus ``sections``."""
    basic_section = {"users_file": str(users), "max_failures": 100_000,
                     **sections.pop("basic", {})}
    server_section = {"workers": workers, **sections.pop("server", {})}
    return toml_text({"server": server_section, "log": {"format": "json"},
                      "basic": basic_section, **sections})


def events(proxy: Authproxy, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines of the service (supervisor and workers), optionally one event's."""
    lines = []
    for line in proxy.log_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and (event is None or record.get("event") == event):
                lines.append(record)
    return lines


def serving_workers(proxy: Authproxy, count: int) -> set[int]:
    """The pids of ``count`` workers, once each says it is serving."""
    def pids() -> set[int]:
        return {e["pid"] for e in events(proxy, "start") if "worker" in e}

    wait_until(lambda: len(pids()) >= count, f"{count} workers serving", proxy.process, DEADLINE)
    return pids()


def get(address: str, path: str, headers: dict[str, str] | None = None,
        method: str = "GET", timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection (so that any worker may take it): status, body."""
    if address.startswith("unix:"):
        connection: http.client.HTTPConnection = _UnixConnection(address[len("unix:"):], timeout)
    else:
        host, _, port = address.rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def metric(text: str, name: str) -> float:
    """The sum of every sample of ``name`` (all label sets) in a text exposition."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


def scrape(proxy: Authproxy, name: str) -> float:
    status, body = get(proxy.tcp_address, "/metrics")
    assert status == 200
    return metric(body.decode(), name)


def until(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    wait_until(check, what, deadline=deadline)


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


@contextlib.asynccontextmanager
async def running(config: str, listen: list[str], directory: Path) -> AsyncIterator[Authproxy]:
    """start_authproxy from async tests: its blocking waits run in a thread, so the JWKS
    server on this event loop keeps answering."""
    manager = start_authproxy(config, listen, directory)
    proxy = await asyncio.to_thread(manager.__enter__)
    try:
        yield proxy
    except BaseException:
        if not await asyncio.to_thread(manager.__exit__, *sys.exc_info()):
            raise
    else:
        await asyncio.to_thread(manager.__exit__, None, None, None)


# -- every worker serves -----------------------------------------------------------------------


def test_every_worker_answers_on_tcp_and_unix_and_reloads_on_sighup(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users", alice=PASSWORD)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [K1.public_jwk]}))
    tcp, unix = f"127.0.0.1:{free_port()}", f"unix:{tmp_path / 'authproxy.sock'}"
    config = config_text(users, 2, jwt={"jwks_file": str(jwks_file),
                                        "jwks_require_audience": [AUDIENCE]})
    with start_authproxy(config, [tcp, unix], tmp_path / "run") as proxy:
        assert stat.S_IMODE(os.stat(unix[len("unix:"):]).st_mode) == 0o666  # as one process
        workers = serving_workers(proxy, 2)
        assert proxy.process.pid not in workers
        assert {e["worker_pid"] for e in events(proxy, "worker_start")} == workers

        def answered_by(uri: str) -> set[int]:
            return {e["pid"] for e in events(proxy, "decision") if e.get("uri") == uri}

        for address, uri in ((tcp, "/over-tcp"), (unix, "/over-unix")):
            def all_answer(address: str = address, uri: str = uri) -> bool:
                headers = {**basic("alice", PASSWORD), "X-Original-URI": uri}
                assert get(address, "/auth", headers)[0] == 200
                return answered_by(uri) >= workers
            until(all_answer, f"every worker answering on {address}")
            assert answered_by(uri) == workers

        # A new signing key in the file: only a SIGHUP makes a worker read it again.
        jwks_file.write_text(json.dumps({"keys": [K2.public_jwk]}))
        token = {"Authorization": f"Bearer {mint(K2)}"}
        assert get(tcp, "/auth", token)[0] == 401
        proxy.process.send_signal(signal.SIGHUP)

        def reloaded(event: str) -> set[int]:
            return {e["pid"] for e in events(proxy, event) if e.get("trigger") == "sighup"}

        until(lambda: reloaded("users_reload") >= workers and reloaded("jwks_fetch") >= workers,
              "every worker reloading its files")
        assert reloaded("users_reload") == workers
        for _ in range(20):  # fresh connections, so both workers are asked
            assert get(tcp, "/auth", token)[0] == 200


def test_a_worker_that_dies_is_replaced(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users", alice=PASSWORD)
    with start_authproxy(config_text(users, 2), [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        first = serving_workers(proxy, 2)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        until(lambda: len(serving_workers(proxy, 2) - first) == 1, "a replacement worker")
        assert set(children(proxy.process.pid)) == serving_workers(proxy, 2) - {victim}
        exits = events(proxy, "worker_exit")
        assert [(e["worker_pid"], e["status"], e["level"]) for e in exits] == [
            (victim, -signal.SIGKILL, "error")
        ]
        assert len(events(proxy, "worker_restart")) == 1
        for _ in range(10):
            assert get(proxy.tcp_address, "/auth", basic("alice", PASSWORD))[0] == 200


async def test_a_worker_that_cannot_be_started_is_retried_with_a_growing_back_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The Python that runs the workers is gone (an upgrade removed it, say): every failed
    start counts as a death right after it, so restarts back off as for workers that die young."""
    caplog.set_level(logging.INFO, logger="authproxy.workers")
    sockets = bind(parse_listen(f"127.0.0.1:{free_port()}"))
    supervisor = Supervisor(Config(), sockets, str(tmp_path), Metrics(),
                            interpreter=str(tmp_path / "gone" / "python"))

    def logged(event: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", None) == event]

    running = asyncio.create_task(supervisor.run())
    async with asyncio.timeout(DEADLINE):
        while len(logged("worker_restart")) < 3:
            await asyncio.sleep(0.05)
    supervisor.stop()
    assert await running == 0
    assert [r.__dict__["delay_seconds"] for r in logged("worker_restart")][:3] == [0.5, 1.0, 2.0]
    assert "FileNotFoundError" in logged("worker_error")[0].__dict__["error"]
    assert all(sock.fileno() == -1 for sock in sockets)


def test_workers_stop_when_the_supervisor_dies(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users", alice=PASSWORD)
    with pytest.raises(AssertionError, match=f"exited with -{int(signal.SIGKILL)}"):
        # a supervisor killed this way leaves its private directory: keep it in tmp_path
        with start_authproxy(config_text(users, 2), [f"127.0.0.1:{free_port()}"],
                             tmp_path, env={"TMPDIR": str(tmp_path)}) as proxy:
            workers = serving_workers(proxy, 2)
            proxy.process.kill()
            until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
                  "the orphaned workers to stop")
    assert {e["pid"] for e in events(proxy, "supervisor_lost")} == workers


def test_workers_1_is_one_process_as_before(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users", alice=PASSWORD)
    with start_authproxy(config_text(users, 1), [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        assert children(proxy.process.pid) == []
        before = scrape(proxy, "authproxy_decisions_total")
        assert get(proxy.tcp_address, "/auth", basic("alice", PASSWORD))[0] == 200
        # counted at once: no flush interval with one process
        assert scrape(proxy, "authproxy_decisions_total") == before + 1
    # decision lines are written in batches; the last one when the process stops
    assert {e["pid"] for e in events(proxy, "decision")} == {proxy.process.pid}
    assert not events(proxy, "worker_start")


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_of_any_worker_count_every_decision_of_all(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users", alice=PASSWORD)
    with start_authproxy(config_text(users, 2), [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        workers = serving_workers(proxy, 2)
        address = proxy.tcp_address
        assert get(address, "/auth", basic("alice", PASSWORD))[0] == 200  # warm a cache
        until(lambda: scrape(proxy, "authproxy_decisions_total") == 1, "the first decision")
        before = {name: scrape(proxy, name) for name in (
            "authproxy_decisions_total", "authproxy_decision_seconds_count",
            "authproxy_cache_lookups_total")}

        sent = 0
        headers = [basic("alice", PASSWORD), basic("alice", "wrong"), {}]
        with ThreadPoolExecutor(8) as pool:
            while {e["pid"] for e in events(proxy, "decision")} != workers:
                burst = [headers[i % 3] for i in range(30)]
                statuses = list(pool.map(lambda h: get(address, "/auth", h)[0], burst))
                assert statuses == [200 if h is headers[0] else 401 for h in burst]
                sent += len(burst)
                assert sent < 600, "one worker took every connection"

        expected = {name: value + sent for name, value in before.items()}
        # every right password is one lookup (a hit, or a miss on a worker's first); a wrong
        # one is a miss unless a ban refuses it first
        expected["authproxy_cache_lookups_total"] = before["authproxy_cache_lookups_total"] + (
            sent // 3)

        def counted() -> bool:  # within the workers' flush interval
            return all(scrape(proxy, name) >= value for name, value in expected.items())

        until(counted, f"{sent} more decisions counted")
        counts = [{name: scrape(proxy, name) for name in expected} for _ in range(6)]
        # whichever worker answers the scrape, the whole service counts
        assert all(c == counts[0] for c in counts)
        lookups = "authproxy_cache_lookups_total"
        assert {n: v for n, v in counts[0].items() if n != lookups} == {
            n: v for n, v in expected.items() if n != lookups}
        assert counts[0][lookups] >= expected[lookups]


# -- bans for the whole service ----------------------------------------------------------------


def test_a_ban_from_elsewhere_holds_for_ban_time_and_restarts_the_count() -> None:
    now = [0.0]
    tracker = FailureTracker(3, window=600, ban_time=300, clock=lambda: now[0])
    tracker.record_failure("alice")
    tracker.record_failure("alice")
    tracker.ban("alice")
    assert tracker.is_banned("alice") and not tracker.is_banned("bob")
    assert tracker.bans_in_force() == 1
    now[0] = 299
    assert tracker.is_banned("alice")
    now[0] = 301
    assert not tracker.is_banned("alice")
    tracker.record_failure("alice")  # the two failures before the ban no longer count
    assert not tracker.is_banned("alice")
    no_bans = FailureTracker(3, window=600, ban_time=0, clock=lambda: now[0])
    no_bans.ban("alice")
    assert not no_bans.is_banned("alice") and no_bans.bans_in_force() == 0


def test_the_supervisor_counts_every_workers_failures_and_tells_every_worker() -> None:
    broadcast: list[Message] = []
    told: list[Message] = []
    bans = BanCoordinator(BasicConfig(max_failures=3), broadcast.append, clock=lambda: 0.0)
    too_long = "x" * (MAX_KEY + 1)
    for worker in (0, 1, 0):
        assert not broadcast
        bans.count(Failure(("alice", f"192.0.2.{worker}", too_long)), told.append)
    assert broadcast == [Ban("alice", 300)]
    assert not told
    # A failure for a banned key comes from a worker that did not know (a restarted one):
    # that worker alone is told.
    bans.count(Failure(("alice",)), told.append)
    assert (broadcast, told) == ([Ban("alice", 300)],) * 2


def test_a_ban_reached_on_two_workers_together_holds_on_every_worker(tmp_path: Path) -> None:
    """basic.max_failures counts the failures of the whole service, not of each worker: wrong
    passwords spread over two workers ban the user on both after about max_failures in all."""
    max_failures, rounds = 3, 30
    names = [f"user{i}" for i in range(rounds)]
    users = tmp_path / "users"
    users.write_text("".join(f"{name}:{bcrypt_hash(PASSWORD, 4)}\n" for name in names))
    config = config_text(users, 2, basic={"max_failures": max_failures,
                                          "failure_window": 600, "ban_time": 600})
    # Each request from an address of its own (X-Real-IP, from a trusted peer), so that only
    # the user's failures add up.
    sources = (str(ipaddress.ip_address("10.0.0.1") + i) for i in itertools.count())
    with (start_authproxy(config, [f"127.0.0.1:{free_port()}"], tmp_path) as proxy,
          ThreadPoolExecutor(max_failures) as pool):
        workers = serving_workers(proxy, 2)

        def attempt(user: str, password: str, count: int) -> list[dict[str, Any]]:
            """``count`` concurrent requests on fresh connections, all refused: their decision
            lines, once written (in batches, at most 0.1 s late)."""
            clients = [next(sources) for _ in range(count)]
            headers = [{**basic(user, password), "X-Real-IP": c} for c in clients]
            statuses = list(pool.map(lambda h: get(proxy.tcp_address, "/auth", h)[0], headers))
            assert statuses == [401] * count

            def lines() -> list[dict[str, Any]]:
                return [e for e in events(proxy, "decision") if e.get("client") in clients]

            until(lambda: len(lines()) == count, "the decision lines")
            return lines()

        # max_failures wrong passwords at once, for one user after another, until a user's
        # failures were spread over both workers: neither reached max_failures by itself.
        for user in names:
            failed = attempt(user, "wrong", max_failures)
            assert {e["reason"] for e in failed} == {"bad_password"}
            if {e["pid"] for e in failed} == workers:
                break
        else:
            pytest.fail(f"one worker took all {max_failures} connections {rounds} times")

        # More wrong passwords, until both workers refuse them as banned. Had each worker
        # counted alone, each would have taken max_failures of its own: twice as many in all.
        banned_by: set[int] = set()
        for _ in range(20):
            lines = attempt(user, "wrong", 2)
            failed += [e for e in lines if e["reason"] == "bad_password"]
            banned_by |= {e["pid"] for e in lines if e["reason"] == "banned"}
            if banned_by == workers:
                break
        assert banned_by == workers
        # one more at most: a request that arrived while the ban was on its way
        assert len(failed) <= max_failures + 1, [(e["pid"], e["reason"]) for e in failed]

        # The right password: refused as banned by every worker.
        refused_by: set[int] = set()
        for _ in range(20):
            lines = attempt(user, PASSWORD, 2)
            assert {e["reason"] for e in lines} == {"banned"}
            refused_by |= {e["pid"] for e in lines}
            if refused_by == workers:
                break
        assert refused_by == workers


# -- one JWKS schedule -------------------------------------------------------------------------


def jwks_config(users: Path, workers: int, server: JwksServer, **jwt: Any) -> str:
    return config_text(
        users, workers, admin={"users": ["root"]},
        jwt={"jwks_endpoint": server.url, "jwks_ssl_ca_certificate": str(server.ca_file),
             "jwks_require_audience": [AUDIENCE], **jwt},
    )


async def fetch_status(session: aiohttp.ClientSession, address: str, path: str,
                       headers: dict[str, str], method: str = "GET") -> tuple[int, Any]:
    async with session.request(method, f"http://{address}{path}", headers=headers) as response:
        body = await response.read()
        return response.status, json.loads(body) if body.startswith(b"{") else body


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not await check():
        assert time.monotonic() < end, f"{what}: not within {deadline} s"
        await asyncio.sleep(0.05)


async def test_a_worker_never_goes_back_to_an_older_publication(
    tmp_path: Path, jwks_server: JwksServer
) -> None:
    """A worker's loads of the published set may overlap (a notice and a reply): one that
    ends after a newer one must not put the older set back."""
    config = JwtConfig(**jwt_section(jwks_server))
    state = tmp_path / STATE_FILE
    publisher = KeyPublisher(config, Metrics(), state, notify=lambda notice: None)
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    ring = KeyRing(config, Metrics())
    worker = SupervisorFetcher(ring, config.algorithms, link=MasterLink(reader, writer),
                               state_dir=str(tmp_path))
    async with publisher.running():
        older = state.read_bytes()  # generation 1: k1
        jwks_server.serve(K2)
        await publisher.refresher.refresh("admin")  # generation 2: k2
    await worker.load_published()
    assert ring.knows_kid("k2") and not ring.knows_kid("k1")
    state.write_bytes(older)
    await worker.load_published()
    assert ring.knows_kid("k2") and not ring.knows_kid("k1")
    writer.close()
    theirs.close()


async def test_a_request_after_the_supervisor_went_away_fails_at_once() -> None:
    """Not after REPLY_TIMEOUT (25 s, longer than the drain): a worker draining after its
    supervisor died answers a token with an unknown kid with a quick 503."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    link, lost = MasterLink(reader, writer), asyncio.Event()
    link.start(on_lost=lost.set)
    theirs.close()
    await asyncio.wait_for(lost.wait(), DEADLINE)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(link.request(RefreshRequest("miss"), 60), 5)
    await link.close()


async def test_four_workers_fetch_on_one_schedule_and_judge_staleness_alike(
    tmp_path: Path, jwks_server: JwksServer
) -> None:
    interval, observed, max_stale = 2, 6.0, 4
    users = write_users(tmp_path / "users", root=PASSWORD)
    config = jwks_config(users, 4, jwks_server, jwks_update_interval=interval,
                         jwks_max_stale=max_stale)
    async with running(config, [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        workers = await asyncio.to_thread(serving_workers, proxy, 4)
        token = {"Authorization": f"Bearer {mint(K1)}"}
        address = proxy.tcp_address
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def all_ready() -> bool:
                for _ in range(8):
                    assert (await fetch_status(session, address, "/auth", token))[0] == 200
                    status, body = await fetch_status(session, address, "/readyz", {})
                    assert status == 200, body
                return {e["pid"] for e in events(proxy, "decision")} >= workers
            await wait_for(all_ready, "every worker verifying with the published set")

            start = jwks_server.fetches
            await asyncio.sleep(observed)  # the observation window, not a race
            fetched = jwks_server.fetches - start

            # The endpoint fails from now on: past jwks_max_stale, every worker distrusts the
            # set it was given, as one process would (the load time is the supervisor's).
            jwks_server.status = 500

            async def all_distrust() -> bool:
                for _ in range(8):
                    status, body = await fetch_status(session, address, "/readyz", {})
                    if status != 503:
                        return False
                    assert "older than jwt.jwks_max_stale" in str(body["missing"])
                return True
            await wait_for(all_distrust, "every worker distrusting the stale set",
                           deadline=max_stale + DEADLINE)
            assert (await fetch_status(session, address, "/auth", token))[0] == 503
    # One schedule: observed / interval fetches (3), plus slack for the window's edges.
    # Four uncoordinated workers would have fetched about 4 * 3 = 12 times.
    assert 1 <= fetched <= observed / interval + 2
    fetch_lines = events(proxy, "jwks_fetch")
    assert {e["pid"] for e in fetch_lines} == {proxy.process.pid}
    assert {e["trigger"] for e in fetch_lines} <= {"startup", "scheduled"}


async def test_misses_and_jwks_setup_ask_the_supervisor(
    tmp_path: Path, jwks_server: JwksServer
) -> None:
    users = write_users(tmp_path / "users", root=PASSWORD)
    config = jwks_config(users, 2, jwks_server)
    async with running(config, [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        workers = await asyncio.to_thread(serving_workers, proxy, 2)
        address = proxy.tcp_address
        assert jwks_server.fetches == 1  # the supervisor's start-up fetch, for everyone
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def answered(token: str, expected: int) -> set[int]:
                """The workers that answered ``expected``: batches of 16 concurrent requests on
                fresh connections, until every worker has answered (at most 10 batches)."""
                seen = len(events(proxy, "decision"))
                headers = {"Authorization": f"Bearer {token}"}
                sent, pids = 0, set[int]()
                while pids != workers and sent < 160:
                    statuses = await asyncio.gather(*(
                        fetch_status(session, address, "/auth", headers) for _ in range(16)))
                    assert {status for status, _ in statuses} == {expected}
                    sent += 16
                    # decision lines are written in batches (at most 0.1 s late)
                    def logged(n: int = seen + sent) -> bool:
                        return len(events(proxy, "decision")) >= n

                    await asyncio.to_thread(until, logged, "the decision lines")
                    pids = {e["pid"] for e in events(proxy, "decision")[seen:]}
                return pids

            # A rotation: the first worker to see the new kid has the supervisor fetch; the
            # other already has the published set, or is refused a second fetch.
            jwks_server.serve(K1, K2)
            assert await answered(mint(K2), 200) == workers
            assert jwks_server.fetches == 2
            # Made-up kids, on every worker: the rate limit is the whole service's.
            made_up = mint(signing_key("RS256", "made-up"))
            assert await answered(made_up, 401) == workers
            assert jwks_server.fetches == 2

            # jwks_setup on any worker fetches now and answers with the new set.
            jwks_server.serve(K3)
            admin = basic("root", PASSWORD)
            status, body = await fetch_status(session, address, "/api/v2/jwks_setup", admin,
                                              method="POST")
            assert (status, body["kids"]) == (200, ["k3"])
            assert jwks_server.fetches == 3
            assert await answered(mint(K3), 200) == workers
            status, body = await fetch_status(session, address, "/api/v2/jwks", admin)
            endpoint = body["sources"][0]
            assert (endpoint["kids"], endpoint["trusted"]) == (["k3"], True)

            # jwks_setup again within the interval, on every worker: no fetch (the
            # supervisor's rate limit is the whole service's), the set in use, and each
            # answer says it was rate-limited, by its worker's limit or the supervisor's.
            jwks_server.status = 500
            seen = len(events(proxy, "admin"))

            def setup_answered_by() -> set[int]:
                return {e["pid"] for e in events(proxy, "admin")[seen:]}

            for _ in range(10):
                answers = await asyncio.gather(*(fetch_status(
                    session, address, "/api/v2/jwks_setup", admin, method="POST")
                    for _ in range(8)))
                for status, body in answers:
                    assert (status, body["kids"], body["rate_limited"]) == (200, ["k3"], True)
                    assert 0 < body["retry_after"] <= MISS_REFRESH_INTERVAL
                if setup_answered_by() == workers:
                    break
            assert setup_answered_by() == workers
            assert jwks_server.fetches == 3
            assert await answered(mint(K3), 200) == workers

        # The supervisor's fetches and the workers' gauges, from any worker's /metrics, once
        # every process has flushed (each does once a second).
        def flushed() -> bool:
            return (scrape(proxy, "authproxy_jwks_keys") == 1
                    and scrape(proxy, "authproxy_jwks_age_seconds") < 60
                    and scrape(proxy, "authproxy_jwks_fetches_total") >= 3)
        await asyncio.to_thread(until, flushed, "the key metrics of every process")
        assert await asyncio.to_thread(scrape, proxy, "authproxy_jwks_fetches_total") == 3
    assert jwks_server.fetches == 3
    assert {e["pid"] for e in events(proxy, "jwks_fetch")} == {proxy.process.pid}

