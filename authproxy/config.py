"""Configuration: a TOML file, ``AUTHPROXY_<SECTION>_<KEY>`` overrides, validated once.

``load_config()`` is the only reader of the config file and of the ``AUTHPROXY_<SECTION>_<KEY>``
variables (the CLI reads ``AUTHPROXY_CONFIG``, the file's path). It collects every
problem it finds and raises one :class:`ConfigError` listing them all; code downstream trusts
the returned :class:`Config` and never re-checks it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .configschema import Sources, key, read_table, table_of
from .errors import ConfigError
from .listen import ListenAddress, UnixSocketAccess, parse_listen, unix_peers_trusted
from .regularfile import (
    MAX_GROUPS_FILE_BYTES,
    MAX_JWKS_FILE_BYTES,
    MAX_USERS_FILE_BYTES,
    file_problem,
)

ENV_PREFIX = "AUTHPROXY_"
# Not configuration keys, but shared by the server and the supervisor, so kept with the
# settings they go with.
SHUTDOWN_TIMEOUT = 10.0  # seconds in-flight decisions get to finish after SIGTERM
METRICS_FLUSH_INTERVAL = 1.0  # seconds between workers' metric flushes (see metrics.py)
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
_HEADER_SAFE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")


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


def _check_workers(value: str | int) -> str | None:
    if value == "auto" or re.fullmatch(r"0*[1-9][0-9]*", str(value)):
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
        metadata=key("addresses to listen on: HOST:PORT, [V6]:PORT or unix:/path", _check_listen),
    )
    workers: str | int = field(  # 2 is as natural as "auto"; "2" is accepted too
        default=1, metadata=key('processes sharing the sockets, or "auto"', _check_workers)
    )
    worker_timeout: int = field(
        default=5,
        metadata=key(
            "seconds a worker's event loop may send no heartbeat before the supervisor kills "
            "(SIGKILL) and replaces it, as hung (workers > 1)", _positive),
    )
    unix_socket_mode: str = field(
        default="0666",
        metadata=key(
            'permissions of unix listen sockets, octal ("0660"). Their peers are believed as '
            'the proxy (X-Real-IP / X-Forwarded-For) only without o+w: "0666" lets any local '
            "user connect, so nothing they forward is believed",
            _check_mode),
    )
    unix_socket_group: str = field(
        default="",
        metadata=key("group (name or number) given to unix listen sockets, e.g. the "
                       "proxy's (www-data); this process must belong to it. Empty: its own"),
    )
    realm: str = field(default="authproxy", metadata=key("realm in challenges", _header_safe))
    trusted_proxies: tuple[str, ...] = field(
        default=("127.0.0.1/32", "::1/128"),
        metadata=key("peers whose X-Real-IP / X-Forwarded-For is believed", _check_networks),
    )
    allow_preflight: bool = field(
        default=False, metadata=key("let CORS preflights through without credentials")
    )
    nginx_cache_hint: bool = field(
        default=False, metadata=key("emit X-Accel-Expires on 200 so nginx may cache")
    )
    # The HTTP edge (SPEC §8.4): what one client can hold open. Defaults suit nginx's upstream
    # keep-alive pool, whose own idle timeout (60 s by default) is shorter than ours, so
    # nginx normally closes first; when we close first, nginx opens a new connection.
    keepalive_timeout: int = field(
        default=75, metadata=key(
            "seconds a connection may wait for its next complete request head (from its "
            "opening, and after each response) before it is closed", _positive),
    )
    header_timeout: int = field(
        default=10, metadata=key(
            "seconds from the first byte of a request head to its end; later, the "
            "connection is closed", _positive),
    )
    max_head_bytes: int = field(
        default=128 * 1024, metadata=key(
            "bytes of one request head a connection may hold (at least 65536+4096: SPEC §7 "
            "wants 64 kB header lines refused as credentials); past it: 401 and closed",
            _at_least(65536 + 4096)),
    )
    max_head_bytes_total: int = field(
        default=16 * 1024 * 1024, metadata=key(
            "bytes of unfinished request heads held across all connections of a process; "
            "the connection that goes past it gets a 401 and is closed", _positive),
    )
    max_connections: int = field(
        default=2048, metadata=key(
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
        default="info", metadata=key("log level", _one_of("debug", "info", "warning", "error"))
    )
    format: str = field(default="json", metadata=key("log format", _one_of("json", "text")))


@dataclass(frozen=True, slots=True)
class BasicConfig:
    users_file: str = field(default="", metadata=key("htpasswd file; empty disables Basic"))
    groups_file: str = field(default="", metadata=key("AuthGroupFile-style groups, optional"))
    cache_ttl: int = field(
        default=300, metadata=key("seconds a verified password is remembered", _non_negative)
    )
    max_failures: int = field(
        default=10, metadata=key("failures per user or address before a ban", _positive)
    )
    failure_window: int = field(
        default=60, metadata=key("seconds over which failures are counted", _positive)
    )
    ban_time: int = field(
        default=300, metadata=key("seconds a user or address is refused", _non_negative)
    )
    known_address_ttl: int = field(
        default=30 * 86400,
        metadata=key("seconds an address a user authenticated from stays exempt from that "
                       "user's ban (0: none is)", _non_negative),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerConfig:
    """One issuer's keys and rules: a ``[[jwt.issuers]]`` entry, and the base of ``[jwt]``."""

    jwks_endpoint: str = field(
        default="", metadata=key("URL of the JWK Set; empty disables it", check_url)
    )
    jwks_file: str = field(default="", metadata=key("a static JWK Set file"))
    jwks_ssl_ca_certificate: str = field(
        default="", metadata=key("CA bundle for the endpoint's TLS; system CAs if empty")
    )
    jwks_update_interval: int = field(
        default=300, metadata=key("seconds between background refreshes", _positive)
    )
    jwks_max_stale: int = field(
        default=86400, metadata=key("seconds a set may go unrefreshed", _positive)
    )
    jwks_username_field: str = field(default="sub", metadata=key("claim naming the user"))
    jwks_require_audience: tuple[str, ...] = field(
        default=(), metadata=key(
            "token aud must contain one of these, if set (this or issuer is required)")
    )
    issuer: str = field(metadata=key(
        "token iss must equal this; tokens are routed to this issuer by their iss"))
    insecure_skip_issuer_and_audience: bool = field(
        default=False,
        metadata=key(
            "accept tokens checking neither iss nor aud: any token signed by a key in the "
            "set passes, whoever it was issued to. Only for a key set used by this service "
            "alone; warned about at start"
        ),
    )
    algorithms: tuple[str, ...] = field(
        default=ASYMMETRIC_ALGORITHMS, metadata=key("accepted JWS algorithms", _check_algorithms)
    )
    leeway: int = field(default=60, metadata=key("seconds of clock skew", _non_negative))
    accept_in_basic: bool = field(
        default=False, metadata=key("also accept a JWT as the Basic password")
    )
    require_typ: str = field(
        default="",
        metadata=key(
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


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtConfig(IssuerConfig):
    """``[jwt]``: the first issuer, as before, whose ``issuer`` is optional; and more issuers
    (SPEC §8.3), refused for now by load_config: their verification is a later issue."""

    issuer: str = field(default="", metadata=key(
        "token iss must equal this, if set (this or jwks_require_audience is required)"))
    issuers: tuple[IssuerConfig, ...] = field(
        default=(), metadata=key("more issuers, each a [[jwt.issuers]] table with the keys "
                                 "of [jwt], issuer required (not supported yet)"))


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
        metadata=key(
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


# Built at import: a field of a type configschema.py cannot read fails here, not in use.
SCHEMA = table_of(Config)


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    listen: Sequence[str] | None = None,
) -> Config:
    """Read ``path`` (TOML), apply environment overrides and ``listen``; return a valid Config.

    Raises ConfigError listing every problem found, never just the first.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        except UnicodeDecodeError:  # tomllib decodes before it parses
            raise ConfigError([f"{path}: not valid TOML: not UTF-8"]) from None
    flags = {"server.listen": list(listen)} if listen else {}
    problems: list[str] = []
    config = read_table(SCHEMA, data, "", ENV_PREFIX, Sources(environ, flags, problems))
    if isinstance(config, Config):
        problems.extend(_cross_checks(config))
    if problems or not isinstance(config, Config):
        raise ConfigError(problems)
    return config


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
    ):
        problem = file_problem(value, limit) if value else None
        if problem:
            problems.append(f"{where}: {value}: {problem}")
    problems.extend(_issuer_problems("jwt", config.jwt))
    for index, issuer in enumerate(config.jwt.issuers):
        problems.extend(_issuer_problems(f"jwt.issuers[{index}]", issuer))
    if config.jwt.issuers:
        # Accepted but unused, they would pass check-config and then refuse every token of
        # those issuers: an operator would believe them in force.
        problems.append("jwt.issuers: several issuers are not supported yet (SPEC §8.3); "
                        "configure one issuer in [jwt]")
    if config.jwt.accept_in_basic and not config.jwt.enabled:
        problems.append("jwt.accept_in_basic needs a JWT key source")
    if config.basic.groups_file and not config.basic.users_file:
        problems.append("basic.groups_file needs basic.users_file")
    if config.server.max_head_bytes_total < config.server.max_head_bytes:
        problems.append("server.max_head_bytes_total must be at least server.max_head_bytes")
    return problems


def _issuer_problems(where: str, issuer: IssuerConfig) -> list[str]:
    """What is wrong with ``issuer`` (named ``where``) beyond its keys' own checks."""
    problems = []
    problem = file_problem(issuer.jwks_file, MAX_JWKS_FILE_BYTES) if issuer.jwks_file else None
    if problem:
        problems.append(f"{where}.jwks_file: {issuer.jwks_file}: {problem}")
    ca_file = issuer.jwks_ssl_ca_certificate
    if ca_file and not os.path.isfile(ca_file):
        problems.append(f"{where}.jwks_ssl_ca_certificate: {ca_file}: no such file")
    if issuer.discovers_jwks:
        problem = check_url(issuer.issuer)
        if problem:
            problems.append(f"{where}.issuer: to discover the JWKS from it, it {problem}")
    if (issuer.enabled and not issuer.issuer and not issuer.jwks_require_audience
            and not issuer.insecure_skip_issuer_and_audience):
        problems.append(
            f"[{where}] checks neither issuer nor jwks_require_audience: any token signed by a "
            "key in the set would pass, whoever it was issued to. Set one (or, for a key set "
            f"used by this service alone, {where}.insecure_skip_issuer_and_audience = true)"
        )
    return problems
