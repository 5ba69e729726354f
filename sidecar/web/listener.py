"""uvicorn's HTTP/1.1 protocol with the client timeouts it lacks: a whole request head within
``client_header_timeout``, no body silence longer than ``client_body_timeout``.

uvicorn (0.55) times out only idle kept-alive connections: a connection that has not sent a whole request head
has no timer at all, and the first byte of a request cancels the keep-alive one. 800 clients that each sent a
partial head held 800 sockets (and file descriptors) for as long as they liked. Here each connection has one
timer, armed when a request head starts (or the connection opens) and re-armed lazily, so the hot path pays a
clock read per network read and per request, and a timer only while a request is incoming:
- head: the deadline is fixed when the head starts; trickling bytes does not extend it. A late head gets a 408
  and the connection is closed (a connection that sent nothing at all is just closed);
- body: each read restarts the silence; while the app has paused reading (it is not taking the body as fast as
  it comes, e.g. vLLM is slow to accept it) the client is not the one being slow, and the timer waits;
- response: the client may stay silent as long as the response runs (streams last minutes); between requests
  uvicorn's own keep-alive timeout (``keepalive_timeout``) applies.
The subclass hooks httptools' parser callbacks (on_message_begin, on_headers_complete, on_message_complete),
which uvicorn's protocol implements; tests/integration/tap/test_tap_abuse.py drives it over raw sockets, so an uvicorn
upgrade that changes them fails there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

_HEAD, _BODY, _RESPONSE = 0, 1, 2
_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 26\r\n"
    b"connection: close\r\n\r\nrequest head took too long"
)


HEADER, BODY = "header", "body"


def _uncounted(which: str) -> None:
    pass


def bounded_protocol(
    header_timeout: float, body_timeout: float, on_timeout: Callable[[str], None] = _uncounted
) -> type[HttpToolsProtocol]:
    """The protocol class to hand uvicorn (``http=``), with these timeouts in seconds; ``on_timeout(HEADER or
    BODY)`` is called for each connection cut off (the sidecar counts them in specdecode_tap_errors_total)."""

    class Bounded(BoundedHttpToolsProtocol):
        pass

    Bounded.header_timeout, Bounded.body_timeout = header_timeout, body_timeout
    Bounded.on_timeout = staticmethod(on_timeout)
    return Bounded


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout = 10.0
    body_timeout = 30.0
    on_timeout: Callable[[str], None] = staticmethod(_uncounted)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _HEAD
        self._head_begun = False  # a byte of the current request head has arrived
        self._head_started = 0.0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase, self._head_started = _HEAD, self.loop.time()
        self._arm(self._head_started + self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        if self._phase != _HEAD:  # a new request on a kept-alive connection (the first one counts from connect)
            self._phase, self._head_started = _HEAD, self._last_read
            self._arm(self._head_started + self.header_timeout)

    def on_headers_complete(self) -> None:
        self._phase, self._head_begun = _BODY, False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = _RESPONSE
        super().on_message_complete()

    def _arm(self, when: float) -> None:
        if self._timer is None:
            self._timer = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._phase == _RESPONSE:
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # The server is not reading (the app is slow to take a body, or a pipelined request waits for the
            # one before it): the client is not the slow one. Its clock starts again when reading resumes.
            self._head_started = self._last_read = now
            self._arm(now + (self.header_timeout if self._phase == _HEAD else self.body_timeout))
            return
        if self._phase == _HEAD:
            due = self._head_started + self.header_timeout
            if now < due:
                self._arm(due)
                return
            log.debug("client %s: request head not complete after %.1f s, closing", self.client, self.header_timeout)
            self.on_timeout(HEADER)
            # A 408 answers a request that started; on a connection that never sent a byte, a client reading it
            # later would take it for the answer to its next request. Never write into a response in progress.
            if self._head_begun and (self.cycle is None or self.cycle.response_complete):
                self.transport.write(_TIMEOUT_408)
            self.transport.close()
            return
        due = self._last_read + self.body_timeout
        if now < due:
            self._arm(due)
            return
        log.debug("client %s: request body silent for %.1f s, closing", self.client, self.body_timeout)
        self.on_timeout(BODY)
        self.transport.close()  # the app's receive() gets http.disconnect
