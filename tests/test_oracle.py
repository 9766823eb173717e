"""The decision oracle (tests/oracle.py) through a real nginx: authproxy agrees with it on
every generated request, and a planted bug makes them disagree.

The clean run uses a new seed each time (printed, and named in a failure: rerun it with
``python -m tests.oracle --seed S``). The planted-bug runs serve the production app
in-process behind the same nginx, with one function of authproxy replaced through its
module, and the oracle must report the disagreement the bug causes.
"""

from __future__ import annotations

import binascii
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authproxy.config import Config
from authproxy.core import policy as policy_module
from authproxy.http.app import create_app
from authproxy.jwt import claims as claims_module
from authproxy.schemes import basic as basic_module

from .appclient import ServeApp
from .oracle_run import Report, oracle_service, oracle_site, run_traffic
from .oracle_world import make_world

REQUESTS = 2000  # the clean run, in make test (about 5 s)
PLANTED_REQUESTS = 400  # each planted bug must be found within this many
PLANTED_SEED = 12


async def test_authproxy_agrees_with_the_oracle_through_nginx(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"oracle seed={seed}")
    world = make_world(tmp_path, seed)
    with oracle_service(world) as base_url:
        report = await run_traffic(world, base_url, REQUESTS, seed)
    print(report.summary())
    assert report.requests == REQUESTS
    # every kind of answer was compared, not only refusals
    assert {200, 401, 403} <= set(report.statuses), report.summary()
    assert not report.disagreements, "\n".join(
        [report.summary(), *(d.describe() for d in report.disagreements[:20])])


async def _planted_run(serve: ServeApp, make_config: Callable[..., Config],
                       tmp_path: Path) -> Report:
    """The oracle's traffic against the in-process production app behind nginx."""
    world = make_world(tmp_path / "world", PLANTED_SEED)
    client = await serve(create_app(make_config(world.sections)))
    with oracle_site(f"127.0.0.1:{client.port}", tmp_path / "nginx") as base_url:
        report = await run_traffic(world, base_url, PLANTED_REQUESTS, PLANTED_SEED)
    print(report.summary())
    if report.disagreements:
        print(f"first disagreement at request #{report.disagreements[0].request.index}: "
              f"{report.disagreements[0].describe()}")
    return report


async def test_the_planted_world_agrees_unplanted(
    serve: ServeApp, make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """The planted runs' traffic, without a bug: what they find is the bug's."""
    report = await _planted_run(serve, make_config, tmp_path)
    assert not report.disagreements, report.disagreements[0].describe()


def _user_only_cache_key(self: basic_module.BasicAuthenticator, value: str) -> bytes:
    """A planted bug: the remembered-password cache keyed on the user-id, not the
    credentials (so not on the password's hash either)."""
    try:
        user = binascii.a2b_base64(value.encode("ascii")).partition(b":")[0]
    except (UnicodeEncodeError, binascii.Error):
        user = value.encode("utf-8", "surrogateescape")
    return hashlib.sha256(user).digest()


async def test_a_planted_cache_key_without_the_password_is_caught(
    serve: ServeApp, make_config: Callable[..., Config], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(basic_module.BasicAuthenticator, "_cache_key", _user_only_cache_key)
    report = await _planted_run(serve, make_config, tmp_path)
    admitted = [d for d in report.disagreements
                if d.expected.status == 401 and d.observed.status == 200
                and (d.request.authorization or "").startswith("Basic ")]
    assert admitted, report.summary()  # a wrong password admitted after a right one


async def test_a_planted_leeway_with_the_wrong_sign_is_caught(
    serve: ServeApp, make_config: Callable[..., Config], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = claims_module.ClaimPolicy.__init__

    def negated_leeway(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        original(self, config, *args, **kwargs)
        self._leeway = -config.leeway  # a planted bug: skew subtracted, not allowed

    monkeypatch.setattr(claims_module.ClaimPolicy, "__init__", negated_leeway)
    report = await _planted_run(serve, make_config, tmp_path)
    refused = [d for d in report.disagreements
               if d.expected.status in (200, 403) and d.observed.status == 401]
    assert refused, report.summary()  # a token within the leeway refused


async def test_a_planted_policy_that_fails_open_is_caught(
    serve: ServeApp, make_config: Callable[..., Config], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = policy_module.Policy.from_query

    def fail_open(query: str) -> policy_module.Policy:
        parsed = original(query)
        return policy_module.Policy() if parsed.problem else parsed  # a typo: no requirement

    monkeypatch.setattr(policy_module.Policy, "from_query", fail_open)
    policy_module._parsed.cache_clear()  # policies parsed before the plant
    try:
        report = await _planted_run(serve, make_config, tmp_path)
    finally:
        policy_module._parsed.cache_clear()  # and none parsed under it may outlive it
    opened = [d for d in report.disagreements
              if d.expected.status == 403 and d.observed.status == 200]
    assert opened, report.summary()
