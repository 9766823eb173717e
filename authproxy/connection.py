"""One HTTP connection: aiohttp's RequestHandler, with decisions answered as they are parsed.

aiohttp serves a request in steps that each cost about what a remembered decision costs: a
future woken, a task started (one event-loop turn on Python 3.11), a request object and a
response object made, the response's headers serialized. Every request to authproxy is a
decision and most are answered from memory, so :class:`Connection` answers those as soon as
the parser hands them over, in ``data_received``, by writing the response bytes itself:

- only while aiohttp has nothing in hand on this connection (``start()`` idle, nothing queued,
  the transport not paused), so responses keep the order of pipelined requests;
- only for an HTTP/1.1 keep-alive request to /auth or /auth/... without a body, upgrade or
  absolute URI, and only when the decision needs no waiting (``Decider.decide_now``).

Everything else (a hash to verify, a key set to fetch, a body, HTTP/1.0, the other routes)
goes through aiohttp as before; from the first such request on, the rest of that read does
too, so the order holds. This leans on RequestHandler's internals (``_waiter``,
``_messages``, the parser's message accounting), which is why setup.cfg pins aiohttp to the
minor version these were read from, and tests/test_http_layer.py checks the behaviour.

The other changes: a request aiohttp's parser refuses gets our 401 with the challenge instead
of aiohttp's 400, which nginx would turn into a 500 for the client; and the connection keeps
the edge's bounds (SPEC §8.4, edge.py): it is closed at once past server.max_connections; the
unfinished request head it holds is counted (bytes received since the last complete head,
bodies excepted) against server.max_head_bytes and, with every other connection's,
server.max_head_bytes_total, past which it gets a 401 and is closed; and a head begun must end
within server.header_timeout. aiohttp's keep-alive timer (server.keepalive_timeout) closes a
connection that completes no head within that long of its opening or its last response.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDictProxy
from yarl import URL

from .edge import EdgeLimits
from .errors import Unauthenticated
from .handlers import NO_STORE, SERVER, Answer, Decider, is_decision_path, refuse_unparseable

log = logging.getLogger("authproxy.server")

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}


def encode_answer(answer: Answer) -> bytes:
    """The response head of an answer (no body: Content-Length 0)."""
    head = [_STATUS_LINES[answer.status]]
    head.extend(f"{name}: {value}\r\n" for name, value in answer.headers.items())
    head.append(f"Content-Length: 0\r\nServer: {SERVER}\r\nDate: {rfc822_formatted_time()}\r\n\r\n")
    return "".join(head).encode("utf-8")


class _Message:
    """A parsed request as the Decider reads it (origin.RequestView), without the cost of
    aiohttp's request object; the same fields from the same parsed URL."""

    __slots__ = ("_message", "path", "remote")

    def __init__(self, message: RawRequestMessage, path: str, remote: str | None) -> None:
        self._message = message
        self.path = path
        self.remote = remote

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._message.headers

    @property
    def method(self) -> str:
        return self._message.method

    @property
    def path_qs(self) -> str:
        return str(self._message.url)

    @property
    def query_string(self) -> str:
        return self._message.url.query_string

    @property
    def rel_url(self) -> URL:
        return self._message.url


def remote_address(peername: Any) -> str | None:
    """What aiohttp's ``request.remote`` says for this peer name."""
    if peername is None:
        return None
    if isinstance(peername, (list, tuple)):
        return str(peername[0])
    return str(peername)


