"""The soak's model: the state in force, the credentials sent under it, the one right
answer for them (:func:`expected`) and the judge of outcomes against the changes and restart
windows the soak announced (:class:`Verdicts`). bench/soak.py says what counts as wrong."""

from __future__ import annotations

from dataclasses import dataclass, field

# Policies by location (nginx sets $authproxy_policy; see soak_service.nginx_conf).
POLICIES = {
    "/": "",
    "/admin/": "group=admins",
    "/reports/": "scheme=bearer&scope=reports:read",
    "/broken/": "colour=blue",  # an invalid policy: 403 for everyone, never 200 (SPEC 8.2)
}


@dataclass(frozen=True, slots=True)
class State:
    """What decides the right answer: passwords in force, the admins, the signing kid and
    the kids authproxy trusts."""

    passwords: dict[str, str]
    admins: frozenset[str]
    signing: str
    trusted: frozenset[str]


@dataclass(frozen=True, slots=True)
class Basic:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class Bearer:
    kid: str
    kind: str  # "valid", "expired", "forged"
    groups: tuple[str, ...]
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Malformed:
    name: str


Credential = Basic | Bearer | Malformed | None


def expected(state: State, path: str, credential: Credential) -> int:
    """The one right status for ``credential`` on ``path`` while ``state`` is in force."""
    if isinstance(credential, Malformed) and credential.name == "two-headers":
        return 400  # nginx refuses a repeated Authorization itself, before asking authproxy
    if path == "/broken/":
        return 403  # an invalid policy refuses every request, whatever its credentials
    if path == "/reports/" and not isinstance(credential, Bearer):
        return 401  # scheme=bearer: any other scheme is refused with a Bearer-only challenge
    groups: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    if isinstance(credential, Basic):
        if state.passwords.get(credential.user) != credential.password:
            return 401
        groups = ("admins",) if credential.user in state.admins else ()
    elif isinstance(credential, Bearer):
        if credential.kind != "valid" or credential.kid not in state.trusted:
            return 401
        groups, scopes = credential.groups, credential.scopes
    else:
        return 401
    if path == "/admin/" and "admins" not in groups:
        return 403
    if path == "/reports/" and "reports:read" not in scopes:
        return 403
    return 200


@dataclass(frozen=True, slots=True)
class Change:
    """A state change the soak made at ``at``; answers for either side are right until
    ``at + grace``."""

    name: str
    at: float
    grace: float
    before: State
    after: State


@dataclass(slots=True)
class Outcome:
    phase: str
    path: str
    credential: Credential
    state: State  # in force when the request was sent
    sent: float
    done: float
    status: int  # 0: no answer (a transport error)


@dataclass(slots=True)
class Verdicts:
    """Outcomes judged against the changes and restart windows the soak announced."""

    changes: list[Change] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)  # restart windows

    def allowed(self, outcome: Outcome) -> set[int]:
        allowed = {expected(outcome.state, outcome.path, outcome.credential)}
        for change in self.changes:
            if outcome.sent <= change.at + change.grace and outcome.done >= change.at:
                allowed.add(expected(change.before, outcome.path, outcome.credential))
                allowed.add(expected(change.after, outcome.path, outcome.credential))
        return allowed

    def in_window(self, outcome: Outcome) -> bool:
        return any(outcome.sent <= end and outcome.done >= start for start, end in self.windows)

    def judge(self, outcome: Outcome) -> str:
        """"ok", "wrong", "5xx" (outside a restart window), "window-503" or "error"."""
        window = self.in_window(outcome)
        if outcome.status == 0:
            return "window-error" if window else "error"
        if window and outcome.status == 503:
            return "window-503"
        if outcome.status >= 500:
            return "5xx"
        return "ok" if outcome.status in self.allowed(outcome) else "wrong"

