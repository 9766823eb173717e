"""Property tests of the htpasswd reader (fuzz target ``tests/fuzz/htpasswd.py``), and of the
user table it builds: real hashes (Apache's htpasswd, pyca/bcrypt, passlib) verify their
password and nothing else; garbage never verifies."""
from __future__ import annotations

import functools
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from passlib.hash import sha256_crypt

from authproxy.htpasswd import users
from authproxy.htpasswd.users import PasswordHash, PasswordMismatch, UserTable, parse_hash
from tests.conftest import apache_htpasswd, bcrypt_hash, htpasswd_verify
from tests.fuzz import htpasswd
from tests.planted import assert_caught

PASSWORD = "correct horse"


@functools.cache
def real_hashes() -> tuple[str, ...]:
    """One hash of PASSWORD per kind, made by what operators make them with."""
    made = [apache_htpasswd("-nb", *flag, "u", PASSWORD).stdout.strip().partition(":")[2]
            for flag in (["-m"], ["-s"], ["-5", "-r", "1000"], ["-B", "-C", "4"])]
    return (*made, bcrypt_hash(PASSWORD), sha256_crypt.using(rounds=1000).hash(PASSWORD))


def test_real_hashes_are_each_kind() -> None:
    kinds = {parse_hash(text).scheme for text in real_hashes()}
    assert kinds == {"apr_md5", "sha1", "sha512_crypt", "bcrypt", "sha256_crypt"}


user_names = st.text(st.characters(codec="utf-8"), min_size=0, max_size=8)
names_from_alphabet = st.text("ab:# \t\r\x00\x7f\x85\u2028\ufeff", min_size=0, max_size=4)


@st.composite
def hash_texts(draw: st.DrawFn) -> str:
    """A real hash, one with a character changed, a bare prefix or junk."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.sampled_from(real_hashes()))
    if choice == 1:
        return draw(mutated_hashes())
    if choice == 2:
        return draw(st.sampled_from([p for p, _ in htpasswd.PREFIXES])) + draw(
            st.text(string.printable, max_size=30))
    return draw(st.text(max_size=20))


@st.composite
def mutated_hashes(draw: st.DrawFn) -> str:
    """A real hash with one of its last 22 characters (salt and checksum, never the cost)
    replaced, deleted or doubled."""
    text = draw(st.sampled_from(real_hashes()))
    at = draw(st.integers(len(text) - 22, len(text) - 1))
    how = draw(st.sampled_from(["replace", "delete", "insert"]))
    char = draw(st.sampled_from(string.ascii_letters + string.digits + "./+=$"))
    if how == "replace":
        return text[:at] + char + text[at + 1:]
    if how == "delete":
        return text[:at] + text[at + 1:]
    return text[:at] + char + text[at:]


@st.composite
def htpasswd_files(draw: st.DrawFn) -> bytes:
    """Lines of a plausible file: entries (some duplicate, some odd names), comments, blanks,
    CRLF endings, a BOM, a ':comment' after the hash, non-UTF-8 bytes."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append(b"# " + draw(st.binary(max_size=10)))
        elif kind == 1:
            lines.append(draw(st.sampled_from([b"", b"  ", b"\t", b"\r", b"\x0b"])))
        elif kind == 2:
            lines.append(draw(st.binary(max_size=20)))
        else:
            user = draw(st.one_of(st.sampled_from(["alice", "bob"]), user_names,
                                  names_from_alphabet))
            line = f"{user}:{draw(hash_texts())}"
            if draw(st.booleans()):
                line += ":" + draw(st.text(max_size=5))
            lines.append(draw(st.sampled_from(["", " ", "\ufeff"])).encode() + line.encode()
                         + draw(st.sampled_from([b"", b"\r", b" "])))
    return b"\n".join(lines)


@given(st.binary(max_size=300))
def test_raw_bytes(data: bytes) -> None:
    htpasswd.check(data)


@given(htpasswd_files())
@example(b"ali\x01ce:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=")  # loaded a user X-Auth-User can't carry
@example(b"al\rice:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=")  # ... a lone CR inside a line
@example(b"alice:$5$saltsaltsaltsaltsalt")  # a SHA-crypt setting, no checksum: passlib
@example(b"alice:$6$rounds=10$abc")  # ... read it leniently and warned (PasslibHashWarning)
def test_grammar_files(data: bytes) -> None:
    htpasswd.check(data)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow,
                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(range(6)), min_size=1, max_size=3, unique=True),
       st.text(string.ascii_letters + string.digits + " !#%&", min_size=0, max_size=12))
def test_real_hashes_verify_their_password_only(tmp_path: Path, kinds: list[int],
                                                 other: str) -> None:
    """A file of real hashes, loaded whole: each user's password verifies, any other does
    not; Apache's own htpasswd -v agrees on both."""
    path = tmp_path / "users.htpasswd"
    entries = {f"user{i}": real_hashes()[i] for i in kinds}
    path.write_text("".join(f"{user}:{text}\n" for user, text in entries.items()))
    table = UserTable.load(path)
    assert table.users() == set(entries)
    user = next(iter(entries))
    stored = table.get(user)
    assert stored is not None
    stored.verify(PASSWORD.encode())
    if other != PASSWORD:
        with pytest.raises(PasswordMismatch):
            stored.verify(other.encode())
        assert htpasswd_verify(path, user, other) == 3
    assert htpasswd_verify(path, user, PASSWORD) == 0


@given(st.one_of(mutated_hashes(), st.text(max_size=40)), st.binary(max_size=20))
def test_garbage_never_verifies(text: str, password: bytes) -> None:
    """Text that is not a real hash is refused by parse_hash or, recognised, verifies neither
    the real hash's password nor any other; and whatever the text, verify only ever raises
    PasswordMismatch."""
    try:
        parsed: PasswordHash | None = parse_hash(text)
    except ValueError:
        parsed = None
    if parsed is not None and text not in real_hashes():
        with pytest.raises(PasswordMismatch):
            parsed.verify(PASSWORD.encode())
    for scheme in {s for _, s in htpasswd.PREFIXES} - {"argon2id"}:
        with pytest.raises(PasswordMismatch):
            PasswordHash(scheme, text).verify(password)


def _skipping_parse_entries(name: str, data: bytes) -> dict[str, PasswordHash]:
    """A planted bug: a reader that skips the lines it cannot read (a partial table)."""
    hashes: dict[str, PasswordHash] = {}
    for raw in data.split(b"\n"):
        try:
            entry = users.split_entry(raw.decode("utf-8"))
            if entry is not None and entry[0] not in hashes:
                hashes[entry[0]] = users.parse_hash(entry[1])
        except ValueError:
            continue
    return hashes


def test_a_planted_partial_table_is_caught(monkeypatch: Any) -> None:
    monkeypatch.setattr(users, "parse_entries", _skipping_parse_entries)
    assert_caught(test_grammar_files)


def _plaintext_parse_hash(text: str) -> PasswordHash:
    """A planted bug: an unknown hash taken as plaintext rather than refused."""
    try:
        return parse_hash(text)
    except ValueError:
        return PasswordHash("plain", text)


def test_a_planted_plaintext_hash_is_caught(monkeypatch: Any) -> None:
    monkeypatch.setattr(users, "parse_hash", _plaintext_parse_hash)
    assert_caught(test_grammar_files)
