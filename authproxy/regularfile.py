"""Reading the files the configuration names (users, groups, JWKS): regular files under a
size cap, opened so that a FIFO or a device can never block the reader (SPEC §8.4).

A reload runs in a thread that start-up, SIGHUP and shutdown wait for; ``open()`` on a FIFO
without a writer blocks that thread for good, and ``read()`` of ``/dev/zero`` never ends. So
the file is opened with O_NONBLOCK (which a regular file ignores), the *opened* descriptor is
checked (no window between a stat and the open), and at most ``limit + 1`` bytes are read.
"""

from __future__ import annotations

import errno
import os
import stat

# Caps, generous for what each file holds: an htpasswd line is ~60 (bcrypt) to ~100
# (argon2id) bytes, so 64 MiB is over half a million users, and a table that size takes
# seconds to parse; a groups line names many users, at a quarter of that; a JWK Set file has
# the limit of a fetched one (jwksfetch.MAX_DOCUMENT_BYTES: ~100 RSA keys are ~50 kB).
MAX_USERS_FILE_BYTES = 64 << 20
MAX_GROUPS_FILE_BYTES = 16 << 20
MAX_JWKS_FILE_BYTES = 1 << 20


class FileRefused(OSError):
    """The path names something other than a regular file, or one over its cap.

    ``reason`` is a fixed token (``not_regular_file``, ``oversized``), fit for a metric
    label; ``strerror`` says it in words, without the file's content.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(errno.EFBIG if reason == "oversized" else errno.EINVAL, detail)
        self.reason = reason


def read_regular_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The content of the regular file at ``path``; never blocks on a FIFO or device.

    Raises FileRefused for anything but a regular file, or one larger than ``limit`` bytes
    (also if it grows past the limit while being read); OSError if it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        _check(os.fstat(fd), limit)
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise FileRefused("oversized", f"larger than {limit} bytes")
    return data


def file_problem(path: str, limit: int) -> str | None:
    """What makes ``path`` unfit to load, for the configuration check (a stat, no open);
    None if it is a regular file within ``limit`` bytes."""
    try:
        _check(os.stat(path), limit)
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    except ValueError:  # os.stat refuses a path with a NUL byte (TOML can spell "\u0000")
        return "not a path: it holds a NUL byte"
    return None


def _check(status: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise FileRefused("not_regular_file", "not a regular file (a FIFO, device or directory)")
    if status.st_size > limit:
        raise FileRefused("oversized", f"larger than {limit} bytes")
