"""Configuration: a TOML file, ``AUTHPROXY_<SECTION>_<KEY>`` overrides, validated once.

``load_config()`` is the only reader of the config file and of the ``AUTHPROXY_<SECTION>_<KEY>``
variables (the CLI reads ``AUTHPROXY_CONFIG``, the file's path). It collects every
problem it finds and raises one :class:`ConfigError` listing them all; code downstream trusts
the returned :class:`Config` and never re-checks it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .listen import ListenAddress, UnixSocketAccess, parse_listen, unix_peers_trusted
from .regularfile import (
    MAX_GROUPS_FILE_BYTES,
    MAX_JWKS_FILE_BYTES,
    MAX_USERS_FILE_BYTES,
    file_problem,
)

ENV_PREFIX = "AUTHPROXY_"
# Not configuration keys, but shared by the server and the supervisor (which imports the
# server only once prometheus_client's shared directory is set: see supervise()), so kept
# with the settings they go with.
SHUTDOWN_TIMEOUT = 10.0  # seconds in-flight decisions get to finish after SIGTERM
METRICS_FLUSH_INTERVAL = 1.0  # seconds between workers' metric flushes (see metrics.py)
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
_HEADER_SAFE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")


def _meta(doc: str, check: Callable[[Any], str | None] | None = None) -> dict[str, Any]:
    return {"doc": doc, "check": check}


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _at_least(minimum: int) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        return None if value >= minimum else f"must be at least {minimum}"

    return check


def _header_safe(value: str) -> str | None:
    if _HEADER_SAFE.fullmatch(value):
        return None
    return 'must be printable ASCII without " or \\'


def _check_listen(values: tuple[str, ...]) -> str | None:
    if not values:
        return "needs at least one address"
    for value in values:
        try:
            parse_listen(value)
        except ValueError as exc:
            return str(exc)
    return None


def _check_networks(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value!r} is not an IP network"
    return None


def _check_mode(value: str) -> str | None:
    if re.fullmatch(r"0?[0-7]{3}", value):
        return None
    return 'must be octal permission bits, like "0660"'


def _check_workers(value: str) -> str | None:
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return None
    return 'must be a whole number of at least 1, or "auto"'


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _check_algorithms(values: tuple[str, ...]) -> str | None:
    if not values:
        return "needs at least one algorithm"
    bad = [v for v in values if v not in ASYMMETRIC_ALGORITHMS]
    if bad:
        return f"unsupported {bad}; allowed: {', '.join(ASYMMETRIC_ALGORITHMS)}"
    return None


def check_url(value: str) -> str | None:
    """None if ``value`` is empty or a URL key material may be fetched from; else why not."""
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost"):
        return None  # key material over plain HTTP is only acceptable on loopback
    return "must be an https:// URL (http:// only on loopback)"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[str, ...] = field(
        default=("127.0.0.1:9180",),
        metadata=_meta("addresses to listen on: HOST:PORT, [V6]:PORT or unix:/path", _check_listen),
    )
    workers: str = field(
        default="1", metadata=_meta('processes sharing the sockets, or "auto"', _check_workers)
    )
    worker_timeout: int = field(
        default=5,
        metadata=_meta(
            "seconds a worker's event loop may send no heartbeat before the supervisor kills "
            "(SIGKILL) and replaces it, as hung (workers > 1)", _positive),
    )
    unix_socket_mode: str = field(
        default="0666",
        metadata=_meta(
            'permissions of unix listen sockets, octal ("0660"). Their peers are believed as '
            'the proxy (X-Real-IP / X-Forwarded-For) only without o+w: "0666" lets any local '
            "user connect, so nothing they forward is believed",
            _check_mode),
    )
    unix_socket_group: str = field(
        default="",
        metadata=_meta("group (name or number) given to unix listen sockets, e.g. the "
                       "proxy's (www-data); this process must belong to it. Empty: its own"),
    )
    realm: str = field(default="authproxy", metadata=_meta("realm in challenges", _header_safe))
    trusted_proxies: tuple[str, ...] = field(
        default=("127.0.0.1/32", "::1/128"),
        metadata=_meta("peers whose X-Real-IP / X-Forwarded-For is believed", _check_networks),
    )
    allow_preflight: bool = field(
        default=False, metadata=_meta("let CORS preflights through without credentials")
    )
    nginx_cache_hint: bool = field(
        default=False, metadata=_meta("emit X-Accel-Expires on 200 so nginx may cache")
    )
    # The HTTP edge (SPEC §8.4): what one client can hold open. Defaults suit nginx's upstream
    # keep-alive pool, whose own idle timeout (60 s by default) is shorter than ours, so
    # nginx normally closes first; when we close first, nginx opens a new connection.
    keepalive_timeout: int = field(
        default=75, metadata=_meta(
            "seconds a connection may wait for its next complete request head (from its "
            "opening, and after each response) before it is closed", _positive),
    )
    header_timeout: int = field(
        default=10, metadata=_meta(
            "seconds from the first byte of a request head to its end; later, the "
            "connection is closed", _positive),
    )
    max_head_bytes: int = field(
        default=128 * 1024, metadata=_meta(
            "bytes of one request head a connection may hold (at least 65536+4096: SPEC §7 "
            "wants 64 kB header lines refused as credentials); past it: 401 and closed",
            _at_least(65536 + 4096)),
    )
    max_head_bytes_total: int = field(
        default=16 * 1024 * 1024, metadata=_meta(
            "bytes of unfinished request heads held across all connections of a process; "
            "the connection that goes past it gets a 401 and is closed", _positive),
    )
    max_connections: int = field(
        default=2048, metadata=_meta(
            "open connections per process; more are closed at once (lowered at start-up, "
            "with a warning, when the descriptor limit RLIMIT_NOFILE cannot hold them)",
            _positive),
    )

    @property
    def listen_addresses(self) -> tuple[ListenAddress, ...]:
        return tuple(parse_listen(a) for a in self.listen)

    @property
    def unix_access(self) -> UnixSocketAccess:
        return UnixSocketAccess(int(self.unix_socket_mode, 8), self.unix_socket_group)

    @property
    def trusts_unix_peers(self) -> bool:
        """Whether a peer on the unix sockets is believed as the proxy (listen.py)."""
        return unix_peers_trusted(self.unix_access.mode)

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = field(
        default="info", metadata=_meta("log level", _one_of("debug", "info", "warning", "error"))
    )
    format: str = field(default="json", metadata=_meta("log format", _one_of("json", "text")))


@dataclass(frozen=True, slots=True)
class BasicConfig:
    users_file: str = field(default="", metadata=_meta("htpasswd file; empty disables Basic"))
    groups_file: str = field(default="", metadata=_meta("AuthGroupFile-style groups, optional"))
    cache_ttl: int = field(
        default=300, metadata=_meta("seconds a verified password is remembered", _non_negative)
    )
    max_failures: int = field(
        default=10, metadata=_meta("failures per user or address before a ban", _positive)
    )
    failure_window: int = field(
        default=60, metadata=_meta("seconds over which failures are counted", _positive)
    )
    ban_time: int = field(
        default=300, metadata=_meta("seconds a user or address is refused", _non_negative)
    )
    known_address_ttl: int = field(
        default=30 * 86400,
        metadata=_meta("seconds an address a user authenticated from stays exempt from that "
                       "user's ban (0: none is)", _non_negative),
    )


@dataclass(frozen=True, slots=True)
class JwtConfig:
    jwks_endpoint: str = field(
        default="", metadata=_meta("URL of the JWK Set; empty disables it", check_url)
    )
    jwks_file: str = field(default="", metadata=_meta("a static JWK Set file"))
    jwks_ssl_ca_certificate: str = field(
        default="", metadata=_meta("CA bundle for the endpoint's TLS; system CAs if empty")
    )
    jwks_update_interval: int = field(
        default=300, metadata=_meta("seconds between background refreshes", _positive)
    )
    jwks_max_stale: int = field(
        default=86400, metadata=_meta("seconds a set may go unrefreshed", _positive)
    )
    jwks_username_field: str = field(default="sub", metadata=_meta("claim naming the user"))
    jwks_require_audience: tuple[str, ...] = field(
        default=(), metadata=_meta(
            "token aud must contain one of these, if set (this or issuer is required)")
    )
    issuer: str = field(default="", metadata=_meta(
        "token iss must equal this, if set (this or jwks_require_audience is required)"))
    insecure_skip_issuer_and_audience: bool = field(
        default=False,
        metadata=_meta(
            "accept tokens checking neither iss nor aud: any token signed by a key in the "
            "set passes, whoever it was issued to. Only for a key set used by this service "
            "alone; warned about at start"
        ),
    )
    algorithms: tuple[str, ...] = field(
        default=ASYMMETRIC_ALGORITHMS, metadata=_meta("accepted JWS algorithms", _check_algorithms)
    )
    leeway: int = field(default=60, metadata=_meta("seconds of clock skew", _non_negative))
    accept_in_basic: bool = field(
        default=False, metadata=_meta("also accept a JWT as the Basic password")
    )
    require_typ: str = field(
        default="",
        metadata=_meta(
            'required JOSE header typ: "" accepts any, "at+jwt" demands RFC 9068 access tokens '
            "(application/at+jwt too, any case)",
            _one_of("", "at+jwt"),
        ),
    )

    @property
    def enabled(self) -> bool:
        return bool(self.jwks_endpoint or self.jwks_file or self.issuer)

    @property
    def discovers_jwks(self) -> bool:
        """The JWKS URL is found from {issuer}/.well-known/openid-configuration."""
        return bool(self.issuer and not (self.jwks_endpoint or self.jwks_file))

    @property
    def has_endpoint(self) -> bool:
        """Keys come from an endpoint: configured, or discovered from the issuer."""
        return bool(self.jwks_endpoint) or self.discovers_jwks


ADMIN_SCHEMES = ("basic", "bearer")


def admin_principal(entry: str) -> tuple[str, str]:
    """``basic:NAME`` or ``bearer:NAME`` as (scheme, name); a bare ``NAME`` is Basic's.
    Raise ValueError for an unknown scheme prefix or an empty name."""
    scheme, colon, name = entry.partition(":")
    if not colon:
        scheme, name = "basic", entry
    if scheme not in ADMIN_SCHEMES:
        raise ValueError(f"{entry!r}: the scheme must be basic: or bearer:")
    if not name:
        raise ValueError(f"{entry!r}: no name")
    return scheme, name


def _check_admins(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            admin_principal(value)
        except ValueError as exc:
            return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    users: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "identities allowed to call /api/v2/*: basic:NAME (a user of the user table), "
            "bearer:NAME (a token's jwks_username_field claim); a bare NAME is basic:NAME",
            _check_admins,
        ),
    )

    @property
    def principals(self) -> frozenset[tuple[str, str]]:
        """The admins as (scheme, name) pairs."""
        return frozenset(admin_principal(entry) for entry in self.users)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    basic: BasicConfig = field(default_factory=BasicConfig)
    jwt: JwtConfig = field(default_factory=JwtConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)

    @property
    def worker_count(self) -> int:
        if self.server.workers == "auto":
            return os.cpu_count() or 1
        return int(self.server.workers)


SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "log": LogConfig,
    "basic": BasicConfig,
    "jwt": JwtConfig,
    "admin": AdminConfig,
}


def _coerce(kind: str, value: Any, from_env: bool) -> Any:
    """Turn a TOML or environment value into the field's type; raise ValueError if it is not."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if from_env and isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("must be true or false")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        raise ValueError("must be a whole number")
    if kind == "str|int":  # workers = 2 is as natural as workers = "auto"
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        kind = "str"
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ValueError("must be a string")
    if from_env and isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ValueError("must be a list of strings")


