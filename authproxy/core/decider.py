"""The Decider: the only place where outcomes become 200/401/403/503."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import unquote

from ..config import Config
from ..errors import Forbidden, KeysUnavailable, Unauthenticated
from ..obs.logs import DecisionLog
from ..obs.metrics import Metrics
from .authn import AuthRequest, Pending, SchemeChain, parse_authorization
from .identity import EMPTY_HEADERS, Identity
from .origin import Origin, RequestView
from .policy import InvalidPolicyLog, Policy, policy_for

log = logging.getLogger("authproxy.core.decider")

NO_STORE = {"Cache-Control": "no-store"}
# Every response names the service without a version (a framework's would name Python's and its
# own): behind Traefik or Caddy, a denial's headers reach the client.
SERVER = "authproxy"
_PREFLIGHT_HEADERS = {**EMPTY_HEADERS, **NO_STORE}
# Denials carry no body: nginx never reads the body of an auth answer, so one would cost the
# kept-alive upstream connection on every 401; the status and challenge say everything.


def is_decision_path(path: str) -> bool:
    """/auth and any path below it (Envoy asks /auth/<original path>)."""
    return path == "/auth" or path.startswith("/auth/")


def is_normalised_decision_path(raw_path: str) -> bool:
    """False for a decision path, as sent (before percent-decoding), with a dot segment
    (``.``, ``..``, also percent-encoded) or an empty segment (``//``) below /auth.

    A proxy matches its locations against the normalised path but may forward the raw one
    (``/auth/../metrics``): such a request is not a decision anyone meant. A trailing slash
    is kept (Envoy asks ``/auth/`` for ``/``), and so is an encoded slash inside a segment
    (``a%2Fb``), unless what it encodes is itself a dot segment (``..%2Fx``).
    """
    segments = raw_path.partition("?")[0].split("/")[2:]  # past "" and "auth"
    for index, segment in enumerate(segments):
        if not segment:
            if index < len(segments) - 1:
                return False
            continue
        if any(part in (".", "..") for part in unquote(segment).split("/")):
            return False
    return True


class Answer(NamedTuple):
    """A decision's response: a status and headers, never a body."""

    status: int
    headers: dict[str, str]


class Decider:
    """Turns a request to /auth into a decision, logs it and counts it."""

    def __init__(
        self,
        config: Config,
        chain: SchemeChain,
        metrics: Metrics,
        decisions: DecisionLog,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.chain = chain
        self.metrics = metrics
        self.decisions = decisions
        self._realm = config.server.realm
        self.origin = Origin(config.server.trusted_networks, config.server.allow_preflight,
                             trust_unix_peers=config.server.trusts_unix_peers)
        self._wall_clock = wall_clock
        self._cache_hint = config.server.nginx_cache_hint
        self._invalid_policies = InvalidPolicyLog()

    # -- the decision --------------------------------------------------------------------

    def refuse_unparseable(self) -> Answer:
        """The answer to a request the HTTP parser refused (control characters, a line past
        its limit): a 401 like any bad credential, since nginx turns a 400 into a 500. The
        edge closes the connection after it."""
        self.metrics.parse_errors.inc()
        self.metrics.record_decision("", "deny", "unparseable_request", 0.0)
        self.decisions.write({"status": 401, "outcome": "deny", "reason": "unparseable_request"})
        return self._challenge(Unauthenticated("unparseable_request"), self.chain.schemes)

    def begin(self, request: RequestView) -> Answer | PendingDecision:
        """The decision in one step. The answer, logged and counted, when reaching it needs
        no waiting: a remembered credential, a refusal found by parsing, a signature against
        a key at hand. Otherwise (a hash to verify, a key set to fetch) the
        :class:`PendingDecision` to await, carrying everything parsed so far; one dropped
        unawaited has had no effect (nothing logged, counted, reserved or remembered)."""
        started = time.perf_counter()
        case = self._case(request)
        if not is_normalised_decision_path(case.raw_path):
            return self._conclude(case, Unauthenticated("path_not_normalised"), started)
        if case.policy.problem:  # refused before any credential is looked at: no hash spent
            return self._conclude(case, Forbidden("invalid_policy"), started)
        if case.preflight:
            return self._conclude(case, None, started)
        try:
            outcome = self.chain.begin(case.credentials(), case.allowed)
        except Exception as exc:
            return self._conclude(case, exc, started)
        if isinstance(outcome, Identity):
            return self._conclude(case, outcome, started)
        return PendingDecision(self, case, outcome, started)

    def decide_now(self, request: RequestView) -> Answer | None:
        """:meth:`begin`'s answer when it needs no waiting; None when it does, and then
        :meth:`decide` decides (beginning again: a caller that can await should use begin)."""
        decision = self.begin(request)
        return decision if isinstance(decision, Answer) else None

    async def decide(self, request: RequestView) -> Answer:
        """The answer, logged and counted, waiting for it if need be."""
        decision = self.begin(request)
        if isinstance(decision, Answer):
            return decision
        return await decision.answer()

    async def authenticate(self, request: RequestView) -> Identity:
        """Who the request's credentials prove, under any enabled scheme and no location's
        policy (for the admin API). Raises Unauthenticated or KeysUnavailable, or whatever a
        verifier raised: :meth:`refusal` answers each. Nothing is logged or counted as a
        decision."""
        client = self.origin.client(request)
        credentials = parse_authorization(request.headers.getall("Authorization", []))
        schemes = self.chain.schemes
        outcome = self.chain.begin(AuthRequest(credentials, client.address, client.key),
                                   schemes)
        if isinstance(outcome, Identity):
            return outcome
        return await outcome.finish()

    def _case(self, request: RequestView) -> _Case:
        origin = self.origin
        method, uri = origin.original(request)
        client = origin.client(request)
        fields: dict[str, Any] = {
            "client": client.address, "method": method,
            "uri": uri.partition("?")[0], "scheme": "",
        }
        # Below /auth (Envoy) the query string is the client's, never a policy. The policy is
        # parsed from the query as sent: the decoded query_string would decode it twice, and
        # "group=a%252Cb" (the group "a%2Cb") would name the groups "a" and "b".
        query = request.raw_query_string if request.path == "/auth" else ""
        policy = policy_for(query)
        if policy.problem:
            self._invalid_policy(query, policy.problem)
            fields["policy_problem"] = policy.problem
        enabled = self.chain.schemes
        return _Case(enabled, request, fields, policy, policy.allowed_schemes(enabled),
                     origin.is_preflight(request), client.key)

    def _invalid_policy(self, query: str, problem: str) -> None:
        """Count a request under an invalid policy; log the policy the first time."""
        self.metrics.invalid_policies.labels(problem).inc()
        if self._invalid_policies.first_time(query):
            log.error("invalid policy: every request under it is refused with 403", extra={
                "event": "invalid_policy", "problem": problem, "policy": query[:256],
            })

    def _conclude(
        self, case: _Case, outcome: Identity | Exception | None, started: float
    ) -> Answer:
        """Turn an identity (None: an allowed preflight) or the exception that refused one
        into the answer; log and count it."""
        if isinstance(outcome, Exception):
            answer = self.refusal(outcome, case.fields, case.allowed)
        else:
            try:
                answer = self._admit(outcome, case)
            except Forbidden as exc:
                answer = self.refusal(exc, case.fields, case.allowed)
        fields = case.fields
        elapsed = time.perf_counter() - started
        fields["latency_ms"] = round(elapsed * 1000, 3)
        self.metrics.record_decision(fields["scheme"], fields["outcome"], fields["reason"], elapsed)
        self.decisions.write(fields)
        return answer

    def _admit(self, identity: Identity | None, case: _Case) -> Answer:
        fields = case.fields
        if identity is None:
            fields.update(status=200, outcome="allow", reason="preflight")
            return Answer(200, _PREFLIGHT_HEADERS)
        fields["scheme"] = identity.method
        fields["user"] = identity.user
        if identity.dropped:
            fields["dropped_values"] = identity.dropped
        case.policy.check(identity)
        fields["status"], fields["outcome"], fields["reason"] = 200, "allow", "ok"
        if self._cache_hint:
            expires = {"X-Accel-Expires": str(self._cache_seconds(identity))}
            return Answer(200, {**identity.headers, **expires})
        return Answer(200, {**identity.headers, **NO_STORE})

    def refusal(self, exc: Exception, fields: dict[str, Any],
                schemes: Sequence[str] = ()) -> Answer:
        """The answer refusing a request for ``exc``: Forbidden 403; Unauthenticated 401 with
        the challenges of ``schemes`` (every enabled scheme's if none); KeysUnavailable 503;
        anything else fails closed, a logged 401. ``fields``, the request's log line, gets
        the status, outcome and reason (and the user a 401 names)."""
        if isinstance(exc, Forbidden):
            fields.update(status=403, outcome="deny", reason=exc.reason)
            return self._forbid(exc, fields.get("scheme", ""))
        if isinstance(exc, Unauthenticated):
            fields.update(status=401, outcome="deny", reason=exc.reason)
            if exc.user:
                fields["user"] = exc.user
            return self._challenge(exc, tuple(schemes))
        if isinstance(exc, KeysUnavailable):
            fields.update(status=503, outcome="unavailable", reason=exc.reason)
            return Answer(503, {"Retry-After": str(exc.retry_after), **NO_STORE})
        # Fail closed. The class and frames go to the log; the message may hold input.
        log.error("decision failed", extra={
            "event": "decision_error", "exception": type(exc).__name__,
            "frames": traceback.format_tb(exc.__traceback__, limit=-4),
        })
        fields.update(status=401, outcome="deny", reason="internal_error")
        return self._challenge(Unauthenticated("internal_error"), self.chain.schemes)

    def _cache_seconds(self, identity: Identity) -> int:
        """How long nginx may cache this 200: never past a token's exp or the Basic cache TTL."""
        # Capped by the Basic TTL for tokens too: nginx cannot see a signing key removed.
        limit = self.config.basic.cache_ttl
        if identity.expires_at is not None:
            limit = min(limit, int(identity.expires_at - self._wall_clock()))
        return max(0, limit)

    def challenge_header(self, schemes: tuple[str, ...] | list[str], exc: Unauthenticated) -> str:
        """All challenges on one line: nginx before 1.23 forwards only the first line."""
        parts = []
        for scheme, challenge in self.chain.challenges(self._realm, schemes):
            if scheme == "bearer" and exc.bearer_error:
                challenge += (f', error="{exc.bearer_error}", '
                              f'error_description="{exc.bearer_description}"')
            parts.append(challenge)
        return ", ".join(parts)

    def _challenge(self, exc: Unauthenticated, schemes: tuple[str, ...]) -> Answer:
        if not schemes:  # a location whose scheme= names nothing enabled: still challenge
            schemes = self.chain.schemes
        return Answer(401, {"WWW-Authenticate": self.challenge_header(schemes, exc), **NO_STORE})

    def _forbid(self, exc: Forbidden, scheme: str) -> Answer:
        headers = dict(NO_STORE)
        if exc.required_scopes and scheme == "bearer":
            headers["WWW-Authenticate"] = (
                f'Bearer realm="{self._realm}", error="insufficient_scope", '
                f'scope="{exc.required_scopes}"'
            )
        return Answer(403, headers)


class PendingDecision:
    """A decision that must wait (:meth:`Decider.begin`): await :meth:`answer` once."""

    __slots__ = ("_case", "_decider", "_pending", "_started")

    def __init__(self, decider: Decider, case: _Case, pending: Pending, started: float) -> None:
        self._decider = decider
        self._case = case
        self._pending = pending
        self._started = started

    async def answer(self) -> Answer:
        """The answer, logged and counted, once the authentication has finished."""
        try:
            identity = await self._pending.finish()
        except Exception as exc:
            # Concluded here: kept in a local past this block, the exception would hold its
            # traceback, which holds this frame, which holds it: a cycle per refusal that only
            # a full collection frees, and those are rare here (server.GC_THRESHOLDS).
            return self._decider._conclude(self._case, exc, self._started)
        return self._decider._conclude(self._case, identity, self._started)


class _Case:
    """One decision under way: what its log line will say, and the location's policy."""

    __slots__ = ("_client_key", "_enabled", "_request", "allowed", "fields", "policy",
                 "preflight")

    def __init__(self, enabled: tuple[str, ...], request: RequestView, fields: dict[str, Any],
                 policy: Policy, allowed: tuple[str, ...], preflight: bool,
                 client_key: str) -> None:
        self._client_key = client_key
        self._enabled = enabled
        self._request = request
        self.fields = fields
        self.policy = policy
        self.allowed = allowed
        self.preflight = preflight

    @property
    def raw_path(self) -> str:
        return self._request.raw_path

    def credentials(self) -> AuthRequest:
        """The request's credentials, for the scheme chain; raise Unauthenticated if unusable."""
        credentials = parse_authorization(self._request.headers.getall("Authorization", []))
        if credentials.scheme in self._enabled:  # never a client's word as a label
            self.fields["scheme"] = credentials.scheme
        return AuthRequest(credentials, self.fields["client"], self._client_key)
