"""The live user table and groups: loaded whole, swapped in one step, reloaded on change."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import UserFileError
from .groups import load_groups
from .users import UserTable

log = logging.getLogger("authproxy.htpasswd.users")

WATCH_INTERVAL = 1.0  # seconds between stat() calls on the user and group files


@dataclass(frozen=True, slots=True)
class UserSnapshot:
    """A user table and its groups, always replaced together."""

    table: UserTable
    groups: Mapping[str, frozenset[str]]


def _file_signature(path: str) -> tuple[int, ...] | None:
    # stat() follows symlinks, so a Kubernetes Secret update (an atomic swap of the ..data
    # symlink) shows up as a new inode even when size and mtime happen to match.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class UserStore:
    """Holds the current :class:`UserSnapshot`; a failed reload keeps the old one."""

    def __init__(
        self,
        users_file: str,
        groups_file: str = "",
        on_reload: Callable[[bool], None] | None = None,
    ) -> None:
        self.users_file = users_file
        self.groups_file = groups_file
        self._on_reload = on_reload or (lambda ok: None)
        self._signature = self._signatures()
        self.snapshot = self._load()  # a start-up failure propagates: never run without users

    def _signatures(self) -> tuple[tuple[int, ...] | None, ...]:
        return tuple(_file_signature(p) for p in (self.users_file, self.groups_file) if p)

    def _load(self) -> UserSnapshot:
        table = UserTable.load(self.users_file)
        groups = load_groups(self.groups_file) if self.groups_file else {}
        return UserSnapshot(table, groups)

    def _load_and_compare(self, old: UserTable) -> tuple[UserSnapshot, int]:
        """A new snapshot, and how many users' entries differ from ``old`` (for the log: a
        comparison of two large tables is no work for the event loop)."""
        snapshot = self._load()
        return snapshot, len(snapshot.table.changed_users(old))

    async def reload(self, why: str) -> bool:
        """Build a new snapshot off the event loop and swap it in; False (old kept) on error."""
        signature = self._signatures()
        try:
            snapshot, changed = await asyncio.get_running_loop().run_in_executor(
                None, self._load_and_compare, self.snapshot.table)
        except Exception as exc:  # whatever it is, the old table stays
            # A UserFileError names file and line, never a hash; anything else, its class only.
            error = str(exc) if isinstance(exc, UserFileError) else type(exc).__name__
            log.error("user table reload failed, keeping the old one", extra={
                "event": "users_reload", "outcome": "error", "trigger": why, "error": error,
            })
            self._signature = signature  # do not retry the same broken file every second
            self._on_reload(False)
            return False
        self.snapshot, self._signature = snapshot, signature
        log.info("user table reloaded", extra={
            "event": "users_reload", "outcome": "ok", "trigger": why,
            "users": len(snapshot.table), "changed": changed,
        })
        self._on_reload(True)
        return True

    async def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Reload whenever either file's stat signature changes; runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if self._signatures() != self._signature:
                await self.reload("file_changed")
