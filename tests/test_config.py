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
