"""The groups file's reader: ``groups.load_groups`` on a file holding the fuzzed bytes.

A file loads whole (every member of every line in each of its groups) or is refused with
UserFileError; group names are what X-Auth-Groups can carry as themselves, member names have
no control character.
"""
from __future__ import annotations

import unicodedata

from authproxy.errors import UserFileError
from authproxy.htpasswd import groups
from tests.fuzz import as_file


def expected_members(data: bytes) -> dict[str, set[str]] | None:
    """user -> groups, read the plain way; None if a line has no 'group:'."""
    members: dict[str, set[str]] = {}
    for line in data.decode("utf-8-sig").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        group, colon, names = text.partition(":")
        if not colon:
            return None
        for name in names.split():
            members.setdefault(name, set()).add(group.strip())
    return members


def check(data: bytes) -> None:
    path = as_file("groups", data)
    try:
        loaded = groups.load_groups(path)
    except UserFileError as exc:
        assert str(exc).startswith(path), "a refusal names the file"
        return
    expected = expected_members(data)
    assert expected is not None, "loaded a line that is not 'group: members'"
    assert {user: set(names) for user, names in loaded.items()} == expected, "partial groups"
    for user, names in loaded.items():
        assert user and not any(unicodedata.category(c) == "Cc" or c.isspace() for c in user)
        for group in names:
            assert group and group == group.strip() and "," not in group
            assert not any(c.isspace() for c in group), "a group name with a space"
            assert not any(c < " " or c == "\x7f" for c in group), "control character"
