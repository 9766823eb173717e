"""Checks on a compact JWS done before any cryptography, and the fixed RFC 6750 descriptions.

Everything here is cheap (about 10 µs) and refuses what no valid token looks like, so that
neither jwcrypto nor a key lookup ever sees it: the wrong shape or alphabet (jwcrypto's
base64 decoder silently drops characters outside the alphabet, making tokens malleable), an
``alg`` we do not accept (``none`` and HMAC are never accepted), headers by which a token names
or carries its own key (``jku``, ``x5u``, ``jwk``, ``x5c``: RFC 8725 §3.10), extensions we do
not support (``crit``, ``b64``), and ECDSA/EdDSA signatures of the wrong length (CVE-2022-21449
class).
"""

from __future__ import annotations

import binascii
import functools
import json
import re
from typing import Any, NamedTuple

from ..errors import Unauthenticated

# Longest token considered. Real access tokens, even with many groups, stay well below this;
# nginx's default header buffer (8 kB) cuts the whole header off earlier anyway.
MAX_TOKEN_LENGTH = 12_288
REFUSED_HEADERS = frozenset(("jku", "x5u", "jwk", "x5c", "crit", "b64"))
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_SIGNATURE_LENGTHS = {
    "ES256": frozenset({64}), "ES384": frozenset({96}), "ES512": frozenset({132}),
    "EdDSA": frozenset({64, 114}),  # Ed25519, Ed448
}

# RFC 6750 error_description values: fixed, printable ASCII without '"' or '\'. Reasons for
# logs and metrics are finer grained; each maps to one of these.
DESCRIPTIONS = {
    "malformed": "The access token is malformed",
    "expired": "The access token expired",
    "not_yet_valid": "The access token is not yet valid",
    "bad_signature": "The access token signature is invalid",
    "unknown_key": "The access token is signed by an unknown key",
    "wrong_issuer": "The access token issuer is not accepted",
    "wrong_audience": "The access token audience is not accepted",
    "wrong_type": "The access token type is not accepted",
    "missing": "The request is missing a valid bearer token",  # with invalid_request
}


def invalid_token(reason: str, kind: str = "malformed") -> Unauthenticated:
    """The 401 for a presented but unacceptable token: ``reason`` for logs, ``kind`` picks
    the client-visible description."""
    return Unauthenticated(
        reason, bearer_error="invalid_token",
        bearer_description=DESCRIPTIONS[kind],
    )


class CheckedToken(NamedTuple):
    """A compact JWS that passed the pre-checks: the header fields that choose and constrain
    the key, and the decoded parts the signature is verified over."""

    alg: str
    kid: str | None
    signing_input: bytes  # ASCII "header.payload", exactly as received
    payload: bytes
    signature: bytes


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SEXTET = {c: i for i, c in enumerate(_B64URL)}
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
# by length % 4: the padding to add, and the bits of the last character that carry no data
# (a canonical encoding leaves them zero; RFC 4648 §3.5)
_PADDING = {0: (b"", 0), 2: (b"==", 0x0F), 3: (b"=", 0x03)}


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url, refusing any spelling but the canonical one: only the
    base64url alphabet, no padding, no impossible length, no stray bits in the last
    character (which would make several spellings of one value)."""
    # '+', '/' and '=' would pass the standard-alphabet decoder below; it refuses the rest
    if not segment.isascii() or "+" in segment or "/" in segment or "=" in segment:
        raise ValueError("not base64url")
    try:
        padding, unused_bits = _PADDING[len(segment) % 4]
    except KeyError:
        raise ValueError("impossible base64 length") from None
    if segment and _SEXTET.get(segment[-1], 0) & unused_bits:
        raise ValueError("non-canonical base64")
    return binascii.a2b_base64(segment.encode().translate(_TO_STANDARD) + padding,
                               strict_mode=True)


def no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook for json: a repeated member makes the document invalid."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads with these arguments makes a decoder per call.
STRICT_JSON = json.JSONDecoder(object_pairs_hook=no_duplicate_members,
                               parse_constant=_refuse_constant)


def strict_json(document: bytes) -> Any:
    """A UTF-8 JSON text (RFC 8259 §8.1; not UTF-16 or -32, which json.loads would guess)
    without repeated member names, NaN or Infinity; raise ValueError."""
    return STRICT_JSON.decode(document.decode("utf-8"))


def check_token(
    token: str, algorithms: tuple[str, ...], require_typ: str = ""
) -> CheckedToken:
    """Pre-check a compact JWS and return its parts; raise Unauthenticated (invalid_token).

    ``require_typ`` ``"at+jwt"`` demands RFC 9068 §2.1 explicit typing; ``application/at+jwt``
    is the same media type, compared case-insensitively.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise invalid_token("oversize_token")
    if not _COMPACT.fullmatch(token):
        raise invalid_token("not_compact_jws")
    header_b64, payload_b64, signature_b64 = token.split(".")
    alg, kid = _checked_header(header_b64, algorithms, require_typ)
    try:
        payload = b64url_decode(payload_b64)
        signature = b64url_decode(signature_b64)
    except ValueError:  # binascii.Error included
        raise invalid_token("bad_encoding") from None
    lengths = _SIGNATURE_LENGTHS.get(alg)
    if lengths is not None and len(signature) not in lengths:
        raise invalid_token("bad_signature_length", "bad_signature")
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    return CheckedToken(alg, kid, signing_input, payload, signature)


# An issuer's tokens share one header (alg, kid, typ), so its checks are remembered, by the
# header's exact spelling: only headers that passed them (a refusal is an exception, which
# lru_cache does not keep), at most this many.
@functools.lru_cache(maxsize=256)
def _checked_header(
    header_b64: str, algorithms: tuple[str, ...], require_typ: str
) -> tuple[str, str | None]:
    """(alg, kid) of a header that passes the checks; raise Unauthenticated."""
    try:
        header = strict_json(b64url_decode(header_b64))
    except ValueError:  # UnicodeDecodeError, JSONDecodeError and binascii.Error included
        raise invalid_token("bad_encoding") from None
    if not isinstance(header, dict):
        raise invalid_token("header_not_object")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise invalid_token("alg_not_allowed")
    if not REFUSED_HEADERS.isdisjoint(header):
        raise invalid_token("refused_header")
    kid, typ = header.get("kid"), header.get("typ")
    if "kid" in header and not isinstance(kid, str):  # null included: RFC 7515 says a string
        raise invalid_token("bad_kid")
    if "typ" in header and not isinstance(typ, str):
        raise invalid_token("bad_typ")
    if require_typ and _media_type(typ) != require_typ:
        raise invalid_token("wrong_typ", "wrong_type")
    return alg, kid


def _media_type(typ: str | None) -> str:
    value = (typ or "").lower()
    return value[len("application/"):] if value.startswith("application/") else value
