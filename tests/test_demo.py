"""`authproxy demo`, run as a user runs it: a subprocess with real nginx, authproxy, issuer.

``--check`` runs the curl lines the demo prints; it must pass on a fresh directory and again
on the same one, and move off port 8443 when that is taken. Without ``--check`` the demo runs
until interrupted, and Ctrl-C must leave nothing running behind it. It also runs from a wheel
installed in a fresh venv, away from the checkout.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from .servers import DEADLINE, NGINX_DIR, REPO, unsafe_access_logs, wait_until

PREFERRED_PORT = 8443
READY_LINE = "Ctrl-C stops everything."


def demo_command(directory: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "authproxy", "demo", "--dir", str(directory), *flags]


def demo_env() -> dict[str, str]:
    # Unbuffered, so that a pipe shows the demo's lines as they are printed.
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AUTHPROXY_")},
            "PYTHONUNBUFFERED": "1"}


def run_check(directory: Path) -> str:
    """``authproxy demo --check``; its output, once it exited 0."""
    result = subprocess.run(
        demo_command(directory, "--check"), cwd=directory.parent, env=demo_env(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def assert_every_printed_line_passed(output: str) -> None:
    curls = [line for line in output.splitlines() if line.startswith("curl ")]
    checks = [line for line in output.splitlines() if line.startswith("check:")]
    assert len(curls) >= 5, output
    assert len(checks) == len(curls), output
    assert all(line.startswith("check: ok") for line in checks), output


def https_ports(output: str) -> set[int]:
    """The ports of the https://localhost:PORT URLs in the printed curl lines."""
    return {int(port) for port in re.findall(r"https://localhost:(\d+)/", output)}


