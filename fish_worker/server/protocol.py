"""uvicorn's HTTP/1.1 (h11) and WebSocket protocols with deadlines for a client's headers and reads.

uvicorn has no header timeout: a connection that sends nothing, or its headers one byte at a time,
is kept forever (its keep-alive timer only runs between requests, and any byte resets it). Here a
connection must complete each request's headers within `header_timeout_s` of being opened or of its
previous response; otherwise it is closed. Body time is the app's (BodyLimitMiddleware). The size of
headers is bounded by h11 (`h11_max_incomplete_event_size`) while they arrive in pieces, and by the
app's HeaderLimitMiddleware (header_limits.py) when they arrive whole: h11 checks only incomplete ones.

Nor does uvicorn bound a client that stops reading: once the socket's buffers are full, every send
(an HTTP body part, a WebSocket message) waits for the client for ever, holding the job's slot, and a
close waits to flush what is buffered first. Here a send that cannot go out within `send_timeout_s`
aborts the connection (no flush): the app sees the client gone (http.disconnect; ClientDisconnected,
which Starlette raises as WebSocketDisconnect), so its generation stops and its slot comes back. A
close that has not flushed within `send_timeout_s` is turned into an abort the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any

import h11
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from fish_worker.settings import ServerSettings

MAX_HEADER_BYTES = 16 * 1024  # request line + headers (h11's default, said outright; header_limits.py)

log = logging.getLogger(__name__)


def _drop_stalled(transport: asyncio.Transport, send_timeout_s: float) -> None:
    """Abort a connection whose client has not read what is buffered for it (no flush, no wait)."""
    log.warning("client %s read nothing for %g s: disconnected (FISH_SEND_TIMEOUT_S)", _peer(transport), send_timeout_s)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # linger 0: a reset, not a FIN queued behind what is unread
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # connection_lost follows (call_soon); a second abort does nothing


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"


def _abort_if_still_flushing(
    transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, send_timeout_s: float
) -> None:
    """After a close, which first flushes what is buffered: an abort if it is still flushing by then."""

    def check() -> None:
        if transport.get_write_buffer_size():  # 0 once lost
            _drop_stalled(transport, send_timeout_s)

    loop.call_later(send_timeout_s, check)


class DeadlineFlowControl(FlowControl):
    """uvicorn's HTTP flow control, whose wait for the client to read ends after `send_timeout_s`."""

    def __init__(self, transport: asyncio.Transport, send_timeout_s: float) -> None:
        super().__init__(transport)
        self.send_timeout_s = send_timeout_s

    async def drain(self) -> None:
        try:
            await asyncio.wait_for(self._is_writable_event.wait(), self.send_timeout_s)
        except TimeoutError:
            _drop_stalled(self._transport, self.send_timeout_s)
            # connection_lost follows at once: it marks the request disconnected and resumes writing,
            # so uvicorn drops this send and the app's next receive() is http.disconnect.
            await self._is_writable_event.wait()


class DeadlineWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol whose sends, and close, wait at most `send_timeout_s` for the client."""

    send_timeout_s: float = 30.0

    async def send(self, message: Any) -> None:
        try:
            await asyncio.wait_for(self.writable.wait(), self.send_timeout_s)
        except TimeoutError:
            _drop_stalled(self.transport, self.send_timeout_s)
            await self.writable.wait()  # set by connection_lost, then the parent raises ClientDisconnected
        await super().send(message)

    async def run_asgi(self) -> None:
        await super().run_asgi()
        # The session is over and the parent has closed (or will close, after the close handshake's
        # own timer) the transport, which waits to flush first: a client that reads nothing is dropped.
        _abort_if_still_flushing(self.transport, self.loop, self.send_timeout_s + self.close_timeout)

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()  # a close, which flushes first
        _abort_if_still_flushing(self.transport, self.loop, self.send_timeout_s)


class HeaderTimeoutH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0
    send_timeout_s: float = 30.0

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
        self.flow = DeadlineFlowControl(transport, self.send_timeout_s)
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
        response = h11.Response(
            status_code=431,
            reason=b"Request Header Fields Too Large",
            headers=[(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")],
        )
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
            self.transport.close()  # flushes the last response first, if the client has not read it yet
        # Closed by this or earlier (the keep-alive timeout): a client that never reads is reset later.
        _abort_if_still_flushing(self.transport, self.loop, self.send_timeout_s)


def protocol_with_header_timeout(
    header_timeout_s: float, send_timeout_s: float = 30.0
) -> type[HeaderTimeoutH11Protocol]:
    return type(
        "HeaderTimeoutH11Protocol",
        (HeaderTimeoutH11Protocol,),
        {"header_timeout_s": header_timeout_s, "send_timeout_s": send_timeout_s},
    )


def websocket_with_send_timeout(send_timeout_s: float) -> type[DeadlineWebSocketProtocol]:
    return type("DeadlineWebSocketProtocol", (DeadlineWebSocketProtocol,), {"send_timeout_s": send_timeout_s})


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config that bound slow and oversized clients."""
    return {
        "http": protocol_with_header_timeout(settings.header_timeout_s, settings.send_timeout_s),
        "ws": websocket_with_send_timeout(settings.send_timeout_s),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,  # headers still arriving; whole ones: header_limits.py
    }
