"""The JWK Set importer: ``jwks.parse_jwks`` on a document, under pinned algorithms.

Input: two bytes, a bit mask over ALGORITHMS (the ones the config pins; none set means all),
then the document. It yields a KeySet of verification keys that fit the pinned algorithms,
or is refused with JwksError; nothing else escapes.
"""
from __future__ import annotations

import json

from authproxy.jwt import jwks

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA")
# What each algorithm verifies with, written here rather than imported from authproxy.
KEY_TYPES = {**dict.fromkeys(ALGORITHMS[:6], ("RSA", None)), "ES256": ("EC", {"P-256"}),
             "ES384": ("EC", {"P-384"}), "ES512": ("EC", {"P-521"}),
             "EdDSA": ("OKP", {"Ed25519", "Ed448"})}


def encode(algorithms: tuple[str, ...], document: bytes) -> bytes:
    """The target's input for a document under these pinned algorithms."""
    mask = sum(1 << ALGORITHMS.index(a) for a in algorithms)
    return mask.to_bytes(2, "big") + document


def decode(data: bytes) -> tuple[tuple[str, ...], bytes]:
    mask = int.from_bytes(data[:2], "big")
    pinned = tuple(a for i, a in enumerate(ALGORITHMS) if mask >> i & 1)
    return pinned or ALGORITHMS, data[2:]


def fits(kty: str, crv: str, alg: str) -> bool:
    want, curves = KEY_TYPES[alg]
    return kty == want and (curves is None or crv in curves)


def check(data: bytes) -> None:
    pinned, document = decode(data)
    try:
        keyset = jwks.parse_jwks(document, pinned, "fuzz")
    except jwks.JwksError as exc:
        assert exc.reason in ("not_json", "not_jwks", "no_usable_keys")
        return
    members = json.loads(document)["keys"]
    assert keyset.keys and len(keyset.keys) + keyset.skipped == len(members)
    for key in keyset.keys:
        jwk = key.jwk
        assert key.kty in ("RSA", "EC", "OKP"), "a symmetric or unknown key admitted"
        assert jwk.get("kty") == key.kty and not jwk.has_private, "a private key admitted"
        assert jwk.get("use", "sig") == "sig", "an encryption key admitted"
        assert key.alg is None or key.alg in pinned, "a key for an algorithm not pinned"
        usable = [alg for alg in pinned if fits(key.kty, key.crv, alg)]
        assert usable, "a key no pinned algorithm verifies with"
        if key.alg is not None:
            assert key.alg in usable, "a key whose alg disagrees with its type"
        if key.kty == "RSA":
            assert jwk.get_op_key("verify").key_size >= 2048, "a weak RSA key admitted"
    # Duplicate kids (as KeySet.candidates documents): a token's kid selects every key of
    # that kid that fits its alg; a token without kid, every key that fits its alg.
    for alg in pinned:
        for kid in {*keyset.kids, None}:
            expected = tuple(k for k in keyset.keys if (kid is None or k.kid == kid)
                             and (k.alg in (None, alg)) and fits(k.kty, k.crv, alg))
            assert keyset.candidates(kid, alg) == expected, "candidates disagree with the keys"
