"""`python -m fish_worker.server`: serve over HTTP, e.g. as a RunPod load-balancing worker.

The port opens at once and answers `GET /ping` (204 while the models load, 200 once ready, 503
if loading failed; fish_worker/server/health.py); the models load in a background thread. With
PORT_HEALTH different from PORT, /ping is (also) served on a second, tiny server on PORT_HEALTH.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Awaitable, Callable

import uvicorn

# Only light imports here: the port opens before torch and the models load (in app_builder's thread).
from fish_worker.server.health import ASGIApp, LoadingApp, PingApp, Readiness
from fish_worker.server.protocol import uvicorn_options
from fish_worker.settings import ServerSettings, Settings, configure_logging

log = logging.getLogger("fish_worker.server")


class _Server(uvicorn.Server):
    """uvicorn's server that first stops the app's background work when it begins to shut down
    (SIGTERM): before it waits for open requests, so the /v2 jobs this replica took are handed back at once."""

    def __init__(self, config: uvicorn.Config, before_shutdown: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self.before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.before_shutdown()
        await super().shutdown(sockets)


class LoadBalancingServer:
    """The API on PORT (with /ping), plus a /ping-only server on PORT_HEALTH when that differs."""

    def __init__(self, build: Callable[[], ASGIApp], server_settings: ServerSettings, log_level: str = "info"):
        self.build = build
        self.readiness = Readiness()
        host, port = server_settings.host, server_settings.port
        # Header/body timeouts and size limits: a slow or hostile client is dropped (protocol.py).
        configs = [
            uvicorn.Config(
                LoadingApp(self.readiness),
                host=host,
                port=port,
                lifespan="off",
                log_level=log_level,
                **uvicorn_options(server_settings),
            )
        ]
        health_port = server_settings.port_health
        if health_port is not None and health_port != port:
            configs.append(
                uvicorn.Config(
                    PingApp(self.readiness),
                    host=host,
                    port=health_port,
                    lifespan="off",
                    log_level=log_level,
                    access_log=False,
                )
            )
        self.servers = [_Server(config, self.readiness.stop) for config in configs]

    async def serve(self) -> None:
        """Open the port(s) now, build the app (load the models) meanwhile, serve until stopped."""
        running = [asyncio.create_task(server.serve()) for server in self.servers]
        loading = asyncio.create_task(self.readiness.load(self.build))
        # One server stopping (a signal reaches only the one whose handler was set last) stops both.
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        self.stop()
        await asyncio.gather(*running, return_exceptions=True)
        loading.cancel()

    def stop(self) -> None:
        """Ask every server to finish (safe from another thread: uvicorn polls the flag)."""
        for server in self.servers:
            server.should_exit = True


def app_builder(settings: Settings) -> Callable[[], ASGIApp]:
    def build() -> ASGIApp:
        from fish_worker.server.app import create_app
        from fish_worker.worker import build_runner

        return create_app(build_runner(settings), settings)

    return build


def main() -> None:
    settings = Settings()  # the one read of the environment; passed down from here
    configure_logging(settings.log_level)
    if not settings.server.key_set and not settings.server.auth_disabled:
        log.error("no API keys: set FISH_API_KEYS=key1,key2 (or FISH_AUTH_DISABLED=true to serve without auth)")
        sys.exit(2)
    server = LoadBalancingServer(app_builder(settings), settings.server, settings.log_level.lower())
    asyncio.run(server.serve())


if __name__ == "__main__":
    main()
