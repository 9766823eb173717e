"""Property tests of the config loader (fuzz target ``tests/fuzz/config.py``): the example
configs of the repository (README, deploy/) mutated key by key and value by value."""
from __future__ import annotations

import functools
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from authproxy import config as config_module
from tests.conftest import toml_text, write_users
from tests.fuzz import config
from tests.planted import assert_caught

ROOT = Path(__file__).parent.parent


@functools.cache
def examples() -> tuple[dict[str, dict[str, Any]], ...]:
    """The example configs: every ```toml block of the README, and the systemd unit's."""
    texts = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    texts.append((ROOT / "deploy/systemd/authproxy.toml").read_text())
    parsed = []
    for text in texts:
        try:
            parsed.append(tomllib.loads(text))
        except tomllib.TOMLDecodeError:
            continue  # a fragment, not a config
    return tuple(p for p in parsed if p and all(isinstance(v, dict) for v in p.values()))


@functools.cache
def users_file() -> str:
    """A real user table, so that mutated configs also load."""
    directory = Path(tempfile.mkdtemp(prefix="fuzz-config-users-"))
    return str(write_users(directory / "users.htpasswd", alice="pw"))


def test_the_examples_are_found() -> None:
    assert len(examples()) >= 2


VALUES = st.one_of(
    st.booleans(), st.integers(-2, 2), st.sampled_from([2**63, -(2**63), 10**30, 69632]),
    st.text(max_size=10), st.sampled_from(["", "auto", "unix:/tmp/x.sock", "127.0.0.1:0",
                                           "[::1]:9180", "https://idp.example/", "http://x",
                                           "RS256", "HS256", "a\x00b", "/dev/zero", "/",
                                           "basic:alice", "bearer:bob", "x:y", "0660"]),
    st.builds(users_file),
    st.lists(st.one_of(st.text(max_size=6), st.sampled_from(["RS256", "127.0.0.1/32",
                                                             "alice", "a\x00"])), max_size=3),
)


@st.composite
def mutated_configs(draw: st.DrawFn) -> bytes:
    sections = {name: dict(values) for name, values in draw(st.sampled_from(examples())).items()}
    if draw(st.booleans()):
        sections.setdefault("basic", {})["users_file"] = users_file()
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from([*sorted(sections), "jwt", "nosuch"]))
        table = sections.setdefault(section, {})
        how = draw(st.sampled_from(["set", "set", "drop", "unknown", "rename"]))
        name = draw(st.sampled_from(sorted(table))) if table else "listen"
        if how == "set":
            table[name] = draw(VALUES)
        elif how == "drop":
            table.pop(name, None)
        elif how == "unknown":
            table[draw(st.sampled_from(["nosuch", "Listen", "users-file", "issuers"]))] = 1
        elif name in table:
            table[name + draw(st.sampled_from(["s", "_", "X"]))] = table.pop(name)
    return toml_text(sections).encode()


@st.composite
def respelled_text(draw: st.DrawFn) -> bytes:
    """An example config's text with a few bytes changed: broken TOML, odd bytes."""
    data = bytearray(draw(mutated_configs()))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        data[at:at + draw(st.integers(0, 2))] = draw(st.binary(min_size=1, max_size=2))
    return bytes(data)


@given(st.binary(max_size=200))
def test_raw_bytes(data: bytes) -> None:
    config.check(data)


@given(mutated_configs())
@example(b'[basic]\nusers_file = "a\\u0000b"\n')  # ValueError: embedded null byte escaped
@example(b'[server]\nlisten = ["unix:/a\\u0000"]\n[basic]\nusers_file = "/etc/hostname"\n')
def test_mutated_examples(data: bytes) -> None:
    config.check(data)


@given(respelled_text())
@example(b"\xff[server]\n")  # UnicodeDecodeError escaped: tomllib decodes first
def test_respelled_examples(data: bytes) -> None:
    config.check(data)


def _without_cross_checks(found: config_module.Config) -> list[str]:
    """A planted bug: the cross-checks forgotten (a [jwt] checking neither iss nor aud)."""
    return []


def test_a_planted_missing_cross_check_is_caught(monkeypatch: Any) -> None:
    monkeypatch.setattr(config_module, "_cross_checks", _without_cross_checks)
    assert_caught(test_mutated_examples)
