"""The user table: htpasswd parsing and the password hash schemes it accepts.

Blocking code only: hashing is slow by design, so callers run ``PasswordHash.verify`` and
``UserTable.load`` in a thread (but at start-up, before anything is served).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass
from types import MappingProxyType

import bcrypt
from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import VerificationError
from argon2.low_level import hash_secret
from passlib.handlers.md5_crypt import apr_md5_crypt
from passlib.handlers.sha2_crypt import sha256_crypt, sha512_crypt

from ..errors import UserFileError
from ..regularfile import MAX_USERS_FILE_BYTES, read_regular_file

# The bcrypt salt encodes 128 bits in 22 characters, so its last character carries 2 bits and
# must be one of four; pyca/bcrypt rejects any other as "Invalid salt" at verify time.
_BCRYPT = re.compile(r"\$(2[aby])\$(\d\d)\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}")
_ARGON2ID = re.compile(
    r"\$argon2id\$v=(?:16|19)\$m=\d{1,10},t=\d{1,10},p=\d{1,8}\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)"
)
_PASSLIB = {"sha256_crypt": sha256_crypt, "sha512_crypt": sha512_crypt, "apr_md5": apr_md5_crypt}
_PREFIXES = (
    ("$2a$", "bcrypt"), ("$2b$", "bcrypt"), ("$2y$", "bcrypt"), ("$argon2id$", "argon2id"),
    ("$5$", "sha256_crypt"), ("$6$", "sha512_crypt"), ("$apr1$", "apr_md5"),
    ("{SHA}", "sha1"), ("{SSHA}", "ssha"),
)  # fmt: skip
_SHA1_LEN = 20
BCRYPT_MAX_PASSWORD = 72  # bytes bcrypt reads of a password (Apache's C bcrypt too)
BCRYPT_COST = 10  # Apache htpasswd's: new passwords, and the dummy of an empty table
MAX_BCRYPT_COST = 17  # the most Apache's htpasswd -C makes: ~10 s a verification
MAX_SHA_ROUNDS = 10_000_000  # passlib's default is 656,000; glibc's 5,000
MAX_ARGON2_MEMORY_KIB = 1 << 20  # 1 GiB a verification, in each hash thread
MAX_ARGON2_TIME_COST = 32  # passes over that memory (RFC 9106 recommends 1 or 3)


class PasswordMismatch(Exception):
    """The password does not verify against the stored hash."""


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A stored password hash: ``scheme`` is one of bcrypt, argon2id, sha256_crypt,
    sha512_crypt, apr_md5, sha1 ({SHA}) and ssha ({SSHA}); ``value`` the hash text.

    Build it with ``parse_hash``, which validates the shape, so that ``verify`` only ever
    fails by mismatch.
    """

    scheme: str
    value: str

    def __repr__(self) -> str:
        return f"PasswordHash(scheme={self.scheme!r})"

    def verify(self, password: bytes) -> None:
        """Return if ``password`` matches; raise PasswordMismatch for anything else.

        Blocking (bcrypt and argon2 cost tens of milliseconds). No password, however long or
        malformed, makes it raise anything but PasswordMismatch. For bcrypt only the first
        72 bytes count, as with Apache's ``htpasswd -B``.
        """
        try:
            matched = _matches(self.scheme, self.value, password)
        except (ValueError, TypeError, VerificationError):
            # bcrypt, passlib (NUL bytes, > 4096 bytes) and argon2 refuse some passwords.
            matched = False
        if not matched:
            raise PasswordMismatch


def _matches(scheme: str, value: str, password: bytes) -> bool:
    if scheme == "bcrypt":
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], value.encode("ascii"))
    if scheme == "argon2id":
        return PasswordHasher().verify(value, password)
    if scheme in _PASSLIB:
        # Raw bytes go straight into the digest, as with crypt(3): a non-UTF-8 password is just
        # another password.
        return bool(_PASSLIB[scheme].verify(password, value))
    decoded = base64.b64decode(value.partition("}")[2])
    digest, salt = decoded[:_SHA1_LEN], decoded[_SHA1_LEN:]  # {SHA} is {SSHA} without salt
    return hmac.compare_digest(hashlib.sha1(password + salt).digest(), digest)  # noqa: S324


