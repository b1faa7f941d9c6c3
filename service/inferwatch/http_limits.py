"""uvicorn's httptools protocol with the limits it lacks: a slow or endless request head.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``), but any byte
received cancels that timer and nothing else limits the time or size of a request head:
a client trickling one header byte every few seconds holds a connection (and its memory)
forever (slowloris; measured: a head trickled at 4 bytes/s was still open after 30 s).
This subclass, passed as uvicorn's ``http`` protocol class, adds per request:

* the head (request line + headers) must arrive within ``HEAD_TIMEOUT_S`` of its first
  byte, or of the connection's opening: else ``408`` and the connection is closed;
* the head may be at most ``MAX_HEAD_BYTES``: else ``431`` and the connection is closed;
* the whole request (head + body) must arrive within ``REQUEST_TIMEOUT_S``: else the
  connection is closed (the body's own, shorter limit is the app's: api/body.py, 408).

Only ``asyncio.Protocol`` methods and the parser callbacks uvicorn documents for this
class are overridden, each calling uvicorn's own first.
"""

from __future__ import annotations

import asyncio
from typing import Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_TIMEOUT_S: Final = 10.0
REQUEST_TIMEOUT_S: Final = 30.0
MAX_HEAD_BYTES: Final = 64 * 1024

_REFUSALS: Final = {
    408: b"408 Request Timeout",
    431: b"431 Request Header Fields Too Large",
}


def _refusal(status: int) -> bytes:
    body = b'{"error":"%s","message":"%s","detail":[]}' % (
        b"request_timeout" if status == 408 else b"headers_too_large",
        _REFUSALS[status][4:],
    )
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (_REFUSALS[status], len(body), body)
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a deadline and a size cap on each request's head, and a
    deadline on each whole request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._request_timer: asyncio.TimerHandle | None = None
        self._arm_head()

    def _arm_head(self) -> None:
        self._cancel_head()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._refuse, 408)

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_request(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _refuse(self, status: int) -> None:
        self._cancel_head()
        self._cancel_request()
        if not self.transport.is_closing():
            self.transport.write(_refusal(status))
            self.transport.close()

    def _request_overdue(self) -> None:
        self._request_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # checked after parsing: a chunk that completes the head may carry a large body
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # a new request on a kept-alive connection
            self._in_head = True
            self._head_bytes = 0
            self._arm_head()
        self._cancel_request()
        self._request_timer = self.loop.call_later(REQUEST_TIMEOUT_S, self._request_overdue)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_request()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head()
        self._cancel_request()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # between requests uvicorn's keep-alive timer applies; the head deadline
        # starts again with the next request's first byte (on_message_begin)
        self._cancel_head()
        self._in_head = False


__all__ = ["HEAD_TIMEOUT_S", "MAX_HEAD_BYTES", "REQUEST_TIMEOUT_S", "BoundedHttpToolsProtocol"]
