"""The pre-checks of a compact JWS (jwt/jose.py) pinned through check_token, one test per
behaviour a mutant of them changed without the suite noticing (``make mutate``): each
refusal's exact reason and description, each bound at its edge."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from authproxy.errors import Unauthenticated
from authproxy.jwt.jose import (
    DESCRIPTIONS,
    MAX_TOKEN_LENGTH,
    b64url_decode,
    check_token,
    invalid_token,
    no_duplicate_members,
    strict_json,
)

ALGS = ("RS256", "ES256", "EdDSA")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(header: Any = None, payload: bytes = b'{"sub":"a"}', signature: bytes = b"s" * 64,
          *, raw_header: bytes | None = None) -> str:
    if raw_header is None:
        raw_header = json.dumps({"alg": "RS256"} if header is None else header).encode()
    return f"{b64(raw_header)}.{b64(payload)}.{b64(signature)}"


def refusal(value: str, algorithms: tuple[str, ...] = ALGS, require_typ: str = "") -> tuple[
        str, str]:
    with pytest.raises(Unauthenticated) as caught:
        check_token(value, algorithms, require_typ)
    assert caught.value.bearer_error == "invalid_token"
    return caught.value.reason, caught.value.bearer_description


MALFORMED = DESCRIPTIONS["malformed"]


def test_a_token_that_passes_gives_its_parts() -> None:
    value = token({"alg": "ES256", "kid": "k1", "typ": "JWT"}, b'{"x":1}', b"\x01" * 64)
    checked = check_token(value, ALGS)
    assert checked.alg == "ES256"
    assert checked.kid == "k1"
    assert checked.payload == b'{"x":1}'
    assert checked.signature == b"\x01" * 64
    assert checked.signing_input == value.rpartition(".")[0].encode()
    assert check_token(token({"alg": "RS256"}), ALGS).kid is None


def test_the_length_bound_to_the_byte() -> None:
    header = b64(b'{"alg":"RS256"}')
    for spaces in range(3):
        payload = b64(b'{"sub":"a"' + b" " * spaces + b"}")
        left = MAX_TOKEN_LENGTH - len(f"{header}.{payload}.")
        if left % 4 != 1:  # a length base64 can have
            break
    exact = f"{header}.{payload}.{'A' * left}"
    assert len(exact) == MAX_TOKEN_LENGTH
    assert check_token(exact, ALGS).payload.startswith(b'{"sub":"a"')
    assert refusal(exact + "A") == ("oversize_token", MALFORMED)


@pytest.mark.parametrize("value", ["a.b", "a.b.c.d", "a..c", "a.b.c=", "a.b.c ", " a.b.c",
                                   "a.b+.c", "á.b.c"])
def test_not_a_compact_jws(value: str) -> None:
    assert refusal(value) == ("not_compact_jws", MALFORMED)


@pytest.mark.parametrize("raw_header", [b"\xff", b"{", b'{"alg":"RS256","alg":"RS256"}',
                                        b'{"alg":"RS256","x":NaN}'])
def test_a_header_that_is_no_strict_json(raw_header: bytes) -> None:
    assert refusal(token(raw_header=raw_header)) == ("bad_encoding", MALFORMED)


@pytest.mark.parametrize(("header", "reason"), [
    ([1], "header_not_object"), ("alg", "header_not_object"),
    ({}, "alg_not_allowed"), ({"alg": 1}, "alg_not_allowed"), ({"alg": "none"}, "alg_not_allowed"),
    ({"alg": "HS256"}, "alg_not_allowed"), ({"alg": "PS256"}, "alg_not_allowed"),
    ({"alg": "RS256", "jku": "https://x"}, "refused_header"),
    ({"alg": "RS256", "x5u": "https://x"}, "refused_header"),
    ({"alg": "RS256", "jwk": {}}, "refused_header"),
    ({"alg": "RS256", "x5c": []}, "refused_header"),
    ({"alg": "RS256", "crit": ["b64"]}, "refused_header"),
    ({"alg": "RS256", "b64": False}, "refused_header"),
    ({"alg": "RS256", "kid": None}, "bad_kid"), ({"alg": "RS256", "kid": 1}, "bad_kid"),
    ({"alg": "RS256", "typ": None}, "bad_typ"), ({"alg": "RS256", "typ": 1}, "bad_typ"),
])
def test_header_refusals(header: Any, reason: str) -> None:
    assert refusal(token(header)) == (reason, MALFORMED)


@pytest.mark.parametrize("segment", ["payload", "signature"])
def test_a_payload_or_signature_that_is_no_canonical_base64url(segment: str) -> None:
    header, payload, signature = token().split(".")
    parts = {"payload": payload, "signature": signature}
    parts[segment] = "A"  # an impossible length
    assert refusal(f"{header}.{parts['payload']}.{parts['signature']}") == (
        "bad_encoding", MALFORMED)


@pytest.mark.parametrize(("alg", "length", "ok"), [
    ("ES256", 64, True), ("ES256", 63, False), ("ES256", 65, False),
    ("EdDSA", 64, True), ("EdDSA", 114, True), ("EdDSA", 113, False),
    ("RS256", 3, True),
])
def test_signature_lengths(alg: str, length: int, ok: bool) -> None:
    value = token({"alg": alg}, signature=b"\x01" * length)
    if ok:
        assert len(check_token(value, ALGS).signature) == length
    else:
        assert refusal(value) == ("bad_signature_length", DESCRIPTIONS["bad_signature"])


@pytest.mark.parametrize(("typ", "required", "ok"), [
    ("at+jwt", "at+jwt", True), ("application/at+jwt", "at+jwt", True),
    ("AT+JWT", "at+jwt", True), ("Application/AT+jwt", "at+jwt", True),
    ("JWT", "at+jwt", False), (None, "at+jwt", False), ("application/jwt", "at+jwt", False),
    ("xapplication/at+jwt", "at+jwt", False), ("JWT", "", True),
])
def test_explicit_typing(typ: str | None, required: str, ok: bool) -> None:
    header = {"alg": "RS256"} if typ is None else {"alg": "RS256", "typ": typ}
    value = token(header)
    if ok:
        check_token(value, ALGS, required)
    else:
        assert refusal(value, ALGS, required) == ("wrong_typ", DESCRIPTIONS["wrong_type"])


def test_a_header_check_is_per_algorithm_list_and_typ() -> None:
    """The memoized header checks are keyed by what they were checked against."""
    value = token({"alg": "ES256", "typ": "JWT"})
    check_token(value, ALGS)
    assert refusal(value, ("RS256",))[0] == "alg_not_allowed"
    assert refusal(value, ALGS, "at+jwt")[0] == "wrong_typ"


# -- the decoders --------------------------------------------------------------------------------


@pytest.mark.parametrize("segment", ["AA=", "A+8", "A/8", "é", "AB", "AAB", "A", "AAAA="])
def test_b64url_decode_refuses(segment: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(segment)


@pytest.mark.parametrize(("segment", "message"), [
    ("AA=", "not base64url"), ("A", "impossible base64 length"), ("AB", "non-canonical base64"),
])
def test_b64url_decode_says_why(segment: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        b64url_decode(segment)


@pytest.mark.parametrize(("segment", "data"), [
    ("", b""), ("AA", b"\x00"), ("AAA", b"\x00\x00"), ("_-8", b"\xff\xef"), ("AAAA", b"\x00" * 3),
    ("Zm9vYmFy", b"foobar"), ("Zg", b"f"), ("Zm8", b"fo"),
])
def test_b64url_decode_decodes(segment: str, data: bytes) -> None:
    assert b64url_decode(segment) == data


def test_strict_json() -> None:
    assert strict_json(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    for document in (b'{"a": 1, "a": 1}', b"[NaN]", b"[Infinity]", b"[-Infinity]",
                     '{"a": 1}'.encode("utf-16"), b"\xff"):
        with pytest.raises(ValueError):
            strict_json(document)
    with pytest.raises(ValueError, match=r"^duplicate member$"):
        no_duplicate_members([("a", 1), ("a", 2)])
    assert no_duplicate_members([("a", 1), ("b", 2)]) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="NaN is not JSON"):
        strict_json(b"NaN")


def test_invalid_token_says_the_reason_and_the_fixed_description() -> None:
    error = invalid_token("some_reason")
    assert (error.reason, error.bearer_error, error.bearer_description) == (
        "some_reason", "invalid_token", MALFORMED)
    assert str(error) == "some_reason"
    assert invalid_token("r", "expired").bearer_description == DESCRIPTIONS["expired"]
