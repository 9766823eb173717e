"""Claim policy: what a verified token's payload must say, and the identity it names.

Checked by hand rather than by jwcrypto's ``check_claims``, whose traps are many (a given
``check_claims`` silently stops checking ``exp``; ``"exp": "9999999999"`` raises a raw
TypeError; the ``typ`` it checks is a claim, not the header). Every claim of the wrong type is
an ``invalid_token``, never an exception.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..config import JwtConfig
from ..core.identity import Identity, sendable
from ..errors import Unauthenticated
from .jose import invalid_token, strict_json

MAX_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z: later is a forgery or a bug


def decode_claims(payload: bytes) -> dict[str, Any]:
    """The payload as a JSON object (UTF-8, no duplicate names, no NaN/Infinity)."""
    try:
        claims = strict_json(payload)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        raise invalid_token("payload_not_json") from None
    if not isinstance(claims, dict):
        raise invalid_token("payload_not_object")
    return claims


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    # bool is an int in Python, and "9999999999" an int to jwcrypto: neither is a NumericDate
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_token(f"bad_{name}")
    # comparisons refuse NaN and infinities too, and never overflow (math.isfinite does, on
    # an integer past any float)
    if not 0 <= value <= MAX_NUMERIC_DATE:
        raise invalid_token(f"bad_{name}")
    return float(value)


def _strings(value: Any, name: str, split: bool) -> frozenset[str]:
    """A string (split on ASCII spaces when ``split``) or a list of strings, as a set.

    Only U+0020 separates scopes (RFC 6749 §3.3): ``str.split()`` would also split on
    U+00A0 or U+2028 and so read scopes the token does not grant.
    """
    if isinstance(value, str):
        if not split:
            return frozenset([value])
        return frozenset(item for item in value.split(" ") if item)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(item for item in value if item)
    raise invalid_token(f"bad_{name}")


class ClaimPolicy:
    """The [jwt] claim rules; :meth:`identity` applies them to a verified payload."""

    def __init__(self, config: JwtConfig, wall_clock: Callable[[], float] = time.time) -> None:
        self._leeway = config.leeway
        self._issuer = config.issuer
        self._audiences = frozenset(config.jwks_require_audience)
        self._user_claim = config.jwks_username_field
        self._wall_clock = wall_clock

    def identity(self, payload: bytes) -> Identity:
        """The identity a verified payload names; raise Unauthenticated (invalid_token).

        ``exp`` is required; ``exp``, ``nbf`` and ``iat`` are judged with the configured
        leeway; ``iss`` must equal jwt.issuer and ``aud`` contain one of
        jwt.jwks_require_audience, when those are set.
        """
        claims = decode_claims(payload)
        now = self._wall_clock()
        exp = _numeric_date(claims, "exp")
        nbf = _numeric_date(claims, "nbf")
        iat = _numeric_date(claims, "iat")
        if exp is None:
            raise invalid_token("missing_exp")
        if now >= exp + self._leeway:
            raise invalid_token("expired", "expired")
        if nbf is not None and nbf > now + self._leeway:
            raise invalid_token("not_yet_valid", "not_yet_valid")
        if iat is not None and iat > now + self._leeway:
            raise invalid_token("issued_in_future", "not_yet_valid")
        if self._issuer and claims.get("iss") != self._issuer:
            raise invalid_token("wrong_issuer", "wrong_issuer")
        if self._audiences:
            if "aud" not in claims:
                raise invalid_token("missing_audience", "wrong_audience")
            if not self._audiences & _strings(claims["aud"], "aud", split=False):
                raise invalid_token("wrong_audience", "wrong_audience")
        user = claims.get(self._user_claim)
        if not isinstance(user, str) or not user:
            raise invalid_token("missing_user")
        subject = claims.get("sub", "")
        if not isinstance(subject, str):  # RFC 7519 4.1.2: a StringOrURI
            raise invalid_token("bad_sub")
        scopes: frozenset[str] = frozenset()
        for name in ("scope", "scp"):  # OAuth's space-separated string; Entra's list
            if name in claims:
                scopes |= _strings(claims[name], name, split=True)
        groups = _strings(claims["groups"], "groups", split=False) if "groups" in claims else None
        sent_groups, sent_scopes, dropped = sendable(groups or (), scopes)
        try:
            return Identity(
                user=user, method="bearer", subject=subject,
                groups=sent_groups, scopes=sent_scopes, expires_at=exp, claims=claims,
                dropped=dropped,
            )
        except Unauthenticated:  # a control character in a claim: not sendable as a header
            raise invalid_token("unsafe_identity") from None
