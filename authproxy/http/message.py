"""A request as the HTTP edge parsed it, and a response to write: small, framework-free types.

Every endpoint of authproxy reads a few headers and answers a status, a few headers and at
most a small body; none reads a request body. These two types are all the edge
(connection.py) and the handlers (endpoints.py, admin.py) share, so the handlers carry no
web framework and the edge owns the wire format (SPEC §7: the HTTP layer is part of the
contract).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from yarl import URL


class Request:
    """One parsed request head (origin.RequestView). ``target`` is the request-target as
    sent; the decoded path and the URL object are made only when asked for."""

    __slots__ = ("_url", "has_body", "headers", "keep_alive", "method", "remote", "target")

    def __init__(self, method: str, target: str, headers: CIMultiDictProxy[str],
                 remote: str | None, keep_alive: bool, has_body: bool) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.remote = remote
        self.keep_alive = keep_alive
        # The head announced a body (Content-Length > 0, or chunked): never read, so the
        # connection is closed after the answer.
        self.has_body = has_body
        self._url: URL | None = None

    @property
    def rel_url(self) -> URL:
        """The target as a URL; ``raw_path`` is the path as sent, before decoding.

        Only an odd target needs it (an absolute-form one, or a percent-encoded path or
        query read decoded): yarl is imported then, not by every sidecar (1 MB idle).
        """
        url = self._url
        if url is None:
            from yarl import URL

            target = self.target
            if target.startswith("/"):
                path, _, query = target.partition("?")
                url = URL.build(path=path.partition("#")[0], query_string=query, encoded=True)
            else:  # absolute-form (or "*"): as aiohttp's parser read it, its path and query
                url = URL(target, encoded=True)
                url = URL.build(path=url.raw_path, query_string=url.raw_query_string,
                                encoded=True)
            self._url = url
        return url

    def target_readable(self) -> bool:
        """False for an absolute-form target that is no URL (``http://[bad``): the parser's
        refusal, not an exception later."""
        if self.target.startswith("/"):
            return True
        try:
            self.rel_url  # noqa: B018 (made and kept for later)
        except ValueError:
            return False
        return True

    @property
    def raw_path(self) -> str:
        """The path as sent, before percent-decoding."""
        target = self.target
        if target.startswith("/"):
            return target.partition("?")[0].partition("#")[0]
        return self.rel_url.raw_path

    @property
    def path(self) -> str:
        """The path, percent-decoded."""
        target = self.target
        if target.startswith("/"):
            path = target.partition("?")[0].partition("#")[0]
            if "%" not in path:
                return path
        return self.rel_url.path

    @property
    def path_qs(self) -> str:
        return str(self.rel_url)

    @property
    def raw_query_string(self) -> str:
        """The query as sent, before percent-decoding (what a policy is parsed from)."""
        target = self.target
        if target.startswith("/"):
            return target.partition("?")[2].partition("#")[0]
        return self.rel_url.raw_query_string

    @property
    def query_string(self) -> str:
        """The query, decoded as yarl decodes it (aiohttp's ``request.query_string``)."""
        target = self.target
        if target.startswith("/"):
            query = target.partition("?")[2].partition("#")[0]
            if "%" not in query and "+" not in query:
                return query
        return self.rel_url.query_string


class Response(NamedTuple):
    """A status, headers and a body (Content-Length, Server and Date are the edge's)."""

    status: int
    headers: dict[str, str]
    body: bytes = b""


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    """``data`` as a JSON body."""
    return Response(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
                    json.dumps(data).encode())


Handler = Callable[[Request], Awaitable[Response]]


class Routes:
    """The endpoints besides the decisions: (method, path) -> handler; GET serves HEAD too."""

    def __init__(self) -> None:
        self._handlers: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        methods = self._handlers.setdefault(path, {})
        methods[method] = handler
        if method == "GET":
            methods["HEAD"] = handler

    def find(self, method: str, path: str) -> Handler | Response:
        """The handler, or the 404 or 405 to answer."""
        methods = self._handlers.get(path)
        if methods is None:
            return Response(404, {"Content-Type": "text/plain; charset=utf-8"},
                            b"404: Not Found")
        handler = methods.get(method)
        if handler is None:
            return Response(405, {"Content-Type": "text/plain; charset=utf-8",
                                  "Allow": ",".join(sorted(methods))},
                            b"405: Method Not Allowed")
        return handler
