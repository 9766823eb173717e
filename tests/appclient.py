"""The client the in-process tests use: the production server on a loopback port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from authproxy.http.application import Application
from authproxy.http.server import Server


class AppClient:
    """A client of an app served by the production server (server.start_server) on a
    loopback port: ``await client.get(path, headers=...)`` returns aiohttp's response with
    its body already read (``.status``, ``.headers``, ``await .json()``, ``await .text()``);
    ``client.app`` is the app, ``client.server`` the Server."""

    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.app = server.app
        self.port = port
        self._session = aiohttp.ClientSession()

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        response = await self._session.request(method, f"http://127.0.0.1:{self.port}{path}",
                                               **kwargs)
        await response.read()
        return response

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def close(self) -> None:
        await self._session.close()
        await self.server.stop()


ServeApp = Callable[[Application], Awaitable[AppClient]]
