"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for each request's headers.

uvicorn has no header timeout: a connection that sends nothing, or its headers one byte at a time,
is kept forever (its keep-alive timer only runs between requests, and any byte resets it). Here a
connection must complete each request's headers within `header_timeout_s` of being opened or of its
previous response; otherwise it is closed. Body time is the app's (BodyLimitMiddleware). The size of
headers is bounded by h11 (`h11_max_incomplete_event_size`) while they arrive in pieces, and by the
app's HeaderLimitMiddleware (header_limits.py) when they arrive whole: h11 checks only incomplete ones.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from fish_worker.settings import ServerSettings

MAX_HEADER_BYTES = 16 * 1024  # request line + headers (h11's default, said outright; header_limits.py)


class HeaderTimeoutH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        # h11 refuses headers still incomplete past the limit with a 431 hint, which uvicorn answers
        # as any bad request (400): note the hint, so the answer is 431 as for whole ones.
        self._headers_too_large = False
        next_event = self.conn.next_event

        def next_event_noting_oversize() -> Any:
            try:
                return next_event()
            except h11.RemoteProtocolError as exc:
                self._headers_too_large = exc.error_status_hint == 431
                raise

        self.conn.next_event = next_event_noting_oversize  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a new request's headers are complete
            self._disarm()

    def handle_websocket_upgrade(self, event: Any) -> None:
        # The upgrade request's headers are complete and the connection now belongs to the WebSocket
        # protocol (with its own ping timeouts): this deadline must not close a live session later.
        self._disarm()
        super().handle_websocket_upgrade(event)

    def send_400_response(self, msg: str) -> None:
        if not self._headers_too_large:
            super().send_400_response(msg)
            return
        response = h11.Response(status_code=431, reason=b"Request Header Fields Too Large",
                                headers=[(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")])
        body = f"request headers: larger than {MAX_HEADER_BYTES} bytes".encode()
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def on_response_complete(self) -> None:
        self._arm()  # first: the parent may start a pipelined request, which disarms it
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol_with_header_timeout(header_timeout_s: float) -> type[HeaderTimeoutH11Protocol]:
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": header_timeout_s})


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config that bound slow and oversized clients."""
    return {
        "http": protocol_with_header_timeout(settings.header_timeout_s),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,  # headers still arriving; whole ones: header_limits.py
    }
