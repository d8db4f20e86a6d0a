"""What a connection may cost before its request reaches the app: header size and reading time.

uvicorn's default HTTP parser (httptools) buffers headers of any size, and neither of its parsers
limits how long a client may take to send a request: a half-sent request holds its connection
forever. :class:`BoundedH11Protocol` is uvicorn's h11 protocol with both bounded: headers over
:data:`MAX_HEADER_BYTES` are refused (h11's own limit), a request's line and headers must arrive
within :data:`HEADER_TIMEOUT_S` of its first byte (of the connection, for its first request),
and a body must keep coming (a pause over :data:`BODY_IDLE_TIMEOUT_S` closes the connection; the
app sees the client as gone). Idle keep-alive connections are uvicorn's (``timeout_keep_alive``).
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: the request line and headers together (h11 answers past it; the default is 16 KiB)
MAX_HEADER_BYTES = 64 * 1024
#: from a request's first byte (or a new connection) to the end of its headers
HEADER_TIMEOUT_S = 10.0
#: the longest pause while a request body is being sent
BODY_IDLE_TIMEOUT_S = 30.0


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on reading each request (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        #: bytes of the request line and headers received so far (h11 bounds only what it must
        #: buffer, so headers that arrive in one read could pass its limit)
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(HEADER_TIMEOUT_S)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(431, "headers_too_large", f"over {MAX_HEADER_BYTES} bytes of headers")
                return
        super().data_received(data)
        state = self.conn.their_state
        if state is not h11.IDLE:
            self._header_bytes = 0
        if state is h11.SEND_BODY:
            self._arm(BODY_IDLE_TIMEOUT_S)  # the body is coming: wait for the next part
        elif state is h11.IDLE:  # part of a request line or headers: timed from its first byte
            if self._read_timer is None:
                self._arm(HEADER_TIMEOUT_S)
        else:  # the request is read (the app has it), or the connection is done
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot read, in fal's error shape."""
        self._refuse(400, "invalid_http_request", msg)

    def _refuse(self, status: int, error_type: str, msg: str) -> None:
        """Answer (fal's error shape) and close, whatever state the parser is in."""
        self._disarm()
        body = json.dumps({"detail": f"Invalid HTTP request: {msg}.", "error_type": error_type})
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "content-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\nx-fal-error-type: {error_type}\r\n"
            "x-fal-retryable: false\r\n\r\n"
        )
        self.transport.write((head + body).encode())
        self.transport.close()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()
