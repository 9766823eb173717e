"""The soak (bench/soak.py, `make soak`) cannot rot: a short run with every chaos action once,
and its judge of right and wrong decisions pinned on outcomes made up for it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SOAK = BENCH / "soak.py"


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    """bench/soak_model.py, the soak's judge, as a module (bench/ is not a package: it is run
    by hand)."""
    spec = importlib.util.spec_from_file_location("soak_model", BENCH / "soak_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak_model"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_a_short_soak_with_every_chaos_action_makes_no_wrong_decision(tmp_path: Path) -> None:
    """~40 s: 4 s per phase at 60 req/s through nginx to two workers."""
    report_path = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", "36", "--rate", "60", "--json",
         str(report_path)], capture_output=True, text=True, timeout=150, check=False)
    assert report_path.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    summary = done.stdout[-4000:]
    assert report["wrong"] == 0, summary
    assert report["5xx_outside_window"] == 0, summary
    assert report["errors_outside_window"] == 0, summary
    assert done.returncode == 0, summary
    assert list(report["phases"]) == ["steady", "jwks-rotate", "jwks-flap", "jwks-slow",
                                      "jwks-garbage", "users-rewrite", "sighup",
                                      "worker-kill", "restart", "steady-end"]
    assert all(phase["requests"] > 0 for phase in report["phases"].values()), summary
    assert report["requests"] > 36 * 60 * 0.8, summary
    assert {"200", "401", "403"} <= set(report["statuses"]), summary
    events = "\n".join(report["events"])
    for happened in ("k1 removed", "worker replaced", "ready again", "bob joins admins"):
        assert happened in events, events


def outcome(soak: ModuleType, state: object, credential: object, status: int, sent: float,
            path: str = "/") -> object:
    return soak.Outcome("p", path, credential, state, sent, sent + 0.01, status)


def first_state(soak: ModuleType) -> Any:
    """A soak.State (Any: the module is loaded at run time, its classes unknown to mypy)."""
    return soak.State({"bob": "old"}, frozenset({"alice"}), "k1", frozenset({"k1"}))


def test_the_judge_counts_an_allow_of_a_wrong_password_as_wrong(soak: ModuleType) -> None:
    state, verdicts = first_state(soak), soak.Verdicts()
    assert verdicts.judge(outcome(soak, state, soak.Basic("bob", "guess"), 200, 1.0)) == "wrong"
    assert verdicts.judge(outcome(soak, state, soak.Basic("bob", "guess"), 401, 1.0)) == "ok"
    assert verdicts.judge(outcome(soak, state, soak.Basic("bob", "old"), 200, 1.0)) == "ok"
    assert verdicts.judge(outcome(soak, state, soak.Basic("bob", "old"), 200, 1.0,
                                  "/admin/")) == "wrong"


def test_grace_allows_either_side_of_a_change_and_only_while_it_lasts(
        soak: ModuleType) -> None:
    before = first_state(soak)
    after = soak.State({"bob": "new"}, before.admins, "k1", before.trusted)
    verdicts = soak.Verdicts(changes=[soak.Change("password", 10.0, 3.0, before, after)])
    old = soak.Basic("bob", "old")
    # sent under the old state, answered in the grace: either answer
    assert verdicts.judge(outcome(soak, before, old, 200, 10.5)) == "ok"
    assert verdicts.judge(outcome(soak, after, old, 401, 10.5)) == "ok"
    assert verdicts.judge(outcome(soak, after, old, 403, 10.5)) == "wrong"
    # past the grace, the new state alone
    assert verdicts.judge(outcome(soak, after, old, 200, 14.0)) == "wrong"


def test_a_retired_key_must_be_refused_once_the_grace_is_over(soak: ModuleType) -> None:
    before = first_state(soak)
    after = soak.State(before.passwords, before.admins, "k2", frozenset({"k2"}))
    verdicts = soak.Verdicts(changes=[soak.Change("k1 removed", 10.0, 5.0, before, after)])
    stale = soak.Bearer("k1", "valid", (), ())
    assert verdicts.judge(outcome(soak, after, stale, 200, 12.0)) == "ok"
    assert verdicts.judge(outcome(soak, after, stale, 200, 20.0)) == "wrong"
    forged = soak.Bearer("k2", "forged", ("admins",), ("reports:read",))
    assert verdicts.judge(outcome(soak, after, forged, 200, 20.0, "/reports/")) == "wrong"


def test_only_nginx_503_inside_the_restart_window_is_forgiven(soak: ModuleType) -> None:
    state = first_state(soak)
    verdicts = soak.Verdicts(windows=[(10.0, 15.0)])
    right = soak.Basic("bob", "old")
    assert verdicts.judge(outcome(soak, state, right, 503, 12.0)) == "window-503"
    assert verdicts.judge(outcome(soak, state, right, 502, 12.0)) == "5xx"
    assert verdicts.judge(outcome(soak, state, right, 503, 16.0)) == "5xx"
    assert verdicts.judge(outcome(soak, state, right, 0, 16.0)) == "error"
    assert verdicts.judge(outcome(soak, state, right, 200, 12.0)) == "ok"
