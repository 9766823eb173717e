"""A JWKS server the tests control, and tokens minted with PyJWT (not jwcrypto) for interop.

Its fixtures (``jwks_server``, ``clock``, ``start_app``...) are in :mod:`tests.jwks_fixtures`;
other tests import the helpers from here (``JwksServer``, ``signing_key``, ``mint``...).

The server is a real aiohttp app over HTTPS with a trustme CA. A test can rotate its keys
(``serve``), slow it down (``hold``), break it (``status``, ``body``, ``headers``), take it
down (``stop``/``start``) and count what it was asked (``fetches``, ``wait_for_fetches``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import ssl
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt as pyjwt
import trustme
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .appclient import AppClient

OMIT = object()  # a claim or header value meaning "leave this member out"
TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "ES512", "EdDSA")


class FakeClock:
    """Monotonic and wall clocks that move only when told to: ``advance(seconds)``."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._wall_start = time.time()

    def monotonic(self) -> float:
        return 1000.0 + self._offset

    def time(self) -> float:
        return self._wall_start + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds

    def jump_wall(self, seconds: float) -> None:
        """Move the wall clock alone (an NTP step), leaving the monotonic clock where it is."""
        self._wall_start += seconds


# -- keys and tokens -----------------------------------------------------------------------


@functools.cache
def private_key(kind: str, name: str = "") -> Any:
    """A private key of ``kind`` (rsa2048, rsa1024, p256, p384, p521, ed25519), cached per
    name so that a test run generates each one once."""
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[kind]
    return ec.generate_private_key(curve)


_KIND_FOR_ALG = {"ES256": "p256", "ES384": "p384", "ES512": "p521", "EdDSA": "ed25519"}


@dataclass(frozen=True)
class SigningKey:
    """A private key with the kid and alg it signs with, and its public JWK."""

    alg: str
    kid: str | None
    private: Any
    jwk_members: dict[str, Any] = field(default_factory=dict)  # added to (or, as OMIT,
    # removed from) the public JWK: alg and use are present by default

    @property
    def public_jwk(self) -> dict[str, Any]:
        algorithm = pyjwt.algorithms.get_default_algorithms()[self.alg]
        jwk: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        jwk.update({"use": "sig", "alg": self.alg})
        if self.kid is not None:
            jwk["kid"] = self.kid
        jwk.update(self.jwk_members)
        return {k: v for k, v in jwk.items() if v is not OMIT}

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        """A compact JWS by PyJWT. ``headers`` values of OMIT drop that header (kid, typ)."""
        all_headers = {"kid": self.kid, **(headers or {})}
        if all_headers["kid"] is None or all_headers["kid"] is OMIT:
            del all_headers["kid"]
        if all_headers.get("typ") is OMIT:
            all_headers["typ"] = None  # PyJWT drops a falsy typ
        with warnings.catch_warnings():  # weak keys are made on purpose, to be refused
            warnings.simplefilter("ignore", pyjwt.warnings.InsecureKeyLengthWarning)
            return pyjwt.encode(claims, self.private, algorithm=self.alg, headers=all_headers)


def signing_key(alg: str = "RS256", kid: str | None = "k1", *, name: str = "",
                kind: str = "", **jwk_members: Any) -> SigningKey:
    """A signing key for ``alg``. The same (kind, name or kid) is the same key material."""
    kind = kind or _KIND_FOR_ALG.get(alg, "rsa2048")
    return SigningKey(alg, kid, private_key(kind, name or str(kid)), jwk_members)



# The keys most tests sign with: K1 is the one the jwks_server fixture publishes, K2 a second
# one for rotations.
K1 = signing_key("RS256", "k1")
K2 = signing_key("RS256", "k2")


# The audience of the tests' tokens and configs: a [jwt] checking neither iss nor aud is a
# configuration error (SPEC §8.3).
AUDIENCE = "authproxy-tests"


