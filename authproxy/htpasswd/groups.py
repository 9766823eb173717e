"""Groups of Basic users: Apache ``AuthGroupFile`` format, ``group: user1 user2`` a line."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping

from ..core.identity import sendable_group
from ..errors import UserFileError
from ..regularfile import MAX_GROUPS_FILE_BYTES, read_regular_file


def load_groups(path: str | os.PathLike[str]) -> Mapping[str, frozenset[str]]:
    """Read a groups file into ``user -> groups``; raise UserFileError naming file and line.

    A group may span several lines (Apache allows it); blank lines and ``#`` comments are
    skipped. A group name that X-Auth-Groups could not carry as itself (a comma, a control
    character) is an error, like a member name with a control character (no user can have
    one) or a line that does not parse: the old groups stay in use.
    """
    try:
        data = read_regular_file(path, MAX_GROUPS_FILE_BYTES)
    except OSError as exc:
        raise UserFileError(os.fspath(path), None, f"cannot read: {exc.strerror}") from None
    try:
        # universal newlines, as open() in text mode reads them; a BOM, as the user table allows
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UserFileError(os.fspath(path), None, "cannot read: not UTF-8") from None
    members: dict[str, set[str]] = {}
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        group, colon, users = text.partition(":")
        group = group.strip()
        if not colon or not group or any(c.isspace() for c in group):
            raise UserFileError(os.fspath(path), lineno, "expected 'group: user1 user2'")
        if not sendable_group(group):
            # X-Auth-Groups is comma-joined: "x,admins" would read as the group admins
            raise UserFileError(os.fspath(path), lineno,
                                "a group name cannot hold ',' or a control character")
        names = users.split()
        if any(unicodedata.category(c) == "Cc" for name in names for c in name):
            # the user table refuses such a name, so it could only ever be a broken line
            raise UserFileError(os.fspath(path), lineno,
                                "a member name cannot hold a control character")
        for user in names:
            members.setdefault(user, set()).add(group)
    return {user: frozenset(groups) for user, groups in members.items()}
