"""The endpoints besides the decision: /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..core.authn import SchemeChain
from ..core.decider import NO_STORE
from ..obs.metrics import Metrics
from ..obs.promtext import CONTENT_TYPE
from .message import Request, Response, json_response


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"}, headers=NO_STORE)


def readyz_handler(chain: SchemeChain) -> Callable[[Request], Awaitable[Response]]:
    async def readyz(request: Request) -> Response:
        missing = chain.not_ready()
        status = 503 if missing else 200
        return json_response({"ready": not missing, "missing": missing}, status=status,
                             headers=NO_STORE)
    return readyz


def metrics_handler(metrics: Metrics) -> Callable[[Request], Awaitable[Response]]:
    async def exposition(request: Request) -> Response:
        if metrics.multiprocess_dir:  # it reads every process's files: not on the event loop
            body = await asyncio.to_thread(metrics.exposition)
        else:  # this process's own counters, which the event loop changes: read them here
            body = metrics.exposition()
        return Response(200, {"Content-Type": CONTENT_TYPE}, body)
    return exposition
