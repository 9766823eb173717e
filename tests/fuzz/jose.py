"""JWT pre-checks (``authproxy.jwt.jose``): ``b64url_decode``, ``strict_json`` and
``check_token`` with the payload read by ``claims.decode_claims``, as Bearer reads a token.

The input is one compact-JWS candidate (bytes read as latin-1, as any byte can reach the
header). Each function's verdict is checked against an independent reading written here from
the RFCs (4648 §5, 7515, 8259, 8725), never from the code under test.
"""
from __future__ import annotations

import base64
import json
from typing import Any

from authproxy.errors import Unauthenticated
from authproxy.jwt import claims as claims_module
from authproxy.jwt import jose

# What a config can pin (config.ASYMMETRIC_ALGORITHMS, spelled out here so that a widened
# list fails the target rather than moving with it), and a narrower pin of one issuer.
ALL_PINNED = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA")
PINS = (ALL_PINNED, ("ES256",), ("RS256", "EdDSA"))
URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# Headers by which a token names or carries its own key, or extends the rules (RFC 8725 §3.10,
# RFC 7515 §4.1.11, RFC 7797): never honoured, so never accepted.
KEY_NAMING_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit", "b64")
SIGNATURE_BYTES = {"ES256": {64}, "ES384": {96}, "ES512": {132}, "EdDSA": {64, 114}}


def canonical_b64url(segment: str) -> bytes | None:
    """The bytes of ``segment`` if it is the one canonical unpadded base64url spelling of
    them (RFC 4648 §5, §3.5: alphabet only, no padding, zero unused bits), else None."""
    if not segment or not set(segment) <= URL_ALPHABET or len(segment) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != segment:
        return None
    return raw


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("repeated member")
    return dict(pairs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def strict_object(document: bytes) -> Any:
    """``document`` as RFC 8259 JSON in UTF-8 with unique member names and no NaN or
    Infinity; raise ValueError."""
    return json.loads(document.decode("utf-8"), object_pairs_hook=_refuse_repeats,
                      parse_constant=_refuse_constant)


def _refused(exc: Unauthenticated) -> None:
    """A refusal of a presented token is RFC 6750 invalid_token with a fixed description."""
    assert exc.bearer_error == "invalid_token", exc.reason
    assert exc.bearer_description in jose.DESCRIPTIONS.values(), exc.reason


def check_b64url(text: str) -> None:
    try:
        decoded = jose.b64url_decode(text)
    except ValueError:  # binascii.Error included
        return
    assert text == "" or canonical_b64url(text) == decoded, "accepted a non-canonical base64url"


def check_strict_json(document: bytes) -> None:
    try:
        value = jose.strict_json(document)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        return
    assert value == accepted_json(document, "a JSON text")


def accepted_json(document: bytes, what: str) -> Any:
    """strict_object(document), for a document the code accepted: an AssertionError if it
    is not strict JSON after all."""
    try:
        return strict_object(document)
    except ValueError:
        raise AssertionError(f"accepted {what} that is not strict UTF-8 JSON") from None


def check_token(token: str, algorithms: tuple[str, ...]) -> None:
    try:
        checked = jose.check_token(token, algorithms)
        payload = claims_module.decode_claims(checked.payload)
    except Unauthenticated as exc:
        _refused(exc)
        return
    segments = token.split(".")
    assert len(segments) == 3, "accepted a token without exactly three segments"
    decoded = [canonical_b64url(segment) for segment in segments]
    assert None not in decoded, "accepted a segment that is not canonical base64url"
    header_bytes, payload_bytes, signature = decoded
    assert header_bytes is not None and payload_bytes is not None and signature is not None
    header = accepted_json(header_bytes, "a header")
    assert isinstance(header, dict), "accepted a header that is no JSON object"
    assert accepted_json(payload_bytes, "a payload") == payload and isinstance(payload, dict)
    alg = header.get("alg")
    assert alg in algorithms, f"accepted alg {alg!r} outside the pin {algorithms}"
    assert alg != "none" and not str(alg).startswith("HS")
    assert not any(name in header for name in KEY_NAMING_HEADERS), "honoured a key header"
    assert "kid" not in header or isinstance(header["kid"], str)
    assert (checked.alg, checked.kid) == (alg, header.get("kid"))
    assert checked.signing_input == f"{segments[0]}.{segments[1]}".encode("ascii")
    assert (checked.payload, checked.signature) == (payload_bytes, signature)
    if alg in SIGNATURE_BYTES:
        assert len(signature) in SIGNATURE_BYTES[alg], "accepted a signature of a wrong length"


def check(data: bytes) -> None:
    text = data.decode("latin-1")
    check_b64url(text)
    check_strict_json(data)
    for algorithms in PINS:
        check_token(text, algorithms)