def parse_hash(text: str) -> PasswordHash:
    """Recognise and validate one stored hash; raise ValueError if unsupported or malformed.

    Plaintext, DES crypt, ``$1$``, ``{PLAIN}``, argon2i and argon2d are refused. Error
    messages never contain the hash text.
    """
    scheme = next((s for prefix, s in _PREFIXES if text.startswith(prefix)), None)
    if scheme is None:
        raise ValueError("unsupported or plaintext password hash")
    if not _well_formed(scheme, text):
        raise ValueError(f"malformed {scheme} hash")
    if _too_costly(scheme, text):
        raise ValueError(f"{scheme} hash too costly to verify per request (bcrypt cost at "
                         f"most {MAX_BCRYPT_COST}, SHA-crypt rounds at most {MAX_SHA_ROUNDS:,}, "
                         f"argon2id m at most {MAX_ARGON2_MEMORY_KIB} and t at most "
                         f"{MAX_ARGON2_TIME_COST})")
    return PasswordHash(scheme, text)


def _too_costly(scheme: str, text: str) -> bool:
    """A cost no login can wait for: every failed verification is held as long as the
    table's costliest (SPEC §8.1 rule 7), and the table times each cost class at load."""
    if scheme == "bcrypt":
        return int(text[4:6]) > MAX_BCRYPT_COST
    if scheme in ("sha256_crypt", "sha512_crypt"):
        return bool(_PASSLIB[scheme].from_string(text).rounds > MAX_SHA_ROUNDS)
    if scheme == "argon2id":
        p = extract_parameters(text)
        return p.memory_cost > MAX_ARGON2_MEMORY_KIB or p.time_cost > MAX_ARGON2_TIME_COST
    return False


def _well_formed(scheme: str, text: str) -> bool:
    if scheme == "bcrypt":
        match = _BCRYPT.fullmatch(text)
        return match is not None and 4 <= int(match[2]) <= 31
    if scheme == "argon2id":
        return _argon2id_well_formed(text)
    if scheme in _PASSLIB:
        # Only a hash with its checksum ($id$[rounds=N$]salt$checksum): without one, passlib
        # reads salt and rounds leniently (a setting, not a hash), with a PasslibHashWarning.
        fields = text.split("$")[2:]
        if fields and fields[0].startswith("rounds="):
            fields = fields[1:]
        if len(fields) != 2 or not fields[1]:
            return False
        try:
            return _PASSLIB[scheme].from_string(text).checksum is not None
        except ValueError:
            return False
    digest = _b64decode(text.partition("}")[2])
    if scheme == "sha1":
        return digest is not None and len(digest) == _SHA1_LEN
    return digest is not None and len(digest) > _SHA1_LEN


def _argon2id_well_formed(text: str) -> bool:
    match = _ARGON2ID.fullmatch(text)
    if match is None:
        return False
    # PHC strings drop base64 padding.
    salt, digest = (_b64decode(part + "=" * (-len(part) % 4)) for part in match.groups())
    p = extract_parameters(text)
    # libargon2's own limits: outside them verify would error out rather than mismatch.
    return (
        salt is not None and len(salt) >= 8 and digest is not None and len(digest) >= 4
        and 1 <= p.time_cost < 2**32 and 1 <= p.parallelism < 2**24
        and 8 * p.parallelism <= p.memory_cost < 2**32
    )  # fmt: skip


def _b64decode(text: str) -> bytes | None:
    """Decode strict, canonical base64, or return None."""
    try:
        decoded = base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
    return decoded if base64.b64encode(decoded).decode("ascii") == text else None


CostClass = tuple[object, ...]


