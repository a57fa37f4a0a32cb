"""Request line and headers are at most `MAX_HEADER_BYTES`, however they arrive: else 431.

h11 (`h11_max_incomplete_event_size`, protocol.py) bounds only headers still incomplete after a read:
a header block that arrives whole in one read, of any size, passes it. This middleware (outermost)
counts what reached the app, request line and headers as sent on the wire, and answers 431 Request
Header Fields Too Large (`Connection: close`) before authentication or anything else looks at them.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from fish_worker.server.errors import deny_websocket, error_response
from fish_worker.server.protocol import MAX_HEADER_BYTES


def header_bytes(scope: Scope) -> int:
    """About the wire size of the request line and headers ("Name: value\\r\\n" each)."""
    line = (
        len(scope.get("method", "GET"))
        + len(scope.get("raw_path") or scope["path"].encode())
        + len(scope.get("query_string", b""))
        + len(" ?HTTP/1.1\r\n")
    )
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


class HeaderLimitMiddleware:
    def __init__(self, app: ASGIApp, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and header_bytes(scope) > self.max_header_bytes:
            message = f"request headers: larger than {self.max_header_bytes} bytes"
            if scope["type"] == "websocket":
                await deny_websocket(scope, receive, send, 431, message)
            else:
                await error_response(scope["path"], 431, message, headers={"Connection": "close"})(scope, receive, send)
            return
        await self.app(scope, receive, send)
