"""A soak with chaos (issue 12), run by hand: `make soak MINUTES=N` (10 is the reference run).

Mixed traffic at a fixed rate goes through a real nginx on loopback to authproxy
(``workers = 2``, Basic against a users file of six hash kinds, Bearer against a real HTTPS
JWKS server, tests/jwks_server.py), while named phases, spread evenly over the run, rotate the
signing keys, take the JWKS server down, slow it, make it serve garbage, rewrite the users and
groups files, send SIGHUP, SIGKILL a worker and restart authproxy.

Every request is built from credentials whose right answer follows from the state in force
(who has which password, who is in "admins", which kid tokens are signed with and which kids
authproxy trusts): :func:`expected`. A decision is **wrong** when its status is not that
answer. Two allowances, both announced by the soak itself, never inferred from the answers:

- **Grace** (``--grace``, default 3 s; the key-removal change gets jwks_update_interval
  more): a request whose flight overlaps the first seconds after a state change may get the
  answer for the state before or the state after it, nothing else. A file watcher and a JWKS
  refresh take that long to see the change; a worker must see it after that.
- **The restart window**: from the moment the soak stops authproxy until its /readyz answers
  200 again, plus the grace. nginx's 503 (authproxy-errors.conf) is allowed there and nowhere
  else; any other 5xx, anywhere, is counted.

The report (a table, or ``--json FILE``) gives total requests, wrong decisions (target 0),
5xx outside the window (target 0), transport errors, p50/p99 latency per phase (as the client
sees it, through nginx), and RSS and open fds of the supervisor and its workers at the end of
each phase and just before the restart (target: flat within 10% over each incarnation of the
service, FLAT_SPANS). Exit status 0 only when there is no wrong decision and no 5xx outside
the window. Loopback only (plain HTTP to nginx, or TLS with ``--tls``); the run stops by
itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import trustme
from argon2 import PasswordHasher
from passlib.hash import apr_md5_crypt, sha512_crypt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.jwks_server: the suite's own controllable JWKS server

from authproxy.dev import devharness  # noqa: E402
from authproxy.dev.devcerts import write_dev_certs  # noqa: E402
from tests.jwks_server import JwksServer, SigningKey, mint, signing_key  # noqa: E402

AUDIENCE = "authproxy-soak"
JWKS_UPDATE_INTERVAL = 2  # seconds: short, so that the JWKS chaos meets real fetches
MAX_INFLIGHT = 64  # the client's bound: a slot-less tick is counted as shed, never queued
REQUEST_TIMEOUT = 10.0
STALL = 0.25  # seconds late a tick of the load may be before the report says so
FLAT = 0.10  # RSS and fds may move this much between samples

# Policies by location (nginx sets $authproxy_policy; see nginx_conf).
POLICIES = {
    "/": "",
    "/admin/": "group=admins",
    "/reports/": "scheme=bearer&scope=reports:read",
    "/broken/": "colour=blue",  # an invalid policy: 403 for everyone, never 200 (SPEC 8.2)
}

# -- the state, and the right answer under it --------------------------------------------------


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


# -- users, keys and tokens --------------------------------------------------------------------

ARGON2 = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


def hashed(kind: str, password: str) -> str:
    """An htpasswd hash of ``kind``: bcrypt, argon2id, sha512, apr1, sha1, ssha."""
    secret = password.encode()
    if kind == "bcrypt":
        return bcrypt.hashpw(secret, bcrypt.gensalt(5)).decode().replace("$2b$", "$2y$", 1)
    if kind == "argon2id":
        return ARGON2.hash(password)
    if kind == "sha512":
        return str(sha512_crypt.using(rounds=5000).hash(password))
    if kind == "apr1":
        return str(apr_md5_crypt.hash(password))
    if kind == "sha1":
        return "{SHA}" + base64.b64encode(hashlib.sha1(secret).digest()).decode()
    salt = os.urandom(4)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(secret + salt).digest() + salt).decode()


HASH_KINDS = {"alice": "bcrypt", "bob": "argon2id", "carol": "sha512", "dave": "apr1",
              "erin": "sha1", "frank": "ssha", "gina": "bcrypt"}


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` whole, as an operator's tooling does: a reader sees old or new."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def users_text(passwords: dict[str, str]) -> str:
    return "".join(f"{user}:{hashed(HASH_KINDS[user], pw)}\n" for user, pw in passwords.items())


def groups_text(admins: frozenset[str]) -> str:
    return f"admins: {' '.join(sorted(admins))}\n"


@dataclass(slots=True)
class Tokens:
    """Pre-minted tokens, a few per (kid, kind, claims), reused as real clients reuse theirs."""

    keys: dict[str, SigningKey]
    forger: SigningKey  # claims kid "k1" or "k2", signed by a key nobody publishes
    lifetime: int
    cache: dict[Bearer, list[str]] = field(default_factory=dict)

    def token(self, bearer: Bearer, rng: random.Random) -> str:
        pool = self.cache.setdefault(bearer, [])
        if len(pool) < 4:
            pool.append(self._mint(bearer))
        return rng.choice(pool)

    def _mint(self, bearer: Bearer) -> str:
        now = time.time()
        exp = int(now) - 3600 if bearer.kind == "expired" else int(now) + self.lifetime
        claims: dict[str, Any] = {"aud": AUDIENCE, "exp": exp, "jti": uuid.uuid4().hex,
                                  "sub": "tess", "groups": list(bearer.groups),
                                  "scope": " ".join(bearer.scopes)}
        if bearer.kind == "expired":
            claims["iat"] = exp - 600
        key = self.keys[bearer.kid]
        if bearer.kind == "forged":
            key = replace(self.forger, kid=bearer.kid)
        return mint(key, now, **claims)


# -- the traffic --------------------------------------------------------------------------------

WRONG_PASSWORDS = ("hunter2", "password1", "letmein", "Winter2026!")
BEARER_CLAIMS = ((), ("admins",)), ((), ()), (("admins",), ("reports:read",))
MALFORMED: dict[str, list[tuple[str, str]]] = {
    "not-base64": [("Authorization", "Basic !!!!not-base64")],
    "no-colon": [("Authorization", "Basic " + base64.b64encode(b"nocolon").decode())],
    "padding-junk": [("Authorization", "Basic " + base64.b64encode(b"alice:x").decode() + "==")],
    "bare-bearer": [("Authorization", "Bearer")],
    "not-a-jwt": [("Authorization", "Bearer a.b.c")],
    "digest": [("Authorization", 'Digest username="alice"')],
    "two-headers": [("Authorization", "Basic " + base64.b64encode(b"alice:x").decode()),
                    ("Authorization", "Basic " + base64.b64encode(b"alice:x").decode())],
    "long": [("Authorization", "Basic " + "A" * 4000)],
    "none": [],
}


def draw(state: State, first: State, rng: random.Random) -> tuple[str, Credential]:
    """One request's path and credential, by the traffic mix. ``first`` is the state the run
    began with: some clients keep its credentials (a changed password, a removed user, a
    token signed by a retired key), whose right answer the changes turn to 401."""
    roll = rng.random()
    path = rng.choices(list(POLICIES), weights=(60, 20, 15, 5))[0]
    if roll < 0.47:  # Basic, right password: mostly remembered after the first
        user = rng.choice(sorted(state.passwords))
        return path, Basic(user, state.passwords[user])
    if roll < 0.50:
        user = rng.choice(sorted(first.passwords))
        return path, Basic(user, first.passwords[user])
    if roll < 0.54:
        return path, Basic(rng.choice(sorted(HASH_KINDS)), rng.choice(WRONG_PASSWORDS))
    if roll < 0.56:
        return path, Basic(f"nobody{rng.randrange(50)}", rng.choice(WRONG_PASSWORDS))
    if roll < 0.77:
        groups, scopes = rng.choice(BEARER_CLAIMS)
        return path, Bearer(state.signing, "valid", groups, scopes)
    if roll < 0.80:
        groups, scopes = rng.choice(BEARER_CLAIMS)
        return path, Bearer(first.signing, "valid", groups, scopes)
    if roll < 0.85:
        return path, Bearer(state.signing, "expired", (), ())
    if roll < 0.90:
        return path, Bearer(state.signing, "forged", ("admins",), ("reports:read",))
    name = rng.choice(sorted(MALFORMED))
    return path, (None if name == "none" else Malformed(name))


def headers_for(credential: Credential, tokens: Tokens,
                rng: random.Random) -> list[tuple[str, str]]:
    if isinstance(credential, Basic):
        pair = f"{credential.user}:{credential.password}".encode()
        return [("Authorization", "Basic " + base64.b64encode(pair).decode())]
    if isinstance(credential, Bearer):
        return [("Authorization", "Bearer " + tokens.token(credential, rng))]
    return MALFORMED[credential.name] if isinstance(credential, Malformed) else []


# -- processes and files ------------------------------------------------------------------------


def nginx_conf(prefix: Path, port: int, app_port: int, tls: dict[str, Path] | None) -> str:
    """An http {} body: nginx's own tiny app on ``app_port``, and a site on ``port`` (TLS with
    ``tls``' dev certificates, as the demo serves) with one location per policy, protected by
    the repository's snippets verbatim."""
    listen = f"127.0.0.1:{port} ssl" if tls else f"127.0.0.1:{port}"
    certificates = (f"ssl_certificate {tls['cert']};\n        ssl_certificate_key {tls['key']};"
                    if tls else "")
    snippets = devharness.nginx_snippets()
    locations = []
    for path, policy in POLICIES.items():
        policy_line = f'set $authproxy_policy "{policy}";' if policy else ""
        locations.append(f"""        location {path} {{
            {policy_line}
            include {snippets}/authproxy-protect.conf;
            proxy_set_header Connection "";
            proxy_pass http://soak_app;
        }}""")
    body = "\n".join(locations)
    return f"""    include {prefix}/authproxy-upstream.conf;
    upstream soak_app {{
        server 127.0.0.1:{app_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{app_port};
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen {listen};
        {certificates}
        proxy_http_version 1.1;
        include {snippets}/authproxy-auth.conf;
        include {snippets}/authproxy-errors.conf;
{body}
    }}
"""


