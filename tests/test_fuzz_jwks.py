"""Property tests of the JWK Set importer (fuzz target ``tests/fuzz/jwks.py``), and of what
a refused document does to the key ring: nothing."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jwcrypto.jwk import JWK

from authproxy.config import JwtConfig
from authproxy.jwt import jwks as jwks_module
from authproxy.jwt.jwks import VerifyKey
from authproxy.jwt.keyring import KeyRing
from authproxy.jwt.refresher import Refresher
from authproxy.obs.metrics import Metrics
from tests.fuzz import jwks
from tests.jwks_server import K1, signing_key
from tests.test_refresher import FakeFetcher

# Real public keys of each kind the service verifies with, and a weak RSA one.
REAL_KEYS = [signing_key(alg, f"k-{alg}").public_jwk
             for alg in ("RS256", "PS384", "ES256", "ES384", "ES512", "EdDSA")]
REAL_KEYS.append(signing_key("RS256", "weak", kind="rsa1024").public_jwk)
OCT = {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "alg": "HS256", "kid": "hs"}
ODD_VALUES = st.one_of(
    st.sampled_from(["sig", "enc", "RSA", "EC", "OKP", "oct", "P-256", "Ed25519", "RS256",
                     "ES256", "HS256", "none", "", "AQAB", "!!!", "A" * 5, "k-RS256"]),
    st.integers(), st.sampled_from([10**400, 1e308, -1, 0, None, True, [], {}, ["verify"],
                                    ["sign"], {"a": 1}]),
    st.text(max_size=8))
MEMBERS = ("kty", "alg", "use", "kid", "crv", "key_ops", "n", "e", "x", "y", "d", "k")
ALGORITHM_SETS = st.sets(st.sampled_from(jwks.ALGORITHMS), min_size=1).map(tuple)


@st.composite
def jwk_members(draw: st.DrawFn) -> Any:
    """A real public key, some of its members changed, dropped or added; an oct key; or a
    member that is no object at all."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(ODD_VALUES)
    member = dict(OCT if choice == 1 else draw(st.sampled_from(REAL_KEYS)))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(MEMBERS))
        if draw(st.booleans()):
            member.pop(name, None)
        else:
            member[name] = draw(ODD_VALUES)
    return member


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    keys = draw(st.lists(jwk_members(), max_size=4))
    if draw(st.booleans()) and keys:  # a kid shared by two keys
        first, last = keys[0], keys[-1]
        if isinstance(first, dict) and isinstance(last, dict):
            last["kid"] = first.get("kid")
    document: Any = {"keys": keys}
    if draw(st.integers(0, 9)) == 0:
        document = draw(st.sampled_from([keys, "keys", None, {"keys": {}}, {"keys": "x"}]))
    text = json.dumps(document).encode()
    return jwks.encode(draw(ALGORITHM_SETS), text)


@given(st.binary(max_size=200))
def test_raw_bytes(data: bytes) -> None:
    jwks.check(data)


@given(documents())
@example(jwks.encode(("ES256",), b'{"keys": [{"kty": "EC", "crv": []}]}'))  # TypeError escaped
@example(jwks.encode(("RS256",), b"[" * 100_000))  # RecursionError escaped
@example(jwks.encode(("ES256",), json.dumps({"keys": [REAL_KEYS[0]]}).encode()))
def test_documents(data: bytes) -> None:
    jwks.check(data)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow,
                                                  HealthCheck.function_scoped_fixture])
@given(documents())
@example(jwks.encode(("ES256",), b'{"keys": [{"kty": "EC", "crv": {}}]}'))
def test_a_refused_document_leaves_the_ring_alone(tmp_path: Path, data: bytes) -> None:
    """The file source through the refresher (what SIGHUP runs): a document that yields no
    key set changes nothing in the ring; one that does is installed whole."""
    pinned, document = jwks.decode(data)
    path = tmp_path / "jwks.json"
    config = JwtConfig(jwks_file=str(path), algorithms=(*pinned, "RS256"),
                       jwks_require_audience=("a",))
    ring = KeyRing(config, Metrics())
    refresher = Refresher(ring, FakeFetcher(jwks_module.JwksError("unused")), config)
    assert ring.file is not None

    async def reload(content: bytes) -> bool:
        path.write_bytes(content)
        return await refresher.reload_file("test")

    assert asyncio.run(reload(json.dumps({"keys": [K1.public_jwk]}).encode()))
    before = ring.file.keyset
    assert before is not None
    if asyncio.run(reload(document)):
        assert ring.file.keyset is not before and ring.file.keyset is not None
    else:
        assert ring.file.keyset is before and ring.file.failures == 1


def _admitting_oct(member: Any, algorithms: Any) -> VerifyKey:
    """A planted bug: a symmetric key let through as if it were a public one."""
    if isinstance(member, dict) and member.get("kty") == "oct":
        try:
            jwk = JWK(**member)
            return VerifyKey(jwk, "oct", "", member.get("kid"), None, jwk.thumbprint())
        except Exception:  # not even a symmetric key: as the real importer says
            pass
    return _real_load_key(member, algorithms)


def _ignoring_the_pin(member: Any, algorithms: Any) -> VerifyKey:
    """A planted bug: keys imported whatever algorithms the config pins."""
    return _real_load_key(member, jwks.ALGORITHMS)


_real_load_key = jwks_module.load_key


def fails_a_property(test: Any) -> None:
    """``test`` fails, and by an AssertionError (a property), not by a crash."""
    try:
        test()
    except AssertionError:
        return
    except ExceptionGroup as group:  # hypothesis found several distinct failures
        _, others = group.split(AssertionError)
        assert others is None, f"crashed rather than failed a property: {others!r}"
        return
    pytest.fail("the property test passed with the bug planted")


@pytest.mark.parametrize("planted", [_admitting_oct, _ignoring_the_pin])
def test_a_planted_lenient_importer_is_caught(monkeypatch: Any, planted: Any) -> None:
    monkeypatch.setattr(jwks_module, "load_key", planted)
    fails_a_property(test_documents)
