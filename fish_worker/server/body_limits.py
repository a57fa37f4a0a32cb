"""Request bodies are bounded in size and time, and never buffered whole before the check.

A `Content-Length` over the limit is answered 413 at once; a body that grows past it while streaming
in (chunked, or lying about its length) is cut off with 413 at the byte that crosses it. The whole
body must arrive within `body_timeout_s` of the headers, else 408: a client trickling bytes is dropped.
Both answers close the connection, since the rest of the body is never read.
"""

from __future__ import annotations

import asyncio

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fish_worker.server.errors import error_response

_CLOSE = {"Connection": "close"}


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                response = error_response(scope["path"], 400, "Content-Length: not a byte count", headers=_CLOSE)
                await response(scope, receive, send)
                return
            if length > self.max_body_bytes:
                response = error_response(scope["path"], 413, self._too_large(), headers=_CLOSE)
                await response(scope, receive, send)
                return
        await self.app(scope, self._bounded(receive), send)

    def _bounded(self, receive: Receive) -> Receive:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        received = 0
        complete = False

        async def bounded_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body: only the disconnect is left to wait for, however long
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise HTTPException(
                    408,
                    f"request body: not received within {self.body_timeout_s:g} s (FISH_BODY_TIMEOUT_S)",
                    headers=_CLOSE,
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, self._too_large(), headers=_CLOSE)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return bounded_receive

    def _too_large(self) -> str:
        return f"request body: larger than {self.max_body_bytes} bytes (FISH_MAX_BODY_BYTES)"
