"""Serving while the models load: the port opens at once and `GET /ping` says how far start-up is.

RunPod's load-balancing endpoints poll `GET /ping` on PORT_HEALTH: 204 = still initializing,
200 = healthy (send traffic), anything else = unhealthy. So:

    loading  /ping 204; other requests 503 {"error": "..."} with Retry-After
    ready    /ping 200; everything else goes to the real app
    failed   /ping 503 (with the reason); other requests 503
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from starlette.types import Receive, Scope, Send

from fish_worker.server.dependencies import on_ready_of, on_stop_of

log = logging.getLogger("fish_worker.server")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PING_PATH = "/ping"


class Readiness:
    """Start-up state of the server's app: loading, then ready (with the app) or failed."""

    def __init__(self) -> None:
        self.state: Literal["loading", "ready", "failed"] = "loading"
        self.app: ASGIApp | None = None
        self.error: str | None = None
        self._stopped = False

    async def load(self, build: Callable[[], ASGIApp]) -> None:
        """Build the app in a thread (loading models blocks), leaving the event loop free to answer."""
        try:
            app = await asyncio.to_thread(build)
            on_ready = on_ready_of(app)
            if on_ready is not None:  # background work of the app's that needs the serving loop
                await on_ready()
            self.app = app
            self.state = "ready"
            log.info("models loaded: serving")
        except Exception as exc:  # whatever stopped start-up: report it on /ping, keep the port answering
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            log.error("start-up failed: %s", self.error)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the app's background work once, as the server begins to shut down: with REDIS_URL its
        taken /v2 jobs are handed back at once (server/redis_jobs.py). Bounded: a shutdown never hangs here."""
        on_stop = None if self._stopped else on_stop_of(self.app)
        self._stopped = True
        if on_stop is None:
            return
        try:
            await asyncio.wait_for(on_stop(), timeout_s)
        except Exception as exc:  # TimeoutError, Redis gone: the leases expire instead
            log.warning("stopping the background work failed: %r", exc)

    def ping(self) -> tuple[int, dict[str, Any] | None]:
        if self.state == "ready":
            return 200, {"status": "ready"}
        if self.state == "loading":
            return 204, None
        return 503, {"status": "failed", "error": self.error}


async def _send_json(send: Send, status: int, body: dict[str, Any] | None, headers: list | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    head = [(b"content-type", b"application/json")] if body is not None else []
    if status != 204:  # a 204 carries no body, hence no content-length either
        head.append((b"content-length", str(len(data)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": data})


class PingApp:
    """Only `GET /ping` (the health port, when PORT_HEALTH differs from PORT)."""

    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == PING_PATH:
            await _send_json(send, *self.readiness.ping())
        else:
            await _send_json(send, 404, {"error": "not found; this port only answers GET /ping"})


class LoadingApp(PingApp):
    """`GET /ping` from the start, the real app once it is loaded (503 for its requests before)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PING_PATH:
            await _send_json(send, *self.readiness.ping())
        elif self.readiness.app is not None:
            await self.readiness.app(scope, receive, send)
        elif scope["type"] == "http":
            message = (
                "the server is loading its models; retry shortly"
                if self.readiness.state == "loading"
                else f"the server failed to start: {self.readiness.error}"
            )
            await _send_json(send, 503, {"error": message}, [(b"retry-after", b"10")])