@contextmanager
def port_taken(port: int) -> Iterator[None]:
    """``port`` on 127.0.0.1 has a listener for the block: ours, or someone else's already."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        else:
            sock.listen()
        yield


def test_check_passes_twice_and_moves_off_a_busy_port(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    first = run_check(directory)
    assert_every_printed_line_passed(first)
    credentials = (directory / "credentials.json").read_text()
    # The curl lines sent Basic user-ids, a wrong password's too: nginx logged none of them.
    access_log = (directory / "nginx-access.log").read_text()
    assert '"GET /admin/ HTTP/1.1" 403' in access_log
    assert not [user for user in json.loads(credentials) if f" {user} " in access_log]
    assert unsafe_access_logs((directory / "nginx.conf").read_text()) == []

    with port_taken(PREFERRED_PORT):
        second = run_check(directory)
    assert_every_printed_line_passed(second)
    [port] = https_ports(second)
    assert port != PREFERRED_PORT
    assert f"port {PREFERRED_PORT} is busy; using {port} instead" in second
    # The second run kept the first one's users and passwords.
    assert (directory / "credentials.json").read_text() == credentials
    assert json.loads(credentials)["demo"] in second


# -- from an installed package --------------------------------------------------------------------

# What pip prints when it cannot reach a package index: the only reason to skip.
UNREACHABLE = re.compile(r"NewConnectionError|Failed to establish a new connection|Network is "
                         r"unreachable|Temporary failure in name resolution|No route to host")
# What the wheel is built from: the package, its metadata and what setup.cfg ships with it.
SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "authproxy", "nginx")


def installed_env() -> dict[str, str]:
    """The demo's environment with nothing that would import authproxy from elsewhere."""
    return {k: v for k, v in demo_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def pip(python: Path | str, *args: str, cwd: Path) -> None:
    """``python -m pip ARGS``; skips the test only if a package index is unreachable."""
    result = subprocess.run([str(python), "-m", "pip", *args], cwd=cwd, env=installed_env(),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=600, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0 and UNREACHABLE.search(output):
        pytest.skip(f"no package index reachable for pip {args[0]}: {output[-500:]}")
    assert result.returncode == 0, output


def test_check_passes_from_a_wheel_installed_away_from_the_checkout(tmp_path: Path) -> None:
    """The wheel carries the nginx snippets: the demo includes them from the venv, and every
    curl line it prints passes, run from a directory that is not the checkout."""
    source = tmp_path / "source"  # a copy, so that building leaves nothing in the checkout
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    pip(sys.executable, "wheel", "--no-deps", "--quiet", "./source", "-w", "wheels",
        cwd=tmp_path)
    [wheel] = (tmp_path / "wheels").glob("authproxy-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip(venv / "bin" / "python", "install", "--quiet", str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    result = subprocess.run(
        [str(venv / "bin" / "authproxy"), "demo", "--dir", "demo", "--check"], cwd=elsewhere,
        env=installed_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert_every_printed_line_passed(output)
    installed = venv / "share" / "authproxy" / "nginx"
    conf = (elsewhere / "demo" / "nginx.conf").read_text()
    assert f"include {installed}/authproxy-auth.conf;" in conf
    assert str(REPO) not in conf
    # nginx/ stays the source: the wheel carries every snippet of it, unchanged.
    assert sorted(p.name for p in installed.iterdir()) == sorted(
        p.name for p in NGINX_DIR.glob("*.conf"))
    for snippet in installed.iterdir():
        assert snippet.read_bytes() == (NGINX_DIR / snippet.name).read_bytes(), snippet.name


# -- Ctrl-C --------------------------------------------------------------------------------------


def descendants(pid: int) -> list[tuple[int, str]]:
    """Every process below ``pid``, as (pid, start time) so that a reused pid is not mistaken
    for one of them."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append((child, start_time(child)))
            found.extend(descendants(child))
    return found


def start_time(pid: int) -> str:
    # Field 22 of /proc/PID/stat, counted after the parenthesised command name.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]


def running(pid: int, started: str) -> bool:
    """True while that process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    return stat[19] == started and stat[0] != "Z"


def catches(pid: int, sig: signal.Signals) -> bool:
    """True once process ``pid`` has a handler for ``sig`` (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def read_until(process: subprocess.Popen[bytes], text: str) -> str:
    """The process's output up to and including the line holding ``text``."""
    assert process.stdout is not None
    output = b""
    end = time.monotonic() + DEADLINE
    while text.encode() not in output:
        remaining = end - time.monotonic()
        assert remaining > 0, f"no {text!r} within {DEADLINE} s:\n{output.decode()}"
        readable, _, _ = select.select([process.stdout], [], [], remaining)
        chunk = os.read(process.stdout.fileno(), 65536) if readable else b""
        assert chunk or not readable, f"the demo exited:\n{output.decode()}"
        output += chunk
    return output.decode()


@pytest.mark.parametrize("to_group", [False, True], ids=["SIGINT to the demo", "Ctrl-C"])
def test_interrupt_stops_everything(tmp_path: Path, to_group: bool) -> None:
    """SIGINT to the demo alone, or to its whole process group as a terminal's Ctrl-C does:
    exit 0, with its nginx and authproxy gone too."""
    directory = tmp_path / "demo"
    process = subprocess.Popen(
        demo_command(directory), cwd=tmp_path, env=demo_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output = read_until(process, READY_LINE)
        # The demo prints that line just before it takes over SIGINT and SIGTERM (a SIGINT
        # in between ends it through asyncio's KeyboardInterrupt, status -2): wait for them.
        wait_until(partial(catches, process.pid, signal.SIGTERM), "the demo's signal handlers",
                   process)
        children = descendants(process.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid, _ in children}
        assert {"nginx", "python"} <= {name.rstrip("0123456789.") for name in names}, names
        nginx_master = int((directory / "nginx.pid").read_text())
        assert nginx_master in {pid for pid, _ in children}
        [port] = https_ports(output)
        assert all(running(*child) for child in children)

        if to_group:
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=DEADLINE)
        assert process.returncode == 0, output + rest.decode()
        wait_until(lambda: not any(running(*child) for child in children),
                   "the demo's children to stop")
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "nginx still listens"
    except BaseException:
        with contextlib.suppress(ProcessLookupError):  # the demo's session, all of it
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
