"""The service's lifecycle with the real ``authproxy serve``, with one worker and with several:
SIGTERM under load loses no request and refuses new connections, then exits 0; a SIGHUP that
finds a broken user file keeps the running table everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import write_users
from .jwks_server import basic
from .servers import DEADLINE, free_port, start_authproxy, wait_until
from .test_workers import (
    PASSWORD,
    config_text,
    events,
    get,
    scrape,
    serving_workers,
)

IN_FLIGHT = 20
SLOW_COST = 12  # bcrypt cost: ~0.25 s a verification, so 20 of them outlast the SIGTERM


def refused(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2.0):
            return False
    except OSError as exc:
        return exc.errno == errno.ECONNREFUSED


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_finishes_in_flight_decisions_refuses_new_ones_and_exits_0(
    tmp_path: Path, workers: int
) -> None:
    users = write_users(tmp_path / "users", SLOW_COST, slow=PASSWORD)
    listen = [f"127.0.0.1:{free_port()}"]
    with start_authproxy(config_text(users, workers), listen, tmp_path / "run") as proxy:
        if workers > 1:
            serving_workers(proxy, workers)
        address = proxy.tcp_address
        # Distinct credentials, so that no two requests share one verification.
        passwords = [PASSWORD] + [f"wrong-{i}" for i in range(IN_FLIGHT - 1)]
        finished: dict[str, float] = {}

        def ask(password: str) -> int:
            status = get(address, "/auth", basic("slow", password), timeout=30)[0]
            finished[password] = time.monotonic()
            return status

        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            answers: list[Future[int]] = [pool.submit(ask, p) for p in passwords]
            # Every request is inside a handler once it has missed the credential cache.
            wait_until(lambda: scrape(proxy, "authproxy_cache_lookups_total") >= IN_FLIGHT,
                       "every request in flight", proxy.process)
            proxy.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            wait_until(lambda: refused(address), "new connections refused")
            refused_at = time.monotonic()
            statuses = [answer.result(timeout=DEADLINE) for answer in answers]
        status = proxy.process.wait(timeout=DEADLINE)
        # leaving the block checks the exit status too
    assert statuses == [200] + [401] * (IN_FLIGHT - 1)
    assert sum(at > signalled for at in finished.values()) >= IN_FLIGHT // 2, (
        "most requests should still have been hashing when SIGTERM came"
    )
    assert refused_at < max(finished.values()), "refused only once the drain was over"
    assert status == 0, proxy.log_text()[-3000:]
    assert refused(address)
    decisions = events(proxy, "decision")
    assert len(decisions) == IN_FLIGHT
    if workers > 1:
        exits = events(proxy, "worker_exit")
        assert [e["status"] for e in exits] == [0] * workers


@pytest.mark.parametrize("workers", [1, 2])
def test_an_address_in_use_is_one_log_line_and_exit_status_1(
    tmp_path: Path, workers: int
) -> None:
    """Bound before anything starts, one process or a supervisor alike: nothing half-serves
    (the unix socket, bound first, is released), no traceback, and the service manager sees 1."""
    users = write_users(tmp_path / "users", alice=PASSWORD)
    (tmp_path / "authproxy.toml").write_text(config_text(users, workers))
    sock = tmp_path / "authproxy.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "authproxy", "serve", "--config", "authproxy.toml",
             "--listen", f"unix:{sock}", "--listen", busy],
            cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE,
            env={k: v for k, v in os.environ.items() if not k.startswith("AUTHPROXY_")})
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [("listen_error", "error")]
    assert "in use" in lines[0]["error"]
    with socket.socket(socket.AF_UNIX) as client, pytest.raises(ConnectionRefusedError):
        client.connect(str(sock))


def test_a_failed_reload_keeps_the_running_table_in_every_worker(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users", alice=PASSWORD)
    with start_authproxy(config_text(users, 2), [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        workers = serving_workers(proxy, 2)
        users.unlink()
        proxy.process.send_signal(signal.SIGHUP)

        def failed() -> set[int]:
            return {e["pid"] for e in events(proxy, "users_reload")
                    if (e["outcome"], e["trigger"]) == ("error", "sighup")}

        wait_until(lambda: failed() >= workers, "every worker refusing the broken file")
        alice, sent = basic("alice", PASSWORD), 0
        with ThreadPoolExecutor(8) as pool:  # concurrent fresh connections reach every worker
            while {e["pid"] for e in events(proxy, "decision")} < workers:
                statuses = list(pool.map(lambda _: get(proxy.tcp_address, "/auth", alice)[0],
                                         range(16)))
                assert statuses == [200] * 16
                assert get(proxy.tcp_address, "/readyz")[0] == 200
                sent += 16
                assert sent <= 640, "one worker took every connection"
    # decision lines are written in batches; the last ones when the workers stop
    assert {e["pid"] for e in events(proxy, "decision")} == workers
