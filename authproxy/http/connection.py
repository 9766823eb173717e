"""One HTTP/1.1 connection: our own asyncio protocol on httptools (llhttp).

Why our own protocol rather than aiohttp's server: SPEC §7 wants a request the parser refuses
(control characters, an over-long line) answered 401 with the challenge, since nginx turns a
400 into a 500, and aiohttp has no public hook for its parser's errors; and every request to
authproxy is a decision, most answered from memory, for which aiohttp's request and response
objects cost about what the decision does. So, as uvicorn does, we own the protocol on a
maintained parser with a public API (httptools, the llhttp binding) and stay on that API.

Why a tiny request/response type (message.py) rather than aiohttp for the other routes:
they are five, small and bodiless on the way in; a second server stack for them would bring
back the private hooks this module exists to drop.

What a connection does:

- parses every request head; a decision (/auth, /auth/...) that needs no waiting
  (``Decider.begin``) is answered at once; anything else (a hash to verify, a key set to
  fetch: the decision begun, carrying what was parsed; the other routes) by a task;
  pipelined requests are answered in order;
- never reads a body: a request announcing one is answered and the connection then closed
  (nothing after it is parsed); so is an upgrade, HTTP/1.0 without keep-alive and
  ``Connection: close``;
- answers what the parser refuses with our 401 and closes;
- keeps the edge's bounds (SPEC §8.4, edge.py): closed at once past server.max_connections;
  the unfinished request head it holds (bytes received since the last complete head) is
  counted against server.max_head_bytes and, with every other connection's,
  server.max_head_bytes_total, past which it gets a 401 and is closed; a head begun must end
  within server.header_timeout; a connection with nothing to do is closed after
  server.keepalive_timeout (from its opening, and after each response);
- pauses reading while the transport's buffer is full or too many requests wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from ..core.decider import NO_STORE, SERVER, Answer, Decider, PendingDecision, is_decision_path
from ..errors import Unauthenticated
from .edge import EdgeLimits
from .message import Request, Response, Routes

log = logging.getLogger("authproxy.http.server")

# A request line may be 64 kB; a header line as long as a whole head (server.max_head_bytes):
# nginx forwards whatever its large_client_header_buffers allow, and the credential is then
# judged (and refused, past MAX_AUTHORIZATION) by the decision rather than by the parser.
MAX_LINE_SIZE = 1 << 16
MAX_WAITING = 64  # parsed requests waiting for their answer before reading pauses

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
# A parser with no callbacks, never fed: what a closed connection holds in place of its own.
# A connection and its parser refer to each other (the parser calls the connection back), a
# cycle that only a full collection frees, and those are rare here (server.GC_THRESHOLDS); the
# parser holds the unfinished head, up to server.max_head_bytes, so it is let go at the close.
_DETACHED = httptools.HttpRequestParser(object())
_HEAD_END = b"\r\n\r\n"


class HttpDate:
    """The Date header's value, made at most once a second."""

    __slots__ = ("_second", "_text", "_time")

    def __init__(self, time: Callable[[], float]) -> None:
        self._time = time
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        now = self._time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = http_date(second)
        return self._text


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(seconds: float) -> str:
    """RFC 9110's IMF-fixdate of a Unix time, in English whatever the locale (what
    email.utils.formatdate(usegmt=True) writes, without loading the email package)."""
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def encode_response(status: int, headers: dict[str, str], body: bytes, date: str,
                    close: bool, head_only: bool = False) -> bytes:
    """A whole response: status line, headers (with Content-Length, Server, Date and, when
    ``close``, Connection: close), then ``body`` unless ``head_only`` (a HEAD request)."""
    parts = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n"]
    parts += [f"{name}: {value}\r\n" for name, value in headers.items()]
    parts.append(f"Content-Length: {len(body)}\r\nServer: {SERVER}\r\nDate: {date}\r\n")
    if close:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    head = "".join(parts).encode("utf-8")
    return head if head_only or not body else head + body