def authproxy_config(work: Path, address: str, jwks: JwksServer) -> str:
    return f"""[server]
listen = ["{address}"]
workers = 2

[log]
level = "info"
format = "json"

[basic]
users_file = "{work}/users.htpasswd"
groups_file = "{work}/groups"
max_failures = 1000000000

[jwt]
jwks_endpoint = "{jwks.url}"
jwks_ssl_ca_certificate = "{jwks.ca_file}"
jwks_update_interval = {JWKS_UPDATE_INTERVAL}
jwks_require_audience = ["{AUDIENCE}"]
"""


def process_figures(pid: int) -> tuple[float, int]:
    """Resident MB and open fds of ``pid``."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the supervisor's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # After the command's ")": state, then the parent's pid.
                state, parent = (entry / "stat").read_text().rpartition(")")[2].split()[:2]
                if int(parent) == pid and state != "Z":
                    found.append(int(entry.name))
    return sorted(found)


@dataclass(slots=True)
class Service:
    """authproxy under devharness.running, started and stopped from a thread so that the
    event loop (traffic, the JWKS server) never waits on it."""

    work: Path
    address: str
    config_text: str
    starts: int = 0
    stack: contextlib.ExitStack | None = None
    pid: int = 0

    def start(self) -> None:
        self.starts += 1
        config = self.work / "authproxy.toml"
        config.write_text(self.config_text, encoding="utf-8")
        _, port = devharness.host_port(self.address)
        devharness.wait_until(lambda: devharness.port_is_free(port), f"port {port} free")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHPROXY_")}
        command = [sys.executable, "-m", "authproxy", "serve", "--config", str(config)]
        ready = [(lambda: devharness.http_status(self.address, "/readyz") == 200,
                  f"authproxy on {self.address} ready")]
        stack = contextlib.ExitStack()
        process = stack.enter_context(devharness.running(
            command, self.work / f"authproxy-{self.starts}.log", ready, env=env, cwd=self.work))
        self.stack, self.pid = stack, process.pid
        devharness.wait_until(lambda: len(children(self.pid)) == 2, "two workers")

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.close()  # SIGTERM, and ProcessFailed unless it exits 0
            self.stack = None

    def figures(self) -> dict[str, Any]:
        supervisor = process_figures(self.pid)
        workers = [process_figures(pid) for pid in children(self.pid)]
        return {"supervisor_pid": self.pid, "workers_pids": children(self.pid),
                "supervisor_rss_mb": round(supervisor[0], 1), "supervisor_fds": supervisor[1],
                "workers_rss_mb": [round(w[0], 1) for w in workers],
                "workers_fds": [w[1] for w in workers]}


# -- the run ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Soak:
    work: Path
    seconds: float
    rate: float
    grace: float
    rng: random.Random
    jwks: JwksServer
    service: Service
    tokens: Tokens
    state: State
    first: State
    phase: str = "starting"
    outcomes: list[Outcome] = field(default_factory=list)
    verdicts: Verdicts = field(default_factory=Verdicts)
    shed: int = 0
    stalled: int = 0  # ticks the soak's own loop missed (it was busy), not sent
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    started: float = 0.0

    def change(self, name: str, state: State, grace: float | None = None) -> None:
        self.verdicts.changes.append(Change(name, time.monotonic(),
                                            self.grace if grace is None else grace,
                                            self.state, state))
        self.state = state
        self.log(f"state change: {name}")

    def log(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:7.1f} s  [{self.phase}] {what}")

    async def traffic(self, url: str, until: float, tls: dict[str, Path] | None) -> None:
        inflight: set[asyncio.Task[None]] = set()
        context = ssl.create_default_context(cafile=str(tls["ca"])) if tls else None
        connector = aiohttp.TCPConnector(limit=MAX_INFLIGHT, ssl=context or False)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tick = time.monotonic()
            while tick < until:
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
                late = time.monotonic() - tick
                if late > STALL:  # no burst to catch up: the rate stays what it says
                    self.log(f"the soak's own event loop stalled {late:.2f} s")
                    self.stalled += int(late * self.rate)
                    tick = time.monotonic()
                tick += 1 / self.rate
                if len(inflight) >= MAX_INFLIGHT:
                    self.shed += 1
                    continue
                task = asyncio.create_task(self.one(session, url))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            if inflight:
                await asyncio.wait(inflight)

    async def one(self, session: aiohttp.ClientSession, url: str) -> None:
        path, credential = draw(self.state, self.first, self.rng)
        state, phase = self.state, self.phase
        headers = headers_for(credential, self.tokens, self.rng)
        sent = time.monotonic()
        try:
            async with session.get(url + path, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.outcomes.append(Outcome(phase, path, credential, state, sent, time.monotonic(),
                                     status))

    def sample(self, name: str) -> None:
        self.samples[name] = self.service.figures()


Action = Callable[[Soak], Awaitable[None]]


async def nothing(soak: Soak) -> None:
    return None


async def rotate_begin(soak: Soak) -> None:
    fetches = soak.jwks.fetches
    soak.jwks.serve(soak.tokens.keys["k1"], soak.tokens.keys["k2"])
    await soak.jwks.wait_for_fetches(fetches + 2, timeout=6 * JWKS_UPDATE_INTERVAL)
    soak.change("sign with k2 (k1 and k2 published)",
                replace(soak.state, signing="k2", trusted=frozenset({"k1", "k2"})))


async def rotate_middle(soak: Soak) -> None:
    soak.jwks.serve(soak.tokens.keys["k2"])
    soak.change("k1 removed from the JWKS", replace(soak.state, trusted=frozenset({"k2"})),
                grace=soak.grace + JWKS_UPDATE_INTERVAL)


async def flap_begin(soak: Soak) -> None:
    await soak.jwks.stop()
    soak.log("JWKS server down")


async def flap_middle(soak: Soak) -> None:
    await soak.jwks.start()
    soak.log("JWKS server up")


async def slow_begin(soak: Soak) -> None:
    soak.jwks.hold = True
    soak.log("JWKS answers held until the phase ends")


async def slow_end(soak: Soak) -> None:
    soak.jwks.hold = False
    soak.jwks.release()


async def garbage_begin(soak: Soak) -> None:
    soak.jwks.body = b"<html>502 Bad Gateway</html>"
    soak.log("JWKS serves HTML")


async def garbage_middle(soak: Soak) -> None:
    soak.jwks.body = b'{"keys": "none"}'
    soak.log("JWKS serves JSON of the wrong shape")


async def garbage_end(soak: Soak) -> None:
    soak.jwks.body = None


async def users_begin(soak: Soak) -> None:
    passwords = dict(soak.state.passwords)
    passwords["bob"] = "bob-new-" + uuid.uuid4().hex[:8]
    passwords["gina"] = "gina-" + uuid.uuid4().hex[:8]
    del passwords["frank"]
    text = await asyncio.to_thread(users_text, passwords)
    write_atomically(soak.work / "users.htpasswd", text)
    soak.change("bob's password changed, gina added, frank removed",
                replace(soak.state, passwords=passwords))


async def sighup_begin(soak: Soak) -> None:
    os.kill(soak.service.pid, signal.SIGHUP)
    soak.log("SIGHUP, nothing changed")


async def sighup_middle(soak: Soak) -> None:
    admins = soak.state.admins | {"bob"}
    write_atomically(soak.work / "groups", groups_text(admins))
    os.kill(soak.service.pid, signal.SIGHUP)
    soak.change("bob joins admins, SIGHUP", replace(soak.state, admins=admins))


async def kill_begin(soak: Soak) -> None:
    victim = children(soak.service.pid)[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    soak.log(f"SIGKILL worker {victim}")

    def replaced() -> bool:
        workers = children(soak.service.pid)
        return len(workers) == 2 and victim not in workers

    await asyncio.to_thread(devharness.wait_until, replaced, "a replacement worker")
    soak.log(f"worker replaced after {time.monotonic() - killed:.2f} s")


async def restart_begin(soak: Soak) -> None:
    soak.sample("before restart")
    start = time.monotonic()
    soak.log("restart announced: authproxy stopping")
    await asyncio.to_thread(soak.service.stop)
    await asyncio.to_thread(soak.service.start)
    soak.verdicts.windows.append((start, time.monotonic() + soak.grace))
    soak.log(f"authproxy ready again after {time.monotonic() - start:.2f} s")


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    begin: Action = nothing
    middle: Action = nothing
    end: Action = nothing


PHASES = (
    Phase("steady"),
    Phase("jwks-rotate", rotate_begin, rotate_middle),
    Phase("jwks-flap", flap_begin, flap_middle),
    Phase("jwks-slow", slow_begin, end=slow_end),
    Phase("jwks-garbage", garbage_begin, garbage_middle, garbage_end),
    Phase("users-rewrite", users_begin),
    Phase("sighup", sighup_begin, sighup_middle),
    Phase("worker-kill", kill_begin),
    Phase("restart", restart_begin),
    Phase("steady-end"),
)


async def chaos(soak: Soak, phases: tuple[Phase, ...]) -> None:
    length = soak.seconds / len(phases)
    for index, phase in enumerate(phases):
        start = soak.started + index * length
        soak.phase = phase.name
        soak.log("phase begins")
        await phase.begin(soak)
        await asyncio.sleep(max(0.0, start + length / 2 - time.monotonic()))
        await phase.middle(soak)
        await asyncio.sleep(max(0.0, start + length - time.monotonic()))
        await phase.end(soak)
        soak.sample(f"end of {phase.name}")


async def run(work: Path, seconds: float, rate: float, grace: float, seed: int,
              use_tls: bool, phases: tuple[Phase, ...] = PHASES) -> Soak:
    ca = trustme.CA()
    ca_file = work / "jwks-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    jwks = JwksServer(ca, ca_file)
    keys = {kid: signing_key("RS256", kid, name=f"soak-{kid}") for kid in ("k1", "k2")}
    jwks.serve(keys["k1"])
    await jwks.start()
    passwords = {user: f"{user}-{uuid.uuid4().hex[:10]}" for user in HASH_KINDS if user != "gina"}
    state = State(passwords, frozenset({"alice"}), "k1", frozenset({"k1"}))
    (work / "users.htpasswd").write_text(users_text(passwords))
    (work / "groups").write_text(groups_text(state.admins))
    ports = devharness.PortPool()
    port, app_port, authproxy_port = ports.free_ports(3)
    address = f"127.0.0.1:{authproxy_port}"
    service = Service(work, address, authproxy_config(work, address, jwks))
    tokens = Tokens(keys, signing_key("RS256", "k1", name="soak-forger"), int(seconds) + 3600)
    soak = Soak(work, seconds, rate, grace, random.Random(seed), jwks, service, tokens, state,
                state)
    prefix = work / "nginx"
    prefix.mkdir()
    upstream = (devharness.nginx_snippets() / devharness.UPSTREAM_SNIPPET).read_text()
    (prefix / devharness.UPSTREAM_SNIPPET).write_text(devharness.render_upstream(upstream, address))
    tls = write_dev_certs(work / "tls", ("localhost", "127.0.0.1")) if use_tls else None
    user = "root" if os.geteuid() == 0 else None
    conf = devharness.write_nginx_conf(prefix, devharness.nginx_main_conf(
        nginx_conf(prefix, port, app_port, tls), prefix, user=user, worker_connections=1024))
    try:
        await asyncio.to_thread(service.start)
        with devharness.start_nginx(conf, prefix, port):
            soak.started = time.monotonic()
            url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
            await asyncio.gather(soak.traffic(url, soak.started + seconds, tls),
                                 chaos(soak, phases))
    finally:
        await asyncio.to_thread(service.stop)
        await jwks.close()
    return soak


# -- the report ---------------------------------------------------------------------------------


def kind_of(credential: Credential) -> str:
    """A credential's kind, for latency by kind: basic, bearer-<kind>-<kid>, malformed, none."""
    if isinstance(credential, Basic):
        return "basic"
    if isinstance(credential, Bearer):
        return f"bearer-{credential.kind}-{credential.kid}"
    return "malformed" if credential is not None else "none"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def report(soak: Soak) -> dict[str, Any]:
    counts: dict[str, int] = {}
    phases: dict[str, dict[str, Any]] = {}
    wrong_examples: list[str] = []
    statuses: dict[str, int] = {}
    for outcome in soak.outcomes:
        verdict = soak.verdicts.judge(outcome)
        counts[verdict] = counts.get(verdict, 0) + 1
        statuses[str(outcome.status)] = statuses.get(str(outcome.status), 0) + 1
        phase = phases.setdefault(outcome.phase, {"requests": 0, "latencies": [], "bad": 0,
                                                  "by_kind": {}})
        phase["requests"] += 1
        latency = (outcome.done - outcome.sent) * 1000
        phase["latencies"].append(latency)
        phase["by_kind"].setdefault(kind_of(outcome.credential), []).append(latency)
        if verdict in ("wrong", "5xx", "error"):
            phase["bad"] += 1
            if len(wrong_examples) < 20:
                wrong_examples.append(
                    f"{verdict}: {outcome.status} for {outcome.path} {outcome.credential!r}, "
                    f"expected {sorted(soak.verdicts.allowed(outcome))}, at "
                    f"{outcome.sent - soak.started:.2f} s")
    for phase in phases.values():
        latencies = phase.pop("latencies")
        phase["p50_ms"] = round(statistics.median(latencies), 1)
        phase["p99_ms"] = round(percentile(latencies, 0.99), 1)
        slowest, values = max(phase.pop("by_kind").items(),
                              key=lambda item: percentile(item[1], 0.99))
        phase["slowest_kind"] = f"{slowest} (p99 {percentile(values, 0.99):.1f} ms)"
    flat = {f"{first} -> {last}": resources_flat(soak.samples[first], soak.samples[last])
            for first, last in FLAT_SPANS if same_service(soak.samples, first, last)}
    return {
        "seconds": soak.seconds, "rate": soak.rate, "grace_s": soak.grace,
        "requests": len(soak.outcomes), "statuses": dict(sorted(statuses.items())),
        "shed_by_client": soak.shed, "missed_in_client_stalls": soak.stalled,
        "wrong": counts.get("wrong", 0), "5xx_outside_window": counts.get("5xx", 0),
        "errors_outside_window": counts.get("error", 0),
        "window_503": counts.get("window-503", 0), "window_errors": counts.get("window-error", 0),
        "phases": phases, "resources": soak.samples, "flat": flat,
        "events": soak.events, "bad_examples": wrong_examples,
    }


