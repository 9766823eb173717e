"""The authenticator protocol, Authorization parsing, and the scheme chain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from ..errors import Unauthenticated
from .identity import Identity

# Longest Authorization value we look at. nginx forwards up to its header buffer (8 kB by
# default, more if raised); anything longer is refused as a credential, not as a request.
MAX_AUTHORIZATION = 16384


class Credentials(NamedTuple):
    """The Authorization header split into its scheme (lower case) and the rest."""

    scheme: str
    value: str


class AuthRequest(NamedTuple):
    """What an authenticator may look at: the credentials and who is asking (origin.Client:
    ``client`` for the log, ``client_key`` for the lockout, "" when unknown)."""

    credentials: Credentials
    client: str
    client_key: str = ""


class Pending(Protocol):
    """An authentication that must wait (a hash to verify, a key set to fetch), carrying
    what its beginning already parsed, so that nothing is decoded, MACed or checked twice."""

    async def finish(self) -> Identity:
        """The identity; or Unauthenticated (or KeysUnavailable) raised. Await it once."""
        ...


class Authenticator(Protocol):
    """One scheme, judged in one step. ``begin`` does whatever needs no waiting (a
    remembered credential, a refusal found by parsing, a signature against a key at hand) and
    returns the identity or raises; when the rest must be awaited it returns a
    :class:`Pending` whose ``finish`` decides. Beginning has no effect (nothing counted,
    reserved or remembered): a Pending may be dropped unfinished.
    """

    scheme: str  # the lower-case auth-scheme token it handles, e.g. "basic"

    def challenge(self, realm: str) -> str:
        """The bare challenge for this scheme, e.g. ``Basic realm="x", charset="UTF-8"``."""
        ...

    def begin(self, request: AuthRequest) -> Identity | Pending:
        """The identity, or Unauthenticated/KeysUnavailable raised, when that needs no
        waiting; else what is left to await."""
        ...

    def not_ready(self) -> str | None:
        """None when this scheme can decide; otherwise what is missing, for /readyz."""
        ...


def parse_authorization(values: Sequence[str]) -> Credentials:
    """Split the request's Authorization header(s); raise Unauthenticated when unusable.

    Two headers, even identical, are refused: a proxy and a client disagreeing about who is
    asking is not something to guess about.
    """
    if not values:
        raise Unauthenticated("missing")
    if len(values) > 1:
        raise Unauthenticated("duplicate_authorization")
    value = values[0]
    if len(value) > MAX_AUTHORIZATION:
        raise Unauthenticated("oversize_authorization")
    scheme, _, rest = value.strip(" \t").partition(" ")
    if not scheme:
        raise Unauthenticated("missing")
    return Credentials(scheme=scheme.lower(), value=rest.lstrip(" \t"))


class SchemeChain:
    """The enabled authenticators, by scheme name, in challenge order."""

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self.authenticators = tuple(authenticators)
        self.schemes = tuple(a.scheme for a in self.authenticators)
        self._by_scheme = {a.scheme: a for a in self.authenticators}

    def challenges(self, realm: str, schemes: Sequence[str]) -> list[tuple[str, str]]:
        """(scheme, bare challenge) for those of ``schemes`` that are enabled, in order."""
        return [(a.scheme, a.challenge(realm)) for a in self.authenticators if a.scheme in schemes]

    def authenticator(self, request: AuthRequest, allowed: Sequence[str]) -> Authenticator:
        """The authenticator of the request's scheme, if that scheme is enabled and allowed."""
        authenticator = self._by_scheme.get(request.credentials.scheme)
        if authenticator is None:
            raise Unauthenticated("unknown_scheme")
        if authenticator.scheme not in allowed:
            raise Unauthenticated("scheme_not_allowed")
        return authenticator

    def begin(self, request: AuthRequest, allowed: Sequence[str]) -> Identity | Pending:
        """The request's scheme's :meth:`Authenticator.begin`; Unauthenticated raised when
        that scheme is not enabled or not ``allowed``."""
        return self.authenticator(request, allowed).begin(request)

    def not_ready(self) -> dict[str, str]:
        """What each scheme still lacks, by scheme; empty when every scheme can decide."""
        missing = {}
        for a in self.authenticators:
            reason = a.not_ready()
            if reason:
                missing[a.scheme] = reason
        return missing