def cost_class(h: PasswordHash) -> CostClass:
    """What determines a hash's verification cost: equal tuples cost the same to verify."""
    if h.scheme == "bcrypt":
        return (h.scheme, h.value[:7])
    if h.scheme == "argon2id":
        return (h.scheme, *astuple(extract_parameters(h.value)))
    if h.scheme in ("sha256_crypt", "sha512_crypt"):
        return (h.scheme, _PASSLIB[h.scheme].from_string(h.value).rounds)
    return (h.scheme,)


def dummy_for(h: PasswordHash) -> PasswordHash:
    """A hash of a random, discarded password with ``h``'s scheme and cost parameters.

    Verifying any password against it costs what verifying against ``h`` costs and fails;
    used for unknown users so that their timing matches a wrong password. Blocking.
    """
    secret = secrets.token_urlsafe(24)
    if h.scheme == "bcrypt":
        return _bcrypt_dummy(h.value[:4], int(h.value[4:6]), secret)
    if h.scheme == "argon2id":
        p = extract_parameters(h.value)
        raw = hash_secret(
            secret.encode(), os.urandom(p.salt_len), p.time_cost, p.memory_cost,
            p.parallelism, p.hash_len, Type.ID, p.version,
        )  # fmt: skip
        return PasswordHash(h.scheme, raw.decode("ascii"))
    if h.scheme in ("sha256_crypt", "sha512_crypt"):
        rounds = _PASSLIB[h.scheme].from_string(h.value).rounds
        return PasswordHash(h.scheme, _PASSLIB[h.scheme].using(rounds=rounds).hash(secret))
    if h.scheme == "apr_md5":
        return PasswordHash(h.scheme, apr_md5_crypt.hash(secret))
    salt = os.urandom(8) if h.scheme == "ssha" else b""
    digest = hashlib.sha1(secret.encode() + salt).digest()  # noqa: S324
    prefix = "{SSHA}" if h.scheme == "ssha" else "{SHA}"
    return PasswordHash(h.scheme, prefix + base64.b64encode(digest + salt).decode("ascii"))


def _bcrypt_dummy(prefix: str, cost: int, secret: str) -> PasswordHash:
    hashed = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(cost)).decode("ascii")
    return PasswordHash("bcrypt", prefix + hashed[len(prefix) :])


def split_entry(line: str) -> tuple[str, str] | None:
    """Split one htpasswd line into ``(user, hash text)``; None for blank and comment lines.

    Surrounding whitespace is ignored (as Apache's config reader does) and a ``:comment``
    after the hash is dropped (as nginx does). Raises ValueError for any other line.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    user, colon, rest = text.partition(":")
    if not colon:
        raise ValueError("expected 'user:hash'")
    if not user:
        raise ValueError("empty user name")
    if any(unicodedata.category(c) == "Cc" for c in user):
        # X-Auth-User could not carry it, and no Basic credential can name it: a line like
        # "ali\x00ce:..." is a broken file, not a user (``authproxy user add`` refuses it too)
        raise ValueError("control character in user name")
    return user, rest.partition(":")[0]


class UserTable:
    """An immutable ``user -> PasswordHash`` table, built whole from an htpasswd file."""

    __slots__ = ("_costs", "_dummy", "_hashes")

    def __init__(self, hashes: Mapping[str, PasswordHash]) -> None:
        """Take the entries, compute ``dummy`` and time ``verification_costs`` (a hashing,
        and one verification per cost class; blocking)."""
        self._hashes: Mapping[str, PasswordHash] = MappingProxyType(dict(hashes))
        classes = _cost_classes(self._hashes.values())
        started = time.perf_counter()
        self._dummy = _table_dummy(classes)
        # Making the dummy hashed a password at the cost of the table's most common class (of
        # its own, for an empty table): that is the class's timing, and one hashing fewer at
        # every start and reload. Each other class is timed refusing a wrong password.
        costs = {cost_class(self._dummy): time.perf_counter() - started}
        for h, _ in classes.values():
            if cost_class(h) not in costs:
                costs[cost_class(h)] = _mismatch_seconds(h)
        self._costs = MappingProxyType(costs)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UserTable:
        """Read and validate an htpasswd file; raise UserFileError naming file and line.

        Every line must be blank, a ``#`` comment or ``user:hash[:comment]`` with a supported
        hash, and no user may appear twice. Blocking.
        """
        name = os.fspath(path)
        try:
            data = read_regular_file(path, MAX_USERS_FILE_BYTES)
        except OSError as exc:
            raise UserFileError(name, None, f"cannot read: {exc.strerror}") from None
        hashes = parse_entries(name, data)
        try:
            return cls(hashes)
        except Exception as exc:  # parameters that parse but cannot be hashed with (argon2's m)
            raise UserFileError(name, None, "cannot hash with its most common parameters "
                                f"({type(exc).__name__})") from None

    @property
    def dummy(self) -> PasswordHash:
        """A never-matching hash with the table's most common scheme and cost parameters."""
        return self._dummy

    @property
    def verification_costs(self) -> Mapping[CostClass, float]:
        """Seconds a wrong password took to verify when the table was loaded, for each cost
        class in it (the dummy's included): see basic.VerificationCosts."""
        return self._costs

    def get(self, user: str) -> PasswordHash | None:
        """The user's hash, or None if the user is not in the table."""
        return self._hashes.get(user)

    def users(self) -> frozenset[str]:
        """Every user name in the table."""
        return frozenset(self._hashes)

    def changed_users(self, other: UserTable) -> set[str]:
        """Users whose entry differs between the two tables, including added and removed."""
        names = self._hashes.keys() | other._hashes.keys()
        return {user for user in names if self.get(user) != other.get(user)}

    def __len__(self) -> int:
        return len(self._hashes)