class Connection(RequestHandler):
    __slots__ = ("_admitted", "_body", "_decider", "_edge", "_head_timer", "_held",
                 "_ignoring_input", "_remote")

    _decider: Decider
    _remote: str | None
    _edge: EdgeLimits
    _admitted: bool
    _held: int  # bytes of the unfinished request head, as counted in edge.held
    _body: Any  # the payload (StreamReader) of the last request, while its body may arrive
    _head_timer: asyncio.TimerHandle | None
    # Nothing that arrives is parsed any more: the connection was refused at the cap, or the
    # parser refused a request, which aiohttp answers before it closes (parsed meanwhile,
    # every read would queue another error holding the bytes it was fed).
    _ignoring_input: bool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._edge = self._manager.edge  # type: ignore[union-attr]
        self._held = 0
        self._body = None
        self._head_timer = None
        self._admitted = self._edge.admit()
        self._ignoring_input = not self._admitted
        if not self._admitted:
            # Past the cap: the descriptor goes back at once, before any byte is read.
            transport.close()
            return
        self._decider = self._manager.decider  # type: ignore[union-attr]
        self._remote = remote_address(transport.get_extra_info("peername"))
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return  # never handed to aiohttp's server, which would not know it
        self._edge.release(self._held)
        self._held = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._ignoring_input:
            return
        waiter = self._waiter
        if (waiter is None or waiter.done() or self._messages or self._buffer_paused
                or self._payload_parser is not None or self._upgraded):
            # aiohttp has a request in hand: it keeps the order
            queued = len(self._messages)
            super().data_received(data)
            bound = self._count_head(data, len(self._messages) - queued)
            if bound is not None:
                self._refuse(bound, answer=False)
            return
        # start() idles on ``waiter`` with nothing queued: parse without waking it, answer
        # what can be answered now, and wake it for the rest.
        self._waiter = None
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        if self._close or self._force_close:
            waiter.cancel()  # what close() would have done, had the waiter been in place
            return
        bound = self._count_head(data, len(self._messages))
        if bound is not None:
            # nothing answered yet on this read: the 401 keeps the order of the answers
            self._refuse(bound, answer=not self._messages)
            return
        self._answer_queued()
        if not self._messages or waiter.done():
            return
        if self.transport is None or self.transport.is_closing():
            # A write above failed, and connection_lost is already scheduled: it must not
            # find start() woken for a request, which it would then build without a parser.
            waiter.cancel()
        else:
            waiter.set_result(None)

    def _count_head(self, data: bytes, parsed: int) -> str | None:
        """Count ``data``, just fed to the parser, which completed ``parsed`` requests from
        it: the bytes held are those after the end of the last complete head (0 when a body
        follows it: aiohttp's flow control bounds bodies), else the bytes held before plus
        ``data``. Starts or stops the header timer. Returns the bound broken, or None."""
        if self._force_close or self._payload_parser is not None or self._upgraded:
            return None  # closing, or bytes that are not a request head
        if parsed:
            message, payload = self._messages[-1]
            self._body = None if payload is EMPTY_PAYLOAD else payload
            if not isinstance(message, RawRequestMessage):
                self._ignoring_input = True
                held = 0
            elif self._body is not None:
                held = 0  # a body follows
            elif data.endswith(b"\r\n\r\n"):
                held = 0
            else:
                end = data.rfind(b"\r\n\r\n")
                held = len(data) - end - 4 if end >= 0 else len(data)
        elif self._body is not None and not self._body.is_eof():
            return None  # body bytes
        else:
            self._body = None
            held = self._held + len(data)
        before, self._held = self._held, held
        if held and self._head_timer is None:
            self._head_timer = self._loop.call_later(
                self._edge.header_timeout, self._head_timed_out)
        elif not held and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        return self._edge.hold(before, held) if held != before else None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._held and not self._force_close:
            self._refuse("header_timeout", answer=False)

    def _refuse(self, bound: str, answer: bool) -> None:
        """Close the connection for breaking ``bound``, first writing a 401 with the
        challenge when ``answer`` (aiohttp has nothing in hand, so the order holds)."""
        self._edge.closed(bound)
        self._edge.hold(self._held, 0)  # its head is let go now, not when the loop
        self._held = 0  # reports the connection lost
        if answer and self.transport is not None and not self.transport.is_closing():
            decider = self._decider
            reason = "request_head_too_large"
            decider.metrics.record_decision("", "deny", reason, 0.0)
            decider.decisions.write({"status": 401, "outcome": "deny", "reason": reason})
            challenge = decider.challenge_header(decider.chain.schemes, Unauthenticated(reason))
            self.transport.write(encode_answer(Answer(401, {
                "WWW-Authenticate": challenge, **NO_STORE, "Connection": "close"})))
        self.force_close()

    def _answer_queued(self) -> None:
        messages = self._messages
        answered = 0
        while (messages and self.transport is not None and not self.transport.is_closing()
               and not self._paused):
            message, payload = messages[0]
            head = self._answer_now(message, payload)
            if head is None:
                break
            messages.popleft()
            self._parser.message_consumed()  # type: ignore[union-attr]
            self.transport.write(head)
            answered += 1
        if not answered:
            return
        self._manager.requests_count += answered  # type: ignore[union-attr]
        # as start() does after each request: the keep-alive timeout counts from now
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)
        if self._buffer_paused and len(messages) <= self._msg_queue_resume_size:
            self._resume_reading_if_drained()

    def _answer_now(self, message: Any, payload: Any) -> bytes | None:
        """The response to a decision that needs no waiting; None to leave it to aiohttp."""
        if (payload is not EMPTY_PAYLOAD or not isinstance(message, RawRequestMessage)
                or message.should_close or message.upgrade or message.version != HttpVersion11):
            return None
        url = message.url
        path = url.path
        if url.absolute or not is_decision_path(path):
            return None
        try:
            answer = self._decider.decide_now(_Message(message, path, self._remote))
            return None if answer is None else encode_answer(answer)
        except Exception as exc:  # aiohttp's path decides again, and reports what failed
            log.error("decision not answered at once", extra={
                "event": "decision_error", "exception": type(exc).__name__})
            return None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 400 and request.writer.output_size == 0:
            log.info("request refused by the HTTP parser", extra={
                "event": "parse_error", "exception": type(exc).__name__ if exc else "",
            })
            return refuse_unparseable(self._decider)
        return super().handle_error(request, status, exc, message)
