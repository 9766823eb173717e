"""The user table: hashes made by Apache's htpasswd and by libraries, and file errors."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import bcrypt
import pytest
from argon2 import PasswordHasher, Type, extract_parameters

from authproxy.errors import UserFileError
from authproxy.htpasswd.users import (
    PasswordHash,
    PasswordMismatch,
    UserTable,
    dummy_for,
    parse_hash,
)

from .conftest import APACHE_APR1, apache_htpasswd

PASSWORD = "myPassword"
LONG_PASSWORD = "0123456789" * 8  # 80 bytes: bcrypt only reads the first 72

# Vectors published in Apache's docs (docs/manual/misc/password_encryptions.xml).
APACHE_BCRYPT = "$2y$05$c4WoMPo3SXsafkva.HHa6uXQZWr7oboPiC2bT/r7q1BB8I2s0BRqC"
APACHE_SHA = "{SHA}VBPuJHI7uixaa6LQGWx4s+5GKNE="

ODD_PASSWORDS = [
    b"",
    b"\x00",
    b"a\x00b",
    b"\xff\xfe\x80",
    "é".encode(),
    b"x" * 5000,
    b"y" * 100_000,
]


def htpasswd_file(path: Path, *flags: str, user: str = "alice", password: str = PASSWORD) -> Path:
    result = apache_htpasswd("-c", "-b", *flags, str(path), user, password)
    assert result.returncode == 0, result.stderr
    return path


def ssha(password: bytes, salt: bytes) -> str:
    """OpenLDAP's {SSHA}: base64(sha1(password + salt) + salt)."""
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password + salt).digest() + salt).decode()


def argon2id(
    password: str = PASSWORD,
    *,
    time_cost: int = 1,
    memory_cost: int = 8192,
    parallelism: int = 1,
    hash_len: int = 32,
    salt_len: int = 16,
) -> str:
    """A cheap argon2id hash made by argon2-cffi."""
    hasher = PasswordHasher(time_cost, memory_cost, parallelism, hash_len, salt_len)
    return hasher.hash(password)


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(
    ("flags", "scheme", "prefix"),
    [
        (("-B",), "bcrypt", "$2y$05$"),
        (("-B", "-C", "10"), "bcrypt", "$2y$10$"),
        (("-m",), "apr_md5", "$apr1$"),
        (("-s",), "sha1", "{SHA}"),
        (("-2",), "sha256_crypt", "$5$"),
        (("-5",), "sha512_crypt", "$6$"),
        (("-5", "-r", "10000"), "sha512_crypt", "$6$rounds=10000$"),
    ],
)
def test_htpasswd_files_verify(
    tmp_path: Path, flags: tuple[str, ...], scheme: str, prefix: str
) -> None:
    table = UserTable.load(htpasswd_file(tmp_path / "users", *flags))
    h = table.get("alice")
    assert h is not None
    assert (h.scheme, h.value[: len(prefix)]) == (scheme, prefix)
    h.verify(PASSWORD.encode())
    with pytest.raises(PasswordMismatch):
        h.verify(b"mypassword")


@pytest.mark.parametrize("text", [APACHE_BCRYPT, APACHE_APR1, APACHE_SHA])
def test_apache_documented_vectors(text: str) -> None:
    parse_hash(text).verify(PASSWORD.encode())
    with pytest.raises(PasswordMismatch):
        parse_hash(text).verify(PASSWORD.encode() + b"!")


@pytest.mark.parametrize("variant", ["$2a$", "$2b$", "$2y$"])
def test_bcrypt_prefix_variants_verify(variant: str) -> None:
    made = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    h = parse_hash(variant + made[4:])
    h.verify(PASSWORD.encode())
    with pytest.raises(PasswordMismatch):
        h.verify(b"other")


@pytest.mark.parametrize("salt", [b"\x01\x02\x03\x04", b"saltsalt"])
def test_ssha_openldap_style(salt: bytes) -> None:
    h = parse_hash(ssha(PASSWORD.encode(), salt))
    assert h.scheme == "ssha"
    h.verify(PASSWORD.encode())
    with pytest.raises(PasswordMismatch):
        h.verify(PASSWORD.encode() + salt)


def test_argon2id_from_argon2_cffi() -> None:
    h = parse_hash(argon2id())
    assert h.scheme == "argon2id"
    h.verify(PASSWORD.encode())
    with pytest.raises(PasswordMismatch):
        h.verify(b"wrong")


