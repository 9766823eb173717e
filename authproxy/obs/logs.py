"""Structured logs: JSON (or key=value text) lines, one per decision, never a secret.

Decisions go through :class:`DecisionLog`, which queues them and formats and writes them in
batches: at tens of thousands of decisions a second the ``logging`` machinery per record
would cost more than the decision itself.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import select
import sys
import time
from typing import Any

from ..config import LogConfig

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# What json leaves raw with ensure_ascii=False but some log viewer reads as a line or
# paragraph break, or a terminal as a command: DEL and the C1 controls (U+0085 NEL among
# them), U+2028/U+2029, and lone surrogates (unencodable). json itself escapes the C0
# controls (U+000B, U+000C, U+001C-U+001E included); text-format values are json-quoted
# when not printable, so the same pass covers both formats.
_LINE_BREAKING = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escape_match(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def one_line(text: str) -> str:
    """``text`` (JSON, or a text-format line) with every character that could end a line
    in some viewer written as a ``\\uXXXX`` escape. Inside JSON strings the escape means
    the same character, so a JSON line stays valid and its values unchanged."""
    if text.isascii() and "\x7f" not in text:  # the common case, in one C call
        return text
    return _LINE_BREAKING.sub(_escape_match, text)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


# json's C encoder itself, made once: JSONEncoder.encode makes one per call, a third of the
# cost of encoding a decision's fields. (None where json has no C speedups.)
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE = _make_c_encoder and _make_c_encoder(
    None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, True)


def encode_json(value: Any) -> str:
    """``value`` as compact JSON, non-ASCII kept as is."""
    if _C_ENCODE is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


@functools.lru_cache(maxsize=2)
def _second(second: int) -> str:
    # strftime costs more than the rest of a log line; it changes once a second.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _iso(ts: float) -> str:
    return f"{_second(int(ts))}.{int(ts % 1 * 1000):03d}Z"


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\\') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


_quote = json.encoder.encode_basestring  # the C function json itself uses


def _json_value(value: Any) -> str:
    cls = value.__class__
    if cls is str:
        return str(_quote(value))
    if cls is int or cls is float:
        return repr(value)
    return _ENCODER.encode(value)  # bool, None, lists, anything else


def format_line(fields: dict[str, Any], fmt: str) -> str:
    """One log line: a JSON object, or ``key=value`` pairs with values quoted when needed.

    The JSON object is assembled here rather than by json.dumps: for the flat fields of a
    decision that is about three times faster, and a line is written per decision.
    """
    if fmt == "json":
        line = "{" + ",".join([f"{_quote(k)}:{_json_value(v)}" for k, v in fields.items()]) + "}"
    else:
        line = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
    return one_line(line)


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "pid": record.process,  # tells worker processes apart
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update((k, v) for k, v in vars(record).items() if k not in _RESERVED)
        if record.exc_info and record.exc_info[0] is not None:
            # The class name only: an exception's text may quote the input that caused it.
            fields["exception"] = record.exc_info[0].__name__
        return format_line(fields, self.fmt)


def setup_logging(config: LogConfig) -> None:
    """Route authproxy's and aiohttp's loggers to one handler in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(config.format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    # aiohttp's access log would repeat every decision without its reason; ours replaces it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


FLUSH_INTERVAL = 0.1  # seconds a decision line may wait to be written with others
FLUSH_LINES = 128  # ... or until this many are waiting (a batch formats in ~0.3 ms)


class DecisionLog:
    """One line per decision, written in batches: at most FLUSH_INTERVAL seconds or
    FLUSH_LINES lines after the first of a batch, and at once when the app stops. A write
    per event-loop turn measured a quarter of a cached decision's cost.

    ``shared_stream``: other processes write to the same stream (worker processes), so
    batches are cut into writes of at most PIPE_BUF bytes, of whole lines: the kernel
    keeps such writes to a pipe whole, where a longer one may interleave with a sibling's.
    """

    def __init__(
        self, config: LogConfig, shared_stream: bool = False
    ) -> None:
        self.enabled = logging.getLevelName(config.level.upper()) <= logging.INFO
        self._fmt = config.format
        self._pending: list[tuple[float, dict[str, Any]]] = []  # (time, fields)
        self._pid = os.getpid()
        self._prefix_ms, self._prefix = -1, ""  # the JSON line's start, of one millisecond
        self._chunk_bytes = select.PIPE_BUF if shared_stream else 0

    def write(self, fields: dict[str, Any]) -> None:
        """Queue a decision's line; ``fields`` must not change after this call."""
        if not self.enabled:
            return
        if not self._pending:
            asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)
        self._pending.append((time.time(), fields))
        if len(self._pending) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        """Format and write the queued lines (formatted here, a batch at a time, rather
        than in write(): measured in the live server, 4% more uncached decisions a second)."""
        if not self._pending:
            return
        if self._fmt == "json":
            lines = [self._json_line(at, fields) for at, fields in self._pending]
        else:
            prefix = {"level": "info", "pid": self._pid, "event": "decision"}
            lines = [format_line({"time": _iso(at), **prefix, **fields}, self._fmt)
                     for at, fields in self._pending]
        self._pending.clear()
        stream = sys.stderr  # looked up at each flush, as print() does
        chunks = (_whole_lines(lines, self._chunk_bytes) if self._chunk_bytes
                  else ["\n".join(lines) + "\n"])
        for chunk in chunks:
            stream.write(chunk)
            stream.flush()

    def _json_line(self, at: float, fields: dict[str, Any]) -> str:
        # The fields encoded whole by json's C encoder, behind a prefix made once a
        # millisecond: half of format_line's cost.
        millisecond = int(at * 1000)
        if millisecond != self._prefix_ms:
            self._prefix_ms = millisecond
            self._prefix = (f'{{"time":"{_iso(at)}","level":"info","pid":{self._pid},'
                            f'"event":"decision"')
        body = one_line(encode_json(fields))
        return f"{self._prefix},{body[1:]}" if len(body) > 2 else self._prefix + "}"


def _whole_lines(lines: list[str], limit: int) -> list[str]:
    """``lines`` joined into chunks of at most ``limit`` bytes of UTF-8, each ending with a
    newline; a longer line is a chunk of its own."""
    chunks: list[str] = []
    start, size = 0, 0
    for index, line in enumerate(lines):
        length = (len(line) if line.isascii() else len(line.encode())) + 1
        if size and size + length > limit:
            chunks.append("\n".join(lines[start:index]) + "\n")
            start, size = index, 0
        size += length
    chunks.append("\n".join(lines[start:]) + "\n")
    return chunks
