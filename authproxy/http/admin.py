"""The admin API: ``POST /api/v2/jwks_setup`` (fetch the JWK Set now), ``GET /api/v2/jwks``.

Callers authenticate through the same scheme chain as /auth, with either scheme, and must be
named in admin.users with the scheme they used (``basic:NAME``, ``bearer:NAME``; SPEC §8.3):
no or bad credentials 401 with the challenge, anyone else 403 (SPEC §5).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..core.decider import NO_STORE, Decider
from ..errors import Forbidden
from .message import Request, Response, Routes, json_response

if TYPE_CHECKING:  # the JWT modules are loaded only for a config that verifies tokens
    from ..jwt.keysource import KeySource

log = logging.getLogger("authproxy.http.admin")

Action = Callable[[], Awaitable[Response]]
# The body of each refusal the Decider may answer (it chooses the status).
_REFUSALS = {401: "unauthenticated", 403: "forbidden", 503: "signing keys unavailable"}


def iso_time(ts: float | None) -> str | None:
    """RFC 3339 UTC for an epoch time; None stays None."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class AdminApi:
    """The /api/v2 handlers. ``keys`` is None when Bearer is not configured."""

    def __init__(self, decider: Decider, keys: KeySource | None,
                 admins: frozenset[tuple[str, str]]) -> None:
        self._decider = decider
        self._keys = keys
        self._admins = admins  # (scheme, name): a token's sub never stands for a Basic user

    def add_routes(self, routes: Routes) -> None:
        routes.add("POST", "/api/v2/jwks_setup", self.jwks_setup)
        routes.add("GET", "/api/v2/jwks", self.jwks)

    async def jwks_setup(self, request: Request) -> Response:
        return await self._as_admin(request, "jwks_setup", self._jwks_setup)

    async def jwks(self, request: Request) -> Response:
        return await self._as_admin(request, "jwks", self._jwks)

    async def _as_admin(self, request: Request, action: str, run: Action) -> Response:
        decider = self._decider
        client = decider.origin.client(request)
        fields: dict[str, Any] = {"event": "admin", "action": action, "client": client.address}
        try:
            identity = await decider.authenticate(request)
            fields["user"] = identity.user
            if (identity.method, identity.user) not in self._admins:
                raise Forbidden("not_admin")
        except Exception as exc:
            answer = decider.refusal(exc, fields)
            log.info("admin request refused", extra=fields)
            return json_response({"error": _REFUSALS.get(answer.status, "unauthenticated")},
                                     status=answer.status, headers=answer.headers)
        response = await run()
        log.info("admin request", extra={**fields, "status": response.status})
        return response

    async def _jwks_setup(self) -> Response:
        if self._keys is None or self._keys.ring.endpoint is None:
            return json_response(
                {"error": "not_configured",
                 "detail": "no jwt.jwks_endpoint (or jwt.issuer to discover one) is configured"},
                status=409, headers=NO_STORE,
            )
        outcome = await self._keys.refresher.setup_refresh()
        # rate_limited: this call fetched nothing (one did within retry_after seconds of
        # now); the answer is the set in use and, if the endpoint still fails, why
        limit = {"rate_limited": outcome.rate_limited, "retry_after": outcome.retry_after}
        if outcome.error is not None:
            kept = outcome.keyset
            return json_response({
                "error": outcome.error.reason, "detail": outcome.error.detail,
                "kept_kids": kept.kids if kept else [], **limit,
            }, status=502, headers=NO_STORE)
        keyset = outcome.keyset
        assert keyset is not None  # a fetch that succeeded, now or before, installed it
        return json_response({
            "keys": len(keyset.keys), "kids": keyset.kids, "skipped": keyset.skipped,
            "fetched_at": iso_time(self._keys.ring.endpoint.fetched_at), **limit,
        }, headers=NO_STORE)

    async def _jwks(self) -> Response:
        if self._keys is None:
            return json_response({"sources": [], "ready": False}, headers=NO_STORE)
        keys = self._keys.ring
        sources = [{
            "source": s.name, "location": s.location,
            "kids": s.keyset.kids if s.keyset else [], "keys": s.key_count(),
            "skipped": s.keyset.skipped if s.keyset else 0,
            "fetched_at": iso_time(s.fetched_at),
            "age_seconds": None if s.loaded_at is None else keys.age(s),
            "trusted": keys.trusted(s), "last_error": s.last_error,
            "last_error_at": iso_time(s.last_error_at), "consecutive_failures": s.failures,
            "next_fetch_in": keys.next_fetch_in() if s is keys.endpoint else None,
        } for s in keys.states]
        return json_response(
            {"sources": sources, "ready": keys.not_ready() is None}, headers=NO_STORE
        )