def test_bcrypt_long_password_counts_first_72_bytes_like_apache(tmp_path: Path) -> None:
    path = htpasswd_file(tmp_path / "users", "-B", password=LONG_PASSWORD)
    h = UserTable.load(path).get("alice")
    assert h is not None
    full = LONG_PASSWORD.encode()
    for same in (full, full[:72], full[:72] + b"different tail", full[:72] + b"z" * 100_000):
        h.verify(same)
    for other in (full[:71], full[:71] + b"X" + full[72:]):
        with pytest.raises(PasswordMismatch):
            h.verify(other)
    # Apache agrees: only the first 72 bytes were stored.
    assert apache_htpasswd("-v", "-b", str(path), "alice", LONG_PASSWORD[:72]).returncode == 0


@pytest.mark.parametrize(
    "text",
    [
        APACHE_BCRYPT,
        APACHE_APR1,
        APACHE_SHA,
        "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
        ssha(PASSWORD.encode(), b"salt"),
        argon2id(),
    ],
)
def test_odd_passwords_only_ever_mismatch(text: str) -> None:
    h = parse_hash(text)
    for password in ODD_PASSWORDS:
        with pytest.raises(PasswordMismatch):
            h.verify(password)


def test_sha256_crypt_reference_vector() -> None:
    # Test vector 1 of the SHA-crypt specification; `openssl passwd -5` agrees.
    parse_hash("$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5").verify(b"Hello world!")


@pytest.mark.parametrize(
    "text",
    [
        PASSWORD,  # plaintext
        "rqXexS6ZhobKA",  # DES crypt
        "$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0",  # md5-crypt
        "{PLAIN}" + PASSWORD,
        PasswordHasher(type=Type.I, time_cost=1, memory_cost=8192, parallelism=1).hash("x"),
        PasswordHasher(type=Type.D, time_cost=1, memory_cost=8192, parallelism=1).hash("x"),
        APACHE_BCRYPT[:-1],  # one character short
        APACHE_BCRYPT + "A",
        APACHE_BCRYPT.replace("$05$", "$99$"),
        APACHE_BCRYPT.replace("$05$", "$03$"),
        APACHE_BCRYPT[:28] + "Z" + APACHE_BCRYPT[29:],  # non-canonical last salt character
        "$2x$" + APACHE_BCRYPT[4:],
        "$5$saltonly",  # a crypt setting, no checksum
        "$6$rounds=10$saltsalt$" + "a" * 86,
        APACHE_APR1[:-1],
        "{SHA}not base64!",
        "{SHA}" + base64.b64encode(b"x" * 21).decode(),
        "{SSHA}" + base64.b64encode(b"x" * 20).decode(),
        # a digest cut to an impossible base64 length (43 -> 37 chars); a cut that leaves a
        # well-formed shorter digest is a valid hash of another length, not a malformed one
        argon2id()[:-6],
        argon2id().replace(",t=1,", ",t=0,"),
        "",
    ],
)
def test_parse_hash_refuses(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_hash(text)
    if text:
        assert text not in str(info.value)


def test_load_skips_comments_blanks_crlf_and_nginx_comments(tmp_path: Path) -> None:
    argon = argon2id("carol's")
    path = write(
        tmp_path / "users",
        "\ufeff# users\r\n\r\n   \n"
        f"alice:{APACHE_BCRYPT}\r\n"
        f"  bob:{APACHE_APR1}:Bob Builder, room 4  \n"
        "\t# indented comment\n"
        f"carol:{argon}\n"
        f"jürgen:{APACHE_SHA}",
    )
    table = UserTable.load(path)
    assert table.users() == {"alice", "bob", "carol", "jürgen"}
    assert len(table) == 4
    assert table.get("bob") == PasswordHash("apr_md5", APACHE_APR1)
    assert table.get("carol") == PasswordHash("argon2id", argon)
    assert table.get("dave") is None
    table.get("jürgen").verify(PASSWORD.encode())  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("bad_line", "secret"),
    [
        ("alice:" + PASSWORD, PASSWORD),
        ("alice" + APACHE_BCRYPT, APACHE_BCRYPT),
        (":" + APACHE_BCRYPT, APACHE_BCRYPT),
        ("bob:" + APACHE_BCRYPT[:-3], APACHE_BCRYPT[:-3]),
        ("bob:{PLAIN}" + PASSWORD, PASSWORD),
        ("ok:" + APACHE_SHA, APACHE_SHA),  # a duplicate of line 2
    ],
)
def test_load_error_names_file_and_line_without_hash(
    tmp_path: Path, bad_line: str, secret: str
) -> None:
    path = write(
        tmp_path / "users", f"# comment\nok:{APACHE_APR1}\n\n{bad_line}\nlast:{APACHE_SHA}\n"
    )
    with pytest.raises(UserFileError) as info:
        UserTable.load(path)
    assert (info.value.path, info.value.lineno) == (str(path), 4)
    assert str(info.value).startswith(f"{path}:4: ")
    assert secret not in str(info.value)
    assert APACHE_APR1 not in str(info.value)