class Serving:
    """What a process's connections share: the decider, the routes, the edge's bounds, the
    clock of the Date header, and the set of open connections (for the drain)."""

    def __init__(self, decider: Decider, routes: Routes, edge: EdgeLimits,
                 keepalive_timeout: float, date: HttpDate) -> None:
        self.decider = decider
        self.routes = routes
        self.edge = edge
        self.keepalive_timeout = keepalive_timeout
        self.date = date
        self.connections: set[Connection] = set()
        self.draining = False
        self.requests = 0  # request heads parsed


def remote_address(peername: Any) -> str | None:
    """The peer's address as the decision reads it ("" on a unix socket)."""
    if peername is None:
        return None
    if isinstance(peername, (list, tuple)):
        return str(peername[0])
    return str(peername)


class _Refusal:
    """Queued in place of a request: the 401 (or nothing, when ``answer`` is False) that
    closes the connection, once every request before it is answered."""

    __slots__ = ("answer", "parse_error")

    def __init__(self, answer: bool, parse_error: bool) -> None:
        self.answer = answer
        self.parse_error = parse_error


class Connection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, serving: Serving) -> None:
        self._serving = serving
        self._decider = serving.decider
        self._edge = serving.edge
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._remote: str | None = None
        self._admitted = False
        # Nothing that arrives is parsed any more: refused, closing after an answer, or a
        # body or upgrade follows the last head.
        self._ignoring_input = False
        self._waiting: deque[Request | _Refusal] = deque()
        self._task: asyncio.Task[None] | None = None
        self._write_paused = False
        self._read_paused = False
        # the head being parsed
        self._in_head = False
        self._url = b""
        self._header_list: list[tuple[str, str]] = []
        self._heads_done = 0
        self._held = 0  # bytes of the unfinished request head, as counted in edge.held
        self._line = 0  # bytes of its unfinished line
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_since = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        self._admitted = self._edge.admit()
        if not self._admitted:
            # Past the cap: the descriptor goes back at once, before any byte is read.
            self._ignoring_input = True
            transport.close()
            return
        self._serving.connections.add(self)
        self._remote = remote_address(transport.get_extra_info("peername"))
        self._idle_timer = self._loop.call_later(self._serving.keepalive_timeout,
                                                 self._idle_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self._admitted:
            return
        self._admitted = False
        self._parser = _DETACHED
        self._serving.connections.discard(self)
        self._edge.release(self._held)
        self._held = 0
        self._ignoring_input = True
        self._waiting.clear()
        for timer in (self._head_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._idle_timer = None
        if self._task is not None:
            self._task.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._ignoring_input:
            return
        heads_before = self._heads_done
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._ignoring_input = True  # what follows is not HTTP/1.1; answered, then closed
        except httptools.HttpParserError as exc:
            self._refuse_unparseable(exc)
        if not self._ignoring_input and (self._in_head or self._held):
            bound = self._count_head(data, self._heads_done - heads_before)
            if bound is not None:
                self._refuse(bound, answer=True)
        self._answer_waiting()

    def eof_received(self) -> bool:
        """The client has sent all it will (a half-close): what it asked is still answered,
        then the connection closes (``_write``: nothing more can follow); an unfinished head
        is dropped. True keeps the transport open for those answers."""
        self._ignoring_input = True
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._edge.hold(self._held, 0)
        self._held = 0
        return bool(self._waiting) or self._task is not None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._answer_waiting()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._header_list = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name.decode("utf-8", "surrogateescape"),
                                  value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._in_head = False
        self._heads_done += 1
        self._serving.requests += 1
        headers = CIMultiDictProxy(CIMultiDict(self._header_list))
        self._header_list = []
        length = headers.get("Content-Length", "0")
        has_body = "Transfer-Encoding" in headers or length.strip() not in ("", "0")
        request = Request(parser.get_method().decode("ascii", "surrogateescape"),
                          self._url.decode("utf-8", "surrogateescape"), headers, self._remote,
                          parser.should_keep_alive(), has_body)
        if not request.target_readable():
            self._refuse_unparseable(None)
            return
        self._waiting.append(request)
        if has_body or parser.should_upgrade():
            # never read: answered, then the connection closes (any body unread)
            self._ignoring_input = True
        elif len(self._waiting) >= MAX_WAITING:
            self._pause_reading()

    # -- the head's bounds ---------------------------------------------------------------

    def _count_head(self, data: bytes, completed: int) -> str | None:
        """Count ``data``, just parsed, which completed ``completed`` heads: the bytes held are
        those after the end of the last complete head, else those held before plus ``data``.
        Starts or stops the header timer. Returns the bound broken, or None."""
        if not self._in_head:
            held = line = 0
        elif completed:
            end = data.rfind(_HEAD_END)
            held = len(data) - end - 4 if end >= 0 else len(data)
            line = self._line_after(data, held)
        else:
            held = self._held + len(data)
            line = self._line_after(data, len(data)) if b"\n" in data else self._line + len(data)
        self._line = line
        if line > (MAX_LINE_SIZE if line == held else self._edge.max_head_bytes):
            # a line longer than any the parser accepts: refused as the parser would
            self._edge.hold(self._held, 0)
            self._held = 0
            self._refuse_unparseable(None)
            return None
        before, self._held = self._held, held
        if held and self._head_timer is None:
            self._head_timer = self._loop.call_later(self._edge.header_timeout,
                                                     self._head_timed_out)
        elif not held and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        return self._edge.hold(before, held) if held != before else None

    @staticmethod
    def _line_after(data: bytes, tail: int) -> int:
        """Bytes of the unfinished line at the end of ``data``'s last ``tail`` bytes."""
        newline = data.rfind(b"\n", len(data) - tail)
        return tail if newline < 0 else len(data) - newline - 1

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._held and self._transport is not None:
            self._refuse("header_timeout", answer=False)
            self._answer_waiting()

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        transport = self._transport
        if transport is None:
            return
        if self._waiting or self._task is not None or self._in_head:
            return  # busy: the next answer starts the wait again
        due = self._idle_since + self._serving.keepalive_timeout
        if self._loop.time() < due:
            self._idle_timer = self._loop.call_at(due, self._idle_timed_out)
        else:
            transport.close()

    def _refuse(self, bound: str, answer: bool) -> None:
        """Stop reading for breaking ``bound``; once the requests before are answered, write a
        401 with the challenge when ``answer``, and close."""
        self._edge.closed(bound)
        self._edge.hold(self._held, 0)  # its head is let go now, not when the loop
        self._held = 0  # reports the connection lost
        self._stop_reading(_Refusal(answer, parse_error=False))

    def _refuse_unparseable(self, exc: Exception | None) -> None:
        log.info("request refused by the HTTP parser", extra={
            "event": "parse_error", "exception": type(exc).__name__ if exc else "BadHead"})
        self._stop_reading(_Refusal(True, parse_error=True))

    def _stop_reading(self, refusal: _Refusal) -> None:
        self._ignoring_input = True
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._waiting.append(refusal)

    # -- answers, in order ---------------------------------------------------------------

    def _answer_waiting(self) -> None:
        """Answer the waiting requests in order: at once while they need no waiting, then by
        a task for the first that does (which comes back here when it is done)."""
        waiting = self._waiting
        while waiting and self._task is None and not self._write_paused:
            transport = self._transport
            if transport is None or transport.is_closing():
                waiting.clear()
                return
            item = waiting[0]
            if isinstance(item, _Refusal):
                waiting.clear()
                self._write_refusal(item, transport)
                return
            answer = self._answer_now(item)
            if not isinstance(answer, tuple):  # a decision under way, or another route
                self._task = self._loop.create_task(self._answer_later(item, answer))
                return
            waiting.popleft()
            self._write(item, *answer)
        if not waiting and self._task is None:
            self._idle()

    def _idle(self) -> None:
        if self._serving.draining and self._transport is not None and not self._in_head:
            self._transport.close()
            return
        self._idle_since = self._loop.time()
        if self._idle_timer is None and self._transport is not None:
            self._idle_timer = self._loop.call_at(
                self._idle_since + self._serving.keepalive_timeout, self._idle_timed_out)
        if self._read_paused and not self._ignoring_input:
            self._read_paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    def _answer_now(
        self, request: Request
    ) -> tuple[int, dict[str, str], bytes] | PendingDecision | None:
        """The answer to a decision that needs no waiting; the decision under way for one
        that does (everything parsed of it, for :meth:`_answer_later`); None for another
        route."""
        try:
            if not is_decision_path(request.path):
                return None
            decision = self._decider.begin(request)
        except Exception as exc:  # the task decides again, and fails closed if it fails so
            log.error("decision not answered at once", extra={
                "event": "decision_error", "exception": type(exc).__name__})
            return None
        if isinstance(decision, PendingDecision):
            return decision
        return decision.status, decision.headers, b""

    async def _answer_later(self, request: Request, pending: PendingDecision | None) -> None:
        try:
            if pending is not None:
                answer = await pending.answer()
                status, headers, body = answer.status, answer.headers, b""
            else:
                status, headers, body = await self._respond(request)
        except Exception as exc:  # fail closed, never a hung connection
            (status, headers), body = self._decision_failed(exc), b""
        finally:
            self._task = None
        if self._transport is None or not self._waiting or self._waiting[0] is not request:
            return  # the connection went away meanwhile
        self._waiting.popleft()
        self._write(request, status, headers, body)
        self._answer_waiting()

    async def _respond(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        path = request.path
        if is_decision_path(path):
            try:
                answer = await self._decider.decide(request)
            except Exception as exc:  # fail closed: a decision is never a 5xx
                answer = self._decision_failed(exc)
            return answer.status, answer.headers, b""
        handler = self._serving.routes.find(request.method, path)
        if isinstance(handler, Response):
            return handler
        try:
            return await handler(request)
        except Exception as exc:
            log.error("request failed", extra={
                "event": "handler_error", "path": path, "exception": type(exc).__name__})
            return 500, {"Content-Type": "text/plain; charset=utf-8"}, b"500: Internal Error"

    def _decision_failed(self, exc: Exception) -> Answer:
        log.error("decision failed", extra={
            "event": "decision_error", "exception": type(exc).__name__})
        decider = self._decider
        decider.metrics.record_decision("", "deny", "internal_error", 0.0)
        decider.decisions.write({"status": 401, "outcome": "deny", "reason": "internal_error"})
        challenge = decider.challenge_header(decider.chain.schemes,
                                             Unauthenticated("internal_error"))
        return Answer(401, {"WWW-Authenticate": challenge, **NO_STORE})

    def _write(self, request: Request, status: int, headers: dict[str, str], body: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        close = (not request.keep_alive or request.has_body or self._serving.draining
                 or (self._ignoring_input and not self._waiting))
        transport.write(encode_response(status, headers, body, self._serving.date(), close,
                                        head_only=request.method == "HEAD"))
        if close:
            self._waiting.clear()
            self._ignoring_input = True
            transport.close()

    def _write_refusal(self, refusal: _Refusal, transport: asyncio.Transport) -> None:
        if refusal.answer:
            decider = self._decider
            if refusal.parse_error:
                answer = decider.refuse_unparseable()
            else:
                reason = "request_head_too_large"
                decider.metrics.record_decision("", "deny", reason, 0.0)
                decider.decisions.write({"status": 401, "outcome": "deny", "reason": reason})
                challenge = decider.challenge_header(decider.chain.schemes,
                                                     Unauthenticated(reason))
                answer = Answer(401, {"WWW-Authenticate": challenge, **NO_STORE})
            transport.write(encode_response(answer.status, answer.headers, b"",
                                            self._serving.date(), close=True))
        transport.close()

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    # -- the drain -----------------------------------------------------------------------

    def drain(self) -> None:
        """The server stops: close now if idle, else after the answers under way."""
        if self._transport is None:
            return
        self._ignoring_input = True
        if not self._waiting and self._task is None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
