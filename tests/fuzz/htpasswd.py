"""The user table's reader: ``users.parse_entries`` on a whole htpasswd file's bytes.

A file loads whole (every entry line a user of its own, its hash kind recognised) or is
refused with UserFileError; nothing else escapes and nothing is half-loaded. No hashing here
(``UserTable`` times and hashes, which a fuzzer cannot wait for): the property tests verify
real hashes on their own.
"""
from __future__ import annotations

import unicodedata

from authproxy.errors import UserFileError
from authproxy.htpasswd import users

# The scheme each prefix names (SPEC §6), written here rather than imported from authproxy, so
# that a prefix recognised as the wrong kind fails the target.
PREFIXES = (
    ("$2a$", "bcrypt"), ("$2b$", "bcrypt"), ("$2y$", "bcrypt"), ("$argon2id$", "argon2id"),
    ("$5$", "sha256_crypt"), ("$6$", "sha512_crypt"), ("$apr1$", "apr_md5"),
    ("{SHA}", "sha1"), ("{SSHA}", "ssha"),
)  # fmt: skip


def entry_lines(data: bytes) -> list[tuple[str, str]] | None:
    """The (user, hash text) of each line that is neither blank nor a comment, read the
    plain way; None if some line is not UTF-8 or has no ':' after a user."""
    entries = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
        except UnicodeDecodeError:
            return None
        if not text or text.startswith("#"):
            continue
        user, colon, rest = text.partition(":")
        if not colon or not user:
            return None
        entries.append((user, rest.split(":")[0]))
    return entries


def check(data: bytes) -> None:
    try:
        table = users.parse_entries("fuzz.htpasswd", data)
    except UserFileError as exc:
        assert str(exc).startswith("fuzz.htpasswd"), "a refusal names the file"
        assert exc.lineno is not None and exc.lineno >= 1, "a refusal names the line"
        return
    entries = entry_lines(data)
    assert entries is not None, "loaded a file with a line that is not 'user:hash'"
    # Whole: one user per entry line, none dropped, none twice, none invented.
    assert [user for user, _ in entries] == list(table), "a partial or reordered table"
    for user, text in entries:
        assert ":" not in user
        assert not any(unicodedata.category(c) == "Cc" for c in user), "control character"
        stored = table[user]
        assert stored.value == text
        kind = next((s for prefix, s in PREFIXES if text.startswith(prefix)), None)
        assert kind is not None and stored.scheme == kind, "hash kind misrecognised"
