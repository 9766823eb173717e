"""The Bearer baseline: a handler that verifies every token with jwcrypto's one-liner,
``jwt.JWT(jwt=token, key=JWKSet)``, as a naive auth service would."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web
from jwcrypto import jwk, jwt


def main() -> None:
    port, jwks_path = int(sys.argv[1]), sys.argv[2]
    with open(jwks_path) as fh:
        keyset = jwk.JWKSet.from_json(fh.read())

    async def auth(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "")[len("Bearer "):]
        try:
            jwt.JWT(jwt=token, key=keyset, algs=["RS256"])
        except Exception:
            return web.Response(status=401)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", auth)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
