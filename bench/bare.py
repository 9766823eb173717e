"""The baseline: a bare aiohttp + uvloop handler that answers 200 to everything."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    return web.Response(status=200)


def main() -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
