"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for each request's headers.

uvicorn has no header timeout: a connection that sends nothing, or its headers one byte at a time,
is kept forever (its keep-alive timer only runs between requests, and any byte resets it). Here a
connection must complete each request's headers within `header_timeout_s` of being opened or of its
previous response; otherwise it is closed. Body time is the app's (BodyLimitMiddleware); the size of
headers is bounded by h11 (`h11_max_incomplete_event_size`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from fish_worker.settings import ServerSettings


class HeaderTimeoutH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

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
        "h11_max_incomplete_event_size": 16 * 1024,  # request line + headers (h11's default, said outright)
    }
