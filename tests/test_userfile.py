"""Editing htpasswd files: surgical, atomic, and readable by Apache's htpasswd."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher, extract_parameters

from authproxy.htpasswd.userfile import add_user, delete_user, hash_password, list_users
from authproxy.htpasswd.users import PasswordHash, PasswordMismatch, UserTable, parse_hash

from .conftest import APACHE_APR1, apache_htpasswd, htpasswd_verify

# Everything an edit must leave alone: comments, blanks, CRLF, junk and entries it cannot read.
ORIGINAL = (
    b"# managed by hand\n"
    b"\n"
    b"alice:" + APACHE_APR1.encode() + b"\n"
    b"   # indented comment with trailing space \r\n"
    b"this line is not an entry\n"
    b"bob:" + APACHE_APR1.encode() + b":Bob Builder, room 4\n"
    b"carol:{PLAIN}legacy\n"
    b"\xff\xfe not utf-8\n"
    b"erin:" + APACHE_APR1.encode() + b"\n"
)


@pytest.fixture
def htfile(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_bytes(ORIGINAL)
    path.chmod(0o604)
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


def entry_hash(path: Path, user: str) -> PasswordHash:
    """The hash on ``user``'s line, for files that also hold lines UserTable refuses."""
    prefix = user.encode() + b":"
    line = next(line for line in lines(path) if line.startswith(prefix))
    return parse_hash(line[len(prefix) :].decode().partition(":")[0])


def test_add_creates_file_0640_that_htpasswd_verifies(tmp_path: Path) -> None:
    path = tmp_path / "new"
    assert add_user(path, "alice", b"s3cret pw") is False
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.read_bytes().startswith(b"alice:$2y$10$")
    assert path.read_bytes().endswith(b"\n")
    assert htpasswd_verify(path, "alice", "s3cret pw") == 0
    assert htpasswd_verify(path, "alice", "s3cret pX") == 3
    assert os.listdir(tmp_path) == ["new"]


def test_add_appends_keeping_every_other_byte(htfile: Path) -> None:
    assert add_user(htfile, "dave", b"dave's pw") is False
    data = htfile.read_bytes()
    assert data.startswith(ORIGINAL)
    assert data[len(ORIGINAL) :].startswith(b"dave:$2y$10$")
    assert data.count(b"\n") == ORIGINAL.count(b"\n") + 1
    entry_hash(htfile, "dave").verify(b"dave's pw")


def test_replace_changes_only_that_line_and_keeps_its_comment(htfile: Path) -> None:
    before = lines(htfile)
    inode = htfile.stat().st_ino
    assert add_user(htfile, "bob", b"new bob pw") is True
    after = lines(htfile)
    assert len(after) == len(before)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert changed == [5]
    assert after[5].startswith(b"bob:$2y$10$")
    assert after[5].endswith(b":Bob Builder, room 4")
    entry_hash(htfile, "bob").verify(b"new bob pw")
    assert stat.S_IMODE(htfile.stat().st_mode) == 0o604
    assert htfile.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert sorted(os.listdir(htfile.parent)) == ["users"]


def test_replace_in_htpasswd_made_file_verifies_with_htpasswd(tmp_path: Path) -> None:
    path = tmp_path / "users"
    assert apache_htpasswd("-cbB", str(path), "alice", "old pw").returncode == 0
    assert apache_htpasswd("-bB", str(path), "bob", "old pw").returncode == 0
    assert add_user(path, "alice", b"new pw") is True
    assert htpasswd_verify(path, "alice", "new pw") == 0
    assert htpasswd_verify(path, "alice", "old pw") == 3
    assert htpasswd_verify(path, "bob", "old pw") == 0
    assert delete_user(path, "alice") is True
    assert htpasswd_verify(path, "alice", "new pw") == 6  # user not found


def test_delete_removes_exactly_one_line(htfile: Path) -> None:
    assert delete_user(htfile, "alice") is True
    assert htfile.read_bytes() == ORIGINAL.replace(b"alice:" + APACHE_APR1.encode() + b"\n", b"")
    assert stat.S_IMODE(htfile.stat().st_mode) == 0o604


