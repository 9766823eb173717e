"""SPEC §8.4: users_file, groups_file and jwks_file must be regular files under a size cap.

A FIFO (which blocked the loading thread for good, and so SIGTERM), a device (``/dev/zero``
would be read forever; ``/dev/null`` read as an empty table) or a file past its cap is, at
start-up, a configuration error; later (SIGHUP, the file watcher), a logged and counted load
failure that keeps the old state, after which a good file loads again and SIGTERM exits
promptly. Real ``authproxy`` processes, real FIFOs and devices.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authproxy.regularfile import (
    MAX_GROUPS_FILE_BYTES,
    MAX_JWKS_FILE_BYTES,
    MAX_USERS_FILE_BYTES,
)

from .conftest import toml_text, write_users
from .jwks_server import AUDIENCE, signing_key
from .servers import (
    DEADLINE,
    Authproxy,
    basic_auth,
    bearer_auth,
    free_port,
    http_request,
    start_authproxy,
    wait_until,
)
from .test_workers import events, scrape

PASSWORDS = {"alice": "alice-Corr3ct-horse", "bob": "bob-Batt3ry-staple"}
PROMPT_EXIT = 5.0  # seconds SIGTERM may take with nothing in flight
K1, K2 = signing_key("RS256", "files-k1"), signing_key("RS256", "files-k2")
CAPS = {"users": MAX_USERS_FILE_BYTES, "groups": MAX_GROUPS_FILE_BYTES,
        "jwks": MAX_JWKS_FILE_BYTES}
# what each bad file is, and the words the refusal says
KINDS = {"fifo": "not a regular file", "dev_null": "not a regular file",
         "dev_zero": "not a regular file", "oversized": "larger than"}


def make_bad(path: Path, kind: str, cap: int) -> None:
    """Put a bad file at ``path`` in one step (as a deploy tool would: rename over it)."""
    new = path.with_name(path.name + ".new")
    if kind == "fifo":
        os.mkfifo(new)
    elif kind.startswith("dev_"):
        os.symlink("/dev/" + kind.removeprefix("dev_"), new)
    else:
        with new.open("wb") as fh:  # sparse: a cap's worth of size costs no disk
            fh.truncate(cap + 1)
    os.replace(new, path)


def replace_with(path: Path, write: Callable[[Path], object]) -> None:
    new = path.with_name(path.name + ".new")
    write(new)
    os.replace(new, path)


def jwks_document(*keys: object) -> str:
    return json.dumps({"keys": [k.public_jwk for k in keys]})  # type: ignore[attr-defined]


def status(proxy: Authproxy, header: tuple[str, str]) -> int:
    return http_request(f"http://{proxy.tcp_address}/auth", headers=[header]).status


def stops_promptly(proxy: Authproxy) -> None:
    started = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(timeout=PROMPT_EXIT) == 0
    assert time.monotonic() - started < PROMPT_EXIT


def config(directory: Path, **basic: str) -> str:
    users = write_users(directory / "users.htpasswd", **PASSWORDS)
    (directory / "groups").write_text("staff: alice bob\n")
    (directory / "jwks.json").write_text(jwks_document(K1))
    return toml_text({
        "log": {"level": "info", "format": "json"},
        "basic": {"users_file": str(users), "groups_file": str(directory / "groups"),
                  "max_failures": 10000, **basic},
        "jwt": {"jwks_file": str(directory / "jwks.json"), "jwks_require_audience": [AUDIENCE]},
    })


# -- start-up ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("which", ["users", "groups", "jwks"])
def test_a_bad_file_at_start_up_is_a_configuration_error(
    tmp_path: Path, which: str, kind: str
) -> None:
    text = config(tmp_path)
    path = tmp_path / {"users": "users.htpasswd", "groups": "groups", "jwks": "jwks.json"}[which]
    make_bad(path, kind, CAPS[which])
    (tmp_path / "authproxy.toml").write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHPROXY_")}
    check = ["check-config", "--config", str(tmp_path / "authproxy.toml")]
    for command in (check, ["serve", *check[1:], "--listen", f"127.0.0.1:{free_port()}"]):
        done = subprocess.run([sys.executable, "-m", "authproxy", *command], env=env,
                              capture_output=True, text=True, timeout=DEADLINE, check=False)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert f"{path}: {KINDS[kind]}" in done.stderr, (command, done.stderr)


# -- reloads ----------------------------------------------------------------------------------


def reload_lines(proxy: Authproxy, outcome: str) -> list[dict[str, Any]]:
    return [e for e in events(proxy, "users_reload") if e.get("outcome") == outcome]


@pytest.mark.parametrize("trigger", ["sighup", "file_changed"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_bad_users_file_keeps_the_table_and_a_good_one_loads_again(
    tmp_path: Path, kind: str, trigger: str
) -> None:
    users = tmp_path / "users.htpasswd"
    with start_authproxy(config(tmp_path), [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        assert status(proxy, basic_auth("bob")) == 200
        make_bad(users, kind, MAX_USERS_FILE_BYTES)
        if trigger == "sighup":
            proxy.process.send_signal(signal.SIGHUP)  # the watcher may see the file first
        wait_until(lambda: any(e["trigger"] == trigger for e in reload_lines(proxy, "error")),
                   f"a failed reload ({trigger})", deadline=DEADLINE)
        [*_, failed] = [e for e in reload_lines(proxy, "error") if e["trigger"] == trigger]
        assert failed["error"] == f"{users}: cannot read: {KINDS[kind]}" + (
            f" {MAX_USERS_FILE_BYTES} bytes" if kind == "oversized" else
            " (a FIFO, device or directory)")
        assert scrape(proxy, "authproxy_user_table_reloads_total") >= 1
        assert status(proxy, basic_auth("bob")) == 200  # the old table stays

        # the watcher still works: a good file without bob is loaded, and bob is out
        replace_with(users, lambda p: write_users(p, alice=PASSWORDS["alice"]))
        wait_until(lambda: status(proxy, basic_auth("bob")) == 401, "bob removed",
                   deadline=DEADLINE)
        assert status(proxy, basic_auth("alice")) == 200
        assert reload_lines(proxy, "ok")
        stops_promptly(proxy)


def test_a_fifo_groups_file_keeps_the_groups_and_a_good_one_loads_again(tmp_path: Path) -> None:
    groups = tmp_path / "groups"
    with start_authproxy(config(tmp_path), [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        def allowed(user: str) -> bool:
            answer = http_request(f"http://{proxy.tcp_address}/auth?group=staff",
                                  headers=[basic_auth(user)])
            return answer.status == 200

        assert allowed("bob")
        make_bad(groups, "fifo", MAX_GROUPS_FILE_BYTES)
        wait_until(lambda: bool(reload_lines(proxy, "error")), "a failed reload", deadline=DEADLINE)
        assert f"{groups}: cannot read: not a regular file" in reload_lines(proxy, "error")[0]["error"]
        assert allowed("bob")
        replace_with(groups, lambda p: p.write_text("staff: alice\n"))
        wait_until(lambda: not allowed("bob"), "bob out of staff", deadline=DEADLINE)
        assert allowed("alice")
        stops_promptly(proxy)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "oversized"])
def test_a_bad_jwks_file_on_sighup_keeps_the_keys_and_a_good_one_loads_again(
    tmp_path: Path, kind: str
) -> None:
    jwks = tmp_path / "jwks.json"
    with start_authproxy(config(tmp_path), [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        assert status(proxy, bearer_auth(K1)) == 200
        make_bad(jwks, kind, MAX_JWKS_FILE_BYTES)
        proxy.process.send_signal(signal.SIGHUP)
        reason = "oversized" if kind == "oversized" else "not_regular_file"

        def failed() -> list[dict[str, object]]:
            return [e for e in events(proxy, "jwks_fetch")
                    if e.get("source") == "file" and e.get("outcome") == reason]

        wait_until(lambda: bool(failed()), "the failed JWKS file load", deadline=DEADLINE)
        assert failed()[0]["trigger"] == "sighup"
        text = http_request(f"http://{proxy.tcp_address}/metrics").body.decode()
        assert (f'authproxy_jwks_fetches_total{{outcome="{reason}",source="file",'
                'trigger="sighup"} 1.0') in text
        assert status(proxy, bearer_auth(K1)) == 200  # the old set stays

        replace_with(jwks, lambda p: p.write_text(jwks_document(K2)))
        proxy.process.send_signal(signal.SIGHUP)
        wait_until(lambda: status(proxy, bearer_auth(K2)) == 200, "K2 loaded", deadline=DEADLINE)
        assert status(proxy, bearer_auth(K1)) == 401
        stops_promptly(proxy)
