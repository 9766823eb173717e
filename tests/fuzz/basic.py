"""Basic credentials (RFC 7617): ``decode_basic`` on the header's token68."""
from __future__ import annotations

import base64
import binascii

from authproxy.errors import Unauthenticated
from authproxy.schemes import basic as scheme


def check(data: bytes) -> None:
    value = data.decode("latin-1")
    try:
        user, password = scheme.decode_basic(value)
    except Unauthenticated:
        return
    # Whatever decodes was strict base64 of exactly "user:password", re-encoding to the input.
    raw = binascii.a2b_base64(data, strict_mode=True)
    assert base64.b64encode(raw) == data, "accepted a non-canonical base64"
    assert raw == user.encode("utf-8") + b":" + password
    assert user and ":" not in user
    assert not any(c < 0x20 or c == 0x7F for c in raw), "accepted a control character"
