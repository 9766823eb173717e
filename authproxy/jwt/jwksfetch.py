"""Fetching JWK Sets and OIDC discovery documents over HTTPS, with hard limits; the HTTP
:class:`~authproxy.jwt.fetcher.Fetcher` (:class:`HttpFetcher`).

Every failure becomes a :class:`JwksError` with a fixed ``reason`` (a metric label) and a short
``detail`` written here, never a response body: the document is untrusted input.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from .. import __version__
from ..config import JwtConfig, check_url
from .fetcher import Fetched
from .jwks import JwksError, parse_jwks
from .locations import discovery_url, redact_url

FETCH_TIMEOUT = 10.0  # seconds for one whole fetch: connect, TLS, headers and body
MAX_DOCUMENT_BYTES = 1 << 20  # a JWK Set of ~100 RSA keys is ~50 kB
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,10})", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[,\s])(?:no-cache|no-store)(?:$|[,\s=])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Document:
    """A fetched body, and the server's ``Cache-Control`` max-age in seconds, if it said."""

    body: bytes
    max_age: int | None


def max_age(cache_control: str) -> int | None:
    """The freshness lifetime a Cache-Control value grants: 0 for no-cache/no-store."""
    if _NO_CACHE.search(cache_control):
        return 0
    match = _MAX_AGE.search(cache_control)
    return int(match.group(1)) if match else None


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Verifying TLS context: only ``ca_file``'s CAs when given, else the system's."""
    return ssl.create_default_context(cafile=ca_file or None)


class JwksClient:
    """One aiohttp ClientSession for key material; open with ``async with``."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self.timeout = FETCH_TIMEOUT  # seconds for a whole fetch (tests shorten it)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> JwksClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=4),
            headers={"User-Agent": f"authproxy/{__version__}", "Accept": "application/json"},
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str) -> Document:
        """GET ``url``: 200, at most MAX_DOCUMENT_BYTES, within ``timeout``; raise JwksError.

        Redirects are not followed: the key material comes from the configured place only.
        """
        if self._session is None:
            raise JwksError("not_started", "the HTTP client is not running")
        try:
            async with asyncio.timeout(self.timeout):
                async with self._session.get(url, allow_redirects=False) as response:
                    if response.status != 200:
                        raise JwksError("http_status", f"HTTP status {response.status}")
                    body = await _read_limited(response)
                    return Document(body, max_age(response.headers.get("Cache-Control", "")))
        except TimeoutError:
            raise JwksError("timeout", f"no complete answer within {self.timeout:g}s") from None
        except aiohttp.ClientSSLError as exc:
            raise JwksError("tls_error", f"TLS failed: {type(exc).__name__}") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise JwksError("connection_error", f"request failed: {type(exc).__name__}") from None

    async def discover(self, issuer: str) -> str:
        """The ``jwks_uri`` from the issuer's OpenID configuration; raise JwksError.

        The document's ``issuer`` must equal ours exactly (OIDC Discovery §4.3), and its
        ``jwks_uri`` must be a URL we would accept in the configuration.
        """
        try:
            document = await self.fetch(discovery_url(issuer))
        except JwksError as exc:
            raise JwksError("discovery_failed", f"discovery: {exc.detail}") from None
        metadata = _json_object(document.body)
        if metadata is None or metadata.get("issuer") != issuer:
            raise JwksError("discovery_failed", "discovery: issuer missing or not ours")
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri or check_url(jwks_uri):
            raise JwksError("discovery_failed", "discovery: jwks_uri missing or not https")
        return jwks_uri


class HttpFetcher:
    """The endpoint's set over HTTPS: from jwt.jwks_endpoint, or the ``jwks_uri`` that the
    issuer's discovery document names (discovered at the first fetch, and again for each
    jwks_setup call). Its set is parsed in a thread: a JWK Set of up to 1 MiB is thousands
    of key imports, a third of a second."""

    schedules = True

    def __init__(self, config: JwtConfig) -> None:
        self._config = config
        self.client = JwksClient(tls_context(config.jwks_ssl_ca_certificate))
        self._url = config.jwks_endpoint  # or discovered from the issuer
        self.location = redact_url(config.jwks_endpoint or discovery_url(config.issuer))

    def running(self) -> JwksClient:
        return self.client

    async def fetch(self, trigger: str) -> Fetched:
        """Fetch and parse the set; raise JwksError."""
        if not self._url or (trigger == "admin" and not self._config.jwks_endpoint):
            self._url = await self.client.discover(self._config.issuer)
            self.location = redact_url(self._url)
        document = await self.client.fetch(self._url)
        keyset = await asyncio.to_thread(parse_jwks, document.body, self._config.algorithms,
                                         "endpoint")
        return Fetched(keyset, document.max_age)


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    if response.content_length is not None and response.content_length > MAX_DOCUMENT_BYTES:
        raise JwksError("oversized", f"larger than {MAX_DOCUMENT_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise JwksError("oversized", f"larger than {MAX_DOCUMENT_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        return None
    return data if isinstance(data, dict) else None
