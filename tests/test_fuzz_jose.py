"""Property tests of the JWT pre-checks (fuzz target ``tests/fuzz/jose.py``)."""
from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from authproxy.jwt import jose as jose_module
from tests.fuzz import jose
from tests.planted import assert_caught

from .jwks_server import b64url, resign, signing_key

URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
KEYS = [signing_key(alg, kid=f"fuzz-{alg}") for alg in ("RS256", "PS256", "ES256", "EdDSA")]
NOW = 1_700_000_000

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=8)
header_values = st.sampled_from(["RS256", "ES256", "EdDSA", "none", "HS256", "rs256", "PS384",
                                 ""]) | json_scalars
header_names = st.sampled_from(["alg", "kid", "typ", "jku", "x5u", "jwk", "x5c", "crit", "b64",
                                "cty", "zip"])


@st.composite
def signed_tokens(draw: st.DrawFn) -> str:
    """A token a real key signed (PyJWT's algorithm objects), whose header may carry odd
    members and values: what an attacker with a key of their own can send."""
    key = draw(st.sampled_from(KEYS))
    header: dict[str, Any] = {"alg": key.alg, "kid": key.kid}
    header.update(draw(st.dictionaries(header_names, header_values, max_size=3)))
    payload = {"sub": draw(st.text(max_size=6)), "exp": NOW + 300,
               **draw(st.dictionaries(st.text(max_size=4), json_scalars, max_size=3))}
    return resign(key, header, payload)


def respell_segment(draw: st.DrawFn, segment: str) -> str:
    """One segment spelled a little wrong: padding, the standard alphabet, junk, a changed
    last character (non-canonical unused bits), a truncation."""
    how = draw(st.sampled_from(["pad", "std", "junk", "last", "cut", "insert"]))
    if how == "pad":
        return segment + draw(st.sampled_from(["=", "==", "==="]))
    if how == "std":
        return segment.replace("-", "+").replace("_", "/") + "+"
    if how == "last" and segment:
        return segment[:-1] + draw(st.sampled_from(URL_ALPHABET))
    if how == "cut":
        return segment[:draw(st.integers(0, len(segment)))]
    at = draw(st.integers(0, len(segment)))
    junk = draw(st.sampled_from([" ", "\t", "\n", ".", "=", "+", "/", "\x00", "é", "\u0660",
                                 "A", "-"]))
    if how == "junk" and at < len(segment):
        return segment[:at] + junk + segment[at + 1:]
    return segment[:at] + junk + segment[at:]


@st.composite
def mutated_tokens(draw: st.DrawFn) -> str:
    segments = draw(signed_tokens()).split(".")
    how = draw(st.sampled_from(["respell", "drop", "add", "swap"]))
    if how == "respell":
        at = draw(st.integers(0, 2))
        segments[at] = respell_segment(draw, segments[at])
    elif how == "drop":
        del segments[draw(st.integers(0, 2))]
    elif how == "add":
        segments.insert(draw(st.integers(0, 3)), draw(st.sampled_from(["", "e30", "AA"])))
    else:
        segments[0], segments[1] = segments[1], segments[0]
    return ".".join(segments)


def raw_json_header(text: str) -> str:
    return b64url(text)


# JSON texts no strict reader accepts, as a header, or a payload of a well-formed token.
NOT_STRICT_JSON = [
    '{"alg":"ES256","alg":"none"}', '{"alg":"ES256","x":NaN}', '{"alg":"ES256","x":Infinity}',
    '{"alg":"ES256","x":-Infinity}', '["alg","ES256"]', '"ES256"', '{"alg":"ES256"', "",
    '\ufeff{"alg":"ES256"}', '{"alg":"ES256","x":"\x01"}',
]


@st.composite
def hand_built_tokens(draw: st.DrawFn) -> str:
    """Tokens no library would make: a JSON text spelled by hand as header or payload."""
    text = draw(st.sampled_from(NOT_STRICT_JSON) | st.text(max_size=30))
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "latin-1"]))
    try:
        segment = b64url(text.encode(encoding))
    except UnicodeEncodeError:
        segment = b64url(text.encode("utf-8"))
    good_header = b64url({"alg": "ES256"})
    signature = b64url(b"\x01" * 64)
    if draw(st.booleans()):
        return f"{segment}.{b64url({'sub': 'a'})}.{signature}"
    return f"{good_header}.{segment}.{signature}"


@given(st.binary(max_size=300))
def test_raw_bytes(data: bytes) -> None:
    jose.check(data)


@given(st.text(alphabet=URL_ALPHABET + ".=+/", max_size=60).map(str.encode))
def test_token_alphabet(data: bytes) -> None:
    jose.check(data)


@given(signed_tokens())
def test_signed_tokens(token: str) -> None:
    jose.check(token.encode("latin-1"))


@given(mutated_tokens())
@example(f"{b64url({'alg': 'ES256'})}.e30.{b64url(b'x' * 64)}=")  # padding on the signature
@example(f"{b64url({'alg': 'ES256'})}.e31.{b64url(b'x' * 64)}")  # "{}" with stray bits
def test_mutated_tokens(token: str) -> None:
    jose.check(token.encode("utf-8"))


@given(hand_built_tokens())
@example(f"{b64url(NOT_STRICT_JSON[0])}.e30.{b64url(b'x' * 64)}")
def test_hand_built_tokens(token: str) -> None:
    jose.check(token.encode("utf-8"))


@given(st.sampled_from(NOT_STRICT_JSON) | st.text(max_size=20), st.sampled_from(
    ["utf-8", "utf-16", "utf-32"]))
def test_json_documents(text: str, encoding: str) -> None:
    jose.check(text.encode(encoding, "surrogatepass"))


@given(st.binary(max_size=48))
def test_canonical_segments_decode(raw: bytes) -> None:
    assert jose_module.b64url_decode(b64url(raw)) == raw


def test_the_target_accepts_real_tokens() -> None:
    """The properties hold for tokens that pass, not only vacuously for refusals."""
    for key in KEYS:
        token = resign(key, {"alg": key.alg, "kid": key.kid}, {"sub": "a", "exp": NOW})
        assert jose_module.check_token(token, jose.ALL_PINNED).alg == key.alg
        jose.check(token.encode())


def _lenient_b64url_decode(segment: str) -> bytes:
    """A planted bug: the usual decoder, which adds padding and lets junk and stray bits by."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def test_a_planted_lenient_base64url_is_caught(monkeypatch: Any) -> None:
    monkeypatch.setattr(jose_module, "b64url_decode", _lenient_b64url_decode)
    assert_caught(test_mutated_tokens)


def _duplicate_friendly_json(document: bytes) -> Any:
    """A planted bug: plain json.loads, which keeps the last of repeated members and reads
    NaN and Infinity."""
    return json.loads(document.decode("utf-8"))


def test_a_planted_lax_json_is_caught(monkeypatch: Any) -> None:
    monkeypatch.setattr(jose_module, "strict_json", _duplicate_friendly_json)
    assert_caught(test_hand_built_tokens)