def parse_entries(name: str, data: bytes) -> dict[str, PasswordHash]:
    """The ``user -> hash`` entries of htpasswd file ``name``'s content ``data``, all of them
    or none: raise UserFileError naming the first line that is not blank, a comment or a
    valid entry of a new user. No hashing: ``UserTable`` does that."""
    hashes: dict[str, PasswordHash] = {}
    first_line: dict[str, int] = {}
    # Split on "\n" only: str.splitlines would also break on \v, \x1c, U+2028...
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            entry = split_entry(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
            if entry is None:
                continue
            user, text = entry
            if user in first_line:
                raise ValueError(f"duplicate user (first on line {first_line[user]})")
            hashes[user] = parse_hash(text)
            first_line[user] = lineno
        except UnicodeDecodeError:
            raise UserFileError(name, lineno, "not UTF-8") from None
        except ValueError as exc:
            raise UserFileError(name, lineno, str(exc)) from None
    return hashes


_CostClasses = dict[tuple[object, ...], tuple[PasswordHash, int]]


def _cost_classes(hashes: Iterable[PasswordHash]) -> _CostClasses:
    """One hash of each cost class (equal verification cost), with how many share it."""
    classes: _CostClasses = {}
    for h in hashes:
        key = cost_class(h)
        first, count = classes.get(key, (h, 0))
        classes[key] = (first, count + 1)
    return classes


def _table_dummy(classes: _CostClasses) -> PasswordHash:
    """A dummy of the most common cost class (bcrypt at Apache's cost for an empty table)."""
    if not classes:
        return _bcrypt_dummy("$2y$", BCRYPT_COST, secrets.token_urlsafe(24))
    most_common, _ = max(classes.values(), key=lambda item: item[1])
    return dummy_for(most_common)


# Printable: a NUL byte is refused by passlib's SHA-crypt at once, which timed $5$/$6$ at 0 s.
_NOT_THE_PASSWORD = b"not the password " + secrets.token_hex(8).encode()


def _mismatch_seconds(h: PasswordHash) -> float:
    """Seconds ``h`` took to refuse a wrong password, timed once."""
    started = time.perf_counter()
    with contextlib.suppress(PasswordMismatch):
        h.verify(_NOT_THE_PASSWORD)
    return time.perf_counter() - started
