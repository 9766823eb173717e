"""Config: TOML, environment overrides, every problem reported at once, never runs open."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

import pytest

from authproxy.cli import main
from authproxy.config import SCHEMA, Config, load_config
from authproxy.configschema import Sources, Table, key, read_table, table_of
from authproxy.errors import ConfigError
from authproxy.listen import ListenAddress, parse_listen


def test_defaults_and_file_values(
    make_config: Callable[..., Config], htpasswd: Callable[..., Path]
) -> None:
    users = htpasswd(alice="pw")
    config = make_config({"basic": {"users_file": str(users), "cache_ttl": 30},
                          "server": {"realm": "corp", "workers": 2}})
    assert config.basic.users_file == str(users)
    assert config.basic.cache_ttl == 30
    assert config.basic.max_failures == 10
    assert config.server.realm == "corp"
    assert config.worker_count == 2
    assert config.server.listen_addresses == (ListenAddress(host="127.0.0.1", port=9180),)


def test_environment_overrides_file_and_splits_lists(
    make_config: Callable[..., Config], htpasswd: Callable[..., Path]
) -> None:
    users = htpasswd(alice="pw")
    config = make_config(
        {"basic": {"users_file": "/nonexistent"}},
        environ={
            "AUTHPROXY_BASIC_USERS_FILE": str(users),
            "AUTHPROXY_BASIC_CACHE_TTL": "7",
            "AUTHPROXY_SERVER_ALLOW_PREFLIGHT": "true",
            "AUTHPROXY_ADMIN_USERS": "alice, bob",
            "AUTHPROXY_SERVER_LISTEN": "127.0.0.1:1,unix:/run/a.sock",
            "UNRELATED": "x",
            "AUTHPROXY_SERVICE_HOST": "10.0.0.1",  # Kubernetes injects these; not ours
        },
    )
    assert config.basic.users_file == str(users)
    assert config.basic.cache_ttl == 7
    assert config.server.allow_preflight is True
    assert config.admin.users == ("alice", "bob")
    assert [str(a) for a in config.server.listen_addresses] == ["127.0.0.1:1", "unix:/run/a.sock"]


def test_every_problem_reported_at_once(make_config: Callable[..., Config], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(
            {
                "server": {"listen": ["nonsense"], "realm": 'a"b', "bogus": 1, "workers": "many"},
                "basic": {"users_file": str(tmp_path / "missing"), "cache_ttl": "soon"},
                "jwt": {"algorithms": ["HS256"], "jwks_endpoint": "http://idp.example/jwks"},
                "mystery": {"x": 1},
            },
            environ={"AUTHPROXY_BASIC_NOPE": "1", "AUTHPROXY_LOG_LEVEL": "loud"},
        )
    text = "\n".join(caught.value.problems)
    for expected in ("server.listen", "server.realm", "server.bogus: unknown key",
                     "server.workers", "basic.cache_ttl", "basic.users_file",
                     "jwt.algorithms", "jwt.jwks_endpoint", "unknown section [mystery]",
                     "AUTHPROXY_BASIC_NOPE", "AUTHPROXY_LOG_LEVEL"):
        assert expected in text, expected


def test_no_scheme_configured_is_an_error(make_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match="no authentication scheme configured"):
        make_config({"server": {"realm": "x"}})


def test_listen_flag_replaces_configured_list(
    tmp_path: Path, htpasswd: Callable[..., Path]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\nlisten = ["127.0.0.1:1"]\n[basic]\nusers_file = "{htpasswd(a="b")}"\n')
    config = load_config(str(path), environ={}, listen=["[::1]:8080"])
    assert [str(a) for a in config.server.listen_addresses] == ["[::1]:8080"]


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "[::1]", "[nothex]:80", "host:0",
                                  "host:70000", "unix:relative.sock"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_check_config_exit_codes(
    tmp_path: Path, htpasswd: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'[basic]\nusers_file = "{htpasswd(alice="x")}"\n')
    assert main(["check-config", "--config", str(good)]) == 0

    bad = tmp_path / "bad.toml"
    bad.write_text(f'[basic]\nusers_file = "{htpasswd(alice="x")}"\n[server]\nrealm = 5\n')
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "server.realm: must be a string" in capsys.readouterr().err

    # the user file is read too, and its bad line named (without the hash)
    broken_users = tmp_path / "broken.htpasswd"
    broken_users.write_text("# ok\nalice:$2y$04$tooshort\n")
    broken = tmp_path / "broken.toml"
    broken.write_text(f'[basic]\nusers_file = "{broken_users}"\n')
    assert main(["check-config", "--config", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "broken.htpasswd:2" in err and "tooshort" not in err


def test_check_config_reads_authproxy_config_env(
    tmp_path: Path, htpasswd: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env.toml"
    path.write_text(f'[basic]\nusers_file = "{htpasswd(alice="x")}"\n')
    monkeypatch.setenv("AUTHPROXY_CONFIG", str(path))
    assert main(["check-config"]) == 0
    monkeypatch.setenv("AUTHPROXY_CONFIG", str(tmp_path / "nope.toml"))
    assert main(["check-config"]) == 2


# -- [jwt] must check iss or aud; admin.users name their scheme (SPEC §8.3) ----------------


@pytest.mark.parametrize("jwt", [
    {"jwks_endpoint": "https://idp.example/jwks"},
    {"jwks_file": "/dev/null"},
    {"jwks_endpoint": "https://idp.example/jwks", "insecure_skip_issuer_and_audience": False},
])
def test_jwt_checking_neither_issuer_nor_audience_is_an_error(
    make_config: Callable[..., Config], jwt: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config({"jwt": jwt})
    assert any("jwt.insecure_skip_issuer_and_audience" in p for p in caught.value.problems)


@pytest.mark.parametrize("jwt", [
    {"jwks_endpoint": "https://idp.example/jwks", "issuer": "https://idp.example"},
    {"jwks_endpoint": "https://idp.example/jwks", "jwks_require_audience": ["api"]},
    {"issuer": "https://idp.example"},  # discovery: the issuer is checked
    {"jwks_endpoint": "https://idp.example/jwks", "insecure_skip_issuer_and_audience": True},
])
def test_jwt_checking_issuer_or_audience_or_opting_out_loads(
    make_config: Callable[..., Config], jwt: dict[str, Any]
) -> None:
    assert make_config({"jwt": jwt}).jwt.enabled


def test_the_opt_out_is_warned_about_at_start(tmp_path: Path) -> None:
    from .servers import free_port, start_authproxy

    # an endpoint on loopback that never answers: the warning comes before any key set
    config = (f'[jwt]\njwks_endpoint = "http://127.0.0.1:{free_port()}/jwks.json"\n'
              "insecure_skip_issuer_and_audience = true\n")
    with start_authproxy(config, [f"127.0.0.1:{free_port()}"], tmp_path) as proxy:
        warnings = [line for line in proxy.log_text().splitlines()
                    if '"event":"insecure_config"' in line]
    assert len(warnings) == 1 and '"level":"warning"' in warnings[0]


@pytest.mark.parametrize(("users", "principals"), [
    (["root"], {("basic", "root")}),
    (["basic:root", "bearer:ops-bot", "bearer:urn:svc:deploy"],
     {("basic", "root"), ("bearer", "ops-bot"), ("bearer", "urn:svc:deploy")}),
])
def test_admin_users_name_their_scheme(
    make_config: Callable[..., Config], htpasswd: Callable[..., Path], users: list[str],
    principals: set[tuple[str, str]]
) -> None:
    config = make_config({"basic": {"users_file": str(htpasswd(root="pw"))},
                          "admin": {"users": users}})
    assert config.admin.principals == principals


@pytest.mark.parametrize("entry", ["ldap:root", "Bearer:ops-bot", "bearer:", "basic:", ""])
def test_an_admin_entry_with_an_unknown_scheme_or_no_name_is_an_error(
    make_config: Callable[..., Config], htpasswd: Callable[..., Path], entry: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config({"basic": {"users_file": str(htpasswd(root="pw"))},
                     "admin": {"users": [entry]}})
    assert [p for p in caught.value.problems if p.startswith("admin.users:")]


# -- the schema: one coercion per type, tables and lists of tables (issue 11) ---------------


def config_problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    """The problems load_config finds in the TOML ``text``."""
    path = tmp_path / "problems.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ=environ or {})
    return caught.value.problems


@pytest.mark.parametrize(("text", "problem"), [
    ("[server]\nallow_preflight = 1", "server.allow_preflight: must be true or false"),
    ('[server]\nallow_preflight = "true"', "server.allow_preflight: must be true or false"),
    ("[basic]\ncache_ttl = true", "basic.cache_ttl: must be a whole number"),
    ("[basic]\ncache_ttl = 1.5", "basic.cache_ttl: must be a whole number"),
    ('[basic]\ncache_ttl = "30"', "basic.cache_ttl: must be a whole number"),
    ("[server]\nrealm = 5", "server.realm: must be a string"),
    ('[server]\nrealm = ["a"]', "server.realm: must be a string"),
    ('[admin]\nusers = "alice"', "admin.users: must be a list of strings"),
    ('[admin]\nusers = ["alice", 1]', "admin.users: must be a list of strings"),
    ("[server]\nworkers = 2.5", "server.workers: must be a string or a whole number"),
    ("[server]\nworkers = true", "server.workers: must be a string or a whole number"),
    ("[server]\nworkers = 0", "server.workers: must be a whole number of at least 1"),
    ('[server]\nworkers = "²"', "server.workers: must be a whole number of at least 1"),
    ("server = 5", "server: must be a table"),
    ("[jwt]\nissuers = 5", "jwt.issuers: must be a list of tables, written [[jwt.issuers]]"),
    ('[jwt]\nissuers = ["x"]', "jwt.issuers[0]: must be a table"),
])
def test_a_value_of_the_wrong_type_is_named_with_its_key(
    tmp_path: Path, text: str, problem: str
) -> None:
    problems = config_problems(tmp_path, text + "\n")
    assert [p for p in problems if p.startswith(problem)], problems


@pytest.mark.parametrize(("workers", "count"), [(2, 2), ('"3"', 3), ('"auto"', os.cpu_count())])
def test_workers_is_a_number_or_auto(
    tmp_path: Path, htpasswd: Callable[..., Path], workers: int | str, count: int | None
) -> None:
    path = tmp_path / "w.toml"
    path.write_text(f'[server]\nworkers = {workers}\n[basic]\nusers_file = "{htpasswd(a="b")}"\n')
    assert load_config(str(path), environ={}).worker_count == count


@pytest.mark.parametrize(("name", "value", "read", "expected"), [
    ("AUTHPROXY_SERVER_ALLOW_PREFLIGHT", "on", lambda c: c.server.allow_preflight, True),
    ("AUTHPROXY_SERVER_NGINX_CACHE_HINT", "0", lambda c: c.server.nginx_cache_hint, False),
    ("AUTHPROXY_BASIC_CACHE_TTL", " 7 ", lambda c: c.basic.cache_ttl, 7),
    ("AUTHPROXY_SERVER_REALM", "corp", lambda c: c.server.realm, "corp"),
    ("AUTHPROXY_JWT_ALGORITHMS", "ES256, EdDSA,", lambda c: c.jwt.algorithms, ("ES256", "EdDSA")),
    ("AUTHPROXY_SERVER_WORKERS", "auto", lambda c: c.worker_count, os.cpu_count()),
    ("AUTHPROXY_SERVER_WORKERS", "3", lambda c: c.worker_count, 3),
])
def test_an_environment_override_of_each_kind(
    tmp_path: Path, htpasswd: Callable[..., Path], name: str, value: str,
    read: Callable[[Config], object], expected: object
) -> None:
    path = tmp_path / "env.toml"
    path.write_text('[server]\nallow_preflight = false\nnginx_cache_hint = true\nrealm = "file"\n'
                    "workers = 1\n[basic]\ncache_ttl = 1\n")
    environ = {"AUTHPROXY_BASIC_USERS_FILE": str(htpasswd(a="b")), name: value}
    assert read(load_config(str(path), environ=environ)) == expected


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("AUTHPROXY_SERVER_ALLOW_PREFLIGHT", "maybe", "must be true or false"),
    ("AUTHPROXY_BASIC_CACHE_TTL", "7s", "must be a whole number"),
    ("AUTHPROXY_SERVER_WORKERS", "many", "must be a whole number of at least 1"),
    ("AUTHPROXY_JWT_ISSUERS", "https://sso.example", "must be a list of tables"),
    ("AUTHPROXY_JWT_ISSUERS_0_ISSUER", "https://sso.example", "unknown key jwt.ISSUERS_0_ISSUER"),
])
def test_a_bad_environment_override_is_named_by_its_variable(
    tmp_path: Path, name: str, value: str, problem: str
) -> None:
    problems = config_problems(tmp_path, "", {name: value})
    assert f"{name}: {problem}" in "\n".join(problems), problems


def test_the_listen_flag_wins_over_the_environment(
    tmp_path: Path, htpasswd: Callable[..., Path]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[basic]\nusers_file = "{htpasswd(a="b")}"\n')
    config = load_config(str(path), environ={"AUTHPROXY_SERVER_LISTEN": "127.0.0.1:2"},
                         listen=["[::1]:8080"])
    assert [str(a) for a in config.server.listen_addresses] == ["[::1]:8080"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Upstream:
    name: str = field(metadata=key("required: no default"))
    port: int = field(default=80, metadata=key("a port", lambda p: None if p > 0 else "too low"))


@dataclass(frozen=True, slots=True)
class Routing:
    mode: str = field(default="first", metadata=key("a scalar beside the list"))
    upstreams: tuple[Upstream, ...] = field(default=(), metadata=key("[[routing.upstreams]]"))


@dataclass(frozen=True, slots=True)
class Root:
    routing: Routing = field(default_factory=Routing)


def read_root(text: str, environ: dict[str, str] | None = None) -> tuple[Any, list[str]]:
    problems: list[str] = []
    root = read_table(table_of(Root), tomllib.loads(text), "", "TEST_",
                      Sources(environ or {}, {}, problems))
    return root, problems


def test_a_list_of_tables_is_read_into_a_typed_tuple() -> None:
    root, problems = read_root('[routing]\nmode = "any"\n[[routing.upstreams]]\nname = "a"\n'
                               'port = 8080\n[[routing.upstreams]]\nname = "b"\n',
                               {"TEST_ROUTING_MODE": "all"})
    assert problems == []
    assert root == Root(Routing("all", (Upstream(name="a", port=8080), Upstream(name="b"))))
    assert read_root("") == (Root(Routing("first", ())), [])


def test_each_entry_of_a_list_of_tables_is_checked_and_named_by_its_index() -> None:
    root, problems = read_root('[[routing.upstreams]]\nname = "a"\n[[routing.upstreams]]\n'
                               'port = 0\n[[routing.upstreams]]\nname = 5\nextra = 1\n')
    assert problems == ["routing.upstreams[1].name: required",
                        "routing.upstreams[1].port: too low",
                        "routing.upstreams[2].extra: unknown key",
                        "routing.upstreams[2].name: must be a string"]
    assert root.routing.upstreams == ()  # left at its default


def test_jwt_issuers_are_validated_like_jwt_then_refused_as_not_supported_yet(
    tmp_path: Path
) -> None:
    jwt = '[jwt]\njwks_endpoint = "https://idp.example/jwks"\nissuer = "https://idp.example"\n'
    problems = config_problems(tmp_path, jwt + '[[jwt.issuers]]\nissuer = "https://sso.example"\n'
                               'jwks_require_audience = ["api"]\n[[jwt.issuers]]\nleeway = -1\n'
                               'jwks_require_audience = "api"\n[[jwt.issuers]]\n'
                               'issuer = "http://sso.example"\n')
    discovery = ("to discover the JWKS from it, it must be an https:// URL (http:// only on "
                 "loopback)")
    not_yet = ("jwt.issuers: several issuers are not supported yet (SPEC §8.3); configure one "
               "issuer in [jwt]")
    assert problems == ["jwt.issuers[1].jwks_require_audience: must be a list of strings",
                        "jwt.issuers[1].issuer: required",
                        "jwt.issuers[1].leeway: must be 0 or more"]
    problems = config_problems(tmp_path, jwt + '[[jwt.issuers]]\nissuer = "https://sso.example"\n'
                               'jwks_require_audience = ["api"]\n')
    assert problems == [not_yet]
    problems = config_problems(tmp_path, jwt + '[[jwt.issuers]]\nissuer = "http://sso.example"\n')
    assert problems == [f"jwt.issuers[0].issuer: {discovery}", not_yet]


@pytest.mark.parametrize("hint", [float, dict[str, str], list[str], str | None, tuple[int, ...],
                                  tuple[str, str], Path])
def test_a_field_of_a_type_without_a_coercion_fails_when_the_schema_is_built(hint: object) -> None:
    new = make_dataclass("New", [("value", hint, field(default=None, metadata=key("new")))],
                         frozen=True, slots=True)
    with pytest.raises(TypeError, match=r"New\.value: no coercion for the type"):
        table_of(new)


def test_a_field_without_a_doc_fails_when_the_schema_is_built() -> None:
    new = make_dataclass("New", [("value", int, field(default=1))], frozen=True, slots=True)
    with pytest.raises(TypeError, match=r"New\.value: no doc"):
        table_of(new)


def test_every_config_key_has_a_kind_and_a_doc() -> None:
    """config.py's schema, built at import, covers every field of every section."""
    assert set(SCHEMA.keys) == {f.name for f in fields(Config)}
    for section in SCHEMA.keys.values():
        assert isinstance(section.kind, Table)
        assert set(section.kind.keys) == {f.name for f in fields(section.kind.cls)}
