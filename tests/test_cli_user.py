"""`authproxy user add|delete|list` as an operator runs it, checked with Apache's htpasswd."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from authproxy.cli import main
from authproxy.htpasswd.users import UserTable

from .conftest import htpasswd_verify


def run(argv: list[str], stdin: bytes, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    return main(argv)


def test_add_list_replace_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users"
    assert run(["user", "add", str(path), "alice", "--password-stdin"], b"s3cret\n", monkeypatch) == 0
    assert path.stat().st_mode & 0o777 == 0o640
    # exactly one trailing newline was stripped, nothing else
    assert htpasswd_verify(path, "alice", "s3cret") == 0
    assert run(["user", "add", str(path), "bob", "--password-stdin"], b"two\n\n", monkeypatch) == 0
    assert htpasswd_verify(path, "bob", "two\n") == 0
    assert run(["user", "add", str(path), "alice", "--password-stdin"], b"new", monkeypatch) == 0
    assert "Updating password for user alice" in capsys.readouterr().out
    assert htpasswd_verify(path, "alice", "new") == 0 and not htpasswd_verify(path, "alice", "s3cret") == 0
    assert run(["user", "list", str(path)], b"", monkeypatch) == 0
    assert capsys.readouterr().out.split() == ["alice", "bob"]
    assert run(["user", "delete", str(path), "bob"], b"", monkeypatch) == 0
    assert run(["user", "delete", str(path), "bob"], b"", monkeypatch) == 1
    assert UserTable.load(path).users() == {"alice"}


def test_argon2id_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users"
    argv = ["user", "add", str(path), "carol", "--scheme", "argon2id", "--password-stdin"]
    assert run(argv, b"pw\n", monkeypatch) == 0
    entry = UserTable.load(path).get("carol")
    assert entry is not None and entry.value.startswith("$argon2id$")
    entry.verify(b"pw")


def test_bad_user_names_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users"
    assert run(["user", "add", str(path), "a:b", "--password-stdin"], b"pw", monkeypatch) == 1
    assert "authproxy:" in capsys.readouterr().err
    assert not path.exists()


def test_password_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users"
    assert run(["user", "add", str(path), "dave", "--password-stdin"], b"hunter2-secret\n",
               monkeypatch) == 0
    out = capsys.readouterr()
    assert "hunter2-secret" not in out.out + out.err


@pytest.mark.parametrize("argv", [["user"], ["user", "add"], ["serve", "--bogus"]])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2


def test_dev_issuer_refuses_to_serve_on_a_unix_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its URL goes into tokens and the JWKS location: it must be HOST:PORT (before, a unix
    address made it serve on every interface, at a random port)."""
    argv = ["dev-issuer", "serve", "--dir", str(tmp_path), "--listen", f"unix:{tmp_path}/i.sock"]
    assert main(argv) == 2
    assert "not a unix socket" in capsys.readouterr().err
