"""Editing an htpasswd file for ``authproxy user add|delete|list``.

Edits are surgical: only the named user's line changes; comments, blank lines and lines this
module cannot read are written back byte for byte. Every change is an atomic rewrite.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import unicodedata

import bcrypt
from argon2 import PasswordHasher

from .users import BCRYPT_COST, BCRYPT_MAX_PASSWORD, parse_hash, split_entry

_MAX_USER_BYTES = 255
_NEW_FILE_MODE = 0o640




def hash_password(password: bytes, scheme: str = "bcrypt") -> str:
    """Hash a new password: ``$2y$`` bcrypt at cost 10 (as Apache writes it) or argon2id.

    Raises ValueError for another scheme, and for a bcrypt password that bcrypt would not
    store whole: over 72 bytes, or containing NUL (Apache's C bcrypt stops there).
    """
    if scheme == "bcrypt":
        if len(password) > BCRYPT_MAX_PASSWORD:
            raise ValueError("bcrypt uses only the first 72 bytes of a password; use argon2id")
        if b"\0" in password:
            raise ValueError("a bcrypt password cannot contain NUL bytes")
        hashed = bcrypt.hashpw(password, bcrypt.gensalt(BCRYPT_COST)).decode("ascii")
        # gensalt writes $2b$; $2y$ is the same algorithm under the prefix htpasswd uses.
        text = "$2y$" + hashed.removeprefix("$2b$")
    elif scheme == "argon2id":
        text = PasswordHasher().hash(password)
    else:
        raise ValueError(f"unsupported scheme {scheme!r}: use bcrypt or argon2id")
    return parse_hash(text).value


def add_user(
    path: str | os.PathLike[str], user: str, password: bytes, scheme: str = "bcrypt"
) -> bool:
    """Set ``user``'s password; return True if it replaced an existing entry.

    An existing entry keeps its place (and any ``:comment``); later duplicates of it are
    dropped; a new user is appended. A missing file is created with mode 0640. Raises
    ValueError for an invalid user name or password, OSError if the file cannot be written.
    """
    _check_user_name(user)
    entry = f"{user}:{hash_password(password, scheme)}".encode()
    target = os.path.realpath(path)
    try:
        lines, old = _read_lines(target)
    except FileNotFoundError:
        lines, old = [b""], None
    found = [i for i, line in enumerate(lines) if _entry_user(line) == user]
    if found:
        lines[found[0]] = _replace_hash(lines[found[0]], entry)
        lines = [line for i, line in enumerate(lines) if i not in found[1:]]
    else:
        if lines[-1]:
            lines.append(b"")
        crlf = len(lines) > 1 and lines[0].endswith(b"\r")
        lines.insert(len(lines) - 1, entry + b"\r" if crlf else entry)
    _write_atomic(target, b"\n".join(lines), old)
    return bool(found)


def delete_user(path: str | os.PathLike[str], user: str) -> bool:
    """Remove every entry of ``user``; return False (and leave the file alone) if absent.

    Raises OSError if the file cannot be read or written.
    """
    target = os.path.realpath(path)
    lines, old = _read_lines(target)
    kept = [line for line in lines if _entry_user(line) != user]
    if len(kept) == len(lines):
        return False
    _write_atomic(target, b"\n".join(kept), old)
    return True


def list_users(path: str | os.PathLike[str]) -> list[str]:
    """The users in the file, in file order, each once. Raises OSError if unreadable."""
    lines, _ = _read_lines(os.path.realpath(path))
    users = (_entry_user(line) for line in lines)
    return list(dict.fromkeys(user for user in users if user is not None))


def _check_user_name(user: str) -> None:
    try:
        size = len(user.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("user name is not valid Unicode") from None
    if not user or size > _MAX_USER_BYTES:
        raise ValueError("user name must be 1 to 255 bytes of UTF-8")
    if ":" in user:
        raise ValueError("user name cannot contain ':'")
    if any(unicodedata.category(c) == "Cc" for c in user):
        raise ValueError("user name cannot contain control characters")
    # The reader strips lines and skips '#' lines, so such a name would not read back.
    if user != user.strip() or user.startswith("#"):
        raise ValueError("user name cannot start with '#' or start or end with whitespace")


def _entry_user(line: bytes) -> str | None:
    """The user an entry line defines; None for comments, blanks and unreadable lines."""
    try:
        entry = split_entry(line.decode("utf-8-sig"))
    except ValueError:
        return None
    return None if entry is None else entry[0]


def _replace_hash(line: bytes, entry: bytes) -> bytes:
    """``entry`` in place of ``line``, keeping the line's ``:comment`` and CR ending."""
    fields = line.decode("utf-8-sig").strip().split(":", 2)
    comment = b":" + fields[2].encode() if len(fields) == 3 else b""
    return entry + comment + (b"\r" if line.endswith(b"\r") else b"")


def _read_lines(target: str) -> tuple[list[bytes], os.stat_result]:
    # Split on "\n" only, as users.UserTable does, so a lone CR stays inside its line.
    with open(target, "rb") as fh:
        return fh.read().split(b"\n"), os.fstat(fh.fileno())


def _write_atomic(target: str, data: bytes, old: os.stat_result | None) -> None:
    """Replace ``target`` with ``data`` so readers see the old or the new file, never half."""
    directory, name = os.path.split(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fd, _NEW_FILE_MODE if old is None else stat.S_IMODE(old.st_mode))
            if old is not None:
                _keep_owner(fd, old)
            os.fsync(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keep_owner(fd: int, old: os.stat_result) -> None:
    # The server often reads the file through its group (root:authproxy 0640); a rewrite by
    # root must not reset that. Without the privilege to chown, the new file stays ours.
    uid = -1 if old.st_uid == os.geteuid() else old.st_uid
    with contextlib.suppress(PermissionError):
        os.fchown(fd, uid, old.st_gid)