def test_delete_absent_user_leaves_file_untouched(htfile: Path) -> None:
    before = htfile.stat()
    assert delete_user(htfile, "nobody") is False
    assert delete_user(htfile, "this line is not an entry") is False
    assert htfile.read_bytes() == ORIGINAL
    assert (htfile.stat().st_ino, htfile.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_list_users_in_file_order(htfile: Path) -> None:
    assert list_users(htfile) == ["alice", "bob", "carol", "erin"]


def test_missing_file_for_list_and_delete_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list_users(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        delete_user(tmp_path / "missing", "alice")
    assert not (tmp_path / "missing").exists()


def test_argon2id_entry_reads_back_through_user_table(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "alice", b"pw one")
    add_user(path, "bob", b"x" * 100, scheme="argon2id")
    h = UserTable.load(path).get("bob")
    assert h is not None and h.scheme == "argon2id"
    assert extract_parameters(h.value) == extract_parameters(PasswordHasher().hash("x"))
    h.verify(b"x" * 100)
    with pytest.raises(PasswordMismatch):
        h.verify(b"x" * 99)


def test_crlf_file_gets_crlf_entry_and_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"# windows\r\nalice:" + APACHE_APR1.encode() + b"\r\n")
    add_user(path, "bob", b"pw", scheme="argon2id")
    assert path.read_bytes().startswith(b"# windows\r\nalice:" + APACHE_APR1.encode() + b"\r\nbob:")
    assert path.read_bytes().endswith(b"\r\n")
    assert UserTable.load(path).users() == {"alice", "bob"}


def test_file_without_final_newline_keeps_its_last_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"alice:" + APACHE_APR1.encode())
    add_user(path, "bob", b"pw")
    assert lines(path)[0] == b"alice:" + APACHE_APR1.encode()
    assert list_users(path) == ["alice", "bob"]


def test_replacing_a_duplicated_user_leaves_a_loadable_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(f"alice:{APACHE_APR1}\n# keep\nalice:{APACHE_APR1}\nbob:{APACHE_APR1}\n".encode())
    assert add_user(path, "alice", b"fresh") is True
    table = UserTable.load(path)
    assert list_users(path) == ["alice", "bob"]
    assert b"# keep\n" in path.read_bytes()
    table.get("alice").verify(b"fresh")  # type: ignore[union-attr]


def test_edit_through_symlink_updates_target(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.write_bytes(ORIGINAL)
    link = tmp_path / "link"
    link.symlink_to(target)
    add_user(link, "dave", b"pw")
    assert link.is_symlink()
    assert list_users(target)[-1] == "dave"


@pytest.mark.parametrize(
    "user",
    ["", "a:b", "a\nb", "tab\there", "del\x7f", "\x85nel", " lead", "trail ", "#hash", "x" * 256,
     "é" * 128, "bad\udcffsurrogate"],
)  # fmt: skip
def test_invalid_user_names_are_refused_before_touching_the_file(
    htfile: Path, tmp_path: Path, user: str
) -> None:
    with pytest.raises(ValueError):
        add_user(htfile, user, b"pw")
    with pytest.raises(ValueError):
        add_user(tmp_path / "never", user, b"pw")
    assert htfile.read_bytes() == ORIGINAL
    assert not (tmp_path / "never").exists()


def test_longest_and_non_ascii_user_names_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "x" * 255, b"pw")
    add_user(path, "jürgen", b"pw")
    assert list_users(path) == ["x" * 255, "jürgen"]


@pytest.mark.parametrize(
    ("password", "scheme"),
    [(b"x" * 73, "bcrypt"), (b"nul\x00inside", "bcrypt"), (b"pw", "sha1"), (b"pw", "md5")],
)
def test_hash_password_refuses(password: bytes, scheme: str) -> None:
    with pytest.raises(ValueError):
        hash_password(password, scheme)


def test_hash_password_bcrypt_takes_exactly_72_bytes(tmp_path: Path) -> None:
    text = hash_password(b"y" * 72)
    assert text.startswith("$2y$10$")
    path = tmp_path / "users"
    path.write_text(f"alice:{text}\n")
    assert htpasswd_verify(path, "alice", "y" * 72) == 0
    assert htpasswd_verify(path, "alice", "y" * 71) == 3


def test_failed_rewrite_keeps_old_file_and_leaves_no_temp(
    htfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        add_user(htfile, "dave", b"pw")
    assert htfile.read_bytes() == ORIGINAL
    assert os.listdir(htfile.parent) == ["users"]
