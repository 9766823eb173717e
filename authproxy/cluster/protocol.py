"""The messages between the supervisor and its workers: one frozen dataclass each, and one
encoding (:func:`encode`, :func:`decode`).

On the control channel (ipc.py) a message is one line of JSON: an object whose ``op`` names
the message and whose other members are its fields, tuples as arrays. :func:`decode` checks
every field against its annotation and the message's own rules (``__post_init__``), and
rejects unknown ops, unknown or missing fields and anything that does not fit: it returns
None and logs the line as dropped, so that a reader goes on with the next line and no
malformed message ever reaches a callback.

In order, the supervisor sends a worker :class:`Bootstrap`, then :class:`Lockout` messages up
to :class:`LockoutEnd` (banshare.py), before the worker serves; afterwards notices
(:class:`Published`, :class:`Ban`, :class:`Known`) and replies (:class:`RefreshReply`). A
worker sends requests (:class:`RefreshRequest`) and notices (:class:`Failure`,
:class:`Known`, :class:`Heartbeat`).

**The config travels pickled** (base64, inside the bootstrap). The alternative was to send
the TOML text and environment again for ``load_config`` in the worker. Pickle is kept
because the worker must run exactly the Config the supervisor validated: re-validating in
the worker would read the files it names a second time, and a file changed since (a users
file, a CA) would make one worker's config differ from the others' or fail in a worker that
the supervisor then restarts in a loop. Unpickling is safe here only because of the
channel: a socket pair the supervisor made, whose other end only the worker it spawned
inherits; nothing else can write to it. Both ends run the same installed package (the
worker is ``sys.executable -c`` of it), so the pickled classes match; after an upgrade in
place a restarted worker that cannot unpickle the old Config fails to start, which the
supervisor's restart bound turns into a visible exit.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import pickle
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, get_args, get_origin, get_type_hints

from ..config import Config

log = logging.getLogger("authproxy.workers")

MAX_MESSAGE = 1 << 20  # bytes in one line; a bootstrap is a few kB
TRIGGERS = frozenset({"miss", "admin"})  # what a worker may ask the supervisor to fetch for
MAC_KEY_HEX = 64  # lockout.Lockout's MAC key: 32 bytes
PAIR_HEX = 32  # the MAC of a known (user, address) pair: 16 bytes


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Supervisor to a new worker, first: who it is, where the shared state lives, and the
    validated config (pickled on the wire; see the module docstring)."""

    OP: ClassVar[str] = "bootstrap"
    index: int  # 0..workers-1, stable across restarts of that worker
    state_dir: str  # the supervisor's private directory (published key sets)
    metrics_dir: str  # the shared metrics directory (obs/promfiles.py)
    config: Config


@dataclass(frozen=True, slots=True)
class Lockout:
    """Supervisor to a new worker, after the bootstrap (banshare.py): part of the brute-force
    state: the MAC key (in the first), bans in force with their seconds left, known pairs.
    ``MasterLink.open`` merges them into one."""

    OP: ClassVar[str] = "lockout"
    mac_key: str = ""  # hex
    bans: tuple[tuple[str, float], ...] = ()
    known: tuple[str, ...] = ()  # hex MACs of (user, address) pairs

    def __post_init__(self) -> None:
        if self.mac_key:
            _check_hex(self.mac_key, MAC_KEY_HEX, "mac_key")
        for pair in self.known:
            _check_hex(pair, PAIR_HEX, "known")
        if any(seconds < 0 for _, seconds in self.bans):
            raise ValueError("bans: negative seconds")


@dataclass(frozen=True, slots=True)
class LockoutEnd:
    """Supervisor to a new worker: the lockout state is complete; serve."""

    OP: ClassVar[str] = "lockout_end"


@dataclass(frozen=True, slots=True)
class Ban:
    """Supervisor to every worker: ban ``key`` for ``seconds`` from now."""

    OP: ClassVar[str] = "ban"
    key: str
    seconds: float

    def __post_init__(self) -> None:
        if not self.key or self.seconds < 0:
            raise ValueError("ban: empty key or negative seconds")


@dataclass(frozen=True, slots=True)
class Known:
    """Either way: a (user, address) pair authenticated (its MAC, never the pair)."""

    OP: ClassVar[str] = "known"
    pair: str  # hex

    def __post_init__(self) -> None:
        _check_hex(self.pair, PAIR_HEX, "pair")


@dataclass(frozen=True, slots=True)
class Failure:
    """Worker to supervisor: the keys (user names, client addresses) of Basic failures."""

    OP: ClassVar[str] = "failure"
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """Worker to supervisor: fetch the endpoint's set now (an unknown kid, or jwks_setup);
    ``id`` is set by ``MasterLink.request`` and comes back in the reply."""

    OP: ClassVar[str] = "refresh"
    trigger: str
    id: int = 0

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError("refresh: unknown trigger")


