"""Config: TOML, environment overrides, every problem reported at once, never runs open."""

from __future__ import annotations

from pathlib import Path

import pytest

from authproxy.cli import main
from authproxy.config import load_config
from authproxy.errors import ConfigError
from authproxy.listen import ListenAddress, parse_listen


def test_defaults_and_file_values(make_config, htpasswd) -> None:
    users = htpasswd(alice="pw")
    config = make_config({"basic": {"users_file": str(users), "cache_ttl": 30},
                          "server": {"realm": "corp", "workers": 2}})
    assert config.basic.users_file == str(users)
    assert config.basic.cache_ttl == 30
    assert config.basic.max_failures == 10
    assert config.server.realm == "corp"
    assert config.worker_count == 2
    assert config.server.listen_addresses == (ListenAddress(host="127.0.0.1", port=9180),)


def test_environment_overrides_file_and_splits_lists(make_config, htpasswd) -> None:
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


def test_every_problem_reported_at_once(make_config, tmp_path: Path) -> None:
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


def test_no_scheme_configured_is_an_error(make_config) -> None:
    with pytest.raises(ConfigError, match="no authentication scheme configured"):
        make_config({"server": {"realm": "x"}})


def test_listen_flag_replaces_configured_list(tmp_path: Path, htpasswd) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\nlisten = ["127.0.0.1:1"]\n[basic]\nusers_file = "{htpasswd(a="b")}"\n')
    config = load_config(str(path), environ={}, listen=["[::1]:8080"])
    assert [str(a) for a in config.server.listen_addresses] == ["[::1]:8080"]


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "[::1]", "[nothex]:80", "host:0",
                                  "host:70000", "unix:relative.sock"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_check_config_exit_codes(tmp_path: Path, htpasswd, capsys) -> None:
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


def test_check_config_reads_authproxy_config_env(tmp_path: Path, htpasswd, monkeypatch) -> None:
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
def test_jwt_checking_neither_issuer_nor_audience_is_an_error(make_config, jwt) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config({"jwt": jwt})
    assert any("jwt.insecure_skip_issuer_and_audience" in p for p in caught.value.problems)


@pytest.mark.parametrize("jwt", [
    {"jwks_endpoint": "https://idp.example/jwks", "issuer": "https://idp.example"},
    {"jwks_endpoint": "https://idp.example/jwks", "jwks_require_audience": ["api"]},
    {"issuer": "https://idp.example"},  # discovery: the issuer is checked
    {"jwks_endpoint": "https://idp.example/jwks", "insecure_skip_issuer_and_audience": True},
])
def test_jwt_checking_issuer_or_audience_or_opting_out_loads(make_config, jwt) -> None:
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
def test_admin_users_name_their_scheme(make_config, htpasswd, users, principals) -> None:
    config = make_config({"basic": {"users_file": str(htpasswd(root="pw"))},
                          "admin": {"users": users}})
    assert config.admin.principals == principals


@pytest.mark.parametrize("entry", ["ldap:root", "Bearer:ops-bot", "bearer:", "basic:", ""])
def test_an_admin_entry_with_an_unknown_scheme_or_no_name_is_an_error(
    make_config, htpasswd, entry: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config({"basic": {"users_file": str(htpasswd(root="pw"))},
                     "admin": {"users": [entry]}})
    assert [p for p in caught.value.problems if p.startswith("admin.users:")]
