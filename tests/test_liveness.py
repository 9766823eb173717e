"""Worker liveness with real processes: a worker that stops sending heartbeats from its event
loop (SIGSTOPped, or its loop blocked) is killed and replaced within server.worker_timeout,
the connections it held are closed rather than left waiting, and requests keep succeeding.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from authproxy.config import load_config
from authproxy.listen import bind, parse_listen
from authproxy.obs.metrics import Metrics
from authproxy.workers.supervisor import Supervisor

from .conftest import eventually, write_users
from .jwks_server import basic
from .servers import free_port, start_authproxy
from .test_workers import (
    DEADLINE,
    PASSWORD,
    children,
    config_text,
    events,
    get,
    serving_workers,
    until,
)

WORKER_TIMEOUT = 2  # server.worker_timeout of these tests


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def test_a_sigstopped_worker_is_killed_and_replaced_and_its_connections_closed(
    tmp_path: Path,
) -> None:
    """The attack: SIGSTOP one of two workers. Its kept-alive connections must not wait on it
    for ever: within worker_timeout the supervisor kills it (they are closed, so the proxy
    reconnects), starts another, and fresh connections are answered all along."""
    users = write_users(tmp_path / "users", alice=PASSWORD)
    config = config_text(users, 2, server={"worker_timeout": WORKER_TIMEOUT})
    with start_authproxy(config, [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        first = serving_workers(proxy, 2)
        host, port = _host_port(proxy.tcp_address)
        # Kept-alive connections, as nginx's upstream keepalive holds them; each one's first
        # decision names the worker that accepted it.
        held = [http.client.HTTPConnection(host, port, timeout=DEADLINE) for _ in range(8)]
        for i, connection in enumerate(held):
            connection.request("GET", "/auth",
                               headers={**basic("alice", PASSWORD), "X-Original-URI": f"/held/{i}"})
            response = connection.getresponse()
            assert response.status == 200
            response.read()

        def holder() -> dict[int, int]:
            return {int(e["uri"].rsplit("/", 1)[1]): e["pid"]
                    for e in events(proxy, "decision") if e.get("uri", "").startswith("/held/")}

        until(lambda: len(holder()) == len(held), "the held connections' decision lines")
        victim = holder()[0]
        on_victim = [held[i] for i, pid in holder().items() if pid == victim]

        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        for _ in range(10):  # fresh connections: the other worker accepts them
            assert get(proxy.tcp_address, "/auth", basic("alice", PASSWORD))[0] == 200
        for connection in on_victim:
            # Before the fix this waited out the socket timeout (DEADLINE s): TimeoutError.
            with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError,
                                BrokenPipeError)):
                connection.request("GET", "/auth", headers=basic("alice", PASSWORD))
                connection.getresponse()
        closed_after = time.monotonic() - stopped_at
        for connection in held:
            connection.close()

        until(lambda: len(serving_workers(proxy, 2) - first) == 1, "a replacement worker", DEADLINE)
        assert not os.path.exists(f"/proc/{victim}")  # killed and reaped
        assert set(children(proxy.process.pid)) == serving_workers(proxy, 2) - {victim}
        assert [e["worker_pid"] for e in events(proxy, "worker_hung")] == [victim]
        assert [(e["worker_pid"], e["status"]) for e in events(proxy, "worker_exit")] == [
            (victim, -signal.SIGKILL)]
        assert [e["reason"] for e in events(proxy, "worker_restart")] == ["hung"]
        for _ in range(10):
            assert get(proxy.tcp_address, "/auth", basic("alice", PASSWORD))[0] == 200

        def hung_count() -> float:
            status, body = get(proxy.tcp_address, "/metrics")
            assert status == 200
            found = re.findall(r'^authproxy_worker_restarts_total\{reason="hung"\} (\S+)$',
                               body.decode(), re.MULTILINE)
            return float(found[0]) if found else 0.0

        until(lambda: hung_count() == 1, "the hung restart counted in /metrics")
    # worker_timeout plus a heartbeat interval, plus slack for a loaded machine
    assert closed_after < WORKER_TIMEOUT + 5, closed_after


# A worker whose event loop blocks on SIGUSR1: the handler runs in the loop's thread, like a
# request handler that never returns. The process itself is not stopped.
_BLOCKING_WORKER = """\
import signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: time.sleep(3600))
program = sys.argv[2]
sys.argv = ["-c", *sys.argv[3:]]
exec(program)
"""


async def test_a_worker_whose_event_loop_is_blocked_counts_as_hung(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Heartbeats come from the event loop, not a thread beside it: a worker alive but stuck
    in a handler is killed and replaced too, and the SIGTERM drain still ends with 0."""
    caplog.set_level(logging.INFO, logger="authproxy.workers")
    users = write_users(tmp_path / "users", alice=PASSWORD)
    config_path = tmp_path / "authproxy.toml"
    config_path.write_text(config_text(users, 2, server={"worker_timeout": WORKER_TIMEOUT}))
    config = load_config(str(config_path), environ={})
    interpreter = tmp_path / "python"
    interpreter.write_text(f"#!{sys.executable}\n{_BLOCKING_WORKER}")
    interpreter.chmod(0o755)
    address = f"127.0.0.1:{free_port()}"
    metrics = Metrics(str(tmp_path))  # a directory for the dead workers' gauges
    supervisor = Supervisor(config, bind(parse_listen(address)), str(tmp_path), metrics,
                            interpreter=str(interpreter))

    def started() -> list[int]:
        return [r.__dict__["worker_pid"] for r in caplog.records
                if getattr(r, "event", None) == "worker_start"]

    worker_output: list[str] = []  # the workers log to the stderr they inherit

    def serving() -> set[int]:
        worker_output.append(capfd.readouterr().err)
        lines = [json.loads(line) for line in "".join(worker_output).splitlines()
                 if line.startswith("{")]
        return {e["pid"] for e in lines if e.get("event") == "start" and "worker" in e}

    running = asyncio.create_task(supervisor.run())
    try:
        await eventually(lambda: len(started()) == 2 and serving() == set(started()),
                         "two workers serving", DEADLINE)
        victim = started()[0]
        os.kill(victim, signal.SIGUSR1)
        await eventually(lambda: len(started()) == 3, "a replacement worker", DEADLINE)
        hung = [r.__dict__["worker_pid"] for r in caplog.records
                if getattr(r, "event", None) == "worker_hung"]
        assert hung == [victim]
        assert metrics.registry.get_sample_value(
            "authproxy_worker_restarts_total", {"reason": "hung"}) == 1
        for _ in range(10):
            assert await asyncio.to_thread(
                lambda: get(address, "/auth", basic("alice", PASSWORD))[0]) == 200
    finally:
        supervisor.stop()
        assert await running == 0
