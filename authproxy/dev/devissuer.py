"""``authproxy dev-issuer``: a local token issuer for trying Bearer without an identity provider.

It keeps one RSA signing key in a directory, serves the public half as a JWK Set (with an
OpenID discovery document), and mints tokens signed with it. For local testing only.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from jwcrypto import jwk, jwt

from .devcerts import write_private

KEY_FILE = "issuer-key.json"
ISSUER_FILE = "issuer.json"


def load_or_create_key(directory: str | os.PathLike[str]) -> jwk.JWK:
    """The issuer's RSA key from ``directory``, created (mode 0600) on first use."""
    path = Path(directory) / KEY_FILE
    if path.exists():
        return jwk.JWK.from_json(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = jwk.JWK.generate(kty="RSA", size=2048, alg="RS256", use="sig",
                           kid=f"dev-{secrets.token_hex(4)}")
    write_private(path, key.export_private().encode())
    return key


def public_jwks(key: jwk.JWK) -> dict[str, Any]:
    return {"keys": [key.export_public(as_dict=True)]}


def record_issuer(directory: str | os.PathLike[str], issuer: str) -> None:
    (Path(directory) / ISSUER_FILE).write_text(json.dumps({"issuer": issuer}))


def recorded_issuer(directory: str | os.PathLike[str]) -> str:
    try:
        return str(json.loads((Path(directory) / ISSUER_FILE).read_text())["issuer"])
    except (OSError, ValueError, KeyError):
        return ""


# The aud of the dev issuer's tokens unless asked otherwise, and what the demo's authproxy
# requires: a config checking neither iss nor aud is refused (SPEC §8.3).
DEFAULT_AUDIENCE = "authproxy"


def mint(
    key: jwk.JWK,
    *,
    issuer: str,
    subject: str,
    ttl: int = 3600,
    scopes: Sequence[str] = (),
    groups: Sequence[str] = (),
    audience: str = DEFAULT_AUDIENCE,
    now: float | None = None,
) -> str:
    """A signed RS256 JWT for ``subject``, valid for ``ttl`` seconds."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": subject, "iat": issued, "nbf": issued,
                              "exp": issued + ttl, "jti": secrets.token_hex(8)}
    if issuer:
        claims["iss"] = issuer
    if scopes:
        claims["scope"] = " ".join(scopes)
    if groups:
        claims["groups"] = list(groups)
    if audience:
        claims["aud"] = audience
    token = jwt.JWT(header={"alg": "RS256", "kid": key.key_id, "typ": "JWT"}, claims=claims)
    token.make_signed_token(key)
    return str(token.serialize())


def parse_ttl(text: str) -> int:
    """``3600``, ``90s``, ``15m``, ``1h`` or ``2d`` as seconds; ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        seconds = int(text[:-1]) * units[text[-1]]
    else:
        seconds = int(text)
    if seconds <= 0:
        raise ValueError("the lifetime must be positive")
    return seconds


def create_issuer_app(key: jwk.JWK, issuer: str) -> web.Application:
    """Serve ``/.well-known/jwks.json`` and the OpenID discovery document for ``issuer``."""
    keys = public_jwks(key)
    discovery = {"issuer": issuer, "jwks_uri": f"{issuer}/.well-known/jwks.json",
                 "id_token_signing_alg_values_supported": ["RS256"]}

    async def jwks_handler(request: web.Request) -> web.Response:
        return web.json_response(keys, headers={"Cache-Control": "max-age=300"})

    async def discovery_handler(request: web.Request) -> web.Response:
        return web.json_response(discovery)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks_handler)
    app.router.add_get("/.well-known/openid-configuration", discovery_handler)
    return app
