"""Fetching JWK Sets and OIDC discovery documents over HTTPS, with hard limits; the HTTP
:class:`~authproxy.jwt.fetcher.Fetcher` (:class:`HttpFetcher`).

One GET per fetch, on its own connection (``Connection: close``): a set is fetched every few
minutes, so there is nothing to pool. The answer is parsed by llhttp (httptools, the parser
of the HTTP edge), so no HTTP client library is loaded for it: aiohttp's client alone was
14 MB of every Bearer sidecar's memory.

Every failure becomes a :class:`JwksError` with a fixed ``reason`` (a metric label) and a short
``detail`` written here, never a response body: the document is untrusted input.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httptools

from .. import __version__
from ..config import JwtConfig, check_url
from .fetcher import Fetched
from .jwks import JwksError, parse_jwks
from .locations import discovery_url, redact_url

FETCH_TIMEOUT = 10.0  # seconds for one whole fetch: connect, TLS, headers and body
MAX_DOCUMENT_BYTES = 1 << 20  # a JWK Set of ~100 RSA keys is ~50 kB
MAX_HEAD_BYTES = 64 << 10  # status line and headers of an answer
READ_SIZE = 64 << 10
# what a request target keeps as written (RFC 3986's unreserved and delimiters, and escapes
# already made); anything else (a space, a control character, non-ASCII) is percent-encoded
_TARGET_SAFE = "!$&'()*+,;=:@/?%~-._"
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


@dataclass(frozen=True, slots=True)
class Request:
    """Where to connect for a URL, and the request head to send there."""

    host: str
    port: int
    tls: bool
    head: bytes

    @classmethod
    def get(cls, url: str) -> Request:
        """A GET of ``url`` (http or https, as check_url allows); user-info becomes Basic
        credentials. Raise ValueError for a URL that cannot be requested."""
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError("not an http(s) URL")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        if ":" in host:
            name = f"[{host}]"
        else:  # (the idna codec only where needed: it is 0.3 MB of memory once loaded)
            name = host if host.isascii() else host.encode("idna").decode("ascii")
        target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                       safe=_TARGET_SAFE)
        if not name.isprintable() or " " in name:
            raise ValueError("a host name that cannot be sent")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {name}" + ("" if port == (443 if tls else 80) else f":{port}"),
            f"User-Agent: authproxy/{__version__}",
            "Accept: application/json",
            "Connection: close",
        ]
        if parts.username is not None:
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            lines.append("Authorization: Basic " + base64.b64encode(secret.encode()).decode())
        head = "\r\n".join(lines) + "\r\n\r\n"
        return cls(host, port, tls, head.encode("ascii"))


class _Answer:
    """The response as llhttp reads it (the callbacks of ``httptools.HttpResponseParser``)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.complete = False
        self._start()

    def _start(self) -> None:
        self.status = 0
        self.headers_done = False
        self.delimited = False  # a Content-Length or chunked body: its end is known
        self.cache_control: list[str] = []
        self.content_length: int | None = None
        self.chunks: list[bytes] = []
        self.size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"cache-control":
            self.cache_control.append(value.decode("latin-1"))
        elif name == b"content-length":
            self.delimited = True
            self.content_length = int(value) if value.strip().isdigit() else None
        elif name == b"transfer-encoding":
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= MAX_DOCUMENT_BYTES:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim answer (103 Early Hints): the real one follows
            self._start()
            return
        self.complete = True

    def check(self) -> None:
        """Raise JwksError as soon as what has come shows the fetch failed."""
        if not self.headers_done:
            return
        if self.status != 200:
            raise JwksError("http_status", f"HTTP status {self.status}")
        if self.size > MAX_DOCUMENT_BYTES or (self.content_length or 0) > MAX_DOCUMENT_BYTES:
            raise JwksError("oversized", f"larger than {MAX_DOCUMENT_BYTES} bytes")


class JwksClient:
    """GETs of key material and discovery documents, each within ``timeout`` seconds."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self.timeout = FETCH_TIMEOUT  # seconds for a whole fetch (tests shorten it)

    async def fetch(self, url: str) -> Document:
        """GET ``url``: 200, at most MAX_DOCUMENT_BYTES, within ``timeout``; raise JwksError.

        Redirects are not followed: the key material comes from the configured place only.
        """
        try:
            async with asyncio.timeout(self.timeout):
                return await self._get(Request.get(url))
        except TimeoutError:
            raise JwksError("timeout", f"no complete answer within {self.timeout:g}s") from None
        except ssl.SSLError as exc:
            raise JwksError("tls_error", f"TLS failed: {type(exc).__name__}") from None
        except (OSError, ValueError, httptools.HttpParserError) as exc:
            raise JwksError("connection_error", f"request failed: {type(exc).__name__}") from None

    async def _get(self, request: Request) -> Document:
        reader, writer = await asyncio.open_connection(
            request.host, request.port, ssl=self._ssl if request.tls else None,
            server_hostname=request.host if request.tls else None, limit=READ_SIZE)
        try:
            writer.write(request.head)
            answer, received = _Answer(), 0
            while not answer.complete:
                data = await reader.read(READ_SIZE)
                if not data:  # the server closed: the end of a body that had no length
                    if answer.headers_done and not answer.delimited:
                        break
                    raise ConnectionError("the answer ended early")
                received += len(data)
                answer.parser.feed_data(data)
                answer.check()
                if not answer.headers_done and received > MAX_HEAD_BYTES:
                    raise JwksError("oversized", f"headers larger than {MAX_HEAD_BYTES} bytes")
            return Document(b"".join(answer.chunks), max_age(", ".join(answer.cache_control)))
        finally:
            writer.transport.abort()  # nothing more to say or hear; no TLS close to wait for

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

    def running(self) -> AbstractAsyncContextManager[Any]:
        return nullcontext()  # a connection per fetch: nothing to open or close

    async def fetch(self, trigger: str) -> Fetched:
        """Fetch and parse the set; raise JwksError."""
        if not self._url or (trigger == "admin" and not self._config.jwks_endpoint):
            self._url = await self.client.discover(self._config.issuer)
            self.location = redact_url(self._url)
        document = await self.client.fetch(self._url)
        keyset = await asyncio.to_thread(parse_jwks, document.body, self._config.algorithms,
                                         "endpoint")
        return Fetched(keyset, document.max_age)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        return None
    return data if isinstance(data, dict) else None
