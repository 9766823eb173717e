"""Fixtures around :mod:`tests.jwks_server`. A test module enables them with
``pytest_plugins = ["tests.jwks_fixtures"]`` (and imports helpers from ``.jwks_server``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from authproxy.http.app import create_app

from .appclient import AppClient, ServeApp
from .jwks_server import K1, FakeClock, JwksServer, StartApp, jwt_section

TEST_MAX_HEAD_BYTES = 2 << 20


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(tls_ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "jwks-ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def jwks_server(tls_ca: trustme.CA, ca_file: Path) -> AsyncIterator[JwksServer]:
    """A running JWKS server publishing one RS256 key, kid ``k1``."""
    server = JwksServer(tls_ca, ca_file)
    server.serve(K1)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start_app(serve: ServeApp, make_config: Any, jwks_server: JwksServer,
              clock: FakeClock) -> StartApp:
    """start_app(sections={...}, **jwt) -> an AppClient of create_app served as production
    serves it, with the fake clock, its [jwt] pointing at ``jwks_server`` plus ``jwt``
    overrides."""

    async def start(sections: dict[str, dict[str, Any]] | None = None,
                    **jwt: Any) -> AppClient:
        all_sections = dict(sections or {})
        all_sections["jwt"] = {**jwt_section(jwks_server), **all_sections.get("jwt", {}), **jwt}
        # A head cap past any header a test sends, so that every credential reaches the
        # decision (tests/test_edge.py pins the cap itself).
        all_sections["server"] = {"max_head_bytes": TEST_MAX_HEAD_BYTES,
                                  **all_sections.get("server", {})}
        app = create_app(make_config(all_sections), clock=clock.monotonic,
                         wall_clock=clock.time)
        return await serve(app)

    return start
