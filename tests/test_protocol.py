"""The control channel's messages: each survives its encoding, and anything that is not a
valid message is logged and dropped on decode, never handed on (or raised) to a reader."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import pickle
import socket

import pytest

from authproxy.cluster.ipc import MasterLink, read_message
from authproxy.cluster.protocol import (
    Ban,
    Bootstrap,
    Failure,
    Heartbeat,
    Known,
    Lockout,
    LockoutEnd,
    Message,
    Published,
    RefreshReply,
    RefreshRequest,
    decode,
    encode,
)
from authproxy.config import Config, JwtConfig

from .conftest import eventually

PAIR = "ab" * 16
MAC_KEY = "cd" * 32

MESSAGES: list[Message] = [
    Bootstrap(1, "/run/x", "/run/x/metrics", Config()),
    Lockout(MAC_KEY, (("alice", 12.5),), (PAIR,)),
    Lockout(),
    LockoutEnd(),
    Ban("192.0.2.1", 300.0),
    Known(PAIR),
    Failure(("alice", "192.0.2.1")),
    RefreshRequest("admin", 7),
    RefreshReply(7, 3, ok=False, reason="http_status", detail="HTTP status 500",
                 rate_limited=True, retry_after=42),
    Published(3),
    Heartbeat(),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_its_encoding(message: Message) -> None:
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == message


def config_field(value: object) -> str:
    return base64.b64encode(pickle.dumps(value)).decode()


MALFORMED: dict[str, bytes] = {
    "not_json": b"{op: ban}\n",
    "not_utf8": b'{"op":"ban","key":"\xff","seconds":1}\n',
    "an_array": b'["ban"]\n',
    "no_op": b'{"key":"a","seconds":1}\n',
    "unknown_op": b'{"op":"shutdown"}\n',
    "op_not_a_string": b'{"op":["ban"]}\n',
    "missing_field": b'{"op":"ban","key":"a"}\n',
    "unknown_field": b'{"op":"heartbeat","pid":1}\n',
    "wrong_type": b'{"op":"ban","key":"a","seconds":"300"}\n',
    "bool_for_int": b'{"op":"published","generation":true}\n',
    "not_finite": b'{"op":"ban","key":"a","seconds":1e999}\n',
    "negative_ban": b'{"op":"ban","key":"a","seconds":-1}\n',
    "empty_ban_key": b'{"op":"ban","key":"","seconds":1}\n',
    "list_of_wrong_items": b'{"op":"failure","keys":["a",1]}\n',
    "pair_not_a_list": b'{"op":"lockout","bans":[["a",1,2]]}\n',
    "short_pair": b'{"op":"known","pair":"abcd"}\n',
    "pair_not_hex": b'{"op":"known","pair":"' + b"zz" * 16 + b'"}\n',
    "bad_mac_key": b'{"op":"lockout","mac_key":"00"}\n',
    "unknown_trigger": b'{"op":"refresh","trigger":"scheduled","id":1}\n',
    "deeply_nested": b'{"op":"failure","keys":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    "config_not_base64": (b'{"op":"bootstrap","index":0,"state_dir":"","metrics_dir":"",'
                          b'"config":"%%%"}\n'),
    "config_not_a_pickle": json.dumps({
        "op": "bootstrap", "index": 0, "state_dir": "", "metrics_dir": "",
        "config": base64.b64encode(b"not a pickle").decode()}).encode() + b"\n",
    "config_not_a_config": json.dumps({
        "op": "bootstrap", "index": 0, "state_dir": "", "metrics_dir": "",
        "config": config_field(JwtConfig())}).encode() + b"\n",
}


@pytest.mark.parametrize("line", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_message_is_logged_and_dropped(
    line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "authproxy.workers"):
        assert decode(line) is None
    assert [r.getMessage() for r in caplog.records] == ["control message dropped"]


async def test_a_reader_skips_malformed_lines_and_stops_only_at_the_end() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"[1]\n" + MALFORMED["unknown_op"] + encode(Published(2)))
    reader.feed_eof()
    assert await read_message(reader) == Published(2)
    assert await read_message(reader) is None


async def test_a_malformed_notice_neither_reaches_a_callback_nor_ends_the_channel() -> None:
    """The worker stops when its channel ends; a line it cannot read must not stop it."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    link, lost = MasterLink(reader, writer), asyncio.Event()
    bans: list[Ban] = []
    link.subscribe(Ban, bans.append)
    link.start(on_lost=lost.set)
    theirs.sendall(b'{"op":"ban","key":"a","seconds":"x"}\n' + b"{}\n" + encode(Ban("b", 1.0)))
    await eventually(lambda: bans, "the valid notice")
    assert bans == [Ban("b", 1.0)] and not lost.is_set()
    theirs.close()
    await asyncio.wait_for(lost.wait(), 5)
    await link.close()
