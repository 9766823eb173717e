"""Shared factories: user files and configs made the way an operator would make them."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from hypothesis import HealthCheck, settings

from authproxy.config import Config, load_config
from authproxy.http.application import Application
from authproxy.http.server import start_server
from authproxy.listen import ListenAddress, bind

from .appclient import AppClient, ServeApp

# The real-server fixtures, for every module that asks for them by name.
from .servers import echo_upstream, tls_files  # noqa: F401

# The identity headers of the contract (SPEC §4), written here rather than imported from
# authproxy, so that a renamed header fails the tests instead of moving with them.
IDENTITY_HEADERS = ("X-Auth-User", "X-Auth-Method", "X-Auth-Subject", "X-Auth-Groups",
                    "X-Auth-Scopes")
APACHE_APR1 = "$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"  # "myPassword", from Apache's docs

# The fuzz targets' property tests (tests/test_fuzz_*.py) run bounded in `make test`: a few
# seconds each on this 2-core machine, no per-example deadline (the machine is shared and
# noisy), and Hypothesis's example database kept out of the tree.
settings.register_profile("authproxy", max_examples=400, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("authproxy")


async def eventually(check: Callable[[], Any], what: str = "", timeout: float = 5.0) -> None:
    """Wait until ``check()`` (sync or async) is true: a condition, not a fixed sleep."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


async def metric(client: Any, prefix: str) -> float:
    """The value of the first line of the app's /metrics that starts with ``prefix``; 0 if
    none does (a labelled counter appears once counted)."""
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
async def serve() -> AsyncIterator[ServeApp]:
    """serve(create_app(config)) -> an AppClient of the app served as production serves it;
    stopped (drained, lifetimes ended) when the test ends."""
    clients: list[AppClient] = []

    async def start(app: Application) -> AppClient:
        sockets = bind(ListenAddress("127.0.0.1", 0))
        port = sockets[0].getsockname()[1]
        client = AppClient(await start_server(app, sockets), port)
        clients.append(client)
        return client

    yield start
    for client in reversed(clients):
        await client.close()


def apache_htpasswd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run Apache's htpasswd; CI installs apache2-utils, so its absence is a failure."""
    exe = shutil.which("htpasswd")
    if exe is None:
        pytest.fail("htpasswd not found: install apache2-utils")
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True,
                          check=False)


def htpasswd_verify(path: Path, user: str, password: str) -> int:
    """Exit status of ``htpasswd -vb``: 0 match, 3 mismatch, 6 no such user."""
    return apache_htpasswd("-vb", str(path), user, password).returncode


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def bcrypt_hash(password: str, cost: int = 4) -> str:
    """A $2y$ hash as Apache's htpasswd -B writes it (cost 4 keeps tests fast)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode().replace("$2b$", "$2y$", 1)


@pytest.fixture
def htpasswd(tmp_path: Path) -> Callable[..., Path]:
    """write(name="users.htpasswd", **{user: password}) -> path of a bcrypt htpasswd file."""

    def write(name: str = "users.htpasswd", **users: str) -> Path:
        return write_users(tmp_path / name, **users)

    return write


def write_users(path: Path, cost: int = 4, /, **users: str) -> Path:
    """A bcrypt htpasswd file at ``path`` for ``users`` (name: password). ``path`` and
    ``cost`` are positional only, so that any name can be a user's."""
    path.write_text("".join(f"{u}:{bcrypt_hash(p, cost)}\n" for u, p in users.items()))
    return path


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """make_config({"basic": {...}, ...}) -> Config, through a real TOML file and load_config."""

    def make(sections: dict[str, dict[str, Any]], environ: dict[str, str] | None = None) -> Config:
        path = tmp_path / "authproxy.toml"
        path.write_text(toml_text(sections))
        return load_config(str(path), environ=environ or {})

    return make
