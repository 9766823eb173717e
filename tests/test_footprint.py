"""What a sidecar imports follows its config (issue 11 item 9): a module a config does not use
is not loaded, checked in a fresh interpreter that builds the app as `authproxy serve` does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import toml_text, write_users
from .jwks_server import K1

BUILD_APP = """
import sys
from authproxy.config import load_config
from authproxy.http.app import create_app
create_app(load_config(sys.argv[1]))
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def loaded_packages(config: Path) -> set[str]:
    run = subprocess.run([sys.executable, "-c", BUILD_APP, str(config)], capture_output=True,
                         text=True, check=True, timeout=60)
    return set(run.stdout.split())


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [K1.public_jwk]}))
    return path


# Loaded by no sidecar: aiohttp (the dev tools' alone), prometheus_client (obs/prom.py writes
# the format), yarl (only an odd request target needs it, http/message.py)
NEVER = {"aiohttp", "prometheus_client", "yarl"}


def sidecar_loads(tmp_path: Path, sections: dict[str, Any]) -> set[str]:
    config = tmp_path / "authproxy.toml"
    config.write_text(toml_text(sections))
    return loaded_packages(config)


def test_a_basic_only_sidecar_loads_no_jwt_library(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users", alice="pw")
    loaded = sidecar_loads(tmp_path, {"basic": {"users_file": str(users)}})
    assert "bcrypt" in loaded  # the check sees what is loaded
    assert not loaded & {"jwcrypto", *NEVER}


def test_a_bearer_only_sidecar_loads_no_password_hashing(tmp_path: Path,
                                                         jwks_file: Path) -> None:
    loaded = sidecar_loads(tmp_path, {"jwt": {"jwks_file": str(jwks_file),
                                              "jwks_require_audience": ["app"]}})
    assert "jwcrypto" in loaded
    assert not loaded & {"argon2", "passlib", *NEVER}


def test_a_sidecar_that_fetches_its_keys_loads_no_http_client_library(tmp_path: Path) -> None:
    loaded = sidecar_loads(tmp_path, {"jwt": {"jwks_endpoint": "https://idp.example/jwks.json",
                                              "jwks_require_audience": ["app"]}})
    assert "httptools" in loaded  # the JWKS client's parser, like the edge's
    assert not loaded & {"argon2", "passlib", *NEVER}


RETAINED = """
import sys, threading
from authproxy.http.server import tune_malloc
if sys.argv[1] == "tuned":
    tune_malloc()
def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def verify_like_argon2id():  # m = 8 MiB, touched and freed, three times
    for _ in range(3):
        block = bytearray(8 << 20)
        block[::4096] = b"x" * len(block[::4096])
        del block
start = rss_kb()
for _ in range(4):  # a thread each, as hash threads and reloads come and go
    thread = threading.Thread(target=verify_like_argon2id)
    thread.start()
    thread.join()
print((rss_kb() - start) // 1024)
"""


def retained_mb(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", RETAINED, mode], capture_output=True,
                         text=True, check=True, timeout=60)
    return int(run.stdout)


def test_large_blocks_freed_by_threads_go_back_to_the_system() -> None:
    # The soak saw workers grow by 8 MB steps at reloads: glibc raised its mmap threshold
    # after the first argon2id block was freed, and later ones stayed in thread heaps.
    assert retained_mb("plain") >= 6  # what glibc does on its own (the check can fail)
    assert retained_mb("tuned") <= 2