@dataclass(frozen=True, slots=True)
class RefreshReply:
    """Supervisor to the worker that asked: how the refresh went, and the generation of the
    publication that holds its outcome. ``rate_limited``: the supervisor fetched nothing for
    this request (its rate limit for the whole service); ``retry_after``: seconds until a
    jwks_setup may fetch again."""

    OP: ClassVar[str] = "reply"
    id: int
    generation: int
    ok: bool
    reason: str = ""
    detail: str = ""
    rate_limited: bool = False
    retry_after: int = 0


@dataclass(frozen=True, slots=True)
class Published:
    """Supervisor to every worker: the endpoint's state was published (keyshare.py)."""

    OP: ClassVar[str] = "published"
    generation: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Worker to supervisor, every ``ipc.heartbeat_interval`` from the worker's event loop:
    that loop turned just now. A worker silent for ``server.worker_timeout`` seconds is hung
    (stopped, or its loop blocked) and is killed and replaced (supervisor.py)."""

    OP: ClassVar[str] = "heartbeat"


Message = (Bootstrap | Lockout | LockoutEnd | Ban | Known | Failure | RefreshRequest
           | RefreshReply | Published | Heartbeat)
_KINDS: dict[str, type[Message]] = {
    kind.OP: kind for kind in (Bootstrap, Lockout, LockoutEnd, Ban, Known, Failure,
                               RefreshRequest, RefreshReply, Published, Heartbeat)
}
_HINTS = {kind: get_type_hints(kind) for kind in _KINDS.values()}


def encode(message: Message) -> bytes:
    """``message`` as one line of the channel."""
    body: dict[str, Any] = {"op": message.OP}
    for field in fields(message):
        value = getattr(message, field.name)
        body[field.name] = _pickled(value) if isinstance(value, Config) else value
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message | None:
    """The message on ``line``; None, logged, for anything that is not a valid message."""
    op: object = None
    try:
        body = json.loads(line)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        op = body.pop("op", None)
        kind = _KINDS.get(op) if isinstance(op, str) else None
        if kind is None:
            raise ValueError("unknown op")
        return kind(**_fields(kind, body))
    except (ValueError, TypeError, RecursionError) as exc:
        log.error("control message dropped", extra={
            "event": "control", "op": op[:32] if isinstance(op, str) else None,
            "error": str(exc)[:200],
        })
        return None


def _fields(kind: type[Message], body: dict[str, Any]) -> dict[str, Any]:
    hints = _HINTS[kind]
    names = {field.name for field in fields(kind)}
    if unknown := body.keys() - names:
        raise ValueError(f"unknown fields: {sorted(unknown)[:5]}")
    values = {}
    for field in fields(kind):
        if field.name in body:
            values[field.name] = _checked(body[field.name], hints[field.name], field.name)
        elif field.default is MISSING:
            raise ValueError(f"{field.name}: missing")
    return values


def _checked(value: Any, hint: Any, name: str) -> Any:
    """``value`` as the annotation ``hint`` wants it; raise ValueError if it does not fit."""
    if hint is Config:
        return _unpickled(value)
    if hint in (bool, int, str) and type(value) is hint:  # bool is no int here
        return value
    if hint is float and type(value) in (int, float) and math.isfinite(value):
        return float(value)
    if get_origin(hint) is tuple and isinstance(value, list):
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_checked(item, args[0], name) for item in value)
        if len(value) == len(args):
            return tuple(_checked(item, arg, name) for item, arg in zip(value, args, strict=True))
    raise ValueError(f"{name}: not a {getattr(hint, '__name__', hint)}")


def _check_hex(value: str, length: int, name: str) -> None:
    if len(value) != length:
        raise ValueError(f"{name}: not {length} hex digits")
    bytes.fromhex(value)  # ValueError if not hex


def _pickled(config: Config) -> str:
    return base64.b64encode(pickle.dumps(config)).decode("ascii")


def _unpickled(value: Any) -> Config:
    """The bootstrap's config. Safe to unpickle only because of the channel (module
    docstring); anything but a Config is refused."""
    if not isinstance(value, str):
        raise ValueError("config: not a string")
    try:
        config = pickle.loads(base64.b64decode(value, validate=True))  # noqa: S301
    except (binascii.Error, pickle.UnpicklingError, EOFError, AttributeError, ImportError,
            IndexError) as exc:
        raise ValueError(f"config: {type(exc).__name__}") from None
    if not isinstance(config, Config):
        raise ValueError("config: not a Config")
    return config
