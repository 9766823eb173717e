"""Where key material comes from, without fetching it: the endpoint's URL as logs may show
it, the OIDC discovery URL of an issuer, and the JWK Set file."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from ..regularfile import MAX_JWKS_FILE_BYTES, FileRefused, read_regular_file
from .jwks import JwksError


def redact_url(url: str) -> str:
    """The URL without user-info, query or fragment: fit for logs and the admin API."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def discovery_url(issuer: str) -> str:
    """OIDC Discovery §4: the well-known path is *appended* to the issuer (RFC 8414 inserts it
    after the host instead; mixing the two up is a classic bug)."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def read_file(path: str) -> bytes:
    """A JWK Set file: a regular file under the size limit of a fetch; raise JwksError."""
    try:
        return read_regular_file(path, MAX_JWKS_FILE_BYTES)
    except FileRefused as exc:
        raise JwksError(exc.reason, f"cannot read: {exc.strerror}") from None
    except OSError as exc:
        raise JwksError("unreadable", f"cannot read: {exc.strerror}") from None
