"""One exception tree. Nothing here knows HTTP: core.decider maps these to statuses.

A denial carries a *reason* (a short fixed token for logs and metric labels) and never any
secret or exception text that could echo client input.
"""

from __future__ import annotations

from collections.abc import Sequence


class AuthProxyError(Exception):
    """Root of authproxy's errors; never raised itself."""


class ConfigError(AuthProxyError):
    """The configuration has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class Unauthenticated(AuthProxyError):
    """No valid credentials: a 401 with a challenge.

    ``reason`` is a fixed token for logs and metrics (``missing``, ``bad_password``...).
    ``user`` is logged with it: only ever a name found in the user table, never a user-id as
    sent (which may be a password typed in the wrong field). ``bearer_error`` and
    ``bearer_description`` are the RFC 6750 error attributes when a bearer token was presented.
    """

    def __init__(
        self,
        reason: str,
        *,
        user: str = "",
        bearer_error: str = "",
        bearer_description: str = "",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user = user
        self.bearer_error = bearer_error
        self.bearer_description = bearer_description


class Forbidden(AuthProxyError):
    """Authenticated, but the location's policy refuses: a 403.

    ``required_scopes`` (space-separated) is set when a required scope was missing: RFC 6750
    insufficient_scope names every scope the resource needs, not only the missing ones.
    """

    def __init__(self, reason: str, *, required_scopes: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.required_scopes = required_scopes


class KeysUnavailable(AuthProxyError):
    """A bearer token arrived and no usable signing key set is loaded: a 503."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class UserFileError(AuthProxyError):
    """A user (or group) file could not be read; ``str()`` names file and line, never a hash."""

    def __init__(self, path: str, lineno: int | None, reason: str) -> None:
        self.path = path
        self.lineno = lineno
        self.reason = reason
        where = path if lineno is None else f"{path}:{lineno}"
        super().__init__(f"{where}: {reason}")
