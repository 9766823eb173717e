"""Property tests of the Basic decoder (fuzz target ``tests/fuzz/basic.py``)."""
from __future__ import annotations

import base64
import binascii
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from authproxy.schemes import basic as basic_module
from tests.fuzz import basic
from tests.planted import assert_caught

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="

# Credentials that decode, then spelled a little wrong: the inputs a lenient decoder lets by.
user_ids = st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters=":"),
                   min_size=1, max_size=12)
passwords = st.binary(max_size=12).filter(lambda p: not any(c < 0x20 or c == 0x7F for c in p))
credentials = st.builds(lambda u, p: base64.b64encode(u.encode() + b":" + p), user_ids, passwords)


@st.composite
def respelled(draw: st.DrawFn) -> bytes:
    value = bytearray(draw(credentials))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(value)))
        byte = draw(st.sampled_from(B64_ALPHABET + " \t\r\n-_.")).encode()
        if draw(st.booleans()) and at < len(value):
            value[at:at + 1] = byte
        else:
            value[at:at] = byte
    return bytes(value)


@given(st.binary(max_size=200))
def test_raw_bytes(data: bytes) -> None:
    basic.check(data)


@given(st.text(alphabet=B64_ALPHABET, max_size=40).map(str.encode))
def test_base64_alphabet(data: bytes) -> None:
    basic.check(data)


@given(respelled())
@example(b"NlY6JldA==")  # found by atheris: excess padding after a whole group
@example(b"YWxpY2U6cx==")  # non-zero unused bits: a second spelling of "alice:s"
def test_respelled_credentials(data: bytes) -> None:
    basic.check(data)


@given(credentials)
def test_canonical_credentials_decode(data: bytes) -> None:
    user, password = basic_module.decode_basic(data.decode())
    assert user.encode() + b":" + password == base64.b64decode(data)


def _lenient_decode_basic(value: str) -> tuple[str, bytes]:
    """A planted bug: the decoder of before strict mode, which skips junk and padding."""
    raw = binascii.a2b_base64(value.encode("latin-1"))
    user, _, password = raw.partition(b":")
    return user.decode("utf-8", "replace"), password


def test_a_planted_lenient_base64_is_caught(monkeypatch: Any) -> None:
    monkeypatch.setattr(basic_module, "decode_basic", _lenient_decode_basic)
    assert_caught(test_respelled_credentials)