def test_load_error_for_non_utf8_line(tmp_path: Path) -> None:
    path = write(tmp_path / "users", f"ok:{APACHE_SHA}\n".encode() + b"\xffalice:" + b"x\n")
    with pytest.raises(UserFileError) as info:
        UserTable.load(path)
    assert info.value.lineno == 2


UNUSABLE_ARGON2 = (  # parses (m is up to 10 digits) but argon2 cannot allocate 4 TB
    "$argon2id$v=19$m=4000000000,t=2,p=1$c29tZXNhbHRzb21lc2FsdA"
    "$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY"
)


def test_load_error_for_parameters_no_verification_could_use(tmp_path: Path) -> None:
    path = write(tmp_path / "users", f"eve:{UNUSABLE_ARGON2}\n".encode())
    with pytest.raises(UserFileError) as info:
        UserTable.load(path)
    assert str(info.value).startswith(f"{path}:1: argon2id hash too costly to verify")
    assert "c29tZXNhbHRz" not in str(info.value)


@pytest.mark.parametrize("name", ["missing", "a-directory"])
def test_load_unreadable_file(tmp_path: Path, name: str) -> None:
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(UserFileError) as info:
        UserTable.load(tmp_path / name)
    assert info.value.lineno is None
    assert str(info.value).startswith(f"{tmp_path / name}: ")


def test_dummy_matches_most_common_bcrypt_cost(tmp_path: Path) -> None:
    path = tmp_path / "users"
    htpasswd_file(path, "-B", "-C", "6", user="u1")
    for user in ("u2", "u3"):
        assert apache_htpasswd("-b", "-B", "-C", "4", str(path), user, PASSWORD).returncode == 0
    assert apache_htpasswd("-b", "-5", str(path), "u4", PASSWORD).returncode == 0
    table = UserTable.load(path)
    assert table.dummy.scheme == "bcrypt"
    assert table.dummy.value.startswith("$2y$04$")
    assert table.dummy not in {table.get(u) for u in table.users()}
    with pytest.raises(PasswordMismatch):
        table.dummy.verify(PASSWORD.encode())


def test_dummy_keeps_argon2_parameters() -> None:
    h = parse_hash(argon2id(time_cost=2, memory_cost=9216, parallelism=2, hash_len=24, salt_len=12))
    dummy = UserTable({"alice": h, "bob": parse_hash(APACHE_BCRYPT)}).dummy
    assert dummy.scheme == "argon2id"
    assert extract_parameters(dummy.value) == extract_parameters(h.value)
    assert dummy.value != h.value
    with pytest.raises(PasswordMismatch):
        dummy.verify(PASSWORD.encode())


@pytest.mark.parametrize(
    ("text", "expected_prefix"),
    [
        ("$6$rounds=12345$saltsalt$" + "a" * 86, "$6$rounds=12345$"),
        ("$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5", "$5$"),
        (APACHE_APR1, "$apr1$"),
        (APACHE_SHA, "{SHA}"),
        (ssha(b"pw", b"salt"), "{SSHA}"),
        (APACHE_BCRYPT.replace("$2y$", "$2b$"), "$2b$05$"),
    ],
)
def test_dummy_for_keeps_scheme_and_cost(text: str, expected_prefix: str) -> None:
    h = parse_hash(text)
    dummy = dummy_for(h)
    assert dummy == parse_hash(dummy.value)
    assert dummy.scheme == h.scheme
    assert dummy.value.startswith(expected_prefix)
    assert not dummy.value.removeprefix(expected_prefix).startswith("rounds=")
    assert dummy.value != dummy_for(h).value
    with pytest.raises(PasswordMismatch):
        dummy.verify(b"pw")


def test_empty_table_dummy_is_bcrypt_cost_10(tmp_path: Path) -> None:
    table = UserTable.load(write(tmp_path / "users", "# nobody yet\n"))
    assert len(table) == 0
    assert table.dummy.value.startswith("$2y$10$")


def test_changed_users_lists_changed_added_and_removed() -> None:
    sha = parse_hash(APACHE_SHA)
    old = UserTable({"alice": sha, "bob": sha, "carol": sha})
    new = UserTable({"alice": sha, "bob": parse_hash(APACHE_APR1), "dave": sha})
    assert old.changed_users(new) == {"bob", "carol", "dave"}
    assert new.changed_users(old) == {"bob", "carol", "dave"}
    assert old.changed_users(UserTable({"alice": sha, "bob": sha, "carol": sha})) == set()


def test_table_does_not_follow_its_source_mapping() -> None:
    source = {"alice": parse_hash(APACHE_SHA)}
    table = UserTable(source)
    source["mallory"] = parse_hash(APACHE_SHA)
    assert table.users() == {"alice"}


def test_hash_repr_hides_the_hash() -> None:
    assert APACHE_BCRYPT not in repr(parse_hash(APACHE_BCRYPT))