def claims_at(now: float, **claims: Any) -> dict[str, Any]:
    """Default claims valid at ``now`` (sub alice, aud AUDIENCE, iat now, exp now+300),
    overridden by ``claims``; an OMIT value removes the claim."""
    base: dict[str, Any] = {"sub": "alice", "aud": AUDIENCE, "iat": int(now),
                            "exp": int(now) + 300}
    base.update(claims)
    return {k: v for k, v in base.items() if v is not OMIT}


def mint(key: SigningKey, now: float | None = None, headers: dict[str, Any] | None = None,
         **claims: Any) -> str:
    """A token signed by ``key``, with claims_at(now, **claims)."""
    return key.sign(claims_at(time.time() if now is None else now, **claims), headers)


def b64url(data: bytes | str | dict[str, Any]) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":"))
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any] | str, payload: dict[str, Any] | str,
            signature: bytes = b"") -> str:
    """A hand-built compact JWS: for tokens no library would make."""
    head = header if isinstance(header, str) else b64url(header)
    body = payload if isinstance(payload, str) else b64url(payload)
    return f"{head}.{body}.{b64url(signature)}"


def sign_segments(key: SigningKey, header: str, payload: str) -> str:
    """A token of these exact (encoded) segments, signed by ``key`` through PyJWT's algorithm
    object, so that no encoder touches them."""
    algorithm = pyjwt.algorithms.get_default_algorithms()[key.alg]
    signature = algorithm.sign(f"{header}.{payload}".encode(), key.private)
    return f"{header}.{payload}.{b64url(signature)}"


def resign(key: SigningKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """Sign exactly this header and payload (any members, any values) with ``key``."""
    return sign_segments(key, b64url(header), b64url(payload))


# -- the server ------------------------------------------------------------------------------


class JwksServer:
    """An HTTPS server of one JWK Set at ``/jwks.json`` and an OpenID configuration at any
    ``.../.well-known/openid-configuration``; every other path is counted in ``other``."""

    def __init__(self, ca: trustme.CA, ca_file: Path) -> None:
        self.ca_file = ca_file
        self.keys: list[SigningKey] = []
        self.extra: list[Any] = []  # raw members appended to "keys"
        self.body: bytes | None = None  # served verbatim instead of the JWK Set
        self.status = 200
        self.headers: dict[str, str] = {}
        self.issuer: str | None = None  # the discovery document's issuer; default: ours
        self.hold = False  # keep each JWKS answer waiting until release() or close()
        self.fetches = 0
        self.discoveries = 0
        self.other: list[str] = []
        self.port = 0
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._ssl)
        self._released = asyncio.Event()
        self._counted = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/jwks.json"

    def serve(self, *keys: SigningKey) -> None:
        """Publish exactly these keys from now on (a rotation)."""
        self.keys = list(keys)

    def document(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk for k in self.keys] + self.extra}

    def release(self) -> None:
        self._released.set()

    async def wait_for_fetches(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._counted:
            await self._counted.wait_for(lambda: self.fetches >= count)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Take the server down; ``start()`` brings it back on the same port."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        self.release()
        await self.stop()

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        async with self._counted:
            self.fetches += 1
            self._counted.notify_all()
        if self.hold:
            await self._released.wait()
        body = self.body if self.body is not None else json.dumps(self.document()).encode()
        return web.Response(status=self.status, body=body, headers=self.headers,
                            content_type="application/json")

    async def _other(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/.well-known/openid-configuration"):
            self.discoveries += 1
            issuer = request.path[: -len("/.well-known/openid-configuration")]
            return web.json_response({
                "issuer": self.issuer or f"{self.base_url}{issuer}", "jwks_uri": self.url,
            })
        self.other.append(request.path_qs)
        return web.Response(status=404)


def jwt_section(server: JwksServer, **jwt: Any) -> dict[str, Any]:
    return {"jwks_endpoint": server.url, "jwks_ssl_ca_certificate": str(server.ca_file),
            "jwks_require_audience": [AUDIENCE], **jwt}


StartApp = Callable[..., Awaitable[AppClient]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