# Spans over which one service's processes are compared (those the run sampled, both ends
# from the same supervisor): the first incarnation from the end of the warm-up to the moment
# before the restart; the same from the end of the reloads (before server.tune_malloc, each
# thread that verified or timed an argon2id hash kept its 8 MiB: workers grew by 8 MB steps
# at reloads); the second incarnation; and a run without a restart (--phases).
FLAT_SPANS = (("end of steady", "before restart"), ("end of sighup", "before restart"),
              ("end of restart", "end of steady-end"), ("end of steady", "end of steady-end"))


def same_service(samples: dict[str, dict[str, Any]], first: str, last: str) -> bool:
    return (first in samples and last in samples
            and samples[first]["supervisor_pid"] == samples[last]["supervisor_pid"])


def resources_flat(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether the supervisor's RSS and fds and the workers' summed RSS grew by at most FLAT.
    The workers' fds are not compared: they follow the connections nginx keeps open (up to
    its upstream keepalive of 32) and the ones in flight."""
    pairs = [(before["supervisor_rss_mb"], after["supervisor_rss_mb"]),
             (before["supervisor_fds"], after["supervisor_fds"]),
             (sum(before["workers_rss_mb"]), sum(after["workers_rss_mb"]))]
    return all(last <= first * (1 + FLAT) for first, last in pairs)


def print_report(figures: dict[str, Any]) -> None:
    print(f"\nsoak: {figures['seconds']:.0f} s at {figures['rate']:.0f} req/s, "
          f"grace {figures['grace_s']} s\n")
    for line in figures["events"]:
        print(line)
    print("\n| phase | requests | bad | p50 ms | p99 ms | slowest kind |\n"
          "|---|---:|---:|---:|---:|---|")
    for name, phase in figures["phases"].items():
        print(f"| {name} | {phase['requests']} | {phase['bad']} | {phase['p50_ms']} | "
              f"{phase['p99_ms']} | {phase['slowest_kind']} |")
    print("\n| total requests | wrong decisions | 5xx outside window | transport errors outside "
          "window | nginx 503 in window | errors in window | shed by client |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {figures['requests']} | {figures['wrong']} | {figures['5xx_outside_window']} | "
          f"{figures['errors_outside_window']} | {figures['window_503']} | "
          f"{figures['window_errors']} | {figures['shed_by_client']} |")
    print("\nstatuses (0: no answer): " + ", ".join(
        f"{status}: {count}" for status, count in figures["statuses"].items()))
    print(f"ticks missed while the soak's own loop stalled: {figures['missed_in_client_stalls']}")
    print("\n| sample | supervisor pid | RSS MB | fds | workers pids | workers RSS MB | "
          "workers fds |\n|---|---:|---:|---:|---|---|---|")
    for name, sample in figures["resources"].items():
        print(f"| {name} | {sample['supervisor_pid']} | {sample['supervisor_rss_mb']} | "
              f"{sample['supervisor_fds']} | {sample['workers_pids']} | "
              f"{sample['workers_rss_mb']} | {sample['workers_fds']} |")
    for span, flat in figures["flat"].items():
        print(f"flat within {FLAT:.0%} (supervisor RSS and fds, workers' RSS), {span}: {flat}")
    for example in figures["bad_examples"]:
        print(example)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, help="overrides --minutes (the smoke test)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--grace", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--phases", default=",".join(p.name for p in PHASES),
                        help="a comma-separated subset of the phases, in the order given")
    parser.add_argument("--tls", action="store_true", help="TLS to nginx (dev certificates)")
    parser.add_argument("--json", type=Path, help="also write the report here, as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    by_name = {phase.name: phase for phase in PHASES}
    unknown = [name for name in args.phases.split(",") if name not in by_name]
    if unknown:
        parser.error(f"unknown phases {unknown}; known: {', '.join(by_name)}")
    phases = tuple(by_name[name] for name in args.phases.split(","))
    work = Path(tempfile.mkdtemp(prefix="authproxy-soak-"))
    # SIGTERM as Ctrl-C: the run unwinds and stops its nginx, authproxy and JWKS server,
    # which the default action (exit at once) would leave running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        soak = asyncio.run(run(work, seconds, args.rate, args.grace, args.seed, args.tls,
                               phases))
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
    figures = report(soak)
    print_report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if figures["wrong"] == 0 and figures["5xx_outside_window"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
