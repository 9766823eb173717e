"""SPEC §8.4: a unix-socket peer is believed as the proxy only if the socket's permissions say
it is the proxy. server.unix_socket_mode / unix_socket_group are applied before the socket
listens; a socket any local user may connect to (o+w) has its peers treated as untrusted
clients: no forwarded client address, and a warning at start. The shipped systemd unit makes
the socket the nginx group's.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from authproxy.config import ServerConfig, load_config
from authproxy.errors import ConfigError
from authproxy.listen import unix_peers_trusted

from .conftest import write_users
from .jwks_server import basic
from .servers import REPO, start_authproxy
from .test_workers import PASSWORD, config_text, events, get, until

SYSTEMD = REPO / "deploy" / "systemd"


@pytest.mark.parametrize(("mode", "trusted"), [
    (0o600, True), (0o660, True), (0o640, True), (0o664, True), (0o770, True),
    (0o666, False), (0o662, False), (0o777, False), (0o602, False), (0o002, False),
])
def test_unix_peers_are_believed_only_if_other_users_cannot_connect(
    mode: int, trusted: bool
) -> None:
    """connect(2) needs write permission on the socket file: o+w means any local user."""
    assert unix_peers_trusted(mode) is trusted


def test_unix_socket_mode_is_octal_permission_bits_and_decides_the_trust(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users", alice=PASSWORD)
    path = tmp_path / "authproxy.toml"

    def server(**keys: str) -> ServerConfig:
        path.write_text(config_text(users, 1, server=keys))
        return load_config(str(path), environ={}).server

    default = server()
    assert (default.unix_access.mode, default.trusts_unix_peers) == (0o666, False)
    restricted = server(unix_socket_mode="0660", unix_socket_group="www-data")
    assert restricted.unix_access.mode == 0o660
    assert restricted.unix_access.group == "www-data"
    assert restricted.trusts_unix_peers
    assert server(unix_socket_mode="660").trusts_unix_peers
    for bad in ("rw-rw----", "0o660", "4660", "0888", "", "66"):
        with pytest.raises(ConfigError, match=r"server\.unix_socket_mode"):
            server(unix_socket_mode=bad)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a path short enough for a unix socket, that any user may traverse
    (so that only the socket's own mode decides who connects)."""
    directory = Path(tempfile.mkdtemp(prefix="ap-unix-"))
    directory.chmod(0o711)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize(("mode", "believed"), [("0660", True), ("0666", False)])
def test_a_forwarded_client_address_is_believed_on_a_unix_socket_only_if_others_cannot_connect(
    tmp_path: Path, short_dir: Path, mode: str, believed: bool
) -> None:
    """The real service with two workers (the supervisor binds, the workers decide): on a
    world-connectable socket X-Real-IP and X-Forwarded-For are a local user's own word."""
    users = write_users(tmp_path / "users", alice=PASSWORD)
    group = grp.getgrgid(os.getegid()).gr_name
    config = config_text(users, 2, server={"unix_socket_mode": mode, "unix_socket_group": group})
    socket_path = short_dir / "a.sock"
    with start_authproxy(config, [f"unix:{socket_path}"], tmp_path / "run") as proxy:
        info = os.stat(socket_path)
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (int(mode, 8), os.getegid())
        for uri, forwarded in (("/real-ip", {"X-Real-IP": "198.51.100.7"}),
                               ("/xff", {"X-Forwarded-For": "198.51.100.7"})):
            headers = {**basic("alice", PASSWORD), "X-Original-URI": uri, **forwarded}
            assert get(f"unix:{socket_path}", "/auth", headers)[0] == 200

        def clients() -> dict[str, str]:
            return {e["uri"]: e["client"] for e in events(proxy, "decision")
                    if e.get("uri") in ("/real-ip", "/xff")}

        until(lambda: len(clients()) == 2, "the decision lines")
        expected = "198.51.100.7" if believed else "unix"
        assert clients() == {"/real-ip": expected, "/xff": expected}
        warnings = events(proxy, "listen_untrusted")
        assert len(warnings) == (0 if believed else 1)  # once, by the supervisor that binds
        if warnings:
            assert warnings[0]["level"] == "warning" and warnings[0]["pid"] == proxy.process.pid


def test_a_unix_socket_group_that_does_not_exist_is_a_start_up_error(
    tmp_path: Path, short_dir: Path
) -> None:
    users = write_users(tmp_path / "users", alice=PASSWORD)
    config_path = tmp_path / "authproxy.toml"
    config_path.write_text(config_text(users, 1, server={
        "unix_socket_mode": "0660", "unix_socket_group": "no-such-group-for-authproxy"}))
    result = subprocess.run(
        [sys.executable, "-m", "authproxy", "serve", "--config", str(config_path),
         "--listen", f"unix:{short_dir / 'a.sock'}"],
        capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("AUTHPROXY_")})
    assert result.returncode == 1
    assert "no-such-group-for-authproxy" in result.stderr + result.stdout
    assert not (short_dir / "a.sock").exists()


@pytest.fixture
def unprivileged_user() -> Iterator[str]:
    """A user made for this test (not in the test process's groups), removed after."""
    if os.geteuid() != 0:
        pytest.skip("creating a user to connect as needs root")
    name = f"aptest{os.getpid()}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                    "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True, timeout=30)


def test_another_local_user_cannot_connect_to_a_0660_socket(
    tmp_path: Path, short_dir: Path, unprivileged_user: str
) -> None:
    users = write_users(tmp_path / "users", alice=PASSWORD)
    restricted, open_ = short_dir / "restricted.sock", short_dir / "open.sock"
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n")

    def connect_as_other(path: Path) -> int:
        return subprocess.run(["/usr/bin/python3", "-c", probe, str(path)],
                              user=unprivileged_user, group=unprivileged_user,
                              extra_groups=[], capture_output=True, timeout=30,
                              check=False, cwd="/").returncode

    for path, mode, expected in ((restricted, "0660", 13), (open_, "0666", 0)):
        config = config_text(users, 1, server={"unix_socket_mode": mode})
        with start_authproxy(config, [f"unix:{path}"], tmp_path / mode):
            assert connect_as_other(path) == expected, mode


def test_the_shipped_systemd_unit_makes_the_socket_the_nginx_groups() -> None:
    """The unit's config restricts the socket to a group of authproxy and nginx's user (Debian:
    www-data) alone, so its peers are believed; neither joins the other's own group."""
    config = tomllib.loads((SYSTEMD / "authproxy.toml").read_text(encoding="utf-8"))["server"]
    group = config["unix_socket_group"]
    assert group not in ("www-data", "authproxy")
    assert unix_peers_trusted(int(config["unix_socket_mode"], 8))
    unit = (SYSTEMD / "authproxy.service").read_text(encoding="utf-8").splitlines()
    assert f"SupplementaryGroups={group}" in unit
    sysusers = (SYSTEMD / "authproxy.sysusers").read_text(encoding="utf-8").splitlines()
    memberships = {tuple(line.split()[1:3]) for line in sysusers if line.startswith("m ")}
    assert memberships == {("authproxy", group), ("www-data", group)}
    (runtime_mode,) = [line.split("=", 1)[1] for line in unit
                       if line.startswith("RuntimeDirectoryMode=")]
    assert not int(runtime_mode, 8) & (stat.S_IROTH | stat.S_IWOTH)  # traversable, not listable