def _field_kind(f: dataclasses.Field[Any]) -> str:
    if f.name == "workers":
        return "str|int"
    type_name = str(f.type)
    return "list" if type_name.startswith("tuple") else type_name


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    listen: Sequence[str] | None = None,
) -> Config:
    """Read ``path`` (TOML), apply environment overrides and ``listen``; return a valid Config.

    Raises ConfigError listing every problem found, never just the first.
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    for name, value in data.items():
        if name not in SECTIONS:
            problems.append(f"unknown section [{name}]")
        elif not isinstance(value, dict):
            problems.append(f"[{name}] must be a table")

    sections = {
        section: _section(section, cls, data.get(section), environ, listen, problems)
        for section, cls in SECTIONS.items()
    }
    config = Config(**sections)
    problems.extend(_cross_checks(config))
    if problems:
        raise ConfigError(problems)
    return config


def _section(
    section: str, cls: type[Any], raw_table: Any, environ: Mapping[str, str],
    listen: Sequence[str] | None, problems: list[str],
) -> Any:
    """One section's dataclass from its TOML table, the environment and ``listen``; each
    problem is added to ``problems`` and its key left at the default."""
    table: dict[str, Any] = raw_table if isinstance(raw_table, dict) else {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            problems.append(f"{section}.{key}: unknown key")
    env_prefix = f"{ENV_PREFIX}{section.upper()}_"
    for env_name in environ:
        if env_name.startswith(env_prefix) and env_name[len(env_prefix):].lower() not in fields:
            problems.append(f"{env_name}: unknown key {section}.{env_name[len(env_prefix):]}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        env_name = env_prefix + name.upper()
        raw, from_env = table.get(name), False
        if env_name in environ:
            raw, from_env = environ[env_name], True
        if section == "server" and name == "listen" and listen:
            raw, from_env = list(listen), False
        if raw is None:
            continue
        where = env_name if from_env else f"{section}.{name}"
        try:
            value = _coerce(_field_kind(f), raw, from_env)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        check = f.metadata.get("check")
        message = check(value) if check else None
        if message:
            problems.append(f"{where}: {message}")
            continue
        values[name] = value
    return cls(**values)


def _cross_checks(config: Config) -> list[str]:
    problems = []
    if not config.basic.users_file and not config.jwt.enabled:
        problems.append(
            "no authentication scheme configured: set basic.users_file and/or "
            "jwt.jwks_endpoint, jwt.jwks_file or jwt.issuer (authproxy never runs open)"
        )
    # regular files under their caps: a FIFO or device would block (or never end) a load
    for where, value, limit in (
        ("basic.users_file", config.basic.users_file, MAX_USERS_FILE_BYTES),
        ("basic.groups_file", config.basic.groups_file, MAX_GROUPS_FILE_BYTES),
        ("jwt.jwks_file", config.jwt.jwks_file, MAX_JWKS_FILE_BYTES),
    ):
        problem = file_problem(value, limit) if value else None
        if problem:
            problems.append(f"{where}: {value}: {problem}")
    ca_file = config.jwt.jwks_ssl_ca_certificate
    if ca_file and not os.path.isfile(ca_file):
        problems.append(f"jwt.jwks_ssl_ca_certificate: {ca_file}: no such file")
    if config.jwt.discovers_jwks:
        problem = check_url(config.jwt.issuer)
        if problem:
            problems.append(f"jwt.issuer: to discover the JWKS from it, it {problem}")
    jwt = config.jwt
    if (jwt.enabled and not jwt.issuer and not jwt.jwks_require_audience
            and not jwt.insecure_skip_issuer_and_audience):
        problems.append(
            "[jwt] checks neither issuer nor jwks_require_audience: any token signed by a "
            "key in the set would pass, whoever it was issued to. Set one (or, for a key set "
            "used by this service alone, jwt.insecure_skip_issuer_and_audience = true)"
        )
    if config.jwt.accept_in_basic and not config.jwt.enabled:
        problems.append("jwt.accept_in_basic needs a JWT key source")
    if config.basic.groups_file and not config.basic.users_file:
        problems.append("basic.groups_file needs basic.users_file")
    if config.server.max_head_bytes_total < config.server.max_head_bytes:
        problems.append("server.max_head_bytes_total must be at least server.max_head_bytes")
    return problems
