"""The config loader: ``load_config`` on a TOML file holding the fuzzed bytes (no environment).

It returns a Config that keeps the rules its cross-checks stand for, or raises ConfigError
listing problems; nothing else escapes.
"""
from __future__ import annotations

import dataclasses
import tomllib
from typing import Any

from authproxy import config as config_module
from authproxy.errors import ConfigError
from tests.fuzz import as_file


def known_keys(cls: Any) -> dict[str, Any]:
    """A config dataclass's keys: name -> the dataclass of a table, or None for a value."""
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        keys[f.name] = type(default) if dataclasses.is_dataclass(default) else None
    return keys


def unknown_keys(table: dict[str, Any], cls: Any) -> list[str]:
    keys = known_keys(cls)
    found = [name for name in table if name not in keys]
    for name, sub in keys.items():
        if sub is not None and isinstance(table.get(name), dict):
            found += unknown_keys(table[name], sub)
    return found


def check(data: bytes) -> None:
    path = as_file("authproxy.toml", data)
    try:
        config = config_module.load_config(path, environ={})
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        assert not any("Traceback" in p for p in exc.problems)
        return
    assert isinstance(config, config_module.Config)
    assert not unknown_keys(tomllib.loads(data.decode()), config_module.Config), "unknown key"
    jwt = config.jwt
    assert config.basic.users_file or jwt.enabled, "loaded a config that runs open"
    if jwt.enabled:
        assert jwt.issuer or jwt.jwks_require_audience or jwt.insecure_skip_issuer_and_audience
    assert not jwt.issuers, "several issuers are refused for now"
    assert config.server.max_head_bytes_total >= config.server.max_head_bytes
    for address in config.server.listen_addresses:
        text = address.path or address.host or ""
        assert not any(c < " " or c == "\x7f" for c in text), "a listen address to crash bind"
