"""Property tests of the groups file's reader (fuzz target ``tests/fuzz/groups.py``)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from authproxy.core.identity import sendable_group
from authproxy.htpasswd import groups as groups_module
from tests.fuzz import groups
from tests.planted import assert_caught

names = st.one_of(st.sampled_from(["admins", "ops", "alice", "bob"]),
                  st.text("ab,:# \t\x00\x01\x7f\x85\u00a0\u2028", max_size=4),
                  st.text(st.characters(codec="utf-8"), max_size=6))


@st.composite
def group_files(draw: st.DrawFn) -> bytes:
    """Lines of a plausible groups file: 'group: members' (odd names among them), groups
    spanning lines, comments, blanks, CRLF or CR endings, a BOM, non-UTF-8 bytes."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 7))
        if kind == 0:
            lines.append("# " + draw(st.text(max_size=8)))
        elif kind == 1:
            lines.append(draw(st.sampled_from(["", " ", "\t"])))
        else:
            members = draw(st.lists(names, max_size=4))
            sep = draw(st.sampled_from([" ", "  ", "\t", ","]))
            colon = draw(st.sampled_from([":", ": ", " : ", ""]))
            lines.append(draw(names) + colon + sep.join(members))
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    data = (draw(st.sampled_from(["", "\ufeff"])) + ending.join(lines)).encode()
    if draw(st.integers(0, 9)) == 0:
        data += draw(st.binary(min_size=1, max_size=4))
    return data


@given(st.binary(max_size=200))
def test_raw_bytes(data: bytes) -> None:
    groups.check(data)


@given(group_files())
@example(b"admins: al\x01ice")  # a member no user can be: refused, as the user table refuses it
def test_grammar_files(data: bytes) -> None:
    groups.check(data)


def _skipping_load_groups(path: str | os.PathLike[str]) -> Mapping[str, frozenset[str]]:
    """A planted bug: a reader that skips the lines it cannot read (partial groups)."""
    members: dict[str, set[str]] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            group, colon, users = line.strip().partition(":")
            if not colon or not sendable_group(group.strip()):
                continue
            for user in users.split():
                members.setdefault(user, set()).add(group.strip())
    return {user: frozenset(names) for user, names in members.items()}


def test_a_planted_partial_groups_file_is_caught(monkeypatch: Any) -> None:
    monkeypatch.setattr(groups_module, "load_groups", _skipping_load_groups)
    assert_caught(test_grammar_files)
